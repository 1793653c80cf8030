//! Reads a worker's runtime figures from its own `/status` endpoint, by pod
//! IP (as Prometheus scrapes pods), and what its pods look like. The worker
//! never writes to the API, so the operator is the only writer of the
//! resource's status. The listing is I/O; [`summarize`] and [`worker_pods`]
//! are the pure readings of it.

use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::api::ListParams;
use kube::{Api, Client};
use tickflow_crds::WorkerStatus;

use crate::desired::{self, WORKER_PORT, WorkerSlot};

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
    Ok(summarize(&list(client, namespace, selector).await?))
}

/// The pods matching `selector`, terminating ones included.
pub async fn list(
    client: &Client,
    namespace: &str,
    selector: &str,
) -> Result<Vec<Pod>, kube::Error> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    Ok(pods
        .list(&ListParams::default().labels(selector))
        .await?
        .items)
}

/// One pod of a query with parallelism, as its status entry needs it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WorkerPod {
    pub name: String,
    /// The slot in its env (None: not a worker of any parallel set).
    pub slot: Option<WorkerSlot>,
    /// Its Ready condition is True.
    pub ready: bool,
    /// Being deleted (a worker's final checkpoint runs meanwhile).
    pub terminating: bool,
    /// Its IP while it runs and is not terminating: where /status is read.
    pub running_ip: Option<String>,
}

/// Pure: the pods of a query with parallelism, by what they are.
pub fn worker_pods(pods: &[Pod]) -> Vec<WorkerPod> {
    pods.iter()
        .map(|p| {
            let st = p.status.as_ref();
            let terminating = p.metadata.deletion_timestamp.is_some();
            let running = st.and_then(|s| s.phase.as_deref()) == Some("Running");
            WorkerPod {
                name: p.metadata.name.clone().unwrap_or_default(),
                slot: p.spec.as_ref().and_then(desired::worker_slot),
                ready: st
                    .and_then(|s| s.conditions.as_ref())
                    .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True")),
                terminating,
                running_ip: st
                    .and_then(|s| s.pod_ip.clone())
                    .filter(|_| running && !terminating),
            }
        })
        .collect()
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
            // The termination message is the tail of the worker's log
            // (FallbackToLogsOnError): its last line is the worker's error.
            let last = c
                .last_state
                .as_ref()
                .and_then(|s| s.terminated.as_ref())
                .and_then(|t| t.message.clone().or_else(|| t.reason.clone()))
                .and_then(|m| {
                    m.lines()
                        .rev()
                        .map(str::trim)
                        .find(|l| !l.is_empty())
                        .map(str::to_string)
                })
                .map(|m| format!(": {m}"))
                .unwrap_or_default();
            out.failing = Some(format!(
                "container {} {reason} after {} restart(s){last}",
                c.name, c.restart_count
            ));
        }
    }
    out
}

/// Largest /status answer read from a worker: a larger one is ignored (a
/// worker image is not trusted to answer with a small document).
pub const MAX_STATUS_BYTES: u64 = 1024 * 1024;

/// The first /status document one of `ips` answers with; None when none
/// answers (the pod is starting, or the network does not reach it).
pub async fn fetch(ips: Vec<String>) -> Option<WorkerStatus> {
    fetch_urls(
        ips.iter()
            .map(|ip| format!("http://{ip}:{WORKER_PORT}/status"))
            .collect(),
    )
    .await
}

/// The first of `urls` that answers with a /status document of at most
/// [`MAX_STATUS_BYTES`].
pub async fn fetch_urls(urls: Vec<String>) -> Option<WorkerStatus> {
    tokio::task::spawn_blocking(move || {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(Duration::from_millis(1500)))
            .build()
            .into();
        urls.iter().find_map(|url| {
            let mut resp = agent.get(url).call().ok()?;
            let body = match resp
                .body_mut()
                .with_config()
                .limit(MAX_STATUS_BYTES)
                .read_to_string()
            {
                Ok(b) => b,
                Err(e) => {
                    tracing::warn!(%url, "worker /status not read: {e}");
                    return None;
                }
            };
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

    /// Serves `body` as /status once per request on a free local port.
    fn serve(body: String, requests: usize) -> String {
        let server = tiny_http::Server::http("127.0.0.1:0").unwrap();
        let url = format!("http://{}/status", server.server_addr());
        std::thread::spawn(move || {
            for req in server.incoming_requests().take(requests) {
                let _ = req.respond(tiny_http::Response::from_string(body.clone()));
            }
        });
        url
    }

    #[tokio::test]
    async fn status_answers_over_the_size_cap_are_ignored() {
        let small = serde_json::json!({"state": "failed", "last_error": "boom"}).to_string();
        let w = fetch_urls(vec![serve(small, 1)])
            .await
            .expect("small answer read");
        assert_eq!(w.last_error.as_deref(), Some("boom"));
        // 2 MiB of error text: valid JSON, but more than the operator reads.
        let huge =
            serde_json::json!({"state": "failed", "last_error": "x".repeat(2 << 20)}).to_string();
        assert!(fetch_urls(vec![serve(huge, 1)]).await.is_none());
    }

    #[test]
    fn worker_pods_carry_their_slot_readiness_and_reachability() {
        let pods: Vec<Pod> = serde_json::from_value(serde_json::json!([
            {"metadata": {"name": "q-w0-a"},
             "spec": {"containers": [{"name": "worker", "env": [
                 {"name": "TICKFLOW_WORKERS", "value": "3"},
                 {"name": "TICKFLOW_WORKER_INDEX", "value": "0"}]}]},
             "status": {"phase": "Running", "podIP": "10.0.0.1",
                        "conditions": [{"type": "Ready", "status": "True"}]}},
            {"metadata": {"name": "q-w1-b", "deletionTimestamp": "2026-01-01T00:00:00Z"},
             "spec": {"containers": [{"name": "worker", "env": [
                 {"name": "TICKFLOW_WORKERS", "value": "1"},
                 {"name": "TICKFLOW_WORKER_INDEX", "value": "0"}]}]},
             "status": {"phase": "Running", "podIP": "10.0.0.2",
                        "conditions": [{"type": "Ready", "status": "True"}]}},
            {"metadata": {"name": "classic"},
             "spec": {"containers": [{"name": "worker"}]},
             "status": {"phase": "Pending"}}
        ]))
        .unwrap();
        let w = worker_pods(&pods);
        assert_eq!(
            w[0].slot,
            Some(WorkerSlot {
                index: 0,
                workers: 3
            })
        );
        assert!(w[0].ready && !w[0].terminating);
        assert_eq!(w[0].running_ip.as_deref(), Some("10.0.0.1"));
        assert_eq!(
            w[1].slot,
            Some(WorkerSlot {
                index: 0,
                workers: 1
            })
        );
        assert!(w[1].terminating);
        assert_eq!(w[1].running_ip, None, "a terminating pod is not read");
        assert_eq!(w[2].slot, None);
        assert!(!w[2].ready);
    }

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
                            "lastState": {"terminated": {"exitCode": 1, "message": "2026-01-01T00:00:00Z INFO starting\nquery: unknown table nosuch\n\n"}}}]}}
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
