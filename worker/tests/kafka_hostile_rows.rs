//! Rows the engine refuses, through the real broker: event times at the
//! ends of time and rows an expression fails on reach the dead-letter topic
//! with their reason, every other row is committed exactly once, and the
//! query keeps running; after a kill -9 and a restart nothing is lost or
//! written twice.

mod kafka_common;

use std::collections::BTreeMap;
use std::time::Duration;

use kafka_common::*;
use rdkafka::ClientConfig;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};

const START: i64 = 1_767_623_400_000; // 2026-01-05T14:30:00Z

fn tick(volume: i64, ts: i64) -> String {
    serde_json::json!({
        "symbol": "AAPL", "exchange": "NASDAQ", "price": 100.0, "bid": 99.9, "ask": 100.1,
        "bid_size": 100, "ask_size": 200, "volume": volume, "side": "buy", "ts": ts
    })
    .to_string()
}

fn send(topic: &str, values: &[String]) {
    let p: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", &env().brokers)
        .create()
        .unwrap();
    for v in values {
        p.send(BaseRecord::<str, str>::to(topic).key("AAPL").payload(v))
            .map_err(|(e, _)| e)
            .unwrap();
    }
    p.flush(Duration::from_secs(30)).unwrap();
}

#[test]
fn refused_rows_reach_the_dead_letter_topic_and_the_rest_is_committed_once() {
    let e = env();
    let topic = unique("hostile-rows");
    tickflow_worker::kafka::admin::ensure_topics(
        &tickflow_worker::kafka::KafkaConfig::plaintext(&e.brokers),
        std::slice::from_ref(&topic),
        1,
        1,
    )
    .unwrap();
    let mut values = Vec::new();
    let (mut good, mut failing) = (0u64, 0u64);
    for i in 0..3000i64 {
        let volume = 100 + i;
        if volume % 7 == 0 {
            failing += 1;
        } else {
            good += 1;
        }
        values.push(tick(volume, START + i * 10));
        if i % 1000 == 500 {
            values.push(tick(1, i64::MAX));
            values.push(tick(1, START + 100 * 365 * 86_400_000));
            values.push(tick(1, -1_000));
        }
    }
    send(&topic, &values);

    let name = unique("hostile-rows-q");
    let dir = tempfile::tempdir().unwrap();
    let sql = dir.path().join("ratio.sql");
    std::fs::write(
        &sql,
        "CREATE STREAM ratio AS SELECT symbol, volume / (volume % 7) AS r, ts FROM market_ticks;\n",
    )
    .unwrap();
    let run = |crash: Option<&str>| {
        let mut cmd = worker();
        cmd.args(["query", "--sql"])
            .arg(&sql)
            .args(["--brokers", &e.brokers, "--input-format", "json"])
            .args(["--input", &format!("market_ticks=kafka:{topic}")])
            .args(["--output", &format!("ratio=kafka:{name}-out")])
            .args(["--output-format", "json", "--bounded", "--name", &name])
            .args(["--batch-size", "500", "--checkpoint-interval", "100ms"])
            .arg("--checkpoint-dir")
            .arg(dir.path().join("chk"));
        if let Some(point) = crash {
            cmd.env("TICKFLOW_CRASH_AT", point);
        }
        cmd.output().unwrap()
    };
    // Killed right after its first checkpoint (before its commit), then
    // restarted: the restart re-sends that epoch, dead letters included.
    let crashed = run(Some("after-checkpoint:1"));
    assert!(!crashed.status.success(), "the crash point was reached");
    let out = run(None);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let rows = read_topic(&e.brokers, &format!("{name}-out"), true);
    assert_eq!(rows.len() as u64, good, "every good row, exactly once");
    // Each output row is one input row's ratio, none twice: the inputs'
    // (volume, ts) pairs are unique, so compare those.
    let mut ids: Vec<String> = json_rows(&rows)
        .iter()
        .map(|r| r["ts"].to_string())
        .collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len() as u64, good, "no row twice");

    let dlq = read_topic(&e.brokers, &format!("{name}-dead-letters"), true);
    let mut reasons: BTreeMap<String, u64> = BTreeMap::new();
    for d in &dlq {
        *reasons
            .entry(d.headers["tickflow.error.reason"].clone())
            .or_default() += 1;
    }
    assert_eq!(
        reasons,
        BTreeMap::from([
            ("evaluation-error".to_string(), failing),
            ("event-time-too-early".to_string(), 3),
            ("event-time-too-far-ahead".to_string(), 6),
        ]),
        "each refused row once, with its reason, across the crash"
    );
    let eval = dlq
        .iter()
        .find(|d| d.headers["tickflow.error.reason"] == "evaluation-error")
        .unwrap();
    assert_eq!(eval.headers["tickflow.source.location"], "stream ratio");
    assert!(eval.headers["tickflow.error.message"].contains("Divide by zero"));
    let row: serde_json::Value = serde_json::from_slice(&eval.value).unwrap();
    assert_eq!(row["volume"].as_i64().unwrap() % 7, 0);
}
