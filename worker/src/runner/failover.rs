//! In-process failover: when a run fails in a way new clients may not (a
//! stuck Kafka client, commits failing past their retries, the cluster not
//! back yet), everything is rebuilt and restored from the last checkpoint,
//! as a restarted process would, after an exponential backoff.
//!
//! The decision is made on typed errors ([`RunError::retry`]) and on how far
//! the attempt got ([`Progress`]), never on message text.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use super::{Positions, Progress, Retry, RunError, RunSummary};
use crate::runtime::{StatusHandle, WorkerState};

/// Where an attempt starts.
#[derive(Clone, Debug, Default)]
pub struct AttemptStart {
    pub start_fresh: bool,
    /// Where the first attempt started, when it restored nothing: a
    /// failover before the first checkpoint starts there again (not at a
    /// re-resolved "latest", which would skip what arrived meanwhile).
    pub start_positions: Option<Positions>,
}

/// When to give up.
pub struct FailoverPolicy<'a> {
    /// Failovers in a row without a committed checkpoint between them; 0:
    /// fail at the first error.
    pub max_failovers: u32,
    /// Whether the process may still hold more abandoned clients (each a
    /// stuck thread); past that it exits and leaves the restart to its
    /// supervisor.
    pub clients_left: &'a dyn Fn() -> bool,
    pub stop: &'a AtomicBool,
    pub status: &'a StatusHandle,
}

/// Runs `attempt` until it succeeds or the policy gives up.
pub fn run_with_failover(
    policy: &FailoverPolicy<'_>,
    start_fresh: bool,
    mut attempt: impl FnMut(&AttemptStart, &mut Progress) -> Result<RunSummary, RunError>,
) -> Result<RunSummary, RunError> {
    let mut failovers = 0;
    let mut in_a_row = 0;
    let mut start = AttemptStart {
        start_fresh,
        start_positions: None,
    };
    loop {
        let mut progress = Progress::default();
        let err = match attempt(&start, &mut progress) {
            Ok(mut summary) => {
                summary.failovers = failovers;
                return Ok(summary);
            }
            Err(e) => e,
        };
        if start.start_positions.is_none() {
            start.start_positions = progress.start_positions.take();
        }
        // A checkpoint on disk may hold output whose commit is in doubt:
        // from now on the run must restore, never start over.
        if progress.checkpoint_stored {
            start.start_fresh = false;
            start.start_positions = None;
        }
        if progress.checkpoint_committed {
            in_a_row = 0;
        }
        let retry = match err.retry() {
            Retry::Helps => (policy.clients_left)(),
            Retry::Useless => false,
            // Start-up worked before: failing now (other than restoring the
            // checkpoint) means the cluster is still recovering, e.g. the
            // broker is not back yet.
            Retry::Unknown => failovers > 0 && !progress.running && !progress.restoring,
        };
        if !retry || in_a_row >= policy.max_failovers || policy.stop.load(Ordering::Relaxed) {
            return Err(err);
        }
        in_a_row += 1;
        failovers += 1;
        let delay = Duration::from_secs(1 << (in_a_row - 1).min(5));
        tracing::warn!(
            failovers,
            "{err:#}; restarting from the last checkpoint in {delay:?}"
        );
        policy.status.update(|s| {
            s.state = WorkerState::Recovering;
            s.failovers = failovers;
            s.last_error = Some(format!("{err:#}"));
        });
        let until = Instant::now() + delay;
        while Instant::now() < until {
            if policy.stop.load(Ordering::Relaxed) {
                return Err(RunError::Setup(
                    anyhow::Error::new(err).context("stop requested while waiting to fail over"),
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}
