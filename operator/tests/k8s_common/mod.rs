//! Shared helpers of the operator's end-to-end tests on the real control
//! plane (tests/k8s/controlplane.sh: etcd, kube-apiserver, controllers, KWOK).
//! The chart is installed once with helm; every test runs its own operator
//! process, with the chart's ServiceAccount token, watching its own namespace.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::Value;

mod pod;
mod real_node;
#[allow(unused_imports)] // Not every test binary starts workers.
pub use pod::*;
#[allow(unused_imports)] // Only the real-node tests use these.
pub use real_node::*;

pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

pub struct Cluster {
    pub vars: BTreeMap<String, String>,
    /// Kubeconfig holding a token of the chart's operator ServiceAccount.
    pub operator_kubeconfig: PathBuf,
}

fn run_script(args: &[&str]) -> Output {
    Command::new("bash")
        .arg(repo().join("tests/k8s/controlplane.sh"))
        .args(args)
        .output()
        .expect("running tests/k8s/controlplane.sh")
}

fn must(out: Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// `export K=V [K=V ...]` lines of a test script's `env` command.
pub fn export_lines(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("export "))
        .flat_map(|l| l.split_whitespace().map(str::to_string).collect::<Vec<_>>())
        .filter_map(|kv| {
            let (k, v) = kv.split_once('=')?;
            Some((k.to_string(), v.trim_matches(['"', '\'']).to_string()))
        })
        .collect()
}

/// The control plane (started if needed) with the chart installed.
pub fn cluster() -> &'static Cluster {
    static C: OnceLock<Cluster> = OnceLock::new();
    C.get_or_init(|| {
        if !run_script(&["status"]).status.success() {
            must(run_script(&["start"]), "controlplane.sh start");
        }
        let vars = export_lines(&must(run_script(&["env"]), "controlplane.sh env"));
        let mut c = Cluster {
            vars,
            operator_kubeconfig: PathBuf::new(),
        };
        helm_install(&c);
        let file = PathBuf::from(&c.vars["TICKFLOW_K8S_RUNDIR"]).join("operator-sa.kubeconfig");
        must(
            run_script(&[
                "sa-kubeconfig",
                "tickflow",
                "tickflow-operator",
                file.to_str().unwrap(),
                "2h",
            ]),
            "sa-kubeconfig",
        );
        c.operator_kubeconfig = file;
        c
    })
}

/// `helm upgrade --install` of charts/tickflow (minus the Redpanda
/// dependency, which cannot be downloaded here) into namespace tickflow.
fn helm_install(c: &Cluster) {
    let dest = tempfile::tempdir().unwrap().keep().join("tickflow");
    let copy = Command::new("bash")
        .arg(repo().join("tests/helm/chart-without-redpanda.sh"))
        .arg(&dest)
        .output()
        .unwrap();
    must(copy, "chart-without-redpanda.sh");
    let out = Command::new(&c.vars["HELM"])
        .envs(&c.vars)
        .args(["upgrade", "--install", "tickflow"])
        .arg(&dest)
        .args([
            "--namespace",
            "tickflow",
            "--create-namespace",
            "--wait",
            "--timeout",
            "3m",
        ])
        .output()
        .unwrap();
    must(out, "helm upgrade --install");
    // Helm installs CRDs only the first time: a control plane left running
    // from an earlier checkout gets this checkout's CRDs here, as an
    // upgrade's `kubectl apply -f crds/` would.
    let crds = Command::new(&c.vars["KUBECTL"])
        .envs(&c.vars)
        .args(["apply", "--server-side", "--force-conflicts", "-f"])
        .arg(repo().join("charts/tickflow/crds"))
        .output()
        .unwrap();
    must(crds, "kubectl apply -f charts/tickflow/crds");
}

pub fn kubectl(args: &[&str]) -> Output {
    let c = cluster();
    Command::new(&c.vars["KUBECTL"])
        .envs(&c.vars)
        .args(args)
        .output()
        .expect("running kubectl")
}

/// kubectl that must succeed; its stdout.
pub fn kc(args: &[&str]) -> String {
    must(kubectl(args), &format!("kubectl {}", args.join(" ")))
}

/// `kubectl apply` of a YAML document.
pub fn apply(namespace: &str, yaml: &str) -> Output {
    kubectl_stdin("apply", namespace, yaml)
}

/// `kubectl VERB -n NAMESPACE -f -` with `yaml` on stdin (`apply`, or
/// `create` for objects over the 256 KiB last-applied annotation limit).
pub fn kubectl_stdin(verb: &str, namespace: &str, yaml: &str) -> Output {
    let c = cluster();
    let mut child = Command::new(&c.vars["KUBECTL"])
        .envs(&c.vars)
        .args([verb, "-n", namespace, "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(yaml.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

pub fn apply_ok(namespace: &str, yaml: &str) {
    must(apply(namespace, yaml), "kubectl apply");
}

/// An object as JSON, or None when it does not exist.
pub fn get(namespace: &str, kind: &str, name: &str) -> Option<Value> {
    let out = kubectl(&["get", "-n", namespace, kind, name, "-o", "json"]);
    out.status
        .success()
        .then(|| serde_json::from_slice(&out.stdout).unwrap())
}

pub fn create_namespace(prefix: &str) -> String {
    let ns = unique_name(prefix);
    kc(&["create", "namespace", &ns]);
    ns
}

/// `prefix-<millis>`: a name no earlier run of the suite used.
fn unique_name(prefix: &str) -> String {
    format!(
        "{prefix}-{}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis()
            % 100_000_000
    )
}

/// A new namespace whose pods run on the real node (kubelet, containerd)
/// instead of KWOK's fake one; fails when the control plane has none.
#[allow(dead_code)] // only the real-node tests use it
pub fn create_real_node_namespace(prefix: &str) -> String {
    assert!(
        cluster().vars.contains_key("TICKFLOW_K8S_REAL_NODE"),
        "the test control plane runs without a real node: start it with \
         K8S_REAL_NODE=1 tests/k8s/controlplane.sh start (tests/run.sh does)"
    );
    let ns = unique_name(prefix);
    must(
        run_script(&["real-node-namespace", &ns]),
        "real-node-namespace",
    );
    ns
}

/// Polls `f` until it returns Some, or panics with `what` after `timeout`.
pub fn wait_for<T>(what: &str, timeout: Duration, f: impl FnMut() -> Option<T>) -> T {
    wait_for_or_explain(what, timeout, f, String::new)
}

/// [`wait_for`], adding what `explain` says (the cluster's view) to the
/// panic, so a timeout in CI says why.
pub fn wait_for_or_explain<T>(
    what: &str,
    timeout: Duration,
    mut f: impl FnMut() -> Option<T>,
    explain: impl FnOnce() -> String,
) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        if Instant::now() >= deadline {
            panic!(
                "timed out after {timeout:?} waiting for {what}\n{}",
                explain()
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

pub fn condition<'a>(obj: &'a Value, type_: &str) -> Option<&'a Value> {
    obj["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == type_)
}

pub fn worker_bin() -> PathBuf {
    target_dir().join("tickflow-worker")
}

fn target_dir() -> PathBuf {
    // The test binary is target/<profile>/deps/<name>; binaries are one up.
    std::env::current_exe()
        .unwrap()
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .to_path_buf()
}

/// A tickflow-operator process, killed on drop.
pub struct Operator {
    pub child: Child,
    pub http: String,
    pub log: PathBuf,
}

pub struct OperatorOptions<'a> {
    pub namespace: &'a str,
    pub leader_election: bool,
    pub lease_name: &'a str,
    pub identity: &'a str,
    pub extra_env: Vec<(&'a str, String)>,
}

impl Operator {
    /// Runs the operator as the chart's ServiceAccount, watching one namespace.
    pub fn start(o: OperatorOptions<'_>) -> Self {
        // A port that is free now (the OS picks it).
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let c = cluster();
        let http = format!("127.0.0.1:{port}");
        let log = std::env::temp_dir().join(format!(
            "tickflow-operator-{}-{}.log",
            o.namespace, o.identity
        ));
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_tickflow-operator"));
        cmd.arg("run")
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("KUBECONFIG", &c.operator_kubeconfig)
            .env("TICKFLOW_OPERATOR_HTTP_ADDR", &http)
            .env("TICKFLOW_WATCH_NAMESPACE", o.namespace)
            .env("TICKFLOW_LEADER_ELECTION", o.leader_election.to_string())
            .env("TICKFLOW_LEASE_NAME", o.lease_name)
            // The chart's Role allows Leases in the release namespace only.
            .env("POD_NAMESPACE", "tickflow")
            .env("POD_NAME", o.identity)
            .env("TICKFLOW_LEASE_DURATION", "6s")
            .env("TICKFLOW_STATUS_REFRESH", "1s")
            .env("TICKFLOW_WORKER_IMAGE", "tickflow-worker:e2e")
            .env("RUST_LOG", "info,kube=warn")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap());
        for (k, v) in o.extra_env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("starting tickflow-operator");
        let op = Operator { child, http, log };
        wait_for("the operator's /healthz", Duration::from_secs(20), || {
            op.metrics().map(|_| ())
        });
        op
    }

    /// The operator's /metrics text.
    pub fn metrics(&self) -> Option<String> {
        let mut resp = ureq::get(&format!("http://{}/metrics", self.http))
            .call()
            .ok()?;
        resp.body_mut().read_to_string().ok()
    }

    /// A metric's value (first sample whose line starts with `prefix`).
    pub fn metric(&self, prefix: &str) -> f64 {
        self.metrics()
            .unwrap_or_default()
            .lines()
            .filter(|l| l.starts_with(prefix))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // Kept only when the test failed, for a look at what happened.
        if !std::thread::panicking() {
            let _ = std::fs::remove_file(&self.log);
        }
    }
}

/// A StreamQuery manifest with inline SQL.
pub fn stream_query_yaml(name: &str, sql: &str, extra_spec: &str) -> String {
    let sql_block: String = sql.lines().map(|l| format!("    {l}\n")).collect();
    format!(
        "apiVersion: tickflow.io/v1alpha1\nkind: StreamQuery\nmetadata:\n  name: {name}\nspec:\n  sql: |\n{sql_block}{extra_spec}"
    )
}
