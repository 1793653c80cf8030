//! Joins over out-of-order simulator data (both sides disordered within
//! the allowed lateness) give exactly the rows DataFusion's batch join
//! computes over the same data, in large and small batches, with both
//! tables interleaved or one after the other, and across a checkpoint and
//! restore:
//! - interval joins, inner and LEFT, with a residual condition, a filtered
//!   side and a WHERE, and a window over the join's rows;
//! - ASOF joins, backward and forward, inner and LEFT (the reference is a
//!   join with the match condition, ranked per left row);
//! - window joins of two windowed streams on equal window ends, inner and
//!   LEFT;
//! - temporal joins (`FOR SYSTEM_TIME AS OF`) of a table, of a stream and of
//!   an updating aggregate (its versions: the aggregate up to each time) as
//!   versioned tables, inner and LEFT;
//! - regular joins (no time bound) of updating streams and of an append
//!   table read by its key, inner and LEFT, with deletions flowing through:
//!   the final table equals DataFusion's join of the final inputs.

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

const ASOF_SQL: &str = "
CREATE STREAM fill_marks AS
SELECT f.order_id, f.symbol, f.ts, f.price, t.ts AS tick_ts, t.price AS mark_price,
       f.price - t.price AS slippage
FROM (SELECT * FROM order_events WHERE status = 'filled') f
ASOF JOIN market_ticks t MATCH_CONDITION (f.ts >= t.ts) ON f.symbol = t.symbol;

CREATE STREAM next_nasdaq_quote AS
SELECT o.order_id, o.ts, o.price, q.ts AS quote_ts, q.ask
FROM order_events o
LEFT ASOF JOIN (SELECT symbol, ts, ask FROM market_ticks WHERE exchange = 'NASDAQ') q
  MATCH_CONDITION (o.ts + INTERVAL '5' MILLISECOND < q.ts) ON q.symbol = o.symbol;
";

/// The ASOF joins in DataFusion batch: the join with the match condition,
/// the nearest right row per left row (ties to the later right row).
fn expected_asof(ticks: &RecordBatch, orders: &RecordBatch) -> Vec<(&'static str, RecordBatch)> {
    let tables = || {
        vec![
            ("order_events", with_seq(orders)),
            ("market_ticks", with_seq(ticks)),
        ]
    };
    let fill_marks = datafusion_batch_over(
        tables(),
        "SELECT order_id, symbol, ts, price, tick_ts, mark_price, slippage FROM (
           SELECT f.order_id, f.symbol, f.ts, f.price, t.ts AS tick_ts, t.price AS mark_price,
                  f.price - t.price AS slippage,
                  ROW_NUMBER() OVER (PARTITION BY f.seq ORDER BY t.ts DESC, t.seq DESC) AS rn
           FROM (SELECT * FROM order_events WHERE status = 'filled') f
           JOIN market_ticks t ON f.symbol = t.symbol AND f.ts >= t.ts) WHERE rn = 1",
    );
    let next_nasdaq_quote = datafusion_batch_over(
        tables(),
        "SELECT order_id, ts, price, quote_ts, ask FROM (
           SELECT o.order_id, o.ts, o.price, q.ts AS quote_ts, q.ask,
                  ROW_NUMBER() OVER (PARTITION BY o.seq ORDER BY q.ts ASC, q.seq DESC) AS rn
           FROM order_events o
           LEFT JOIN (SELECT symbol, ts, ask, seq FROM market_ticks WHERE exchange = 'NASDAQ') q
             ON q.symbol = o.symbol AND o.ts + INTERVAL '5' MILLISECOND < q.ts) WHERE rn = 1",
    );
    vec![
        ("fill_marks", fill_marks),
        ("next_nasdaq_quote", next_nasdaq_quote),
    ]
}

const TEMPORAL_SQL: &str = "
CREATE STREAM nasdaq_quotes AS
SELECT symbol, ts, bid, ask FROM market_ticks WHERE exchange = 'NASDAQ';

CREATE STREAM order_quotes AS
SELECT o.order_id, o.ts, o.price, q.ts AS quote_ts, q.bid, q.ask
FROM order_events o
LEFT JOIN nasdaq_quotes FOR SYSTEM_TIME AS OF o.ts AS q ON o.symbol = q.symbol;

CREATE STREAM fill_prices AS
SELECT f.order_id, f.ts, t.price AS last_price, t.exchange
FROM order_events f JOIN market_ticks FOR SYSTEM_TIME AS OF f.ts AS t ON f.symbol = t.symbol
WHERE f.status = 'filled';

CREATE STREAM nasdaq_volume AS
SELECT symbol, SUM(volume) AS volume, COUNT(*) AS trades, MAX(price) AS high
FROM market_ticks WHERE exchange = 'NASDAQ' GROUP BY symbol;

CREATE STREAM order_participation AS
SELECT o.order_id, o.ts, o.quantity, v.volume, v.trades, v.high,
       o.quantity * 1.0 / v.volume AS participation
FROM order_events o
LEFT JOIN nasdaq_volume FOR SYSTEM_TIME AS OF o.ts AS v ON o.symbol = v.symbol;

CREATE STREAM buy_interest AS
SELECT trader_id, SUM(quantity) AS bought, AVG(price) AS avg_price
FROM order_events WHERE side = 'buy' GROUP BY trader_id;

CREATE STREAM sells_after_buys AS
SELECT s.order_id, s.ts, s.trader_id, s.quantity, b.bought, b.avg_price
FROM order_events s JOIN buy_interest FOR SYSTEM_TIME AS OF s.ts AS b
  ON s.trader_id = b.trader_id
WHERE s.side = 'sell';
";

/// The temporal joins in DataFusion batch: the version of each key valid
/// at the left row's time is the latest right row at or before it (ties
/// to the later one).
fn expected_temporal(
    ticks: &RecordBatch,
    orders: &RecordBatch,
) -> Vec<(&'static str, RecordBatch)> {
    let tables = || {
        vec![
            ("order_events", with_seq(orders)),
            ("market_ticks", with_seq(ticks)),
        ]
    };
    let order_quotes = datafusion_batch_over(
        tables(),
        "SELECT order_id, ts, price, quote_ts, bid, ask FROM (
           SELECT o.order_id, o.ts, o.price, q.ts AS quote_ts, q.bid, q.ask,
                  ROW_NUMBER() OVER (PARTITION BY o.seq ORDER BY q.ts DESC, q.seq DESC) AS rn
           FROM order_events o
           LEFT JOIN (SELECT symbol, ts, bid, ask, seq FROM market_ticks WHERE exchange = 'NASDAQ') q
             ON o.symbol = q.symbol AND o.ts >= q.ts) WHERE rn = 1",
    );
    let fill_prices = datafusion_batch_over(
        tables(),
        "SELECT order_id, ts, last_price, exchange FROM (
           SELECT f.order_id, f.ts, t.price AS last_price, t.exchange,
                  ROW_NUMBER() OVER (PARTITION BY f.seq ORDER BY t.ts DESC, t.seq DESC) AS rn
           FROM order_events f JOIN market_ticks t ON f.symbol = t.symbol AND f.ts >= t.ts
           WHERE f.status = 'filled') WHERE rn = 1",
    );
    // An updating aggregate's version at a time: the aggregate of its
    // key's rows up to that time (none before the first, so NULLs).
    let order_participation = datafusion_batch_over(
        tables(),
        "SELECT o.order_id, o.ts, o.quantity, SUM(t.volume) AS volume,
                CASE WHEN COUNT(t.seq) = 0 THEN NULL ELSE COUNT(t.seq) END AS trades,
                MAX(t.price) AS high, o.quantity * 1.0 / SUM(t.volume) AS participation
         FROM order_events o
         LEFT JOIN (SELECT * FROM market_ticks WHERE exchange = 'NASDAQ') t
           ON o.symbol = t.symbol AND t.ts <= o.ts
         GROUP BY o.seq, o.order_id, o.ts, o.quantity",
    );
    let sells_after_buys = datafusion_batch_over(
        tables(),
        "SELECT s.order_id, s.ts, s.trader_id, s.quantity, SUM(b.quantity) AS bought,
                AVG(b.price) AS avg_price
         FROM order_events s
         JOIN (SELECT * FROM order_events WHERE side = 'buy') b
           ON s.trader_id = b.trader_id AND b.ts <= s.ts
         WHERE s.side = 'sell'
         GROUP BY s.seq, s.order_id, s.ts, s.trader_id, s.quantity",
    );
    vec![
        ("order_quotes", order_quotes),
        ("fill_prices", fill_prices),
        ("order_participation", order_participation),
        ("sells_after_buys", sells_after_buys),
    ]
}

const WINDOW_JOIN_SQL: &str = "
CREATE STREAM tick_bars AS
SELECT symbol, COUNT(*) AS ticks, AVG(price) AS avg_price
FROM market_ticks GROUP BY symbol, TUMBLE(ts, INTERVAL '1' SECOND);

CREATE STREAM order_flow AS
SELECT symbol, SUM(quantity) AS quantity, COUNT(*) AS orders
FROM order_events GROUP BY symbol, TUMBLE(ts, INTERVAL '1' SECOND);

CREATE STREAM bars_with_flow AS
SELECT b.symbol, b.window_start, b.window_end, b.ticks, b.avg_price, f.quantity, f.orders
FROM tick_bars b LEFT JOIN order_flow f
  ON b.symbol = f.symbol AND b.window_start = f.window_start AND b.window_end = f.window_end;

CREATE STREAM busy_windows AS
SELECT b.symbol, b.window_end, b.ticks, f.orders, f.quantity / b.ticks AS quantity_per_tick
FROM tick_bars b JOIN order_flow f ON b.symbol = f.symbol AND f.window_end = b.window_end
WHERE f.orders > 1;
";

/// The window joins in DataFusion batch, over the windowed aggregates
/// computed in batch too.
fn expected_window_join(
    ticks: &RecordBatch,
    orders: &RecordBatch,
) -> Vec<(&'static str, RecordBatch)> {
    let second = RefWindow::Tumble(1_000);
    let tick_bars = datafusion_batch(
        "market_ticks",
        assign_windows(ticks, second, "symbol"),
        "SELECT symbol, COUNT(*) AS ticks, AVG(price) AS avg_price, window_start, window_end
         FROM market_ticks GROUP BY symbol, window_start, window_end",
    );
    let order_flow = datafusion_batch(
        "order_events",
        assign_windows(orders, second, "symbol"),
        "SELECT symbol, SUM(quantity) AS quantity, COUNT(*) AS orders, window_start, window_end
         FROM order_events GROUP BY symbol, window_start, window_end",
    );
    let tables = || {
        vec![
            ("tick_bars", tick_bars.clone()),
            ("order_flow", order_flow.clone()),
        ]
    };
    let bars_with_flow = datafusion_batch_over(
        tables(),
        "SELECT b.symbol, b.window_start, b.window_end, b.ticks, b.avg_price, f.quantity, f.orders
         FROM tick_bars b LEFT JOIN order_flow f
           ON b.symbol = f.symbol AND b.window_start = f.window_start AND b.window_end = f.window_end",
    );
    let busy_windows = datafusion_batch_over(
        tables(),
        "SELECT b.symbol, b.window_end, b.ticks, f.orders, f.quantity / b.ticks AS quantity_per_tick
         FROM tick_bars b JOIN order_flow f ON b.symbol = f.symbol AND f.window_end = b.window_end
         WHERE f.orders > 1",
    );
    vec![
        ("tick_bars", tick_bars),
        ("order_flow", order_flow),
        ("bars_with_flow", bars_with_flow),
        ("busy_windows", busy_windows),
    ]
}

const REGULAR_SQL: &str = "
CREATE STREAM order_activity AS
SELECT order_id, symbol, COUNT(*) AS events, MAX(ts) AS updated, MAX(price) AS limit_price
FROM order_events GROUP BY order_id, symbol;

-- Each order with its symbol's latest trade (market_ticks read as a table
-- by its key), while that trade is below the order's limit.
CREATE STREAM order_marks AS
SELECT a.order_id, a.symbol, a.events, a.limit_price, t.ts AS tick_ts,
       t.price AS last_price, t.exchange
FROM order_activity a LEFT JOIN market_ticks t
  ON a.symbol = t.symbol AND t.price < a.limit_price;

-- Venues whose price range is still narrow: a key appears, and is deleted
-- once the range widens.
CREATE STREAM quiet_venues AS
SELECT symbol, exchange, COUNT(*) AS ticks, MAX(price) - MIN(price) AS price_range
FROM market_ticks GROUP BY symbol, exchange
HAVING MAX(price) - MIN(price) < 0.4;

CREATE STREAM buy_interest AS
SELECT symbol, SUM(quantity) AS quantity, COUNT(*) AS orders
FROM order_events WHERE side = 'buy' GROUP BY symbol;

CREATE STREAM interest_at_quiet_venues AS
SELECT b.symbol, q.exchange, b.quantity, q.ticks, q.price_range
FROM buy_interest b JOIN quiet_venues q ON b.symbol = q.symbol
WHERE q.ticks > 3;
";

/// The regular joins in DataFusion batch, over the final inputs: the
/// updating streams as their GROUP BY, market_ticks as its latest row per
/// symbol (latest event time, then latest arrival).
fn expected_regular(ticks: &RecordBatch, orders: &RecordBatch) -> Vec<(&'static str, RecordBatch)> {
    let tables = || {
        vec![
            ("order_events", with_seq(orders)),
            ("market_ticks", with_seq(ticks)),
        ]
    };
    let order_marks = datafusion_batch_over(
        tables(),
        "WITH a AS (SELECT order_id, symbol, COUNT(*) AS events, MAX(price) AS limit_price
                    FROM order_events GROUP BY order_id, symbol),
              t AS (SELECT * FROM (SELECT *, ROW_NUMBER() OVER (PARTITION BY symbol ORDER BY ts DESC, seq DESC) AS rn
                                   FROM market_ticks) WHERE rn = 1)
         SELECT a.order_id, a.symbol, a.events, a.limit_price, t.ts AS tick_ts,
                t.price AS last_price, t.exchange
         FROM a LEFT JOIN t ON a.symbol = t.symbol AND t.price < a.limit_price",
    );
    let interest = datafusion_batch_over(
        tables(),
        "WITH q AS (SELECT symbol, exchange, COUNT(*) AS ticks, MAX(price) - MIN(price) AS price_range
                    FROM market_ticks GROUP BY symbol, exchange HAVING MAX(price) - MIN(price) < 0.4),
              b AS (SELECT symbol, SUM(quantity) AS quantity, COUNT(*) AS orders
                    FROM order_events WHERE side = 'buy' GROUP BY symbol)
         SELECT b.symbol, q.exchange, b.quantity, q.ticks, q.price_range
         FROM b JOIN q ON b.symbol = q.symbol WHERE q.ticks > 3",
    );
    vec![
        ("order_marks", order_marks),
        ("interest_at_quiet_venues", interest),
    ]
}

/// Runs an updating `sql` over `tables` in every feed (and restored from a
/// checkpoint) and compares each stream's final table with `expected`;
/// returns the upserts and deletions of the first run per stream.
fn assert_final_tables_match_batch(
    sql: &str,
    tables: &[(&str, RecordBatch)],
    expected: &[(&'static str, RecordBatch)],
) -> std::collections::BTreeMap<String, (usize, usize)> {
    let mut changes = std::collections::BTreeMap::new();
    for (feed, chunk, restart_at) in [
        (Feed::Interleaved, 4096, None),
        (Feed::Interleaved, 100, None),
        (Feed::OneTableAfterTheOther, 4096, None),
        (Feed::Interleaved, 512, Some(9)),
    ] {
        let (streams, out) = run_tables_raw(sql, tables, chunk, feed, restart_at);
        let finals = final_tables(&streams, &out);
        for (name, rows) in expected {
            let (table, upserts, deletes) = &finals[*name];
            assert_same_rows(
                &format!("{name} ({feed:?}, {chunk}-row batches, restored before {restart_at:?})"),
                table,
                rows,
                1e-9,
            );
            changes
                .entry(name.to_string())
                .or_insert((*upserts, *deletes));
        }
    }
    changes
}

/// Runs `sql` over `tables` in every feed and compares each stream with
/// `expected`.
fn assert_matches_batch(
    sql: &str,
    tables: &[(&str, RecordBatch)],
    expected: &[(&'static str, RecordBatch)],
) {
    for (feed, chunk) in [
        (Feed::Interleaved, 4096),
        (Feed::Interleaved, 100),
        (Feed::OneTableAfterTheOther, 4096),
    ] {
        let actual = run_tables(sql, tables, chunk, feed, None);
        for (name, rows) in expected {
            assert_same_rows(
                &format!("{name} ({feed:?}, {chunk}-row batches)"),
                &actual[*name],
                rows,
                1e-9,
            );
        }
    }
}

/// How many rows of `rows` have a null `column` (unmatched LEFT rows).
fn nulls_in(rows: &RecordBatch, column: &str) -> usize {
    rows.column_by_name(column).unwrap().null_count()
}

#[test]
fn asof_joins_match_datafusion_batch() {
    let data = market_data(4_000, JITTER_MS);
    let ticks = source_batch(&data, SourceTable::MarketTicks);
    let orders = source_batch(&data, SourceTable::OrderEvents);
    let expected = expected_asof(&ticks, &orders);
    let (marks, next) = (&expected[0].1, &expected[1].1);
    assert!(
        marks.num_rows() > 100,
        "fills to mark: {}",
        marks.num_rows()
    );
    let unmatched = nulls_in(next, "ask");
    assert!(
        unmatched > 0 && unmatched < next.num_rows() && next.num_rows() == orders.num_rows(),
        "every order once, some without a later quote ({unmatched} of {})",
        next.num_rows()
    );
    let tables = [("order_events", orders), ("market_ticks", ticks)];
    assert_matches_batch(ASOF_SQL, &tables, &expected);
}

#[test]
fn temporal_joins_match_datafusion_batch() {
    let data = market_data(4_000, JITTER_MS);
    let ticks = source_batch(&data, SourceTable::MarketTicks);
    let orders = source_batch(&data, SourceTable::OrderEvents);
    let expected = expected_temporal(&ticks, &orders);
    let (quotes, fills) = (&expected[0].1, &expected[1].1);
    assert_eq!(
        quotes.num_rows(),
        orders.num_rows(),
        "a LEFT join keeps every order"
    );
    assert!(
        nulls_in(quotes, "bid") > 0,
        "orders before their symbol's first NASDAQ quote"
    );
    assert!(fills.num_rows() > 100, "fills: {}", fills.num_rows());
    let (participation, sells) = (&expected[2].1, &expected[3].1);
    assert_eq!(participation.num_rows(), orders.num_rows());
    let unversioned = nulls_in(participation, "volume");
    assert!(
        unversioned > 0 && unversioned < participation.num_rows() / 2,
        "orders before their symbol's first NASDAQ tick: {unversioned}"
    );
    assert!(
        sells.num_rows() > 100,
        "sells after buys: {}",
        sells.num_rows()
    );
    let tables = [("order_events", orders), ("market_ticks", ticks)];
    assert_matches_batch(TEMPORAL_SQL, &tables, &expected);
}

#[test]
fn window_joins_match_datafusion_batch() {
    let data = market_data(12_000, JITTER_MS);
    let ticks = source_batch(&data, SourceTable::MarketTicks);
    let orders = source_batch(&data, SourceTable::OrderEvents);
    let expected = expected_window_join(&ticks, &orders);
    let (left, inner) = (&expected[2].1, &expected[3].1);
    let unmatched = nulls_in(left, "orders");
    assert!(
        unmatched > 0 && unmatched < left.num_rows(),
        "windows with and without orders ({unmatched} of {})",
        left.num_rows()
    );
    assert!(inner.num_rows() > 50, "busy windows: {}", inner.num_rows());
    let tables = [("order_events", orders), ("market_ticks", ticks)];
    assert_matches_batch(WINDOW_JOIN_SQL, &tables, &expected);
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

    assert_matches_batch(JOIN_SQL, &tables, &expected);
}

#[test]
fn regular_joins_match_datafusion_batch() {
    let data = market_data(6_000, JITTER_MS);
    let ticks = source_batch(&data, SourceTable::MarketTicks);
    let orders = source_batch(&data, SourceTable::OrderEvents);
    let expected = expected_regular(&ticks, &orders);
    let (marks, interest) = (&expected[0].1, &expected[1].1);
    let unmatched = nulls_in(marks, "last_price");
    assert!(
        unmatched > 0 && unmatched < marks.num_rows(),
        "orders with and without a trade below their limit ({unmatched} of {})",
        marks.num_rows()
    );
    assert!(interest.num_rows() > 0, "quiet venues with buy interest");
    let tables = [("order_events", orders), ("market_ticks", ticks)];
    let changes = assert_final_tables_match_batch(REGULAR_SQL, &tables, &expected);
    // Rows follow their inputs: a mark is replaced as trades come and go
    // below the limit; a venue whose range widens is deleted from the
    // quiet ones, and its joined rows with it.
    let (mark_upserts, _) = changes["order_marks"];
    assert!(
        mark_upserts > 2 * marks.num_rows(),
        "marks updated as trades arrive: {mark_upserts} upserts for {} orders",
        marks.num_rows()
    );
    let (upserts, deletes) = changes["interest_at_quiet_venues"];
    assert!(
        deletes > 0 && upserts > deletes,
        "interest_at_quiet_venues: {upserts} upserts, {deletes} deletions"
    );
}

/// `'state.ttl'` on a regular join: a symbol that stops trading is
/// forgotten once its last tick is that far behind the ticks' watermark,
/// and its orders' joined rows are deleted; the end of input expires
/// nothing. The final table is the join with the latest tick of every
/// symbol that traded within the TTL of the final watermark.
#[test]
fn a_regular_join_forgets_quiet_keys_after_the_state_ttl() {
    use arrow::array::{AsArray, BooleanArray};
    use arrow::datatypes::TimestampMillisecondType;
    const TTL_MS: i64 = 2_000;
    let data = market_data(6_000, JITTER_MS);
    let orders = source_batch(&data, SourceTable::OrderEvents);
    let ticks = source_batch(&data, SourceTable::MarketTicks);
    // One symbol stops trading halfway through.
    let symbols = ticks
        .column_by_name("symbol")
        .unwrap()
        .as_string::<i32>()
        .clone();
    let ts = ticks
        .column_by_name("ts")
        .unwrap()
        .as_primitive::<TimestampMillisecondType>()
        .clone();
    let quiet = symbols.value(0).to_string();
    let (first, last) = (ts.values()[0], *ts.values().iter().max().unwrap());
    let halfway = first + (last - first) / 2;
    let keep: BooleanArray = (0..ticks.num_rows())
        .map(|i| Some(symbols.value(i) != quiet || ts.value(i) <= halfway))
        .collect();
    let ticks = arrow::compute::filter_record_batch(&ticks, &keep).unwrap();
    // The ticks' final watermark (max event time - the 1 s lateness).
    let cutoff = last - 1_000 - TTL_MS;
    let sql = format!(
        "CREATE STREAM order_activity AS
         SELECT order_id, symbol, COUNT(*) AS events FROM order_events GROUP BY order_id, symbol;
         CREATE STREAM marks WITH ('state.ttl' = '{TTL_MS}ms') AS
         SELECT a.order_id, a.symbol, a.events, t.price AS last_price, t.ts AS tick_ts
         FROM order_activity a JOIN market_ticks t ON a.symbol = t.symbol;"
    );
    let expected = datafusion_batch_over(
        vec![("order_events", with_seq(&orders)), ("market_ticks", with_seq(&ticks))],
        &format!(
            "WITH a AS (SELECT order_id, symbol, COUNT(*) AS events FROM order_events GROUP BY order_id, symbol),
                  t AS (SELECT * FROM (SELECT *, ROW_NUMBER() OVER (PARTITION BY symbol ORDER BY ts DESC, seq DESC) AS rn
                                       FROM market_ticks) WHERE rn = 1 AND ts >= to_timestamp_millis({cutoff}))
             SELECT a.order_id, a.symbol, a.events, t.price AS last_price, t.ts AS tick_ts
             FROM a JOIN t ON a.symbol = t.symbol"
        ),
    );
    let symbols_left = expected
        .column_by_name("symbol")
        .unwrap()
        .as_string::<i32>()
        .clone();
    assert!(
        (0..expected.num_rows()).all(|i| symbols_left.value(i) != quiet)
            && expected.num_rows() > 100,
        "the quiet symbol {quiet} is gone, the others stay ({} rows)",
        expected.num_rows()
    );
    let tables = [("order_events", orders), ("market_ticks", ticks)];
    let changes = assert_final_tables_match_batch(&sql, &tables, &[("marks", expected)]);
    assert!(
        changes["marks"].1 > 0,
        "the quiet symbol's rows were deleted"
    );
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
    for sql in [JOIN_SQL, ASOF_SQL, WINDOW_JOIN_SQL, TEMPORAL_SQL] {
        let whole = run_tables(sql, &tables, 1024, Feed::Interleaved, None);
        for restart_at in [1, 7, 20] {
            let restarted = run_tables(sql, &tables, 1024, Feed::Interleaved, Some(restart_at));
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
}

/// Join state follows the watermarks, not the run's length: over a run
/// many times longer than what a join must remember (the bounds plus the
/// lateness), the rows each join holds stay flat.
#[test]
fn join_state_stays_flat_over_a_long_run() {
    use tickflow_worker::engine::{Catalog, EngineConfig, Pipeline};
    use tickflow_worker::simulator::{SimConfig, generate};
    // One run at a steady rate: five minutes of event time.
    let config = SimConfig {
        seed: 11,
        max_jitter_ms: JITTER_MS,
        ..SimConfig::default()
    };
    let data = generate(config, 300_000);
    let tables = [
        (
            "order_events",
            chunks(&source_batch(&data, SourceTable::OrderEvents), 1024),
        ),
        (
            "market_ticks",
            chunks(&source_batch(&data, SourceTable::MarketTicks), 4096),
        ),
    ];
    let sql = [JOIN_SQL, ASOF_SQL, WINDOW_JOIN_SQL].concat();
    let config = EngineConfig {
        allowed_lateness: std::time::Duration::from_secs(1),
        idle_timeout: None,
        ..EngineConfig::default()
    };
    let mut p = Pipeline::new(&sql, &Catalog::builtin(), &config).unwrap();
    let joins = [
        "marked",
        "next_nasdaq_ask",
        "fill_marks",
        "next_nasdaq_quote",
        "bars_with_flow",
        "busy_windows",
    ];
    let index = |name: &str| p.streams().iter().position(|s| s.name == name).unwrap();
    let joins: Vec<(&str, usize)> = joins.iter().map(|&n| (n, index(n))).collect();
    // Rows held per join after each step.
    let mut held: Vec<Vec<u64>> = vec![Vec::new(); joins.len()];
    let mut out = Vec::new();
    let steps = tables[0].1.len().max(tables[1].1.len());
    let mut rows_fed = 0;
    for i in 0..steps {
        for (table, batches) in &tables {
            if let Some(batch) = batches.get(i) {
                p.push(table, 0, batch, &mut out).unwrap();
                rows_fed += batch.num_rows();
            }
        }
        out.clear();
        for (h, &(_, s)) in held.iter_mut().zip(&joins) {
            h.push(p.stream_metrics(s).open_windows);
        }
    }
    for ((name, _), h) in joins.iter().zip(&held) {
        // State that grew with the run would hold three times as much at
        // the end as at a third of it (a few windows more or less are
        // not growth).
        let third = h.len() / 3;
        let first = *h[..third].iter().max().unwrap();
        let last = *h[2 * third..].iter().max().unwrap();
        println!(
            "{name}: at most {first} rows held in the first third of the run, {last} in the last, of {rows_fed} fed"
        );
        assert!(first > 0, "{name} holds rows while it runs");
        assert!(
            last <= 2 * first + 64,
            "{name}: state grows with the run ({first} rows held in the first third, {last} in the last)"
        );
        assert!(
            (last as usize) * 50 < rows_fed,
            "{name}: {last} rows held of {rows_fed} fed"
        );
    }
}
