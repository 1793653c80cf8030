//! Exactly-once output through crashes: a query over a million ticks is
//! killed with SIGKILL at random moments (and, deterministically, at the
//! dangerous points around a checkpoint) and restarted each time; a
//! `read_committed` reader of its output topics must see exactly the rows of
//! an uninterrupted run: windows, a filter, and an ASOF join of two topics
//! (its waiting rows and the right side it keeps are in the checkpoint). The same holds when a commit gets stuck in the Kafka
//! client: the worker fails over to its checkpoint in-process, or, with
//! failover off, exits and the next process recovers.

mod kafka_common;

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use kafka_common::*;

const STREAMS: [&str; 3] = ["ohlc_5s", "large_trades", "fill_marks"];

/// Fills marked to the tick at or before them.
const JOIN_SQL: &str = "
CREATE STREAM fill_marks AS
SELECT f.order_id, f.symbol, f.ts, f.price, t.ts AS tick_ts, t.exchange, t.price AS mark_price
FROM (SELECT * FROM order_events WHERE status = 'filled') f
ASOF JOIN market_ticks t MATCH_CONDITION (f.ts >= t.ts) ON f.symbol = t.symbol;
";

fn query(sql: &Path, topics: &Topics, name: &str, checkpoints: &Path) -> std::process::Command {
    let e = env();
    let mut c = worker();
    c.args(["query", "--sql"])
        .arg(sql)
        .args(["--brokers", &e.brokers, "--schema-registry", &e.registry])
        .args(["--input", &format!("market_ticks=kafka:{}", topics.ticks)])
        .args(["--output-format", "json", "--bounded", "--name", name])
        .args(["--checkpoint-interval", "50ms", "--batch-size", "4096"])
        .arg("--checkpoint-dir")
        .arg(checkpoints);
    c.args(["--input", &format!("order_events=kafka:{}", topics.orders)]);
    for s in STREAMS {
        c.args(["--output", &format!("{s}=kafka:{name}-{s}")]);
    }
    c
}

/// Id of the newest complete checkpoint in `dir`.
fn newest_checkpoint(dir: &Path) -> Option<u64> {
    std::fs::read_dir(dir)
        .ok()?
        .filter_map(Result::ok)
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().to_string();
            name.strip_prefix("chk-")?.parse::<u64>().ok()
        })
        .max()
}

#[test]
fn a_query_killed_ten_times_commits_exactly_the_rows_of_an_uninterrupted_run() {
    let e = env();
    let topics = Topics::new("eos");
    let dir = tempfile::tempdir().unwrap();
    let summary = produce_to_kafka(&topics, 77, 2_000_000, "300ms");
    assert_eq!(summary["ticks"], 2_000_000);
    let sql = dir.path().join("eos.sql");
    let mut text: String = STREAMS[..2]
        .iter()
        .map(|s| std::fs::read_to_string(repo().join(format!("sql/{s}.sql"))).unwrap())
        .collect::<Vec<_>>()
        .join("\n");
    text.push_str(JOIN_SQL);
    std::fs::write(&sql, text).unwrap();

    // The reference: one uninterrupted run.
    let reference = unique("eos-ref");
    let started = Instant::now();
    run_ok(&mut query(
        &sql,
        &topics,
        &reference,
        &dir.path().join("ref-chk"),
    ));
    let full_run = started.elapsed();

    // The same query, killed again and again.
    let name = unique("eos-killed");
    let chk = dir.path().join("killed-chk");
    let mut seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        | 1;
    eprintln!("kill schedule seed {seed}, uninterrupted run {full_run:?}");
    let mut random = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    // Deterministic crashes at the moments that matter, then random SIGKILLs.
    for point in [
        "after-checkpoint:2",
        "before-checkpoint:2",
        "after-commit:1",
        "after-checkpoint:1",
    ] {
        let out = query(&sql, &topics, &name, &chk)
            .env("TICKFLOW_CRASH_AT", point)
            .output()
            .unwrap();
        assert!(!out.status.success(), "crash point {point} was reached");
    }
    let mut kills = 0;
    while kills < 10 {
        let before = newest_checkpoint(&chk);
        let mut child = query(&sql, &topics, &name, &chk)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // Let it make progress (a new checkpoint), then kill it at a random
        // moment of the next epoch: mid-batch, mid-checkpoint or mid-commit.
        let deadline = Instant::now() + Duration::from_secs(60);
        while newest_checkpoint(&chk) == before
            && Instant::now() < deadline
            && child.try_wait().unwrap().is_none()
        {
            std::thread::sleep(Duration::from_millis(2));
        }
        std::thread::sleep(Duration::from_millis(random() % 60));
        assert!(
            child.try_wait().unwrap().is_none(),
            "the run reached the end of its input after {kills} kills; give it more input"
        );
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        kills += 1;
    }
    assert!(newest_checkpoint(&chk).is_some());
    let last = run_ok(&mut query(&sql, &topics, &name, &chk));
    assert!(
        last["restored_from"].is_u64(),
        "the last run restored a checkpoint"
    );

    for s in STREAMS {
        let want = json_rows(&read_topic(&e.brokers, &format!("{reference}-{s}"), true));
        let got = json_rows(&read_topic(&e.brokers, &format!("{name}-{s}"), true));
        assert!(!want.is_empty(), "{s}: the reference has rows");
        assert_same_rows(s, got, want);
    }
}

/// The commit of checkpoint 3 hangs (as librdkafka can after a broker
/// restart), before or after it reached the broker: the worker gives up on
/// that producer after the stall timeout, fails over to the checkpoint whose
/// commit is in doubt, and the output is still exactly that of an
/// uninterrupted run. With failover off it exits with the reason, and a
/// restarted process recovers the same way.
#[test]
fn a_stuck_commit_fails_over_to_the_checkpoint_and_output_stays_exactly_once() {
    let e = env();
    let topics = Topics::new("stall");
    let dir = tempfile::tempdir().unwrap();
    produce_to_kafka(&topics, 5, 200_000, "0s");
    let sql = repo().join("sql/large_trades.sql");
    let query = |name: &str| {
        let mut c = worker();
        c.args(["query", "--sql"])
            .arg(&sql)
            .args(["--brokers", &e.brokers, "--schema-registry", &e.registry])
            .args(["--input", &format!("market_ticks=kafka:{}", topics.ticks)])
            .args(["--output", &format!("large_trades=kafka:{name}-out")])
            .args(["--output-format", "json", "--bounded", "--name", name])
            .args(["--checkpoint-interval", "10ms", "--batch-size", "1000"])
            .args(["--transaction-stall-timeout", "10s"])
            .arg("--checkpoint-dir")
            .arg(dir.path().join(name));
        c
    };
    let reference = unique("stall-ref");
    run_ok(&mut query(&reference));
    let want = json_rows(&read_topic(&e.brokers, &format!("{reference}-out"), true));
    assert!(!want.is_empty());

    // In-process failover. Stuck before the commit reached the broker,
    // epoch 3's records are sent again; stuck after it landed, the failover
    // finds epoch 3 committed and must not send it again.
    for (point, resent) in [("commit:3", true), ("after-commit:3", false)] {
        let name = unique("stall-failover");
        let summary = run_ok(query(&name).env("TICKFLOW_STALL_AT", point));
        assert_eq!(summary["failovers"], 1, "{point}: {summary}");
        assert_eq!(summary["restored_from"], 3, "{point}: {summary}");
        assert_eq!(summary["recovered_epoch"], resent, "{point}: {summary}");
        let got = json_rows(&read_topic(&e.brokers, &format!("{name}-out"), true));
        assert_same_rows(
            &format!("large_trades, stalled at {point}"),
            got,
            want.clone(),
        );
    }

    // A commit call that times out (as when the broker is slow) is resumed,
    // and only it: no failover, and the output is the same.
    let name = unique("call-timeout");
    let out = query(&name)
        .env("TICKFLOW_STALL_AT", "commit-timeout:3")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("retry call to resume"),
        "the commit call did not time out, so the test tested nothing:\n{stderr}"
    );
    assert!(!stderr.contains("Conflicting"), "{stderr}");
    let summary = last_json_line(&out);
    assert_eq!(summary["failovers"], 0, "{summary}\n{stderr}");
    let got = json_rows(&read_topic(&e.brokers, &format!("{name}-out"), true));
    assert_same_rows(
        "large_trades with a commit call timing out",
        got,
        want.clone(),
    );

    // Failover off: the worker exits with the reason; the next process recovers.
    let name = unique("stall-exit");
    let out = query(&name)
        .env("TICKFLOW_STALL_AT", "commit:3")
        .args(["--max-failovers", "0"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("did not return within 10s"),
        "the error says the commit was stuck:\n{stderr}"
    );
    let summary = run_ok(&mut query(&name));
    assert_eq!(summary["restored_from"], 3, "{summary}");
    let got = json_rows(&read_topic(&e.brokers, &format!("{name}-out"), true));
    assert_same_rows("large_trades after a restart", got, want);
}

/// A backlog whose output is larger than the epoch's memory share (an
/// eighth of `--memory-budget`): epochs close on that share, not on the
/// (hour-long) interval, and an epoch of many chunks that crashed between
/// its checkpoint and its commit is sent again from the checkpoint, whole
/// and once.
#[test]
fn epochs_close_at_the_memory_share_and_a_crashed_large_epoch_is_sent_again_once() {
    let e = env();
    let topics = Topics::new("eos-budget");
    let dir = tempfile::tempdir().unwrap();
    let ticks = 300_000;
    produce_to_kafka(&topics, 5, ticks, "0s");
    let sql = dir.path().join("pass.sql");
    std::fs::write(
        &sql,
        "CREATE STREAM ticks_out AS SELECT * FROM market_ticks;",
    )
    .unwrap();
    let passthrough = |name: &str, checkpoints: &Path| {
        let mut c = worker();
        c.args(["query", "--sql"])
            .arg(&sql)
            .args(["--brokers", &e.brokers, "--schema-registry", &e.registry])
            .args(["--input", &format!("market_ticks=kafka:{}", topics.ticks)])
            .args(["--output", &format!("ticks_out=kafka:{name}-out")])
            .args(["--output-format", "json", "--bounded", "--name", name])
            // Only the memory share can close an epoch before the end.
            .args(["--checkpoint-interval", "1h", "--memory-budget", "192MiB"])
            .arg("--checkpoint-dir")
            .arg(checkpoints);
        c
    };

    let reference = unique("eos-budget-ref");
    let summary = run_ok(&mut passthrough(&reference, &dir.path().join("ref-chk")));
    assert_eq!(summary["rows_out"]["ticks_out"], ticks);
    let epochs = summary["checkpoints_written"].as_u64().unwrap();
    eprintln!("{epochs} checkpoints");
    assert!(
        epochs >= 3,
        "{ticks} rows of JSON output (about 90 MiB pending) against a 24 MiB share \
         close epochs early: {epochs} checkpoints"
    );

    // Crash right after the first checkpoint: its epoch (about 24 MiB, a
    // few dozen chunks) is in the checkpoint but not committed.
    let name = unique("eos-budget-crash");
    let chk = dir.path().join("crash-chk");
    let out = passthrough(&name, &chk)
        .env("TICKFLOW_CRASH_AT", "after-checkpoint:1")
        .output()
        .unwrap();
    assert!(!out.status.success(), "the crash point was reached");
    let last = run_ok(&mut passthrough(&name, &chk));
    assert_eq!(last["restored_from"], 1);
    assert_eq!(last["recovered_epoch"], true, "epoch 1 was sent again");

    let want = json_rows(&read_topic(&e.brokers, &format!("{reference}-out"), true));
    let got = json_rows(&read_topic(&e.brokers, &format!("{name}-out"), true));
    assert_eq!(want.len() as u64, ticks);
    assert_same_rows("ticks_out", got, want);
}
