//! A worker as a real pod: the test control plane's real node (kubelet,
//! containerd, runc; `K8S_REAL_NODE=1 tests/k8s/controlplane.sh start`)
//! runs a MarketProducer's Deployment, as the operator writes it, from the
//! worker image built here (`tests/k8s/images.sh`, config from
//! worker/Dockerfile). What only a kubelet does is checked where it
//! happens: the image is run, the probes make the pod Ready, the producer
//! in the pod writes to the broker through the pod network, the operator
//! reads the worker's /status at its pod IP, and the security context
//! holds for the container's process (non-root uid, no capabilities, a
//! read-only root filesystem, no ServiceAccount token). The chart installs
//! the operator itself as two real pods: they reach the API server from
//! inside through the `kubernetes` Service, one leads, and it reconciles.

mod k8s_common;

use std::process::Command;
use std::time::Duration;

use k8s_common::*;

/// The host pid of the container process whose command line holds `needle`.
fn container_pid(needle: &str) -> Option<u32> {
    let out = Command::new("pgrep").args(["-f", needle]).output().ok()?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.trim().parse().ok())
}

fn proc_field(pid: u32, field: &str) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .unwrap_or_default()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

#[test]
fn a_producer_pod_runs_from_the_image_built_here_with_its_security_context_enforced() {
    let (ns, _cleanup, pods) = real_node_test("rn-producer");
    let (brokers, registry_url) = (&pods.brokers, &pods.registry_url);
    let _op = Operator::start(OperatorOptions {
        namespace: &ns,
        leader_election: false,
        lease_name: "unused",
        identity: "real-node",
        extra_env: vec![("TICKFLOW_WORKER_IMAGE", WORKER_IMAGE.into())],
    });
    let topic = format!("ticks-{ns}");
    apply_ok(
        &ns,
        &format!(
            "apiVersion: tickflow.io/v1alpha1\nkind: MarketProducer\nmetadata: {{name: sim}}\nspec:\n  rate: 500\n  kafka: {{bootstrapServers: \"{brokers}\", schemaRegistryUrl: \"{registry_url}\"}}\n  topics: {{marketTicks: {topic}, orderEvents: orders-{ns}, bookUpdates: books-{ns}}}\n"
        ),
    );

    // Ready means the kubelet ran the image and its readiness probe passed;
    // records out come from the worker's /status, read at the pod's IP.
    let mp = wait_for(
        "the producer Running with records out",
        Duration::from_secs(120),
        || {
            let o = get(&ns, "marketproducer", "sim")?;
            (o["status"]["phase"] == "Running"
                && o["status"]["readyReplicas"] == 1
                && o["status"]["recordsOut"].as_u64().is_some_and(|n| n > 0))
            .then_some(o)
        },
    );
    let field = |path: &str| {
        kc(&[
            "get",
            "pods",
            "-n",
            &ns,
            "-o",
            &format!("jsonpath={{.items[0].{path}}}"),
        ])
    };
    let pod = field("metadata.name");
    assert_eq!(
        field("spec.nodeName"),
        cluster().vars["TICKFLOW_K8S_REAL_NODE"],
        "{mp}"
    );
    let image = field("status.containerStatuses[0].image");
    assert_eq!(image, WORKER_IMAGE);

    // The broker has the producer's records (it wrote through the pod network).
    let total: i64 = topic_end_offsets(&pods.host_brokers, &topic).values().sum();
    assert!(total > 0, "no records in {topic}");

    // The kubelet's logs and exec work, and the root filesystem is read-only.
    let logs = kc(&["logs", "-n", &ns, &pod]);
    assert!(logs.contains("status endpoint listening"), "{logs}");
    let exec = Command::new(&cluster().vars["KUBECTL"])
        .envs(&cluster().vars)
        .args([
            "exec",
            "-n",
            &ns,
            &pod,
            "--",
            "/usr/local/bin/tickflow-worker",
            "produce",
            "--count",
            "1",
            "--format",
            "jsonl",
            "--http-addr",
            "127.0.0.1:0",
            "--output-dir",
            "/written-by-exec",
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&exec.stderr);
    assert!(!exec.status.success(), "writing to / worked: {stderr}");
    assert!(stderr.contains("Read-only file system"), "{stderr}");

    // The container's process as the host sees it.
    let pid = container_pid(&format!("tickflow-worker produce.*{topic}"))
        .expect("the producer's process on the host");
    assert_eq!(proc_field(pid, "Uid"), "65532 65532 65532 65532");
    assert_eq!(proc_field(pid, "CapEff"), "0000000000000000");
    assert_eq!(proc_field(pid, "NoNewPrivs"), "1");
    let mountinfo = std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).unwrap();
    let root = mountinfo
        .lines()
        .find(|l| l.split_whitespace().nth(4) == Some("/"))
        .unwrap();
    assert!(
        root.split_whitespace()
            .nth(5)
            .unwrap()
            .split(',')
            .any(|o| o == "ro"),
        "{root}"
    );
    assert!(
        !mountinfo.contains("/var/run/secrets/kubernetes.io"),
        "a ServiceAccount token is mounted: {mountinfo}"
    );
}

#[test]
fn the_chart_runs_the_operator_as_two_real_pods_and_the_leader_reconciles_from_inside() {
    let (ns, _cleanup, pods) = real_node_test("rn-chart");
    let c = cluster();
    let _release = helm_install_operator(&ns, 2, &pods);
    let operators = kc(&[
        "get",
        "pods",
        "-n",
        &ns,
        "-l",
        "app.kubernetes.io/name=tickflow",
        "-o",
        "jsonpath={range .items[*]}{.metadata.name} {.spec.nodeName} {.status.phase}{\"\\n\"}{end}",
    ]);
    let operators: Vec<Vec<&str>> = operators.lines().map(|l| l.split(' ').collect()).collect();
    assert_eq!(operators.len(), 2, "{operators:?}");
    for o in &operators {
        assert_eq!(
            &o[1..],
            [c.vars["TICKFLOW_K8S_REAL_NODE"].as_str(), "Running"],
            "{operators:?}"
        );
    }
    // One of them holds the Lease.
    let holder = wait_for(
        "an operator pod to hold the Lease",
        Duration::from_secs(60),
        || {
            let h = kc(&[
                "get",
                "lease",
                "-n",
                &ns,
                "-o",
                "jsonpath={.items[0].spec.holderIdentity}",
            ]);
            operators.iter().any(|o| o[0] == h).then_some(h)
        },
    );

    // The leader, in its pod, turns a MarketProducer into a running worker
    // pod and reads the worker's /status at the pod IP.
    let topic = format!("ticks-{ns}");
    apply_ok(
        &ns,
        &format!(
            "apiVersion: tickflow.io/v1alpha1\nkind: MarketProducer\nmetadata: {{name: sim}}\nspec:\n  rate: 200\n  topics: {{marketTicks: {topic}, orderEvents: orders-{ns}, bookUpdates: books-{ns}}}\n"
        ),
    );
    wait_for(
        "the producer Running with records out",
        Duration::from_secs(120),
        || {
            let o = get(&ns, "marketproducer", "sim")?;
            (o["status"]["phase"] == "Running"
                && o["status"]["recordsOut"].as_u64().is_some_and(|n| n > 0))
            .then_some(())
        },
    );
    // The Lease holder says it leads; the other pod only waits.
    for o in &operators {
        let logs = kc(&["logs", "-n", &ns, o[0]]);
        assert_eq!(
            logs.contains("became the leader"),
            o[0] == holder,
            "{}: {logs}",
            o[0]
        );
        assert!(
            logs.contains("waiting for the leader Lease"),
            "{}: {logs}",
            o[0]
        );
    }
}
