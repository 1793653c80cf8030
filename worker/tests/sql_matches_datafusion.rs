//! Every query in `sql/` runs through the streaming engine over out-of-order
//! simulator data and yields exactly the rows DataFusion computes in batch
//! over the same data with the same window assignment.

mod common;

use std::time::Duration;

use arrow::array::RecordBatch;
use arrow::compute::concat_batches;
use common::*;
use tickflow_worker::codec::SourceTable;
use tickflow_worker::engine::{Catalog, EngineConfig, OutputKind, Pipeline, StreamOutput};
use tickflow_worker::queries::BUILTIN_QUERIES;

/// Out-of-orderness of the data; the engine allows 1 s, so nothing is late.
const JITTER_MS: i64 = 800;

#[test]
fn every_builtin_query_matches_datafusion_batch() {
    // 2 × 150 s of event time at 1000 ticks/s: enough for 1-minute bars,
    // 100-second HOP windows and two sessions per symbol.
    let data = market_data(150_000, JITTER_MS);
    let sources = Catalog::builtin();
    // Split by key on 1, 2 and 4 threads (a query that cannot split runs
    // on one).
    for (threads, (name, sql)) in [1, 2, 4]
        .into_iter()
        .flat_map(|n| BUILTIN_QUERIES.iter().map(move |q| (n, q)))
    {
        let config = EngineConfig {
            allowed_lateness: Duration::from_secs(1),
            idle_timeout: None,
            parallelism: threads,
            ..EngineConfig::default()
        };
        let mut pipeline =
            Pipeline::new(sql, &sources, &config).unwrap_or_else(|e| panic!("{name}: {e}"));
        let table = SourceTable::from_table_name(&pipeline.source_names()[0]).unwrap();
        let input = source_batch(&data, table);
        let mut out: Vec<StreamOutput> = Vec::new();
        for chunk in chunks(&input, 4096) {
            pipeline
                .push(table.table_name(), 0, &chunk, &mut out)
                .unwrap();
        }
        pipeline
            .finish_partition(table.table_name(), 0, &mut out)
            .unwrap();
        assert!(
            out.iter().all(|o| o.kind != OutputKind::Late),
            "{name}: no event is late within the allowed lateness"
        );
        let schema = pipeline.streams()[0].output_schema.clone();
        let actual = concat_batches(&schema, out.iter().map(|o| &o.rows)).unwrap();

        let window = window_of(sql);
        let reference_input = assign_windows(&input, window, "symbol");
        let expected = datafusion_batch(table.table_name(), reference_input, &batch_sql(sql));
        assert!(
            expected.num_rows() > 0,
            "{name}: the reference produced no rows; the test data is too small"
        );
        assert_same_rows(name, &actual, &expected, 1e-9);
        eprintln!(
            "{name} on {} thread(s), {} key group(s): {} rows match",
            pipeline.threads(),
            pipeline.key_groups(),
            actual.num_rows()
        );
    }
}

#[test]
fn emit_changes_converges_to_the_final_window_result() {
    let data = market_data(20_000, JITTER_MS);
    let input = source_batch(&data, SourceTable::MarketTicks);
    let sources = Catalog::builtin();
    let config = EngineConfig::default();
    let run = |emit: &str| {
        let sql = format!(
            "CREATE STREAM s AS SELECT symbol, COUNT(*) AS n, SUM(volume) AS v, LAST_VALUE(price) AS close \
             FROM market_ticks GROUP BY symbol, HOP(ts, INTERVAL '2' SECOND, INTERVAL '6' SECOND) {emit};"
        );
        let mut p = Pipeline::new(&sql, &sources, &config).unwrap();
        let mut out = Vec::new();
        for chunk in chunks(&input, 1000) {
            p.push("market_ticks", 0, &chunk, &mut out).unwrap();
        }
        p.finish_partition("market_ticks", 0, &mut out).unwrap();
        let schema = p.streams()[0].output_schema.clone();
        concat_batches(&schema, out.iter().map(|o| &o.rows)).unwrap()
    };
    let changes = run("EMIT CHANGES");
    let finals = run("EMIT ON WINDOW CLOSE");
    assert!(
        changes.num_rows() > finals.num_rows(),
        "EMIT CHANGES emits intermediate updates"
    );
    // The last update of each (symbol, window) is the final result.
    let mut last = std::collections::BTreeMap::new();
    for row in rows_of(&changes) {
        let key = format!("{:?}{:?}", row[0].1, row[4].1);
        last.insert(key, row);
    }
    let mut finals_rows = rows_of(&finals);
    finals_rows.sort_by_key(|r| format!("{:?}{:?}", r[0].1, r[4].1));
    let last: Vec<_> = last.into_values().collect();
    assert_eq!(last, finals_rows);
}

#[test]
fn late_events_are_counted_and_routed() {
    let sources = Catalog::builtin();
    let config = EngineConfig {
        allowed_lateness: Duration::from_millis(0),
        idle_timeout: None,
        ..EngineConfig::default()
    };
    let sql = "CREATE STREAM c AS SELECT symbol, COUNT(*) AS n FROM market_ticks GROUP BY symbol, TUMBLE(ts, INTERVAL '1' SECOND);";
    let mut p = Pipeline::new(sql, &sources, &config).unwrap();
    let data = tickflow_worker::simulator::generate(
        tickflow_worker::simulator::SimConfig::default(),
        5_000,
    );
    let ticks = source_batch(&data, SourceTable::MarketTicks);
    // Deliver the last second first: everything before it is then late.
    let n = ticks.num_rows();
    let mut out = Vec::new();
    p.push("market_ticks", 0, &ticks.slice(n - 1000, 1000), &mut out)
        .unwrap();
    p.push("market_ticks", 0, &ticks.slice(0, n - 1000), &mut out)
        .unwrap();
    p.finish_partition("market_ticks", 0, &mut out).unwrap();
    let late: usize = out
        .iter()
        .filter(|o| o.kind == OutputKind::Late)
        .map(|o| o.rows.num_rows())
        .sum();
    let counted: usize = out
        .iter()
        .filter(|o| o.kind != OutputKind::Late)
        .map(|o| {
            let c = o.rows.column_by_name("n").unwrap();
            arrow::compute::sum(
                c.as_any()
                    .downcast_ref::<arrow::array::Int64Array>()
                    .unwrap(),
            )
            .unwrap() as usize
        })
        .sum();
    let m = p.stream_metrics(0);
    assert!(late > 3000, "most of the early rows are late ({late})");
    assert_eq!(m.late_events as usize, late);
    assert_eq!(
        late + counted,
        n,
        "every row is either counted in a window or reported late"
    );
}

/// OVER queries: every form the dialect documents, each row compared with
/// DataFusion over the same ticks. (STDDEV is over volume: over prices,
/// whose spread is 1e-5 of their level, a sliding frame's retractions leave
/// both engines ~1e-9 off in different directions.) The reference orders rows with equal
/// event time by arrival (a `seq` column), as the stream does; RANGE frames
/// need no tie-break (peers share a frame).
const OVER_QUERIES: &[(&str, &str)] = &[
    (
        "price_change",
        "CREATE STREAM price_change AS
SELECT symbol, ts, price,
       (price - LAG(price) OVER (PARTITION BY symbol ORDER BY ts)) / LAG(price) OVER (PARTITION BY symbol ORDER BY ts) * 100 AS change_pct,
       AVG(volume) OVER (PARTITION BY symbol ORDER BY ts ROWS BETWEEN 20 PRECEDING AND 1 PRECEDING) AS avg_prev_20
FROM market_ticks;",
    ),
    (
        "neighbours",
        "CREATE STREAM neighbours AS
SELECT symbol, exchange, ts, price,
       LAG(price, 3, 0.0) OVER (PARTITION BY symbol ORDER BY ts) AS lag3,
       LEAD(price, 2) OVER (PARTITION BY symbol ORDER BY ts) AS lead2,
       FIRST_VALUE(price) OVER (PARTITION BY symbol ORDER BY ts ROWS BETWEEN 5 PRECEDING AND CURRENT ROW) AS first5,
       LAST_VALUE(price) OVER (PARTITION BY symbol ORDER BY ts ROWS BETWEEN 5 PRECEDING AND 2 PRECEDING) AS last_before
FROM market_ticks
WHERE volume > 10;",
    ),
    (
        "rolling",
        "CREATE STREAM rolling AS
SELECT symbol, exchange, ts,
       SUM(volume) OVER w10 AS vol10, COUNT(*) OVER w10 AS n10,
       MIN(price) OVER w10 AS lo10, MAX(price) OVER w10 AS hi10, STDDEV(volume) OVER w10 AS sd10
FROM market_ticks
WINDOW w10 AS (PARTITION BY symbol, exchange ORDER BY ts ROWS BETWEEN 10 PRECEDING AND CURRENT ROW);",
    ),
    (
        "last_2s",
        "CREATE STREAM last_2s AS
SELECT symbol, ts, price,
       COUNT(*) OVER r AS n_2s, SUM(volume) OVER r AS vol_2s, AVG(price) OVER r AS avg_2s
FROM market_ticks
WINDOW r AS (PARTITION BY symbol ORDER BY ts RANGE BETWEEN INTERVAL '2' SECOND PRECEDING AND CURRENT ROW);",
    ),
    (
        "volume_spikes",
        "CREATE STREAM volume_spikes AS
WITH with_average AS (
  SELECT symbol, ts, volume,
         AVG(volume) OVER (PARTITION BY symbol ORDER BY ts ROWS BETWEEN 20 PRECEDING AND 1 PRECEDING) AS avg_volume_20
  FROM market_ticks
)
SELECT symbol, ts, volume, avg_volume_20, volume / avg_volume_20 AS ratio
FROM with_average
WHERE volume > 2 * avg_volume_20;",
    ),
    (
        "big_moves",
        "CREATE STREAM big_moves AS
SELECT symbol, ts, price, prev, (price - prev) / prev * 10000 AS move_bp
FROM (SELECT symbol, ts, price, LAG(price, 5) OVER (PARTITION BY symbol ORDER BY ts) AS prev
      FROM market_ticks WHERE volume > 0) AS t
WHERE ABS(price - prev) / prev * 10000 > 3;",
    ),
    (
        // Running aggregates from the partition's first row: integer and
        // float arguments, with nulls, each row up to itself.
        "running_rows",
        "CREATE STREAM running_rows AS
SELECT symbol, exchange, ts, price,
       SUM(volume) OVER w AS cum_volume, COUNT(*) OVER w AS n,
       AVG(price) OVER w AS avg_price, MIN(price) OVER w AS low,
       MAX(CASE WHEN volume > 300 THEN price END) OVER w AS high_big,
       SUM(CASE WHEN volume % 2 = 0 THEN volume * price END) OVER w AS even_notional,
       LAG(price) OVER w AS prev_price
FROM market_ticks
WINDOW w AS (PARTITION BY symbol, exchange ORDER BY ts ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW);",
    ),
    (
        // The default frame with ORDER BY (written out, so that the
        // reference keeps it): rows of equal event time are peers and share
        // the value after the last of them.
        "running_peers",
        "CREATE STREAM running_peers AS
SELECT symbol, ts, volume,
       SUM(volume) OVER w AS cum_volume, MAX(price) OVER w AS high, COUNT(bid) OVER w AS quotes
FROM market_ticks
WHERE volume > 100
WINDOW w AS (PARTITION BY symbol ORDER BY ts RANGE BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW);",
    ),
];

/// Functions DataFusion only runs simplified (COALESCE, NVL, NULLIF), in
/// an OVER stream's SELECT list and WHERE.
const SIMPLIFIED_QUERIES: &[(&str, &str)] = &[
    (
    "filled_moves",
    "CREATE STREAM filled_moves AS
SELECT symbol, ts, COALESCE(price - LAG(price) OVER (PARTITION BY symbol ORDER BY ts), 0.0) AS move,
       NVL(LAG(volume, 3) OVER (PARTITION BY symbol ORDER BY ts), -1) AS volume_3_back,
       NULLIF(volume, 100) AS odd_volume
FROM market_ticks
WHERE COALESCE(bid, 0.0) > 0;",
    ),
    (
        // The direct ROWS-frame aggregates over arguments with nulls, float
        // and integer, frames ending before the current row or at it.
        "sparse_frames",
        "CREATE STREAM sparse_frames AS
SELECT symbol, ts,
       SUM(CASE WHEN volume > 300 THEN price END) OVER (PARTITION BY symbol ORDER BY ts ROWS BETWEEN 7 PRECEDING AND CURRENT ROW) AS big_px_sum,
       AVG(CASE WHEN volume > 300 THEN price END) OVER (PARTITION BY symbol ORDER BY ts ROWS BETWEEN 7 PRECEDING AND 2 PRECEDING) AS big_px_avg,
       COUNT(NULLIF(volume % 3, 0)) OVER (PARTITION BY symbol ORDER BY ts ROWS BETWEEN 5 PRECEDING AND CURRENT ROW) AS not_thirds,
       MIN(NULLIF(volume % 5, 0)) OVER (PARTITION BY symbol ORDER BY ts ROWS BETWEEN 4 PRECEDING AND 1 PRECEDING) AS min_rest,
       MAX(volume) OVER (PARTITION BY symbol ORDER BY ts ROWS BETWEEN 3 PRECEDING AND 3 PRECEDING) AS vol_3_back
FROM market_ticks;",
    ),
];

/// Row-by-row streams through CTEs and subqueries.
const SUBQUERY_QUERIES: &[(&str, &str)] = &[
    (
        "wide_quotes",
        "CREATE STREAM wide_quotes AS
WITH quotes AS (SELECT symbol, exchange, ts, ask - bid AS spread, (ask + bid) / 2 AS mid FROM market_ticks),
     wide AS (SELECT * FROM quotes WHERE spread / mid * 10000 > 2)
SELECT symbol, exchange, ts, spread, mid FROM wide WHERE exchange <> 'IEX';",
    ),
    (
        "large_orders",
        "CREATE STREAM large_orders AS
SELECT o.symbol, o.ts, o.notional
FROM (SELECT symbol, ts, price * volume AS notional FROM market_ticks WHERE volume > 0) AS o
WHERE o.notional > 1000;",
    ),
];

/// The streaming run of `sql` over `input`, in `chunk`-row batches; with
/// `restart_at`, the pipeline is checkpointed after that many batches and
/// the rest runs in a new pipeline restored from it.
fn run_over(
    sql: &str,
    input: &RecordBatch,
    chunk: usize,
    restart_at: Option<usize>,
) -> RecordBatch {
    let config = EngineConfig {
        allowed_lateness: Duration::from_secs(1),
        idle_timeout: None,
        ..EngineConfig::default()
    };
    let new = || Pipeline::new(sql, &Catalog::builtin(), &config).unwrap();
    let mut p = new();
    let mut out: Vec<StreamOutput> = Vec::new();
    for (i, batch) in chunks(input, chunk).iter().enumerate() {
        if Some(i) == restart_at {
            let snapshot = p.snapshot().unwrap();
            p = new();
            p.restore(snapshot).unwrap();
        }
        p.push("market_ticks", 0, batch, &mut out).unwrap();
    }
    p.finish_partition("market_ticks", 0, &mut out).unwrap();
    assert!(
        out.iter().all(|o| o.kind != OutputKind::Late),
        "nothing is late within 1 s"
    );
    let schema = p.streams()[0].output_schema.clone();
    concat_batches(&schema, out.iter().map(|o| &o.rows)).unwrap()
}

/// `sql`'s SELECT for DataFusion, ties in event time broken by arrival.
fn over_batch_sql(sql: &str) -> String {
    let start = sql.find("WITH").or_else(|| sql.find("SELECT")).unwrap();
    let body = &sql[start..];
    let body = body.trim().trim_end_matches(';');
    if body.contains(" RANGE ") {
        body.to_string()
    } else {
        body.replace("ORDER BY ts", "ORDER BY ts, seq")
    }
}

#[test]
fn over_and_subquery_streams_match_datafusion_batch() {
    let data = market_data(40_000, JITTER_MS);
    let input = source_batch(&data, SourceTable::MarketTicks);
    let reference_input = with_seq(&input);
    for (name, sql) in OVER_QUERIES
        .iter()
        .chain(SUBQUERY_QUERIES)
        .chain(SIMPLIFIED_QUERIES)
    {
        let actual = run_over(sql, &input, 4096, None);
        let expected = datafusion_batch(
            "market_ticks",
            reference_input.clone(),
            &over_batch_sql(sql),
        );
        assert!(
            expected.num_rows() > 200,
            "{name}: {} rows",
            expected.num_rows()
        );
        assert_same_rows(name, &actual, &expected, 1e-9);
        // A checkpoint mid-run, restored into a new pipeline, changes nothing.
        let restarted = run_over(sql, &input, 4096, Some(7));
        assert_same_rows(&format!("{name} (restored)"), &restarted, &actual, 0.0);
        eprintln!("{name}: {} rows match", actual.num_rows());
    }
}

/// Window top-N: the three symbols with the most volume per 5-second
/// window (ROW_NUMBER), and every rank of a 10-second HOP (RANK and
/// DENSE_RANK with ties on the tick count), each against DataFusion over
/// the same rows with the same window assignment.
#[test]
fn window_top_n_matches_datafusion_batch() {
    let data = market_data(60_000, JITTER_MS);
    let input = source_batch(&data, SourceTable::MarketTicks);
    let queries = [
        (
            "top_volume",
            "CREATE STREAM top_volume AS
SELECT symbol, window_start, window_end, volume, rn FROM (
  SELECT symbol, window_start, window_end, SUM(volume) AS volume,
         ROW_NUMBER() OVER (PARTITION BY window_start, window_end ORDER BY SUM(volume) DESC, symbol) AS rn
  FROM market_ticks
  GROUP BY symbol, TUMBLE(ts, INTERVAL '5' SECOND)
) WHERE rn <= 3;",
            RefWindow::Tumble(5_000),
        ),
        (
            "busiest",
            "CREATE STREAM busiest AS
WITH counts AS (
  SELECT symbol, exchange, window_start, window_end, COUNT(*) AS ticks
  FROM market_ticks
  GROUP BY symbol, exchange, HOP(ts, INTERVAL '5' SECOND, INTERVAL '10' SECOND)
), ranked AS (
  SELECT symbol, exchange, window_start, window_end, ticks,
         RANK() OVER (PARTITION BY window_start, window_end, exchange ORDER BY ticks DESC) AS r,
         DENSE_RANK() OVER (PARTITION BY window_start, window_end, exchange ORDER BY ticks DESC) AS dr
  FROM counts
)
SELECT * FROM ranked WHERE dr <= 2;",
            RefWindow::Hop {
                slide: 5_000,
                size: 10_000,
            },
        ),
    ];
    for (name, sql, window) in queries {
        let actual = run_over(sql, &input, 4096, None);
        let windows = assign_windows(&input, window, "symbol");
        // The query after its `CREATE STREAM … AS` line, windows as columns.
        let reference = sql[sql.find('\n').unwrap() + 1..]
            .trim()
            .trim_end_matches(';')
            .replace(
                "TUMBLE(ts, INTERVAL '5' SECOND)",
                "window_start, window_end",
            )
            .replace(
                "HOP(ts, INTERVAL '5' SECOND, INTERVAL '10' SECOND)",
                "window_start, window_end",
            );
        let expected = datafusion_batch("market_ticks", windows, &reference);
        assert!(
            expected.num_rows() > 50,
            "{name}: {} rows",
            expected.num_rows()
        );
        assert_same_rows(name, &actual, &expected, 1e-9);
        let restarted = run_over(sql, &input, 4096, Some(5));
        assert_same_rows(&format!("{name} (restored)"), &restarted, &actual, 0.0);
        eprintln!("{name}: {} rows match", actual.num_rows());
    }
}

/// Three named streams in a chain, a UNION ALL of a stream and a table, and
/// a window over the union:
/// `quotes` (a CTE) → `moves` (OVER) → `top_movers` (window top-N), and
/// `moves` ∪ `order_events` → `alerts` → `alert_counts`.
const DAG_SQL: &str = "
CREATE STREAM quotes AS
WITH q AS (SELECT symbol, exchange, ts, (ask + bid) / 2 AS mid, volume FROM market_ticks)
SELECT * FROM q WHERE volume > 0;

CREATE STREAM moves AS
SELECT symbol, ts, mid, volume,
       (mid - LAG(mid) OVER (PARTITION BY symbol ORDER BY ts)) / LAG(mid) OVER (PARTITION BY symbol ORDER BY ts) * 10000 AS move_bp
FROM quotes;

CREATE STREAM top_movers AS
SELECT symbol, window_start, window_end, volume, biggest_bp, rn FROM (
  SELECT symbol, window_start, window_end, SUM(volume) AS volume, MAX(ABS(move_bp)) AS biggest_bp,
         ROW_NUMBER() OVER (PARTITION BY window_start, window_end ORDER BY SUM(volume) DESC, symbol) AS rn
  FROM moves
  GROUP BY symbol, TUMBLE(ts, INTERVAL '5' SECOND)
) WHERE rn <= 3;

CREATE STREAM alerts AS
SELECT symbol, ts, 'move' AS kind, move_bp AS size FROM moves WHERE ABS(move_bp) > 2
UNION ALL
SELECT symbol, ts, 'order', quantity FROM order_events WHERE quantity > 400;

CREATE STREAM alert_counts AS
SELECT kind, COUNT(*) AS n, MAX(size) AS largest FROM alerts
GROUP BY kind, TUMBLE(ts, INTERVAL '10' SECOND);

CREATE STREAM move_accel AS
SELECT symbol, ts, move_bp - LAG(move_bp) OVER (PARTITION BY symbol ORDER BY ts) AS accel
FROM moves;
";

#[test]
fn named_stream_dags_and_union_all_match_datafusion_batch() {
    let data = market_data(40_000, JITTER_MS);
    let ticks = source_batch(&data, SourceTable::MarketTicks);
    let orders = source_batch(&data, SourceTable::OrderEvents);
    let tables = [
        ("market_ticks", ticks.clone()),
        ("order_events", orders.clone()),
    ];
    let actual = run_tables(DAG_SQL, &tables, 4096, Feed::OneTableAfterTheOther, None);

    // The same chain in batch, one stage at a time; ties in event time are
    // broken by arrival (`seq`), as the engine does.
    let quotes = datafusion_batch(
        "market_ticks",
        with_seq(&ticks),
        "SELECT symbol, exchange, ts, (ask + bid) / 2 AS mid, volume, seq FROM market_ticks WHERE volume > 0",
    );
    let moves = datafusion_batch(
        "quotes",
        quotes.clone(),
        "SELECT symbol, ts, mid, volume, seq,
                (mid - LAG(mid) OVER (PARTITION BY symbol ORDER BY ts, seq)) / LAG(mid) OVER (PARTITION BY symbol ORDER BY ts, seq) * 10000 AS move_bp
         FROM quotes",
    );
    let top_movers = datafusion_batch(
        "moves",
        assign_windows(&moves, RefWindow::Tumble(5_000), "symbol"),
        "SELECT symbol, window_start, window_end, volume, biggest_bp, rn FROM (
           SELECT symbol, window_start, window_end, SUM(volume) AS volume, MAX(ABS(move_bp)) AS biggest_bp,
                  ROW_NUMBER() OVER (PARTITION BY window_start, window_end ORDER BY SUM(volume) DESC, symbol) AS rn
           FROM moves GROUP BY symbol, window_start, window_end) WHERE rn <= 3",
    );
    let alerts = datafusion_batch_over(
        vec![("moves", moves.clone()), ("order_events", orders)],
        "SELECT symbol, ts, 'move' AS kind, move_bp AS size FROM moves WHERE ABS(move_bp) > 2
         UNION ALL SELECT symbol, ts, 'order', quantity FROM order_events WHERE quantity > 400",
    );
    let alert_counts = datafusion_batch(
        "alerts",
        assign_windows(&alerts, RefWindow::Tumble(10_000), "kind"),
        "SELECT kind, COUNT(*) AS n, MAX(size) AS largest, window_start, window_end FROM alerts
         GROUP BY kind, window_start, window_end",
    );
    let move_accel = datafusion_batch(
        "moves",
        moves.clone(),
        "SELECT symbol, ts, move_bp - LAG(move_bp) OVER (PARTITION BY symbol ORDER BY ts, seq) AS accel
         FROM moves",
    );
    let drop_seq = |b: &RecordBatch| {
        let keep: Vec<usize> = (0..b.num_columns())
            .filter(|&i| b.schema().field(i).name() != "seq")
            .collect();
        b.project(&keep).unwrap()
    };
    for (name, expected, min_rows) in [
        ("quotes", drop_seq(&quotes), 10_000),
        ("moves", drop_seq(&moves), 10_000),
        ("top_movers", top_movers, 30),
        ("alerts", alerts, 100),
        ("alert_counts", alert_counts, 4),
        ("move_accel", move_accel, 10_000),
    ] {
        assert!(
            expected.num_rows() >= min_rows,
            "{name}: {} rows; the test data is too small",
            expected.num_rows()
        );
        assert_same_rows(name, &actual[name], &expected, 1e-9);
        eprintln!("{name}: {} rows match", expected.num_rows());
    }
    let kinds = datafusion_batch(
        "alerts",
        actual["alerts"].clone(),
        "SELECT DISTINCT kind FROM alerts",
    );
    assert_eq!(
        kinds.num_rows(),
        2,
        "both branches of the UNION ALL reach it"
    );

    // Small batches: an OVER stream emits in steps, behind its input's
    // watermark; what reads it must wait for the rows (nothing late).
    let small = run_tables(DAG_SQL, &tables, 100, Feed::OneTableAfterTheOther, None);
    for (name, rows) in &actual {
        assert_same_rows(
            &format!("{name} (100-row batches)"),
            &small[name],
            rows,
            1e-12,
        );
    }

    // A checkpoint taken mid-chain, while the union still waits for its
    // slower input, restores into a new pipeline without changing a row.
    for restart_at in [3, 12] {
        let restarted = run_tables(
            DAG_SQL,
            &tables,
            4096,
            Feed::OneTableAfterTheOther,
            Some(restart_at),
        );
        for (name, rows) in &actual {
            assert_same_rows(
                &format!("{name} (restored at {restart_at})"),
                &restarted[name],
                rows,
                0.0,
            );
        }
    }
}

/// Updating streams (GROUP BY without a window): the latest quote per
/// symbol and exchange, the best bid and ask across exchanges read from it
/// (an aggregate over an updating stream, MIN/MAX following retractions),
/// and traders whose buy orders in a symbol are still below a limit
/// (HAVING deletes a key when it passes).
const UPDATING_SQL: &str = "
CREATE STREAM latest_quotes AS
SELECT symbol, exchange, LAST_VALUE(bid) AS bid, LAST_VALUE(ask) AS ask, COUNT(*) AS quotes, MAX(ts) AS ts
FROM market_ticks GROUP BY symbol, exchange;

CREATE STREAM best_quotes AS
SELECT symbol, MAX(bid) AS best_bid, MIN(ask) AS best_ask, COUNT(*) AS venues, SUM(quotes) AS quotes
FROM latest_quotes GROUP BY symbol
HAVING (MAX(bid) - MIN(ask)) / MIN(ask) * 10000 > -3;

CREATE STREAM quiet_traders AS
SELECT trader_id, symbol, COUNT(*) AS orders, SUM(quantity) AS quantity, AVG(price) AS avg_price, MIN(price) AS low
FROM order_events WHERE side = 'buy' GROUP BY trader_id, symbol HAVING COUNT(*) < 100;
";

#[test]
fn updating_streams_converge_to_datafusion_batch() {
    let data = market_data(40_000, JITTER_MS);
    let ticks = source_batch(&data, SourceTable::MarketTicks);
    let orders = source_batch(&data, SourceTable::OrderEvents);
    let tables = [
        ("market_ticks", ticks.clone()),
        ("order_events", orders.clone()),
    ];
    let (streams, out) = run_tables_raw(
        UPDATING_SQL,
        &tables,
        4096,
        Feed::OneTableAfterTheOther,
        None,
    );
    let actual = final_tables(&streams, &out);

    // Batch: the same aggregates over all rows; LAST_VALUE by event time,
    // ties broken by arrival, as the engine does.
    let latest_sql = "SELECT symbol, exchange, LAST_VALUE(bid ORDER BY ts, seq) AS bid, LAST_VALUE(ask ORDER BY ts, seq) AS ask,
                             COUNT(*) AS quotes, MAX(ts) AS ts
                      FROM market_ticks GROUP BY symbol, exchange";
    let latest = datafusion_batch("market_ticks", with_seq(&ticks), latest_sql);
    let best = datafusion_batch(
        "latest_quotes",
        latest.clone(),
        "SELECT symbol, MAX(bid) AS best_bid, MIN(ask) AS best_ask, COUNT(*) AS venues, SUM(quotes) AS quotes
         FROM latest_quotes GROUP BY symbol HAVING (MAX(bid) - MIN(ask)) / MIN(ask) * 10000 > -3",
    );
    let quiet = datafusion_batch(
        "order_events",
        orders,
        "SELECT trader_id, symbol, COUNT(*) AS orders, SUM(quantity) AS quantity, AVG(price) AS avg_price, MIN(price) AS low
         FROM order_events WHERE side = 'buy' GROUP BY trader_id, symbol HAVING COUNT(*) < 100",
    );
    for (name, expected, min_rows) in [
        ("latest_quotes", latest, 20),
        ("best_quotes", best, 1),
        ("quiet_traders", quiet, 5),
    ] {
        let (table, upserts, deletes) = &actual[name];
        assert!(
            expected.num_rows() >= min_rows,
            "{name}: {} rows; the test data is too small",
            expected.num_rows()
        );
        assert_same_rows(name, table, &expected, 1e-9);
        eprintln!(
            "{name}: {} keys match after {upserts} upserts and {deletes} deletions",
            expected.num_rows()
        );
    }
    // HAVING took keys out again: deletions were sent and applied.
    assert!(
        actual["quiet_traders"].2 > 0,
        "some trader passed 40 orders"
    );
    assert!(
        actual["best_quotes"].2 > 0,
        "some symbol's quotes crossed the threshold back"
    );

    // A checkpoint mid-run, restored into a new pipeline, converges to the
    // same tables.
    for restart_at in [3, 12] {
        let (streams, out) = run_tables_raw(
            UPDATING_SQL,
            &tables,
            4096,
            Feed::OneTableAfterTheOther,
            Some(restart_at),
        );
        let restored = final_tables(&streams, &out);
        for (name, (table, _, _)) in &actual {
            assert_same_rows(
                &format!("{name} (restored at {restart_at})"),
                &restored[name].0,
                table,
                0.0,
            );
        }
    }
}
