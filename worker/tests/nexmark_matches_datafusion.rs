//! The Nexmark queries of `benchmarks/nexmark/` (q0–q2, q4, q5, q7, q8;
//! q3 and q6 are not expressible yet, see its README) over generated
//! events, delivered out of order within their lateness, give exactly
//! the rows DataFusion's batch engine computes from the same events with
//! the standard formulations; the updating q4 leaves the same table.

mod common;

use arrow::array::RecordBatch;
use common::*;
use tickflow_worker::simulator::nexmark::{NexmarkConfig, NexmarkGenerator};

/// `count` Nexmark events (default rates and mix), shuffled in groups of
/// 100 events (10 ms of event time, well within the 4 s lateness).
fn events(count: u64) -> Vec<(&'static str, RecordBatch)> {
    let config = NexmarkConfig {
        seed: 5,
        events: Some(count),
        out_of_order_group_size: 100,
        ..NexmarkConfig::default()
    };
    let out = NexmarkGenerator::new(config).next_batch(count as usize);
    let [person, auction, bid] = out.to_batches();
    vec![("person", person), ("auction", auction), ("bid", bid)]
}

/// The streams of updating queries (GROUP BY without a window): their
/// table, not their changes, is the result.
const UPDATING: [&str; 1] = ["q4"];

/// Each stream's result: its rows, or an updating stream's final table.
fn results(
    sql: &str,
    tables: &[(&str, RecordBatch)],
    chunk: usize,
    feed: Feed,
    restart_at: Option<usize>,
) -> std::collections::BTreeMap<String, RecordBatch> {
    let (streams, out) = run_tables_raw(sql, tables, chunk, feed, restart_at);
    let finals = final_tables(&streams, &out);
    streams
        .iter()
        .enumerate()
        .map(|(i, (name, schema, _))| {
            let rows = match UPDATING.contains(&name.as_str()) {
                true => finals[name].0.clone(),
                false => {
                    let batches = out.iter().filter(|o| o.stream == i).map(|o| &o.rows);
                    arrow::compute::concat_batches(schema, batches).unwrap()
                }
            };
            (name.clone(), rows)
        })
        .collect()
}

fn query(name: &str) -> String {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join(format!("../benchmarks/nexmark/{name}.sql"));
    std::fs::read_to_string(path).unwrap()
}

/// `table` of `tables` with its rows put in their windows.
fn windowed(tables: &[(&str, RecordBatch)], table: &str, window: RefWindow) -> RecordBatch {
    let (_, rows) = tables.iter().find(|(n, _)| *n == table).unwrap();
    assign_windows_on(rows, window, "", "date_time")
}

/// The standard formulation of each query in DataFusion batch: the
/// streams to compare and their rows.
fn reference(name: &str, tables: &[(&str, RecordBatch)]) -> Vec<(&'static str, RecordBatch)> {
    let plain = || tables.to_vec();
    let ten_seconds = RefWindow::Tumble(10_000);
    match name {
        "q0" => vec![(
            "q0",
            datafusion_batch_over(
                plain(),
                "SELECT auction, bidder, price, date_time, extra FROM bid",
            ),
        )],
        "q1" => vec![(
            "q1",
            datafusion_batch_over(
                plain(),
                "SELECT auction, bidder, 0.908 * price AS price, date_time, extra FROM bid",
            ),
        )],
        "q2" => vec![(
            "q2",
            datafusion_batch_over(
                plain(),
                "SELECT auction, price FROM bid WHERE auction % 123 = 0",
            ),
        )],
        "q4" => vec![(
            "q4",
            datafusion_batch_over(
                plain(),
                "SELECT category, AVG(final) AS avg_final FROM (
                   SELECT a.id, a.category, MAX(b.price) AS final
                   FROM auction a JOIN bid b
                     ON a.id = b.auction AND b.date_time BETWEEN a.date_time AND a.expires
                   GROUP BY a.id, a.category) q
                 GROUP BY category",
            ),
        )],
        "q5" => {
            let hop = RefWindow::Hop {
                slide: 2_000,
                size: 10_000,
            };
            vec![(
                "q5",
                datafusion_batch_over(
                    vec![("bid", windowed(tables, "bid", hop))],
                    "SELECT auction, num, window_start, window_end FROM (
                       SELECT auction, num, window_start, window_end,
                              RANK() OVER (PARTITION BY window_start, window_end ORDER BY num DESC) AS rk
                       FROM (SELECT auction, window_start, window_end, COUNT(*) AS num
                             FROM bid GROUP BY auction, window_start, window_end) counts
                     ) WHERE rk = 1",
                ),
            )]
        }
        "q7" => vec![(
            "q7",
            datafusion_batch_over(
                vec![
                    ("bid", windowed(tables, "bid", RefWindow::None)),
                    ("bid_windows", windowed(tables, "bid", ten_seconds)),
                ],
                "SELECT b.auction, b.price, b.bidder, b.date_time, b.extra, m.window_end
                 FROM (SELECT MAX(price) AS maxprice, window_end FROM bid_windows
                       GROUP BY window_start, window_end) m
                 JOIN bid b ON b.price = m.maxprice
                  AND b.date_time >= m.window_end - INTERVAL '10' SECOND
                  AND b.date_time < m.window_end",
            ),
        )],
        "q8" => vec![(
            "q8",
            datafusion_batch_over(
                vec![
                    ("person", windowed(tables, "person", ten_seconds)),
                    ("auction", windowed(tables, "auction", ten_seconds)),
                ],
                "SELECT p.id, p.name, p.window_start
                 FROM (SELECT DISTINCT id, name, window_start, window_end FROM person) p
                 JOIN (SELECT DISTINCT seller, window_start, window_end FROM auction) a
                   ON p.id = a.seller AND p.window_start = a.window_start
                  AND p.window_end = a.window_end",
            ),
        )],
        other => panic!("no reference for {other}"),
    }
}

#[test]
fn nexmark_queries_match_datafusion_batch() {
    let tables = events(300_000);
    for name in ["q0", "q1", "q2", "q4", "q5", "q7", "q8"] {
        let sql = query(name);
        let expected = reference(name, &tables);
        for (feed, chunk) in [
            (Feed::Interleaved, 2048),
            (Feed::OneTableAfterTheOther, 4096),
        ] {
            let got = results(&sql, &tables, chunk, feed, None);
            for (stream, want) in &expected {
                let what = format!("{name}: {stream} ({feed:?}, {chunk}-row batches)");
                assert!(want.num_rows() > 0, "{what}: the reference has rows");
                assert_same_rows(&what, &got[*stream], want, 1e-9);
            }
        }
    }
}

#[test]
fn a_restored_nexmark_query_emits_what_an_uninterrupted_one_does() {
    let tables = events(100_000);
    for name in ["q4", "q5", "q7", "q8"] {
        let sql = query(name);
        let whole = results(&sql, &tables, 1024, Feed::Interleaved, None);
        for restart_at in [3, 40] {
            let restarted = results(&sql, &tables, 1024, Feed::Interleaved, Some(restart_at));
            for (stream, rows) in &restarted {
                assert_same_rows(
                    &format!("{name}: {stream} (restored before batch {restart_at})"),
                    rows,
                    &whole[stream],
                    1e-12,
                );
            }
        }
    }
}
