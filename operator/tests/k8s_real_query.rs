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
//! restarted by the kubelet, and the status says why. A query with
//! `spec.parallelism` (state in Kafka, no PVC), scaled by `kubectl scale`
//! from one worker pod to three while its input arrives, also writes
//! exactly the rows of the file replay.

mod k8s_common;

use std::collections::{BTreeMap, BTreeSet};
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
        assert_same_row(k, got[k], w);
    }
}

/// One output row against the replay's: integers and strings equal, floats
/// to 1e-9 relative.
fn assert_same_row(k: &(String, String), g: &Value, w: &Value) {
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

/// [`assert_exactly_the_replay`] for a query on several workers. Each
/// worker closes windows by its own watermark (the lowest of its
/// partitions'), so when the input stops the last window may be closed for
/// one worker's symbols and not yet for another's: their partitions' last
/// event times differ by milliseconds, and a window's end can fall between
/// them. So every symbol is compared exactly up to the last window closed
/// for all symbols; at most one window after it may be closed for some
/// symbols only, and those rows must be the replay's too.
fn assert_exactly_the_replay_of_workers(output: &[Value], replay: &[Value]) {
    let mut last_of_symbol: BTreeMap<String, String> = BTreeMap::new();
    for row in output {
        let (window, symbol) = window_key(row);
        let last = last_of_symbol.entry(symbol).or_default();
        if window > *last {
            *last = window;
        }
    }
    let closed_by_all = last_of_symbol
        .values()
        .min()
        .expect("no output rows")
        .clone();
    let windows: BTreeSet<String> = output.iter().map(|r| window_key(r).0).collect();
    let closed_by_some: Vec<&String> = windows.iter().filter(|w| **w > closed_by_all).collect();
    assert!(
        closed_by_some.len() <= 1,
        "windows closed for some symbols only: {closed_by_some:?} after {closed_by_all}, the \
         last one closed for all (a worker stopped writing?); last window per symbol: \
         {last_of_symbol:?}"
    );
    let (upto, tail): (Vec<Value>, Vec<Value>) = output
        .iter()
        .cloned()
        .partition(|r| window_key(r).0 <= closed_by_all);
    assert_exactly_the_replay(&upto, replay);
    let want: BTreeMap<(String, String), &Value> =
        replay.iter().map(|r| (window_key(r), r)).collect();
    let mut seen = BTreeSet::new();
    for row in &tail {
        let k = window_key(row);
        assert!(seen.insert(k.clone()), "window written twice: {row}");
        let w = want
            .get(&k)
            .unwrap_or_else(|| panic!("{k:?} is not in the replay: {row}"));
        assert_same_row(&k, row, w);
    }
}

/// The status of a query with parallelism once it runs `n` workers as the
/// status says: its current generation, phase Running, readyReplicas `n`,
/// and one entry per worker, in index order, with its Deployment, a ready
/// pod and figures of that pod's own (running, records read, an epoch
/// committed).
fn running_workers(ns: &str, name: &str, n: usize) -> Option<Value> {
    let o = get(ns, "streamquery", name)?;
    let s = &o["status"];
    let workers = s["workers"].as_array()?;
    let each = workers.iter().enumerate().all(|(i, w)| {
        w["index"].as_u64() == Some(i as u64)
            && w["deployment"].as_str() == Some(format!("{name}-w{i}").as_str())
            && w["pod"].is_string()
            && w["ready"].as_bool() == Some(true)
            && w["workerState"].as_str() == Some("running")
            && w["recordsIn"].as_u64().is_some_and(|r| r > 0)
            && w["lastCheckpoint"]["id"].as_u64().is_some()
    });
    (s["observedGeneration"] == o["metadata"]["generation"]
        && s["phase"] == "Running"
        && s["readyReplicas"].as_u64() == Some(n as u64)
        && workers.len() == n
        && s["workersReporting"].as_u64() == Some(n as u64)
        && each)
        .then(|| s.clone())
}

/// The value of `var` in the worker container of a Deployment's template.
fn deployment_env(ns: &str, deployment: &str, var: &str) -> String {
    kc(&[
        "get",
        "deployment",
        "-n",
        ns,
        deployment,
        "-o",
        &format!("jsonpath={{.spec.template.spec.containers[0].env[?(@.name==\"{var}\")].value}}"),
    ])
}

/// The pods of a workload as JSON objects (terminating ones included).
fn pod_objects(ns: &str, instance: &str) -> Vec<Value> {
    let list: Value = serde_json::from_str(&kc(&[
        "get",
        "pods",
        "-n",
        ns,
        "-l",
        &format!("tickflow.io/instance={instance}"),
        "-o",
        "json",
    ]))
    .unwrap();
    list["items"].as_array().cloned().unwrap_or_default()
}

/// What Kafka's ConsumerGroupCommand says of consumer group `group`
/// (stdout and stderr), read from the host.
fn describe_group(host_brokers: &str, group: &str) -> String {
    let out = kafka_tool(
        "org.apache.kafka.tools.consumer.group.ConsumerGroupCommand",
        &[
            "--bootstrap-server",
            host_brokers,
            "--describe",
            "--group",
            group,
        ],
    );
    format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The offsets committed to `group` for `topic`, per partition, from
/// [`describe_group`]'s table (GROUP TOPIC PARTITION CURRENT-OFFSET
/// LOG-END-OFFSET LAG ...); partitions without a committed offset ("-")
/// are left out.
fn committed_offsets(described: &str, group: &str, topic: &str) -> BTreeMap<i32, i64> {
    described
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            if f.len() < 4 || f[0] != group || f[1] != topic {
                return None;
            }
            Some((f[2].parse().ok()?, f[3].parse().ok()?))
        })
        .collect()
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

/// `spec.parallelism` on real pods: the README's query created on one worker
/// (state in Kafka, no PVC) over a 6-partition ticks topic, scaled with
/// `kubectl scale` to three worker pods while the input arrives. The old
/// worker's final epoch on SIGTERM hands every partition's state and
/// position to the new set through the query's state topic; the output,
/// read in read_committed, is exactly the file replay: nothing lost,
/// nothing written twice across the rescale.
#[test]
fn a_query_scaled_to_three_real_worker_pods_writes_exactly_the_replay() {
    let (ns, _cleanup, servers) = real_node_test("rn-scale");
    let _release = helm_install_operator(&ns, 1, &servers);
    let ticks_topic = format!("{ns}-ticks");
    let output_topic = format!("{ns}-ohlc-5s");

    // Six partitions, so that each of three workers owns two (p mod 3).
    // Ticks are keyed by symbol: the default eight symbols would leave some
    // of six partitions empty (two with librdkafka's CRC32 partitioner);
    // 24 fill every one (with CRC32 as with Java's murmur2), so every
    // worker has input, which the waits below rely on.
    let symbols: Vec<String> = (0..24).map(|i| format!("SYM{i:02}")).collect();
    let mut producer = manifest("marketproducer.yaml");
    producer["spec"]["topics"] = json!({
        "marketTicks": ticks_topic,
        "orderEvents": format!("{ns}-orders"),
        "bookUpdates": format!("{ns}-books"),
    });
    producer["spec"]["partitions"] = json!(6);
    producer["spec"]["symbols"] = json!(symbols);
    let producer_name = producer["metadata"]["name"].as_str().unwrap().to_string();
    apply_value(&ns, &producer);
    let explain = || {
        format!(
            "{}\n{}",
            kc(&["get", "sq,mp", "-n", &ns, "-o", "yaml"]),
            describe(&ns, "sq,mp,deployments,pods,pvc")
        )
    };
    // The query is applied once the producer has created the topic: its
    // partition count decides which partitions each worker owns.
    wait_for_or_explain(
        "the producer writing to every partition of its 6-partition ticks topic",
        Duration::from_secs(240),
        || {
            let s = status(&ns, "marketproducer", &producer_name);
            s["recordsOut"].as_u64().filter(|n| *n > 0)?;
            let ends = topic_end_offsets(&servers.host_brokers, &ticks_topic);
            (ends.len() == 6 && ends.values().all(|e| *e > 0)).then_some(())
        },
        explain,
    );

    // The README's query on one worker, with parallelism: its state lives
    // in Kafka from the start (parallelism is set at creation only).
    let mut query = manifest("streamquery.yaml");
    let spec = &mut query["spec"];
    assert_eq!(
        spec["upgradeMode"], "last-state",
        "parallelism needs upgradeMode last-state"
    );
    spec["parallelism"] = json!(1);
    spec["sources"] = json!([{"table": "market_ticks", "topic": ticks_topic}]);
    assert_eq!(spec["sinks"][0]["stream"], "ohlc_5s");
    spec["sinks"][0]["topic"] = json!(output_topic);
    spec["outputFormat"] = json!("json");
    let name = query["metadata"]["name"].as_str().unwrap().to_string();
    apply_value(&ns, &query);
    // The worker's --name (consumer group, state topic) is <namespace>.<name>.
    let group = format!("tickflow-{ns}.{name}");
    let state_topic = format!("{group}-state");

    wait_for_or_explain(
        "the query Running on one worker with records in and out and an epoch committed",
        Duration::from_secs(240),
        || running(&ns, &name, 1).and(running_workers(&ns, &name, 1)),
        explain,
    );
    let w0 = ready_pod(&ns, &name).expect("one Ready worker pod");
    assert!(w0.starts_with(&format!("{name}-w0-")), "{w0}");
    assert_eq!(
        deployment_env(&ns, &format!("{name}-w0"), "TICKFLOW_WORKERS"),
        "1"
    );
    // No checkpoint volume: the pod mounts no PVC and the query has none.
    let claims = kc(&[
        "get",
        "pod",
        "-n",
        &ns,
        &w0,
        "-o",
        "jsonpath={.spec.volumes[*].persistentVolumeClaim.claimName}",
    ]);
    assert!(
        claims.trim().is_empty(),
        "the worker pod mounts PVC {claims}"
    );
    let pvcs = kc(&["get", "pvc", "-n", &ns, "-o", "name"]);
    assert!(
        pvcs.trim().is_empty(),
        "a query with parallelism has a PVC: {pvcs}"
    );
    let logs = kc(&["logs", "-n", &ns, &w0]);
    assert!(
        logs.contains(&state_topic),
        "the worker does not name the state topic {state_topic}: {logs}"
    );

    // 1 → 3 through the scale subresource, while the input keeps arriving.
    kc(&["scale", &format!("sq/{name}"), "-n", &ns, "--replicas", "3"]);
    let scaled = wait_for_or_explain(
        "the query Running on three ready workers, each reading",
        Duration::from_secs(240),
        || running_workers(&ns, &name, 3),
        explain,
    );
    // Three Ready pods, one per Deployment <name>-w0..w2, the ones the
    // status lists; none of the old set is left, not even terminating.
    let pods = pod_objects(&ns, &name);
    let mut by_index: BTreeMap<String, String> = BTreeMap::new();
    for p in &pods {
        let pod = p["metadata"]["name"].as_str().unwrap();
        let index = p["metadata"]["labels"]["tickflow.io/worker-index"]
            .as_str()
            .unwrap_or_else(|| panic!("pod {pod} has no worker index"));
        assert!(
            p["metadata"]["deletionTimestamp"].is_null(),
            "pod {pod} is terminating after the rescale"
        );
        assert!(
            pod.starts_with(&format!("{name}-w{index}-")),
            "pod {pod} is not of Deployment {name}-w{index}"
        );
        let ready = p["status"]["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|c| c["type"] == "Ready" && c["status"] == "True");
        assert!(ready, "pod {pod} is not Ready: {}", p["status"]);
        assert!(
            by_index
                .insert(index.to_string(), pod.to_string())
                .is_none(),
            "two pods of worker {index}: {pods:?}"
        );
    }
    let indexes: Vec<&str> = by_index.keys().map(String::as_str).collect();
    assert_eq!(indexes, ["0", "1", "2"], "worker pods: {pods:?}");
    let deployments = kc(&[
        "get",
        "deployments",
        "-n",
        &ns,
        "-l",
        &format!("tickflow.io/instance={name}"),
        "-o",
        "jsonpath={.items[*].metadata.name}",
    ]);
    let mut deployments: Vec<&str> = deployments.split_whitespace().collect();
    deployments.sort();
    let want: Vec<String> = (0..3).map(|i| format!("{name}-w{i}")).collect();
    assert_eq!(deployments, want, "the worker Deployments");
    for (i, w) in scaled["workers"].as_array().unwrap().iter().enumerate() {
        assert_eq!(
            w["pod"].as_str(),
            Some(by_index[&i.to_string()].as_str()),
            "status.workers[{i}]: {w}"
        );
        let deployment = format!("{name}-w{i}");
        assert_eq!(
            deployment_env(&ns, &deployment, "TICKFLOW_WORKERS"),
            "3",
            "{deployment}"
        );
        assert_eq!(
            deployment_env(&ns, &deployment, "TICKFLOW_WORKER_INDEX"),
            i.to_string(),
            "{deployment}"
        );
        assert_eq!(
            deployment_env(&ns, &deployment, "TICKFLOW_STATE_STORE"),
            "kafka",
            "{deployment}"
        );
        // Each new worker started from the partition states the single
        // worker committed, not from scratch.
        let pod = &by_index[&i.to_string()];
        let logs = kc(&["logs", "-n", &ns, pod]);
        assert!(
            logs.lines().any(|l| l
                .contains("restoring the state of the partitions this worker owns")
                && l.contains(&format!("w{i}/3"))),
            "worker {i} ({pod}) restored no partition state: {logs}"
        );
    }

    // The new set goes on with the live input: every worker writes output
    // and the summed records-in grows. (Not compared with the figure before
    // the scale: a worker's figures count from its own pod's start.)
    let read_at_scale = scaled["recordsIn"].as_u64().unwrap();
    let going = wait_for_or_explain(
        &format!("every new worker writing output and the records in growing past {read_at_scale}"),
        Duration::from_secs(240),
        || {
            let s = running_workers(&ns, &name, 3)?;
            let writing = s["workers"]
                .as_array()?
                .iter()
                .all(|w| w["recordsOut"].as_u64().is_some_and(|n| n > 0));
            (writing && s["recordsIn"].as_u64()? > read_at_scale).then_some(s)
        },
        explain,
    );
    let summed: u64 = going["workers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["recordsIn"].as_u64().unwrap())
        .sum();
    assert_eq!(
        going["recordsIn"].as_u64(),
        Some(summed),
        "status.recordsIn is not the sum of the workers': {going}"
    );

    // The input stops; every worker catches up with its partitions.
    set_state(&ns, "marketproducer", &producer_name, "suspended");
    wait_for("the producer's pod gone", Duration::from_secs(120), || {
        pods_of(&ns, &producer_name).is_empty().then_some(())
    });
    let ends = topic_end_offsets(&servers.host_brokers, &ticks_topic);
    assert_eq!(ends.len(), 6, "{ends:?}");
    wait_for_or_explain(
        "the three workers caught up with the stopped input",
        Duration::from_secs(180),
        || {
            let s = running_workers(&ns, &name, 3)?;
            let each = s["workers"]
                .as_array()?
                .iter()
                .all(|w| w["lag"].as_i64() == Some(0));
            (each && s["lag"].as_i64() == Some(0)).then_some(())
        },
        explain,
    );

    // Suspend: every worker's final epoch on SIGTERM commits its output,
    // its partitions' state and their positions in one transaction; each
    // partition's committed position is then the end of the input.
    suspend_query(&ns, &name, explain);
    wait_for_or_explain(
        "every partition's committed offset at the end of the input",
        Duration::from_secs(120),
        || {
            let described = describe_group(&servers.host_brokers, &group);
            (committed_offsets(&described, &group, &ticks_topic) == ends).then_some(())
        },
        || {
            format!(
                "ends {ends:?}\n{}",
                describe_group(&servers.host_brokers, &group)
            )
        },
    );
    // The state went through Kafka, in the query's one-partition state topic.
    let state_ends = topic_end_offsets(&servers.host_brokers, &state_topic);
    assert!(
        state_ends.len() == 1 && state_ends.get(&0).is_some_and(|e| *e > 0),
        "state topic {state_topic}: {state_ends:?}"
    );

    // The output, read in read_committed, is exactly the file replay:
    // windows the single worker closed, windows open across the rescale
    // (closed by the new set from the moved state) and windows of the three
    // workers alone, each once.
    let work = tempfile::tempdir().unwrap();
    let replay = file_replay(&ticks_topic, &servers, work.path());
    let output = read_committed(&servers.host_brokers, &output_topic);
    let written: BTreeSet<&str> = output.iter().filter_map(|r| r["symbol"].as_str()).collect();
    let all: BTreeSet<&str> = symbols.iter().map(String::as_str).collect();
    assert_eq!(
        written, all,
        "symbols in the committed output of {output_topic}"
    );
    let windows: BTreeSet<&str> = output
        .iter()
        .filter_map(|r| r["window_start"].as_str())
        .collect();
    assert!(
        windows.len() >= 4,
        "only {} windows committed in {output_topic}",
        windows.len()
    );
    assert_exactly_the_replay_of_workers(&output, &replay);
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
