//! OVER windows in event-time order: `LAG`, `LEAD`, `FIRST_VALUE`,
//! `LAST_VALUE` and aggregates over `ROWS`/`RANGE … PRECEDING` frames and
//! running aggregates from `UNBOUNDED PRECEDING` ([`running`]), per
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
//! With `state.ttl`, a partition whose newest row is that far behind the
//! watermark is forgotten (its next row starts it anew, as Flink's state
//! TTL does).
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
use arrow::compute::{concat_batches, filter_record_batch, take};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::error::{DataFusionError, Result};
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_expr::window::WindowExpr;

mod running;

pub use running::RunningAggregate;
use running::{Carry, StepRows};

use super::keys::dense_ids;
use super::operator::{
    OperatorMetrics, OperatorState, Output, RejectedRows, StreamOperator, apply_filter,
    check_state_layout, conform, emit_through_steps, evaluate, evaluate_rows, event_times,
};
use super::plan::{RowStep, apply_steps};
use super::watermark::{END_OF_INPUT, NO_WATERMARK};

/// Arrival order of a row (ties in event time keep it).
const SEQ: &str = "__tickflow_seq";
/// State column: the row was emitted and is kept as frame history.
const EMITTED: &str = "__tickflow_emitted";

/// A planned OVER stream.
#[derive(Clone, Debug)]
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
    /// `state.ttl`: a partition without rows for this long in event time
    /// is dropped.
    pub ttl_ms: Option<i64>,
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
    /// Source schema plus the arrival column, every column nullable (the
    /// buffer keeps nulls for columns no frame reads).
    buffer_schema: SchemaRef,
    /// Per buffer column, whether a frame reads it (the partition key, the
    /// event time, the arrival, the functions' arguments).
    frame_columns: Vec<bool>,
    /// Per source column, whether the SELECT list (or a filter above the
    /// window) reads it.
    select_columns: Vec<bool>,
    /// The window schema with every column nullable (the unread columns
    /// of emitted rows are nulls).
    selected_schema: SchemaRef,
    /// Released rows of all partitions, sorted by (key, event time,
    /// arrival); `emitted[i]` tells whether row `i` was emitted already.
    buffer: RecordBatch,
    emitted: BooleanArray,
    /// Per window function, for the running aggregates: the running state
    /// after each buffered row.
    carries: Vec<Option<Carry>>,
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
    /// Per emitted row, the index of its last peer (same event time); only
    /// when a running aggregate has a `RANGE` frame.
    peer_ends: Vec<u32>,
    values: Vec<Vec<ArrayRef>>,
    rejected: Vec<RejectedRows>,
}

impl OverOperator {
    pub fn new(plan: OverPlan, source_schema: &Schema, output_schema: SchemaRef) -> Result<Self> {
        let mut fields: Vec<Field> = source_schema
            .fields()
            .iter()
            .map(|f| f.as_ref().clone().with_nullable(true))
            .collect();
        fields.push(Field::new(SEQ, DataType::UInt64, false));
        let buffer_schema = Arc::new(Schema::new(fields));
        let frame_columns = frame_columns(&plan, buffer_schema.fields().len());
        let select_columns = select_columns(&plan.post, source_schema.fields().len());
        let selected_schema = Arc::new(Schema::new(
            plan.window_schema
                .fields()
                .iter()
                .map(|f| f.as_ref().clone().with_nullable(true))
                .collect::<Vec<_>>(),
        ));
        let carries = plan
            .direct
            .iter()
            .map(|d| match d {
                Some(DirectFunction::Running(r)) => Some(Carry::nulls(r.argument_type(), 0)),
                _ => None,
            })
            .collect();
        Ok(Self {
            plan,
            carries,
            frame_columns,
            select_columns,
            selected_schema,
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
                if ts.is_sorted() {
                    // In event-time order (the usual feed): two slices, no copy.
                    let split = ts.partition_point(|&t| t < before);
                    self.add_pending(rows.slice(split, rows.num_rows() - split))?;
                    ready.push(rows.slice(0, split));
                    continue;
                }
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
    ///
    /// The buffer and the released rows are concatenated once and ordered
    /// by index only; columns are copied once more for the rows emitted
    /// and once for the rows kept, never for the whole step.
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
        let buffered = self.buffer.num_rows();
        let rows = concat_batches(&self.buffer_schema, [&self.buffer, &ready])?;
        let ids = dense_ids(&self.plan.partition_by, &rows)?;
        let (ts, _) = event_times(&rows, self.plan.event_time_index)?;
        let seq = rows
            .column(rows.num_columns() - 1)
            .as_primitive::<arrow::datatypes::UInt64Type>()
            .values();
        let StepOrder { order, ranges } = step_order(
            ids.as_primitive::<arrow::datatypes::UInt32Type>().values(),
            &ts,
            seq,
        );
        let order = UInt32Array::from(order);
        // The sorted rows, only for functions DataFusion evaluates.
        let sorted = match self.plan.direct.iter().any(Option::is_none) {
            true => Some(drop_seq(&take_rows(&rows, &order)?)),
            false => None,
        };
        let was_emitted = |i: u32| (i as usize) < buffered && self.emitted.value(i as usize);
        let end_of_input = watermark == END_OF_INPUT;
        let mut step = StepOutput {
            values: vec![Vec::new(); self.plan.functions.len()],
            ..StepOutput::default()
        };
        let mut keep = Vec::new();
        let mut keep_emitted = Vec::new();
        let peers = self.plan.direct.iter().any(|d| match d {
            Some(DirectFunction::Running(r)) => r.peers(),
            _ => false,
        });
        // The end of the input is not the passing of time: nothing expires.
        let forget_before = (!end_of_input)
            .then_some(self.plan.ttl_ms)
            .flatten()
            .map(|ttl| watermark.saturating_sub(ttl));
        for range in ranges {
            let in_range = &order.values()[range.clone()];
            let first_new = range.start + in_range.iter().filter(|&&i| was_emitted(i)).count();
            let upto = if end_of_input {
                range.end
            } else {
                range
                    .end
                    .saturating_sub(self.plan.following_rows)
                    .max(range.start)
            };
            if upto > first_new
                && self.evaluate_partition(
                    sorted.as_ref(),
                    range.clone(),
                    first_new..upto,
                    &mut step,
                )
                && peers
            {
                let ts_at = |p: usize| ts[order.value(p) as usize];
                step.peer_ends
                    .extend(peer_ends(range.clone(), first_new..upto, ts_at));
            }
            let next_emitted = upto.max(first_new);
            // `state.ttl`: a partition that saw no row for that long is
            // forgotten once all its rows are out.
            let newest = ts[order.value(range.end - 1) as usize];
            if next_emitted == range.end && forget_before.is_some_and(|before| newest < before) {
                continue;
            }
            // What the frames can still reach, and the waiting rows.
            let from =
                self.first_reachable(range.clone(), next_emitted, |p| ts[order.value(p) as usize]);
            for p in from..range.end {
                keep.push(order.value(p));
                keep_emitted.push(p < next_emitted);
            }
        }
        let carries = self.evaluate_direct(&rows, &order, &mut step)?;
        let keep = UInt32Array::from(keep);
        self.buffer = self.history(&rows, &keep)?;
        self.carries = carries
            .into_iter()
            .map(|c| c.map(|c| c.take(&keep)).transpose())
            .collect::<Result<_>>()?;
        self.emitted = BooleanArray::from(keep_emitted);
        self.metrics.open_windows = self.buffer.num_rows() as u64;
        self.emitted_before = self.first_unemitted()?;
        self.finish_step(&rows, &order, step, out)
    }

    /// The direct functions, once over the whole step's `rows` (sorted by
    /// `order`); returns the running aggregates' carries for `rows`.
    fn evaluate_direct(
        &self,
        rows: &RecordBatch,
        order: &UInt32Array,
        step: &mut StepOutput,
    ) -> Result<Vec<Option<Carry>>> {
        let mut carries = Vec::with_capacity(self.carries.len());
        let functions = self.plan.direct.iter().zip(&self.carries);
        for (values, (direct, buffered)) in step.values.iter_mut().zip(functions) {
            let Some(d) = direct else {
                carries.push(None);
                continue;
            };
            let arguments = take(evaluate(d.argument(), rows)?.as_ref(), order, None)?;
            let (DirectFunction::Running(r), Some(buffered)) = (d, buffered) else {
                values.push(d.evaluate(&arguments, &step.rows, &step.starts)?);
                carries.push(None);
                continue;
            };
            let released = rows.num_rows() - buffered.n.len();
            let prior = Carry::concat(&[buffered, &Carry::nulls(r.argument_type(), released)])?;
            let (value, after) = r.evaluate(
                &arguments,
                &StepRows {
                    rows: &step.rows,
                    starts: &step.starts,
                    peer_ends: &step.peer_ends,
                    prior: &prior.take(order)?,
                },
            )?;
            values.push(value);
            let emitted: Vec<u32> = step.rows.iter().map(|&p| order.value(p as usize)).collect();
            carries.push(Some(prior.with_updates(&emitted, &after)?));
        }
        Ok(carries)
    }

    /// The first sorted position of a partition (`range`) that a frame of
    /// its rows from `next_emitted` on can still reach: the last
    /// `preceding_rows` rows before it and those within `preceding_ms` of
    /// its event time (`ts_at` gives a sorted position's event time).
    fn first_reachable(
        &self,
        range: std::ops::Range<usize>,
        next_emitted: usize,
        ts_at: impl Fn(usize) -> i64,
    ) -> usize {
        let by_rows = next_emitted
            .saturating_sub(self.plan.preceding_rows)
            .max(range.start);
        if self.plan.preceding_ms <= 0 {
            return by_rows.min(next_emitted);
        }
        let next = (next_emitted < range.end).then(|| ts_at(next_emitted));
        let reach = next
            .unwrap_or(self.watermark)
            .saturating_sub(self.plan.preceding_ms);
        // Event times rise along the partition: binary search.
        let (mut lo, mut hi) = (range.start, next_emitted);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            if ts_at(mid) < reach {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        by_rows.min(lo)
    }

    /// The rows kept for the next step (`keep`, indices into `rows`). Once
    /// emitted, a row only serves frames, so the columns no frame reads
    /// are kept as nulls (all kept rows are emitted ones unless a function
    /// reads following rows).
    fn history(&self, rows: &RecordBatch, keep: &UInt32Array) -> Result<RecordBatch> {
        let all_emitted = self.plan.following_rows == 0;
        let columns = rows
            .columns()
            .iter()
            .zip(&self.frame_columns)
            .map(|(c, &read)| match read || !all_emitted {
                true => Ok(take(c.as_ref(), keep, None)?),
                false => Ok(arrow::array::new_null_array(c.data_type(), keep.len())),
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(RecordBatch::try_new(
            Arc::clone(&self.buffer_schema),
            columns,
        )?)
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
    /// sorted rows and keeps the values of the rows in `emit`; false when
    /// they failed and went to the dead letters.
    /// `sorted` is the step's rows in order when a function needs
    /// DataFusion (the direct ones are evaluated for the whole step).
    fn evaluate_partition(
        &self,
        sorted: Option<&RecordBatch>,
        range: std::ops::Range<usize>,
        emit: std::ops::Range<usize>,
        step: &mut StepOutput,
    ) -> bool {
        let Some(source) = sorted else {
            step.rows.extend(emit.start as u32..emit.end as u32);
            step.starts
                .extend(std::iter::repeat_n(range.start as u32, emit.len()));
            return true;
        };
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
                true
            }
            // A function failed on this partition's rows (e.g. an
            // overflowing SUM): they become dead letters, the other
            // partitions carry on.
            Err(e) => {
                step.rejected.push(RejectedRows {
                    rows: source.slice(emit.start, emit.len()),
                    error: e.to_string(),
                });
                false
            }
        }
    }

    /// Builds the emitted rows (source columns and function values) and
    /// projects them; failed partitions go to the dead letters. `step.rows`
    /// are sorted positions, `order` maps them to `rows`.
    fn finish_step(
        &mut self,
        rows: &RecordBatch,
        order: &UInt32Array,
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
        let indices: UInt32Array = step.rows.iter().map(|&p| order.value(p as usize)).collect();
        let values = step
            .values
            .iter()
            .map(|pieces| match pieces.as_slice() {
                [one] => Ok(Arc::clone(one)),
                _ => arrow::compute::concat(&pieces.iter().map(|a| a.as_ref()).collect::<Vec<_>>()),
            })
            .collect::<std::result::Result<Vec<_>, _>>()?;
        // Only the columns the SELECT list reads; the whole rows where it
        // fails on some, so that the dead letters carry every column.
        let read = self.window_rows(rows, &indices, &values, true)?;
        match apply_steps(&self.plan.post, &read, &self.output_schema) {
            Ok(projected) => {
                if projected.num_rows() > 0 {
                    self.metrics.rows_out += projected.num_rows() as u64;
                    out.rows.push(projected);
                }
                Ok(())
            }
            Err(_) => {
                let whole = self.window_rows(rows, &indices, &values, false)?;
                self.project(&whole, out)
            }
        }
    }

    /// The emitted rows (`indices` into `rows`) with their function
    /// `values`, in the window schema; with `only_selected`, the columns the
    /// SELECT list does not read are nulls.
    fn window_rows(
        &self,
        rows: &RecordBatch,
        indices: &UInt32Array,
        values: &[ArrayRef],
        only_selected: bool,
    ) -> Result<RecordBatch> {
        let source_columns = &rows.columns()[..rows.num_columns() - 1];
        let mut columns = source_columns
            .iter()
            .zip(&self.select_columns)
            .map(|(c, &read)| match read || !only_selected {
                true => Ok(take(c.as_ref(), indices, None)?),
                false => Ok(arrow::array::new_null_array(c.data_type(), indices.len())),
            })
            .collect::<Result<Vec<_>>>()?;
        columns.extend(values.iter().cloned());
        let schema = match only_selected {
            true => &self.selected_schema,
            false => &self.plan.window_schema,
        };
        Ok(RecordBatch::try_new(
            Arc::clone(schema),
            conform(schema, columns)?,
        )?)
    }

    /// The SELECT list over emitted rows; rows it fails on are rejected.
    fn project(&mut self, rows: &RecordBatch, out: &mut Output) -> Result<()> {
        let schema = &self.output_schema;
        emit_through_steps(&self.plan.post, schema, rows, out, &mut self.metrics)
    }
}

/// Which of the `width` buffer columns a frame reads: the partition key,
/// the event time, the arrival and every column a window function's
/// arguments, partitioning or ordering refer to.
fn frame_columns(plan: &OverPlan, width: usize) -> Vec<bool> {
    let mut read = vec![false; width];
    read[plan.event_time_index] = true;
    read[width - 1] = true;
    let function_exprs = plan.functions.iter().flat_map(|f| {
        let mut exprs = f.expressions();
        exprs.extend(f.partition_by().iter().cloned());
        exprs.extend(f.order_by().iter().map(|o| Arc::clone(&o.expr)));
        exprs
    });
    for expr in plan.partition_by.iter().cloned().chain(function_exprs) {
        mark_columns(&mut read, &expr);
    }
    read
}

/// Marks in `read` the columns `expr` refers to.
fn mark_columns(read: &mut [bool], expr: &Arc<dyn PhysicalExpr>) {
    for column in datafusion::physical_expr::utils::collect_columns(expr) {
        if let Some(r) = read.get_mut(column.index()) {
            *r = true;
        }
    }
}

/// Which of the `width` source columns the steps above the window read:
/// those its filters and first projection refer to (all of them when no
/// projection follows).
fn select_columns(post: &[RowStep], width: usize) -> Vec<bool> {
    let mut read = vec![false; width];
    for step in post {
        match step {
            RowStep::Filter(predicate) => mark_columns(&mut read, predicate),
            RowStep::Project(exprs) => {
                exprs.iter().for_each(|e| mark_columns(&mut read, e));
                return read;
            }
        }
    }
    vec![true; width]
}

/// A step's rows in (partition, event time, arrival) order, as indices
/// into the unsorted rows, and each partition's range of positions.
struct StepOrder {
    order: Vec<u32>,
    ranges: Vec<std::ops::Range<usize>>,
}

/// Orders a step's rows by their dense partition `ids` with a counting
/// sort (stable, linear), then each partition by (event time, arrival)
/// where it is not in that order already. The buffered rows come first
/// and are sorted, and released rows mostly arrive in event-time order, so
/// a partition rarely needs the comparison sort.
fn step_order(ids: &[u32], ts: &[i64], seq: &[u64]) -> StepOrder {
    let partitions = ids.iter().max().map_or(0, |&m| m as usize + 1);
    let mut bounds = vec![0usize; partitions + 1];
    for &id in ids {
        bounds[id as usize + 1] += 1;
    }
    for p in 1..bounds.len() {
        bounds[p] += bounds[p - 1];
    }
    let mut next = bounds.clone();
    let mut order = vec![0u32; ids.len()];
    for (i, &id) in ids.iter().enumerate() {
        order[next[id as usize]] = i as u32;
        next[id as usize] += 1;
    }
    let key = |&i: &u32| (ts[i as usize], seq[i as usize]);
    let ranges: Vec<_> = bounds.windows(2).map(|w| w[0]..w[1]).collect();
    for range in &ranges {
        let part = &mut order[range.clone()];
        if !part.is_sorted_by_key(key) {
            part.sort_unstable_by_key(key);
        }
    }
    StepOrder { order, ranges }
}

/// For the positions `emit` of a partition's sorted `range`, the last
/// position with the same event time (`ts_at`), which may lie beyond `emit`.
fn peer_ends(
    range: std::ops::Range<usize>,
    emit: std::ops::Range<usize>,
    ts_at: impl Fn(usize) -> i64,
) -> Vec<u32> {
    let mut ends = vec![0u32; emit.len()];
    let mut last = range.end - 1;
    for p in (emit.start..range.end).rev() {
        if p + 1 < range.end && ts_at(p + 1) != ts_at(p) {
            last = p;
        }
        if p < emit.end {
            ends[p - emit.start] = last as u32;
        }
    }
    ends
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
            let rows = if on_time.true_count() == rows.num_rows() {
                rows
            } else {
                let late = filter_record_batch(&rows, &arrow::compute::not(&on_time)?)?;
                self.metrics.late_events += late.num_rows() as u64;
                out.late.push(late);
                filter_record_batch(&rows, &on_time)?
            };
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
        for carry in self.carries.iter().flatten() {
            let pending = Carry::nulls(carry.acc.data_type(), self.pending_rows);
            let carry = Carry::concat(&[carry, &pending])?;
            columns.push(carry.acc);
            columns.push(Arc::new(carry.n));
        }
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
        for carry in self.carries.iter_mut().flatten() {
            *carry = Carry::nulls(&carry.acc.data_type().clone(), 0);
        }
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
        let width = self.buffer_schema.fields().len();
        let rows = RecordBatch::try_new(
            Arc::clone(&self.buffer_schema),
            batch.columns()[..width].to_vec(),
        )?;
        let mut carry_columns = batch.columns()[width..flag_index].chunks(2);
        for carry in self.carries.iter_mut().flatten() {
            let [acc, n] = carry_columns.next().expect("state layout checked") else {
                unreachable!("carry columns come in pairs");
            };
            *carry = Carry {
                acc: acc.slice(0, buffered),
                n: n.as_primitive().slice(0, buffered),
            };
        }
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
    /// Buffered rows, the running aggregates' carries, then whether each
    /// row was emitted.
    fn state_schema(&self) -> SchemaRef {
        let mut fields: Vec<Field> = self
            .buffer_schema
            .fields()
            .iter()
            .map(|f| f.as_ref().clone())
            .collect();
        for (k, carry) in self.carries.iter().enumerate() {
            if let Some(carry) = carry {
                let name = format!("__tickflow_running_{k}");
                fields.push(Field::new(&name, carry.acc.data_type().clone(), true));
                fields.push(Field::new(format!("{name}_n"), DataType::Int64, true));
            }
        }
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

    /// Values of the step rows at sorted positions `rows`, each in the
    /// partition that starts at the matching `starts` entry; `values` is
    /// the argument at every sorted position.
    fn evaluate(&self, values: &ArrayRef, rows: &[u32], starts: &[u32]) -> Result<ArrayRef> {
        use arrow::array::{Float64Array, Int64Array};
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
        let function = self.function;
        match values.data_type() {
            DataType::Float64 => {
                let v = values.as_primitive::<arrow::datatypes::Float64Type>();
                let dense = v.null_count() == 0;
                let out: Float64Array = rows
                    .map(|(r, ps)| match dense {
                        true => fold_floats(function, v.values()[frame(r, ps)].iter().copied()),
                        false => fold_floats(function, non_null(v, frame(r, ps))),
                    })
                    .collect();
                conform_to(Arc::new(out), &self.output)
            }
            DataType::Int64 => {
                let v = values.as_primitive::<arrow::datatypes::Int64Type>();
                let dense = v.null_count() == 0;
                let out: ArrayRef = if function == RowsFunction::Avg {
                    let as_float = |x: i64| x as f64;
                    Arc::new(
                        rows.map(|(r, ps)| match dense {
                            true => {
                                let it = v.values()[frame(r, ps)].iter().map(|&x| as_float(x));
                                fold_floats(function, it)
                            }
                            false => fold_floats(function, non_null(v, frame(r, ps)).map(as_float)),
                        })
                        .collect::<Float64Array>(),
                    )
                } else {
                    Arc::new(
                        rows.map(|(r, ps)| match dense {
                            true => fold_ints(function, v.values()[frame(r, ps)].iter().copied()),
                            false => fold_ints(function, non_null(v, frame(r, ps))),
                        })
                        .collect::<Int64Array>(),
                    )
                };
                conform_to(out, &self.output)
            }
            other => Err(DataFusionError::Internal(format!(
                "direct OVER aggregate planned for {other}"
            ))),
        }
    }
}

/// The non-null values of `v` at positions `frame`, in order.
fn non_null<T: arrow::datatypes::ArrowPrimitiveType>(
    v: &arrow::array::PrimitiveArray<T>,
    frame: std::ops::Range<usize>,
) -> impl Iterator<Item = T::Native> + '_ {
    frame.filter(|&j| v.is_valid(j)).map(|j| v.value(j))
}

/// `function` over a frame's non-null float values, in frame order (the
/// order a batch engine adds them in); `None` for an empty frame.
fn fold_floats(function: RowsFunction, mut values: impl Iterator<Item = f64>) -> Option<f64> {
    match function {
        RowsFunction::Sum => values.next().map(|first| values.fold(first, |a, x| a + x)),
        RowsFunction::Avg => {
            let (sum, n) = values.fold((0.0, 0u64), |(s, n), x| (s + x, n + 1));
            (n > 0).then(|| sum / n as f64)
        }
        RowsFunction::Min => values.reduce(f64::min),
        RowsFunction::Max => values.reduce(f64::max),
        RowsFunction::Count => unreachable!("COUNT is counted, not folded"),
    }
}

/// `SUM` (wrapping, as DataFusion's), `MIN` or `MAX` over a frame's
/// non-null integer values; `None` for an empty frame.
fn fold_ints(function: RowsFunction, mut values: impl Iterator<Item = i64>) -> Option<i64> {
    match function {
        RowsFunction::Sum => values
            .next()
            .map(|first| values.fold(first, i64::wrapping_add)),
        RowsFunction::Min => values.min(),
        RowsFunction::Max => values.max(),
        RowsFunction::Avg | RowsFunction::Count => unreachable!("folded as floats or counted"),
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
    /// An aggregate from `UNBOUNDED PRECEDING` to the current row.
    Running(RunningAggregate),
}

impl DirectFunction {
    /// The expression whose values the function reads.
    fn argument(&self) -> &Arc<dyn PhysicalExpr> {
        match self {
            Self::Rows(r) => &r.argument,
            Self::Lag { argument, .. } => argument,
            Self::Running(r) => &r.argument,
        }
    }

    /// Values of the step rows at sorted positions `rows` (see
    /// [`RowsAggregate::evaluate`]).
    fn evaluate(&self, values: &ArrayRef, rows: &[u32], starts: &[u32]) -> Result<ArrayRef> {
        match self {
            Self::Rows(r) => r.evaluate(values, rows, starts),
            Self::Running(_) => Err(DataFusionError::Internal(
                "a running aggregate is evaluated with its carries".into(),
            )),
            Self::Lag {
                offset, default, ..
            } => {
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

#[cfg(test)]
mod tests {
    use arrow::array::{AsArray, Int64Array, StringArray, TimestampMillisecondArray};
    use arrow::datatypes::{Int64Type, TimeUnit};

    use super::*;
    use crate::{Catalog, EngineConfig, Pipeline, StreamOutput};

    const SQL: &str = "CREATE TABLE t (k VARCHAR, v BIGINT, ts TIMESTAMP(3), WATERMARK FOR ts AS ts) WITH ('topic' = 't', 'format' = 'json');
CREATE STREAM s WITH ('state.ttl' = '5 s') AS
SELECT k, ts, LAG(v) OVER w AS prev, SUM(v) OVER w AS total
FROM t WINDOW w AS (PARTITION BY k ORDER BY ts ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW);";

    const BASE: i64 = 1_700_000_000_000;

    fn rows(rows: &[(&str, i64, i64)]) -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![
            Field::new("k", DataType::Utf8, true),
            Field::new("v", DataType::Int64, true),
            Field::new("ts", DataType::Timestamp(TimeUnit::Millisecond, None), true),
        ]));
        let keys: Vec<&str> = rows.iter().map(|r| r.0).collect();
        let values: Vec<i64> = rows.iter().map(|r| r.1).collect();
        let ts: Vec<i64> = rows.iter().map(|r| BASE + r.2).collect();
        RecordBatch::try_new(
            schema,
            vec![
                Arc::new(StringArray::from(keys)),
                Arc::new(Int64Array::from(values)),
                Arc::new(TimestampMillisecondArray::from(ts)),
            ],
        )
        .unwrap()
    }

    /// (key, LAG, running SUM) of every emitted row, sorted.
    fn emitted(out: &[StreamOutput]) -> Vec<(String, Option<i64>, i64)> {
        let mut all: Vec<_> = out
            .iter()
            .flat_map(|o| {
                let keys = o.rows.column(0).as_string::<i32>().clone();
                let prev = o.rows.column(2).as_primitive::<Int64Type>().clone();
                let total = o.rows.column(3).as_primitive::<Int64Type>().clone();
                (0..o.rows.num_rows()).map(move |i| {
                    let lag = prev.is_valid(i).then(|| prev.value(i));
                    (keys.value(i).to_string(), lag, total.value(i))
                })
            })
            .collect();
        all.sort();
        all
    }

    /// Pushes `batch` after the operator's step interval, so that its
    /// watermark releases the rows before it.
    fn push_later(p: &mut Pipeline, batch: &[(&str, i64, i64)]) -> Vec<StreamOutput> {
        std::thread::sleep(RELEASE_EVERY + std::time::Duration::from_millis(50));
        let mut out = Vec::new();
        p.push("t", 0, &rows(batch), &mut out).unwrap();
        out
    }

    #[test]
    fn running_sums_carry_across_steps_and_restores_and_idle_partitions_expire() {
        let config = EngineConfig {
            idle_timeout: None,
            ..EngineConfig::default()
        };
        let mut p = Pipeline::new(SQL, &Catalog::empty(), &config).unwrap();
        let first = [("a", 1, 0), ("a", 2, 1000), ("b", 10, 0), ("b", 5, 3000)];
        let mut out = Vec::new();
        p.push("t", 0, &rows(&first), &mut out).unwrap();
        assert!(out.is_empty(), "no step yet: {out:?}");
        let out = push_later(&mut p, &[("c", 100, 4000)]);
        assert_eq!(
            emitted(&out),
            [
                ("a".into(), None, 1),
                ("a".into(), Some(1), 3),
                ("b".into(), None, 10),
                ("b".into(), Some(10), 15),
            ]
        );
        // At 7 s `a`'s newest row (1 s) is more than 5 s behind: forgotten.
        // `b` (3 s) is kept.
        let out = push_later(&mut p, &[("c", 200, 7000)]);
        assert_eq!(emitted(&out), [("c".into(), None, 100)]);
        let snapshot = p.snapshot().unwrap();
        let mut p = Pipeline::new(SQL, &Catalog::empty(), &config).unwrap();
        p.restore(snapshot).unwrap();
        let out = push_later(&mut p, &[("a", 4, 7500), ("b", 6, 7500)]);
        assert_eq!(emitted(&out), [("c".into(), Some(100), 300)]);
        // `a` starts anew; `b` and `c` carry on from their last rows.
        let out = push_later(&mut p, &[("c", 400, 9000)]);
        assert_eq!(
            emitted(&out),
            [("a".into(), None, 4), ("b".into(), Some(5), 21)]
        );
        let mut out = Vec::new();
        p.finish_partition("t", 0, &mut out).unwrap();
        assert_eq!(emitted(&out), [("c".into(), Some(200), 700)]);
    }
}
