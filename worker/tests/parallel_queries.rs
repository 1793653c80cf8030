//! A query split by key over threads gives the rows of one pipeline: every
//! query of `sql/` in one key group, then in 16 key groups on 1, 2 and 4
//! threads, fed the same batches (the comparison with DataFusion batch of
//! each thread count is in `sql_matches_datafusion.rs`); and a restore
//! onto another number of threads.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use arrow::array::RecordBatch;
use arrow::compute::concat_batches;
use common::{assert_same_rows, chunks, market_data, rows_of};
use tickflow_worker::codec::SourceTable;
use tickflow_worker::engine::{
    Catalog, EngineConfig, OutputKind, Partitioning, Pipeline, StreamOutput,
};
use tickflow_worker::queries::{BUILTIN_QUERIES, TRADING_QUERIES};

const KEY_GROUPS: usize = 16;

fn config(key_groups: usize, threads: usize) -> EngineConfig {
    let key_groups = Some(key_groups);
    EngineConfig {
        allowed_lateness: Duration::from_secs(1),
        idle_timeout: None,
        key_groups,
        parallelism: threads,
        ..EngineConfig::default()
    }
}

/// Each stream's output rows (with their kind), as sorted text: the
/// multiset of rows, whatever order the key groups emitted them in.
type Rows = BTreeMap<String, Vec<String>>;

/// What a run emitted: as [`Rows`], and each stream's result rows as one batch.
struct Ran {
    rows: Rows,
    batches: BTreeMap<String, RecordBatch>,
    pipeline: Pipeline,
}

/// The three market tables in batches.
fn tables() -> Vec<(&'static str, Vec<RecordBatch>)> {
    let data = market_data(20_000, 300);
    let [ticks, orders, books] = data.to_batches();
    vec![
        (SourceTable::MarketTicks.table_name(), chunks(&ticks, 1500)),
        (SourceTable::OrderEvents.table_name(), chunks(&orders, 700)),
        (SourceTable::BookUpdates.table_name(), chunks(&books, 900)),
    ]
}

/// Feeds the three market tables, one batch of each in turn, each table
/// finished after its last; with `restart_at`, snapshots before that step
/// and carries on in `after`, restored from it.
fn run(sql: &str, first: &EngineConfig, after: Option<(usize, &EngineConfig)>) -> Ran {
    let tables = tables();
    let mut p = Pipeline::new(sql, &Catalog::builtin(), first).unwrap();
    let mut out: Vec<StreamOutput> = Vec::new();
    let longest = tables.iter().map(|(_, b)| b.len()).max().unwrap();
    let mut step = 0;
    for i in 0..longest {
        for (table, batches) in &tables {
            let Some(batch) = batches.get(i) else {
                continue;
            };
            if let Some((at, config)) = after
                && at == step
            {
                let snapshot = p.snapshot().unwrap();
                p = Pipeline::new(sql, &Catalog::builtin(), config).unwrap();
                p.restore(snapshot).unwrap();
            }
            step += 1;
            p.push(table, 0, batch, &mut out).unwrap();
            if i + 1 == batches.len() {
                p.finish_partition(table, 0, &mut out).unwrap();
            }
        }
    }
    ran(p, out)
}

/// As [`run`] without a restart, but each round (one batch of every table,
/// as one poll of every source reads) is pushed in one step, the way the
/// worker's run loop feeds the engine.
fn run_in_rounds(sql: &str, config: &EngineConfig) -> Ran {
    let tables = tables();
    let mut p = Pipeline::new(sql, &Catalog::builtin(), config).unwrap();
    let mut out: Vec<StreamOutput> = Vec::new();
    let longest = tables.iter().map(|(_, b)| b.len()).max().unwrap();
    for i in 0..longest {
        let mut round = Vec::new();
        for (table, batches) in &tables {
            let Some(batch) = batches.get(i) else {
                continue;
            };
            round.push((*table, 0, batch));
            // A table's end is marked right after its last batch, as in `run`.
            if i + 1 == batches.len() {
                p.push_all(round.drain(..), &mut out).unwrap();
                p.finish_partition(table, 0, &mut out).unwrap();
            }
        }
        p.push_all(round, &mut out).unwrap();
    }
    ran(p, out)
}

fn ran(p: Pipeline, out: Vec<StreamOutput>) -> Ran {
    let mut rows: Rows = BTreeMap::new();
    for o in &out {
        let name = &p.streams()[o.stream].name;
        let text = rows_of(&o.rows)
            .into_iter()
            .map(|r| format!("{:?} {r:?}", o.kind));
        rows.entry(name.clone()).or_default().extend(text);
    }
    for r in rows.values_mut() {
        r.sort();
    }
    let batches = p
        .streams()
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let of_stream = out
                .iter()
                .filter(|o| o.stream == i && o.kind == OutputKind::Rows)
                .map(|o| &o.rows);
            (
                s.name.clone(),
                concat_batches(&s.output_schema, of_stream).unwrap(),
            )
        })
        .collect();
    Ran {
        rows,
        batches,
        pipeline: p,
    }
}

fn all_queries() -> impl Iterator<Item = &'static (&'static str, &'static str)> {
    BUILTIN_QUERIES.iter().chain(&TRADING_QUERIES)
}

#[test]
fn every_query_gives_the_same_rows_on_1_2_and_4_threads_as_in_one_key_group() {
    // Also pushed a round of batches at a time (`Pipeline::push_all`) on 2
    // threads.
    let mut split = Vec::new();
    for (name, sql) in all_queries() {
        let Ran {
            rows: reference,
            pipeline: single,
            ..
        } = run(sql, &config(1, 1), None);
        assert_eq!(single.key_groups(), 1);
        assert!(
            reference.values().map(Vec::len).sum::<usize>() > 0,
            "{name}: the data gives some output"
        );
        for threads in [1, 2, 4] {
            let Ran {
                rows, pipeline: p, ..
            } = run(sql, &config(KEY_GROUPS, threads), None);
            match p.partitioning() {
                Partitioning::ByKey(_) => {
                    assert_eq!(p.key_groups(), KEY_GROUPS, "{name}");
                    assert_eq!(p.threads(), threads, "{name}");
                }
                Partitioning::Whole(why) => {
                    assert_eq!((p.key_groups(), p.threads()), (1, 1), "{name}: {why}");
                }
            }
            for (stream, want) in &reference {
                let got = rows.get(stream).map_or(&[][..], Vec::as_slice);
                assert_eq!(
                    got.len(),
                    want.len(),
                    "{name}.{stream} on {threads} threads: rows"
                );
                assert!(
                    got == want.as_slice(),
                    "{name}.{stream} on {threads} threads: rows differ"
                );
            }
            assert_eq!(
                rows.len(),
                reference.len(),
                "{name}: the same streams have output"
            );
        }
        let Ran {
            rows, pipeline: p, ..
        } = run_in_rounds(sql, &config(KEY_GROUPS, 2));
        assert!(
            rows == reference,
            "{name}: a round of batches pushed at once gives other rows than pushed one by one"
        );
        let why = match p.partitioning() {
            Partitioning::ByKey(columns) => {
                split.push(*name);
                format!("split by {columns:?}")
            }
            Partitioning::Whole(why) => why.clone(),
        };
        eprintln!("{name}: {why}");
    }
    // Every query but the risk monitor splits by symbol; its fills are
    // per trader, and its ASOF join is not split yet.
    assert_eq!(split.len(), all_queries().count() - 1, "{split:?}");
    assert!(!split.contains(&"risk_alerts"));
}

#[test]
fn a_restore_onto_another_number_of_threads_gives_the_uninterrupted_rows() {
    for name in ["ohlc_5s", "rolling_stats", "trading_sessions"] {
        let sql = all_queries().find(|(n, _)| *n == name).unwrap().1;
        let reference = run(sql, &config(KEY_GROUPS, 2), None).batches;
        // A restored variance is merged into a fresh accumulator: floats
        // may move by an ulp, as after any restore.
        let same = |what: &str, got: &BTreeMap<String, RecordBatch>| {
            assert_eq!(got.len(), reference.len());
            for (stream, want) in &reference {
                assert!(want.num_rows() > 0, "{name}.{stream} has rows");
                assert_same_rows(
                    &format!("{name}.{stream} {what}"),
                    &got[stream],
                    want,
                    1e-12,
                );
            }
        };
        for at in [5, 40] {
            let ran = run(
                sql,
                &config(KEY_GROUPS, 2),
                Some((at, &config(KEY_GROUPS, 3))),
            );
            assert_eq!(ran.pipeline.threads(), 3);
            same(&format!("2 → 3 threads at step {at}"), &ran.batches);
        }
        let ran = run(
            sql,
            &config(KEY_GROUPS, 4),
            Some((20, &config(KEY_GROUPS, 1))),
        );
        same("4 → 1 thread", &ran.batches);
    }
}

#[test]
fn a_restore_keeps_the_checkpoints_key_groups_and_uses_at_most_that_many_threads() {
    let sql = BUILTIN_QUERIES[0].1;
    let mut p = Pipeline::new(sql, &Catalog::builtin(), &config(KEY_GROUPS, 2)).unwrap();
    let snapshot = p.snapshot().unwrap();
    let as_configured = EngineConfig {
        parallelism: 3,
        key_groups: None,
        ..EngineConfig::default()
    };
    let mut other = Pipeline::new(sql, &Catalog::builtin(), &as_configured).unwrap();
    assert_eq!(other.key_groups(), 3, "a first start: one group per thread");
    other.restore(snapshot).unwrap();
    assert_eq!((other.key_groups(), other.threads()), (KEY_GROUPS, 3));

    // Two groups leave room for two threads only; one group is one pipeline.
    let mut p = Pipeline::new(sql, &Catalog::builtin(), &config(2, 2)).unwrap();
    let two = p.snapshot().unwrap();
    let mut p = Pipeline::new(sql, &Catalog::builtin(), &config(1, 1)).unwrap();
    let one = p.snapshot().unwrap();
    assert!(
        one.meta.get("key_groups").is_none(),
        "one group: the layout of one pipeline"
    );
    let mut other = Pipeline::new(sql, &Catalog::builtin(), &as_configured).unwrap();
    other.restore(two).unwrap();
    assert_eq!((other.key_groups(), other.threads()), (2, 2));
    other.restore(one).unwrap();
    assert_eq!((other.key_groups(), other.threads()), (1, 1));
}

/// Every row refused while `sql` runs over the market ticks (one batch at
/// a time, then the first batch again, all late by then), and every late
/// row, as sorted text with its stream, reason, error and all its columns.
fn refused_and_late_rows(sql: &str, config: &EngineConfig) -> (Vec<String>, Vec<String>) {
    let (table, batches) = tables().swap_remove(0);
    assert_eq!(table, SourceTable::MarketTicks.table_name());
    let mut p = Pipeline::new(sql, &Catalog::builtin(), config).unwrap();
    let mut out = Vec::new();
    let mut refused = Vec::new();
    for batch in batches.iter().chain(&batches[..1]) {
        p.push(table, 0, batch, &mut out).unwrap();
        refused.extend(p.take_rejected());
    }
    p.finish_partition(table, 0, &mut out).unwrap();
    refused.extend(p.take_rejected());
    let mut refused: Vec<String> = refused
        .iter()
        .flat_map(|r| {
            rows_of(&r.rows).into_iter().map(move |row| {
                format!(
                    "{} {:?} {:?} {} {row:?}",
                    r.source, r.stream, r.reason, r.error
                )
            })
        })
        .collect();
    refused.sort();
    let mut late: Vec<String> = out
        .iter()
        .filter(|o| o.kind == OutputKind::Late)
        .flat_map(|o| {
            rows_of(&o.rows)
                .into_iter()
                .map(move |row| format!("{} {row:?}", o.stream))
        })
        .collect();
    late.sort();
    (refused, late)
}

#[test]
fn rows_a_split_query_refuses_or_finds_late_leave_it_whole() {
    // Split by key, each key group copies only the columns its streams
    // read (symbol, ts, volume, price here); the rows an expression fails
    // on (integer division by zero) still go to the dead letters, and late
    // rows to the late output, with every column: exchange, side, bid and
    // ask included.
    let sql = "CREATE STREAM bars AS SELECT symbol, COUNT(*) AS n, SUM(1 / (volume % 7)) AS s \
               FROM market_ticks GROUP BY symbol, TUMBLE(ts, INTERVAL '5' SECOND) \
               EMIT ON WINDOW CLOSE; \
               CREATE STREAM picked AS SELECT symbol, price, 10 / (volume % 5) AS q \
               FROM market_ticks WHERE price > 0;";
    let (refused, late) = refused_and_late_rows(sql, &config(1, 1));
    assert!(
        refused.len() > 100,
        "the data has rows to refuse: {}",
        refused.len()
    );
    assert!(
        refused.iter().any(|r| r.contains("\"bars\""))
            && refused.iter().any(|r| r.contains("\"picked\""))
    );
    assert!(
        late.len() > 100,
        "the batch pushed again is late: {}",
        late.len()
    );
    for threads in [1, 2] {
        let (split_refused, split_late) = refused_and_late_rows(sql, &config(KEY_GROUPS, threads));
        assert_eq!(split_refused.len(), refused.len(), "{threads} threads");
        assert!(
            split_refused == refused,
            "{threads} threads: other dead letters than one key group's"
        );
        assert_eq!(split_late.len(), late.len(), "{threads} threads");
        assert!(
            split_late == late,
            "{threads} threads: other late rows than one key group's"
        );
    }
}
