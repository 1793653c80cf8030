//! The broker goes away in the middle of a run, once shut down cleanly and
//! once killed with SIGKILL: the worker reconnects, retries its transaction
//! (or fails over to its checkpoint when the Kafka client is stuck), and the
//! output is still exactly once.

mod kafka_common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use kafka_common::*;

fn query(topics: &Topics, name: &str, checkpoints: &Path) -> Command {
    let e = env();
    let mut c = worker();
    c.args(["query", "--sql"])
        .arg(repo().join("sql/large_trades.sql"))
        .args(["--brokers", &e.brokers, "--schema-registry", &e.registry])
        .args(["--input", &format!("market_ticks=kafka:{}", topics.ticks)])
        .args(["--output", &format!("large_trades=kafka:{name}-out")])
        .args(["--output-format", "json", "--bounded", "--name", name])
        .args(["--checkpoint-interval", "200ms", "--batch-size", "1000"])
        .arg("--checkpoint-dir")
        .arg(checkpoints);
    c
}

/// Runs the query, restarts the broker with `kafka.sh restart_args` once the
/// first checkpoint exists, and returns the committed output rows.
fn rows_through_a_restart(
    topics: &Topics,
    dir: &Path,
    restart_args: &[&str],
) -> Vec<serde_json::Value> {
    let e = env();
    let name = unique("restart-run");
    let chk = dir.join(&name);
    let mut child = spawn_drained(
        query(topics, &name, &chk)
            // librdkafka's connection errors, to tell that the outage hit the run.
            .env("RUST_LOG", "info,tickflow_worker::kafka::config=debug"),
    );
    let deadline = Instant::now() + HANG_GUARD;
    while !chk.read_dir().is_ok_and(|mut d| {
        // A finished checkpoint (`chk-N`), not the lock, the lineage file
        // or a `.tmp` being written.
        d.any(|e| {
            e.is_ok_and(|e| {
                let name = e.file_name().to_string_lossy().to_string();
                name.starts_with("chk-") && !name.ends_with(".tmp")
            })
        })
    }) {
        assert!(
            Instant::now() < deadline,
            "no checkpoint within {HANG_GUARD:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        child.try_wait().is_none(),
        "the query finished before the broker restart; give it more input"
    );
    let restart = Command::new("bash")
        .arg(repo().join("tests/kafka/kafka.sh"))
        .arg("restart")
        .args(restart_args)
        .output()
        .unwrap();
    assert!(
        restart.status.success(),
        "{}",
        String::from_utf8_lossy(&restart.stderr)
    );
    let out = child.wait_with_output();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let problems: String = stderr
        .lines()
        .filter(|l| !l.contains(" DEBUG "))
        .collect::<Vec<_>>()
        .join("\n");
    assert!(
        out.status.success(),
        "the worker did not ride out `kafka.sh restart {}`:\n{problems}\n\nbroker log:\n{}",
        restart_args.join(" "),
        broker_log(200)
    );
    assert!(
        stderr.contains("librdkafka error"),
        "the worker never lost the broker: the restart came after the query finished; give it more input"
    );
    // Shown only when the test fails.
    println!(
        "restart {restart_args:?}: {}\n{problems}",
        last_json_line(&out)
    );
    json_rows(&read_topic(&e.brokers, &format!("{name}-out"), true))
}

#[test]
fn output_is_exactly_once_across_a_broker_restart_and_a_broker_crash() {
    let e = env();
    let topics = Topics::new("restart");
    let dir = tempfile::tempdir().unwrap();
    produce_to_kafka(&topics, 9, 800_000, "0s");
    let reference = unique("restart-ref");
    run_ok(&mut query(&topics, &reference, &dir.path().join("ref")));
    let want = json_rows(&read_topic(&e.brokers, &format!("{reference}-out"), true));
    assert!(!want.is_empty());

    let got = rows_through_a_restart(&topics, dir.path(), &[]);
    assert_same_rows(
        "large_trades across a clean broker restart",
        got,
        want.clone(),
    );
    let got = rows_through_a_restart(&topics, dir.path(), &["--kill"]);
    assert_same_rows("large_trades across a broker SIGKILL", got, want);
}
