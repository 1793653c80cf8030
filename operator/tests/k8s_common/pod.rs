//! Workers started as their pods would run them: a Deployment's container
//! args and env, with local paths standing in for the pod's volumes and the
//! HTTP endpoint on the pod's IP (KWOK runs no containers).

use std::collections::BTreeMap;
use std::process::Command;
use std::time::Duration;

use super::*;

/// `export K=V` lines of a test-server script (started if needed).
pub fn server_env(script: &str) -> BTreeMap<String, String> {
    let path = repo().join(script);
    let start = Command::new("bash")
        .arg(&path)
        .arg("start")
        .output()
        .unwrap();
    assert!(
        start.status.success(),
        "{script} start: {}",
        String::from_utf8_lossy(&start.stderr)
    );
    let out = Command::new("bash").arg(&path).arg("env").output().unwrap();
    export_lines(&String::from_utf8_lossy(&out.stdout))
}

/// A worker process and its log; killed if the test ends (or fails) before
/// it stopped.
pub struct Worker {
    child: std::process::Child,
    log: std::path::PathBuf,
}

impl Worker {
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The run summary the worker printed last (a JSON line on stdout).
    pub fn summary(&self) -> Option<serde_json::Value> {
        let out = std::fs::read_to_string(self.log.with_extension("stdout")).ok()?;
        out.lines().rev().find_map(|l| serde_json::from_str(l).ok())
    }

    /// Panics with the log if the process has exited.
    pub fn assert_running(&mut self) {
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!("the worker exited ({status}): {}", self.log());
        }
    }

    /// SIGTERM, as Kubernetes stops a pod; the worker must exit cleanly.
    /// Returns its run summary.
    pub fn stop(mut self) -> Option<serde_json::Value> {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let exit = self.child.wait().unwrap();
        assert!(exit.success(), "worker on SIGTERM: {exit}: {}", self.log());
        self.summary()
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts the worker exactly as the Deployment's container would run, with
/// `mounts` (container path → local path) standing in for volumes and the
/// HTTP endpoint on the pod's IP.
pub fn start_like_the_pod(
    ns: &str,
    deployment: &str,
    pod_ip: &str,
    mounts: &[(&str, String)],
    log: &std::path::Path,
) -> Worker {
    let d = get(ns, "deployment", deployment).unwrap();
    let container = &d["spec"]["template"]["spec"]["containers"][0];
    let args: Vec<String> = serde_json::from_value(container["args"].clone()).unwrap();
    let args: Vec<String> = args
        .into_iter()
        .map(|a| {
            mounts
                .iter()
                .find(|(from, _)| *from == a)
                .map_or(a, |(_, to)| to.clone())
        })
        .collect();
    let mut worker = Command::new(worker_bin());
    worker
        .args(&args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default());
    for e in container["env"].as_array().unwrap() {
        let (k, v) = (
            e["name"].as_str().unwrap(),
            e["value"].as_str().unwrap_or_default(),
        );
        // The pod's network: its own IP, the worker's port; files named by
        // the env (mounted Secrets) where the mounts put them.
        let v = if k == "TICKFLOW_HTTP_ADDR" {
            v.replace("0.0.0.0", pod_ip)
        } else {
            mounts
                .iter()
                .find(|(from, _)| *from == v)
                .map_or(v.to_string(), |(_, to)| to.clone())
        };
        worker.env(k, v);
    }
    worker
        .stdout(std::fs::File::create(log.with_extension("stdout")).unwrap())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .map(|child| Worker {
            child,
            log: log.to_path_buf(),
        })
        .unwrap()
}

/// Starts a StreamQuery's worker like its pod: the ConfigMap's SQL and a
/// directory under `dir` standing in for the volumes (`extra`: more
/// container path → local path mappings, e.g. Secret files).
pub fn start_query_pod(ns: &str, name: &str, pod_ip: &str, dir: &std::path::Path) -> Worker {
    start_query_pod_with(ns, name, pod_ip, dir, &[])
}

pub fn start_query_pod_with(
    ns: &str,
    name: &str,
    pod_ip: &str,
    dir: &std::path::Path,
    extra: &[(&str, String)],
) -> Worker {
    let cm = get(ns, "configmap", &format!("{name}-sql")).unwrap();
    let sql_file = dir.join("query.sql");
    std::fs::write(&sql_file, cm["data"]["query.sql"].as_str().unwrap()).unwrap();
    let checkpoints = dir.join("checkpoints");
    let mut mounts = vec![
        (
            "/etc/tickflow/sql/query.sql",
            sql_file.to_str().unwrap().to_string(),
        ),
        (
            "/var/lib/tickflow/checkpoints",
            checkpoints.to_str().unwrap().to_string(),
        ),
    ];
    mounts.extend(extra.iter().cloned());
    start_like_the_pod(ns, name, pod_ip, &mounts, &dir.join("worker.log"))
}

/// The IP KWOK gives the instance's pod once it is scheduled. Generous: on
/// two busy cores the scheduler may first find the pod's PVC unbound and
/// retry it after a backoff.
pub fn pod_ip(ns: &str, instance: &str) -> String {
    let selector = format!("tickflow.io/instance={instance}");
    wait_for_or_explain(
        "a Running pod with an IP",
        Duration::from_secs(120),
        || {
            let ip = kc(&[
                "get",
                "pods",
                "-n",
                ns,
                "-l",
                &selector,
                "-o",
                "jsonpath={.items[*].status.podIP}",
            ]);
            (!ip.is_empty()).then_some(ip)
        },
        || {
            let show = |args: &[&str]| {
                let out = kubectl(args);
                String::from_utf8_lossy(&[out.stdout, out.stderr].concat()).into_owned()
            };
            let pods = show(&["get", "pods,pvc", "-n", ns, "-o", "wide"]);
            let events = show(&["get", "events", "-n", ns, "--sort-by=.lastTimestamp"]);
            format!("{pods}\n{events}")
        },
    )
}

/// Simulated market data in Avro on `<ns>-ticks` (and `-orders`, `-books`);
/// returns the ticks topic.
pub fn produce_ticks(ns: &str, brokers: &str, registry: &str, count: u64) -> String {
    let ticks = format!("{ns}-ticks");
    let produced = Command::new(worker_bin())
        .args(["produce", "--count", &count.to_string()])
        .args(["--brokers", brokers, "--schema-registry", registry])
        .args(["--ticks-topic", &ticks])
        .args(["--orders-topic", &format!("{ns}-orders")])
        .args(["--books-topic", &format!("{ns}-books")])
        .output()
        .unwrap();
    assert!(
        produced.status.success(),
        "{}",
        String::from_utf8_lossy(&produced.stderr)
    );
    ticks
}
