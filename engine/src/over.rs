//! OVER windows in event-time order: `LAG`, `LEAD`, `FIRST_VALUE`,
//! `LAST_VALUE` and aggregates over `ROWS`/`RANGE … PRECEDING` frames, per
//! `PARTITION BY` key.
//!
//! A source row waits in `pending` until the watermark passes it; then no
//! row with an earlier event time can still arrive, so its frame is final.
//! Final rows join their partition's buffer (sorted by event time, equal
//! times in arrival order), and DataFusion's own window expressions are
//! evaluated over that buffer: the values of the rows not yet emitted are
//! what a batch engine computes over the whole partition. A row whose value
//! needs following rows (`LEAD`) waits for them, or for the end of input.
//! After each step a buffer keeps only what a frame can still reach: the
//! last `preceding_rows` emitted rows and those within `preceding_ms`.
//!
//! Invariants: every on-time row is emitted exactly once; a row arriving
//! with an event time the watermark has already passed is late (never
//! emitted, reported as late); output order is deterministic (partitions in
//! key order), so a restored run writes what an uninterrupted one would.

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, BooleanArray, RecordBatch, UInt32Array, UInt64Array};
use arrow::compute::{SortColumn, concat_batches, filter_record_batch, lexsort_to_indices, take};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::row::{OwnedRow, RowConverter, SortField};
use datafusion::error::Result;
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_expr::window::WindowExpr;

use super::operator::{
    OperatorMetrics, OperatorState, Output, RejectedRows, StreamOperator, apply_filter,
    check_state_layout, conform, evaluate, evaluate_rows, event_times,
};
use super::watermark::{END_OF_INPUT, NO_WATERMARK};

/// Arrival order of a row (ties in event time keep it).
const SEQ: &str = "__tickflow_seq";
/// State column: the row was emitted and is kept as frame history.
const EMITTED: &str = "__tickflow_emitted";

/// A planned OVER stream.
#[derive(Debug)]
pub struct OverPlan {
    /// Index of the event-time column in the source schema.
    pub event_time_index: usize,
    /// WHERE, on source rows (before any window function sees them).
    pub filter: Option<Arc<dyn PhysicalExpr>>,
    /// PARTITION BY, on source rows.
    pub partition_by: Vec<Arc<dyn PhysicalExpr>>,
    /// The window functions, evaluated on one partition's rows (source
    /// schema) sorted by event time.
    pub functions: Vec<Arc<dyn WindowExpr>>,
    /// Rows before the first unemitted one any frame or LAG can reach.
    pub preceding_rows: usize,
    /// Event time before the first unemitted row a RANGE frame can reach.
    pub preceding_ms: i64,
    /// Rows after a row its value needs (LEAD, `… FOLLOWING`).
    pub following_rows: usize,
    /// Output columns, on source columns followed by the function values.
    pub projection: Vec<Arc<dyn PhysicalExpr>>,
    /// Schema of source columns followed by the function values.
    pub window_schema: SchemaRef,
}

/// One partition's final rows: `emitted` rows of history, then rows
/// waiting for following rows. Sorted by (event time, arrival).
struct Partition {
    rows: RecordBatch,
    emitted: usize,
}

pub struct OverOperator {
    plan: OverPlan,
    output_schema: SchemaRef,
    /// Source schema plus the arrival column.
    buffer_schema: SchemaRef,
    keys: Option<RowConverter>,
    pending: Vec<RecordBatch>,
    partitions: BTreeMap<OwnedRow, Partition>,
    /// Rows before this event time have been released; later arrivals
    /// before it are late.
    released_before: i64,
    next_seq: u64,
    metrics: OperatorMetrics,
}

impl OverOperator {
    pub fn new(plan: OverPlan, source_schema: &Schema, output_schema: SchemaRef) -> Result<Self> {
        let mut fields: Vec<Field> = source_schema
            .fields()
            .iter()
            .map(|f| f.as_ref().clone())
            .collect();
        fields.push(Field::new(SEQ, DataType::UInt64, false));
        let keys = if plan.partition_by.is_empty() {
            None
        } else {
            let types = plan
                .partition_by
                .iter()
                .map(|e| Ok(SortField::new(e.data_type(source_schema)?)))
                .collect::<Result<Vec<_>>>()?;
            Some(RowConverter::new(types)?)
        };
        Ok(Self {
            plan,
            output_schema,
            buffer_schema: Arc::new(Schema::new(fields)),
            keys,
            pending: Vec::new(),
            partitions: BTreeMap::new(),
            released_before: NO_WATERMARK,
            next_seq: 0,
            metrics: OperatorMetrics::default(),
        })
    }

    /// Source rows with their arrival numbers appended.
    fn with_seq(&mut self, batch: &RecordBatch) -> Result<RecordBatch> {
        let n = batch.num_rows() as u64;
        let seq = UInt64Array::from_iter_values(self.next_seq..self.next_seq + n);
        self.next_seq += n;
        let mut columns = batch.columns().to_vec();
        columns.push(Arc::new(seq));
        Ok(RecordBatch::try_new(
            Arc::clone(&self.buffer_schema),
            columns,
        )?)
    }

    /// The partition key of every row.
    fn partition_keys(&self, rows: &RecordBatch) -> Result<Vec<OwnedRow>> {
        let Some(converter) = &self.keys else {
            return Ok(vec![empty_key(); rows.num_rows()]);
        };
        let columns = self
            .plan
            .partition_by
            .iter()
            .map(|e| evaluate(e, rows))
            .collect::<Result<Vec<_>>>()?;
        let encoded = converter.convert_columns(&columns)?;
        Ok(encoded.iter().map(|r| r.owned()).collect())
    }

    /// Moves the pending rows before `watermark` into their partitions and
    /// emits every row whose frame is complete.
    fn release(&mut self, watermark: i64, out: &mut Output) -> Result<()> {
        if watermark <= self.released_before {
            return Ok(());
        }
        let pending = std::mem::take(&mut self.pending);
        if !pending.is_empty() {
            let all = concat_batches(&self.buffer_schema, &pending)?;
            let (ts, _) = event_times(&all, self.plan.event_time_index)?;
            let is_final: BooleanArray = ts.iter().map(|&t| Some(t < watermark)).collect();
            let rest = filter_record_batch(&all, &arrow::compute::not(&is_final)?)?;
            if rest.num_rows() > 0 {
                self.pending.push(rest);
            }
            let ready = filter_record_batch(&all, &is_final)?;
            self.add_final_rows(ready)?;
        }
        self.released_before = watermark;
        self.emit_ready(watermark == END_OF_INPUT, watermark, out)
    }

    /// Appends final rows to their partitions, each in (event time,
    /// arrival) order.
    fn add_final_rows(&mut self, ready: RecordBatch) -> Result<()> {
        if ready.num_rows() == 0 {
            return Ok(());
        }
        let keys = self.partition_keys(&ready)?;
        let mut by_key: BTreeMap<OwnedRow, Vec<u32>> = BTreeMap::new();
        for (i, k) in keys.into_iter().enumerate() {
            by_key.entry(k).or_default().push(i as u32);
        }
        for (key, indices) in by_key {
            let rows = take_rows(&ready, &UInt32Array::from(indices))?;
            let rows = sort_by_time(&rows, self.plan.event_time_index)?;
            let partition = self.partitions.entry(key).or_insert_with(|| Partition {
                rows: RecordBatch::new_empty(Arc::clone(&self.buffer_schema)),
                emitted: 0,
            });
            partition.rows = concat_batches(&self.buffer_schema, [&partition.rows, &rows])?;
        }
        Ok(())
    }

    /// Evaluates each partition that has unemitted rows, emits those whose
    /// following rows are known (all at the end of input), and trims the
    /// history to what the frames reach.
    fn emit_ready(&mut self, end_of_input: bool, watermark: i64, out: &mut Output) -> Result<()> {
        let following = self.plan.following_rows;
        let mut emitted_batches = Vec::new();
        let mut rejected = Vec::new();
        for p in self.partitions.values_mut() {
            let total = p.rows.num_rows();
            let upto = if end_of_input {
                total
            } else {
                total.saturating_sub(following)
            };
            if upto > p.emitted {
                let source = drop_seq(&p.rows)?;
                match evaluate_functions(&self.plan, &source) {
                    Ok(values) => {
                        let n = upto - p.emitted;
                        let mut columns: Vec<ArrayRef> = source
                            .columns()
                            .iter()
                            .map(|c| c.slice(p.emitted, n))
                            .collect();
                        columns.extend(values.iter().map(|v| v.slice(p.emitted, n)));
                        emitted_batches.push(RecordBatch::try_new(
                            Arc::clone(&self.plan.window_schema),
                            conform(&self.plan.window_schema, columns)?,
                        )?);
                    }
                    // A function failed on this partition's rows (e.g. an
                    // overflowing SUM): they become dead letters, the
                    // other partitions carry on.
                    Err(e) => rejected.push(RejectedRows {
                        rows: source.slice(p.emitted, upto - p.emitted),
                        error: e.to_string(),
                    }),
                }
                p.emitted = upto;
            }
            trim_history(&self.plan, p, watermark)?;
        }
        self.partitions.retain(|_, p| p.rows.num_rows() > 0);
        self.metrics.rejected_rows += rejected
            .iter()
            .map(|r| r.rows.num_rows() as u64)
            .sum::<u64>();
        out.rejected.extend(rejected);
        for rows in emitted_batches {
            self.project(&rows, out)?;
        }
        self.metrics.open_windows = self.partitions.len() as u64;
        Ok(())
    }

    /// The SELECT list over emitted rows; rows it fails on are rejected.
    fn project(&mut self, rows: &RecordBatch, out: &mut Output) -> Result<()> {
        let (plan, schema) = (&self.plan, &self.output_schema);
        let eval = |batch: &RecordBatch| -> Result<RecordBatch> {
            let columns = plan
                .projection
                .iter()
                .map(|e| evaluate(e, batch))
                .collect::<Result<Vec<_>>>()?;
            Ok(RecordBatch::try_new(
                Arc::clone(schema),
                conform(schema, columns)?,
            )?)
        };
        let metrics = &mut self.metrics;
        let mut apply = |_: &RecordBatch, rows: RecordBatch, out: &mut Output| {
            metrics.rows_out += rows.num_rows() as u64;
            out.rows.push(rows);
            Ok(())
        };
        let before = out.rejected.len();
        evaluate_rows(rows, out, &eval, &mut apply)?;
        self.metrics.rejected_rows += (out.rejected.len() - before) as u64;
        Ok(())
    }
}

fn empty_key() -> OwnedRow {
    static EMPTY: std::sync::OnceLock<OwnedRow> = std::sync::OnceLock::new();
    EMPTY
        .get_or_init(|| {
            let c = RowConverter::new(vec![SortField::new(DataType::Boolean)]).expect("boolean");
            let rows = c
                .convert_columns(&[Arc::new(BooleanArray::from(vec![true])) as ArrayRef])
                .expect("one boolean");
            rows.row(0).owned()
        })
        .clone()
}

fn take_rows(batch: &RecordBatch, indices: &UInt32Array) -> Result<RecordBatch> {
    let columns = batch
        .columns()
        .iter()
        .map(|c| take(c.as_ref(), indices, None))
        .collect::<std::result::Result<Vec<_>, _>>()?;
    Ok(RecordBatch::try_new(batch.schema(), columns)?)
}

/// Rows in (event time, arrival) order.
fn sort_by_time(rows: &RecordBatch, event_time_index: usize) -> Result<RecordBatch> {
    let seq = rows.num_columns() - 1;
    let indices = lexsort_to_indices(
        &[
            SortColumn {
                values: Arc::clone(rows.column(event_time_index)),
                options: None,
            },
            SortColumn {
                values: Arc::clone(rows.column(seq)),
                options: None,
            },
        ],
        None,
    )?;
    take_rows(rows, &indices)
}

/// The source columns of buffered rows (without the arrival column).
fn drop_seq(rows: &RecordBatch) -> Result<RecordBatch> {
    let mut rows = rows.clone();
    rows.remove_column(rows.num_columns() - 1);
    Ok(rows)
}

fn evaluate_functions(plan: &OverPlan, partition: &RecordBatch) -> Result<Vec<ArrayRef>> {
    plan.functions
        .iter()
        .map(|f| f.evaluate(partition))
        .collect()
}

/// Drops emitted rows no frame can reach any more: keeps the last
/// `preceding_rows` emitted rows, and those within `preceding_ms` of the
/// first row still to come.
fn trim_history(plan: &OverPlan, p: &mut Partition, watermark: i64) -> Result<()> {
    let by_rows = p.emitted.saturating_sub(plan.preceding_rows);
    let by_range = if plan.preceding_ms > 0 {
        let (ts, _) = event_times(&p.rows, plan.event_time_index)?;
        // The next row to be emitted is either waiting here or not final
        // yet, i.e. at or after the watermark.
        let next = ts.get(p.emitted).copied().unwrap_or(watermark);
        let reach = next.saturating_sub(plan.preceding_ms);
        ts[..p.emitted].partition_point(|&t| t < reach)
    } else {
        p.emitted
    };
    let cut = by_rows.min(by_range);
    if cut > 0 {
        p.rows = p.rows.slice(cut, p.rows.num_rows() - cut);
        p.emitted -= cut;
    }
    Ok(())
}

impl StreamOperator for OverOperator {
    fn on_batch(&mut self, batch: &RecordBatch, out: &mut Output) -> Result<()> {
        self.metrics.rows_in += batch.num_rows() as u64;
        let filter = self.plan.filter.clone();
        let mut kept = Vec::new();
        let mut apply = |_: &RecordBatch, rows: RecordBatch, _: &mut Output| {
            kept.push(rows);
            Ok(())
        };
        let before = out.rejected.len();
        evaluate_rows(
            batch,
            out,
            &|b: &RecordBatch| apply_filter(filter.as_ref(), b),
            &mut apply,
        )?;
        self.metrics.rejected_rows += (out.rejected.len() - before) as u64;
        for rows in kept {
            if rows.num_rows() == 0 {
                continue;
            }
            // Late: before what has been released (or without event time).
            let (ts, _) = event_times(&rows, self.plan.event_time_index)?;
            let valid = rows.column(self.plan.event_time_index).logical_nulls();
            let on_time: BooleanArray = ts
                .iter()
                .enumerate()
                .map(|(i, &t)| {
                    Some(valid.as_ref().is_none_or(|v| v.is_valid(i)) && t >= self.released_before)
                })
                .collect();
            let late = filter_record_batch(&rows, &arrow::compute::not(&on_time)?)?;
            if late.num_rows() > 0 {
                self.metrics.late_events += late.num_rows() as u64;
                out.late.push(late);
            }
            let rows = filter_record_batch(&rows, &on_time)?;
            if rows.num_rows() > 0 {
                let rows = self.with_seq(&rows)?;
                self.pending.push(rows);
            }
        }
        Ok(())
    }

    fn on_watermark(&mut self, watermark: i64, out: &mut Output) -> Result<()> {
        self.release(watermark, out)
    }

    fn snapshot(&mut self) -> Result<OperatorState> {
        let mut batches = Vec::new();
        let mut flags: Vec<bool> = Vec::new();
        for p in self.partitions.values() {
            batches.push(p.rows.clone());
            flags.extend((0..p.rows.num_rows()).map(|i| i < p.emitted));
        }
        for b in &self.pending {
            batches.push(b.clone());
            flags.extend(std::iter::repeat_n(false, b.num_rows()));
        }
        let rows = concat_batches(&self.buffer_schema, &batches)?;
        let mut columns = rows.columns().to_vec();
        columns.push(Arc::new(BooleanArray::from(flags)));
        Ok(OperatorState {
            meta: serde_json::json!({
                "metrics": self.metrics,
                "released_before": self.released_before,
                "next_seq": self.next_seq,
            }),
            batch: Some(RecordBatch::try_new(self.state_schema(), columns)?),
        })
    }

    fn restore(&mut self, state: OperatorState) -> Result<()> {
        let meta = &state.meta;
        if let Ok(m) = serde_json::from_value(meta["metrics"].clone()) {
            self.metrics = m;
        }
        self.released_before = meta["released_before"].as_i64().unwrap_or(NO_WATERMARK);
        self.next_seq = meta["next_seq"].as_u64().unwrap_or(0);
        self.pending.clear();
        self.partitions.clear();
        let Some(batch) = state.batch else {
            return Ok(());
        };
        check_state_layout(&batch, &self.state_schema())?;
        let flag_index = batch.num_columns() - 1;
        let emitted = batch.column(flag_index).as_boolean().clone();
        let mut rows = batch;
        rows.remove_column(flag_index);
        let rows = RecordBatch::try_new(Arc::clone(&self.buffer_schema), rows.columns().to_vec())?;
        // History back into its partitions, in order; every other row is
        // pending again and is released by the next watermark.
        let history = filter_record_batch(&rows, &emitted)?;
        self.add_final_rows(history)?;
        for p in self.partitions.values_mut() {
            p.emitted = p.rows.num_rows();
        }
        // Rows released but waiting for following rows go back behind
        // the history; the rest is pending until the next watermark.
        let unemitted = filter_record_batch(&rows, &arrow::compute::not(&emitted)?)?;
        let (ts, _) = event_times(&unemitted, self.plan.event_time_index)?;
        let released: BooleanArray = ts.iter().map(|&t| Some(t < self.released_before)).collect();
        let pending = filter_record_batch(&unemitted, &arrow::compute::not(&released)?)?;
        self.add_final_rows(filter_record_batch(&unemitted, &released)?)?;
        if pending.num_rows() > 0 {
            self.pending.push(pending);
        }
        self.metrics.open_windows = self.partitions.len() as u64;
        Ok(())
    }

    fn metrics(&self) -> OperatorMetrics {
        self.metrics
    }
}

impl OverOperator {
    /// Buffered rows, then whether each was emitted.
    fn state_schema(&self) -> SchemaRef {
        let mut fields: Vec<Field> = self
            .buffer_schema
            .fields()
            .iter()
            .map(|f| f.as_ref().clone())
            .collect();
        fields.push(Field::new(EMITTED, DataType::Boolean, false));
        Arc::new(Schema::new(fields))
    }
}
