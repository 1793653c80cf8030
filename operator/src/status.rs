//! Status from what the operator observed: pure functions from the resource's
//! generation, the SQL check, the Deployment and the worker's own report to
//! phase and conditions. Conditions keep their lastTransitionTime while their
//! status does not change.
//!
//! A query with parallelism has one entry per worker ([`worker_entries`]);
//! its query-wide figures are computed from those entries only
//! ([`worker_totals`]), so the sums always match what the entries show.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use tickflow_crds::{CheckpointStatus, StreamQueryWorker};
use tickflow_crds::{Phase, RunState, condition};
use tickflow_crds::{WorkerState, WorkerStatus};

use crate::desired;
use crate::worker_status::WorkerPod;

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

/// Longest error kept per worker in `status.workers[]` (up to 64 of them).
pub const MAX_WORKER_ERROR_BYTES: usize = 1024;

/// A worker's error as the status keeps it: at most [`MAX_ERROR_BYTES`],
/// marked when cut.
pub fn bounded_error(e: &str) -> String {
    bounded_to(e, MAX_ERROR_BYTES)
}

/// `e` in at most `max` bytes, marked when cut.
fn bounded_to(e: &str, max: usize) -> String {
    const MARK: &str = " … (truncated)";
    if e.len() <= max {
        return e.to_string();
    }
    let mut s = truncate_bytes(e.to_string(), max - MARK.len());
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

    /// A set of Deployments (None: not created yet) as one rollout: it
    /// exists when all do, and is rolled out when each is.
    pub fn of_set(ds: &[Option<&Deployment>]) -> Self {
        let mut total = Self {
            exists: !ds.is_empty(),
            observed: true,
            ..Self::default()
        };
        for d in ds {
            let r = Self::of(*d);
            total.exists &= r.exists;
            total.observed &= r.observed;
            total.desired += r.desired;
            total.replicas += r.replicas;
            total.ready += r.ready;
            total.updated += r.updated;
        }
        total
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

/// Phase and conditions while a query with parallelism changes its number
/// of workers: Pending (no worker runs until the old set is gone), with
/// Ready and Progressing saying so. `old_pods`: pods of the old set still
/// there (None: the scale-down was just asked for).
pub fn rescaling_health(from: i32, to: i32, old_pods: Option<usize>) -> Health {
    const REASON: &str = "Rescaling";
    let stage = match old_pods {
        None => format!("stopping all {from} worker(s) before the new set starts"),
        Some(0) => "waiting for the old set's Deployments to report no pods".to_string(),
        Some(n) => format!("waiting for {n} pod(s) of the old set to stop"),
    };
    let message = format!("Rescaling from {from} to {to} workers: {stage}");
    Health {
        phase: Phase::Pending,
        conditions: vec![
            cond(condition::READY, false, REASON, message.clone()),
            cond(condition::PROGRESSING, true, REASON, message),
            cond(condition::DEGRADED, false, "AsExpected", ""),
        ],
    }
}

/// The entries of `status.workers` for a query with `workers` workers.
/// Worker i's pod is one whose slot is (i, workers), a running one before a
/// terminating one. Its figures come from `reports` (read this pass, by
/// index) or else stay those of its `previous` entry while the pod is the
/// same one (a new pod's counters start over, so old ones would mislead).
pub fn worker_entries(
    query: &str,
    workers: i32,
    pods: &[WorkerPod],
    reports: &BTreeMap<i32, WorkerStatus>,
    previous: &[StreamQueryWorker],
) -> Vec<StreamQueryWorker> {
    (0..workers)
        .map(|index| {
            let pod = pods
                .iter()
                .filter(|p| p.slot == Some(desired::WorkerSlot { index, workers }))
                .min_by_key(|p| p.terminating);
            let mut entry = StreamQueryWorker {
                index,
                deployment: desired::worker_deployment_name(query, index),
                pod: pod.map(|p| p.name.clone()),
                ready: pod.is_some_and(|p| p.ready && !p.terminating),
                ..StreamQueryWorker::default()
            };
            if let Some(w) = reports.get(&index) {
                copy_figures(&mut entry, w);
            } else if let Some(prev) = previous
                .iter()
                .find(|e| e.index == index && e.pod.is_some() && e.pod == entry.pod)
            {
                entry = StreamQueryWorker {
                    index,
                    deployment: entry.deployment,
                    pod: entry.pod,
                    ready: entry.ready,
                    ..prev.clone()
                };
            }
            entry
        })
        .collect()
}

fn total<V: Copy + Into<i128>>(m: &BTreeMap<String, V>) -> i128 {
    m.values().map(|v| (*v).into()).sum()
}

fn state_name(s: WorkerState) -> String {
    serde_json::to_value(s)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

fn copy_figures(e: &mut StreamQueryWorker, w: &WorkerStatus) {
    e.records_in = Some(total(&w.records_in) as u64);
    e.records_out = Some(total(&w.records_out) as u64);
    e.late_events = Some(total(&w.late_events) as u64);
    e.dead_letters = Some(total(&w.dead_letters) as u64);
    e.lag = Some(w.total_lag());
    e.last_checkpoint = w.last_checkpoint.as_ref().map(|c| CheckpointStatus {
        id: c.id,
        time: rfc3339_ms(c.time_ms),
        size_bytes: c.bytes,
    });
    e.worker_state = Some(state_name(w.state));
    e.last_error = w
        .last_error
        .as_deref()
        .map(|m| bounded_to(m, MAX_WORKER_ERROR_BYTES));
}

/// Query-wide figures of a query with parallelism, from its entries.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct WorkerTotals {
    /// Sums over the workers that reported (None: none did).
    pub records_in: Option<u64>,
    pub records_out: Option<u64>,
    pub late_events: Option<u64>,
    pub dead_letters: Option<u64>,
    pub lag: Option<i64>,
    /// The oldest of the workers' last checkpoints, once every worker has
    /// one: every partition's state is at least that recent.
    pub last_checkpoint: Option<CheckpointStatus>,
    /// The state of the worker furthest from running (failed first).
    pub worker_state: Option<String>,
    /// The first worker's error, by index, named by its index.
    pub last_error: Option<String>,
    /// Workers whose figures the sums include.
    pub reporting: i32,
}

fn sum_of(
    entries: &[StreamQueryWorker],
    f: impl Fn(&StreamQueryWorker) -> Option<u64>,
) -> Option<u64> {
    entries.iter().filter_map(f).reduce(u64::saturating_add)
}

/// How far a worker state is from running: lower is worse.
fn state_rank(state: &str) -> u8 {
    match state {
        "failed" => 0,
        "degraded" => 1,
        "stopped" => 2,
        "stopping" => 3,
        "running" => 6,
        "recovering" => 5,
        // starting, or a state this operator does not know yet.
        _ => 4,
    }
}

/// The query-wide figures from `entries` (see [`WorkerTotals`]).
pub fn worker_totals(entries: &[StreamQueryWorker]) -> WorkerTotals {
    let all_checkpointed =
        !entries.is_empty() && entries.iter().all(|e| e.last_checkpoint.is_some());
    WorkerTotals {
        records_in: sum_of(entries, |e| e.records_in),
        records_out: sum_of(entries, |e| e.records_out),
        late_events: sum_of(entries, |e| e.late_events),
        dead_letters: sum_of(entries, |e| e.dead_letters),
        lag: entries
            .iter()
            .filter_map(|e| e.lag)
            .reduce(i64::saturating_add),
        last_checkpoint: entries
            .iter()
            .filter_map(|e| e.last_checkpoint.clone())
            .min_by_key(|c| c.time.parse::<Timestamp>().ok())
            .filter(|_| all_checkpointed),
        worker_state: entries
            .iter()
            .filter_map(|e| e.worker_state.clone())
            .min_by_key(|s| state_rank(s)),
        last_error: entries.iter().find_map(|e| {
            e.last_error
                .as_deref()
                .map(|m| bounded_error(&format!("worker {}: {m}", e.index)))
        }),
        reporting: entries.iter().filter(|e| e.worker_state.is_some()).count() as i32,
    }
}

/// What is wrong when a worker says it is failing or degraded: the first
/// such worker by index, named by it, with its last error.
pub fn workers_problem(entries: &[StreamQueryWorker]) -> Option<String> {
    entries
        .iter()
        .find(|e| matches!(e.worker_state.as_deref(), Some("failed" | "degraded")))
        .map(|e| {
            let error = e.last_error.as_deref().unwrap_or("worker is failing");
            bounded_error(&format!("worker {}: {error}", e.index))
        })
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
    not_started(
        "ImageNotAllowed",
        "not started: the image is not allowed",
        message,
    )
}

/// A worker Deployment's name is taken by a Deployment the query does not
/// control: nothing is applied, scaled or deleted until it is renamed or
/// removed.
pub fn name_taken_health(taken: &[&str]) -> Health {
    let message = format!(
        "Deployment {} exists and is not controlled by this StreamQuery; the operator does not \
         take it over: delete or rename it, or rename the query",
        taken.join(", ")
    );
    not_started(
        "NameTaken",
        "not started: a worker's name is taken",
        &message,
    )
}

/// Failed, not Ready and not Progressing (`why`), Degraded with `message`.
fn not_started(reason: &str, why: &str, message: &str) -> Health {
    Health {
        phase: Phase::Failed,
        conditions: vec![
            cond(condition::READY, false, reason, why),
            cond(condition::PROGRESSING, false, reason, why),
            cond(condition::DEGRADED, true, reason, message),
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

    fn worker_pod(
        name: &str,
        index: i32,
        workers: i32,
        ready: bool,
        terminating: bool,
    ) -> WorkerPod {
        WorkerPod {
            name: name.into(),
            slot: Some(desired::WorkerSlot { index, workers }),
            ready,
            terminating,
            running_ip: None,
        }
    }

    #[test]
    fn worker_entries_pick_each_workers_pod_and_keep_figures_only_for_that_pod() {
        let pods = vec![
            // The old set's worker, still terminating: not an entry's pod.
            worker_pod("q-w0-old", 0, 1, true, true),
            worker_pod("q-w0-a", 0, 3, true, false),
            worker_pod("q-w1-a", 1, 3, false, false),
        ];
        let report = WorkerStatus {
            state: WorkerState::Running,
            records_in: BTreeMap::from([("t/0".into(), 10), ("t/3".into(), 1)]),
            lag: BTreeMap::from([("t/0".into(), 5), ("t/3".into(), 2)]),
            last_error: Some("x".repeat(10_000)),
            ..WorkerStatus::default()
        };
        let reports = BTreeMap::from([(0, report)]);
        let e = worker_entries("q", 3, &pods, &reports, &[]);
        assert_eq!(e.len(), 3);
        assert_eq!(e[0].pod.as_deref(), Some("q-w0-a"));
        assert!(e[0].ready);
        assert_eq!(e[0].records_in, Some(11));
        assert_eq!(e[0].lag, Some(7));
        assert_eq!(e[0].worker_state.as_deref(), Some("running"));
        assert!(e[0].last_error.as_ref().unwrap().len() <= MAX_WORKER_ERROR_BYTES);
        assert_eq!(e[1].pod.as_deref(), Some("q-w1-a"));
        assert!(!e[1].ready);
        assert_eq!(e[1].records_in, None, "not read yet");
        assert_eq!((e[2].index, e[2].deployment.as_str()), (2, "q-w2"));
        assert_eq!(e[2].pod, None);
        // A pass without reports keeps what the same pods said.
        assert_eq!(worker_entries("q", 3, &pods, &BTreeMap::new(), &e), e);
        // A new pod for worker 0 starts without the old pod's figures.
        let mut replaced = pods.clone();
        replaced[1].name = "q-w0-b".into();
        let after = worker_entries("q", 3, &replaced, &BTreeMap::new(), &e);
        assert_eq!(after[0].pod.as_deref(), Some("q-w0-b"));
        assert_eq!(after[0].records_in, None);
    }

    #[test]
    fn totals_are_sums_of_the_entries_and_the_worst_state_wins() {
        let entry = |index: i32, records: Option<u64>, checkpoint_ms: Option<i64>, state: &str| {
            StreamQueryWorker {
                index,
                deployment: desired::worker_deployment_name("q", index),
                records_in: records,
                lag: records.map(|r| r as i64),
                last_checkpoint: checkpoint_ms.map(|ms| CheckpointStatus {
                    id: index as u64,
                    time: rfc3339_ms(ms),
                    size_bytes: 1,
                }),
                worker_state: Some(state.into()),
                ..StreamQueryWorker::default()
            }
        };
        assert_eq!(worker_totals(&[]), WorkerTotals::default());
        let mut e = vec![
            entry(0, Some(10), Some(2_500), "running"),
            entry(1, Some(20), Some(1_000), "starting"),
            entry(2, None, None, "running"),
        ];
        e[1].last_error = Some("boom".into());
        let t = worker_totals(&e);
        assert_eq!(t.records_in, Some(30));
        assert_eq!(t.lag, Some(30));
        assert_eq!(t.records_out, None, "no worker reported any");
        assert_eq!(t.last_checkpoint, None, "worker 2 has not checkpointed");
        assert_eq!(t.worker_state.as_deref(), Some("starting"));
        assert_eq!(t.last_error.as_deref(), Some("worker 1: boom"));
        e[2].worker_state = None; // its pod is new: no figures yet
        assert_eq!(
            worker_totals(&e).reporting,
            2,
            "the sums cover workers 0 and 1"
        );
        // Once every worker has one: the oldest (parsed, not compared as text).
        e[2].last_checkpoint = entry(2, None, Some(1_500), "").last_checkpoint;
        assert_eq!(worker_totals(&e).last_checkpoint, e[1].last_checkpoint);
        assert_eq!(
            workers_problem(&e),
            None,
            "worker 1 has an error but is not failing"
        );
        e[2].worker_state = Some("failed".into());
        assert_eq!(worker_totals(&e).worker_state.as_deref(), Some("failed"));
        assert_eq!(
            workers_problem(&e).as_deref(),
            Some("worker 2: worker is failing")
        );
        let h = workload_health(
            RunState::Running,
            rollout(3, 3, 3),
            workers_problem(&e).as_deref(),
        );
        assert_eq!(h.phase, Phase::Degraded);
    }

    #[test]
    fn a_rescale_is_pending_and_says_from_what_to_what() {
        let h = rescaling_health(1, 3, Some(1));
        assert_eq!(h.phase, Phase::Pending);
        let p = h
            .conditions
            .iter()
            .find(|c| c.type_ == condition::PROGRESSING)
            .unwrap();
        assert_eq!(
            (p.status.as_str(), p.reason.as_str()),
            ("True", "Rescaling")
        );
        assert!(
            p.message.starts_with("Rescaling from 1 to 3 workers"),
            "{}",
            p.message
        );
        assert_eq!(status_of(&h, condition::READY), "False");
        assert_eq!(status_of(&h, condition::DEGRADED), "False");
    }

    #[test]
    fn a_set_of_deployments_is_rolled_out_when_each_is() {
        let d = |ready: i32| -> Deployment {
            serde_json::from_value(serde_json::json!({
                "metadata": {"name": "x", "generation": 1},
                "spec": {"replicas": 1, "selector": {}, "template": {}},
                "status": {"observedGeneration": 1, "replicas": 1,
                           "readyReplicas": ready, "updatedReplicas": 1}
            }))
            .unwrap()
        };
        let (up, down) = (d(1), d(0));
        let r = Rollout::of_set(&[Some(&up), Some(&up)]);
        assert_eq!((r.desired, r.replicas, r.ready), (2, 2, 2));
        assert_eq!(
            workload_health(RunState::Running, r, None).phase,
            Phase::Running
        );
        let r = Rollout::of_set(&[Some(&up), Some(&down)]);
        assert_eq!(
            status_of(
                &workload_health(RunState::Running, r, None),
                condition::READY
            ),
            "False"
        );
        assert!(!Rollout::of_set(&[Some(&up), None]).exists);
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
