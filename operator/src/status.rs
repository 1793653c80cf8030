//! Status from what the operator observed: pure functions from the resource's
//! generation, the SQL check, the Deployment and the worker's own report to
//! phase and conditions. Conditions keep their lastTransitionTime while their
//! status does not change.

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use tickflow_crds::{Phase, RunState, condition};
use tickflow_crds::{WorkerState, WorkerStatus};

/// Longest worker error kept in a status (`lastError`, condition messages):
/// a worker's report is not trusted to be small.
pub const MAX_ERROR_BYTES: usize = 4096;

/// `s` cut to at most `max` bytes at a character boundary.
pub fn truncate_bytes(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut end = max;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
    s
}

/// A worker's error as the status keeps it: at most [`MAX_ERROR_BYTES`],
/// marked when cut.
pub fn bounded_error(e: &str) -> String {
    const MARK: &str = " … (truncated)";
    if e.len() <= MAX_ERROR_BYTES {
        return e.to_string();
    }
    let mut s = truncate_bytes(e.to_string(), MAX_ERROR_BYTES - MARK.len());
    s.push_str(MARK);
    s
}

/// What a worker's own report says is wrong, if it is failing.
pub fn worker_problem(w: &WorkerStatus) -> Option<String> {
    matches!(w.state, WorkerState::Failed | WorkerState::Degraded).then(|| {
        w.last_error
            .as_deref()
            .map(bounded_error)
            .unwrap_or_else(|| format!("worker state {:?}", w.state).to_lowercase())
    })
}

/// What the Deployment reports, reduced to what the phase depends on.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Rollout {
    /// The Deployment exists.
    pub exists: bool,
    /// Desired replicas.
    pub desired: i32,
    /// Pods that exist (old and new).
    pub replicas: i32,
    pub ready: i32,
    pub updated: i32,
    /// The Deployment controller has seen the latest template.
    pub observed: bool,
}

impl Rollout {
    pub fn of(d: Option<&Deployment>) -> Self {
        let Some(d) = d else {
            return Self::default();
        };
        let desired = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
        let st = d.status.clone().unwrap_or_default();
        Self {
            exists: true,
            desired,
            replicas: st.replicas.unwrap_or(0),
            ready: st.ready_replicas.unwrap_or(0),
            updated: st.updated_replicas.unwrap_or(0),
            observed: st.observed_generation >= d.metadata.generation,
        }
    }

    fn rolled_out(&self) -> bool {
        self.observed
            && self.updated >= self.desired
            && self.ready >= self.desired
            && self.replicas == self.desired
    }
}

/// Phase and conditions of a workload resource.
#[derive(Clone, Debug, PartialEq)]
pub struct Health {
    pub phase: Phase,
    pub conditions: Vec<Condition>,
}

fn cond(type_: &str, ok: bool, reason: &str, message: impl Into<String>) -> Condition {
    Condition {
        type_: type_.into(),
        status: if ok { "True" } else { "False" }.into(),
        reason: reason.into(),
        message: message.into(),
        last_transition_time: Time(Timestamp::UNIX_EPOCH),
        observed_generation: None,
    }
}

/// Phase and conditions for a resource whose SQL (if any) is valid.
/// `problem` is what the worker or its pods report as wrong (the worker's
/// last error while it is failing, or a crash-looping container).
pub fn workload_health(state: RunState, rollout: Rollout, problem: Option<&str>) -> Health {
    let worker_error = problem.map(str::to_string);
    let (phase, ready, progressing) = match state {
        RunState::Suspended if rollout.replicas == 0 => (
            Phase::Suspended,
            cond(
                condition::READY,
                false,
                "Suspended",
                "suspended: 0 replicas",
            ),
            cond(condition::PROGRESSING, false, "Suspended", "suspended"),
        ),
        RunState::Suspended => (
            Phase::Running,
            cond(
                condition::READY,
                false,
                "Suspending",
                "suspending: waiting for the worker's final checkpoint",
            ),
            cond(
                condition::PROGRESSING,
                true,
                "Suspending",
                format!("{} pod(s) still terminating", rollout.replicas),
            ),
        ),
        RunState::Running if !rollout.exists => (
            Phase::Pending,
            cond(
                condition::READY,
                false,
                "Creating",
                "creating the Deployment",
            ),
            cond(
                condition::PROGRESSING,
                true,
                "Creating",
                "creating the Deployment",
            ),
        ),
        RunState::Running if rollout.rolled_out() => (
            Phase::Running,
            cond(
                condition::READY,
                true,
                "Running",
                format!("{}/{} replicas ready", rollout.ready, rollout.desired),
            ),
            cond(
                condition::PROGRESSING,
                false,
                "RolledOut",
                "rollout complete",
            ),
        ),
        RunState::Running => (
            if rollout.ready > 0 {
                Phase::Running
            } else {
                Phase::Pending
            },
            cond(
                condition::READY,
                false,
                "Starting",
                format!(
                    "{}/{} replicas ready, {} updated",
                    rollout.ready, rollout.desired, rollout.updated
                ),
            ),
            cond(
                condition::PROGRESSING,
                true,
                "RollingOut",
                "waiting for the rollout",
            ),
        ),
    };
    let failing = worker_error.filter(|_| state == RunState::Running);
    let degraded = match &failing {
        Some(e) => cond(condition::DEGRADED, true, "WorkerError", e.clone()),
        None => cond(condition::DEGRADED, false, "AsExpected", ""),
    };
    let phase = if failing.is_some() {
        Phase::Degraded
    } else {
        phase
    };
    Health {
        phase,
        conditions: vec![ready, progressing, degraded],
    }
}

/// Phase and conditions when the query cannot run as specified (invalid SQL,
/// missing ConfigMap): Failed, with the reason everywhere a user looks.
pub fn invalid_query_health(reason: &str, message: &str) -> Health {
    Health {
        phase: Phase::Failed,
        conditions: vec![
            cond(condition::SQL_VALID, false, reason, message),
            cond(
                condition::READY,
                false,
                reason,
                "not started: the query is invalid",
            ),
            cond(
                condition::PROGRESSING,
                false,
                reason,
                "not started: the query is invalid",
            ),
            cond(condition::DEGRADED, true, reason, message),
        ],
    }
}

/// Phase and conditions when the resource names an image outside the
/// operator's allow-list: Failed, and nothing is created or updated.
pub fn image_not_allowed_health(message: &str) -> Health {
    const REASON: &str = "ImageNotAllowed";
    Health {
        phase: Phase::Failed,
        conditions: vec![
            cond(
                condition::READY,
                false,
                REASON,
                "not started: the image is not allowed",
            ),
            cond(
                condition::PROGRESSING,
                false,
                REASON,
                "not started: the image is not allowed",
            ),
            cond(condition::DEGRADED, true, REASON, message),
        ],
    }
}

/// What applying the checkpoint PVC came to: its spec (a refused resize or
/// access-mode change) and, separately, its ownership (`retainOnDelete`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VolumeReport {
    /// The API server's refusal of the PVC's spec, if any.
    pub spec_refused: Option<String>,
    /// Why the ownership change failed, if it did.
    pub ownership_failed: Option<String>,
    /// The PVC is (now) free of the resource's owner reference.
    pub retained: bool,
}

/// The CheckpointVolume condition.
pub fn checkpoint_volume(r: &VolumeReport) -> Condition {
    match (&r.ownership_failed, &r.spec_refused) {
        (Some(e), _) => cond(
            condition::CHECKPOINT_VOLUME,
            false,
            "OwnershipNotUpdated",
            format!("the PVC's owner reference could not be updated: {e}"),
        ),
        (None, Some(e)) => cond(
            condition::CHECKPOINT_VOLUME,
            false,
            "PvcChangeRefused",
            format!(
                "the API server refused the PVC change (the volume keeps its current size and mode{}): {e}",
                if r.retained {
                    "; retainOnDelete is in effect"
                } else {
                    ""
                }
            ),
        ),
        (None, None) => cond(
            condition::CHECKPOINT_VOLUME,
            true,
            "Applied",
            if r.retained {
                "applied; retained when the StreamQuery is deleted"
            } else {
                "applied; deleted with the StreamQuery"
            },
        ),
    }
}

/// The SqlValid=True condition.
pub fn sql_valid(streams: &[String]) -> Condition {
    cond(
        condition::SQL_VALID,
        true,
        "Planned",
        format!("planned stream(s): {}", streams.join(", ")),
    )
}

/// Sets generation and transition times: a condition whose status is
/// unchanged keeps its previous lastTransitionTime.
pub fn stamp(
    mut conditions: Vec<Condition>,
    previous: &[Condition],
    generation: Option<i64>,
    now: Timestamp,
) -> Vec<Condition> {
    for c in &mut conditions {
        c.observed_generation = generation;
        c.last_transition_time = previous
            .iter()
            .find(|p| p.type_ == c.type_ && p.status == c.status)
            .map(|p| p.last_transition_time.clone())
            .unwrap_or(Time(now));
    }
    conditions
}

/// RFC 3339 of milliseconds since the epoch.
pub fn rfc3339_ms(ms: i64) -> String {
    Timestamp::from_millisecond(ms)
        .map(|t| t.to_string())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rollout(desired: i32, replicas: i32, ready: i32) -> Rollout {
        Rollout {
            exists: true,
            desired,
            replicas,
            ready,
            updated: replicas,
            observed: true,
        }
    }

    fn status_of<'a>(h: &'a Health, t: &str) -> &'a str {
        &h.conditions.iter().find(|c| c.type_ == t).unwrap().status
    }

    #[test]
    fn phases_follow_the_rollout() {
        let h = workload_health(RunState::Running, Rollout::default(), None);
        assert_eq!(h.phase, Phase::Pending);
        let h = workload_health(RunState::Running, rollout(1, 1, 0), None);
        assert_eq!(h.phase, Phase::Pending);
        assert_eq!(status_of(&h, condition::PROGRESSING), "True");
        let h = workload_health(RunState::Running, rollout(1, 1, 1), None);
        assert_eq!(h.phase, Phase::Running);
        assert_eq!(status_of(&h, condition::READY), "True");
        let h = workload_health(RunState::Suspended, rollout(0, 1, 1), None);
        assert_eq!(
            h.phase,
            Phase::Running,
            "suspending waits for the pod to go"
        );
        assert_eq!(status_of(&h, condition::PROGRESSING), "True");
        let h = workload_health(RunState::Suspended, rollout(0, 0, 0), None);
        assert_eq!(h.phase, Phase::Suspended);
    }

    #[test]
    fn a_failing_worker_degrades_a_running_query() {
        let w = WorkerStatus {
            state: WorkerState::Degraded,
            last_error: Some("schema registry unreachable".into()),
            ..WorkerStatus::default()
        };
        let h = workload_health(
            RunState::Running,
            rollout(1, 1, 1),
            worker_problem(&w).as_deref(),
        );
        assert_eq!(h.phase, Phase::Degraded);
        let d = h
            .conditions
            .iter()
            .find(|c| c.type_ == condition::DEGRADED)
            .unwrap();
        assert_eq!(d.status, "True");
        assert_eq!(d.message, "schema registry unreachable");
        // A crash-looping pod never gets ready: Degraded, not Pending.
        let h = workload_health(
            RunState::Running,
            rollout(1, 1, 0),
            Some("container worker CrashLoopBackOff"),
        );
        assert_eq!(h.phase, Phase::Degraded);
    }

    #[test]
    fn huge_worker_errors_are_cut_for_the_status() {
        let w = WorkerStatus {
            state: WorkerState::Failed,
            last_error: Some("é".repeat(100_000)),
            ..WorkerStatus::default()
        };
        let p = worker_problem(&w).unwrap();
        assert!(p.len() <= MAX_ERROR_BYTES, "{}", p.len());
        assert!(p.ends_with("(truncated)"));
        assert_eq!(bounded_error("short"), "short");
    }

    #[test]
    fn volume_condition_names_what_was_refused() {
        let ok = checkpoint_volume(&VolumeReport::default());
        assert_eq!(ok.status, "True");
        let refused = checkpoint_volume(&VolumeReport {
            spec_refused: Some("spec: Forbidden".into()),
            ownership_failed: None,
            retained: true,
        });
        assert_eq!(refused.status, "False");
        assert_eq!(refused.reason, "PvcChangeRefused");
        assert!(refused.message.contains("retainOnDelete is in effect"));
        let owner = checkpoint_volume(&VolumeReport {
            spec_refused: Some("x".into()),
            ownership_failed: Some("timeout".into()),
            retained: false,
        });
        assert_eq!(owner.reason, "OwnershipNotUpdated");
    }

    #[test]
    fn transition_times_survive_unchanged_conditions() {
        let t0 = Timestamp::from_second(1_000).unwrap();
        let t1 = Timestamp::from_second(2_000).unwrap();
        let first = stamp(
            invalid_query_health("InvalidSql", "x").conditions,
            &[],
            Some(1),
            t0,
        );
        let again = stamp(
            invalid_query_health("InvalidSql", "y").conditions,
            &first,
            Some(2),
            t1,
        );
        assert!(again.iter().all(|c| c.last_transition_time.0 == t0));
        assert!(again.iter().all(|c| c.observed_generation == Some(2)));
        let fixed = stamp(vec![sql_valid(&["a".into()])], &again, Some(3), t1);
        assert_eq!(fixed[0].last_transition_time.0, t1);
    }
}
