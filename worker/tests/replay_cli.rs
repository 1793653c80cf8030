//! `tickflow-worker produce` and `query` as a user runs them: file replay,
//! kill -9 and restore from checkpoints, malformed input, bad SQL.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

fn worker() -> Command {
    Command::new(env!("CARGO_BIN_EXE_tickflow-worker"))
}

fn ok(out: Output) -> String {
    assert!(
        out.status.success(),
        "command failed: {}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn produce(dir: &Path, count: u64, format: &str) {
    let summary = ok(worker()
        .args([
            "produce",
            "--count",
            &count.to_string(),
            "--seed",
            "11",
            "--jitter",
            "500ms",
            "--format",
            format,
        ])
        .arg("--output-dir")
        .arg(dir)
        .output()
        .unwrap());
    let summary: serde_json::Value = serde_json::from_str(summary.trim()).unwrap();
    assert_eq!(
        summary["ticks"], count,
        "a bounded run writes exactly --count ticks"
    );
    if format == "jsonl" {
        let lines = std::fs::read_to_string(dir.join("market-ticks.jsonl"))
            .unwrap()
            .lines()
            .count();
        assert_eq!(lines as u64, count);
    }
}

fn sql_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../sql")
}

/// Stateful streams for the kill -9 test, a DAG of named streams: a CTE
/// (`ticks`, read by later streams only, so it has no output file) feeds
/// OVER windows (`tick_moves`: LAG, LEAD, a ROWS frame), which feed a
/// window top-N (`top_movers`) and, with order events, a UNION ALL
/// (`dag_alerts`). Beside them a top-N over a CTE and a RANGE frame.
const OVER_STREAMS: &str = "
CREATE STREAM ticks AS
WITH t AS (SELECT symbol, ts, price, volume FROM market_ticks)
SELECT * FROM t WHERE volume > 0;

CREATE STREAM tick_moves AS
SELECT symbol, ts, price, volume,
       price - LAG(price, 2) OVER (PARTITION BY symbol ORDER BY ts) AS move2,
       LEAD(price) OVER (PARTITION BY symbol ORDER BY ts) AS next_price,
       AVG(volume) OVER (PARTITION BY symbol ORDER BY ts ROWS BETWEEN 20 PRECEDING AND 1 PRECEDING) AS avg_prev_20
FROM ticks;

CREATE STREAM top_movers AS
SELECT * FROM (
  SELECT symbol, window_start, window_end, MAX(ABS(move2)) AS biggest_move,
         ROW_NUMBER() OVER (PARTITION BY window_start, window_end ORDER BY MAX(ABS(move2)) DESC, symbol) AS rn
  FROM tick_moves GROUP BY symbol, TUMBLE(ts, INTERVAL '5' SECOND)
) WHERE rn <= 3;

CREATE STREAM dag_alerts AS
SELECT symbol, ts, 'move' AS kind, move2 AS size FROM tick_moves WHERE ABS(move2) > 0.5
UNION ALL
SELECT symbol, ts, 'order', quantity FROM order_events WHERE quantity > 400;

CREATE STREAM top_traders AS
WITH per_trader AS (
  SELECT trader_id, window_start, window_end, SUM(quantity) AS quantity
  FROM order_events GROUP BY trader_id, TUMBLE(ts, INTERVAL '10' SECOND)
)
SELECT * FROM (
  SELECT trader_id, window_start, window_end, quantity,
         ROW_NUMBER() OVER (PARTITION BY window_start, window_end ORDER BY quantity DESC, trader_id) AS rn
  FROM per_trader
) WHERE rn <= 3;

CREATE STREAM order_rate AS
SELECT trader_id, ts, COUNT(*) OVER (PARTITION BY trader_id ORDER BY ts
         RANGE BETWEEN INTERVAL '3' SECOND PRECEDING AND CURRENT ROW) AS orders_3s
FROM order_events;

CREATE STREAM venue_quotes AS
SELECT symbol, exchange, LAST_VALUE(bid) AS bid, LAST_VALUE(ask) AS ask
FROM market_ticks GROUP BY symbol, exchange;

CREATE STREAM best_quotes AS
SELECT symbol, MAX(bid) AS best_bid, MIN(ask) AS best_ask, COUNT(*) AS venues
FROM venue_quotes GROUP BY symbol;

CREATE STREAM trader_books AS
SELECT trader_id, symbol, COUNT(*) AS orders, SUM(quantity) AS quantity
FROM order_events GROUP BY trader_id, symbol HAVING COUNT(*) < 550;
";

/// Joins for the kill -9 test: an interval LEFT join (left rows waiting
/// for their interval to pass), ASOF joins backward and forward (left rows
/// waiting for their match to be final, right rows kept per key), a
/// window join of two windowed streams that only it reads, a regular
/// LEFT join of an updating stream with the latest tick per symbol, and a
/// temporal join with an updating aggregate (its hidden versions stream).
const JOIN_STREAMS: &str = "
CREATE STREAM recent_ticks AS
SELECT o.order_id, o.ts, o.price, t.ts AS tick_ts, t.exchange, t.price AS tick_price
FROM order_events o LEFT JOIN market_ticks t
  ON o.symbol = t.symbol AND t.ts BETWEEN o.ts - INTERVAL '30' MILLISECOND AND o.ts;

CREATE STREAM fill_marks AS
SELECT f.order_id, f.ts, f.price, t.ts AS tick_ts, t.price AS mark_price
FROM (SELECT * FROM order_events WHERE status = 'filled') f
ASOF JOIN market_ticks t MATCH_CONDITION (f.ts >= t.ts) ON f.symbol = t.symbol;

CREATE STREAM next_quote AS
SELECT o.order_id, o.ts, q.ts AS quote_ts, q.exchange, q.ask
FROM order_events o
LEFT ASOF JOIN market_ticks q MATCH_CONDITION (o.ts < q.ts) ON q.symbol = o.symbol;

CREATE STREAM tick_bars AS
SELECT symbol, COUNT(*) AS ticks, MAX(price) AS high
FROM market_ticks GROUP BY symbol, TUMBLE(ts, INTERVAL '1' SECOND);

CREATE STREAM order_flow AS
SELECT symbol, SUM(quantity) AS quantity
FROM order_events GROUP BY symbol, TUMBLE(ts, INTERVAL '1' SECOND);

CREATE STREAM bars_with_flow AS
SELECT b.symbol, b.window_end, b.ticks, b.high, f.quantity
FROM tick_bars b LEFT JOIN order_flow f
  ON b.symbol = f.symbol AND b.window_end = f.window_end;

CREATE STREAM marked_books AS
SELECT b.trader_id, b.symbol, b.quantity, t.price AS last_price, t.exchange
FROM trader_books b LEFT JOIN market_ticks t
  ON b.symbol = t.symbol AND t.exchange <> 'NYSE';

CREATE STREAM symbol_volume AS
SELECT symbol, SUM(volume) AS volume, COUNT(*) AS trades
FROM market_ticks GROUP BY symbol;

CREATE STREAM order_volume AS
SELECT o.order_id, o.ts, v.volume, v.trades
FROM order_events o
LEFT JOIN symbol_volume FOR SYSTEM_TIME AS OF o.ts AS v ON o.symbol = v.symbol;
";

/// Their output files. An OVER stream emits each partition's rows in event
/// time order; how partitions interleave depends on when the watermark
/// moved, which batch sizes and restarts change.
const OVER_OUTPUTS: [(&str, &str); 2] = [
    ("tick_moves.jsonl", "symbol"),
    ("order_rate.jsonl", "trader_id"),
];

/// A UNION ALL interleaves its inputs as they arrive, and a join emits
/// rows when their match is complete, which depends on when the other
/// side's watermark moved: the same rows, in any order.
const UNORDERED_OUTPUTS: [&str; 8] = [
    "alerts.jsonl",
    "order_volume.jsonl",
    "dag_alerts.jsonl",
    "risk_alerts.jsonl",
    "recent_ticks.jsonl",
    "fill_marks.jsonl",
    "next_quote.jsonl",
    "bars_with_flow.jsonl",
];

/// Updating streams emit a change per key and batch, so batch sizes and
/// restarts change the lines; the table they leave must not change. Files
/// with their key columns.
const UPDATING_OUTPUTS: [(&str, &[&str]); 5] = [
    ("best_quotes.jsonl", &["symbol"]),
    ("trader_books.jsonl", &["trader_id", "symbol"]),
    ("marked_books.jsonl", &["trader_id", "symbol"]),
    ("arbitrage.jsonl", &["symbol"]),
    ("symbol_volume.jsonl", &["symbol"]),
];

/// An updating stream's JSON lines applied in order: each line replaces
/// its key's row, a `"deleted": true` line removes the key. Returns the
/// table and the number of deletions.
fn apply_changes(keys: &[&str], text: &str) -> (std::collections::BTreeMap<String, String>, usize) {
    let mut table = std::collections::BTreeMap::new();
    let mut deletions = 0;
    for line in text.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let key: Vec<String> = keys.iter().map(|k| v[k].to_string()).collect();
        let key = key.join("|");
        if v["deleted"] == serde_json::Value::Bool(true) {
            assert!(
                table.remove(&key).is_some(),
                "deleted {key}, which was never emitted"
            );
            deletions += 1;
        } else {
            table.insert(key, line.to_string());
        }
    }
    (table, deletions)
}

/// Compares one output file of the kill test with the reference's.
fn same_output(name: &str, got: &str, want: &str) {
    if let Some((_, key)) = OVER_OUTPUTS.iter().find(|(f, _)| *f == name) {
        same_rows_per_key(name, key, got, want);
    } else if let Some((_, keys)) = UPDATING_OUTPUTS.iter().find(|(f, _)| *f == name) {
        let (got, _) = apply_changes(keys, got);
        let (want, _) = apply_changes(keys, want);
        assert_eq!(
            got.keys().collect::<Vec<_>>(),
            want.keys().collect::<Vec<_>>(),
            "{name}: keys"
        );
        let lines = |t: &std::collections::BTreeMap<String, String>| {
            t.values().cloned().collect::<Vec<_>>().join("\n")
        };
        same_rows_in_order(name, &lines(&got), &lines(&want));
    } else if UNORDERED_OUTPUTS.contains(&name) {
        let sorted = |text: &str| {
            let mut lines: Vec<&str> = text.lines().collect();
            lines.sort_unstable();
            lines.join("\n")
        };
        same_rows_in_order(name, &sorted(got), &sorted(want));
    } else {
        same_rows_in_order(name, got, want);
    }
}

/// The same rows, and per partition key (column `key`) in the same order.
fn same_rows_per_key(name: &str, key: &str, got: &str, want: &str) {
    let by_key = |text: &str| {
        let mut keys: std::collections::BTreeMap<String, String> = Default::default();
        for line in text.lines() {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            let lines = keys.entry(v[key].to_string()).or_default();
            lines.push_str(line);
            lines.push('\n');
        }
        keys
    };
    let (got, want) = (by_key(got), by_key(want));
    assert_eq!(
        got.keys().collect::<Vec<_>>(),
        want.keys().collect::<Vec<_>>(),
        "{name}: partition keys"
    );
    for (key, g) in &got {
        same_rows_in_order(&format!("{name} [{key}]"), g, &want[key]);
    }
}

/// All queries of sql/ in one file.
fn all_queries(dir: &Path) -> PathBuf {
    let path = dir.join("all.sql");
    std::fs::write(&path, tickflow_worker::queries::builtin_sql()).unwrap();
    path
}

fn query_cmd(sql: &Path, data: &Path, ext: &str, out_dir: &Path) -> Command {
    let mut c = worker();
    c.arg("query").arg("--sql").arg(sql);
    for (table, topic) in [
        ("market_ticks", "market-ticks"),
        ("order_events", "order-events"),
        ("book_updates", "book-updates"),
    ] {
        c.arg("--input").arg(format!(
            "{table}={}",
            data.join(format!("{topic}.{ext}")).display()
        ));
    }
    c.arg("--output-dir").arg(out_dir);
    c
}

fn read_outputs(dir: &Path) -> Vec<(String, String)> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "jsonl"))
        .map(|e| {
            (
                e.file_name().to_string_lossy().to_string(),
                std::fs::read_to_string(e.path()).unwrap(),
            )
        })
        .collect();
    files.sort();
    files
}

#[test]
fn killed_replay_resumes_from_checkpoint_with_identical_output() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    produce(&data, 400_000, "jsonl");
    // The built-in queries, OVER streams (rows buffered until the
    // watermark passes them, LEAD rows waiting for their followers, frame
    // history) and joins (both sides' rows held): all of it must survive
    // the kills.
    let sql = all_queries(tmp.path());
    let mut text = std::fs::read_to_string(&sql).unwrap();
    text.push_str(OVER_STREAMS);
    text.push_str(JOIN_STREAMS);
    std::fs::write(&sql, text).unwrap();

    // `tick_moves` and `trader_books` feed later streams: they get a file
    // only where bound.
    let query_cmd = |sql: &Path, data: &Path, ext: &str, out: &Path| {
        let mut c = query_cmd(sql, data, ext, out);
        for stream in ["tick_moves", "trader_books"] {
            c.arg("--output").arg(format!(
                "{stream}={}",
                out.join(format!("{stream}.jsonl")).display()
            ));
        }
        c
    };

    // Reference: one uninterrupted run.
    let reference = tmp.path().join("reference");
    ok(query_cmd(&sql, &data, "jsonl", &reference)
        .output()
        .unwrap());
    let expected = read_outputs(&reference);
    let names: Vec<&str> = expected.iter().map(|(n, _)| n.as_str()).collect();
    assert!(
        !names.contains(&"ticks.jsonl") && names.contains(&"tick_moves.jsonl"),
        "an intermediate stream has output only where bound: {names:?}"
    );
    // sql/ (nine seed queries, trading_alerts' `alerts`, arbitrage,
    // risk_alerts), the OVER streams and the joins above.
    assert_eq!(expected.len(), 9 + 3 + 7 + 7, "{names:?}");
    assert!(
        !names.contains(&"symbol_volume__versions.jsonl"),
        "a temporal join's versions stream is internal: {names:?}"
    );
    let (books, deletions) = apply_changes(
        UPDATING_OUTPUTS[1].1,
        &expected
            .iter()
            .find(|(n, _)| n == "trader_books.jsonl")
            .unwrap()
            .1,
    );
    assert!(
        !books.is_empty() && deletions > 0,
        "trader_books: {} keys, {deletions} deletions; HAVING must take some keys out",
        books.len()
    );
    assert!(
        expected.iter().all(|(_, text)| !text.is_empty()),
        "every stream has output"
    );

    // Killed with SIGKILL three times right after a checkpoint, then run to the end.
    let out = tmp.path().join("resumed");
    let chk = tmp.path().join("checkpoints");
    let kills = kill_after_checkpoints(3, &chk, || {
        let mut c = query_cmd(&sql, &data, "jsonl", &out);
        c.args(["--checkpoint-interval", "150ms", "--batch-size", "2048"])
            .arg("--checkpoint-dir")
            .arg(&chk);
        c
    });
    let summary = ok(query_cmd(&sql, &data, "jsonl", &out)
        .arg("--checkpoint-dir")
        .arg(&chk)
        .output()
        .unwrap());
    let summary: serde_json::Value = serde_json::from_str(summary.trim()).unwrap();
    assert!(
        summary["restored_from"].as_u64().is_some(),
        "the last run restored a checkpoint: {summary}"
    );

    let actual = read_outputs(&out);
    assert_eq!(actual.len(), expected.len());
    for ((name, a), (_, e)) in actual.iter().zip(&expected) {
        if !UPDATING_OUTPUTS.iter().any(|(f, _)| f == name) {
            assert_eq!(
                a.lines().count(),
                e.lines().count(),
                "{name}: row count after {kills} kills"
            );
        }
        same_output(name, a, e);
    }

    // Running again after completion restores the final checkpoint and adds nothing.
    ok(query_cmd(&sql, &data, "jsonl", &out)
        .arg("--checkpoint-dir")
        .arg(&chk)
        .output()
        .unwrap());
    for ((name, a), (_, e)) in read_outputs(&out).iter().zip(&expected) {
        same_output(name, a, e);
    }
}

/// Starts the command `times` times, each killed with SIGKILL right after
/// it wrote a checkpoint into `chk`; returns how many were killed (at
/// least one: a run that finished first means the input is too small).
fn kill_after_checkpoints(times: usize, chk: &Path, command: impl Fn() -> Command) -> usize {
    let mut kills = 0;
    for _ in 0..times {
        let mut child = command()
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let before = checkpoints(chk);
        let deadline = Instant::now() + Duration::from_secs(60);
        while checkpoints(chk) == before
            && Instant::now() < deadline
            && child.try_wait().unwrap().is_none()
        {
            std::thread::sleep(Duration::from_millis(5));
        }
        std::thread::sleep(Duration::from_millis(40));
        if child.try_wait().unwrap().is_none() {
            child.kill().unwrap(); // SIGKILL
            kills += 1;
        }
        child.wait().unwrap();
    }
    assert!(
        kills >= 1,
        "the replay finished before it could be killed; make the input larger"
    );
    kills
}

/// The seed queries split by symbol: killed while running on 2 threads (6
/// key groups: room for up to 6), resumed on 3, they give the rows of an
/// uninterrupted run on 1.
#[test]
fn killed_replay_resumes_on_another_number_of_threads_with_identical_output() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    produce(&data, 300_000, "jsonl");
    let sql = tmp.path().join("seeds.sql");
    let seeds: Vec<&str> = tickflow_worker::queries::BUILTIN_QUERIES
        .iter()
        .map(|(_, q)| *q)
        .collect();
    std::fs::write(&sql, seeds.join("\n")).unwrap();

    let reference = tmp.path().join("reference");
    ok(query_cmd(&sql, &data, "jsonl", &reference)
        .args(["--parallelism", "1"])
        .output()
        .unwrap());
    let expected = read_outputs(&reference);
    assert_eq!(expected.len(), 9);

    let out = tmp.path().join("resumed");
    let chk = tmp.path().join("checkpoints");
    let kills = kill_after_checkpoints(2, &chk, || {
        let mut c = query_cmd(&sql, &data, "jsonl", &out);
        c.args(["--parallelism", "2", "--key-groups", "6"])
            .args(["--checkpoint-interval", "150ms"])
            .args(["--batch-size", "2048", "--checkpoint-dir"])
            .arg(&chk);
        c
    });
    let last = query_cmd(&sql, &data, "jsonl", &out)
        .args(["--parallelism", "3", "--checkpoint-dir"])
        .arg(&chk)
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&last.stderr).to_string();
    let summary: serde_json::Value = serde_json::from_str(ok(last).trim()).unwrap();
    assert!(
        summary["restored_from"].as_u64().is_some(),
        "the last run restored a checkpoint: {summary}"
    );
    assert!(
        log.contains("the query splits by key")
            && log.contains("key_groups=6")
            && log.contains("threads=3"),
        "the log says the query runs on 3 threads: {log}"
    );
    let sorted = |text: &str| {
        let mut lines: Vec<&str> = text.lines().collect();
        lines.sort_unstable();
        lines.join("\n")
    };
    let actual = read_outputs(&out);
    assert_eq!(actual.len(), expected.len());
    for ((name, a), (_, e)) in actual.iter().zip(&expected) {
        assert_eq!(
            a.lines().count(),
            e.lines().count(),
            "{name}: row count after {kills} kills"
        );
        same_rows_in_order(name, &sorted(a), &sorted(e));
    }
    // Key groups emit a watermark's windows in window order, as one pipeline does.
    let (_, ohlc) = actual.iter().find(|(n, _)| n == "ohlc_5s.jsonl").unwrap();
    // RFC 3339 times of one format sort as their text.
    let ends: Vec<String> = ohlc
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["window_end"].to_string())
        .collect();
    assert!(
        ends.windows(2).all(|w| w[0] <= w[1]),
        "ohlc_5s rows in window order"
    );
}

/// The same rows in the same order: strings and integers exactly, floats to
/// 1e-12 relative. (A restored partial aggregate such as a variance's
/// (count, mean, m2) is merged into a fresh accumulator, which may move a
/// result by an ulp compared with never having stopped.)
fn same_rows_in_order(name: &str, got: &str, want: &str) {
    assert_eq!(
        got.lines().count(),
        want.lines().count(),
        "{name}: row count"
    );
    for (i, (g, w)) in got.lines().zip(want.lines()).enumerate() {
        if g == w {
            continue;
        }
        let g: serde_json::Value = serde_json::from_str(g).unwrap();
        let w: serde_json::Value = serde_json::from_str(w).unwrap();
        let (go, wo) = (g.as_object().unwrap(), w.as_object().unwrap());
        assert_eq!(go.len(), wo.len(), "{name} line {}: columns", i + 1);
        for (k, wv) in wo {
            let gv = &go[k];
            if let (true, Some(a), Some(b)) = (wv.is_f64(), gv.as_f64(), wv.as_f64()) {
                let tol = 1e-12 * a.abs().max(b.abs()).max(1e-300);
                assert!(
                    (a - b).abs() <= tol,
                    "{name} line {}: {k}: {a} vs {b}",
                    i + 1
                );
            } else {
                assert_eq!(gv, wv, "{name} line {}: {k}", i + 1);
            }
        }
    }
}

fn checkpoints(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .filter(|e| {
                    let name = e.file_name().to_string_lossy().to_string();
                    name.starts_with("chk-") && !name.ends_with(".tmp")
                })
                .count()
        })
        .unwrap_or(0)
}

#[test]
fn avro_and_jsonl_replays_agree() {
    let tmp = tempfile::tempdir().unwrap();
    produce(&tmp.path().join("json"), 30_000, "jsonl");
    produce(&tmp.path().join("avro"), 30_000, "avro");
    let sql = sql_dir().join("ohlc_5s.sql");
    let mut a = worker();
    a.args(["query", "--sql"])
        .arg(&sql)
        .arg("--input")
        .arg(format!(
            "market_ticks={}",
            tmp.path().join("json/market-ticks.jsonl").display()
        ));
    a.arg("--output")
        .arg(format!("ohlc_5s={}", tmp.path().join("a.jsonl").display()));
    ok(a.output().unwrap());
    let mut b = worker();
    b.args(["query", "--sql"])
        .arg(&sql)
        .arg("--input")
        .arg(format!(
            "market_ticks={}",
            tmp.path().join("avro/market-ticks.avro").display()
        ));
    b.arg("--output")
        .arg(format!("ohlc_5s={}", tmp.path().join("b.jsonl").display()));
    ok(b.output().unwrap());
    let a = std::fs::read_to_string(tmp.path().join("a.jsonl")).unwrap();
    let b = std::fs::read_to_string(tmp.path().join("b.jsonl")).unwrap();
    assert!(
        a.lines().count() > 40,
        "30 s of data gives 6 bars × 8 symbols"
    );
    let mut a: Vec<_> = a.lines().collect();
    let mut b: Vec<_> = b.lines().collect();
    a.sort();
    b.sort();
    assert_eq!(a, b);
    // Rows carry the window and RFC 3339 timestamps.
    let row: serde_json::Value = serde_json::from_str(a[0]).unwrap();
    for col in [
        "symbol",
        "open",
        "high",
        "low",
        "close",
        "volume",
        "vwap",
        "tick_count",
        "window_start",
        "window_end",
    ] {
        assert!(row.get(col).is_some(), "missing {col} in {row}");
    }
    assert!(row["window_end"].as_str().unwrap().ends_with('Z'));
}

#[test]
fn malformed_lines_are_reported_counted_and_kept_out() {
    let tmp = tempfile::tempdir().unwrap();
    let good = [
        r#"{"symbol":"AAPL","exchange":"NASDAQ","price":100.0,"bid":99.99,"ask":100.01,"bid_size":100,"ask_size":200,"volume":600,"side":"buy","ts":1767623400000}"#,
        r#"{"symbol":"MSFT","exchange":"NYSE","price":400.0,"bid":399.9,"ask":400.1,"bid_size":100,"ask_size":200,"volume":700,"side":"sell","ts":"2026-01-05T14:30:00.500Z"}"#,
    ];
    let bad = [
        r#"{"symbol":"AAPL","price":"#, // truncated JSON
        r#"{"symbol":"AAPL","exchange":"X","price":"high","bid":1,"ask":2,"bid_size":1,"ask_size":1,"volume":600,"side":"buy","ts":1}"#, // wrong type
        r#"{"exchange":"X","price":1.0,"bid":1,"ask":2,"bid_size":1,"ask_size":1,"volume":600,"side":"buy","ts":1}"#, // symbol missing
    ];
    let input = [good[0], bad[0], bad[1], good[1], bad[2]].join("\n") + "\n";
    let path = tmp.path().join("ticks.jsonl");
    std::fs::write(&path, input).unwrap();
    let out = tmp.path().join("out.jsonl");
    let dead = tmp.path().join("dead.jsonl");
    let run = worker()
        .args(["query", "--sql"])
        .arg(sql_dir().join("large_trades.sql"))
        .arg("--input")
        .arg(format!("market_ticks={}", path.display()))
        .arg("--output")
        .arg(format!("large_trades={}", out.display()))
        .arg("--dead-letter")
        .arg(&dead)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&run.stderr).to_string();
    let summary: serde_json::Value = serde_json::from_str(ok(run).trim()).unwrap();
    assert_eq!(summary["bad_records"], 3);
    assert_eq!(
        std::fs::read_to_string(&out).unwrap().lines().count(),
        2,
        "good rows still flow"
    );
    let dead_rows: Vec<serde_json::Value> = std::fs::read_to_string(&dead)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let lines: Vec<_> = dead_rows
        .iter()
        .map(|r| {
            r["location"]
                .as_str()
                .unwrap()
                .rsplit(':')
                .next()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(
        lines,
        ["2", "3", "5"],
        "dead letters name their line numbers"
    );
    assert!(
        dead_rows
            .iter()
            .all(|r| !r["reason"].as_str().unwrap().is_empty())
    );
    assert!(
        stderr.contains("malformed record") && stderr.contains(":3"),
        "reported on stderr: {stderr}"
    );
}

#[test]
fn bad_sql_and_unknown_tables_fail_with_clear_messages() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("t.jsonl");
    std::fs::write(&data, "").unwrap();
    let run = |sql: &str, input: &str| {
        let path = tmp.path().join("q.sql");
        std::fs::write(&path, sql).unwrap();
        let out = worker()
            .args(["query", "--sql"])
            .arg(&path)
            .arg("--input")
            .arg(format!("{input}={}", data.display()))
            .arg("--output-dir")
            .arg(tmp.path())
            .output()
            .unwrap();
        assert!(!out.status.success(), "`{sql}` must fail");
        String::from_utf8_lossy(&out.stderr).to_string()
    };
    let e = run(
        "CREATE STREAM x AS\nSELECT symbol FROM trades;",
        "market_ticks",
    );
    assert!(
        e.contains("unknown source table `trades`") && e.contains("line 2"),
        "{e}"
    );
    let e = run(
        "CREATE STREAM x AS SELECT symbol,\n  STDDEV(volume) OVER (PARTITION BY symbol ORDER BY ts) FROM market_ticks;",
        "market_ticks",
    );
    assert!(
        e.contains("UNBOUNDED PRECEDING grows without end") && e.contains("ROWS BETWEEN"),
        "{e}"
    );
    let e = run(
        "CREATE STREAM x AS SELECT symbol FROM market_ticks;",
        "trades",
    );
    assert!(e.contains("unknown source table `trades`"), "{e}");
    let e = run(
        "CREATE STREAM x AS SELECT symbol FROM book_updates;",
        "market_ticks",
    );
    assert!(e.contains("no --input book_updates"), "{e}");
}

#[test]
fn changed_query_refuses_old_state_unless_started_fresh() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    produce(&data, 5_000, "jsonl");
    let chk = tmp.path().join("chk");
    let input = format!("market_ticks={}", data.join("market-ticks.jsonl").display());
    let run = |size: u32, fresh: bool| {
        let sql = tmp.path().join("q.sql");
        std::fs::write(&sql, format!(
            "CREATE STREAM bars AS SELECT symbol, COUNT(*) AS n FROM market_ticks GROUP BY symbol, TUMBLE(ts, INTERVAL '{size}' SECOND);"
        )).unwrap();
        let mut c = worker();
        c.args(["query", "--sql"])
            .arg(&sql)
            .arg("--input")
            .arg(&input)
            .arg("--output-dir")
            .arg(tmp.path())
            .arg("--checkpoint-dir")
            .arg(&chk);
        if fresh {
            c.arg("--start-fresh");
        }
        c.output().unwrap()
    };
    ok(run(5, false));
    let changed = run(10, false);
    assert!(!changed.status.success());
    let e = String::from_utf8_lossy(&changed.stderr);
    assert!(
        e.contains("stream `bars` changed") && e.contains("--start-fresh"),
        "{e}"
    );
    ok(run(10, true));
}
