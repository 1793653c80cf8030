//! Reads a worker's runtime figures from its own `/status` endpoint, by pod
//! IP (as Prometheus scrapes pods). The worker never writes to the API, so the
//! operator is the only writer of the resource's status.

use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::api::ListParams;
use kube::{Api, Client};
use tickflow_crds::WorkerStatus;

use crate::desired::WORKER_PORT;

/// What the pods of one workload look like right now.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Pods {
    /// Pods that exist, terminating ones included (a suspension is done
    /// only when this is zero: the worker's final checkpoint runs while
    /// its pod terminates).
    pub total: i32,
    /// IPs of running, not terminating pods.
    pub running_ips: Vec<String>,
    /// A container that keeps failing, as a message for the status.
    pub failing: Option<String>,
}

/// Waiting reasons that mean the worker cannot start or keeps crashing.
const FAILING: [&str; 6] = [
    "CrashLoopBackOff",
    "ErrImagePull",
    "ImagePullBackOff",
    "CreateContainerConfigError",
    "CreateContainerError",
    "InvalidImageName",
];

/// Lists the pods matching `selector`.
pub async fn observe(
    client: &Client,
    namespace: &str,
    selector: &str,
) -> Result<Pods, kube::Error> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let list = pods.list(&ListParams::default().labels(selector)).await?;
    Ok(summarize(&list.items))
}

/// Pure part of [`observe`].
pub fn summarize(pods: &[Pod]) -> Pods {
    let mut out = Pods {
        total: pods.len() as i32,
        ..Pods::default()
    };
    for p in pods {
        let Some(st) = &p.status else { continue };
        if st.phase.as_deref() == Some("Running") && p.metadata.deletion_timestamp.is_none() {
            out.running_ips.extend(st.pod_ip.clone());
        }
        for c in st.container_statuses.iter().flatten() {
            let Some(reason) = c
                .state
                .as_ref()
                .and_then(|s| s.waiting.as_ref())
                .and_then(|w| w.reason.clone())
                .filter(|r| FAILING.contains(&r.as_str()))
            else {
                continue;
            };
            // The last termination message is the worker's own error line.
            let last = c
                .last_state
                .as_ref()
                .and_then(|s| s.terminated.as_ref())
                .and_then(|t| t.message.clone().or_else(|| t.reason.clone()))
                .map(|m| format!(": {}", m.trim()))
                .unwrap_or_default();
            out.failing = Some(format!(
                "container {} {reason} after {} restart(s){last}",
                c.name, c.restart_count
            ));
        }
    }
    out
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn terminating_pods_count_and_crash_loops_are_reported() {
        let pods: Vec<Pod> = serde_json::from_value(serde_json::json!([
            {"metadata": {"name": "a", "deletionTimestamp": "2026-01-01T00:00:00Z"},
             "status": {"phase": "Running", "podIP": "10.0.0.1"}},
            {"metadata": {"name": "b"},
             "status": {"phase": "Running", "podIP": "10.0.0.2",
                        "containerStatuses": [{"name": "worker", "ready": false, "restartCount": 4,
                            "image": "i", "imageID": "",
                            "state": {"waiting": {"reason": "CrashLoopBackOff"}},
                            "lastState": {"terminated": {"exitCode": 1, "message": "query: unknown table nosuch\n"}}}]}}
        ]))
        .unwrap();
        let s = summarize(&pods);
        assert_eq!(s.total, 2);
        assert_eq!(s.running_ips, vec!["10.0.0.2".to_string()]);
        assert_eq!(
            s.failing.as_deref(),
            Some(
                "container worker CrashLoopBackOff after 4 restart(s): query: unknown table nosuch"
            )
        );
    }
}
