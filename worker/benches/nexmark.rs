//! Nexmark over in-memory batches: each query of `benchmarks/nexmark/`
//! through the streaming pipeline, next to DataFusion running its standard
//! batch formulation (`benchmarks/nexmark/batch/`) over the same events,
//! one core each; the published per-core figures of Flink and RisingWave
//! are printed beside them as context.
//!
//! Events/s counts every Nexmark event (person, auction and bid), as the
//! Nexmark results of Flink and RisingWave do.
//!
//! Run: `cargo bench -p tickflow-worker --bench nexmark`
//! (`TICKFLOW_NEXMARK_EVENTS` sets the number of events, default 5 M;
//! `TICKFLOW_NEXMARK_QUERIES=q5,q7` runs only those.)

use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::RecordBatch;
use datafusion::datasource::MemTable;
use datafusion::prelude::{SessionConfig, SessionContext};
use tickflow_worker::engine::{Catalog, EngineConfig, Pipeline};
use tickflow_worker::simulator::nexmark::{NexmarkConfig, NexmarkGenerator, NexmarkTable};

/// Events per generated chunk: the three tables of a chunk are pushed in
/// turn, as a live source delivers them (about 0.4 s of event time).
const CHUNK: usize = 4096;

/// The queries with their published per-core figures (events/s): Flink
/// 1.13 and RisingWave, from the references; `None` where none was
/// given.
const QUERIES: [(&str, Option<f64>, Option<f64>); 8] = [
    ("q0", Some(155e3), Some(118e3)),
    ("q1", None, None),
    ("q2", None, None),
    ("q3", None, None),
    ("q4", None, None),
    ("q5", Some(22.1e3), Some(5.2e3)),
    ("q7", Some(12.3e3), Some(20.3e3)),
    ("q8", Some(146e3), Some(60.7e3)),
];

fn sql_file(path: &str) -> String {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../benchmarks/nexmark");
    std::fs::read_to_string(root.join(path)).unwrap()
}

/// `events` Nexmark events (default configuration), in chunks of the three
/// tables.
fn generate(events: u64) -> Vec<[RecordBatch; 3]> {
    let config = NexmarkConfig {
        seed: 1,
        events: Some(events),
        ..NexmarkConfig::default()
    };
    let mut generator = NexmarkGenerator::new(config);
    let mut chunks = Vec::new();
    while generator.remaining() > 0 {
        chunks.push(generator.next_batch(CHUNK).to_batches());
    }
    chunks
}

/// The streaming run: every chunk's tables pushed in turn, then each input
/// finished; returns the rows of stream `name`.
fn stream_run(sql: &str, name: &str, chunks: &[[RecordBatch; 3]]) -> usize {
    let mut p = Pipeline::new(sql, &Catalog::builtin(), &EngineConfig::default()).unwrap();
    let stream = p.streams().iter().position(|s| s.name == name).unwrap();
    let mut out = Vec::new();
    let mut rows = 0;
    let mut count = |out: &mut Vec<tickflow_worker::engine::StreamOutput>| {
        rows += out
            .drain(..)
            .filter(|o| o.stream == stream)
            .map(|o| o.rows.num_rows())
            .sum::<usize>();
    };
    for chunk in chunks {
        for (table, batch) in NexmarkTable::ALL.iter().zip(chunk) {
            p.push(table.name(), 0, batch, &mut out).unwrap();
            count(&mut out);
        }
    }
    for table in NexmarkTable::ALL {
        p.finish_partition(table.name(), 0, &mut out).unwrap();
        count(&mut out);
    }
    rows
}

/// DataFusion batch over the same events (one partition); returns the
/// rows of the result.
fn datafusion_run(rt: &tokio::runtime::Runtime, sql: &str, tables: &[Vec<RecordBatch>]) -> usize {
    rt.block_on(async {
        let ctx = SessionContext::new_with_config(SessionConfig::new().with_target_partitions(1));
        for (table, batches) in NexmarkTable::ALL.iter().zip(tables) {
            let mem = MemTable::try_new(table.arrow_schema(), vec![batches.clone()]).unwrap();
            ctx.register_table(table.name(), Arc::new(mem)).unwrap();
        }
        let out = ctx.sql(sql).await.unwrap().collect().await.unwrap();
        out.iter().map(|b| b.num_rows()).sum()
    })
}

fn best_of<T>(runs: usize, mut f: impl FnMut() -> T) -> (Duration, T) {
    let mut best = Duration::MAX;
    let mut last = None;
    for _ in 0..runs {
        let t = Instant::now();
        let r = f();
        best = best.min(t.elapsed());
        last = Some(r);
    }
    (best, last.unwrap())
}

fn per_second(events: u64, t: Duration) -> f64 {
    events as f64 / t.as_secs_f64()
}

fn main() {
    let events: u64 = std::env::var("TICKFLOW_NEXMARK_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5_000_000);
    let only: Option<Vec<String>> = std::env::var("TICKFLOW_NEXMARK_QUERIES")
        .ok()
        .map(|v| v.split(',').map(|q| q.trim().to_string()).collect());
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let chunks = generate(events);
    let tables: Vec<Vec<RecordBatch>> = (0..3)
        .map(|t| chunks.iter().map(|c| c[t].clone()).collect())
        .collect();
    let runs = 3;
    println!(
        "Nexmark, {events} events (person : auction : bid = 1 : 3 : 46), in-memory batches, 1 core each, best of {runs}"
    );
    println!(
        "{:<6} {:>14} {:>16} {:>7} {:>10} {:>10} {:>10}",
        "query", "tickflow ev/s", "datafusion ev/s", "ratio", "flink/core", "rw/core", "rows"
    );
    for (name, flink, risingwave) in QUERIES {
        if only.as_ref().is_some_and(|o| !o.iter().any(|q| q == name)) {
            continue;
        }
        let stream_sql = sql_file(&format!("{name}.sql"));
        let batch_sql = sql_file(&format!("batch/{name}.sql"));
        let (t_stream, rows) = best_of(runs, || stream_run(&stream_sql, name, &chunks));
        let (t_batch, batch_rows) = best_of(runs, || datafusion_run(&rt, &batch_sql, &tables));
        // q4 is an updating stream: it emits changes, the batch its table
        // (q3 is one too, but each auction's row is emitted once).
        if name != "q4" {
            assert_eq!(rows, batch_rows, "{name}: both produce the same rows");
        }
        let (s, b) = (per_second(events, t_stream), per_second(events, t_batch));
        let fmt = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.0}"));
        println!(
            "{name:<6} {s:>14.0} {b:>16.0} {:>7.2} {:>10} {:>10} {rows:>10}",
            s / b,
            fmt(flink),
            fmt(risingwave)
        );
    }
}
