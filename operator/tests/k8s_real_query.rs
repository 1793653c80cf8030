//! The README's route on real pods: `helm install` puts the operator on the
//! real node (kubelet, containerd; `K8S_REAL_NODE=1
//! tests/k8s/controlplane.sh start`), then `manifests/marketproducer.yaml`
//! and `manifests/streamquery.yaml` run as pods from the images built here,
//! with the checkpoint PVC provisioned by the local-path provisioner (kind's
//! default) and mounted into the worker's pod.
//!
//! What only a kubelet does is checked where a user would see it: the query
//! is Running in `kubectl get streamqueries`; a worker pod force-deleted
//! mid-run is replaced and the replacement restores from the PVC; on
//! suspend the kubelet's SIGTERM makes the worker write a final checkpoint
//! holding every input offset; resume continues from it; and through all
//! of it the output topic, read with Apache Kafka's own consumer in
//! `read_committed`, holds exactly the rows of a file replay of the input.
//! A worker that cannot reach its broker fails its readiness probe and is
//! restarted by the kubelet, and the status says why.

mod k8s_common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use k8s_common::*;
use serde_json::{Value, json};

/// The StorageClass of the local-path provisioner on the real node
/// (tests/k8s/node.sh). Not the default class there: KWOK's fake pods keep
/// the kube-controller-manager's hostPath one.
const REAL_NODE_STORAGE_CLASS: &str = "local-path";

/// A manifest of `manifests/` as JSON.
fn manifest(file: &str) -> Value {
    let text = std::fs::read_to_string(repo().join("manifests").join(file)).unwrap();
    serde_yaml::from_str(&text).unwrap()
}

fn apply_value(ns: &str, v: &Value) {
    apply_ok(ns, &serde_json::to_string(v).unwrap());
}

fn set_state(ns: &str, kind: &str, name: &str, state: &str) {
    kc(&[
        "patch",
        "-n",
        ns,
        kind,
        name,
        "--type",
        "merge",
        "-p",
        &json!({"spec": {"state": state}}).to_string(),
    ]);
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// Names of the pods of a workload (terminating ones included).
fn pods_of(ns: &str, instance: &str) -> Vec<String> {
    kc(&[
        "get",
        "pods",
        "-n",
        ns,
        "-l",
        &format!("tickflow.io/instance={instance}"),
        "-o",
        "jsonpath={.items[*].metadata.name}",
    ])
    .split_whitespace()
    .map(str::to_string)
    .collect()
}

/// The one Ready pod of a workload, if it has exactly one and it is Ready.
fn ready_pod(ns: &str, instance: &str) -> Option<String> {
    let out = kc(&[
        "get",
        "pods",
        "-n",
        ns,
        "-l",
        &format!("tickflow.io/instance={instance}"),
        "-o",
        "jsonpath={range .items[*]}{.metadata.name} {.status.conditions[?(@.type==\"Ready\")].status}{\"\\n\"}{end}",
    ]);
    let pods: Vec<&str> = out.lines().collect();
    match pods.as_slice() {
        [one] => one.strip_suffix(" True").map(str::to_string),
        _ => None,
    }
}

fn status(ns: &str, kind: &str, name: &str) -> Value {
    get(ns, kind, name)
        .map(|o| o["status"].clone())
        .unwrap_or_default()
}

/// `kinds` of a namespace and its events, for failure messages.
fn describe(ns: &str, kinds: &str) -> String {
    format!(
        "{}\n{}",
        kc(&["get", kinds, "-n", ns, "-o", "wide"]),
        kc(&["get", "events", "-n", ns, "--sort-by=.lastTimestamp"])
    )
}

/// The directory of the query's checkpoint PV on the host (local-path PVs
/// are hostPath directories of the node).
fn checkpoint_dir(ns: &str) -> std::path::PathBuf {
    let pv = kc(&[
        "get",
        "pvc",
        "-n",
        ns,
        "-o",
        "jsonpath={.items[0].spec.volumeName}",
    ]);
    let path = kc(&["get", "pv", &pv, "-o", "jsonpath={.spec.hostPath.path}"]);
    assert!(!path.is_empty(), "PV {pv} of {ns} has no hostPath");
    path.into()
}

/// The newest complete checkpoint in `dir`: its id and manifest.
fn newest_checkpoint(dir: &Path) -> Option<(u64, Value)> {
    let (id, name) = std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| {
            let name = e.ok()?.file_name().into_string().ok()?;
            Some((name.strip_prefix("chk-")?.parse::<u64>().ok()?, name))
        })
        .max()?;
    let meta = std::fs::read(dir.join(name).join("meta.json")).ok()?;
    Some((id, serde_json::from_slice(&meta).unwrap()))
}

/// The input positions of a checkpoint for `topic`, per partition.
fn checkpointed_offsets(meta: &Value, topic: &str) -> BTreeMap<i32, i64> {
    meta["sources"]["kafka"]
        .as_object()
        .expect("the checkpoint holds Kafka positions")
        .iter()
        .filter_map(|(k, v)| {
            let (t, p) = k.rsplit_once('/')?;
            (t == topic).then(|| (p.parse().unwrap(), v.as_i64().unwrap()))
        })
        .collect()
}

/// `kubectl get streamqueries` shows the query Running, and its status has
/// records in and out and a checkpoint numbered at least `min_checkpoint`.
fn running(ns: &str, name: &str, min_checkpoint: u64) -> Option<Value> {
    let table = kc(&["get", "streamqueries", "-n", ns, "--no-headers"]);
    let cols: Vec<&str> = table.split_whitespace().collect();
    let s = status(ns, "streamquery", name);
    (cols.first() == Some(&name)
        && cols.get(1) == Some(&"Running")
        && s["recordsIn"].as_u64().is_some_and(|n| n > 0)
        && s["recordsOut"].as_u64().is_some_and(|n| n > 0)
        && s["lastCheckpoint"]["id"]
            .as_u64()
            .is_some_and(|id| id >= min_checkpoint))
    .then_some(s)
}

/// Sets the query's state to suspended and waits until its status says
/// Suspended and its pod is gone (the worker's final checkpoint is written
/// while the pod terminates).
fn suspend_query(ns: &str, name: &str, explain: impl FnOnce() -> String) {
    set_state(ns, "streamquery", name, "suspended");
    wait_for_or_explain(
        "the query Suspended with no pod",
        Duration::from_secs(120),
        || {
            (status(ns, "streamquery", name)["phase"] == "Suspended"
                && pods_of(ns, name).is_empty())
            .then_some(())
        },
        explain,
    );
}

/// Every record of `topic`, read from the host with Apache Kafka's console
/// consumer in `read_committed` (only committed transactions).
fn read_committed(host_brokers: &str, topic: &str) -> Vec<Value> {
    let out = kafka_tool(
        "org.apache.kafka.tools.consumer.ConsoleConsumer",
        &[
            "--bootstrap-server",
            host_brokers,
            "--topic",
            topic,
            "--from-beginning",
            "--isolation-level",
            "read_committed",
            "--timeout-ms",
            "10000",
        ],
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn run_worker(args: &[&str]) -> Value {
    let out = Command::new(worker_bin()).args(args).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "tickflow-worker {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(stdout.lines().last().unwrap_or("null")).unwrap()
}

/// The reference: the ticks topic as it is now, copied to JSON lines (by a
/// bounded query into a JSON topic, read by the console consumer), ordered
/// by event time, replayed from the file through sql/ohlc_5s.sql.
fn file_replay(ticks_topic: &str, servers: &PodServers, work: &Path) -> Vec<Value> {
    let registry = server_env("tests/schema_registry/registry.sh")["SCHEMA_REGISTRY_URL"].clone();
    let copy_sql = work.join("copy.sql");
    std::fs::write(
        &copy_sql,
        "CREATE STREAM ticks AS SELECT * FROM market_ticks;\n",
    )
    .unwrap();
    let copy_topic = format!("{ticks_topic}-copy");
    let summary = run_worker(&[
        "query",
        "--sql",
        copy_sql.to_str().unwrap(),
        "--brokers",
        &servers.host_brokers,
        "--schema-registry",
        &registry,
        "--input",
        &format!("market_ticks=kafka:{ticks_topic}"),
        "--output",
        &format!("ticks=kafka:{copy_topic}"),
        "--output-format",
        "json",
        "--bounded",
        "--name",
        &copy_topic,
        "--checkpoint-dir",
        work.join("copy-checkpoints").to_str().unwrap(),
    ]);
    let mut ticks = read_committed(&servers.host_brokers, &copy_topic);
    assert_eq!(
        summary["records_in"].as_u64(),
        Some(ticks.len() as u64),
        "{summary}"
    );
    // Per partition the topic is in event-time order; a stable sort keeps
    // the order of equal timestamps.
    ticks.sort_by(|a, b| a["ts"].as_str().cmp(&b["ts"].as_str()));
    let input = work.join("market-ticks.jsonl");
    let lines: Vec<String> = ticks.iter().map(Value::to_string).collect();
    std::fs::write(&input, lines.join("\n") + "\n").unwrap();
    let replay = work.join("replay.jsonl");
    run_worker(&[
        "query",
        "--sql",
        repo().join("sql/ohlc_5s.sql").to_str().unwrap(),
        "--input",
        &format!("market_ticks={}", input.display()),
        "--output",
        &format!("ohlc_5s={}", replay.display()),
    ]);
    std::fs::read_to_string(&replay)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// A row's identity: its window and symbol.
fn window_key(row: &Value) -> (String, String) {
    (
        row["window_start"].as_str().unwrap().to_string(),
        row["symbol"].as_str().unwrap().to_string(),
    )
}

/// The committed output is exactly the replay's rows up to the last window
/// the query closed (the replay closes the rest at the end of its file):
/// each window once, integers and strings equal, floats to 1e-9 relative.
fn assert_exactly_the_replay(output: &[Value], replay: &[Value]) {
    let mut got: BTreeMap<(String, String), &Value> = BTreeMap::new();
    for row in output {
        assert!(
            got.insert(window_key(row), row).is_none(),
            "window written twice: {row}"
        );
    }
    let last_closed = got
        .keys()
        .map(|k| k.0.clone())
        .max()
        .expect("no output rows");
    let want: BTreeMap<(String, String), &Value> = replay
        .iter()
        .map(|r| (window_key(r), r))
        .filter(|(k, _)| k.0 <= last_closed)
        .collect();
    let missing: Vec<_> = want.keys().filter(|k| !got.contains_key(*k)).collect();
    let extra: Vec<_> = got.keys().filter(|k| !want.contains_key(*k)).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "missing {missing:?}, not in the replay {extra:?}"
    );
    for (k, w) in &want {
        let g = got[k];
        for (col, wv) in w.as_object().unwrap() {
            let gv = &g[col];
            match (gv.as_f64(), wv.as_f64()) {
                (Some(a), Some(b)) if gv.is_f64() || wv.is_f64() => assert!(
                    (a - b).abs() <= 1e-9 * a.abs().max(b.abs()).max(1.0),
                    "{col} of {k:?}: {g} vs the replay's {w}"
                ),
                _ => assert_eq!(gv, wv, "{col} of {k:?}: {g} vs the replay's {w}"),
            }
        }
    }
}

#[test]
fn the_readme_route_on_real_pods_stays_exactly_once_through_a_killed_pod_suspend_and_resume() {
    let (ns, _cleanup, servers) = real_node_test("rn-route");
    let _release = helm_install_operator(&ns, 1, &servers);
    let ticks_topic = format!("{ns}-ticks");
    let output_topic = format!("{ns}-ohlc-5s");

    // The manifests as they are, but for what a shared test broker and this
    // test cluster need: topics of this test only, the real node's storage
    // class, and JSON output so that Kafka's own consumer reads it.
    let mut producer = manifest("marketproducer.yaml");
    producer["spec"]["topics"] = json!({
        "marketTicks": ticks_topic,
        "orderEvents": format!("{ns}-orders"),
        "bookUpdates": format!("{ns}-books"),
    });
    let producer_name = producer["metadata"]["name"].as_str().unwrap().to_string();
    apply_value(&ns, &producer);
    let mut query = manifest("streamquery.yaml");
    let spec = &mut query["spec"];
    spec["sources"] = json!([{"table": "market_ticks", "topic": ticks_topic}]);
    assert_eq!(spec["sinks"][0]["stream"], "ohlc_5s");
    spec["sinks"][0]["topic"] = json!(output_topic);
    spec["checkpoint"]["storageClassName"] = json!(REAL_NODE_STORAGE_CLASS);
    spec["outputFormat"] = json!("json");
    let name = query["metadata"]["name"].as_str().unwrap().to_string();
    apply_value(&ns, &query);

    // `kubectl get streamqueries` shows it Running with records in and out
    // and a checkpoint on the PVC.
    let explain = || describe(&ns, "sq,mp,pods,pvc");
    let first = wait_for_or_explain(
        "the query Running with records in and out and a checkpoint",
        Duration::from_secs(240),
        || running(&ns, &name, 1),
        explain,
    );
    let pod = ready_pod(&ns, &name).expect("one Ready worker pod");
    let volumes = kc(&[
        "get",
        "pod",
        "-n",
        &ns,
        &pod,
        "-o",
        "jsonpath={.spec.volumes[*].persistentVolumeClaim.claimName}",
    ]);
    assert!(!volumes.is_empty(), "the worker pod mounts no PVC");
    let dir = checkpoint_dir(&ns);
    assert!(
        newest_checkpoint(&dir).is_some(),
        "no checkpoint in the PV's directory {}: {:?}",
        dir.display(),
        std::fs::read_dir(&dir).map(|d| d
            .filter_map(|e| Some(e.ok()?.file_name()))
            .collect::<Vec<_>>())
    );

    // A pod force-deleted mid-run: the Deployment's replacement restores the
    // newest checkpoint from the same PVC (checkpoint ids go on from it; a
    // fresh start would begin again at 1).
    let before = first["lastCheckpoint"]["id"].as_u64().unwrap();
    kc(&[
        "delete",
        "pod",
        "-n",
        &ns,
        &pod,
        "--grace-period=0",
        "--force",
    ]);
    let replacement = wait_for_or_explain(
        "a replacement worker pod Ready",
        Duration::from_secs(180),
        || ready_pod(&ns, &name).filter(|p| *p != pod),
        explain,
    );
    wait_for_or_explain(
        "the replacement checkpointing after the killed pod's checkpoints",
        Duration::from_secs(180),
        || running(&ns, &name, before + 1),
        explain,
    );
    let logs = kc(&["logs", "-n", &ns, &replacement]);
    assert!(logs.contains("restoring checkpoint"), "{logs}");

    // The input stops; the query catches up.
    set_state(&ns, "marketproducer", &producer_name, "suspended");
    wait_for("the producer's pod gone", Duration::from_secs(120), || {
        pods_of(&ns, &producer_name).is_empty().then_some(())
    });
    let ends = topic_end_offsets(&servers.host_brokers, &ticks_topic);
    wait_for_or_explain(
        "the query caught up with the stopped input",
        Duration::from_secs(120),
        || (status(&ns, "streamquery", &name)["lag"].as_i64() == Some(0)).then_some(()),
        explain,
    );

    // Suspend: the kubelet sends SIGTERM and the worker writes a final
    // checkpoint (after the suspension was asked for) holding every input
    // offset before its pod is gone; the status says Suspended.
    let suspended_at = now_ms();
    suspend_query(&ns, &name, explain);
    let (final_id, meta) = newest_checkpoint(&dir).expect("a checkpoint on the PVC");
    assert!(
        meta["created_at_ms"].as_i64().unwrap() >= suspended_at,
        "the newest checkpoint {final_id} predates the suspension: no final checkpoint on SIGTERM: {meta}"
    );
    assert_eq!(checkpointed_offsets(&meta, &ticks_topic), ends, "{meta}");

    // Resume: the worker restores that checkpoint and goes on from its
    // offsets. (The producer stays suspended: resumed, the simulator would
    // start again from its seed and write the same event times, all late.)
    // Had it started over from the beginning instead, it would write every
    // window a second time, which the comparison below would catch.
    set_state(&ns, "streamquery", &name, "running");
    let resumed = wait_for_or_explain(
        "the resumed worker pod Ready",
        Duration::from_secs(180),
        || {
            (status(&ns, "streamquery", &name)["phase"] == "Running")
                .then(|| ready_pod(&ns, &name))
                .flatten()
        },
        explain,
    );
    let logs = kc(&["logs", "-n", &ns, &resumed]);
    assert!(
        logs.lines().any(|l| l.contains("restoring checkpoint")
            && (l.contains(&format!("id={final_id}"))
                || l.contains(&format!("\"id\":{final_id}")))),
        "the resumed worker did not restore checkpoint {final_id}: {logs}"
    );
    suspend_query(&ns, &name, explain);
    let (_, meta) = newest_checkpoint(&dir).expect("a checkpoint on the PVC");
    assert_eq!(checkpointed_offsets(&meta, &ticks_topic), ends, "{meta}");

    // The output, read in read_committed, is exactly the file replay.
    let work = tempfile::tempdir().unwrap();
    let replay = file_replay(&ticks_topic, &servers, work.path());
    let output = read_committed(&servers.host_brokers, &output_topic);
    assert!(
        output.len() >= 16,
        "only {} committed rows in {output_topic}",
        output.len()
    );
    assert_exactly_the_replay(&output, &replay);
}

#[test]
fn a_worker_that_cannot_reach_its_broker_fails_its_probe_and_the_status_says_why() {
    let (ns, _cleanup, servers) = real_node_test("rn-probe");
    let _op = Operator::start(OperatorOptions {
        namespace: &ns,
        leader_election: false,
        lease_name: "unused",
        identity: "real-node",
        extra_env: vec![("TICKFLOW_WORKER_IMAGE", WORKER_IMAGE.into())],
    });
    // Port 1 of the node: nothing listens, every connection is refused.
    let unreachable = format!("{}:1", cluster().vars["TICKFLOW_K8S_REAL_NODE_IP"]);
    let mut query = manifest("streamquery.yaml");
    query["spec"]["kafka"] = json!({
        "bootstrapServers": unreachable,
        "schemaRegistryUrl": servers.registry_url,
    });
    query["spec"]["checkpoint"]["storageClassName"] = json!(REAL_NODE_STORAGE_CLASS);
    let name = query["metadata"]["name"].as_str().unwrap().to_string();
    apply_value(&ns, &query);

    // The kubelet: the readiness probe fails while the worker tries the
    // broker, then the container exits and is restarted, backing off.
    let explain = || describe(&ns, "sq,pods");
    wait_for_or_explain(
        "a failed readiness probe and a restart back-off in the events",
        Duration::from_secs(240),
        || {
            let ev = kc(&["get", "events", "-n", &ns]);
            (ev.contains("Readiness probe failed")
                && ev.contains("Back-off restarting failed container"))
            .then_some(())
        },
        explain,
    );
    // The status says why, in the worker's own words.
    let degraded = wait_for_or_explain(
        "the Degraded condition naming the unreachable broker",
        Duration::from_secs(180),
        || {
            let s = status(&ns, "streamquery", &name);
            let c = condition(&json!({"status": s}), "Degraded")?.clone();
            (s["phase"] == "Degraded"
                && c["status"] == "True"
                && c["message"]
                    .as_str()?
                    .contains(&format!("cannot use Kafka at {unreachable}")))
            .then_some(c)
        },
        explain,
    );
    assert!(
        degraded["message"]
            .as_str()
            .unwrap()
            .contains("CrashLoopBackOff"),
        "{degraded}"
    );
}
