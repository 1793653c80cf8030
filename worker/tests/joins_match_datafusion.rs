//! Interval joins over out-of-order simulator data (both sides disordered
//! within the allowed lateness) give exactly the rows DataFusion's batch
//! join computes over the same data: inner and LEFT, with a residual
//! condition, a filtered side and a WHERE, a window over the join's rows,
//! in large and small batches, with both tables interleaved or one after
//! the other, and across a checkpoint and restore.

mod common;

use arrow::array::RecordBatch;
use common::*;
use tickflow_worker::codec::SourceTable;

/// Out-of-orderness of the data; the engine allows 1 s, so nothing is late.
const JITTER_MS: i64 = 800;

const JOIN_SQL: &str = "
CREATE STREAM marked AS
SELECT o.order_id, o.symbol, o.ts, o.price, t.ts AS tick_ts, t.exchange,
       t.price AS tick_price, o.price - t.price AS slippage
FROM order_events o JOIN market_ticks t
  ON o.symbol = t.symbol
 AND t.ts BETWEEN o.ts - INTERVAL '200' MILLISECOND AND o.ts + INTERVAL '100' MILLISECOND;

CREATE STREAM next_nasdaq_ask AS
SELECT o.order_id, o.ts, o.side, o.price, q.ts AS quote_ts, q.ask
FROM order_events o
LEFT JOIN (SELECT symbol, ts, ask FROM market_ticks WHERE exchange = 'NASDAQ') q
  ON q.symbol = o.symbol AND q.ts > o.ts AND q.ts <= o.ts + INTERVAL '40' MILLISECOND
 AND q.ask > o.price
WHERE o.quantity > 100;

CREATE STREAM slippage_10s AS
SELECT symbol, COUNT(*) AS pairs, AVG(slippage) AS avg_slippage, MAX(ABS(slippage)) AS worst
FROM marked GROUP BY symbol, TUMBLE(ts, INTERVAL '10' SECOND);
";

/// The same joins in DataFusion batch.
fn expected(ticks: &RecordBatch, orders: &RecordBatch) -> Vec<(&'static str, RecordBatch)> {
    let tables = || {
        vec![
            ("order_events", orders.clone()),
            ("market_ticks", ticks.clone()),
        ]
    };
    let marked = datafusion_batch_over(
        tables(),
        "SELECT o.order_id, o.symbol, o.ts, o.price, t.ts AS tick_ts, t.exchange,
                t.price AS tick_price, o.price - t.price AS slippage
         FROM order_events o JOIN market_ticks t
           ON o.symbol = t.symbol
          AND t.ts BETWEEN o.ts - INTERVAL '200' MILLISECOND AND o.ts + INTERVAL '100' MILLISECOND",
    );
    let next_nasdaq_ask = datafusion_batch_over(
        tables(),
        "SELECT o.order_id, o.ts, o.side, o.price, q.ts AS quote_ts, q.ask
         FROM order_events o
         LEFT JOIN (SELECT symbol, ts, ask FROM market_ticks WHERE exchange = 'NASDAQ') q
           ON q.symbol = o.symbol AND q.ts > o.ts AND q.ts <= o.ts + INTERVAL '40' MILLISECOND
          AND q.ask > o.price
         WHERE o.quantity > 100",
    );
    let slippage_10s = datafusion_batch(
        "marked",
        assign_windows(&marked, RefWindow::Tumble(10_000), "symbol"),
        "SELECT symbol, COUNT(*) AS pairs, AVG(slippage) AS avg_slippage, MAX(ABS(slippage)) AS worst,
                window_start, window_end
         FROM marked GROUP BY symbol, window_start, window_end",
    );
    vec![
        ("marked", marked),
        ("next_nasdaq_ask", next_nasdaq_ask),
        ("slippage_10s", slippage_10s),
    ]
}

#[test]
fn interval_joins_match_datafusion_batch() {
    let data = market_data(12_000, JITTER_MS);
    let ticks = source_batch(&data, SourceTable::MarketTicks);
    let orders = source_batch(&data, SourceTable::OrderEvents);
    let tables = [
        ("order_events", orders.clone()),
        ("market_ticks", ticks.clone()),
    ];
    let expected = expected(&ticks, &orders);
    let (marked, left) = (&expected[0].1, &expected[1].1);
    assert!(marked.num_rows() > 1_000, "the data has pairs to find");
    let unmatched = left.column_by_name("ask").unwrap().null_count();
    assert!(
        unmatched > 0 && unmatched < left.num_rows(),
        "the LEFT join has matched and unmatched orders ({unmatched} of {})",
        left.num_rows()
    );

    for (feed, chunk) in [
        (Feed::Interleaved, 4096),
        (Feed::Interleaved, 100),
        (Feed::OneTableAfterTheOther, 4096),
    ] {
        let actual = run_tables(JOIN_SQL, &tables, chunk, feed, None);
        for (name, rows) in &expected {
            assert_same_rows(
                &format!("{name} ({feed:?}, {chunk}-row batches)"),
                &actual[*name],
                rows,
                1e-9,
            );
        }
    }
}

#[test]
fn a_restored_join_emits_what_an_uninterrupted_one_does() {
    let data = market_data(8_000, JITTER_MS);
    let tables = [
        (
            "order_events",
            source_batch(&data, SourceTable::OrderEvents),
        ),
        (
            "market_ticks",
            source_batch(&data, SourceTable::MarketTicks),
        ),
    ];
    let whole = run_tables(JOIN_SQL, &tables, 1024, Feed::Interleaved, None);
    for restart_at in [1, 7, 20] {
        let restarted = run_tables(JOIN_SQL, &tables, 1024, Feed::Interleaved, Some(restart_at));
        for (name, rows) in &whole {
            assert_same_rows(
                &format!("{name} (restored before batch {restart_at})"),
                &restarted[name],
                rows,
                0.0,
            );
        }
    }
}
