//! Leader election on a coordination.k8s.io Lease, so that two or more
//! operator replicas are safe: only the holder reconciles.

use std::time::{Duration, Instant};

use k8s_openapi::jiff::Timestamp;
use kube::Client;
use kube_lease_manager::LeaseManagerBuilder;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// A running election.
pub struct Election {
    leader: watch::Receiver<bool>,
    task: JoinHandle<kube_lease_manager::Result<kube_lease_manager::LeaseManager>>,
}

impl Election {
    /// Joins the election for Lease `name` in `namespace` as `identity`.
    pub async fn join(
        client: Client,
        namespace: &str,
        name: &str,
        identity: &str,
        duration: Duration,
    ) -> anyhow::Result<Self> {
        let secs = duration.as_secs().max(3);
        let manager = LeaseManagerBuilder::new(client, name)
            .with_namespace(namespace)
            .with_identity(identity)
            .with_duration(secs)
            // Renew well before expiry: a third of the lease.
            .with_grace((secs / 3).max(1))
            .with_field_manager(format!("tickflow-operator-{identity}"))
            .build()
            .await
            .map_err(|e| anyhow::anyhow!("leader election on Lease {namespace}/{name}: {e}"))?;
        let (leader, task) = manager.watch().await;
        Ok(Self { leader, task })
    }

    /// Waits until this process holds the Lease.
    pub async fn acquired(&mut self) -> anyhow::Result<()> {
        self.leader
            .wait_for(|l| *l)
            .await
            .map(|_| ())
            .map_err(|_| anyhow::anyhow!("leader election stopped"))
    }

    /// Resolves when the Lease is lost (another holder, or renewals failing).
    pub async fn lost(&mut self) {
        let _ = self.leader.wait_for(|l| !*l).await;
    }

    /// Resolves when this process can no longer be sure it holds the Lease:
    /// another holder, or no successful renewal for a whole lease duration
    /// (kube-lease-manager keeps retrying failed renewals without saying
    /// so, while a standby may already have taken over).
    pub async fn watchdog(
        client: Client,
        namespace: String,
        name: String,
        identity: String,
        duration: Duration,
    ) {
        let leases: kube::Api<k8s_openapi::api::coordination::v1::Lease> =
            kube::Api::namespaced(client, &namespace);
        let mut dog = Watchdog::new(duration, Instant::now());
        loop {
            tokio::time::sleep(duration / 4).await;
            match leases.get(&name).await {
                Ok(lease) => {
                    let spec = lease.spec.unwrap_or_default();
                    if spec.holder_identity.as_deref() != Some(identity.as_str()) {
                        tracing::error!(holder = ?spec.holder_identity, "the Lease has another holder");
                        return;
                    }
                    if let Some(renewed) = spec.renew_time {
                        dog.renewed(renewed.0, Timestamp::now(), Instant::now());
                    }
                }
                Err(e) => tracing::warn!("reading the Lease: {e}"),
            }
            if dog.expired(Instant::now()) {
                tracing::error!("the Lease was not renewed for {duration:?}");
                return;
            }
        }
    }

    /// Gives the Lease up so a standby takes over at once.
    pub async fn release(self) {
        drop(self.leader);
        match self.task.await {
            Ok(Ok(_)) => tracing::info!("released the leader Lease"),
            Ok(Err(e)) => tracing::warn!("releasing the leader Lease: {e}"),
            Err(e) => tracing::warn!("leader election task: {e}"),
        }
    }
}

/// The watchdog's clock: when the Lease was last renewed, on the monotonic
/// clock. A renewal counts from its `renewTime` (written by this process,
/// so by this clock), not from when it was read: a Lease read just before
/// it would expire leaves only what remains of its duration.
#[derive(Clone, Debug)]
pub struct Watchdog {
    duration: Duration,
    last_renewal: Instant,
}

impl Watchdog {
    /// Starts as if renewed at `now` (the Lease was just acquired).
    pub fn new(duration: Duration, now: Instant) -> Self {
        Self {
            duration,
            last_renewal: now,
        }
    }

    /// A read of the Lease at wall-clock `read_at` (monotonic `read_instant`)
    /// found it renewed at `renew_time`.
    pub fn renewed(&mut self, renew_time: Timestamp, read_at: Timestamp, read_instant: Instant) {
        let age = read_at
            .duration_since(renew_time)
            .try_into()
            .unwrap_or(Duration::ZERO);
        let at = read_instant.checked_sub(age).unwrap_or(read_instant);
        self.last_renewal = self.last_renewal.max(at);
    }

    /// No renewal for a whole lease duration by `now`.
    pub fn expired(&self, now: Instant) -> bool {
        now.saturating_duration_since(self.last_renewal) >= self.duration
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_watchdog_counts_from_the_renewal_not_the_read() {
        let d = Duration::from_secs(15);
        let start = Instant::now();
        let wall = Timestamp::from_second(1_000_000).unwrap();
        let mut dog = Watchdog::new(d, start);
        // At 14 s the Lease is read: renewed 13 s ago (at 1 s).
        let read = start + Duration::from_secs(14);
        dog.renewed(
            wall + Duration::from_secs(1),
            wall + Duration::from_secs(14),
            read,
        );
        assert!(!dog.expired(read));
        // No further renewal: the Lease is at risk 15 s after the renewal
        // (at 16 s), not 15 s after the read (29 s).
        assert!(!dog.expired(start + Duration::from_millis(15_900)));
        assert!(dog.expired(start + Duration::from_secs(16)));
        // An older renewal seen later never moves the clock back.
        dog.renewed(wall, wall + Duration::from_secs(15), read);
        assert!(dog.expired(start + Duration::from_secs(16)));
        // A fresh renewal does move it forward; a renew time "in the
        // future" (clock step) counts as now.
        dog.renewed(
            wall + Duration::from_secs(20),
            wall + Duration::from_secs(17),
            start + Duration::from_secs(17),
        );
        assert!(!dog.expired(start + Duration::from_secs(31)));
        assert!(dog.expired(start + Duration::from_secs(32)));
    }
}
