//! Leader election on a coordination.k8s.io Lease, so that two or more
//! operator replicas are safe: only the holder reconciles.

use std::time::Duration;

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
        let mut confirmed = std::time::Instant::now();
        loop {
            tokio::time::sleep(duration / 4).await;
            match leases.get(&name).await {
                Ok(lease) => {
                    let spec = lease.spec.unwrap_or_default();
                    if spec.holder_identity.as_deref() != Some(identity.as_str()) {
                        tracing::error!(holder = ?spec.holder_identity, "the Lease has another holder");
                        return;
                    }
                    let renewed = spec.renew_time.map(|t| t.0);
                    let now = k8s_openapi::jiff::Timestamp::now();
                    if renewed.is_some_and(|r| now.duration_since(r).unsigned_abs() < duration) {
                        confirmed = std::time::Instant::now();
                    }
                }
                Err(e) => tracing::warn!("reading the Lease: {e}"),
            }
            if confirmed.elapsed() >= duration {
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
