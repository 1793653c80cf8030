//! The Nexmark queries of `benchmarks/nexmark/` (q0–q5, q7, q8; q6 is not
//! expressible yet, see its README) over generated
//! events, delivered out of order within their lateness, give exactly
//! the rows DataFusion's batch engine computes from the same events with
//! the standard formulations (`benchmarks/nexmark/batch/`, which the
//! benchmark runs too); the updating q3 and q4 leave the same table.

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

/// The streams of updating queries (a GROUP BY without a window, a join
/// without time bounds): their table, not their changes, is the result.
const UPDATING: [&str; 2] = ["q3", "q4"];

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

/// The standard formulation of a query in DataFusion batch
/// (`benchmarks/nexmark/batch/`), over the same events.
fn reference(name: &str, tables: &[(&str, RecordBatch)]) -> RecordBatch {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join(format!("../benchmarks/nexmark/batch/{name}.sql"));
    datafusion_batch_over(tables.to_vec(), &std::fs::read_to_string(path).unwrap())
}

#[test]
fn nexmark_queries_match_datafusion_batch() {
    let tables = events(300_000);
    for name in ["q0", "q1", "q2", "q3", "q4", "q5", "q7", "q8"] {
        let sql = query(name);
        let want = reference(name, &tables);
        for (feed, chunk) in [
            (Feed::Interleaved, 2048),
            (Feed::OneTableAfterTheOther, 4096),
        ] {
            let got = results(&sql, &tables, chunk, feed, None);
            let what = format!("{name} ({feed:?}, {chunk}-row batches)");
            assert!(want.num_rows() > 0, "{what}: the reference has rows");
            assert_same_rows(&what, &got[name], &want, 1e-9);
        }
    }
}

#[test]
fn a_restored_nexmark_query_emits_what_an_uninterrupted_one_does() {
    let tables = events(100_000);
    for name in ["q3", "q4", "q5", "q7", "q8"] {
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
