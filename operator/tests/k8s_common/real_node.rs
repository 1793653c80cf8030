//! Helpers of the tests on the real node (`K8S_REAL_NODE=1`
//! tests/k8s/controlplane.sh start): the images built here, the broker and
//! registry as pods reach them, the chart installed with the operator as pods.

use std::collections::BTreeMap;
use std::process::Command;

use super::*;

pub const WORKER_IMAGE: &str = "ghcr.io/tickflow/tickflow-worker:test";

/// Builds the images from the release binaries and imports them into the
/// node (what `kind load image-archive` does for kind); once per run, as
/// the tests run in parallel.
pub fn load_images() {
    static LOADED: std::sync::OnceLock<()> = std::sync::OnceLock::new();
    LOADED.get_or_init(|| {
        let out = Command::new("bash")
            .arg(repo().join("tests/k8s/images.sh"))
            .arg("load")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "images.sh load: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    });
}

/// The test broker and registry as pods reach them (and the broker as the
/// host does).
pub struct PodServers {
    pub brokers: String,
    pub registry_url: String,
    pub host_brokers: String,
}

impl PodServers {
    pub fn get() -> Self {
        let kafka = server_env("tests/kafka/kafka.sh");
        let registry = server_env("tests/schema_registry/registry.sh");
        let (Some(brokers), Some(registry_url)) = (
            kafka.get("KAFKA_POD_BROKERS"),
            registry.get("SCHEMA_REGISTRY_POD_URL"),
        ) else {
            panic!(
                "the broker and registry must listen for pods: start them with \
                 KAFKA_POD_HOST / SCHEMA_REGISTRY_POD_HOST set (tests/run.sh does)"
            );
        };
        PodServers {
            brokers: brokers.clone(),
            registry_url: registry_url.clone(),
            host_brokers: kafka["KAFKA_BROKERS"].clone(),
        }
    }
}

/// Deletes the namespace when the test ends: its pods are real processes.
pub struct Cleanup(pub String);

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = kubectl(&["delete", "namespace", &self.0, "--wait=false"]);
    }
}

/// Uninstalls a Helm release when the test ends.
pub struct Release {
    pub name: String,
    pub namespace: String,
}

impl Drop for Release {
    fn drop(&mut self) {
        let c = cluster();
        let _ = Command::new(&c.vars["HELM"])
            .envs(&c.vars)
            .args(["uninstall", &self.name, "--namespace", &self.namespace])
            .output();
    }
}

/// `helm install` of charts/tickflow (without its Redpanda dependency) into
/// `ns` with the operator image built here, watching only `ns`, the Kafka
/// defaults pointing at the test broker and registry; waits for the
/// operator pods to be Ready (they reached the API server from inside).
pub fn helm_install_operator(ns: &str, replicas: u32, pods: &PodServers) -> Release {
    let c = cluster();
    let chart = tempfile::tempdir().unwrap();
    let chart_dir = chart.path().join("tickflow");
    let copy = Command::new("bash")
        .arg(repo().join("tests/helm/chart-without-redpanda.sh"))
        .arg(&chart_dir)
        .output()
        .unwrap();
    assert!(
        copy.status.success(),
        "{}",
        String::from_utf8_lossy(&copy.stderr)
    );
    // The release is the namespace's own: its operator watches only it.
    let release = Release {
        name: ns.to_string(),
        namespace: ns.to_string(),
    };
    let install = Command::new(&c.vars["HELM"])
        .envs(&c.vars)
        .args(["install", ns])
        .arg(&chart_dir)
        .args(["--namespace", ns, "--wait", "--timeout", "3m"])
        .args(["--set", "image.tag=test", "--set", "workerImage.tag=test"])
        .args(["--set", &format!("replicaCount={replicas}")])
        .args(["--set", &format!("leaderElection.enabled={}", replicas > 1)])
        .args(["--set", &format!("watchNamespace={ns}")])
        .args(["--set", &format!("kafka.bootstrapServers={}", pods.brokers)])
        .args([
            "--set",
            &format!("kafka.schemaRegistryUrl={}", pods.registry_url),
        ])
        .output()
        .unwrap();
    assert!(
        install.status.success(),
        "helm install (the operator pods Ready, i.e. they reached the API server \
         from inside through the kubernetes Service): {}",
        String::from_utf8_lossy(&install.stderr)
    );
    release
}

/// A namespace whose pods run on the real node (deleted when the returned
/// guard drops), with the images imported and the servers as pods see them.
pub fn real_node_test(prefix: &str) -> (String, Cleanup, PodServers) {
    let ns = create_real_node_namespace(prefix);
    let cleanup = Cleanup(ns.clone());
    load_images();
    (ns, cleanup, PodServers::get())
}

/// Runs one of Apache Kafka's own tools (a main class of its jars) through
/// tests/kafka/kafka.sh.
pub fn kafka_tool(class: &str, args: &[&str]) -> std::process::Output {
    Command::new("bash")
        .arg(repo().join("tests/kafka/kafka.sh"))
        .args(["class", class])
        .args(args)
        .output()
        .unwrap()
}

/// End offset of each partition of `topic`, as the host reads them
/// (Kafka's GetOffsetShell).
pub fn topic_end_offsets(host_brokers: &str, topic: &str) -> BTreeMap<i32, i64> {
    let out = kafka_tool(
        "org.apache.kafka.tools.GetOffsetShell",
        &["--bootstrap-server", host_brokers, "--topic", topic],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Lines are TOPIC:PARTITION:OFFSET.
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let mut f = l.rsplitn(3, ':');
            let end = f.next()?.trim().parse().ok()?;
            let partition = f.next()?.parse().ok()?;
            Some((partition, end))
        })
        .collect()
}
