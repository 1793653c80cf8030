//! The worker as its Deployment would run it: the container's own args and
//! env (SQL from the ConfigMap, checkpoints in a temp dir standing in for the
//! PVC, HTTP on the pod's IP) against the real test Kafka broker. Its runtime
//! figures must show up in the StreamQuery's status.

mod k8s_common;

use std::process::Command;
use std::time::Duration;

use k8s_common::*;

#[test]
fn producer_started_from_its_deployment_publishes_and_reports() {
    let brokers = server_env("tests/kafka/kafka.sh")["KAFKA_BROKERS"].clone();
    let registry = server_env("tests/schema_registry/registry.sh")["SCHEMA_REGISTRY_URL"].clone();
    let ns = create_namespace("mp-worker");
    let _op = Operator::start(OperatorOptions {
        namespace: &ns,
        leader_election: false,
        lease_name: "unused",
        identity: "producer-test",
        extra_env: vec![],
    });
    let yaml = format!(
        "apiVersion: tickflow.io/v1alpha1\nkind: MarketProducer\nmetadata: {{name: sim}}\nspec:\n  kafka: {{bootstrapServers: \"{brokers}\", schemaRegistryUrl: \"{registry}\"}}\n  symbols: [AAPL, MSFT]\n  rate: 2000\n  speed: 5\n  burst: true\n  jitter: 100ms\n  topics: {{marketTicks: {ns}-ticks, orderEvents: {ns}-orders, bookUpdates: {ns}-books}}\n"
    );
    apply_ok(&ns, &yaml);
    let ip = pod_ip(&ns, "sim");
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("producer.log");
    let mut child = start_like_the_pod(&ns, "sim", &ip, &[], &log);
    let mp = wait_for(
        "the producer's figures in the status",
        Duration::from_secs(60),
        || {
            child.assert_running();
            let o = get(&ns, "marketproducer", "sim")?;
            (o["status"]["recordsOut"].as_u64()? > 1000).then_some(o)
        },
    );
    assert_eq!(mp["status"]["workerState"], "running", "{}", mp["status"]);
    assert_eq!(mp["status"]["symbols"], 2);
    child.stop();
}

#[test]
fn worker_started_from_the_deployment_reports_into_the_status() {
    let brokers = server_env("tests/kafka/kafka.sh")["KAFKA_BROKERS"].clone();
    let registry = server_env("tests/schema_registry/registry.sh")["SCHEMA_REGISTRY_URL"].clone();
    let ns = create_namespace("sq-worker");
    let op = Operator::start(OperatorOptions {
        namespace: &ns,
        leader_election: false,
        lease_name: "unused",
        identity: "worker-test",
        extra_env: vec![],
    });
    let ticks_count = 20_000;
    let ticks = produce_ticks(&ns, &brokers, &registry, ticks_count);

    let sql = std::fs::read_to_string(repo().join("sql/ohlc_5s.sql")).unwrap();
    let extra = format!(
        "  kafka: {{bootstrapServers: \"{brokers}\", schemaRegistryUrl: \"{registry}\"}}\n  sources: [{{table: market_ticks, topic: {ticks}}}]\n  sinks: [{{stream: ohlc_5s, topic: {ns}-ohlc}}]\n  checkpoint: {{interval: 500ms}}\n"
    );
    apply_ok(&ns, &stream_query_yaml("ohlc", &sql, &extra));
    let pod_ip = pod_ip(&ns, "ohlc");
    let d = get(&ns, "deployment", "ohlc").unwrap();
    let env = d["spec"]["template"]["spec"]["containers"][0]["env"]
        .as_array()
        .unwrap()
        .clone();
    assert!(
        env.iter()
            .any(|e| e["name"] == "KAFKA_BROKERS" && e["value"] == brokers.as_str())
    );
    let dir = tempfile::tempdir().unwrap();
    let mut child = start_query_pod(&ns, "ohlc", &pod_ip, dir.path());

    let sq = wait_for(
        "the worker's figures in the status",
        Duration::from_secs(60),
        || {
            child.assert_running();
            let o = get(&ns, "streamquery", "ohlc")?;
            let s = &o["status"];
            (s["recordsIn"] == ticks_count
                && s["lastCheckpoint"]["id"].as_u64().is_some_and(|id| id > 0))
            .then_some(o)
        },
    );
    let s = &sq["status"];
    assert_eq!(s["workerState"], "running", "{s}");
    assert_eq!(s["lag"], 0, "{s}");
    assert!(
        s["lastCheckpoint"]["time"].as_str().unwrap().ends_with('Z'),
        "{s}"
    );
    assert!(s["lastError"].is_null(), "{s}");
    // Settled figures cost no status writes; changing ones at most one per
    // refresh (1 s here): reading the worker must not become a busy loop.
    let writes = || op.metric("tickflow_operator_status_writes_total");
    let before = writes();
    std::thread::sleep(Duration::from_secs(3));
    let during = writes() - before;
    assert!(during <= 5.0, "{during} status writes in 3 s");
    // The IN column shows the figure.
    let table = kc(&["get", "sq", "ohlc", "-n", &ns, "--no-headers"]);
    assert!(
        table
            .split_whitespace()
            .any(|c| c == ticks_count.to_string()),
        "{table}"
    );

    child.stop();
}

#[test]
fn a_stream_query_reads_the_topic_its_sql_declares() {
    let brokers = server_env("tests/kafka/kafka.sh")["KAFKA_BROKERS"].clone();
    let ns = create_namespace("sq-declared");
    let _op = Operator::start(OperatorOptions {
        namespace: &ns,
        leader_election: false,
        lease_name: "unused",
        identity: "declared-test",
        extra_env: vec![],
    });
    // JSON quotes on a topic no built-in table knows.
    let quotes = format!("{ns}-quotes");
    let count = 5_000;
    let produced = Command::new(worker_bin())
        .args([
            "produce",
            "--count",
            &count.to_string(),
            "--brokers",
            &brokers,
        ])
        .args(["--format", "json", "--ticks-topic", &quotes])
        .args(["--orders-topic", &format!("{ns}-orders")])
        .args(["--books-topic", &format!("{ns}-books")])
        .output()
        .unwrap();
    assert!(
        produced.status.success(),
        "{}",
        String::from_utf8_lossy(&produced.stderr)
    );
    let table = format!(
        "CREATE TABLE quotes (symbol VARCHAR, price DOUBLE, volume BIGINT, ts TIMESTAMP(3),\n      WATERMARK FOR ts AS ts - INTERVAL '1' SECOND)\n      WITH ('topic' = '{quotes}', 'format' = 'json', 'key' = 'symbol');\n"
    );
    let stream = "CREATE STREAM quote_bars AS SELECT symbol, COUNT(*) AS n, MAX(price) AS high\n      FROM quotes GROUP BY symbol, TUMBLE(ts, INTERVAL '5' SECOND);\n";
    // No spec.sources: the declaration names the topic and format.
    let extra = format!(
        "  kafka: {{bootstrapServers: \"{brokers}\"}}\n  outputFormat: json\n  checkpoint: {{interval: 500ms}}\n"
    );
    apply_ok(
        &ns,
        &stream_query_yaml("bars", &format!("{table}{stream}"), &extra),
    );
    let pod_ip = pod_ip(&ns, "bars");
    let d = get(&ns, "deployment", "bars").unwrap();
    let args = d["spec"]["template"]["spec"]["containers"][0]["args"].to_string();
    assert!(args.contains(&format!("quotes=kafka:{quotes}")), "{args}");
    let dir = tempfile::tempdir().unwrap();
    let mut child = start_query_pod(&ns, "bars", &pod_ip, dir.path());
    let sq = wait_for("the declared topic read", Duration::from_secs(60), || {
        child.assert_running();
        let o = get(&ns, "streamquery", "bars")?;
        (o["status"]["recordsIn"] == count).then_some(o)
    });
    let s = &sq["status"];
    assert_eq!(s["workerState"], "running", "{s}");
    assert!(s["lastError"].is_null(), "{s}");
    assert_eq!(s["deadLetters"].as_u64().unwrap_or(0), 0, "{s}");
    child.stop();

    // A broken declaration: SqlValid=False with the position, no Deployment.
    let bad = "CREATE TABLE quotes (symbol VARCHAR, ts TIMESTAMP)\n      WITH ('format' = 'json');\nCREATE STREAM s AS SELECT symbol FROM quotes;\n";
    apply_ok(&ns, &stream_query_yaml("broken", bad, &extra));
    let message = wait_for("SqlValid=False", Duration::from_secs(30), || {
        let o = get(&ns, "streamquery", "broken")?;
        let c = o["status"]["conditions"]
            .as_array()?
            .iter()
            .find(|c| c["type"] == "SqlValid" && c["status"] == "False")?
            .clone();
        Some(c["message"].as_str().unwrap_or_default().to_string())
    });
    assert!(
        message.contains("line 2") && message.contains("needs an event time"),
        "{message}"
    );
    assert!(get(&ns, "deployment", "broken").is_none());
}
