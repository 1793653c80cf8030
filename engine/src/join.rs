//! Interval joins of two streams: each left row with every right row of
//! the same key whose event time lies within `[lower, upper]` of its own
//! (`right.ts - left.ts`), inner or LEFT.
//!
//! Each side keeps its rows, indexed by key, for as long as the other
//! side can still send a match: a left row until the right watermark has
//! passed `ts + upper`, a right row until the left watermark has passed
//! `ts - lower`. A pair is emitted when the later of its two rows arrives
//! (the earlier one is in the other side's state), so every pair is found
//! exactly once and as soon as it exists. A LEFT join's left row that
//! matched nothing is emitted with nulls once it is forgotten: no pair can
//! come any more, so that row is final.
//!
//! Invariants: state holds only rows a future row can still match
//! (forgetting is done in bulk, once at least half of a side can go, so
//! it costs O(1) per row); a row arriving behind its own side's watermark
//! is late (reported, never joined); the output's event time is the left
//! row's, and no row is emitted behind [`output_watermark`](IntervalJoin).

use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, RecordBatch, UInt8Array, UInt32Array, new_null_array,
};
use arrow::compute::{concat_batches, filter_record_batch, interleave, take};
use arrow::datatypes::{DataType, Field, FieldRef, Schema, SchemaRef};
use datafusion::error::{DataFusionError, Result};
use datafusion::physical_expr::PhysicalExpr;

use super::keys::GroupKeys;
use super::operator::{
    OperatorMetrics, OperatorState, Output, StreamOperator, check_state_layout, conform, evaluate,
    evaluate_mask, evaluate_rows, event_times,
};
use super::plan::{RowStep, apply_steps};
use super::watermark::{END_OF_INPUT, NO_WATERMARK};

/// Inner join, or LEFT (unmatched left rows with nulls).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JoinKind {
    Inner,
    Left,
}

/// One input of a join.
#[derive(Debug)]
pub struct JoinSide {
    /// From the input's rows to the join's input columns (the filters and
    /// projections of subqueries on this side).
    pub steps: Vec<RowStep>,
    /// The join's input columns from this side, all nullable.
    pub schema: SchemaRef,
    /// Index of the event-time column in `schema`.
    pub event_time_index: usize,
    /// The equality keys, on `schema` rows (pairwise with the other side's).
    pub keys: Vec<Arc<dyn PhysicalExpr>>,
}

/// A planned interval join.
#[derive(Debug)]
pub struct JoinPlan {
    pub kind: JoinKind,
    pub left: JoinSide,
    pub right: JoinSide,
    /// `right.ts - left.ts` lies in `[lower_ms, upper_ms]` for every pair.
    pub lower_ms: i64,
    pub upper_ms: i64,
    /// The rest of ON, on joined rows.
    pub residual: Option<Arc<dyn PhysicalExpr>>,
    /// Left columns followed by right columns.
    pub joined_schema: SchemaRef,
    /// WHERE and the SELECT list, on joined rows.
    pub post: Vec<RowStep>,
}

const LEFT: usize = 0;
const RIGHT: usize = 1;
/// State column: which side a row belongs to.
const SIDE: &str = "__tickflow_side";
/// State column: a left row has matched (LEFT join).
const MATCHED: &str = "__tickflow_matched";
/// Appended to joined rows while the residual runs: the pair's number.
const PAIR: &str = "__tickflow_pair";

/// Rows of one side that arrived together.
struct Chunk {
    rows: RecordBatch,
    ts: Vec<i64>,
    matched: Vec<bool>,
    max_ts: i64,
}

/// One side's rows, with an index from key to (chunk, row).
#[derive(Default)]
struct SideState {
    chunks: Vec<Chunk>,
    index: HashMap<usize, Vec<(u32, u32)>>,
    rows: usize,
}

pub struct IntervalJoin {
    plan: JoinPlan,
    output_schema: SchemaRef,
    /// One numbering of key tuples for both sides.
    keys: GroupKeys,
    key_fields: Vec<FieldRef>,
    sides: [SideState; 2],
    watermarks: [i64; 2],
    metrics: OperatorMetrics,
}

impl IntervalJoin {
    pub fn new(plan: JoinPlan, output_schema: SchemaRef) -> Result<Self> {
        let key_fields: Vec<FieldRef> = plan
            .left
            .keys
            .iter()
            .enumerate()
            .map(|(i, k)| {
                Ok(Arc::new(Field::new(
                    format!("k{i}"),
                    k.data_type(&plan.left.schema)?,
                    true,
                )))
            })
            .collect::<Result<_>>()?;
        Ok(Self {
            keys: GroupKeys::new(&key_fields)?,
            key_fields,
            plan,
            output_schema,
            sides: [SideState::default(), SideState::default()],
            watermarks: [NO_WATERMARK; 2],
            metrics: OperatorMetrics::default(),
        })
    }

    fn side(&self, side: usize) -> &JoinSide {
        match side {
            LEFT => &self.plan.left,
            _ => &self.plan.right,
        }
    }

    /// Whether a row of `side` at event time `ts` can no longer match.
    fn expired(&self, side: usize, ts: i64) -> bool {
        match side {
            LEFT => ts.saturating_add(self.plan.upper_ms) < self.watermarks[RIGHT],
            _ => ts.saturating_sub(self.plan.lower_ms) < self.watermarks[LEFT],
        }
    }

    /// The key columns of `rows` of `side`, in the left keys' types, and
    /// which rows have no null key (only those can match).
    fn key_columns(&self, side: usize, rows: &RecordBatch) -> Result<(Vec<ArrayRef>, Vec<bool>)> {
        let columns = self
            .side(side)
            .keys
            .iter()
            .zip(&self.key_fields)
            .map(|(k, f)| {
                let c = evaluate(k, rows)?;
                match c.data_type() == f.data_type() {
                    true => Ok(c),
                    false => Ok(arrow::compute::cast(&c, f.data_type())?),
                }
            })
            .collect::<Result<Vec<_>>>()?;
        let valid = (0..rows.num_rows())
            .map(|i| columns.iter().all(|c| c.is_valid(i)))
            .collect();
        Ok((columns, valid))
    }

    /// Joins arriving `rows` of `side` with the other side's state, then
    /// keeps them.
    fn arrive(&mut self, side: usize, rows: RecordBatch, out: &mut Output) -> Result<()> {
        let (key_columns, valid) = self.key_columns(side, &rows)?;
        let mut ids = Vec::new();
        self.keys.intern(&key_columns, rows.num_rows(), &mut ids)?;
        let (ts, _) = event_times(&rows, self.side(side).event_time_index)?;

        // Candidate pairs: same key, event times within the bounds.
        let other = 1 - side;
        let (lower, upper) = (self.plan.lower_ms, self.plan.upper_ms);
        let mut mine: Vec<u32> = Vec::new();
        let mut theirs: Vec<(usize, usize)> = Vec::new();
        for (i, (&id, &ok)) in ids.iter().zip(&valid).enumerate() {
            let Some(candidates) = ok.then(|| self.sides[other].index.get(&id)).flatten() else {
                continue;
            };
            for &(c, r) in candidates {
                let their_ts = self.sides[other].chunks[c as usize].ts[r as usize];
                let d = match side {
                    LEFT => their_ts - ts[i],
                    _ => ts[i] - their_ts,
                };
                if (lower..=upper).contains(&d) {
                    mine.push(i as u32);
                    theirs.push((c as usize, r as usize));
                }
            }
        }
        let mut matched = vec![false; rows.num_rows()];
        if !mine.is_empty() {
            let pairs = self.pairs(side, &rows, &mine, &theirs)?;
            for p in self.matching_pairs(pairs, out)? {
                matched[mine[p] as usize] = true;
                let (c, r) = theirs[p];
                self.sides[other].chunks[c].matched[r] = true;
            }
        }
        self.keep(side, rows, ts, matched, &ids, &valid);
        Ok(())
    }

    /// The joined rows of the pairs (`mine[p]` of `rows` of `side` with
    /// the other side's row `theirs[p]`), left columns first, with the
    /// pair's number appended.
    fn pairs(
        &self,
        side: usize,
        rows: &RecordBatch,
        mine: &[u32],
        theirs: &[(usize, usize)],
    ) -> Result<RecordBatch> {
        let mine_idx = UInt32Array::from(mine.to_vec());
        let my_columns = rows
            .columns()
            .iter()
            .map(|c| Ok(take(c.as_ref(), &mine_idx, None)?))
            .collect::<Result<Vec<_>>>()?;
        let chunks = &self.sides[1 - side].chunks;
        let their_columns = (0..self.side(1 - side).schema.fields().len())
            .map(|j| {
                let arrays: Vec<&dyn Array> =
                    chunks.iter().map(|c| c.rows.column(j).as_ref()).collect();
                Ok(interleave(&arrays, theirs)?)
            })
            .collect::<Result<Vec<_>>>()?;
        let mut columns = match side {
            LEFT => [my_columns, their_columns].concat(),
            _ => [their_columns, my_columns].concat(),
        };
        columns.push(Arc::new(UInt32Array::from_iter_values(
            0..mine.len() as u32,
        )));
        self.with_pair_column(columns)
    }

    /// `columns` (joined columns and the pair number) as a batch.
    fn with_pair_column(&self, columns: Vec<ArrayRef>) -> Result<RecordBatch> {
        let mut fields: Vec<FieldRef> = self.plan.joined_schema.fields().iter().cloned().collect();
        fields.push(Arc::new(Field::new(PAIR, DataType::UInt32, false)));
        let schema = Arc::new(Schema::new(fields));
        Ok(RecordBatch::try_new(
            Arc::clone(&schema),
            conform(&schema, columns)?,
        )?)
    }

    /// Applies the rest of ON to candidate pairs and emits those it keeps;
    /// returns their numbers. A pair the residual or the SELECT list fails
    /// on goes to the dead letters and counts as matched (it is not lost,
    /// and its left row must not come out again with nulls).
    fn matching_pairs(&mut self, pairs: RecordBatch, out: &mut Output) -> Result<Vec<usize>> {
        let residual = self.plan.residual.clone();
        let eval = |batch: &RecordBatch| -> Result<RecordBatch> {
            match &residual {
                Some(r) => Ok(filter_record_batch(batch, &evaluate_mask(r, batch)?)?),
                None => Ok(batch.clone()),
            }
        };
        let mut kept = Vec::new();
        let mut apply = |_: &RecordBatch, rows: RecordBatch, _: &mut Output| {
            kept.push(rows);
            Ok(())
        };
        let before = out.rejected.len();
        evaluate_rows(&pairs, out, &eval, &mut apply)?;
        let mut numbers: Vec<usize> = Vec::new();
        for r in &mut out.rejected[before..] {
            numbers.extend(pair_numbers(&r.rows));
            r.rows = without_pair_column(&r.rows);
        }
        self.metrics.rejected_rows += (out.rejected.len() - before) as u64;
        for rows in kept {
            numbers.extend(pair_numbers(&rows));
            self.emit(&without_pair_column(&rows), out)?;
        }
        Ok(numbers)
    }

    /// WHERE and the SELECT list over joined rows, to the output.
    fn emit(&mut self, joined: &RecordBatch, out: &mut Output) -> Result<()> {
        if joined.num_rows() == 0 {
            return Ok(());
        }
        let (post, schema) = (&self.plan.post, &self.output_schema);
        let eval = |b: &RecordBatch| apply_steps(post, b, schema);
        let metrics = &mut self.metrics;
        let mut apply = |_: &RecordBatch, rows: RecordBatch, out: &mut Output| {
            if rows.num_rows() > 0 {
                metrics.rows_out += rows.num_rows() as u64;
                out.rows.push(rows);
            }
            Ok(())
        };
        let before = out.rejected.len();
        evaluate_rows(joined, out, &eval, &mut apply)?;
        self.metrics.rejected_rows += (out.rejected.len() - before) as u64;
        Ok(())
    }

    /// Keeps arrived rows of `side` in its state, indexed by key.
    fn keep(
        &mut self,
        side: usize,
        rows: RecordBatch,
        ts: Vec<i64>,
        matched: Vec<bool>,
        ids: &[usize],
        valid: &[bool],
    ) {
        if rows.num_rows() == 0 {
            return;
        }
        let state = &mut self.sides[side];
        let c = state.chunks.len() as u32;
        for (r, (&id, &ok)) in ids.iter().zip(valid).enumerate() {
            if ok {
                state.index.entry(id).or_default().push((c, r as u32));
            }
        }
        state.rows += rows.num_rows();
        let max_ts = ts.iter().copied().max().unwrap_or(NO_WATERMARK);
        state.chunks.push(Chunk {
            rows,
            ts,
            matched,
            max_ts,
        });
        self.metrics.open_windows = (self.sides[LEFT].rows + self.sides[RIGHT].rows) as u64;
    }

    /// Forgets the rows of `side` that can no longer match, once at least
    /// half of its rows can go (or the other side has ended); a LEFT
    /// join's unmatched left rows among them are emitted with nulls.
    fn forget(&mut self, side: usize, out: &mut Output) -> Result<()> {
        let state = &self.sides[side];
        let gone: usize = state
            .chunks
            .iter()
            .filter(|c| self.expired(side, c.max_ts))
            .map(|c| c.rows.num_rows())
            .sum();
        let other_ended = self.watermarks[1 - side] == END_OF_INPUT;
        if gone == 0 || (gone * 2 < state.rows && !other_ended) {
            return Ok(());
        }
        let chunks = std::mem::take(&mut self.sides[side].chunks);
        let mut kept = Vec::new();
        let (mut kept_ts, mut kept_matched) = (Vec::new(), Vec::new());
        for chunk in chunks {
            let live: Vec<bool> = chunk.ts.iter().map(|&t| !self.expired(side, t)).collect();
            if side == LEFT && self.plan.kind == JoinKind::Left {
                let unmatched: BooleanArray = live
                    .iter()
                    .zip(&chunk.matched)
                    .map(|(&l, &m)| Some(!l && !m))
                    .collect();
                self.emit_unmatched(&filter_record_batch(&chunk.rows, &unmatched)?, out)?;
            }
            let live_mask = BooleanArray::from(live.clone());
            kept.push(filter_record_batch(&chunk.rows, &live_mask)?);
            for (i, &l) in live.iter().enumerate() {
                if l {
                    kept_ts.push(chunk.ts[i]);
                    kept_matched.push(chunk.matched[i]);
                }
            }
        }
        let schema = Arc::clone(&self.side(side).schema);
        let rows = concat_batches(&schema, &kept)?;
        self.sides[side] = SideState::default();
        let (key_columns, valid) = self.key_columns(side, &rows)?;
        let mut ids = Vec::new();
        self.keys.intern(&key_columns, rows.num_rows(), &mut ids)?;
        self.keep(side, rows, kept_ts, kept_matched, &ids, &valid);
        self.metrics.open_windows = (self.sides[LEFT].rows + self.sides[RIGHT].rows) as u64;
        self.renumber_keys_if_sparse()
    }

    /// Left rows no right row matched, with nulls for the right columns.
    fn emit_unmatched(&mut self, left_rows: &RecordBatch, out: &mut Output) -> Result<()> {
        if left_rows.num_rows() == 0 {
            return Ok(());
        }
        let n = left_rows.num_rows();
        let mut columns = left_rows.columns().to_vec();
        columns.extend(
            self.plan
                .right
                .schema
                .fields()
                .iter()
                .map(|f| new_null_array(f.data_type(), n)),
        );
        let schema = &self.plan.joined_schema;
        let joined = RecordBatch::try_new(Arc::clone(schema), conform(schema, columns)?)?;
        self.emit(&joined, out)
    }

    /// Keys no longer in either side's state still hold a number; once
    /// they are most of the numbering, it is rebuilt from the live keys so
    /// that memory follows the state, not every key ever seen.
    fn renumber_keys_if_sparse(&mut self) -> Result<()> {
        let live: usize = self.sides.iter().map(|s| s.index.len()).sum();
        if self.keys.len() <= 2 * live + 1024 {
            return Ok(());
        }
        let mut keep: Vec<usize> = self
            .sides
            .iter()
            .flat_map(|s| s.index.keys().copied())
            .collect();
        keep.sort_unstable();
        keep.dedup();
        let (fresh, new_ids) = self.keys.retain(&keep)?;
        let renumber: HashMap<usize, usize> = keep.into_iter().zip(new_ids).collect();
        for side in &mut self.sides {
            side.index = std::mem::take(&mut side.index)
                .into_iter()
                .map(|(id, rows)| (renumber[&id], rows))
                .collect();
        }
        self.keys = fresh;
        Ok(())
    }

    /// The join's input columns of both sides (all nullable), behind the
    /// side and matched columns.
    fn state_schema(&self) -> SchemaRef {
        let mut fields = vec![
            Field::new(SIDE, DataType::UInt8, false),
            Field::new(MATCHED, DataType::Boolean, false),
        ];
        for side in [&self.plan.left, &self.plan.right] {
            fields.extend(
                side.schema
                    .fields()
                    .iter()
                    .map(|f| f.as_ref().clone().with_nullable(true)),
            );
        }
        Arc::new(Schema::new(fields))
    }

    /// One side's state rows in the state schema.
    fn side_state(&self, side: usize) -> Result<RecordBatch> {
        let schema = Arc::clone(&self.side(side).schema);
        let rows = concat_batches(&schema, self.sides[side].chunks.iter().map(|c| &c.rows))?;
        let n = rows.num_rows();
        let matched: BooleanArray = self.sides[side]
            .chunks
            .iter()
            .flat_map(|c| c.matched.iter().map(|&m| Some(m)))
            .collect();
        let mut columns: Vec<ArrayRef> = vec![
            Arc::new(UInt8Array::from(vec![side as u8; n])),
            Arc::new(matched),
        ];
        for s in [LEFT, RIGHT] {
            if s == side {
                columns.extend(rows.columns().iter().cloned());
            } else {
                columns.extend(
                    self.side(s)
                        .schema
                        .fields()
                        .iter()
                        .map(|f| new_null_array(f.data_type(), n)),
                );
            }
        }
        Ok(RecordBatch::try_new(self.state_schema(), columns)?)
    }
}

/// The pair numbers of rows carrying the pair column (the last one).
fn pair_numbers(rows: &RecordBatch) -> impl Iterator<Item = usize> + '_ {
    rows.column(rows.num_columns() - 1)
        .as_primitive::<arrow::datatypes::UInt32Type>()
        .values()
        .iter()
        .map(|&p| p as usize)
}

fn without_pair_column(rows: &RecordBatch) -> RecordBatch {
    let mut rows = rows.clone();
    rows.remove_column(rows.num_columns() - 1);
    rows
}

impl StreamOperator for IntervalJoin {
    fn on_batch(&mut self, batch: &RecordBatch, out: &mut Output) -> Result<()> {
        self.on_input_batch(LEFT, batch, out)
    }

    fn on_input_batch(
        &mut self,
        input: usize,
        batch: &RecordBatch,
        out: &mut Output,
    ) -> Result<()> {
        self.metrics.rows_in += batch.num_rows() as u64;
        let side = self.side(input);
        let (steps, schema) = (&side.steps, &side.schema);
        let keys = &side.keys;
        // This side's columns, and a trial of its keys: a row they fail on
        // is a dead letter now, not a failure at every later probe.
        let eval = |b: &RecordBatch| -> Result<RecordBatch> {
            let rows = apply_steps(steps, b, schema)?;
            for k in keys {
                evaluate(k, &rows)?;
            }
            Ok(rows)
        };
        let mut arrived = Vec::new();
        let mut apply = |_: &RecordBatch, rows: RecordBatch, _: &mut Output| {
            arrived.push(rows);
            Ok(())
        };
        let before = out.rejected.len();
        evaluate_rows(batch, out, &eval, &mut apply)?;
        self.metrics.rejected_rows += (out.rejected.len() - before) as u64;
        let ts_index = self.side(input).event_time_index;
        for rows in arrived {
            if rows.num_rows() == 0 {
                continue;
            }
            // Late: behind this side's watermark (or without event time).
            let (ts, _) = event_times(&rows, ts_index)?;
            let valid = rows.column(ts_index).logical_nulls();
            let on_time: BooleanArray = ts
                .iter()
                .enumerate()
                .map(|(i, &t)| {
                    Some(
                        valid.as_ref().is_none_or(|v| v.is_valid(i)) && t >= self.watermarks[input],
                    )
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
                self.arrive(input, rows, out)?;
            }
        }
        Ok(())
    }

    fn on_watermark(&mut self, watermark: i64, out: &mut Output) -> Result<()> {
        self.on_input_watermarks(&[watermark, watermark], out)
    }

    fn on_input_watermarks(&mut self, watermarks: &[i64], out: &mut Output) -> Result<()> {
        for (mine, &new) in self.watermarks.iter_mut().zip(watermarks) {
            *mine = (*mine).max(new);
        }
        self.forget(LEFT, out)?;
        self.forget(RIGHT, out)
    }

    fn output_watermark(&self) -> Option<i64> {
        let [left, right] = self.watermarks;
        let mut wm = left.min(right.saturating_sub(self.plan.upper_ms));
        if self.plan.kind == JoinKind::Left {
            // Unmatched left rows still held come out when forgotten.
            let held = self.sides[LEFT]
                .chunks
                .iter()
                .flat_map(|c| c.ts.iter().copied())
                .min();
            if let Some(t) = held {
                wm = wm.min(t);
            }
        }
        Some(wm)
    }

    fn snapshot(&mut self) -> Result<OperatorState> {
        let left = self.side_state(LEFT)?;
        let right = self.side_state(RIGHT)?;
        Ok(OperatorState {
            meta: serde_json::json!({
                "metrics": self.metrics,
                "watermarks": self.watermarks,
            }),
            batch: Some(concat_batches(&self.state_schema(), [&left, &right])?),
        })
    }

    fn restore(&mut self, state: OperatorState) -> Result<()> {
        let meta = &state.meta;
        if let Ok(m) = serde_json::from_value(meta["metrics"].clone()) {
            self.metrics = m;
        }
        if let Some(marks) = meta["watermarks"].as_array()
            && marks.len() == 2
        {
            for (mine, saved) in self.watermarks.iter_mut().zip(marks) {
                *mine = saved.as_i64().unwrap_or(NO_WATERMARK);
            }
        }
        self.sides = [SideState::default(), SideState::default()];
        let Some(batch) = state.batch else {
            return Ok(());
        };
        check_state_layout(&batch, &self.state_schema())?;
        let sides = batch
            .column(0)
            .as_primitive::<arrow::datatypes::UInt8Type>();
        let matched = batch.column(1).as_boolean();
        let left_width = self.plan.left.schema.fields().len();
        for side in [LEFT, RIGHT] {
            let mask: BooleanArray = sides.iter().map(|s| Some(s == Some(side as u8))).collect();
            let range = match side {
                LEFT => 2..2 + left_width,
                _ => 2 + left_width..batch.num_columns(),
            };
            let schema = Arc::clone(&self.side(side).schema);
            let columns = batch.columns()[range]
                .iter()
                .map(|c| Ok(arrow::compute::filter(c.as_ref(), &mask)?))
                .collect::<Result<Vec<_>>>()?;
            let rows = RecordBatch::try_new(schema, columns)?;
            let flags = arrow::compute::filter(matched, &mask)?;
            let flags: Vec<bool> = flags.as_boolean().values().iter().collect();
            let (ts, _) = event_times(&rows, self.side(side).event_time_index)?;
            let (key_columns, valid) = self.key_columns(side, &rows)?;
            let mut ids = Vec::new();
            self.keys.intern(&key_columns, rows.num_rows(), &mut ids)?;
            self.keep(side, rows, ts, flags, &ids, &valid);
        }
        if self
            .sides
            .iter()
            .any(|s| s.chunks.iter().any(|c| c.ts.len() != c.matched.len()))
        {
            return Err(DataFusionError::Execution(
                "join state: matched flags do not fit the rows".into(),
            ));
        }
        Ok(())
    }

    fn metrics(&self) -> OperatorMetrics {
        self.metrics
    }
}
