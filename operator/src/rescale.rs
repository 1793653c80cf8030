//! The rescale of a query with parallelism, as a pure decision from what is
//! live to what the controller does next.
//!
//! Worker i of N owns the source partitions p with p mod N == i, so a new N
//! hands partitions to other workers: a worker of the new set must never run
//! while a worker of the old set still does (both would write the same
//! partitions' output and state). Hence two phases:
//!
//! 1. every live worker Deployment is scaled to zero (each worker takes its
//!    final checkpoint on SIGTERM), and the controller waits until the
//!    Deployment controller has seen that and no pod of the old set exists,
//!    terminating ones included;
//! 2. only then is the new set applied, and Deployments beyond the new N
//!    (already at zero) are deleted.
//!
//! A Deployment or pod belongs to the set of N workers when the slot in its
//! env says so ([`desired::worker_slot`]): the env is what the worker acts
//! on, so that is what is compared, not a name or a label.

use crate::desired::{self, WorkerSlot};

/// What the rescale needs to know of one live worker Deployment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LiveWorker {
    pub name: String,
    /// The slot of its pod template (None: not a worker of any set).
    pub slot: Option<WorkerSlot>,
    /// spec.replicas.
    pub replicas: i32,
    /// status.replicas: pods its ReplicaSets still have (not terminating).
    pub status_replicas: i32,
    /// The Deployment controller has seen its latest spec.
    pub observed: bool,
}

impl LiveWorker {
    pub fn of(d: &k8s_openapi::api::apps::v1::Deployment) -> Self {
        let status = d.status.clone().unwrap_or_default();
        Self {
            name: d.metadata.name.clone().unwrap_or_default(),
            slot: desired::deployment_slot(d),
            // The API server's default for an unset field.
            replicas: d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1),
            status_replicas: status.replicas.unwrap_or(0),
            observed: status.observed_generation >= d.metadata.generation,
        }
    }

    fn stopped(&self) -> bool {
        self.replicas == 0 && self.observed && self.status_replicas == 0
    }
}

/// What to do next.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Plan {
    /// No other set is live (or it is gone): apply the desired set and
    /// delete `delete` (stopped Deployments the new set has no place for).
    /// `rescaled_from`: the number of workers before, when this pass
    /// completes a rescale.
    Apply {
        delete: Vec<String>,
        rescaled_from: Option<i32>,
    },
    /// Phase 1: scale these Deployments to zero.
    Stop {
        from: i32,
        to: i32,
        scale_down: Vec<String>,
    },
    /// Phase 1, scaled down: wait for the `pods` pods of the old set to go
    /// and its Deployments to report none.
    Wait { from: i32, to: i32, pods: usize },
}

impl Plan {
    /// The (from, to) of a rescale under way.
    pub fn rescaling(&self) -> Option<(i32, i32)> {
        match self {
            Plan::Stop { from, to, .. } | Plan::Wait { from, to, .. } => Some((*from, *to)),
            Plan::Apply { .. } => None,
        }
    }
}

fn current(slot: Option<WorkerSlot>, workers: i32) -> bool {
    slot.is_some_and(|s| s.is_in(workers))
}

/// The next step towards `workers` workers of query `query`, given its live
/// worker Deployments and the slots of all its pods (terminating ones
/// included; None for a pod without a slot).
pub fn plan(query: &str, workers: i32, live: &[LiveWorker], pods: &[Option<WorkerSlot>]) -> Plan {
    let old: Vec<&LiveWorker> = live.iter().filter(|w| !current(w.slot, workers)).collect();
    let old_pods = pods.iter().filter(|p| !current(**p, workers)).count();
    if old.is_empty() && old_pods == 0 {
        return Plan::Apply {
            delete: Vec::new(),
            rescaled_from: None,
        };
    }
    // For messages: the size of the set being replaced.
    let from = old
        .iter()
        .filter_map(|w| w.slot.map(|s| s.workers))
        .chain(
            pods.iter()
                .flatten()
                .filter(|s| !s.is_in(workers))
                .map(|s| s.workers),
        )
        .max()
        .unwrap_or(old.len() as i32);
    // The old set is gone when none of its pods is left and each of its
    // Deployments has settled at zero (one that has not may still be
    // creating a pod the pod list did not see).
    let gone = old_pods == 0 && old.iter().all(|w| w.stopped());
    if !gone {
        // Every live worker stops, not only the old ones: a worker of the
        // new set running beside the old one is the very overlap to end.
        let scale_down: Vec<String> = live
            .iter()
            .filter(|w| w.replicas > 0)
            .map(|w| w.name.clone())
            .collect();
        return if scale_down.is_empty() {
            Plan::Wait {
                from,
                to: workers,
                pods: old_pods,
            }
        } else {
            Plan::Stop {
                from,
                to: workers,
                scale_down,
            }
        };
    }
    // Phase 2. Old Deployments named like a worker of the new set are
    // overwritten by the apply; the rest go.
    let keep: Vec<String> = (0..workers)
        .map(|i| desired::worker_deployment_name(query, i))
        .collect();
    Plan::Apply {
        delete: old
            .iter()
            .filter(|w| !keep.contains(&w.name))
            .map(|w| w.name.clone())
            .collect(),
        rescaled_from: Some(from),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slot(index: i32, workers: i32) -> Option<WorkerSlot> {
        Some(WorkerSlot { index, workers })
    }

    fn worker(index: i32, workers: i32, replicas: i32, pods: i32) -> LiveWorker {
        LiveWorker {
            name: desired::worker_deployment_name("q", index),
            slot: slot(index, workers),
            replicas,
            status_replicas: pods,
            observed: true,
        }
    }

    fn set(workers: i32, replicas: i32) -> Vec<LiveWorker> {
        (0..workers)
            .map(|i| worker(i, workers, replicas, replicas))
            .collect()
    }

    fn pods_of(workers: i32) -> Vec<Option<WorkerSlot>> {
        (0..workers).map(|i| slot(i, workers)).collect()
    }

    #[test]
    fn the_desired_set_alone_is_applied_and_a_new_query_starts_at_once() {
        let apply = Plan::Apply {
            delete: vec![],
            rescaled_from: None,
        };
        assert_eq!(plan("q", 3, &[], &[]), apply);
        assert_eq!(plan("q", 3, &set(3, 1), &pods_of(3)), apply);
        // A lost Deployment of the current set is simply applied again.
        assert_eq!(plan("q", 3, &set(3, 1)[..2], &pods_of(3)[..2]), apply);
        // Suspended at the same size: nothing to stop first.
        assert_eq!(plan("q", 3, &set(3, 0), &[]), apply);
    }

    #[test]
    fn scaling_up_stops_the_old_set_waits_for_its_pods_then_applies() {
        // 1 → 3: worker 0 of 1 owns every partition, so it must be gone
        // before workers 0..3 of 3 start.
        let p = plan("q", 3, &set(1, 1), &pods_of(1));
        assert_eq!(
            p,
            Plan::Stop {
                from: 1,
                to: 3,
                scale_down: vec!["q-w0".into()]
            }
        );
        assert_eq!(p.rescaling(), Some((1, 3)));
        // Scaled to zero, the pod still terminating (final checkpoint).
        let mut stopping = set(1, 0);
        stopping[0].status_replicas = 0;
        assert_eq!(
            plan("q", 3, &stopping, &pods_of(1)),
            Plan::Wait {
                from: 1,
                to: 3,
                pods: 1
            }
        );
        // The Deployment controller has not seen the scale-down yet: no
        // pod listed, but one may still be created.
        let mut unsettled = set(1, 0);
        unsettled[0].observed = false;
        assert!(matches!(
            plan("q", 3, &unsettled, &[]),
            Plan::Wait { pods: 0, .. }
        ));
        // Gone: the new set, nothing to delete (w0 is overwritten).
        assert_eq!(
            plan("q", 3, &stopping, &[]),
            Plan::Apply {
                delete: vec![],
                rescaled_from: Some(1)
            }
        );
    }

    #[test]
    fn scaling_down_deletes_only_what_the_new_set_has_no_place_for() {
        assert_eq!(
            plan("q", 2, &set(3, 1), &pods_of(3)),
            Plan::Stop {
                from: 3,
                to: 2,
                scale_down: vec!["q-w0".into(), "q-w1".into(), "q-w2".into()]
            }
        );
        assert_eq!(
            plan("q", 2, &set(3, 0), &[]),
            Plan::Apply {
                delete: vec!["q-w2".into()],
                rescaled_from: Some(3)
            }
        );
    }

    #[test]
    fn a_pass_cut_short_in_phase_two_does_not_stop_the_new_workers_again() {
        // 2 → 3, the operator died after applying w0 (of 3) and before w1:
        // nothing old runs, so the apply goes on.
        let live = vec![worker(0, 3, 1, 1), worker(1, 2, 0, 0)];
        assert_eq!(
            plan("q", 3, &live, &[slot(0, 3)]),
            Plan::Apply {
                delete: vec![],
                rescaled_from: Some(2)
            }
        );
        // But a new worker beside an old one that still runs is stopped too.
        let live = vec![worker(0, 3, 1, 1), worker(1, 2, 1, 1)];
        assert_eq!(
            plan("q", 3, &live, &[slot(0, 3), slot(1, 2)]),
            Plan::Stop {
                from: 2,
                to: 3,
                scale_down: vec!["q-w0".into(), "q-w1".into()]
            }
        );
    }

    #[test]
    fn pods_without_a_deployment_or_a_slot_still_hold_the_new_set_back() {
        // A pod of the old set outlived its (deleted) Deployment.
        assert_eq!(
            plan("q", 2, &[], &[slot(0, 3)]),
            Plan::Wait {
                from: 3,
                to: 2,
                pods: 1
            }
        );
        // A pod whose env says nothing about its slot: the set that runs
        // beside it stops too.
        assert!(matches!(
            plan("q", 2, &set(2, 1), &[None]),
            Plan::Stop { scale_down, .. } if scale_down == ["q-w0", "q-w1"]
        ));
        assert!(matches!(
            plan("q", 2, &set(2, 0), &[None]),
            Plan::Wait { pods: 1, .. }
        ));
        // A hand-edited Deployment without a slot is stopped, then deleted.
        let mut odd = worker(5, 6, 1, 1);
        odd.slot = None;
        assert!(matches!(
            plan("q", 2, std::slice::from_ref(&odd), &[]),
            Plan::Stop { .. }
        ));
        odd.replicas = 0;
        odd.status_replicas = 0;
        assert_eq!(
            plan("q", 2, &[odd], &[]),
            Plan::Apply {
                delete: vec!["q-w5".into()],
                rescaled_from: Some(1)
            }
        );
    }
}
