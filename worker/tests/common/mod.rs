//! Shared helpers of the integration tests: simulator data, a batch
//! reference computed by DataFusion, and row comparison.
#![allow(dead_code)]

use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, Int64Array, RecordBatch, TimestampMillisecondArray, UInt32Array,
};
use arrow::compute::{concat_batches, take};
use arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use datafusion::datasource::MemTable;
use datafusion::prelude::{SessionConfig, SessionContext};
use tickflow_worker::codec::SourceTable;
use tickflow_worker::engine::{Catalog, EngineConfig, OutputKind, Pipeline, StreamOutput};
use tickflow_worker::simulator::{SimConfig, SimOutput, generate};

/// Two simulated runs 30 s apart (so SESSION windows close in the middle),
/// delivered out of order by up to `jitter_ms`.
pub fn market_data(ticks_per_run: usize, jitter_ms: i64) -> SimOutput {
    let first = SimConfig {
        seed: 7,
        max_jitter_ms: jitter_ms,
        ..SimConfig::default()
    };
    let mut out = generate(first.clone(), ticks_per_run);
    let end = out.ticks.iter().map(|t| t.ts).max().unwrap();
    let second = SimConfig {
        seed: 8,
        start_time_ms: end + 30_000,
        ..first
    };
    out.append(generate(second, ticks_per_run));
    out
}

/// Cuts a batch into batches of `size` rows (the engine's micro-batches).
pub fn chunks(batch: &RecordBatch, size: usize) -> Vec<RecordBatch> {
    (0..batch.num_rows())
        .step_by(size)
        .map(|o| batch.slice(o, size.min(batch.num_rows() - o)))
        .collect()
}

/// A window in GROUP BY, as the reference assigns it.
#[derive(Clone, Copy, Debug)]
pub enum RefWindow {
    None,
    Tumble(i64),
    Hop { slide: i64, size: i64 },
    Session(i64),
}

/// Reads the window of a query from its SQL text.
pub fn window_of(sql: &str) -> RefWindow {
    let up = sql.to_ascii_uppercase();
    let secs = |s: &str| -> i64 {
        let n: i64 = s
            .trim()
            .trim_start_matches("INTERVAL")
            .trim()
            .trim_matches('\'')
            .split('\'')
            .next()
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        if s.contains("MINUTE") {
            n * 60_000
        } else {
            n * 1000
        }
    };
    let args = |name: &str| -> Option<Vec<String>> {
        let i = up.find(&format!("{name}("))?;
        let rest = &up[i + name.len() + 1..];
        let end = rest.find(")").unwrap();
        Some(rest[..end].split(',').map(|s| s.to_string()).collect())
    };
    if let Some(a) = args("TUMBLE") {
        RefWindow::Tumble(secs(&a[1]))
    } else if let Some(a) = args("HOP") {
        RefWindow::Hop {
            slide: secs(&a[1]),
            size: secs(&a[2]),
        }
    } else if let Some(a) = args("SESSION") {
        RefWindow::Session(secs(&a[1]))
    } else {
        RefWindow::None
    }
}

/// Turns a streaming query into the equivalent batch query over a table that
/// carries `window_start`/`window_end`: the window call becomes those
/// columns, FIRST_VALUE/LAST_VALUE get their event-time order spelled out.
pub fn batch_sql(stream_sql: &str) -> String {
    let body = stream_sql.trim().trim_end_matches(';');
    let body = &body[body.to_ascii_uppercase().find("SELECT").unwrap()..];
    let mut q = body.to_string();
    for emit in ["EMIT ON WINDOW CLOSE", "EMIT CHANGES"] {
        if let Some(i) = q.to_ascii_uppercase().find(emit) {
            q.truncate(i);
        }
    }
    let up = q.to_ascii_uppercase();
    for name in ["TUMBLE(", "HOP(", "SESSION("] {
        if let Some(i) = up.find(name) {
            let end = i + up[i..].find(')').unwrap() + 1;
            q.replace_range(i..end, "window_start, window_end");
            let from = q
                .to_ascii_uppercase()
                .find("\nFROM")
                .or_else(|| q.to_ascii_uppercase().find(" FROM"))
                .unwrap();
            q.insert_str(from, ",\n       window_start, window_end");
            break;
        }
    }
    let re = |q: String, f: &str| -> String {
        let mut out = String::new();
        let mut rest = q.as_str();
        while let Some(i) = rest.to_ascii_uppercase().find(&format!("{f}(")) {
            let open = i + f.len() + 1;
            let close = open + rest[open..].find(')').unwrap();
            out.push_str(&rest[..close]);
            out.push_str(" ORDER BY ts)");
            rest = &rest[close + 1..];
        }
        out.push_str(rest);
        out
    };
    re(re(q, "FIRST_VALUE"), "LAST_VALUE")
}

/// Replicates each row once per window it belongs to, adding the bounds.
pub fn assign_windows(batch: &RecordBatch, window: RefWindow, key: &str) -> RecordBatch {
    let ts: Vec<i64> = batch
        .column_by_name("ts")
        .unwrap()
        .as_primitive::<arrow::datatypes::TimestampMillisecondType>()
        .values()
        .to_vec();
    let (mut idx, mut starts, mut ends) = (Vec::new(), Vec::new(), Vec::new());
    match window {
        RefWindow::None => return batch.clone(),
        RefWindow::Tumble(size) => {
            for (i, t) in ts.iter().enumerate() {
                let s = t.div_euclid(size) * size;
                idx.push(i as u32);
                starts.push(s);
                ends.push(s + size);
            }
        }
        RefWindow::Hop { slide, size } => {
            for (i, t) in ts.iter().enumerate() {
                // every multiple of `slide` in (t - size, t]
                let mut s = t.div_euclid(slide) * slide;
                while s > t - size {
                    idx.push(i as u32);
                    starts.push(s);
                    ends.push(s + size);
                    s -= slide;
                }
            }
        }
        RefWindow::Session(gap) => {
            let keys = batch
                .column_by_name(key)
                .unwrap()
                .as_string::<i32>()
                .clone();
            let mut order: Vec<usize> = (0..ts.len()).collect();
            order.sort_by(|&a, &b| (keys.value(a), ts[a]).cmp(&(keys.value(b), ts[b])));
            let mut i = 0;
            while i < order.len() {
                let mut j = i + 1;
                while j < order.len()
                    && keys.value(order[j]) == keys.value(order[i])
                    && ts[order[j]] - ts[order[j - 1]] < gap
                {
                    j += 1;
                }
                let (s, e) = (ts[order[i]], ts[order[j - 1]] + gap);
                for &r in &order[i..j] {
                    idx.push(r as u32);
                    starts.push(s);
                    ends.push(e);
                }
                i = j;
            }
        }
    }
    let idx = UInt32Array::from(idx);
    let mut cols: Vec<ArrayRef> = batch
        .columns()
        .iter()
        .map(|c| take(c.as_ref(), &idx, None).unwrap())
        .collect();
    cols.push(Arc::new(TimestampMillisecondArray::from(starts)));
    cols.push(Arc::new(TimestampMillisecondArray::from(ends)));
    let mut fields: Vec<Field> = batch
        .schema()
        .fields()
        .iter()
        .map(|f| f.as_ref().clone())
        .collect();
    let ts_type = DataType::Timestamp(TimeUnit::Millisecond, None);
    fields.push(Field::new("window_start", ts_type.clone(), false));
    fields.push(Field::new("window_end", ts_type, false));
    RecordBatch::try_new(Arc::new(Schema::new(fields)), cols).unwrap()
}

/// Runs `sql` in DataFusion (batch, one partition) over `table`.
pub fn datafusion_batch(table_name: &str, table: RecordBatch, sql: &str) -> RecordBatch {
    datafusion_batch_over(vec![(table_name, table)], sql)
}

/// Runs `sql` in DataFusion (batch, one partition) over named tables.
pub fn datafusion_batch_over(tables: Vec<(&str, RecordBatch)>, sql: &str) -> RecordBatch {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    rt.block_on(async {
        let ctx = SessionContext::new_with_config(SessionConfig::new().with_target_partitions(1));
        for (table_name, table) in tables {
            let schema = table.schema();
            ctx.register_table(
                table_name,
                Arc::new(MemTable::try_new(schema.clone(), vec![vec![table]]).unwrap()),
            )
            .unwrap();
        }
        let df = ctx
            .sql(sql)
            .await
            .unwrap_or_else(|e| panic!("reference query failed: {e}\n{sql}"));
        let out_schema = Arc::new(df.schema().as_arrow().clone());
        let batches = df.collect().await.unwrap();
        // Some operators hand out Utf8View where the plan says Utf8.
        let batches: Vec<RecordBatch> = batches
            .iter()
            .map(|b| {
                let columns = b
                    .columns()
                    .iter()
                    .zip(out_schema.fields())
                    .map(|(c, f)| arrow::compute::cast(c, f.data_type()).unwrap())
                    .collect();
                RecordBatch::try_new(Arc::clone(&out_schema), columns).unwrap()
            })
            .collect();
        concat_batches(&out_schema, &batches).unwrap()
    })
}

/// A cell for comparison.
#[derive(Clone, Debug, PartialEq, PartialOrd)]
pub enum Cell {
    Null,
    Int(i64),
    Float(f64),
    Text(String),
}

pub fn rows_of(batch: &RecordBatch) -> Vec<Vec<(String, Cell)>> {
    let schema = batch.schema();
    (0..batch.num_rows())
        .map(|r| {
            schema
                .fields()
                .iter()
                .zip(batch.columns())
                .map(|(f, c)| (f.name().clone(), cell(c, r)))
                .collect()
        })
        .collect()
}

fn cell(c: &ArrayRef, r: usize) -> Cell {
    if c.is_null(r) {
        return Cell::Null;
    }
    match c.data_type() {
        DataType::Float64 => {
            Cell::Float(c.as_primitive::<arrow::datatypes::Float64Type>().value(r))
        }
        DataType::Int64 => Cell::Int(c.as_primitive::<arrow::datatypes::Int64Type>().value(r)),
        DataType::Int32 => {
            Cell::Int(c.as_primitive::<arrow::datatypes::Int32Type>().value(r) as i64)
        }
        DataType::UInt64 => {
            Cell::Int(c.as_primitive::<arrow::datatypes::UInt64Type>().value(r) as i64)
        }
        DataType::Timestamp(TimeUnit::Millisecond, _) => Cell::Int(
            c.as_primitive::<arrow::datatypes::TimestampMillisecondType>()
                .value(r),
        ),
        DataType::Utf8 => Cell::Text(c.as_string::<i32>().value(r).to_string()),
        other => Cell::Text(format!(
            "{other}:{}",
            arrow::util::display::array_value_to_string(c, r).unwrap()
        )),
    }
}

/// Compares two row sets (in any order): same columns, same rows, integers
/// and strings exactly, floats to `rel` relative difference.
pub fn assert_same_rows(what: &str, actual: &RecordBatch, expected: &RecordBatch, rel: f64) {
    let a_names: Vec<_> = actual
        .schema()
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .collect();
    let e_names: Vec<_> = expected
        .schema()
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .collect();
    let mut e_sorted = e_names.clone();
    e_sorted.sort();
    let mut a_sorted = a_names.clone();
    a_sorted.sort();
    assert_eq!(a_sorted, e_sorted, "{what}: columns differ");
    let key = |row: &Vec<(String, Cell)>| -> Vec<Cell> {
        let mut r: Vec<(String, Cell)> = row
            .iter()
            .filter(|(_, c)| !matches!(c, Cell::Float(_)))
            .cloned()
            .collect();
        r.sort_by(|a, b| a.0.cmp(&b.0));
        r.into_iter().map(|(_, c)| c).collect()
    };
    let sort = |rows: Vec<Vec<(String, Cell)>>| {
        let mut keyed: Vec<_> = rows
            .into_iter()
            .map(|mut r| {
                r.sort_by(|a, b| a.0.cmp(&b.0));
                (key(&r), r)
            })
            .collect::<Vec<(Vec<Cell>, _)>>();
        // Exact columns first; rows equal in them by their floats (rows
        // that differ only in a float would otherwise pair up by chance).
        let floats = |r: &Vec<(String, Cell)>| -> Vec<f64> {
            r.iter()
                .filter_map(|(_, c)| match c {
                    Cell::Float(x) => Some(*x),
                    _ => None,
                })
                .collect()
        };
        keyed.sort_by(|a, b| {
            a.0.partial_cmp(&b.0).unwrap().then_with(|| {
                let (fa, fb) = (floats(&a.1), floats(&b.1));
                fa.iter()
                    .zip(&fb)
                    .map(|(x, y)| x.total_cmp(y))
                    .find(|o| o.is_ne())
                    .unwrap_or(std::cmp::Ordering::Equal)
            })
        });
        keyed.into_iter().map(|(_, r)| r).collect::<Vec<_>>()
    };
    let a = sort(rows_of(actual));
    let e = sort(rows_of(expected));
    assert_eq!(
        a.len(),
        e.len(),
        "{what}: {} rows, expected {}",
        a.len(),
        e.len()
    );
    for (ra, re) in a.iter().zip(&e) {
        for ((name, ca), (_, ce)) in ra.iter().zip(re) {
            let ok = match (ca, ce) {
                (Cell::Float(x), Cell::Float(y)) => {
                    x == y
                        || (x - y).abs() <= rel * x.abs().max(y.abs())
                        || (x.is_nan() && y.is_nan())
                }
                (x, y) => x == y,
            };
            assert!(
                ok,
                "{what}: column {name}: {ca:?} != {ce:?}\nrow: {ra:?}\nexpected: {re:?}"
            );
        }
    }
}

/// The Arrow table of a source.
pub fn source_batch(data: &SimOutput, table: SourceTable) -> RecordBatch {
    let [t, o, b] = data.to_batches();
    match table {
        SourceTable::MarketTicks => t,
        SourceTable::OrderEvents => o,
        SourceTable::BookUpdates => b,
    }
}

/// `batch` with a `seq` column numbering its rows (DataFusion breaks ties
/// in event time by it, as the engine does by arrival).
pub fn with_seq(batch: &RecordBatch) -> RecordBatch {
    let mut columns = batch.columns().to_vec();
    columns.push(int64((0..batch.num_rows() as i64).collect()));
    let mut fields: Vec<Field> = batch
        .schema()
        .fields()
        .iter()
        .map(|f| f.as_ref().clone())
        .collect();
    fields.push(Field::new("seq", DataType::Int64, false));
    RecordBatch::try_new(Arc::new(Schema::new(fields)), columns).unwrap()
}

pub fn int64(values: Vec<i64>) -> ArrayRef {
    Arc::new(Int64Array::from(values))
}

/// How [`run_tables`] feeds several tables.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Feed {
    /// Every batch of the first table, then of the next (a UNION ALL must
    /// wait for its slowest input; a join sees one side end first).
    OneTableAfterTheOther,
    /// One batch of each table in turn, as live sources arrive (a join's
    /// state is forgotten as both watermarks move).
    Interleaved,
}

/// The streaming run of a multi-table SQL file: every table's rows in
/// `chunk`-row batches in the order `feed` says, each table finished after
/// its last batch. With `restart_at`, the pipeline is checkpointed before
/// that batch and the rest runs in a new pipeline restored from it. Output
/// per stream.
#[allow(dead_code)]
pub fn run_tables(
    sql: &str,
    tables: &[(&str, RecordBatch)],
    chunk: usize,
    feed: Feed,
    restart_at: Option<usize>,
) -> std::collections::BTreeMap<String, RecordBatch> {
    let (streams, out) = run_tables_raw(sql, tables, chunk, feed, restart_at);
    streams
        .iter()
        .enumerate()
        .map(|(i, (name, schema, _))| {
            let rows = out.iter().filter(|o| o.stream == i).map(|o| &o.rows);
            (name.clone(), concat_batches(schema, rows).unwrap())
        })
        .collect()
}

/// A stream's name, output columns and key columns.
pub type StreamInfo = (String, arrow::datatypes::SchemaRef, Vec<String>);

/// [`run_tables`]' streams and raw output (rows, deletions, late rows);
/// asserts that nothing was late.
#[allow(dead_code)]
pub fn run_tables_raw(
    sql: &str,
    tables: &[(&str, RecordBatch)],
    chunk: usize,
    feed: Feed,
    restart_at: Option<usize>,
) -> (Vec<StreamInfo>, Vec<StreamOutput>) {
    let config = EngineConfig {
        allowed_lateness: std::time::Duration::from_secs(1),
        idle_timeout: None,
        ..EngineConfig::default()
    };
    let new = || Pipeline::new(sql, &Catalog::builtin(), &config).unwrap();
    let mut p = new();
    let mut out: Vec<StreamOutput> = Vec::new();
    let batches: Vec<Vec<RecordBatch>> = tables.iter().map(|(_, t)| chunks(t, chunk)).collect();
    // (table, batch index) in feeding order.
    let mut order: Vec<(usize, usize)> = Vec::new();
    match feed {
        Feed::OneTableAfterTheOther => {
            for (t, b) in batches.iter().enumerate() {
                order.extend((0..b.len()).map(|i| (t, i)));
            }
        }
        Feed::Interleaved => {
            let longest = batches.iter().map(Vec::len).max().unwrap_or(0);
            for i in 0..longest {
                order.extend(
                    (0..batches.len())
                        .filter(|&t| i < batches[t].len())
                        .map(|t| (t, i)),
                );
            }
        }
    }
    for (step, &(t, i)) in order.iter().enumerate() {
        if Some(step) == restart_at {
            let snapshot = p.snapshot().unwrap();
            p = new();
            p.restore(snapshot).unwrap();
        }
        let table = tables[t].0;
        p.push(table, 0, &batches[t][i], &mut out).unwrap();
        if i + 1 == batches[t].len() {
            p.finish_partition(table, 0, &mut out).unwrap();
        }
    }
    let late: Vec<&str> = out
        .iter()
        .filter(|o| o.kind == OutputKind::Late)
        .map(|o| p.streams()[o.stream].name.as_str())
        .collect();
    assert!(late.is_empty(), "nothing is late within 1 s: {late:?}");
    let streams = p
        .streams()
        .iter()
        .map(|s| {
            (
                s.name.clone(),
                s.output_schema.clone(),
                s.key_columns.clone(),
            )
        })
        .collect();
    (streams, out)
}

/// Each stream's table after applying its changes in order (an upsert
/// replaces its key's row, a deletion removes it), with the number of
/// upserts and deletions seen.
pub fn final_tables(
    streams: &[StreamInfo],
    out: &[StreamOutput],
) -> std::collections::BTreeMap<String, (RecordBatch, usize, usize)> {
    let mut tables = std::collections::BTreeMap::new();
    for (i, (name, schema, keys)) in streams.iter().enumerate() {
        let batches: Vec<&StreamOutput> = out.iter().filter(|o| o.stream == i).collect();
        let mut latest: std::collections::BTreeMap<String, (usize, usize)> = Default::default();
        let (mut upserts, mut deletes) = (0, 0);
        for (b, o) in batches.iter().enumerate() {
            let key_cols: Vec<usize> = keys.iter().map(|k| schema.index_of(k).unwrap()).collect();
            let key_batch = o.rows.project(&key_cols).unwrap();
            for (r, row) in rows_of(&key_batch).into_iter().enumerate() {
                let key = format!("{row:?}");
                match o.kind {
                    OutputKind::Rows => {
                        upserts += 1;
                        latest.insert(key, (b, r));
                    }
                    OutputKind::Deletes => {
                        deletes += 1;
                        assert!(
                            latest.remove(&key).is_some(),
                            "{name}: deleted {key}, which it never emitted"
                        );
                    }
                    OutputKind::Late => panic!("{name}: late rows"),
                }
            }
        }
        let indices: Vec<(usize, usize)> = latest.into_values().collect();
        let columns = (0..schema.fields().len())
            .map(|c| {
                let arrays: Vec<&dyn arrow::array::Array> =
                    batches.iter().map(|o| o.rows.column(c).as_ref()).collect();
                if arrays.is_empty() {
                    arrow::array::new_empty_array(schema.field(c).data_type())
                } else {
                    arrow::compute::interleave(&arrays, &indices).unwrap()
                }
            })
            .collect();
        let table = RecordBatch::try_new(schema.clone(), columns).unwrap();
        tables.insert(name.clone(), (table, upserts, deletes));
    }
    tables
}
