//! Waiting for the database before a long-running query starts: a server
//! that is down or refuses the credentials keeps the worker up and
//! `Degraded` (with the reason in `/status`, so the operator shows it in
//! the resource's conditions) instead of exiting into a crash loop. The
//! checkpoint and the open epoch stay where they are; the query starts as
//! soon as a connection succeeds, e.g. after the Secret was fixed.
//!
//! One log line when the trouble starts and one per [`LOG_EVERY`] while it
//! lasts; tries back off from 1 s to [`MAX_BACKOFF`].

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use super::{PgError, PostgresConnection, classify};
use crate::runtime::{StatusHandle, WorkerState};

const FIRST_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
const LOG_EVERY: Duration = Duration::from_secs(60);

/// Returns once a connection to `connection` succeeds (`true`) or a stop
/// was requested (`false`).
pub fn wait_until_reachable(
    connection: &PostgresConnection,
    status: &StatusHandle,
    stop: &AtomicBool,
) -> bool {
    let mut backoff = FIRST_BACKOFF;
    let mut trouble: Option<(Instant, Instant)> = None;
    loop {
        status.beat();
        let error = match try_connect(connection) {
            Ok(()) => {
                if let Some((since, _)) = trouble {
                    tracing::info!(
                        "{}: reachable again after {:.0?}",
                        connection.describe(),
                        since.elapsed()
                    );
                }
                return true;
            }
            Err(e) => e,
        };
        let now = Instant::now();
        match &mut trouble {
            None => {
                tracing::error!(
                    "{error}; waiting for the database (retrying up to every {MAX_BACKOFF:?})"
                );
                trouble = Some((now, now));
            }
            Some((since, logged)) if logged.elapsed() >= LOG_EVERY => {
                tracing::error!("{error}; still waiting after {:.0?}", since.elapsed());
                *logged = now;
            }
            Some(_) => {}
        }
        status.update(|s| {
            s.state = WorkerState::Degraded;
            s.last_error = Some(error.to_string());
        });
        let until = now + backoff;
        while Instant::now() < until {
            if stop.load(Ordering::Relaxed) {
                return false;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// Connects, authenticates and runs a first statement once.
fn try_connect(connection: &PostgresConnection) -> Result<(), PgError> {
    connection
        .open()?
        .simple_query("SELECT 1")
        .map_err(|e| classify(connection.describe(), "checking the connection", &e))?;
    Ok(())
}
