//! One query on several worker processes, on the real broker: over a
//! 6-partition topic, three workers (as the operator starts them:
//! `--workers 3 --worker-index i`) commit exactly the rows one worker
//! commits; a run rescaled 3 → 2 → 4 workers mid-input, each set stopped
//! with SIGTERM (a final epoch) before the next starts, loses and
//! duplicates nothing, because each partition's state moves through the
//! query's state topic. Queries that cannot be split, and more workers
//! than partitions, are refused before anything is read.

mod kafka_common;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use kafka_common::*;

const STREAMS: [&str; 2] = ["ohlc_5s", "large_trades"];
const PARTITIONS: usize = 6;

fn sql_file(dir: &Path) -> std::path::PathBuf {
    let text: String = STREAMS
        .iter()
        .map(|s| std::fs::read_to_string(repo().join(format!("sql/{s}.sql"))).unwrap())
        .collect::<Vec<_>>()
        .join("\n");
    let path = dir.join("workers.sql");
    std::fs::write(&path, text).unwrap();
    path
}

/// `produce` of ticks (keyed by symbol) into 6 partitions: 24 symbols, so
/// that every partition holds some.
fn producer(topics: &Topics, count: u64) -> std::process::Command {
    let e = env();
    let symbols: Vec<String> = (0..24).map(|i| format!("SYM{i:02}")).collect();
    let mut c = worker();
    c.args([
        "produce",
        "--brokers",
        &e.brokers,
        "--schema-registry",
        &e.registry,
    ])
    .args(["--seed", "41", "--count", &count.to_string()])
    .args(["--symbols", &symbols.join(",")])
    .args(["--jitter", "300ms", "--partitions", &PARTITIONS.to_string()])
    .args(topics.produce_args());
    c
}

fn produce(topics: &Topics, count: u64) {
    let summary = run_ok(&mut producer(topics, count));
    assert_eq!(summary["ticks"], count);
}

fn query(sql: &Path, topics: &Topics, name: &str) -> std::process::Command {
    let e = env();
    let mut c = worker();
    c.args(["query", "--sql"])
        .arg(sql)
        .args(["--brokers", &e.brokers, "--schema-registry", &e.registry])
        .args(["--input", &format!("market_ticks=kafka:{}", topics.ticks)])
        .args(["--output-format", "json", "--name", name])
        .args(["--checkpoint-interval", "100ms", "--batch-size", "2000"]);
    for s in STREAMS {
        c.args(["--output", &format!("{s}=kafka:{name}-{s}")]);
    }
    c
}

fn with_share(mut c: std::process::Command, index: usize, workers: usize) -> std::process::Command {
    c.args(["--workers", &workers.to_string()])
        .args(["--worker-index", &index.to_string()]);
    c
}

/// The reference: one worker, state on its checkpoint volume, to the end.
fn reference(sql: &Path, topics: &Topics, dir: &Path) -> (String, serde_json::Value) {
    let name = unique("workers-ref");
    let summary = run_ok(
        query(sql, topics, &name)
            .arg("--bounded")
            .arg("--checkpoint-dir")
            .arg(dir.join("ref-chk")),
    );
    (name, summary)
}

fn assert_same_output(reference: &str, name: &str) {
    let e = env();
    for s in STREAMS {
        let want = json_rows(&read_topic(&e.brokers, &format!("{reference}-{s}"), true));
        let got = json_rows(&read_topic(&e.brokers, &format!("{name}-{s}"), true));
        assert!(!want.is_empty(), "{s}: the reference has rows");
        assert_same_rows(&format!("{name}: {s}"), got, want);
    }
}

fn records_in(summary: &serde_json::Value) -> u64 {
    summary["records_in"].as_u64().unwrap()
}

#[test]
fn three_workers_on_six_partitions_commit_exactly_the_rows_of_one_worker() {
    let topics = Topics::new("workers3");
    let dir = tempfile::tempdir().unwrap();
    produce(&topics, 300_000);
    let sql = sql_file(dir.path());
    let (reference, ref_summary) = reference(&sql, &topics, dir.path());

    let name = unique("workers3");
    // Worker 0 also runs its two partitions on two engine threads.
    let workers: Vec<Drained> = (0..3)
        .map(|i| {
            let mut c = with_share(query(&sql, &topics, &name), i, 3);
            if i == 0 {
                c.args(["--parallelism", "2"]);
            }
            spawn_drained(c.arg("--bounded"))
        })
        .collect();
    let summaries: Vec<serde_json::Value> = workers.into_iter().map(Drained::wait_ok).collect();
    // Every record was read by exactly one worker.
    assert_eq!(
        summaries.iter().map(records_in).sum::<u64>(),
        records_in(&ref_summary)
    );
    assert!(summaries.iter().all(|s| records_in(s) > 0), "{summaries:?}");
    assert_same_output(&reference, &name);

    // Run again to the same end: every partition resumes from its state
    // and nothing is written twice.
    let again: Vec<Drained> = (0..3)
        .map(|i| spawn_drained(with_share(query(&sql, &topics, &name), i, 3).arg("--bounded")))
        .collect();
    for s in again.into_iter().map(Drained::wait_ok) {
        assert!(s["restored_from"].is_u64(), "{s}");
        assert_eq!(records_in(&s), 0, "{s}");
    }
    assert_same_output(&reference, &name);
}

/// Times each partition's state was committed to the state topic so far.
fn state_writes(name: &str) -> BTreeMap<String, usize> {
    let e = env();
    let mut out = BTreeMap::new();
    for r in read_topic(&e.brokers, &format!("tickflow-{name}-state"), true) {
        let key = String::from_utf8(r.key.unwrap()).unwrap();
        if let Some(p) = key.strip_suffix("/0") {
            *out.entry(p.to_string()).or_default() += 1;
        }
    }
    out
}

/// Starts `workers` workers, waits until each has committed a few epochs
/// of its own (every partition's state written again), stops them all
/// with SIGTERM and returns their summaries.
fn run_a_while(sql: &Path, topics: &Topics, name: &str, workers: usize) -> Vec<serde_json::Value> {
    let before = state_writes(name);
    let mut running: Vec<Drained> = (0..workers)
        .map(|i| spawn_drained(&mut with_share(query(sql, topics, name), i, workers)))
        .collect();
    let deadline = Instant::now() + HANG_GUARD;
    loop {
        let now = state_writes(name);
        let progressed = (0..PARTITIONS).all(|p| {
            let key = format!("p{p}");
            now.get(&key).copied().unwrap_or(0) >= before.get(&key).copied().unwrap_or(0) + 3
        });
        if progressed {
            break;
        }
        if let Some(w) = running.iter_mut().position(|w| w.try_wait().is_some()) {
            let out = running.swap_remove(w).wait_with_output();
            panic!(
                "a worker of {workers} exited early ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        assert!(
            Instant::now() < deadline,
            "{workers} workers made no progress: {now:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    for w in &running {
        w.terminate();
    }
    let summaries: Vec<serde_json::Value> = running.into_iter().map(Drained::wait_ok).collect();
    assert!(
        summaries.iter().all(|s| s["stopped"] == true),
        "{summaries:?}"
    );
    summaries
}

#[test]
fn rescaling_three_to_two_to_four_workers_mid_input_loses_and_duplicates_nothing() {
    let topics = Topics::new("rescale");
    let dir = tempfile::tempdir().unwrap();
    // The input arrives while the workers run: 500 k ticks over about 25 s.
    let count = 500_000;
    let producing = spawn_drained(producer(&topics, count).args([
        "--rate",
        "1000",
        "--realtime",
        "--speed",
        "20",
    ]));
    // The topics exist and every partition has records before a worker starts.
    let deadline = Instant::now() + HANG_GUARD;
    while log_end_offsets(&env().brokers, &topics.ticks)
        .values()
        .filter(|&&o| o > 0)
        .count()
        < PARTITIONS
    {
        assert!(Instant::now() < deadline, "the producer wrote nothing");
        std::thread::sleep(Duration::from_millis(100));
    }
    let sql = sql_file(dir.path());
    let name = unique("rescale");
    let three = run_a_while(&sql, &topics, &name, 3);
    let two = run_a_while(&sql, &topics, &name, 2);
    assert!(two.iter().all(|s| s["restored_from"].is_u64()), "{two:?}");
    assert_eq!(producing.wait_ok()["ticks"], count);
    let four: Vec<serde_json::Value> = (0..4)
        .map(|i| spawn_drained(with_share(query(&sql, &topics, &name), i, 4).arg("--bounded")))
        .collect::<Vec<_>>()
        .into_iter()
        .map(Drained::wait_ok)
        .collect();
    assert!(four.iter().all(|s| s["restored_from"].is_u64()), "{four:?}");
    let read: Vec<u64> = [&three, &two, &four]
        .iter()
        .map(|set| set.iter().map(records_in).sum())
        .collect();
    eprintln!("records read by the 3, 2 and 4 workers: {read:?}");
    // Each record was read once in all: a stop commits exactly what was
    // read, and the next owner continues from there.
    assert!(
        read.iter().all(|&n| n > 0),
        "every set had input to read: {read:?}"
    );
    let (reference, ref_summary) = reference(&sql, &topics, dir.path());
    assert_eq!(read.iter().sum::<u64>(), records_in(&ref_summary));
    assert_same_output(&reference, &name);
}

#[test]
fn queries_that_cannot_be_split_and_too_many_workers_are_refused_before_reading() {
    let topics = Topics::new("refuse");
    let dir = tempfile::tempdir().unwrap();
    produce(&topics, 2_000);
    let sql = sql_file(dir.path());
    let name = unique("refuse");

    let out = with_share(query(&sql, &topics, &name), 0, 7)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("at most 6 workers"), "{stderr}");

    let global = dir.path().join("global.sql");
    std::fs::write(
        &global,
        "CREATE STREAM ohlc_5s AS SELECT COUNT(*) AS trades FROM market_ticks \
         GROUP BY TUMBLE(ts, INTERVAL '5' SECOND) EMIT ON WINDOW CLOSE;",
    )
    .unwrap();
    let out = with_share(query(&global, &topics, &name), 1, 2)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("does not split by key"), "{stderr}");

    let out = with_share(query(&sql, &topics, &name), 2, 2)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("not below --workers 2"), "{stderr}");

    // Files have no partitions to share.
    let out = worker()
        .args(["query", "--sql"])
        .arg(&sql)
        .args([
            "--input",
            "market_ticks=ticks.jsonl",
            "--workers",
            "2",
            "--worker-index",
            "0",
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("a replay of files runs in one process"),
        "{stderr}"
    );
}

/// A worker of three dies (at the dangerous points around its commit, then
/// by SIGKILL at a random moment) while the others go on; restarted, it
/// resumes its partitions from their committed state, and the output is
/// exactly that of one uninterrupted worker.
#[test]
fn a_worker_killed_mid_epoch_resumes_its_partitions_exactly_once() {
    let topics = Topics::new("workers-kill");
    let dir = tempfile::tempdir().unwrap();
    produce(&topics, 600_000);
    let sql = sql_file(dir.path());
    let (reference, ref_summary) = reference(&sql, &topics, dir.path());

    let name = unique("workers-kill");
    let start = |i: usize| with_share(query(&sql, &topics, &name), i, 3);
    let others: Vec<Drained> = [0, 2]
        .into_iter()
        .map(|i| spawn_drained(start(i).arg("--bounded")))
        .collect();
    let mut read = 0;
    for point in ["after-checkpoint:3", "after-commit:2", "after-checkpoint:2"] {
        let out = start(1)
            .arg("--bounded")
            .env("TICKFLOW_CRASH_AT", point)
            .output()
            .unwrap();
        assert!(!out.status.success(), "crash point {point} was reached");
    }
    let before = state_writes(&name);
    let mut victim = spawn_drained(start(1).arg("--bounded"));
    let deadline = Instant::now() + HANG_GUARD;
    while state_writes(&name).get("p1") == before.get("p1") && victim.try_wait().is_none() {
        assert!(Instant::now() < deadline, "worker 1 wrote no state");
        std::thread::sleep(Duration::from_millis(20));
    }
    if victim.try_wait().is_none() {
        victim.child.kill().unwrap(); // SIGKILL
    }
    let _ = victim.wait_with_output();
    let last = run_ok(start(1).arg("--bounded"));
    assert!(last["restored_from"].is_u64(), "{last}");
    read += records_in(&last);
    for s in others.into_iter().map(Drained::wait_ok) {
        read += records_in(&s);
    }
    assert!(read <= records_in(&ref_summary));
    assert_same_output(&reference, &name);
}
