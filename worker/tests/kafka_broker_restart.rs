//! A broker restart in the middle of a run: the worker reconnects, retries
//! its transaction (or fails over to its checkpoint when the Kafka client is
//! stuck), and the output is still exactly once.

mod kafka_common;

use std::process::{Command, Stdio};
use std::time::Duration;

use kafka_common::*;

// The restart can leave librdkafka stuck in send_offsets_to_transaction
// (librdkafka#5456, #5511): the worker then fails over to its checkpoint
// in-process. Either way it must finish on its own, exactly once.
#[test]
fn output_is_exactly_once_across_a_broker_restart() {
    let e = env();
    let topics = Topics::new("restart");
    let dir = tempfile::tempdir().unwrap();
    produce_to_kafka(&topics, 9, 400_000, "0s");
    let sql = repo().join("sql/large_trades.sql");
    let query = |name: &str, chk: &str| {
        let mut c = worker();
        c.args(["query", "--sql"])
            .arg(&sql)
            .args(["--brokers", &e.brokers, "--schema-registry", &e.registry])
            .args(["--input", &format!("market_ticks=kafka:{}", topics.ticks)])
            .args(["--output", &format!("large_trades=kafka:{name}-out")])
            .args(["--output-format", "json", "--bounded", "--name", name])
            .args(["--checkpoint-interval", "200ms", "--batch-size", "1000"])
            .arg("--checkpoint-dir")
            .arg(dir.path().join(chk));
        c
    };
    let reference = unique("restart-ref");
    run_ok(&mut query(&reference, "ref"));

    let name = unique("restart-run");
    let mut child = query(&name, "run")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Restart the broker once the query is well under way (a checkpoint exists).
    let chk = dir.path().join("run");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !chk.read_dir().is_ok_and(|mut d| {
        d.any(|e| e.is_ok_and(|e| !e.file_name().to_string_lossy().ends_with(".tmp")))
    }) {
        assert!(
            std::time::Instant::now() < deadline,
            "no checkpoint within a minute"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        child.try_wait().unwrap().is_none(),
        "the query finished before the broker restart; give it more input"
    );
    let restart = Command::new("bash")
        .arg(repo().join("tests/kafka/kafka.sh"))
        .arg("restart")
        .output()
        .unwrap();
    assert!(
        restart.status.success(),
        "{}",
        String::from_utf8_lossy(&restart.stderr)
    );
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the worker did not ride out the broker restart:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Shown only when the test fails.
    println!("worker stderr:\n{}", String::from_utf8_lossy(&out.stderr));
    println!("summary: {}", last_json_line(&out));
    let want = json_rows(&read_topic(&e.brokers, &format!("{reference}-out"), true));
    let got = json_rows(&read_topic(&e.brokers, &format!("{name}-out"), true));
    assert!(!want.is_empty());
    assert_same_rows("large_trades", got, want);
}
