//! The trading jobs of `sql/` as a desk runs them: `tickflow-worker query`
//! over simulator data with market events (price jumps, volume bursts,
//! order sweeps, venue dislocations), out of order within the allowed
//! lateness. Every alert, and the table arbitrage's changes leave, equals
//! DataFusion computing the same streams in batch, stage by stage; each
//! kind of alert fires within the first minute.

mod common;

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::process::Command;

use arrow::array::RecordBatch;
use arrow::compute::concat_batches;
use arrow::datatypes::SchemaRef;
use common::*;
use tickflow_worker::codec::SourceTable;
use tickflow_worker::codec::json::JsonLinesEncoder;
use tickflow_worker::engine::{Catalog, EngineConfig, Pipeline};
use tickflow_worker::simulator::{MarketEvents, SimConfig, SimOutput, generate};

const START_MS: i64 = tickflow_worker::simulator::DEFAULT_START_TIME_MS;

fn sql(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("../sql/{name}.sql"));
    std::fs::read_to_string(path).unwrap()
}

/// `duration_ms` of market data with the CLI's default market events,
/// delivered up to 800 ms out of order (the engine allows 1 s).
fn data(seed: u64, duration_ms: usize) -> SimOutput {
    generate(
        SimConfig {
            seed,
            max_jitter_ms: 800,
            events: Some(MarketEvents::default()),
            ..SimConfig::default()
        },
        duration_ms,
    )
}

/// Writes a table's rows as the JSON lines `produce` writes.
fn write_jsonl(path: &Path, rows: &RecordBatch) {
    let mut buf = Vec::new();
    JsonLinesEncoder::new()
        .encode_batch(rows, &mut buf)
        .unwrap();
    std::fs::File::create(path)
        .unwrap()
        .write_all(&buf)
        .unwrap();
}

/// Runs `sql/<name>.sql` with the CLI, every stream bound to a file.
fn query(name: &str, dir: &Path) -> BTreeMap<String, String> {
    let text = sql(name);
    let pipeline = Pipeline::new(&text, &Catalog::builtin(), &EngineConfig::default()).unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tickflow-worker"));
    cmd.args(["query", "--sql"])
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("../sql/{name}.sql")));
    for table in pipeline.source_names() {
        let file = SourceTable::from_table_name(&table).unwrap().topic();
        cmd.arg("--input").arg(format!(
            "{table}={}",
            dir.join(format!("{file}.jsonl")).display()
        ));
    }
    for s in pipeline.streams() {
        cmd.arg("--output").arg(format!(
            "{}={}",
            s.name,
            dir.join(format!("out-{}.jsonl", s.name)).display()
        ));
    }
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(summary["bad_records"], 0, "{summary}");
    for (stream, late) in summary["late_events"].as_object().unwrap() {
        assert_eq!(late, 0, "{stream}: nothing is late within 1 s");
    }
    pipeline
        .streams()
        .iter()
        .map(|s| {
            let text = std::fs::read_to_string(dir.join(format!("out-{}.jsonl", s.name))).unwrap();
            (s.name.clone(), text)
        })
        .collect()
}

/// JSON lines in `schema`'s columns.
fn parse(schema: &SchemaRef, lines: &[&str]) -> RecordBatch {
    let text = lines.join("\n");
    let reader = arrow::json::ReaderBuilder::new(schema.clone())
        .build(std::io::Cursor::new(text.into_bytes()))
        .unwrap();
    let batches: Vec<RecordBatch> = reader.map(Result::unwrap).collect();
    concat_batches(schema, &batches).unwrap()
}

fn output_schema(file: &str, stream: &str) -> SchemaRef {
    let p = Pipeline::new(&sql(file), &Catalog::builtin(), &EngineConfig::default()).unwrap();
    let s = p.streams().iter().find(|s| s.name == stream).unwrap();
    s.output_schema.clone()
}

fn rows(file: &str, stream: &str, text: &str) -> RecordBatch {
    parse(
        &output_schema(file, stream),
        &text.lines().collect::<Vec<_>>(),
    )
}

/// Earliest event time in `column` of `rows`, ms.
fn first_ms(rows: &RecordBatch, column: &str) -> i64 {
    use arrow::array::AsArray;
    rows.column_by_name(column)
        .unwrap()
        .as_primitive::<arrow::datatypes::TimestampMillisecondType>()
        .values()
        .iter()
        .copied()
        .min()
        .unwrap()
}

#[test]
fn trading_alerts_match_datafusion_batch_and_fire_within_a_minute() {
    let dir = tempfile::tempdir().unwrap();
    let data = data(3, 150_000);
    let ticks = source_batch(&data, SourceTable::MarketTicks);
    let orders = source_batch(&data, SourceTable::OrderEvents);
    write_jsonl(&dir.path().join("market-ticks.jsonl"), &ticks);
    write_jsonl(&dir.path().join("order-events.jsonl"), &orders);
    let out = query("trading_alerts", dir.path());

    // The file's streams in batch, each over the previous stage's result.
    let price_moves = datafusion_batch(
        "market_ticks",
        ticks.clone(),
        "SELECT symbol, ts, price, ref_price, (price - ref_price) / ref_price * 100 AS change_pct
         FROM (SELECT symbol, ts, price,
                      FIRST_VALUE(price) OVER (PARTITION BY symbol ORDER BY ts
                        RANGE BETWEEN INTERVAL '10' SECOND PRECEDING AND CURRENT ROW) AS ref_price
               FROM market_ticks)",
    );
    let price_alerts = datafusion_batch(
        "price_moves",
        price_moves.clone(),
        "SELECT symbol, ts, price, ref_price, change_pct
         FROM (SELECT *, LAG(change_pct) OVER (PARTITION BY symbol ORDER BY ts) AS prev_change_pct
               FROM price_moves)
         WHERE ABS(change_pct) > 5 AND COALESCE(ABS(prev_change_pct), 0) <= 5",
    );
    let volume_1s = datafusion_batch(
        "market_ticks",
        assign_windows(&ticks, RefWindow::Tumble(1_000), "symbol"),
        "SELECT symbol, window_start, window_end, SUM(volume) AS volume, COUNT(*) AS trades
         FROM market_ticks GROUP BY symbol, window_start, window_end",
    );
    let volume_spikes = datafusion_batch(
        "volume_1s",
        volume_1s.clone(),
        "SELECT symbol, window_end AS ts, volume, avg_volume_20, volume / avg_volume_20 AS ratio
         FROM (SELECT symbol, window_end, volume,
                      AVG(volume) OVER (PARTITION BY symbol ORDER BY window_end
                        ROWS BETWEEN 20 PRECEDING AND 1 PRECEDING) AS avg_volume_20
               FROM volume_1s)
         WHERE volume > 3 * avg_volume_20",
    );
    let buy = "SUM(CASE WHEN side = 'buy' THEN quantity ELSE 0 END)";
    let sell = "SUM(CASE WHEN side = 'sell' THEN quantity ELSE 0 END)";
    let order_imbalance = datafusion_batch(
        "order_events",
        assign_windows(
            &orders,
            RefWindow::Hop {
                slide: 10_000,
                size: 60_000,
            },
            "symbol",
        ),
        &format!(
            "SELECT symbol, window_start, window_end, {buy} AS buy_quantity, {sell} AS sell_quantity,
                    100.0 * GREATEST({buy}, {sell}) / SUM(quantity) AS imbalance_pct, COUNT(*) AS orders
             FROM order_events WHERE status = 'new'
             GROUP BY symbol, window_start, window_end
             HAVING COUNT(*) >= 20 AND 100.0 * GREATEST({buy}, {sell}) / SUM(quantity) > 70"
        ),
    );
    let alerts = datafusion_batch_over(
        vec![
            ("price_alerts", price_alerts.clone()),
            ("volume_spikes", volume_spikes.clone()),
            ("order_imbalance", order_imbalance.clone()),
        ],
        "SELECT symbol, ts, 'price_move' AS alert, change_pct AS value, 5.0 AS threshold FROM price_alerts
         UNION ALL SELECT symbol, ts, 'volume_spike', ratio, 3.0 FROM volume_spikes
         UNION ALL SELECT symbol, window_end, 'order_imbalance', imbalance_pct, 70.0 FROM order_imbalance",
    );
    for (stream, expected, min_rows) in [
        ("price_moves", price_moves, 100_000),
        ("price_alerts", price_alerts.clone(), 3),
        ("volume_1s", volume_1s, 1_000),
        ("volume_spikes", volume_spikes.clone(), 3),
        ("order_imbalance", order_imbalance.clone(), 3),
        ("alerts", alerts, 9),
    ] {
        let actual = rows("trading_alerts", stream, &out[stream]);
        assert!(
            expected.num_rows() >= min_rows,
            "{stream}: {} rows; the market events should make it fire",
            expected.num_rows()
        );
        assert_same_rows(stream, &actual, &expected, 1e-9);
        eprintln!("{stream}: {} rows match", expected.num_rows());
    }
    // On the default settings every kind of alert fires within a minute.
    for (what, rows, column) in [
        ("price_alerts", &price_alerts, "ts"),
        ("volume_spikes", &volume_spikes, "ts"),
        ("order_imbalance", &order_imbalance, "window_end"),
    ] {
        let after = first_ms(rows, column) - START_MS;
        assert!(after < 60_000, "{what}: first after {after} ms");
    }
}

#[test]
fn arbitrage_leaves_the_table_datafusion_computes() {
    let dir = tempfile::tempdir().unwrap();
    let data = data(3, 150_000);
    let ticks = source_batch(&data, SourceTable::MarketTicks);
    write_jsonl(&dir.path().join("market-ticks.jsonl"), &ticks);
    let out = query("arbitrage", dir.path());

    // Each updating stream's lines applied in order: a line replaces its
    // key's row, a `"deleted": true` line removes the key.
    let table = |stream: &str, keys: &[&str]| {
        let mut table: BTreeMap<String, &str> = BTreeMap::new();
        let (mut upserts, mut deletions) = (0, 0);
        for line in out[stream].lines() {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            let key = keys
                .iter()
                .map(|k| v[k].to_string())
                .collect::<Vec<_>>()
                .join("|");
            if v["deleted"] == serde_json::json!(true) {
                assert!(
                    table.remove(&key).is_some(),
                    "{stream}: deleted {key} before writing it"
                );
                deletions += 1;
            } else {
                table.insert(key, line);
                upserts += 1;
            }
        }
        let lines: Vec<&str> = table.into_values().collect();
        (
            parse(&output_schema("arbitrage", stream), &lines),
            upserts,
            deletions,
        )
    };
    let latest = datafusion_batch(
        "market_ticks",
        ticks,
        "SELECT symbol, exchange, LAST_VALUE(bid ORDER BY ts) AS bid, LAST_VALUE(ask ORDER BY ts) AS ask,
                MAX(ts) AS quoted_at
         FROM market_ticks GROUP BY symbol, exchange",
    );
    let arbitrage_sql = "SELECT symbol, MAX(bid) AS best_bid, MIN(ask) AS best_ask,
                                (MAX(bid) - MIN(ask)) / MIN(ask) * 10000 AS edge_bps,
                                COUNT(*) AS exchanges, MAX(quoted_at) AS as_of
                         FROM latest_quotes GROUP BY symbol
                         HAVING (MAX(bid) - MIN(ask)) / MIN(ask) * 10000 >= 10";
    let arbitrage = datafusion_batch("latest_quotes", latest.clone(), arbitrage_sql);

    let (actual_latest, _, _) = table("latest_quotes", &["symbol", "exchange"]);
    assert_same_rows("latest_quotes", &actual_latest, &latest, 1e-9);
    let (actual, upserts, deletions) = table("arbitrage", &["symbol"]);
    assert_same_rows("arbitrage", &actual, &arbitrage, 1e-9);
    // Dislocations open opportunities and close them again.
    assert!(
        upserts >= 3 && deletions >= 3,
        "{upserts} upserts, {deletions} deletions"
    );
    let first: serde_json::Value =
        serde_json::from_str(out["arbitrage"].lines().next().unwrap()).unwrap();
    eprintln!(
        "arbitrage: {} keys at the end, {upserts} upserts, {deletions} deletions, first {first}",
        arbitrage.num_rows()
    );
    // The first opportunity within a minute.
    let as_of = first["as_of"].as_str().unwrap();
    let as_of = humantime::parse_rfc3339(as_of).unwrap();
    let after = as_of
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
        - START_MS;
    assert!(after < 60_000, "first opportunity after {after} ms");
}

/// The SELECT of stream `name` in a job's SQL text (after `AS`, up to its
/// `;`), for DataFusion to run in batch over the earlier stages' results.
fn stream_select(text: &str, name: &str) -> String {
    let start = text
        .find(&format!("CREATE STREAM {name} "))
        .unwrap_or_else(|| panic!("no stream {name}"));
    let body = &text[start..];
    let select = body.find("\nSELECT").expect("a SELECT on its own line");
    let end = body.find(';').unwrap();
    body[select..end].to_string()
}

#[test]
fn risk_alerts_match_datafusion_batch_and_both_fire_within_minutes() {
    let dir = tempfile::tempdir().unwrap();
    // Five minutes from a US market open (no day boundary inside).
    let data = data(11, 300_000);
    let ticks = source_batch(&data, SourceTable::MarketTicks);
    let orders = source_batch(&data, SourceTable::OrderEvents);
    write_jsonl(&dir.path().join("market-ticks.jsonl"), &ticks);
    write_jsonl(&dir.path().join("order-events.jsonl"), &orders);
    let out = query("risk_alerts", dir.path());
    let text = sql("risk_alerts");

    // Stage by stage in batch: the same SELECTs where DataFusion reads
    // them, the ASOF join as a ranked join (over the second before each
    // fill, which every symbol trades in, so that the join stays small) and the
    // 1 ms TUMBLE as a GROUP BY of the millisecond.
    let fills = datafusion_batch("order_events", orders, &stream_select(&text, "fills"));
    let priced_fills = datafusion_batch_over(
        vec![
            ("fills", with_seq(&fills)),
            ("market_ticks", with_seq(&ticks)),
        ],
        "SELECT trader_id, symbol, ts, quantity, fill_price, mark_price FROM (
           SELECT f.trader_id, f.symbol, f.ts, f.quantity,
                  COALESCE(f.limit_price, t.price) AS fill_price, t.price AS mark_price,
                  ROW_NUMBER() OVER (PARTITION BY f.seq ORDER BY t.ts DESC, t.seq DESC) AS rn
           FROM fills f JOIN market_ticks t
             ON f.symbol = t.symbol AND f.ts >= t.ts AND t.ts >= f.ts - INTERVAL '1' SECOND)
         WHERE rn = 1",
    );
    let fills_1ms = datafusion_batch(
        "priced_fills",
        priced_fills.clone(),
        "SELECT trader_id, symbol, ts AS window_start, ts + INTERVAL '1' MILLISECOND AS window_end,
                SUM(CASE WHEN quantity > 0 THEN quantity ELSE 0 END) AS bought,
                SUM(CASE WHEN quantity > 0 THEN quantity * fill_price ELSE 0 END) AS bought_value,
                SUM(CASE WHEN quantity < 0 THEN -quantity ELSE 0 END) AS sold,
                SUM(CASE WHEN quantity < 0 THEN -quantity * fill_price ELSE 0 END) AS sold_value,
                MAX(mark_price) AS mark_price
         FROM priced_fills GROUP BY trader_id, symbol, ts",
    );
    let positions = datafusion_batch(
        "fills_1ms",
        fills_1ms.clone(),
        &stream_select(&text, "positions"),
    );
    let trader_pnl = datafusion_batch(
        "positions",
        positions.clone(),
        &stream_select(&text, "trader_pnl"),
    );
    let daily_loss_alerts = datafusion_batch(
        "trader_pnl",
        trader_pnl.clone(),
        &stream_select(&text, "daily_loss_alerts"),
    );
    let risk_alerts = datafusion_batch_over(
        vec![
            ("positions", positions.clone()),
            ("daily_loss_alerts", daily_loss_alerts.clone()),
        ],
        &stream_select(&text, "risk_alerts"),
    );
    for (stream, expected) in [
        ("fills", fills),
        ("priced_fills", priced_fills),
        ("fills_1ms", fills_1ms),
        ("positions", positions),
        ("trader_pnl", trader_pnl),
        ("daily_loss_alerts", daily_loss_alerts),
        ("risk_alerts", risk_alerts.clone()),
    ] {
        let actual = rows("risk_alerts", stream, &out[stream]);
        assert!(expected.num_rows() > 0, "{stream}: no rows");
        assert_same_rows(stream, &actual, &expected, 1e-9);
        eprintln!("{stream}: {} rows match", expected.num_rows());
    }
    // Both limits are crossed on the default market within minutes.
    use arrow::array::AsArray;
    let kinds = risk_alerts
        .column_by_name("alert")
        .unwrap()
        .as_string::<i32>();
    for kind in ["POSITION_LIMIT_EXCEEDED", "DAILY_LOSS_LIMIT"] {
        let first = (0..risk_alerts.num_rows())
            .filter(|&i| kinds.value(i) == kind)
            .map(|i| risk_alerts.slice(i, 1))
            .map(|r| first_ms(&r, "ts") - START_MS)
            .min();
        let first = first.unwrap_or_else(|| panic!("{kind} never fired"));
        eprintln!("{kind}: first after {} s", first / 1000);
        assert!(first < 240_000, "{kind}: first after {first} ms");
    }
}
