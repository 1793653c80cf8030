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

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, BooleanArray, RecordBatch, UInt32Array};
use arrow::compute::{concat_batches, filter_record_batch, interleave, take};
use arrow::datatypes::{DataType, Field, FieldRef, Schema, SchemaRef};
use datafusion::error::{DataFusionError, Result};

use super::chains::KeyChains;
use super::{
    JoinCondition, JoinKeys, JoinKind, JoinPlan, LEFT, RIGHT, admit, restore_meta, side_state,
    split_state, state_meta, state_schema,
};
use crate::operator::{
    OperatorMetrics, OperatorState, Output, StreamOperator, conform, emit_through_steps,
    evaluate_mask, evaluate_rows, event_times,
};
use crate::watermark::{END_OF_INPUT, NO_WATERMARK};

/// State flag: a left row has matched (LEFT join).
const MATCHED: &str = "__tickflow_matched";
/// Appended to joined rows while the residual runs: the pair's number.
const PAIR: &str = "__tickflow_pair";

/// Rows of one side that arrived together.
struct Chunk {
    rows: RecordBatch,
    ts: Vec<i64>,
    matched: Vec<bool>,
    /// Key ids, [`NULL_KEY`] for a key with a null (it never matches).
    keys: Vec<u32>,
    max_ts: i64,
}

const NULL_KEY: u32 = u32::MAX;

impl Chunk {
    /// The rows where `live` holds.
    fn filter(&self, live: &[bool]) -> Result<Chunk> {
        let pick = |i: &usize| live[*i];
        let ts: Vec<i64> = (0..live.len()).filter(pick).map(|i| self.ts[i]).collect();
        Ok(Chunk {
            rows: filter_record_batch(&self.rows, &BooleanArray::from(live.to_vec()))?,
            matched: (0..live.len())
                .filter(pick)
                .map(|i| self.matched[i])
                .collect(),
            keys: (0..live.len()).filter(pick).map(|i| self.keys[i]).collect(),
            max_ts: ts.iter().copied().max().unwrap_or(NO_WATERMARK),
            ts,
        })
    }
}

/// One side's rows, with their (chunk, row) by key.
#[derive(Default)]
struct SideState {
    chunks: Vec<Chunk>,
    index: KeyChains,
    rows: usize,
}

impl SideState {
    fn push(&mut self, chunk: Chunk) {
        let c = self.chunks.len() as u32;
        for (r, &k) in chunk.keys.iter().enumerate() {
            if k != NULL_KEY {
                self.index.insert(k as usize, (c, r as u32));
            }
        }
        self.rows += chunk.ts.len();
        self.chunks.push(chunk);
    }

    /// Rebuilds the index from the chunks' key ids.
    fn reindex(&mut self) {
        let chunks = std::mem::take(&mut self.chunks);
        *self = SideState::default();
        for chunk in chunks {
            self.push(chunk);
        }
    }
}

pub struct IntervalJoin {
    plan: JoinPlan,
    output_schema: SchemaRef,
    /// `right.ts - left.ts` of a pair lies in `[lower_ms, upper_ms]`.
    lower_ms: i64,
    upper_ms: i64,
    keys: JoinKeys,
    sides: [SideState; 2],
    watermarks: [i64; 2],
    metrics: OperatorMetrics,
}

impl IntervalJoin {
    pub fn new(plan: JoinPlan, output_schema: SchemaRef) -> Result<Self> {
        let JoinCondition::Interval { lower_ms, upper_ms } = plan.condition else {
            return Err(DataFusionError::Internal(
                "an interval join needs interval bounds".into(),
            ));
        };
        Ok(Self {
            keys: JoinKeys::new(&plan)?,
            lower_ms,
            upper_ms,
            plan,
            output_schema,
            sides: [SideState::default(), SideState::default()],
            watermarks: [NO_WATERMARK; 2],
            metrics: OperatorMetrics::default(),
        })
    }

    /// Whether a row of `side` at event time `ts` can no longer match.
    fn expired(&self, side: usize, ts: i64) -> bool {
        match side {
            LEFT => ts.saturating_add(self.upper_ms) < self.watermarks[RIGHT],
            _ => ts.saturating_sub(self.lower_ms) < self.watermarks[LEFT],
        }
    }

    /// Joins arriving `rows` of `side` with the other side's state, then
    /// keeps them.
    fn arrive(&mut self, side: usize, rows: RecordBatch, out: &mut Output) -> Result<()> {
        let (ids, valid) = self.keys.intern(self.plan.side(side), &rows)?;
        let (ts, _) = event_times(&rows, self.plan.side(side).event_time())?;

        // Candidate pairs: same key, event times within the bounds.
        let other = 1 - side;
        let (lower, upper) = (self.lower_ms, self.upper_ms);
        let mut mine: Vec<u32> = Vec::new();
        let mut theirs: Vec<(usize, usize)> = Vec::new();
        for (i, (&id, &ok)) in ids.iter().zip(&valid).enumerate() {
            if !ok {
                continue;
            }
            for (c, r) in self.sides[other].index.rows_of(id) {
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
        let their_columns = (0..self.plan.side(1 - side).schema.fields().len())
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
        let (post, schema) = (&self.plan.post, &self.output_schema);
        emit_through_steps(post, schema, joined, out, &mut self.metrics)
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
        let keys = ids
            .iter()
            .zip(valid)
            .map(|(&id, &ok)| if ok { id as u32 } else { NULL_KEY })
            .collect();
        let max_ts = ts.iter().copied().max().unwrap_or(NO_WATERMARK);
        self.sides[side].push(Chunk {
            rows,
            ts,
            matched,
            keys,
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
        // Whole chunks stay or go as they are; only chunks straddling the
        // horizon are cut.
        let chunks = std::mem::take(&mut self.sides[side].chunks);
        self.sides[side] = SideState::default();
        for chunk in chunks {
            let live: Vec<bool> = chunk.ts.iter().map(|&t| !self.expired(side, t)).collect();
            if side == LEFT && self.plan.kind == JoinKind::Left {
                let unmatched: BooleanArray = live
                    .iter()
                    .zip(&chunk.matched)
                    .map(|(&l, &m)| Some(!l && !m))
                    .collect();
                if unmatched.true_count() > 0 {
                    self.emit_unmatched(&filter_record_batch(&chunk.rows, &unmatched)?, out)?;
                }
            }
            let kept = live.iter().filter(|&&l| l).count();
            if kept == live.len() {
                self.sides[side].push(chunk);
            } else if kept > 0 {
                self.sides[side].push(chunk.filter(&live)?);
            }
        }
        self.metrics.open_windows = (self.sides[LEFT].rows + self.sides[RIGHT].rows) as u64;
        self.renumber_keys_if_sparse()
    }

    /// Left rows no right row matched, with nulls for the right columns.
    fn emit_unmatched(&mut self, left_rows: &RecordBatch, out: &mut Output) -> Result<()> {
        if left_rows.num_rows() == 0 {
            return Ok(());
        }
        let joined = self.plan.with_null_right(left_rows)?;
        self.emit(&joined, out)
    }

    /// Rebuilds the key numbering from the live keys once dead ones are
    /// most of it.
    fn renumber_keys_if_sparse(&mut self) -> Result<()> {
        let live = self.sides.iter().flat_map(|s| s.index.keys());
        let Some(renumber) = self.keys.renumber_if_sparse(live)? else {
            return Ok(());
        };
        for side in &mut self.sides {
            for chunk in &mut side.chunks {
                for k in chunk.keys.iter_mut().filter(|k| **k != NULL_KEY) {
                    *k = renumber[&(*k as usize)] as u32;
                }
            }
            side.reindex();
        }
        Ok(())
    }

    /// One side's state rows, with their matched flags.
    fn side_state(&self, side: usize) -> Result<RecordBatch> {
        let schema = Arc::clone(&self.plan.side(side).schema);
        let rows = concat_batches(&schema, self.sides[side].chunks.iter().map(|c| &c.rows))?;
        let matched: BooleanArray = self.sides[side]
            .chunks
            .iter()
            .flat_map(|c| c.matched.iter().map(|&m| Some(m)))
            .collect();
        side_state(&self.plan, side, &[MATCHED], &rows, vec![matched])
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
        let side = self.plan.side(input);
        let admitted = admit(side, self.watermarks[input], batch, out, &mut self.metrics)?;
        for rows in admitted {
            self.arrive(input, rows, out)?;
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
        let mut wm = left.min(right.saturating_sub(self.upper_ms));
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
        let schema = state_schema(&self.plan, &[MATCHED]);
        Ok(OperatorState {
            meta: state_meta(&self.metrics, &self.watermarks),
            batch: Some(concat_batches(&schema, [&left, &right])?),
        })
    }

    fn restore(&mut self, state: OperatorState) -> Result<()> {
        restore_meta(&state.meta, &mut self.metrics, &mut self.watermarks);
        self.sides = [SideState::default(), SideState::default()];
        let Some(batch) = state.batch else {
            return Ok(());
        };
        for side in [LEFT, RIGHT] {
            let (rows, mut flags) = split_state(&self.plan, &[MATCHED], &batch, side)?;
            let matched = flags.pop().unwrap_or_default();
            let (ts, _) = event_times(&rows, self.plan.side(side).event_time())?;
            if matched.len() != ts.len() {
                return Err(DataFusionError::Execution(
                    "join state: matched flags do not fit the rows".into(),
                ));
            }
            let (ids, valid) = self.keys.intern(self.plan.side(side), &rows)?;
            self.keep(side, rows, ts, matched, &ids, &valid);
        }
        Ok(())
    }

    fn metrics(&self) -> OperatorMetrics {
        self.metrics
    }
}
