//! Health of what the sources depend on (the broker, the schema registry):
//! one log line when trouble starts and one every 10 s while it lasts, the
//! worker's state `Degraded` meanwhile, and a pause between polls so an
//! outage is not polled in a tight loop.

use std::time::{Duration, Instant};

use super::source::Trouble;
use crate::runtime::{StatusHandle, WorkerState};

const BROKER_PAUSE: Duration = Duration::from_millis(200);
const REGISTRY_FIRST_BACKOFF: Duration = Duration::from_millis(200);
const REGISTRY_MAX_BACKOFF: Duration = Duration::from_secs(10);
const LOG_EVERY: Duration = Duration::from_secs(10);
/// The client does not repeat an error every poll: this long without one
/// (or records arriving) means the connection is back.
const QUIET_MEANS_BACK: Duration = Duration::from_secs(10);

/// Broker outage: since when, last logged, last seen.
struct Outage {
    since: Instant,
    logged: Instant,
    seen: Instant,
}

pub(super) struct Health {
    broker: Option<Outage>,
    registry_backoff: Duration,
}

impl Default for Health {
    fn default() -> Self {
        Self {
            broker: None,
            registry_backoff: REGISTRY_FIRST_BACKOFF,
        }
    }
}

impl Health {
    /// Takes in what one poll reported (`records` read, `trouble` met),
    /// updates the worker's state and pauses while something is down.
    pub(super) fn observe(
        &mut self,
        trouble: Option<&Trouble>,
        records: usize,
        status: &StatusHandle,
    ) {
        match trouble {
            Some(Trouble::Broker(e)) => self.broker_down(e, status),
            Some(Trouble::Registry(e)) => self.registry_down(e, status),
            None => {}
        }
        if let Some(o) = &self.broker
            && !matches!(trouble, Some(Trouble::Broker(_)))
            && (records > 0 || o.seen.elapsed() >= QUIET_MEANS_BACK)
        {
            tracing::info!("Kafka reachable again after {:.1?}", o.since.elapsed());
            self.broker = None;
        }
        if !matches!(trouble, Some(Trouble::Registry(_)))
            && self.registry_backoff > REGISTRY_FIRST_BACKOFF
        {
            self.registry_backoff = REGISTRY_FIRST_BACKOFF;
        }
        if self.broker.is_none() && self.registry_backoff == REGISTRY_FIRST_BACKOFF {
            status.update(|s| {
                if s.state == WorkerState::Degraded {
                    s.state = WorkerState::Running;
                }
            });
        }
    }

    fn broker_down(&mut self, e: &str, status: &StatusHandle) {
        let now = Instant::now();
        match &mut self.broker {
            None => {
                tracing::warn!("Kafka connection problem, librdkafka is reconnecting: {e}");
                self.broker = Some(Outage {
                    since: now,
                    logged: now,
                    seen: now,
                });
            }
            Some(o) => {
                o.seen = now;
                if o.logged.elapsed() >= LOG_EVERY {
                    tracing::warn!(
                        "Kafka still unreachable after {:.0?}, reconnecting: {e}",
                        o.since.elapsed()
                    );
                    o.logged = now;
                }
            }
        }
        degraded(status, e);
        std::thread::sleep(BROKER_PAUSE);
    }

    fn registry_down(&mut self, e: &str, status: &StatusHandle) {
        degraded(status, e);
        tracing::warn!(
            "schema registry unavailable, retrying in {:?}: {e}",
            self.registry_backoff
        );
        std::thread::sleep(self.registry_backoff);
        self.registry_backoff = (self.registry_backoff * 2).min(REGISTRY_MAX_BACKOFF);
    }
}

fn degraded(status: &StatusHandle, e: &str) {
    status.update(|s| {
        s.state = WorkerState::Degraded;
        s.last_error = Some(e.to_string());
    });
}
