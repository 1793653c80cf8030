//! User-defined sources (`CREATE TABLE … WITH (…)`) as a user runs them:
//! `tickflow-worker query --input fills=PATH` over a JSON-lines file of
//! fills, out of order, with RFC 3339 and epoch-millisecond timestamps,
//! INT, BIGINT, DOUBLE, DECIMAL and VARCHAR columns. Every output row equals
//! DataFusion computing the same query in batch over the same fills, and
//! the declaration's WATERMARK sets the table's allowed lateness.

mod common;

use std::path::Path;
use std::process::{Command, Output};
use std::sync::Arc;

use arrow::array::{
    ArrayRef, Decimal128Array, Float64Array, Int32Array, Int64Array, RecordBatch, StringArray,
    TimestampMillisecondArray,
};
use arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use common::*;
use serde_json::Value;

/// The declaration the tests run; `{lateness}` is the WATERMARK's interval.
const FILLS_TABLE: &str = "
CREATE TABLE fills (
  fill_id BIGINT NOT NULL,
  trader_id VARCHAR,
  symbol VARCHAR,
  side VARCHAR,
  quantity INT,
  price DOUBLE,
  notional DECIMAL(18, 2),
  ts TIMESTAMP(3),
  WATERMARK FOR ts AS ts{lateness}
) WITH ('topic' = 'fills', 'format' = 'json', 'key' = 'trader_id');
";

const TRADER_FLOW: &str = "CREATE STREAM trader_flow AS
SELECT trader_id, COUNT(*) AS fills, SUM(quantity) AS qty, SUM(notional) AS notional,
       AVG(price) AS avg_price, MAX(price) AS max_price
FROM fills
GROUP BY trader_id, TUMBLE(ts, INTERVAL '10' SECOND);";

const BIG_FILLS: &str = "CREATE STREAM big_fills AS
SELECT fill_id, trader_id, symbol, side, quantity, price * quantity AS value, notional, ts
FROM fills
WHERE quantity >= 500 AND side = 'buy';";

/// Out-of-orderness of the fills: within the declared 1 s.
const JITTER: &str = "600ms";

struct Fill {
    id: i64,
    trader: String,
    symbol: String,
    side: String,
    quantity: i32,
    price: f64,
    /// Hundredths.
    notional: i128,
    ts: i64,
}

fn worker() -> Command {
    Command::new(env!("CARGO_BIN_EXE_tickflow-worker"))
}

fn ok(out: Output) -> String {
    assert!(
        out.status.success(),
        "command failed: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Fills derived from the simulator's order events (every event that
/// filled some quantity at a price), in the order the simulator delivered
/// them: out of order by up to [`JITTER`].
fn simulated_fills(dir: &Path) -> Vec<Fill> {
    ok(worker()
        .args([
            "produce", "--count", "60000", "--seed", "5", "--jitter", JITTER,
        ])
        .args(["--format", "jsonl", "--output-dir"])
        .arg(dir)
        .output()
        .unwrap());
    let text = std::fs::read_to_string(dir.join("order-events.jsonl")).unwrap();
    let mut fills = Vec::new();
    for line in text.lines() {
        let o: Value = serde_json::from_str(line).unwrap();
        let (Some(price), Some(filled)) = (o["price"].as_f64(), o["filled_quantity"].as_i64())
        else {
            continue;
        };
        if filled == 0 {
            continue;
        }
        let ts = chrono::DateTime::parse_from_rfc3339(o["ts"].as_str().unwrap())
            .unwrap()
            .timestamp_millis();
        let quantity = i32::try_from(filled).unwrap();
        fills.push(Fill {
            id: fills.len() as i64,
            trader: o["trader_id"].as_str().unwrap().to_string(),
            symbol: o["symbol"].as_str().unwrap().to_string(),
            side: o["side"].as_str().unwrap().to_string(),
            quantity,
            price,
            notional: (price * f64::from(quantity) * 100.0).round() as i128,
            ts,
        });
    }
    assert!(fills.len() > 2_000, "{} fills", fills.len());
    fills
}

/// One JSON object per fill; every other timestamp as epoch milliseconds,
/// the rest as RFC 3339, decimals as JSON numbers with two places.
fn write_jsonl(fills: &[Fill], path: &Path) {
    let mut out = String::new();
    for f in fills {
        let ts = if f.id % 2 == 0 {
            Value::from(f.ts)
        } else {
            let t = chrono::DateTime::from_timestamp_millis(f.ts).unwrap();
            Value::from(t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        };
        let notional = format!("{}.{:02}", f.notional / 100, f.notional % 100);
        out.push_str(&format!(
            "{{\"fill_id\":{},\"trader_id\":{},\"symbol\":{},\"side\":{},\"quantity\":{},\"price\":{},\"notional\":{notional},\"ts\":{ts}}}\n",
            f.id,
            Value::from(f.trader.as_str()),
            Value::from(f.symbol.as_str()),
            Value::from(f.side.as_str()),
            f.quantity,
            f.price,
        ));
    }
    std::fs::write(path, out).unwrap();
}

/// The fills as the table the declaration describes.
fn fills_batch(fills: &[Fill]) -> RecordBatch {
    let schema = Schema::new(vec![
        Field::new("fill_id", DataType::Int64, false),
        Field::new("trader_id", DataType::Utf8, true),
        Field::new("symbol", DataType::Utf8, true),
        Field::new("side", DataType::Utf8, true),
        Field::new("quantity", DataType::Int32, true),
        Field::new("price", DataType::Float64, true),
        Field::new("notional", DataType::Decimal128(18, 2), true),
        Field::new("ts", DataType::Timestamp(TimeUnit::Millisecond, None), true),
    ]);
    let columns: Vec<ArrayRef> = vec![
        Arc::new(Int64Array::from_iter_values(fills.iter().map(|f| f.id))),
        Arc::new(StringArray::from_iter_values(
            fills.iter().map(|f| &f.trader),
        )),
        Arc::new(StringArray::from_iter_values(
            fills.iter().map(|f| &f.symbol),
        )),
        Arc::new(StringArray::from_iter_values(fills.iter().map(|f| &f.side))),
        Arc::new(Int32Array::from_iter_values(
            fills.iter().map(|f| f.quantity),
        )),
        Arc::new(Float64Array::from_iter_values(
            fills.iter().map(|f| f.price),
        )),
        Arc::new(
            Decimal128Array::from_iter_values(fills.iter().map(|f| f.notional))
                .with_precision_and_scale(18, 2)
                .unwrap(),
        ),
        Arc::new(TimestampMillisecondArray::from_iter_values(
            fills.iter().map(|f| f.ts),
        )),
    ];
    RecordBatch::try_new(Arc::new(schema), columns).unwrap()
}

/// Runs `sql` over the fills file; the run's summary.
fn replay(dir: &Path, sql: &str, fills: &Path, extra: &[&str]) -> Value {
    let sql_path = dir.join("query.sql");
    std::fs::write(&sql_path, sql).unwrap();
    let out = ok(worker()
        .arg("query")
        .arg("--sql")
        .arg(&sql_path)
        .arg("--input")
        .arg(format!("fills={}", fills.display()))
        .arg("--output-dir")
        .arg(dir.join("out"))
        // Small batches: the watermark moves between out-of-order fills.
        .args(["--batch-size", "20"])
        .args(extra)
        .output()
        .unwrap());
    serde_json::from_str(out.trim()).unwrap()
}

/// Output rows as JSON objects.
fn output_rows(dir: &Path, stream: &str) -> Vec<Value> {
    std::fs::read_to_string(dir.join("out").join(format!("{stream}.jsonl")))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// The reference rows, through the worker's own JSON encoder so both
/// sides spell timestamps and decimals alike.
fn as_json_rows(batch: &RecordBatch) -> Vec<Value> {
    let mut buf = Vec::new();
    tickflow_worker::codec::JsonLinesEncoder::new()
        .encode_batch(batch, &mut buf)
        .unwrap();
    String::from_utf8(buf)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Same multiset of rows: floats to 1e-9 relative, everything else exactly.
fn assert_same_json_rows(what: &str, actual: Vec<Value>, expected: Vec<Value>) {
    let key = |v: &Value| -> String {
        let obj = v.as_object().unwrap();
        let mut parts: Vec<String> = obj
            .iter()
            .filter(|(_, x)| !x.is_f64())
            .map(|(k, x)| format!("{k}={x}"))
            .collect();
        parts.sort();
        parts.join("|")
    };
    let sorted = |mut rows: Vec<Value>| {
        rows.sort_by_key(&key);
        rows
    };
    let (actual, expected) = (sorted(actual), sorted(expected));
    assert_eq!(actual.len(), expected.len(), "{what}: row count");
    for (a, e) in actual.iter().zip(&expected) {
        let (ao, eo) = (a.as_object().unwrap(), e.as_object().unwrap());
        assert_eq!(
            ao.keys().collect::<Vec<_>>(),
            eo.keys().collect::<Vec<_>>(),
            "{what}: columns"
        );
        for (k, av) in ao {
            let ev = &eo[k];
            let same = match (av.as_f64(), ev.as_f64()) {
                (Some(x), Some(y)) if av.is_f64() || ev.is_f64() => {
                    (x - y).abs() <= 1e-9 * x.abs().max(y.abs())
                }
                _ => av == ev,
            };
            assert!(
                same,
                "{what}: column {k}: {av} != {ev}\nrow: {a}\nexpected: {e}"
            );
        }
    }
}

#[test]
fn a_declared_json_source_matches_datafusion_batch() {
    let tmp = tempfile::tempdir().unwrap();
    let fills = simulated_fills(tmp.path());
    let file = tmp.path().join("fills.jsonl");
    write_jsonl(&fills, &file);
    let table = FILLS_TABLE.replace("{lateness}", " - INTERVAL '1' SECOND");
    let sql = format!("{table}\n{TRADER_FLOW}\n\n{BIG_FILLS}\n");
    // The declaration's 1 s lateness applies, not the command line's 0 s.
    let summary = replay(tmp.path(), &sql, &file, &["--allowed-lateness", "0s"]);
    assert_eq!(summary["rows_in"]["fills"], fills.len(), "{summary}");
    assert_eq!(summary["bad_records"], 0, "{summary}");
    assert_eq!(
        summary["late_events"]["trader_flow"], 0,
        "nothing is late within the declared lateness: {summary}"
    );

    let input = fills_batch(&fills);
    let windows = assign_windows(&input, window_of(TRADER_FLOW), "trader_id");
    let expected = datafusion_batch("fills", windows, &batch_sql(TRADER_FLOW));
    assert!(expected.num_rows() > 20, "{} windows", expected.num_rows());
    assert_same_json_rows(
        "trader_flow",
        output_rows(tmp.path(), "trader_flow"),
        as_json_rows(&expected),
    );
    let expected = datafusion_batch("fills", input, &batch_sql(BIG_FILLS));
    assert!(
        expected.num_rows() > 100,
        "{} big fills",
        expected.num_rows()
    );
    assert_same_json_rows(
        "big_fills",
        output_rows(tmp.path(), "big_fills"),
        as_json_rows(&expected),
    );
}

#[test]
fn the_watermark_clause_sets_the_tables_lateness() {
    let tmp = tempfile::tempdir().unwrap();
    let fills = simulated_fills(tmp.path());
    let file = tmp.path().join("fills.jsonl");
    write_jsonl(&fills, &file);
    // `WATERMARK FOR ts AS ts`: no lateness, so out-of-order fills are late
    // even though the command line allows 5 s.
    let sql = format!("{}\n{TRADER_FLOW}", FILLS_TABLE.replace("{lateness}", ""));
    let summary = replay(tmp.path(), &sql, &file, &["--allowed-lateness", "5s"]);
    let late = summary["late_events"]["trader_flow"].as_u64().unwrap();
    assert!(late > 0, "out-of-order fills are late: {summary}");
    let counted: i64 = output_rows(tmp.path(), "trader_flow")
        .iter()
        .map(|r| r["fills"].as_i64().unwrap())
        .sum();
    assert_eq!(
        counted as u64 + late,
        fills.len() as u64,
        "every fill is counted or late"
    );
}

#[test]
fn bad_declarations_and_bindings_fail_with_positions() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("fills.jsonl");
    std::fs::write(&file, "").unwrap();
    let run = |sql: &str, input: &str| {
        let sql_path = tmp.path().join("bad.sql");
        std::fs::write(&sql_path, sql).unwrap();
        let out = worker()
            .arg("query")
            .arg("--sql")
            .arg(&sql_path)
            .args(["--input", input, "--output-dir"])
            .arg(tmp.path().join("out"))
            .output()
            .unwrap();
        assert!(!out.status.success(), "{sql} should fail");
        String::from_utf8_lossy(&out.stderr).to_string()
    };
    let fills = format!("fills={}", file.display());
    let err = run(
        "CREATE TABLE fills (qty BIGINT,\n  ts TIMESTAMP, px MONEY,\n  WATERMARK FOR ts AS ts) WITH ('format' = 'json');\nCREATE STREAM s AS SELECT qty FROM fills;",
        &fills,
    );
    assert!(
        err.contains("line 2, column 20") && err.contains("MONEY"),
        "{err}"
    );
    let err = run(
        "CREATE TABLE fills (qty BIGINT, ts TIMESTAMP, WATERMARK FOR ts AS ts) WITH ('format' = 'json');\nCREATE STREAM s AS SELECT qty FROM fills;",
        &format!("trades={}", file.display()),
    );
    assert!(
        err.contains("unknown source table `trades`") && err.contains("fills"),
        "{err}"
    );
}
