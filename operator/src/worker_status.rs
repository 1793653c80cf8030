//! Reads a worker's runtime figures from its own `/status` endpoint, by pod
//! IP (as Prometheus scrapes pods). The worker never writes to the API, so the
//! operator is the only writer of the resource's status.

use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::api::ListParams;
use kube::{Api, Client};
use tickflow_worker::runtime::Status as WorkerStatus;

use crate::desired::WORKER_PORT;

/// IPs of the running pods matching `selector`.
pub async fn running_pod_ips(
    client: &Client,
    namespace: &str,
    selector: &str,
) -> Result<Vec<String>, kube::Error> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let list = pods.list(&ListParams::default().labels(selector)).await?;
    Ok(list
        .items
        .into_iter()
        .filter_map(|p| {
            let st = p.status?;
            (st.phase.as_deref() == Some("Running") && p.metadata.deletion_timestamp.is_none())
                .then_some(st.pod_ip)
                .flatten()
        })
        .collect())
}

/// The first /status document one of `ips` answers with; None when none
/// answers (the pod is starting, or the network does not reach it).
pub async fn fetch(ips: Vec<String>) -> Option<WorkerStatus> {
    tokio::task::spawn_blocking(move || {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(Duration::from_millis(1500)))
            .build()
            .into();
        ips.iter().find_map(|ip| {
            let url = format!("http://{ip}:{WORKER_PORT}/status");
            let mut resp = agent.get(&url).call().ok()?;
            let body = resp.body_mut().read_to_string().ok()?;
            serde_json::from_str::<WorkerStatus>(&body).ok()
        })
    })
    .await
    .ok()
    .flatten()
}
