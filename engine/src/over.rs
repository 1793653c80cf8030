//! OVER windows in event-time order: `LAG`, `LEAD`, `FIRST_VALUE`,
//! `LAST_VALUE` and aggregates over `ROWS`/`RANGE … PRECEDING` frames, per
//! `PARTITION BY` key.
//!
//! A source row waits in `pending` until the watermark passes it; then no
//! row with an earlier event time can still arrive, so its frame is final.
//! Released rows join `buffer`, one batch of all partitions sorted by
//! (partition key, event time, arrival), and DataFusion's own window
//! expressions are evaluated over each partition's range of it: the values
//! of the rows not yet emitted are what a batch engine computes over the
//! whole partition. A row whose value needs following rows (`LEAD`) waits
//! for them, or for the end of input. After each step the buffer keeps only
//! what a frame can still reach: per partition the last `preceding_rows`
//! emitted rows and those within `preceding_ms`, and the waiting rows.
//!
//! Work is done in steps over all partitions at once (a few array
//! operations over the buffer, one evaluation per touched partition), not
//! per row or per partition and batch. `LAG` and short `ROWS` aggregates
//! have a direct form ([`DirectFunction`]) computed once per step over all
//! partitions' rows; the other functions are DataFusion's, per partition.
//!
//! Invariants: every on-time row is emitted exactly once, each partition's
//! rows in event-time order; a row arriving with an event time the
//! watermark has already passed is late (never emitted, reported as late);
//! a restored operator emits what an uninterrupted one would.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, BooleanArray, RecordBatch, UInt32Array, UInt64Array};
use arrow::compute::{
    SortColumn, concat_batches, filter_record_batch, lexsort_to_indices, partition, take,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::error::{DataFusionError, Result};
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_expr::window::WindowExpr;

use super::keys::dense_ids;
use super::operator::{
    OperatorMetrics, OperatorState, Output, RejectedRows, StreamOperator, apply_filter,
    check_state_layout, conform, evaluate, evaluate_rows, event_times,
};
use super::plan::{RowStep, apply_steps};
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
    /// Per function, its direct form where it has one (LAG, a short
    /// ROWS-frame aggregate), evaluated over a whole step at once instead
    /// of by DataFusion per partition.
    pub direct: Vec<Option<DirectFunction>>,
    /// Rows before the first unemitted one any frame or LAG can reach.
    pub preceding_rows: usize,
    /// Event time before the first unemitted row a RANGE frame can reach.
    pub preceding_ms: i64,
    /// Rows after a row its value needs (LEAD, `… FOLLOWING`).
    pub following_rows: usize,
    /// The SELECT list and what encloses the window (filters and
    /// projections of subqueries and CTEs), on source columns followed by
    /// the function values.
    pub post: Vec<RowStep>,
    /// Schema of source columns followed by the function values.
    pub window_schema: SchemaRef,
}

/// Released rows are evaluated in steps: when this much wall-clock time has
/// passed since the last step, or [`RELEASE_ROWS`] rows are waiting, or the
/// input ended. A step costs a few passes over the buffer plus one
/// evaluation per partition it touches, so fewer, larger steps cost less per
/// row. Measured in processing time (as Flink's mini-batches are): a live
/// stream gets a step every 200 ms, a backlog is worked off in steps of
/// [`RELEASE_ROWS`] however dense its event time is. Which rows a step
/// emits, and their values, do not depend on it: only how they are batched.
const RELEASE_EVERY: std::time::Duration = std::time::Duration::from_millis(200);
const RELEASE_ROWS: usize = 65_536;

pub struct OverOperator {
    plan: OverPlan,
    output_schema: SchemaRef,
    /// Source schema plus the arrival column.
    buffer_schema: SchemaRef,
    /// Released rows of all partitions, sorted by (key, event time,
    /// arrival); `emitted[i]` tells whether row `i` was emitted already.
    buffer: RecordBatch,
    emitted: BooleanArray,
    /// Rows waiting for the watermark, with each batch's event-time range.
    pending: Vec<(RecordBatch, i64, i64)>,
    pending_rows: usize,
    /// The newest watermark: a row arriving before it is late.
    watermark: i64,
    /// Rows before this event time are in the buffer.
    released_before: i64,
    /// When the last step ran (processing time).
    last_step: std::time::Instant,
    /// Every row emitted from now on has an event time at or after this:
    /// `released_before`, or earlier while released rows wait for their
    /// following rows (LEAD). Later streams see this as the watermark.
    emitted_before: i64,
    next_seq: u64,
    metrics: OperatorMetrics,
}

/// What one step emits: row indices into the sorted rows and, per window
/// function, the values of those rows (one piece per partition).
#[derive(Default)]
struct StepOutput {
    rows: Vec<u32>,
    /// Per emitted row, the index of its partition's first row.
    starts: Vec<u32>,
    values: Vec<Vec<ArrayRef>>,
    rejected: Vec<RejectedRows>,
}

impl OverOperator {
    pub fn new(plan: OverPlan, source_schema: &Schema, output_schema: SchemaRef) -> Result<Self> {
        let mut fields: Vec<Field> = source_schema
            .fields()
            .iter()
            .map(|f| f.as_ref().clone())
            .collect();
        fields.push(Field::new(SEQ, DataType::UInt64, false));
        let buffer_schema = Arc::new(Schema::new(fields));
        Ok(Self {
            plan,
            output_schema,
            buffer: RecordBatch::new_empty(Arc::clone(&buffer_schema)),
            emitted: BooleanArray::from(Vec::<bool>::new()),
            buffer_schema,
            pending: Vec::new(),
            pending_rows: 0,
            watermark: NO_WATERMARK,
            released_before: NO_WATERMARK,
            last_step: std::time::Instant::now(),
            emitted_before: NO_WATERMARK,
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

    /// Whether the rows before `watermark` are worth a step now.
    fn due(&self, watermark: i64) -> bool {
        watermark == END_OF_INPUT
            || self.pending_rows >= RELEASE_ROWS
            || self.last_step.elapsed() >= RELEASE_EVERY
    }

    /// Keeps `rows` pending, with their event-time range.
    fn add_pending(&mut self, rows: RecordBatch) -> Result<()> {
        if rows.num_rows() == 0 {
            return Ok(());
        }
        let (ts, _) = event_times(&rows, self.plan.event_time_index)?;
        let (lo, hi) = ts
            .iter()
            .fold((i64::MAX, i64::MIN), |(lo, hi), &t| (lo.min(t), hi.max(t)));
        self.pending_rows += rows.num_rows();
        self.pending.push((rows, lo, hi));
        Ok(())
    }

    /// Splits the pending rows into those before `before` (returned) and
    /// the rest (kept pending). Only batches straddling `before` are split;
    /// the others move whole, uncopied.
    fn take_pending_before(&mut self, before: i64) -> Result<RecordBatch> {
        let pending = std::mem::take(&mut self.pending);
        self.pending_rows = 0;
        let mut ready = Vec::new();
        for (rows, lo, hi) in pending {
            if hi < before {
                ready.push(rows);
            } else if lo >= before {
                self.pending_rows += rows.num_rows();
                self.pending.push((rows, lo, hi));
            } else {
                let (ts, _) = event_times(&rows, self.plan.event_time_index)?;
                let is_final: BooleanArray = ts.iter().map(|&t| Some(t < before)).collect();
                self.add_pending(filter_record_batch(
                    &rows,
                    &arrow::compute::not(&is_final)?,
                )?)?;
                ready.push(filter_record_batch(&rows, &is_final)?);
            }
        }
        Ok(concat_batches(&self.buffer_schema, &ready)?)
    }

    /// One step: releases the pending rows before the watermark, emits
    /// every row whose frame is complete, trims the buffer.
    fn release(&mut self, watermark: i64, out: &mut Output) -> Result<()> {
        self.watermark = self.watermark.max(watermark);
        if self.watermark <= self.released_before || !self.due(self.watermark) {
            return Ok(());
        }
        let watermark = self.watermark;
        self.last_step = std::time::Instant::now();
        let ready = self.take_pending_before(watermark)?;
        self.released_before = watermark;
        if ready.num_rows() == 0 && !self.has_waiting_rows(watermark) {
            return Ok(());
        }
        // Buffer and released rows together, sorted.
        let rows = concat_batches(&self.buffer_schema, [&self.buffer, &ready])?;
        let flags: BooleanArray = self
            .emitted
            .iter()
            .chain(std::iter::repeat_n(Some(false), ready.num_rows()))
            .collect();
        let ids = dense_ids(&self.plan.partition_by, &rows)?;
        let order = sort_indices(&ids, &rows, self.plan.event_time_index)?;
        let rows = take_rows(&rows, &order)?;
        let flags = take(&flags, &order, None)?.as_boolean().clone();
        let ids = take(&ids, &order, None)?;
        let ranges = partition(&[ids])?.ranges();

        let source = drop_seq(&rows);
        let (ts, _) = event_times(&rows, self.plan.event_time_index)?;
        let end_of_input = watermark == END_OF_INPUT;
        let mut step = StepOutput {
            values: vec![Vec::new(); self.plan.functions.len()],
            ..StepOutput::default()
        };
        let mut keep: Vec<u32> = Vec::new();
        let mut now_emitted: Vec<bool> = flags.values().iter().collect();
        for range in ranges {
            let first_new = range.start
                + flags
                    .values()
                    .slice(range.start, range.len())
                    .count_set_bits();
            let upto = if end_of_input {
                range.end
            } else {
                range
                    .end
                    .saturating_sub(self.plan.following_rows)
                    .max(range.start)
            };
            if upto > first_new {
                self.evaluate_partition(&source, range.clone(), first_new..upto, &mut step);
                now_emitted[first_new..upto].fill(true);
            }
            // What the frames can still reach, and the waiting rows.
            let next_emitted = upto.max(first_new);
            let by_rows = next_emitted
                .saturating_sub(self.plan.preceding_rows)
                .max(range.start);
            let by_range = if self.plan.preceding_ms > 0 {
                let next = ts
                    .get(next_emitted)
                    .copied()
                    .filter(|_| next_emitted < range.end);
                let reach = next
                    .unwrap_or(watermark)
                    .saturating_sub(self.plan.preceding_ms);
                range.start + ts[range.start..next_emitted].partition_point(|&t| t < reach)
            } else {
                next_emitted
            };
            keep.extend(by_rows.min(by_range) as u32..range.end as u32);
        }
        let now_emitted = BooleanArray::from(now_emitted);
        let keep = UInt32Array::from(keep);
        self.buffer = take_rows(&rows, &keep)?;
        self.emitted = take(&now_emitted, &keep, None)?.as_boolean().clone();
        self.metrics.open_windows = self.buffer.num_rows() as u64;
        self.emitted_before = self.first_unemitted()?;
        // The direct functions, once over the whole step's rows.
        for (values, direct) in step.values.iter_mut().zip(&self.plan.direct) {
            if let Some(d) = direct {
                values.push(d.evaluate(&source, &step.rows, &step.starts)?);
            }
        }
        self.finish_step(&source, step, out)
    }

    /// The event time before which every row has been emitted: the
    /// earliest released row still waiting (for following rows), else
    /// `released_before`.
    fn first_unemitted(&self) -> Result<i64> {
        let (ts, _) = event_times(&self.buffer, self.plan.event_time_index)?;
        let waiting = ts
            .iter()
            .zip(self.emitted.values().iter())
            .filter(|(_, emitted)| !emitted)
            .map(|(&t, _)| t)
            .min();
        Ok(waiting.map_or(self.released_before, |t| t.min(self.released_before)))
    }

    /// Whether the buffer holds rows waiting for following rows that the
    /// end of input releases.
    fn has_waiting_rows(&self, watermark: i64) -> bool {
        watermark == END_OF_INPUT && self.emitted.false_count() > 0
    }

    /// Evaluates the window functions over one partition's `range` of the
    /// sorted rows and keeps the values of the rows in `emit`.
    fn evaluate_partition(
        &self,
        source: &RecordBatch,
        range: std::ops::Range<usize>,
        emit: std::ops::Range<usize>,
        step: &mut StepOutput,
    ) {
        let partition = source.slice(range.start, range.len());
        let offset = emit.start - range.start;
        // Direct functions are evaluated for the whole step afterwards.
        let values: Result<Vec<Option<ArrayRef>>> = self
            .plan
            .functions
            .iter()
            .zip(&self.plan.direct)
            .map(|(f, direct)| match direct {
                Some(_) => Ok(None),
                None => Ok(Some(f.evaluate(&partition)?.slice(offset, emit.len()))),
            })
            .collect();
        match values {
            Ok(values) => {
                for (all, v) in step.values.iter_mut().zip(values) {
                    all.extend(v);
                }
                step.rows.extend(emit.start as u32..emit.end as u32);
                step.starts
                    .extend(std::iter::repeat_n(range.start as u32, emit.len()));
            }
            // A function failed on this partition's rows (e.g. an
            // overflowing SUM): they become dead letters, the other
            // partitions carry on.
            Err(e) => step.rejected.push(RejectedRows {
                rows: source.slice(emit.start, emit.len()),
                error: e.to_string(),
            }),
        }
    }

    /// Builds the emitted rows (source columns and function values) and
    /// projects them; failed partitions go to the dead letters.
    fn finish_step(
        &mut self,
        source: &RecordBatch,
        step: StepOutput,
        out: &mut Output,
    ) -> Result<()> {
        self.metrics.rejected_rows += step
            .rejected
            .iter()
            .map(|r| r.rows.num_rows() as u64)
            .sum::<u64>();
        out.rejected.extend(step.rejected);
        if step.rows.is_empty() {
            return Ok(());
        }
        let indices = UInt32Array::from(step.rows);
        let mut columns = take_rows(source, &indices)?.columns().to_vec();
        for pieces in &step.values {
            let refs: Vec<&dyn Array> = pieces.iter().map(|a| a.as_ref()).collect();
            columns.push(arrow::compute::concat(&refs)?);
        }
        let schema = &self.plan.window_schema;
        let rows = RecordBatch::try_new(Arc::clone(schema), conform(schema, columns)?)?;
        self.project(&rows, out)
    }

    /// The SELECT list over emitted rows; rows it fails on are rejected.
    fn project(&mut self, rows: &RecordBatch, out: &mut Output) -> Result<()> {
        let (plan, schema) = (&self.plan, &self.output_schema);
        let eval = |batch: &RecordBatch| apply_steps(&plan.post, batch, schema);
        let metrics = &mut self.metrics;
        let mut apply = |_: &RecordBatch, rows: RecordBatch, out: &mut Output| {
            if rows.num_rows() > 0 {
                metrics.rows_out += rows.num_rows() as u64;
                out.rows.push(rows);
            }
            Ok(())
        };
        let before = out.rejected.len();
        evaluate_rows(rows, out, &eval, &mut apply)?;
        self.metrics.rejected_rows += (out.rejected.len() - before) as u64;
        Ok(())
    }
}

/// Row order of a step: partition, event time, arrival. The three are
/// packed into one integer per row (partition id, event time and arrival
/// relative to the step's smallest), so the sort compares integers, not
/// Arrow arrays; arrival numbers are unique, so the order is total.
fn sort_indices(
    ids: &ArrayRef,
    rows: &RecordBatch,
    event_time_index: usize,
) -> Result<UInt32Array> {
    let ids = ids.as_primitive::<arrow::datatypes::UInt32Type>();
    let (ts, _) = event_times(rows, event_time_index)?;
    let seq = rows
        .column(rows.num_columns() - 1)
        .as_primitive::<arrow::datatypes::UInt64Type>();
    let min_ts = ts.iter().copied().min().unwrap_or(0);
    let min_seq = seq.values().iter().copied().min().unwrap_or(0);
    let span_ts = ts
        .iter()
        .map(|&t| t.wrapping_sub(min_ts) as u64)
        .max()
        .unwrap_or(0);
    let span_seq = seq.values().iter().map(|&q| q - min_seq).max().unwrap_or(0);
    if span_ts >= 1 << 48 || span_seq >= 1 << 48 {
        // Beyond the packing (≈ 8900 years of event time): compare arrays.
        let columns: Vec<SortColumn> = [
            Arc::new(ids.clone()) as ArrayRef,
            Arc::clone(rows.column(event_time_index)),
            Arc::clone(rows.column(rows.num_columns() - 1)),
        ]
        .into_iter()
        .map(|values| SortColumn {
            values,
            options: None,
        })
        .collect();
        return Ok(lexsort_to_indices(&columns, None)?);
    }
    let mut keys: Vec<(u128, u32)> = (0..ts.len())
        .map(|i| {
            let key = (u128::from(ids.value(i)) << 96)
                | (u128::from(ts[i].wrapping_sub(min_ts) as u64) << 48)
                | u128::from(seq.value(i) - min_seq);
            (key, i as u32)
        })
        .collect();
    keys.sort_unstable_by_key(|&(key, _)| key);
    Ok(UInt32Array::from_iter_values(
        keys.into_iter().map(|(_, i)| i),
    ))
}

fn take_rows(batch: &RecordBatch, indices: &UInt32Array) -> Result<RecordBatch> {
    let columns = batch
        .columns()
        .iter()
        .map(|c| take(c.as_ref(), indices, None))
        .collect::<std::result::Result<Vec<_>, _>>()?;
    Ok(RecordBatch::try_new(batch.schema(), columns)?)
}

/// The source columns of buffered rows (without the arrival column).
fn drop_seq(rows: &RecordBatch) -> RecordBatch {
    let mut rows = rows.clone();
    rows.remove_column(rows.num_columns() - 1);
    rows
}

impl StreamOperator for OverOperator {
    fn on_batch(&mut self, batch: &RecordBatch, out: &mut Output) -> Result<()> {
        self.metrics.rows_in += batch.num_rows() as u64;
        let plan = &self.plan;
        // WHERE, and a trial of the partition key and the functions'
        // arguments: a row they fail on (a CAST, a division by zero) is a
        // dead letter now, instead of failing its partition's evaluation
        // at every step it stays in the frame history.
        let screen = |b: &RecordBatch| -> Result<RecordBatch> {
            let rows = apply_filter(plan.filter.as_ref(), b)?;
            let arguments = plan.functions.iter().flat_map(|f| f.expressions());
            for e in plan.partition_by.iter().cloned().chain(arguments) {
                evaluate(&e, &rows)?;
            }
            Ok(rows)
        };
        let mut kept = Vec::new();
        let mut apply = |_: &RecordBatch, rows: RecordBatch, _: &mut Output| {
            kept.push(rows);
            Ok(())
        };
        let before = out.rejected.len();
        evaluate_rows(batch, out, &screen, &mut apply)?;
        self.metrics.rejected_rows += (out.rejected.len() - before) as u64;
        for rows in kept {
            if rows.num_rows() == 0 {
                continue;
            }
            // Late: before the watermark (or without event time).
            let (ts, _) = event_times(&rows, self.plan.event_time_index)?;
            let valid = rows.column(self.plan.event_time_index).logical_nulls();
            let on_time: BooleanArray = ts
                .iter()
                .enumerate()
                .map(|(i, &t)| {
                    Some(valid.as_ref().is_none_or(|v| v.is_valid(i)) && t >= self.watermark)
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
                self.add_pending(rows)?;
            }
        }
        Ok(())
    }

    fn on_watermark(&mut self, watermark: i64, out: &mut Output) -> Result<()> {
        self.release(watermark, out)
    }

    fn output_watermark(&self) -> Option<i64> {
        Some(self.emitted_before)
    }

    fn snapshot(&mut self) -> Result<OperatorState> {
        let mut batches = vec![self.buffer.clone()];
        batches.extend(self.pending.iter().map(|(rows, _, _)| rows.clone()));
        let rows = concat_batches(&self.buffer_schema, &batches)?;
        let flags: BooleanArray = self
            .emitted
            .iter()
            .chain(std::iter::repeat_n(Some(false), self.pending_rows))
            .collect();
        let mut columns = rows.columns().to_vec();
        columns.push(Arc::new(flags));
        Ok(OperatorState {
            meta: serde_json::json!({
                "metrics": self.metrics,
                "watermark": self.watermark,
                "released_before": self.released_before,
                "next_seq": self.next_seq,
                "buffered_rows": self.buffer.num_rows(),
            }),
            batch: Some(RecordBatch::try_new(self.state_schema(), columns)?),
        })
    }

    fn restore(&mut self, state: OperatorState) -> Result<()> {
        let meta = &state.meta;
        if let Ok(m) = serde_json::from_value(meta["metrics"].clone()) {
            self.metrics = m;
        }
        let number = |key: &str| meta[key].as_i64().unwrap_or(NO_WATERMARK);
        self.watermark = number("watermark");
        self.released_before = number("released_before");
        self.emitted_before = self.released_before;
        self.next_seq = meta["next_seq"].as_u64().unwrap_or(0);
        self.buffer = RecordBatch::new_empty(Arc::clone(&self.buffer_schema));
        self.emitted = BooleanArray::from(Vec::<bool>::new());
        self.pending.clear();
        self.pending_rows = 0;
        let Some(batch) = state.batch else {
            return Ok(());
        };
        check_state_layout(&batch, &self.state_schema())?;
        let buffered = meta["buffered_rows"].as_u64().unwrap_or(0) as usize;
        if buffered > batch.num_rows() {
            return Err(DataFusionError::Execution(format!(
                "OVER state: {buffered} buffered rows recorded, {} in the batch",
                batch.num_rows()
            )));
        }
        let flag_index = batch.num_columns() - 1;
        let flags = batch.column(flag_index).as_boolean().clone();
        let mut rows = batch;
        rows.remove_column(flag_index);
        let rows = RecordBatch::try_new(Arc::clone(&self.buffer_schema), rows.columns().to_vec())?;
        // The buffer as it was (sorted), then the pending rows.
        self.buffer = rows.slice(0, buffered);
        self.emitted = flags.slice(0, buffered);
        self.add_pending(rows.slice(buffered, rows.num_rows() - buffered))?;
        self.metrics.open_windows = self.buffer.num_rows() as u64;
        self.emitted_before = self.first_unemitted()?;
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

/// Longest `ROWS` frame evaluated directly: each row sums its frame anew
/// (no running sum to drift), which costs the frame's length per row.
pub const DIRECT_FRAME_ROWS: usize = 64;

/// An aggregate the direct form computes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RowsFunction {
    Sum,
    Count,
    Avg,
    Min,
    Max,
}

/// `SUM`/`COUNT`/`AVG`/`MIN`/`MAX(x) OVER (… ROWS BETWEEN start PRECEDING
/// AND {end PRECEDING | CURRENT ROW})` of a Float64 or Int64 `x`, computed
/// over each row's frame directly. DataFusion's sliding accumulator slices
/// its input and builds scalars per row; this is a loop over the frame.
/// Nulls are skipped; an empty or all-null frame gives null (COUNT: 0), as
/// in SQL; an Int64 SUM wraps as DataFusion's does.
#[derive(Clone, Debug)]
pub struct RowsAggregate {
    function: RowsFunction,
    argument: Arc<dyn PhysicalExpr>,
    start: usize,
    end: usize,
    output: DataType,
}

impl RowsAggregate {
    /// `None` for argument or result types the direct form does not cover.
    pub fn new(
        function: RowsFunction,
        argument: Arc<dyn PhysicalExpr>,
        start: usize,
        end: usize,
        output: DataType,
    ) -> Option<Self> {
        let expected = match function {
            RowsFunction::Count => matches!(output, DataType::Int64),
            RowsFunction::Avg => matches!(output, DataType::Float64),
            _ => matches!(output, DataType::Float64 | DataType::Int64),
        };
        expected.then_some(Self {
            function,
            argument,
            start,
            end,
            output,
        })
    }

    /// Values of the sorted step rows `rows`, each in the partition that
    /// starts at the matching `starts` entry.
    fn evaluate(&self, source: &RecordBatch, rows: &[u32], starts: &[u32]) -> Result<ArrayRef> {
        use arrow::array::{Float64Array, Int64Array};
        let values = evaluate(&self.argument, source)?;
        let (start, end) = (self.start, self.end);
        // Row `r`'s frame: `start` rows back to `end` rows back, inside its
        // partition.
        let frame = move |r: u32, ps: u32| {
            let (r, ps) = (r as usize, ps as usize);
            let lo = r.saturating_sub(start).max(ps);
            lo..(r + 1).saturating_sub(end).max(lo)
        };
        let rows = rows.iter().copied().zip(starts.iter().copied());
        if self.function == RowsFunction::Count {
            let out: Int64Array = rows
                .map(|(r, ps)| Some(frame(r, ps).filter(|&j| values.is_valid(j)).count() as i64))
                .collect();
            return Ok(Arc::new(out));
        }
        match values.data_type() {
            DataType::Float64 => {
                let v = values.as_primitive::<arrow::datatypes::Float64Type>();
                let out: Float64Array = rows
                    .map(|(r, ps)| {
                        let mut it = frame(r, ps).filter(|&j| v.is_valid(j)).map(|j| v.value(j));
                        match self.function {
                            RowsFunction::Sum => {
                                it.next().map(|first| it.fold(first, |a, x| a + x))
                            }
                            RowsFunction::Avg => {
                                let (sum, n) = it.fold((0.0, 0u64), |(s, n), x| (s + x, n + 1));
                                (n > 0).then(|| sum / n as f64)
                            }
                            RowsFunction::Min => it.reduce(f64::min),
                            RowsFunction::Max => it.reduce(f64::max),
                            RowsFunction::Count => unreachable!("counted above"),
                        }
                    })
                    .collect();
                conform_to(Arc::new(out), &self.output)
            }
            DataType::Int64 => {
                let v = values.as_primitive::<arrow::datatypes::Int64Type>();
                let ints =
                    |r: u32, ps: u32| frame(r, ps).filter(|&j| v.is_valid(j)).map(|j| v.value(j));
                let out: ArrayRef = match self.function {
                    RowsFunction::Avg => Arc::new(
                        rows.map(|(r, ps)| {
                            let (sum, n) =
                                ints(r, ps).fold((0.0, 0u64), |(s, n), x| (s + x as f64, n + 1));
                            (n > 0).then(|| sum / n as f64)
                        })
                        .collect::<Float64Array>(),
                    ),
                    f => Arc::new(
                        rows.map(|(r, ps)| {
                            let mut it = ints(r, ps);
                            match f {
                                RowsFunction::Sum => {
                                    it.next().map(|first| it.fold(first, i64::wrapping_add))
                                }
                                RowsFunction::Min => it.min(),
                                _ => it.max(),
                            }
                        })
                        .collect::<Int64Array>(),
                    ),
                };
                conform_to(out, &self.output)
            }
            other => Err(DataFusionError::Internal(format!(
                "direct OVER aggregate planned for {other}"
            ))),
        }
    }
}

/// A window function the operator computes itself, over a whole step's
/// rows at once, instead of calling DataFusion once per partition.
#[derive(Clone, Debug)]
pub enum DirectFunction {
    Rows(RowsAggregate),
    /// `LAG(x, offset[, default])`: `x` of the row `offset` rows back in
    /// the partition, else the default (null without one).
    Lag {
        argument: Arc<dyn PhysicalExpr>,
        offset: usize,
        default: Option<datafusion::common::ScalarValue>,
    },
}

impl DirectFunction {
    fn evaluate(&self, source: &RecordBatch, rows: &[u32], starts: &[u32]) -> Result<ArrayRef> {
        match self {
            Self::Rows(r) => r.evaluate(source, rows, starts),
            Self::Lag {
                argument,
                offset,
                default,
            } => {
                let values = evaluate(argument, source)?;
                let indices: UInt32Array = rows
                    .iter()
                    .zip(starts)
                    .map(|(&r, &ps)| r.checked_sub(*offset as u32).filter(|&i| i >= ps))
                    .collect();
                let shifted = take(values.as_ref(), &indices, None)?;
                match default.as_ref().filter(|d| !d.is_null()) {
                    None => Ok(shifted),
                    Some(d) => {
                        let d = d
                            .cast_to(values.data_type())?
                            .to_array_of_size(rows.len())?;
                        let before_start = arrow::compute::is_null(&indices)?;
                        Ok(arrow::compute::kernels::zip::zip(
                            &before_start,
                            &d,
                            &shifted,
                        )?)
                    }
                }
            }
        }
    }
}

/// `array` as `output` (the function's declared result type).
fn conform_to(array: ArrayRef, output: &DataType) -> Result<ArrayRef> {
    if array.data_type() == output {
        Ok(array)
    } else {
        Ok(arrow::compute::cast(&array, output)?)
    }
}
