//! Hostile input through `tickflow-worker query` (file replay), as a user
//! runs it: rows with event times at the ends of time, rows an expression
//! fails on, SQL deep enough to overflow a planner. The query finishes (or
//! refuses to start with a clear error), never panics or hangs; every good
//! row is in the output, every bad one in the dead letters with its reason,
//! and the counts match.

use std::path::Path;
use std::process::{Command, Output};

fn worker() -> Command {
    Command::new(env!("CARGO_BIN_EXE_tickflow-worker"))
}

fn tick(symbol: &str, volume: i64, ts: i64) -> String {
    serde_json::json!({
        "symbol": symbol, "exchange": "NASDAQ", "price": 100.0, "bid": 99.9, "ask": 100.1,
        "bid_size": 100, "ask_size": 200, "volume": volume, "side": "buy", "ts": ts
    })
    .to_string()
}

fn json_lines(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn summary(out: &Output) -> serde_json::Value {
    assert!(
        out.status.success(),
        "query failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(stdout.lines().last().unwrap()).unwrap()
}

const START: i64 = 1_767_623_400_000; // 2026-01-05T14:30:00Z

#[test]
fn bad_event_times_and_failing_rows_go_to_the_dead_letters_and_the_rest_is_output() {
    let tmp = tempfile::tempdir().unwrap();
    let mut lines = Vec::new();
    let mut good = 0;
    let mut failing = 0;
    for i in 0..300i64 {
        // volume % 7 == 0 makes `volume / (volume % 7)` divide by zero.
        let volume = 100 + i;
        if volume % 7 == 0 {
            failing += 1;
        } else {
            good += 1;
        }
        lines.push(tick("AAPL", volume, START + i * 100));
        if i == 150 {
            // The ends of time and the far future, mid-stream.
            lines.push(tick("EVIL", 1, i64::MAX));
            lines.push(tick("EVIL", 1, START + 50 * 365 * 86_400_000));
            lines.push(tick("EVIL", 1, -1));
            lines.push(tick("EVIL", 1, i64::MIN));
        }
    }
    let input = tmp.path().join("ticks.jsonl");
    std::fs::write(&input, lines.join("\n") + "\n").unwrap();
    let sql = tmp.path().join("q.sql");
    std::fs::write(
        &sql,
        "CREATE STREAM ratio AS SELECT symbol, volume / (volume % 7) AS r, ts FROM market_ticks;\n\
         CREATE STREAM bars AS SELECT symbol, COUNT(*) AS n FROM market_ticks \
         GROUP BY symbol, TUMBLE(ts, INTERVAL '10' SECOND);\n",
    )
    .unwrap();
    let (ratio, bars, dead) = (
        tmp.path().join("ratio.jsonl"),
        tmp.path().join("bars.jsonl"),
        tmp.path().join("dead.jsonl"),
    );
    let out = worker()
        .args(["query", "--sql"])
        .arg(&sql)
        .arg("--input")
        .arg(format!("market_ticks={}", input.display()))
        .arg("--output")
        .arg(format!("ratio={}", ratio.display()))
        .arg("--output")
        .arg(format!("bars={}", bars.display()))
        .arg("--dead-letter")
        .arg(&dead)
        .output()
        .unwrap();
    let s = summary(&out);

    assert_eq!(
        json_lines(&ratio).len(),
        good,
        "every evaluable row is output"
    );
    let counted: i64 = json_lines(&bars)
        .iter()
        .map(|r| r["n"].as_i64().unwrap())
        .sum();
    assert_eq!(counted, 300, "the windowed stream saw every in-range row");
    assert!(
        json_lines(&bars).iter().all(|r| r["symbol"] == "AAPL"),
        "no window was opened for an out-of-range row"
    );
    assert_eq!(
        s["late_events"]["bars"], 0,
        "the far-future row moved no watermark"
    );

    let dead_rows = json_lines(&dead);
    let by_reason = |reason: &str| {
        dead_rows
            .iter()
            .filter(|r| r["reason"] == reason)
            .collect::<Vec<_>>()
    };
    assert_eq!(by_reason("event-time-too-far-ahead").len(), 2);
    assert_eq!(by_reason("event-time-too-early").len(), 2);
    let eval = by_reason("evaluation-error");
    assert_eq!(
        eval.len(),
        failing,
        "each failing row once, from its stream"
    );
    assert!(eval.iter().all(|r| r["location"] == "stream ratio"
        && r["error"].as_str().unwrap().contains("Divide by zero")));
    let raw: serde_json::Value =
        serde_json::from_str(eval[0]["raw"].as_str().expect("the row as JSON")).unwrap();
    assert_eq!(
        raw["volume"].as_i64().unwrap() % 7,
        0,
        "the raw row is kept"
    );
    assert_eq!(s["bad_records"], 4 + failing as u64);
    assert_eq!(s["dead_letters"]["evaluation-error"], failing as u64);
}

#[test]
fn sql_that_would_overflow_the_planner_is_refused_with_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("ticks.jsonl");
    std::fs::write(&input, tick("AAPL", 1, START) + "\n").unwrap();
    for (what, expr) in [
        ("a long chain", format!("1{}", "+1".repeat(100_000))),
        (
            "deep parentheses",
            format!("{}1{}", "(".repeat(20_000), ")".repeat(20_000)),
        ),
    ] {
        let sql = tmp.path().join("deep.sql");
        std::fs::write(
            &sql,
            format!("CREATE STREAM deep AS SELECT symbol, {expr} AS n FROM market_ticks;\n"),
        )
        .unwrap();
        let out = worker()
            .args(["query", "--sql"])
            .arg(&sql)
            .arg("--input")
            .arg(format!("market_ticks={}", input.display()))
            .arg("--output-dir")
            .arg(tmp.path())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            out.status.code(),
            Some(1),
            "{what}: an error exit, not a signal: {stderr}"
        );
        assert!(stderr.contains("too complex to plan"), "{what}: {stderr}");
        assert!(stderr.contains("line 1"), "{what}: positioned: {stderr}");
    }
}
