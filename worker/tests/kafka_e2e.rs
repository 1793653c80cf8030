//! End-to-end tests against a real Kafka broker (KRaft, started by
//! tests/kafka/kafka.sh) and the test schema registry.

mod kafka_common;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use kafka_common::*;
use rdkafka::ClientConfig;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use tickflow_worker::codec::json::JsonLinesEncoder;
use tickflow_worker::codec::{AvroDecoder, BuiltinAvroSchema, SourceTable, confluent};
use tickflow_worker::kafka::offsets::offsets_from_json;
use tickflow_worker::kafka::{RegistryClient, RegistryConfig};

fn all_sql() -> String {
    let dir = repo().join("sql");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "sql"))
        .collect();
    files.sort();
    files
        .iter()
        .map(|p| std::fs::read_to_string(p).unwrap())
        .collect::<Vec<_>>()
        .join("\n")
}

fn stream_names(sql: &str) -> Vec<String> {
    sql.split("CREATE STREAM")
        .skip(1)
        .map(|s| s.split_whitespace().next().unwrap().to_string())
        .collect()
}

#[test]
fn produced_records_arrive_once_with_symbol_keys_and_decode_to_the_simulated_rows() {
    let e = env();
    let topics = Topics::new("roundtrip");
    let dir = tempfile::tempdir().unwrap();
    let summary = produce_both(&topics, 11, 20_000, "0s", dir.path());
    assert_eq!(summary["ticks"], 20_000);

    let registry = RegistryClient::new(RegistryConfig::new(e.registry.clone()));
    for (table, topic) in [
        (SourceTable::MarketTicks, &topics.ticks),
        (SourceTable::OrderEvents, &topics.orders),
        (SourceTable::BookUpdates, &topics.books),
    ] {
        let records = read_topic(&e.brokers, topic, true);
        let expected_count = summary["topics"][topic].as_u64().unwrap();
        assert_eq!(
            records.len() as u64,
            expected_count,
            "{topic}: every record once"
        );
        // Decode each value with its writer schema, re-encode as JSON and
        // compare with the file output of the same seed, per symbol (Kafka
        // keeps order within a key).
        let mut got: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for r in &records {
            let (id, body) = confluent::unframe(&r.value).unwrap();
            let writer = registry.schema_by_id(id).unwrap();
            let mut dec = AvroDecoder::with_writer(&writer, table.avro_schema()).unwrap();
            dec.decode(body).unwrap();
            let batch = dec.finish();
            let mut line = Vec::new();
            JsonLinesEncoder::new()
                .encode_batch(&batch, &mut line)
                .unwrap();
            let line = String::from_utf8(line).unwrap().trim_end().to_string();
            let row: serde_json::Value = serde_json::from_str(&line).unwrap();
            let symbol = row["symbol"].as_str().unwrap().to_string();
            assert_eq!(
                r.key.as_deref(),
                Some(symbol.as_bytes()),
                "{topic}: key is the symbol"
            );
            got.entry(symbol).or_default().push(line);
        }
        let file = dir.path().join(format!("{}.jsonl", table.topic()));
        let mut want: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for line in std::fs::read_to_string(file).unwrap().lines() {
            let row: serde_json::Value = serde_json::from_str(line).unwrap();
            want.entry(row["symbol"].as_str().unwrap().to_string())
                .or_default()
                .push(line.to_string());
        }
        assert_eq!(got, want, "{topic}: same records, same order per symbol");
    }
}

#[test]
fn kafka_query_gives_the_rows_of_a_file_replay_for_every_query() {
    let e = env();
    let topics = Topics::new("replay");
    let dir = tempfile::tempdir().unwrap();
    // Out of order within the allowed lateness (1 s).
    produce_both(&topics, 5, 60_000, "400ms", dir.path());
    // The queries of sql/ (windows, DAGs of named streams, UNION ALL,
    // updating streams), and an OVER stream (LAG and a 20-row average per
    // symbol: Kafka keeps each symbol's order, so the rows and values equal
    // the replay's).
    let sql = all_sql()
        + "\nCREATE STREAM tick_change AS
SELECT symbol, ts, price,
       (price - LAG(price) OVER (PARTITION BY symbol ORDER BY ts)) / LAG(price) OVER (PARTITION BY symbol ORDER BY ts) * 100 AS change_pct,
       AVG(volume) OVER (PARTITION BY symbol ORDER BY ts ROWS BETWEEN 20 PRECEDING AND 1 PRECEDING) AS avg_prev_20
FROM market_ticks;\n";
    let sql_path = dir.path().join("all.sql");
    std::fs::write(&sql_path, &sql).unwrap();
    let streams = stream_names(&sql);
    for s in ["ohlc_5s", "tick_change", "alerts", "arbitrage"] {
        assert!(streams.iter().any(|n| n == s), "{s} in {streams:?}");
    }
    // Updating streams: compared as the tables their changes leave (the
    // changes themselves follow batch boundaries, which differ).
    let pipeline = tickflow_worker::engine::Pipeline::new(
        &sql,
        &tickflow_worker::engine::Catalog::builtin(),
        &tickflow_worker::engine::EngineConfig::default(),
    )
    .unwrap();
    let updating: BTreeMap<String, Vec<String>> = pipeline
        .streams()
        .iter()
        .filter(|s| s.updating)
        .map(|s| (s.name.clone(), s.key_columns.clone()))
        .collect();
    assert!(updating.contains_key("arbitrage"));

    let out_prefix = unique("replay-out");
    let mut cmd = worker();
    cmd.args(["query", "--sql"])
        .arg(&sql_path)
        .args(["--brokers", &e.brokers, "--schema-registry", &e.registry])
        .args(topics.input_args())
        .args([
            "--output-format",
            "json",
            "--bounded",
            "--name",
            &out_prefix,
        ])
        .arg("--checkpoint-dir")
        .arg(dir.path().join("chk"));
    for s in &streams {
        cmd.args(["--output", &format!("{s}=kafka:{out_prefix}-{s}")]);
    }
    let summary = run_ok(&mut cmd);
    assert_eq!(summary["dead_letters"], serde_json::json!({}));

    let replay_dir = dir.path().join("replay");
    // Intermediate streams (read by later ones) get files only where bound.
    let bind_all: Vec<String> = streams
        .iter()
        .flat_map(|s| {
            [
                "--output".to_string(),
                format!("{s}={}", replay_dir.join(format!("{s}.jsonl")).display()),
            ]
        })
        .collect();
    run_ok(
        worker()
            .args(["query", "--sql"])
            .arg(&sql_path)
            .args(&bind_all)
            .arg("--input")
            .arg(format!(
                "market_ticks={}",
                dir.path().join("market-ticks.jsonl").display()
            ))
            .arg("--input")
            .arg(format!(
                "order_events={}",
                dir.path().join("order-events.jsonl").display()
            ))
            .arg("--input")
            .arg(format!(
                "book_updates={}",
                dir.path().join("book-updates.jsonl").display()
            ))
            .arg("--output-dir")
            .arg(&replay_dir),
    );
    for s in &streams {
        let records = read_topic(&e.brokers, &format!("{out_prefix}-{s}"), true);
        let lines = file_rows(&replay_dir.join(format!("{s}.jsonl")));
        // A daily loss limit is crossed only after minutes of trading;
        // over this minute of data it stays empty in both runs.
        if s != "daily_loss_alerts" {
            assert!(!lines.is_empty(), "{s}: the replay produced rows");
        }
        let (got, want) = match updating.get(s) {
            Some(keys) => (topic_table(&records), file_table(keys, &lines)),
            None => (json_rows(&records), lines),
        };
        assert_same_rows(s, got, want);
    }
}

/// The table an updating stream's topic holds: per key the last value, a
/// tombstone (no value) deleting it.
fn topic_table(records: &[Record]) -> Vec<serde_json::Value> {
    let mut table = BTreeMap::new();
    for r in records {
        let key = r.key.clone().expect("updating streams key every record");
        if r.value.is_empty() {
            assert!(
                table.remove(&key).is_some(),
                "a tombstone for a key never written"
            );
        } else {
            table.insert(key, serde_json::from_slice(&r.value).unwrap());
        }
    }
    table.into_values().collect()
}

/// The table an updating stream's JSON lines leave: per key the last line,
/// a `"deleted": true` line deleting it.
fn file_table(keys: &[String], lines: &[serde_json::Value]) -> Vec<serde_json::Value> {
    let mut table = BTreeMap::new();
    for v in lines {
        let key: Vec<String> = keys.iter().map(|k| v[k].to_string()).collect();
        if v["deleted"] == serde_json::json!(true) {
            assert!(
                table.remove(&key).is_some(),
                "a deletion of a key never written"
            );
        } else {
            table.insert(key, v.clone());
        }
    }
    table.into_values().collect()
}

/// A tickflow output topic is written in transactions, so each partition
/// ends with a commit marker that no consumer is ever handed. A bounded
/// query over such a topic (a backfill from another query's output) still
/// stops at the end with every committed row read, and its checkpoint is
/// positioned past the markers, so its lag is 0.
#[test]
fn a_bounded_query_over_a_transactional_topic_stops_at_its_end() {
    let e = env();
    let topics = Topics::new("txn-source");
    let dir = tempfile::tempdir().unwrap();
    produce_to_kafka(&topics, 21, 20_000, "300ms");
    let query = |sql: &Path, input: &str, output: &str, name: &str| {
        let mut cmd = worker();
        cmd.args(["query", "--sql"])
            .arg(sql)
            .args(["--brokers", &e.brokers, "--schema-registry", &e.registry])
            .args(["--output-format", "json", "--bounded", "--name", name])
            .args(["--checkpoint-interval", "200ms"])
            .args(["--output", output])
            .arg("--checkpoint-dir")
            .arg(dir.path().join(name));
        if !input.is_empty() {
            cmd.args(["--input", input]);
        }
        cmd
    };

    let bars = unique("txn-bars");
    run_ok(&mut query(
        &repo().join("sql/ohlc_5s.sql"),
        &format!("market_ticks=kafka:{}", topics.ticks),
        &format!("ohlc_5s=kafka:{bars}"),
        &bars,
    ));
    let committed = json_rows(&read_topic(&e.brokers, &bars, true));
    assert!(committed.len() > 20, "{} bars", committed.len());

    let sql = dir.path().join("reread.sql");
    std::fs::write(
        &sql,
        format!(
            "CREATE TABLE bars (symbol VARCHAR, tick_count BIGINT, window_end TIMESTAMP(3),\n\
               WATERMARK FOR window_end AS window_end - INTERVAL '1' SECOND)\n\
             WITH ('topic' = '{bars}', 'format' = 'json');\n\
             CREATE STREAM counts AS SELECT symbol, tick_count FROM bars;"
        ),
    )
    .unwrap();
    let name = unique("txn-reread");
    let mut run = spawn_drained(&mut query(&sql, "", &format!("counts=kafka:{name}"), &name));
    let deadline = Instant::now() + Duration::from_secs(90);
    while run.try_wait().is_none() {
        if Instant::now() > deadline {
            run.child.kill().unwrap();
            let out = run.wait_with_output();
            panic!(
                "the bounded run did not stop at the end of a transactional topic:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let summary = run.wait_ok();
    assert_eq!(summary["rows_in"]["bars"], committed.len(), "{summary}");
    assert_eq!(
        checkpointed_offsets(&dir.path().join(&name), &bars),
        log_end_offsets(&e.brokers, &bars),
        "the checkpoint is past each partition's commit marker"
    );
}

/// The input positions for `topic` in the newest checkpoint under `dir`, as
/// the worker reads them back.
fn checkpointed_offsets(dir: &Path, topic: &str) -> BTreeMap<i32, i64> {
    let store = tickflow_worker::checkpoint::CheckpointStore::open(dir, 2).unwrap();
    let newest = store.latest().unwrap().expect("a checkpoint");
    offsets_from_json(&newest.sources["kafka"])
        .unwrap()
        .into_iter()
        .filter(|((t, _), _)| t == topic)
        .map(|((_, p), offset)| (p, offset))
        .collect()
}

/// A `CREATE TABLE … WITH ('format' = 'avro')` over a topic the simulator
/// wrote: its columns are checked against the subject's newest schema at
/// start (a mismatch is one clear error naming both), and a matching
/// declaration reads the records by schema id, with the rows of a replay.
#[test]
fn a_declared_avro_table_is_checked_against_the_registry_and_read() {
    let e = env();
    let topics = Topics::new("declared");
    let dir = tempfile::tempdir().unwrap();
    let produced = produce_both(&topics, 9, 10_000, "300ms", dir.path());
    let declare = |extra_column: &str| {
        format!(
            "CREATE TABLE quotes (symbol VARCHAR, price DOUBLE, volume BIGINT,{extra_column} ts TIMESTAMP(3),
               WATERMARK FOR ts AS ts - INTERVAL '1' SECOND)
             WITH ('topic' = '{}', 'format' = 'avro', 'key' = 'symbol');
             CREATE STREAM quote_bars AS SELECT symbol, COUNT(*) AS n, SUM(volume) AS v, MAX(price) AS hi
             FROM quotes GROUP BY symbol, TUMBLE(ts, INTERVAL '5' SECOND);",
            topics.ticks
        )
    };
    let query = |sql: &str, name: &str| {
        let path = dir.path().join(format!("{name}.sql"));
        std::fs::write(&path, sql).unwrap();
        let mut cmd = worker();
        cmd.args(["query", "--sql"])
            .arg(&path)
            .args(["--brokers", &e.brokers, "--schema-registry", &e.registry])
            .args(["--output-format", "json", "--bounded", "--name", name])
            .args(["--output", &format!("quote_bars=kafka:{name}-bars")])
            .arg("--checkpoint-dir")
            .arg(dir.path().join(name));
        cmd
    };

    // A column the registered schema lacks, without a default: refused at start.
    let name = unique("declared-bad");
    let out = query(&declare(" spread DOUBLE NOT NULL,"), &name)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(
            "table `quotes` (declared at line 1) does not match the schema registered under"
        ) && stderr.contains(&format!("{}-value", topics.ticks))
            && stderr.contains("spread"),
        "{stderr}"
    );

    let name = unique("declared-ok");
    let sql = declare("");
    let summary = run_ok(&mut query(&sql, &name));
    assert_eq!(summary["rows_in"]["quotes"], produced["ticks"], "{summary}");
    assert_eq!(summary["dead_letters"], serde_json::json!({}));
    // The same declaration replayed from the JSON file of the same seed.
    let replay = dir.path().join("replay.jsonl");
    let sql_path = dir.path().join("replay.sql");
    std::fs::write(&sql_path, &sql).unwrap();
    run_ok(
        worker()
            .args(["query", "--sql"])
            .arg(&sql_path)
            .arg("--input")
            .arg(format!(
                "quotes={}",
                dir.path().join("market-ticks.jsonl").display()
            ))
            .arg("--output")
            .arg(format!("quote_bars={}", replay.display())),
    );
    let want = file_rows(&replay);
    assert!(want.len() > 10, "{} bars", want.len());
    assert_same_rows(
        "quote_bars",
        json_rows(&read_topic(&e.brokers, &format!("{name}-bars"), true)),
        want,
    );
}

#[test]
fn malformed_records_go_to_the_dead_letter_topic_with_reasons_and_the_rest_is_processed() {
    let e = env();
    let topics = Topics::new("dlq");
    let dir = tempfile::tempdir().unwrap();
    produce_both(&topics, 3, 5_000, "0s", dir.path());
    let good = read_topic(&e.brokers, &topics.ticks, false);
    let (tick_id, tick_body) = confluent::unframe(&good[0].value).unwrap();
    let order = read_topic(&e.brokers, &topics.orders, false);
    let (_, order_body) = confluent::unframe(&order[0].value).unwrap();

    let mut wrong_type = Vec::new();
    confluent::frame(tick_id, order_body, &mut wrong_type);
    let mut unknown_id = Vec::new();
    confluent::frame(987_654, tick_body, &mut unknown_id);
    let mut truncated = Vec::new();
    confluent::frame(tick_id, &tick_body[..tick_body.len() / 2], &mut truncated);
    let mut bad_magic = good[0].value.clone();
    bad_magic[0] = 7;
    let bad: Vec<(&str, Vec<u8>)> = vec![
        ("bad-magic", bad_magic),
        ("unknown-schema-id", unknown_id),
        ("truncated", truncated),
        ("type-mismatch", wrong_type),
        ("too-short", vec![0, 1]),
    ];
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", &e.brokers)
        .create()
        .unwrap();
    for (_, v) in &bad {
        producer
            .send(BaseRecord::to(&topics.ticks).key("AAPL").payload(v))
            .unwrap();
    }
    producer.flush(Duration::from_secs(10)).unwrap();

    let name = unique("dlq-q");
    let dlq = format!("{name}-dead-letters");
    let summary = run_ok(
        worker()
            .args(["query", "--sql"])
            .arg(repo().join("sql/ohlc_5s.sql"))
            .args(["--brokers", &e.brokers, "--schema-registry", &e.registry])
            .args(["--input", &format!("market_ticks=kafka:{}", topics.ticks)])
            .args(["--output", &format!("ohlc_5s=kafka:{name}-out")])
            .args(["--output-format", "json", "--bounded", "--name", &name])
            .arg("--checkpoint-dir")
            .arg(dir.path().join("chk")),
    );
    assert_eq!(summary["records_in"], 5_000 + bad.len() as u64);
    let letters = read_topic(&e.brokers, &dlq, true);
    assert_eq!(letters.len(), bad.len(), "every malformed record, once");
    assert_eq!(
        dead_letter_total(&summary),
        bad.len() as u64,
        "counted per reason: {}",
        summary["dead_letters"]
    );
    for l in &letters {
        let original = bad
            .iter()
            .find(|(_, v)| *v == l.value)
            .expect("the original bytes");
        assert_eq!(l.headers["tickflow.source.topic"], topics.ticks);
        assert!(l.headers["tickflow.source.offset"].parse::<i64>().is_ok());
        let reason = &l.headers["tickflow.error.reason"];
        assert!(!reason.is_empty() && !l.headers["tickflow.error.message"].is_empty());
        match original.0 {
            // A body of another record type fails somewhere in decoding;
            // its exact reason depends on the bytes.
            "type-mismatch" => assert_ne!(reason, "bad-magic"),
            want => assert_eq!(reason, want),
        }
    }
    // The good records give exactly the bars of a replay of the good records.
    assert_ohlc_matches_replay(&format!("{name}-out"), dir.path());
}

#[test]
fn sasl_scram_accepts_the_right_password_and_refuses_a_wrong_one_clearly() {
    let e = env();
    let topics = Topics::new("sasl");
    let run = |password: &str| {
        worker()
            .args([
                "produce",
                "--brokers",
                &e.sasl_brokers,
                "--format",
                "json",
                "--count",
                "500",
            ])
            .args([
                "--security-protocol",
                "sasl-plaintext",
                "--sasl-mechanism",
                "scram-sha-512",
            ])
            .args(["--sasl-username", &e.sasl_user])
            .env("KAFKA_SASL_PASSWORD", password)
            .args(topics.produce_args())
            .output()
            .unwrap()
    };
    let ok = run(&e.sasl_password);
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert_eq!(last_json_line(&ok)["ticks"], 500);
    assert_eq!(read_topic(&e.brokers, &topics.ticks, false).len(), 500);

    let started = Instant::now();
    let bad = run("not-the-password");
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert!(!bad.status.success());
    assert!(
        started.elapsed() < HANG_GUARD,
        "a refused login ends the run"
    );
    assert!(stderr.contains("authentication failed"), "{stderr}");
    assert!(
        !stderr.contains("not-the-password"),
        "the password is never printed"
    );
    assert!(
        stderr.lines().count() <= 3,
        "one clear error, not a stack of retries:\n{stderr}"
    );
}

#[test]
fn an_unreachable_broker_is_one_clear_error() {
    let out = worker()
        .args([
            "produce",
            "--brokers",
            "127.0.0.1:1",
            "--format",
            "json",
            "--count",
            "10",
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("127.0.0.1:1"), "{stderr}");
    assert!(stderr.lines().count() <= 3, "{stderr}");
}

/// A TCP forwarder to the test registry that is down at first: it closes
/// every connection until three were refused and `down_for` has passed
/// since the first,
/// then forwards them. (Listening from the start keeps its port from being
/// taken by another test; waiting for refused attempts keeps a slow start
/// from missing the outage, and three of them outlast an HTTP client's own
/// silent retry of a request whose connection closed.)
fn flaky_registry_proxy(down_for: Duration) -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let target = env().registry.trim_start_matches("http://").to_string();
    std::thread::spawn(move || {
        // The outage starts at the first connection, not at start-up: a
        // worker slow to start on a loaded machine must still meet all of it.
        let mut outage_began: Option<Instant> = None;
        let mut refused = 0;
        for client in listener.incoming().flatten() {
            let began = *outage_began.get_or_insert_with(Instant::now);
            if refused < 3 || began.elapsed() < down_for {
                refused += 1;
                drop(client);
                continue;
            }
            let Ok(upstream) = std::net::TcpStream::connect(&target) else {
                continue;
            };
            let (mut c2, mut u2) = (client.try_clone().unwrap(), upstream.try_clone().unwrap());
            let (mut c, mut u) = (client, upstream);
            std::thread::spawn(move || std::io::copy(&mut c, &mut u2));
            std::thread::spawn(move || std::io::copy(&mut u, &mut c2));
        }
    });
    format!("http://{addr}")
}

#[test]
fn an_unreachable_schema_registry_is_retried_and_nothing_is_lost() {
    let e = env();
    let topics = Topics::new("regdown");
    let dir = tempfile::tempdir().unwrap();
    produce_both(&topics, 13, 10_000, "0s", dir.path());
    let registry = flaky_registry_proxy(Duration::from_secs(4));
    let name = unique("regdown-q");
    let out = worker()
        .args(["query", "--sql"])
        .arg(repo().join("sql/ohlc_5s.sql"))
        .args(["--brokers", &e.brokers, "--schema-registry", &registry])
        .args(["--input", &format!("market_ticks=kafka:{}", topics.ticks)])
        .args(["--output", &format!("ohlc_5s=kafka:{name}-out")])
        .args(["--output-format", "json", "--bounded", "--name", &name])
        .arg("--checkpoint-dir")
        .arg(dir.path().join("chk"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("schema registry"),
        "the outage was reported: {stderr}"
    );
    let summary = last_json_line(&out);
    assert_eq!(summary["records_in"], 10_000);
    assert_eq!(
        summary["dead_letters"],
        serde_json::json!({}),
        "nothing was dead-lettered"
    );
    assert_ohlc_matches_replay(&format!("{name}-out"), dir.path());
}

fn http_get(addr: &str, path: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let code = text.split_whitespace().nth(1).unwrap().parse().unwrap();
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (code, body)
}

#[test]
fn a_running_query_reports_status_and_metrics_and_checkpoints_on_sigterm() {
    let e = env();
    let topics = Topics::new("status");
    let dir = tempfile::tempdir().unwrap();
    produce_both(&topics, 17, 20_000, "0s", dir.path());
    let name = unique("status-q");
    // Not bounded: it runs until stopped, like a Deployment.
    let start = |addr: &str| {
        spawn_drained(
            worker()
                .args(["query", "--sql"])
                .arg(repo().join("sql/ohlc_5s.sql"))
                .args(["--brokers", &e.brokers, "--schema-registry", &e.registry])
                .args(["--input", &format!("market_ticks=kafka:{}", topics.ticks)])
                .args(["--output", &format!("ohlc_5s=kafka:{name}-out")])
                .args([
                    "--name",
                    &name,
                    "--http-addr",
                    addr,
                    "--checkpoint-interval",
                    "1h",
                ])
                .arg("--checkpoint-dir")
                .arg(dir.path().join("chk")),
        )
    };
    let free_addr = || {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("127.0.0.1:{}", listener.local_addr().unwrap().port())
    };
    let mut addr = free_addr();
    let mut child = start(&addr);
    let mut attempts = 1;
    let mut last_status = String::new();
    // A guard against hangs, not a speed target: a busy machine is slow.
    let deadline = Instant::now() + HANG_GUARD;
    let status = loop {
        assert!(
            Instant::now() < deadline,
            "the query did not read its input within {HANG_GUARD:?}; last /status: {last_status}"
        );
        std::thread::sleep(Duration::from_millis(200));
        if child.try_wait().is_some() {
            // The port picked above can be taken by another process
            // before the worker binds it: start again on another one.
            let out = child.wait_with_output();
            let stderr = String::from_utf8_lossy(&out.stderr).to_string();
            assert!(
                stderr.contains("in use") && attempts < 3,
                "the query exited ({}) before reading its input: {stderr}",
                out.status
            );
            addr = free_addr();
            child = start(&addr);
            attempts += 1;
            continue;
        }
        if std::net::TcpStream::connect(&addr).is_err() {
            continue;
        }
        let (code, body) = http_get(&addr, "/status");
        assert_eq!(code, 200);
        let s: serde_json::Value = serde_json::from_str(&body).unwrap();
        last_status = body;
        if s["records_in"][&topics.ticks] == 20_000
            && s["lag"].as_object().is_some_and(|l| !l.is_empty())
            && s["watermarks"]["market_ticks"]
                .as_i64()
                .is_some_and(|w| w > 0)
        {
            break s;
        }
    };
    assert_eq!(status["state"], "running");
    assert_eq!(status["name"], name.as_str());
    assert!(
        status["lag"].as_object().unwrap().values().all(|v| v == 0),
        "caught up: {status}"
    );
    assert!(status["watermarks"]["market_ticks"].as_i64().unwrap() > 0);
    assert_eq!(http_get(&addr, "/healthz").0, 200);
    assert_eq!(http_get(&addr, "/readyz").0, 200);
    let (_, metrics) = http_get(&addr, "/metrics");
    assert!(
        metrics.contains(&format!(
            "tickflow_records_in_total{{topic=\"{}\"}} 20000",
            topics.ticks
        )),
        "{metrics}"
    );
    assert!(metrics.contains("# TYPE tickflow_consumer_lag gauge"));

    // SIGTERM: a final checkpoint and commit, then a clean exit.
    child.terminate();
    let summary = child.wait_ok();
    assert_eq!(summary["stopped"], true);
    assert!(summary["checkpoints_written"].as_u64().unwrap() >= 1);
    // Windows closed before the stop are committed (the open ones stay in the checkpoint).
    let committed = read_topic(&e.brokers, &format!("{name}-out"), true);
    assert_eq!(
        committed.len() as u64,
        summary["rows_out"]["ohlc_5s"].as_u64().unwrap()
    );
    assert!(!committed.is_empty());
}

/// A child process killed when the test ends, also when it fails.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn the_registry_client_sends_basic_auth_and_reports_a_refusal() {
    use std::io::BufRead;
    let mut server = std::process::Command::new("python3")
        .arg(repo().join("tests/schema_registry/server.py"))
        .args(["--port", "0", "--basic-auth", "ops:s3cret"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let stdout = server.stdout.take().unwrap();
    let _server = KillOnDrop(server);
    let mut url = String::new();
    std::io::BufReader::new(stdout).read_line(&mut url).unwrap();
    let url = url.trim().to_string();
    let client = |password: &str| {
        let mut c = RegistryConfig::new(url.clone());
        c.username = Some("ops".into());
        c.password = Some(tickflow_worker::kafka::Secret::new(password));
        // Plain HTTP on loopback: credentials allowed explicitly.
        c.allow_insecure_auth = true;
        RegistryClient::new(c)
    };
    let schema = SourceTable::MarketTicks.avro_schema();
    let id = client("s3cret")
        .register("auth-test-value", schema)
        .unwrap();
    // A fresh client fetches it: the full schema, logical types included.
    let fetched = client("s3cret").schema_by_id(id).unwrap();
    assert_eq!(
        serde_json::to_value(&*fetched).unwrap(),
        serde_json::to_value(schema).unwrap()
    );
    assert!(
        serde_json::to_string(&*fetched)
            .unwrap()
            .contains("timestamp-millis")
    );
    let refused = client("wrong").schema_by_id(id).unwrap_err().to_string();
    assert!(refused.contains("401"), "{refused}");
    assert!(
        !refused.contains("wrong"),
        "the password is not printed: {refused}"
    );
}
