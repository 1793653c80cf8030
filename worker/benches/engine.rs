//! Engine throughput: the ohlc_5s query over in-memory batches, next to
//! DataFusion running the same aggregation as a batch query on the same data
//! (one partition, so both use one core), on dense windows (tens of
//! thousands of ticks per window and key) and sparse ones (ten), in event
//! time order and out of order within the allowed lateness; an OVER query
//! (LAG and a 20-row moving average) and a window top-N the same way. Also
//! checkpoint write and restore of 100 k keys.
//!
//! Run: `cargo bench -p tickflow-worker --bench engine`

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::{Float64Array, Int64Array, RecordBatch, StringArray, TimestampMillisecondArray};
use datafusion::datasource::MemTable;
use datafusion::prelude::{SessionConfig, SessionContext};
use tickflow_worker::checkpoint::{Checkpoint, CheckpointStore};
use tickflow_worker::codec::SourceTable;
use tickflow_worker::engine::{Catalog, EngineConfig, Pipeline};

const OHLC_5S: &str = include_str!("../../sql/ohlc_5s.sql");
const BATCH: usize = 8192;

/// How the ticks of a run spread over event time.
#[derive(Clone, Copy)]
struct Shape {
    /// Ticks per 5-second window and symbol; `None`: dense, 100 k ticks
    /// per second of event time over all symbols.
    per_window_and_key: Option<usize>,
    /// Each tick's event time is up to this much (ms) before its place in
    /// the sequence: out of order, but within the allowed lateness (1 s),
    /// so no tick is late and the batch result is the same.
    disorder_ms: u64,
}

const DENSE: Shape = Shape {
    per_window_and_key: None,
    disorder_ms: 0,
};

impl Shape {
    fn ticks_per_second(self, symbols: usize) -> usize {
        self.per_window_and_key
            .map_or(100_000, |k| (symbols * k).div_ceil(5))
    }

    fn label(self) -> String {
        let density = match self.per_window_and_key {
            None => "dense windows".to_string(),
            Some(k) => format!("sparse windows ({k} ticks per window and key)"),
        };
        match self.disorder_ms {
            0 => format!("{density}, in order"),
            d => format!("{density}, out of order by up to {d} ms"),
        }
    }
}

/// `n` ticks over `symbols` symbols spread over event time as `shape`
/// says, in micro-batches. Prices follow a random walk; cheap to make so
/// the measurement is about the engine.
fn ticks(n: usize, symbols: usize, shape: Shape) -> Vec<RecordBatch> {
    let schema = SourceTable::MarketTicks.arrow_schema();
    let names: Vec<String> = (0..symbols).map(|i| format!("SYM{i:04}")).collect();
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let mut prices = vec![100.0f64; symbols];
    let start = 1_767_623_400_000i64;
    let mut out = Vec::new();
    for b in 0..n.div_ceil(BATCH) {
        let rows = BATCH.min(n - b * BATCH);
        let (mut sym, mut px, mut vol, mut ts) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for i in 0..rows {
            let k = (next() % symbols as u64) as usize;
            prices[k] *= 1.0 + ((next() % 2001) as f64 - 1000.0) * 1e-6;
            sym.push(names[k].as_str());
            px.push(prices[k]);
            vol.push((next() % 900 + 100) as i64);
            let at = ((b * BATCH + i) * 1000 / shape.ticks_per_second(symbols)) as i64;
            let early = match shape.disorder_ms {
                0 => 0,
                d => (next() % d) as i64,
            };
            ts.push(start + at - early);
        }
        let cols: Vec<arrow::array::ArrayRef> = vec![
            Arc::new(StringArray::from(sym.clone())),
            Arc::new(StringArray::from(vec!["NASDAQ"; rows])),
            Arc::new(Float64Array::from(px.clone())),
            Arc::new(Float64Array::from(
                px.iter().map(|p| p - 0.01).collect::<Vec<_>>(),
            )),
            Arc::new(Float64Array::from(
                px.iter().map(|p| p + 0.01).collect::<Vec<_>>(),
            )),
            Arc::new(Int64Array::from(vec![100; rows])),
            Arc::new(Int64Array::from(vec![200; rows])),
            Arc::new(Int64Array::from(vol)),
            Arc::new(StringArray::from(vec!["buy"; rows])),
            Arc::new(TimestampMillisecondArray::from(ts)),
        ];
        out.push(RecordBatch::try_new(schema.clone(), cols).unwrap());
    }
    out
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

const BATCH_SQL: &str = "SELECT symbol, date_bin(INTERVAL '5 seconds', ts, TIMESTAMP '1970-01-01T00:00:00') AS window_start, \
    first_value(price ORDER BY ts) AS open, max(price) AS high, min(price) AS low, \
    last_value(price ORDER BY ts) AS close, sum(volume) AS volume, \
    sum(price * volume) / sum(volume) AS vwap, count(*) AS tick_count \
    FROM market_ticks GROUP BY symbol, window_start";

/// The OVER query of the benchmark: LAG and a 20-row average per symbol.
const OVER_SQL: &str = "SELECT symbol, ts, price, \
    (price - LAG(price) OVER (PARTITION BY symbol ORDER BY ts)) / LAG(price) OVER (PARTITION BY symbol ORDER BY ts) * 100 AS change_pct, \
    AVG(volume) OVER (PARTITION BY symbol ORDER BY ts ROWS BETWEEN 20 PRECEDING AND 1 PRECEDING) AS avg_prev_20 \
    FROM market_ticks";

fn datafusion_sql_run(rt: &tokio::runtime::Runtime, batches: &[RecordBatch], sql: &str) -> usize {
    rt.block_on(async {
        let ctx = SessionContext::new_with_config(SessionConfig::new().with_target_partitions(1));
        let schema = batches[0].schema();
        let table = MemTable::try_new(schema, vec![batches.to_vec()]).unwrap();
        ctx.register_table("market_ticks", Arc::new(table)).unwrap();
        let out = ctx.sql(sql).await.unwrap().collect().await.unwrap();
        out.iter().map(|b| b.num_rows()).sum()
    })
}

/// The top-N chain of the benchmark: volume per symbol and 5-second
/// window, the three largest per window.
const TOP_N_STREAM: &str = "CREATE STREAM top_volume AS SELECT * FROM (
  SELECT symbol, window_start, window_end, SUM(volume) AS volume,
         ROW_NUMBER() OVER (PARTITION BY window_start, window_end ORDER BY SUM(volume) DESC, symbol) AS rn
  FROM market_ticks GROUP BY symbol, TUMBLE(ts, INTERVAL '5' SECOND)) WHERE rn <= 3;";

const TOP_N_BATCH: &str = "SELECT * FROM (
  SELECT symbol, date_bin(INTERVAL '5 seconds', ts, TIMESTAMP '1970-01-01T00:00:00') AS window_start,
         SUM(volume) AS volume,
         ROW_NUMBER() OVER (PARTITION BY date_bin(INTERVAL '5 seconds', ts, TIMESTAMP '1970-01-01T00:00:00')
                            ORDER BY SUM(volume) DESC, symbol) AS rn
  FROM market_ticks GROUP BY symbol, date_bin(INTERVAL '5 seconds', ts, TIMESTAMP '1970-01-01T00:00:00')) WHERE rn <= 3";

/// The engine on one thread, as `--parallelism 1` runs it.
fn stream_run(sql: &str, batches: &[RecordBatch]) -> usize {
    stream_run_with(sql, batches, &EngineConfig::default())
}

fn stream_run_with(sql: &str, batches: &[RecordBatch], config: &EngineConfig) -> usize {
    let mut p = Pipeline::new(sql, &Catalog::builtin(), config).unwrap();
    let mut out = Vec::new();
    let mut rows = 0;
    for b in batches {
        p.push("market_ticks", 0, b, &mut out).unwrap();
        rows += out.drain(..).map(|o| o.rows.num_rows()).sum::<usize>();
    }
    p.finish_partition("market_ticks", 0, &mut out).unwrap();
    rows + out.drain(..).map(|o| o.rows.num_rows()).sum::<usize>()
}

/// `batches` as a topic keyed by `symbol` with `partitions` partitions
/// holds them: each row in the partition of its symbol's key group, each
/// partition's rows in their order, in batches of [`BATCH`] rows.
fn by_partition(batches: &[RecordBatch], partitions: usize) -> Vec<Vec<RecordBatch>> {
    let mut rows: Vec<Vec<RecordBatch>> = vec![Vec::new(); partitions];
    for b in batches {
        let shares = tickflow_worker::engine::parallel::route::split(b, 0, partitions).unwrap();
        for (p, share) in shares.into_iter().enumerate() {
            rows[p].extend(share);
        }
    }
    rows.into_iter()
        .map(|parts| {
            let all = arrow::compute::concat_batches(&batches[0].schema(), &parts).unwrap();
            (0..all.num_rows())
                .step_by(BATCH)
                .map(|at| all.slice(at, BATCH.min(all.num_rows() - at)))
                .collect()
        })
        .collect()
}

/// `sql` over a partitioned source as a worker reading a keyed topic runs
/// it: one key group per partition, each poll round (one batch of every
/// partition) pushed as one step.
fn stream_run_by_partition(sql: &str, partitions: &[Vec<RecordBatch>], threads: usize) -> usize {
    let config = EngineConfig {
        parallelism: threads,
        ..EngineConfig::default()
    };
    let mut p = Pipeline::new(sql, &Catalog::builtin(), &config).unwrap();
    let n = partitions.len();
    p.declare_partitions("market_ticks", n);
    p.group_by_partition(n, &(0..n).collect::<Vec<_>>())
        .unwrap();
    let mut out = Vec::new();
    let mut rows = 0;
    let rounds = partitions.iter().map(Vec::len).max().unwrap_or(0);
    for r in 0..rounds {
        let round = partitions
            .iter()
            .enumerate()
            .filter_map(|(i, part)| part.get(r).map(|b| ("market_ticks", i, b)));
        p.push_all(round, &mut out).unwrap();
        rows += out.drain(..).map(|o| o.rows.num_rows()).sum::<usize>();
    }
    for i in 0..n {
        p.finish_partition("market_ticks", i, &mut out).unwrap();
    }
    rows + out.drain(..).map(|o| o.rows.num_rows()).sum::<usize>()
}

/// One comparison table: `stream_sql` through the streaming pipeline and
/// `batch_sql` in DataFusion over the same `events` ticks of `shape`, for
/// 8 and 1000 symbols, best of `runs`; both must produce the same number of
/// rows.
fn compare(
    rt: &tokio::runtime::Runtime,
    title: &str,
    shape: Shape,
    events: usize,
    runs: usize,
    stream_sql: &str,
    batch_sql: &str,
) {
    println!(
        "\n{title}, {}: tickflow streaming engine vs DataFusion batch (1 core each, best of {runs})",
        shape.label()
    );
    println!(
        "{:<10} {:>10} {:>16} {:>16} {:>8} {:>8}",
        "symbols", "events", "engine ev/s", "datafusion ev/s", "ratio", "rows"
    );
    for symbols in symbol_counts() {
        let batches = ticks(events, symbols, shape);
        let (t_engine, rows_engine) = best_of(runs, || stream_run(stream_sql, &batches));
        let (t_df, rows_df) = best_of(runs, || datafusion_sql_run(rt, &batches, batch_sql));
        assert_eq!(rows_engine, rows_df, "{title}: both produce the same rows");
        let e = events as f64 / t_engine.as_secs_f64();
        let d = events as f64 / t_df.as_secs_f64();
        println!(
            "{symbols:<10} {events:>10} {:>16.0} {:>16.0} {:>8.2} {rows_engine:>8}",
            e,
            d,
            e / d
        );
    }
}

/// The universes compared: 8 and 1000 symbols, or the comma-separated
/// counts in `TICKFLOW_BENCH_SYMBOLS` (for profiling one of them).
fn symbol_counts() -> Vec<usize> {
    numbers_in_env("TICKFLOW_BENCH_SYMBOLS").unwrap_or_else(|| vec![8, 1000])
}

/// The comma-separated numbers in environment variable `name`, if set.
fn numbers_in_env(name: &str) -> Option<Vec<usize>> {
    std::env::var(name)
        .ok()
        .map(|v| v.split(',').filter_map(|n| n.trim().parse().ok()).collect())
}

/// ohlc_5s over dense and sparse windows, in order and out of order.
fn ohlc_benchmark(rt: &tokio::runtime::Runtime) {
    compare(rt, "ohlc_5s", DENSE, 4_000_000, 5, OHLC_5S, BATCH_SQL);
    let out_of_order = Shape {
        disorder_ms: 999,
        ..DENSE
    };
    compare(
        rt,
        "ohlc_5s",
        out_of_order,
        4_000_000,
        3,
        OHLC_5S,
        BATCH_SQL,
    );
    sparse_benchmark(rt);
}

/// ohlc_5s with ten ticks per window and key: 400 k windows out of 4 M
/// ticks, so the cost per emitted window dominates.
fn sparse_benchmark(rt: &tokio::runtime::Runtime) {
    for disorder_ms in [0, 999] {
        let sparse = Shape {
            per_window_and_key: Some(10),
            disorder_ms,
        };
        compare(rt, "ohlc_5s", sparse, 4_000_000, 3, OHLC_5S, BATCH_SQL);
    }
}

/// ohlc_5s on 2 threads beside one pipeline on one thread: with one key
/// group per thread and with 16 (room to grow to 16 threads or workers),
/// and 2 key groups on one thread (the cost of the split alone). Scaling
/// efficiency: events/s on 2 threads ÷ (2 × events/s of one pipeline).
fn threads_benchmark() {
    let shapes = [
        DENSE,
        Shape {
            disorder_ms: 999,
            ..DENSE
        },
        Shape {
            per_window_and_key: Some(10),
            disorder_ms: 999,
        },
    ];
    let config = |key_groups, parallelism| EngineConfig {
        key_groups: Some(key_groups),
        parallelism,
        ..EngineConfig::default()
    };
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    // `TICKFLOW_BENCH_SETUPS=2` (comma-separated column numbers, 0 = 1
    // thread) runs only those set-ups (for profiling one of them).
    let only = numbers_in_env("TICKFLOW_BENCH_SETUPS");
    println!(
        "\nohlc_5s on threads ({cores} cores here): split by symbol into key groups, or a source \
         partitioned by symbol (2 partitions, a poll of both per step); events/s, median of \
         {THREAD_ROUNDS} rounds, every set-up once per round; eff. is the median of each round's \
         2 threads / (2 x 1 thread)"
    );
    println!(
        "{:<58} {:>7} {:>13} {:>13} {:>13} {:>6} {:>13} {:>6} {:>13} {:>13} {:>6}",
        "shape",
        "symbols",
        "1 thread",
        "1 thr 2 gr.",
        "2 thr 2 gr.",
        "eff.",
        "2 thr 16 gr.",
        "eff.",
        "1 thr 2 part.",
        "2 thr 2 part.",
        "eff."
    );
    for shape in shapes {
        for symbols in symbol_counts() {
            let events = 4_000_000;
            let batches = ticks(events, symbols, shape);
            let partitions = by_partition(&batches, 2);
            let by_key = |k, n| stream_run_with(OHLC_5S, &batches, &config(k, n));
            let by_part = |n| stream_run_by_partition(OHLC_5S, &partitions, n);
            let setups: [&dyn Fn() -> usize; 6] = [
                &|| by_key(1, 1),
                &|| by_key(2, 1),
                &|| by_key(2, 2),
                &|| by_key(16, 2),
                &|| by_part(1),
                &|| by_part(2),
            ];
            // rates[s][r]: set-up s in round r.
            let mut rates = vec![Vec::new(); setups.len()];
            let mut rows = vec![0; setups.len()];
            for _ in 0..THREAD_ROUNDS {
                for (s, run) in setups.iter().enumerate() {
                    if !only.as_ref().is_none_or(|o| o.contains(&s)) {
                        rates[s].push(f64::NAN);
                        continue;
                    }
                    let t = Instant::now();
                    rows[s] = run();
                    rates[s].push(events as f64 / t.elapsed().as_secs_f64());
                }
            }
            assert!(
                only.is_some() || rows[..4].iter().all(|&r| r == rows[0]) && rows[4] == rows[5],
                "the same rows on any thread count: {rows:?}"
            );
            let efficiency = |two: usize| {
                median(
                    rates[two]
                        .iter()
                        .zip(&rates[0])
                        .map(|(two, one)| two / (2.0 * one))
                        .collect(),
                )
            };
            let rate = |s: usize| median(rates[s].clone());
            println!(
                "{:<58} {symbols:>7} {:>13.0} {:>13.0} {:>13.0} {:>6.2} {:>13.0} {:>6.2} {:>13.0} {:>13.0} {:>6.2}",
                shape.label(),
                rate(0),
                rate(1),
                rate(2),
                efficiency(2),
                rate(3),
                efficiency(3),
                rate(4),
                rate(5),
                efficiency(5)
            );
        }
    }
}

/// Rounds of the threads benchmark: this machine's speed drifts by tens of
/// per cent over minutes, so set-ups are compared within a round.
const THREAD_ROUNDS: usize = 5;

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// Top-N: 4 M ticks in, three rows per window out.
fn top_n_benchmark(rt: &tokio::runtime::Runtime) {
    let title = "top-N (volume per symbol and 5 s window, top 3)";
    compare(rt, title, DENSE, 4_000_000, 3, TOP_N_STREAM, TOP_N_BATCH);
}

/// OVER: every tick in, every tick out with its LAG and moving average.
fn over_benchmark(rt: &tokio::runtime::Runtime) {
    let title = "OVER (LAG + 20-row AVG per symbol)";
    let stream = format!("CREATE STREAM price_change AS {OVER_SQL};");
    compare(rt, title, DENSE, 2_000_000, 3, &stream, OVER_SQL);
}

fn main() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    // `TICKFLOW_BENCH=over` (or `top-n`, `ohlc`, `sparse`) runs only that
    // part (for profiling).
    match std::env::var("TICKFLOW_BENCH").as_deref() {
        Ok("over") => return over_benchmark(&rt),
        Ok("top-n") => return top_n_benchmark(&rt),
        Ok("ohlc") => return ohlc_benchmark(&rt),
        Ok("sparse") => return sparse_benchmark(&rt),
        Ok("threads") => return threads_benchmark(),
        _ => {}
    }
    ohlc_benchmark(&rt);
    threads_benchmark();
    over_benchmark(&rt);
    top_n_benchmark(&rt);

    // Checkpoint and restore of 100 k keys: open 5-second windows of 100 k symbols.
    let keys = 100_000;
    let batches = ticks(keys * 3, keys, DENSE);
    let mut p = Pipeline::new(OHLC_5S, &Catalog::builtin(), &EngineConfig::default()).unwrap();
    let mut out = Vec::new();
    for b in &batches {
        p.push("market_ticks", 0, b, &mut out).unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    let store = CheckpointStore::open(dir.path(), 2).unwrap();
    let (t_snap, snapshot) = best_of(3, || p.snapshot().unwrap());
    let state_rows: usize = snapshot.states.values().map(|b| b.num_rows()).sum();
    let mut id = 0;
    let (t_write, info) = best_of(3, || {
        id += 1;
        store
            .write(&Checkpoint {
                id,
                created_at_ms: 0,
                sources: Default::default(),
                sinks: Default::default(),
                sink_states: BTreeMap::new(),
                engine: p.snapshot().unwrap(),
            })
            .unwrap()
    });
    let (t_read, cp) = best_of(3, || store.latest().unwrap().unwrap());
    let (t_restore, _) = best_of(3, || {
        let mut fresh =
            Pipeline::new(OHLC_5S, &Catalog::builtin(), &EngineConfig::default()).unwrap();
        let snap = tickflow_worker::engine::EngineSnapshot {
            meta: cp.engine.meta.clone(),
            states: cp.engine.states.clone(),
        };
        fresh.restore(snap).unwrap();
    });
    println!(
        "\ncheckpoint of {state_rows} keyed window states ({} bytes on disk)",
        info.bytes
    );
    println!("  snapshot {:>8.1} ms", t_snap.as_secs_f64() * 1e3);
    println!(
        "  snapshot + write (fsync) {:>8.1} ms",
        t_write.as_secs_f64() * 1e3
    );
    println!("  read {:>8.1} ms", t_read.as_secs_f64() * 1e3);
    println!(
        "  restore into a new pipeline {:>8.1} ms",
        t_restore.as_secs_f64() * 1e3
    );
}
