//! ASOF joins: for each left row, the right row of the same key nearest
//! in event time on one side of it (see [`asof_index`](super::asof_index)
//! for which one); inner (no match: no row) or LEFT (no match: nulls).
//!
//! A left row waits until its match is final, so the result equals a
//! batch ASOF join over the same rows. Backward (`l.ts + c >= r.ts`): once
//! the right watermark has passed `l.ts + c`, every right row at or before
//! it has arrived (later ones would be late). Forward (`l.ts + c <= r.ts`):
//! once a candidate exists that the right watermark has passed (every row
//! of its event time has arrived, so ties are settled too), or the right
//! input has ended.
//!
//! Invariants: right rows are pruned to those a pending or future left row
//! can take (future left rows are at or after the left watermark); right
//! chunks are compacted once most of their rows are gone; no row is
//! emitted behind the output watermark, min(left watermark, oldest pending
//! left row).

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, BooleanArray, RecordBatch, UInt32Array, new_null_array};
use arrow::compute::{concat_batches, filter_record_batch, interleave, take};
use arrow::datatypes::SchemaRef;
use datafusion::error::{DataFusionError, Result};

use super::asof_index::{AsofDirection, AsofIndex};
use super::{
    JoinCondition, JoinKeys, JoinKind, JoinPlan, LEFT, RIGHT, admit, restore_meta, side_state,
    split_state, state_meta, state_schema,
};
use crate::operator::{
    OperatorMetrics, OperatorState, Output, StreamOperator, conform, emit_through_steps,
    event_times,
};
use crate::watermark::{END_OF_INPUT, NO_WATERMARK};

/// Left rows that arrived together, waiting for their matches.
struct Pending {
    rows: RecordBatch,
    ts: Vec<i64>,
    /// Key id, `None` for a null key (which never matches).
    keys: Vec<Option<usize>>,
    done: Vec<bool>,
    remaining: usize,
    /// The earliest event time among the rows not done.
    min_open_ts: i64,
}

impl Pending {
    fn new(rows: RecordBatch, ts: Vec<i64>, keys: Vec<Option<usize>>) -> Self {
        let n = ts.len();
        let min_open_ts = ts.iter().copied().min().unwrap_or(END_OF_INPUT);
        Self {
            rows,
            ts,
            keys,
            done: vec![false; n],
            remaining: n,
            min_open_ts,
        }
    }

    fn open_ts(&self) -> impl Iterator<Item = i64> + '_ {
        self.ts
            .iter()
            .zip(&self.done)
            .filter(|(_, d)| !**d)
            .map(|(t, _)| *t)
    }
}

pub struct AsofJoin {
    plan: JoinPlan,
    output_schema: SchemaRef,
    direction: AsofDirection,
    /// A left row at `t` looks for a right row near `t + offset_ms`.
    offset_ms: i64,
    keys: JoinKeys,
    right_chunks: Vec<RecordBatch>,
    /// Rows in `right_chunks`, live in the index or not.
    right_stored: usize,
    index: AsofIndex,
    pending: Vec<Pending>,
    /// One row of nulls in the right side's columns (for unmatched rows).
    right_nulls: RecordBatch,
    watermarks: [i64; 2],
    metrics: OperatorMetrics,
}

impl AsofJoin {
    pub fn new(plan: JoinPlan, output_schema: SchemaRef) -> Result<Self> {
        let JoinCondition::Asof {
            direction,
            offset_ms,
        } = plan.condition
        else {
            return Err(DataFusionError::Internal(
                "an ASOF join needs a match condition".into(),
            ));
        };
        let right_schema = Arc::clone(&plan.right.schema);
        let nulls = right_schema
            .fields()
            .iter()
            .map(|f| new_null_array(f.data_type(), 1))
            .collect();
        Ok(Self {
            keys: JoinKeys::new(&plan)?,
            right_nulls: RecordBatch::try_new(right_schema, nulls)?,
            direction,
            offset_ms,
            plan,
            output_schema,
            right_chunks: Vec::new(),
            right_stored: 0,
            index: AsofIndex::default(),
            pending: Vec::new(),
            watermarks: [NO_WATERMARK; 2],
            metrics: OperatorMetrics::default(),
        })
    }

    fn target(&self, t: i64) -> i64 {
        t.saturating_add(self.offset_ms)
    }

    /// The match of a left row if it is final: `Some(Some((chunk, row)))`
    /// a right row, `Some(None)` final without one, `None` not final yet.
    fn settled(&self, key: Option<usize>, t: i64) -> Option<Option<(usize, usize)>> {
        let Some(key) = key else {
            return Some(None);
        };
        let right_wm = self.watermarks[RIGHT];
        let target = self.target(t);
        let found = self.index.lookup(key, target, self.direction);
        let is_final = right_wm == END_OF_INPUT
            || match self.direction {
                AsofDirection::Backward => target < right_wm,
                AsofDirection::Forward => found.is_some_and(|r| r.ts < right_wm),
            };
        is_final.then(|| found.map(|r| (r.chunk as usize, r.row as usize)))
    }

    /// Emits the pending left rows from the `from`-th chunk on whose match
    /// became final, and forgets them.
    fn settle(&mut self, from: usize, out: &mut Output) -> Result<()> {
        let right_wm = self.watermarks[RIGHT];
        let null_row = (self.right_chunks.len(), 0);
        for p in from..self.pending.len() {
            let chunk = &self.pending[p];
            // Nothing at or after the right watermark can be final yet.
            if right_wm != END_OF_INPUT && self.target(chunk.min_open_ts) >= right_wm {
                continue;
            }
            let (mut mine, mut theirs, mut settled) = (Vec::new(), Vec::new(), Vec::new());
            for i in (0..chunk.ts.len()).filter(|&i| !chunk.done[i]) {
                let Some(found) = self.settled(chunk.keys[i], chunk.ts[i]) else {
                    continue;
                };
                settled.push(i);
                match found {
                    Some(at) => theirs.push(at),
                    None if self.plan.kind == JoinKind::Left => theirs.push(null_row),
                    None => continue,
                }
                mine.push(i as u32);
            }
            if !mine.is_empty() {
                let joined = self.joined(&self.pending[p].rows, &mine, &theirs)?;
                let (post, schema) = (&self.plan.post, &self.output_schema);
                emit_through_steps(post, schema, &joined, out, &mut self.metrics)?;
            }
            let chunk = &mut self.pending[p];
            for i in settled {
                chunk.done[i] = true;
                chunk.remaining -= 1;
            }
            chunk.min_open_ts = chunk.open_ts().min().unwrap_or(END_OF_INPUT);
        }
        self.pending.retain(|p| p.remaining > 0);
        Ok(())
    }

    /// Left rows `mine` of `left` joined with the right rows `theirs`
    /// (chunk, row; one past the last chunk is the row of nulls).
    fn joined(
        &self,
        left: &RecordBatch,
        mine: &[u32],
        theirs: &[(usize, usize)],
    ) -> Result<RecordBatch> {
        let idx = UInt32Array::from(mine.to_vec());
        let mut columns: Vec<ArrayRef> = left
            .columns()
            .iter()
            .map(|c| Ok(take(c.as_ref(), &idx, None)?))
            .collect::<Result<_>>()?;
        let sources: Vec<&RecordBatch> = self
            .right_chunks
            .iter()
            .chain(std::iter::once(&self.right_nulls))
            .collect();
        for j in 0..self.right_nulls.num_columns() {
            let arrays: Vec<&dyn Array> = sources.iter().map(|b| b.column(j).as_ref()).collect();
            columns.push(interleave(&arrays, theirs)?);
        }
        let schema = &self.plan.joined_schema;
        Ok(RecordBatch::try_new(
            Arc::clone(schema),
            conform(schema, columns)?,
        )?)
    }

    fn arrive_left(&mut self, rows: RecordBatch, out: &mut Output) -> Result<()> {
        self.hold_left(rows)?;
        // Their matches may be final already (the right side is ahead).
        self.settle(self.pending.len() - 1, out)
    }

    /// Keeps left rows pending.
    fn hold_left(&mut self, rows: RecordBatch) -> Result<()> {
        let (ids, valid) = self.keys.intern(&self.plan.left, &rows)?;
        let (ts, _) = event_times(&rows, self.plan.left.event_time())?;
        let keys = ids
            .iter()
            .zip(&valid)
            .map(|(&id, &ok)| ok.then_some(id))
            .collect();
        self.pending.push(Pending::new(rows, ts, keys));
        Ok(())
    }

    fn arrive_right(&mut self, rows: RecordBatch) -> Result<()> {
        let (ids, valid) = self.keys.intern(&self.plan.right, &rows)?;
        let (ts, _) = event_times(&rows, self.plan.right.event_time())?;
        let chunk = self.right_chunks.len() as u32;
        for (r, ((&id, &ok), &t)) in ids.iter().zip(&valid).zip(&ts).enumerate() {
            if ok {
                self.index.insert(id, t, chunk, r as u32);
            }
        }
        self.right_stored += rows.num_rows();
        self.right_chunks.push(rows);
        Ok(())
    }

    /// The earliest event time a pending or future left row can have.
    fn left_floor(&self) -> i64 {
        let oldest = self.pending.iter().map(|p| p.min_open_ts).min();
        oldest.map_or(self.watermarks[LEFT], |t| t.min(self.watermarks[LEFT]))
    }

    /// Drops right rows no pending or future left row can take, and
    /// compacts the right chunks once most of their rows are gone.
    fn prune(&mut self) -> Result<()> {
        let floor = self.left_floor();
        if floor != NO_WATERMARK {
            self.index.prune(self.target(floor), self.direction);
        }
        if self.right_stored > 2 * self.index.len() + 4096 {
            let live = self.right_rows_in_index_order()?;
            let mut next = 0u32;
            // `rows()` and `relocate` walk the index in the same order.
            self.index.relocate(|_| {
                next += 1;
                (0, next - 1)
            });
            self.right_stored = live.num_rows();
            self.right_chunks = vec![live];
        }
        self.renumber_keys_if_sparse()
    }

    /// The right rows the index holds, per key in (event time, arrival)
    /// order.
    fn right_rows_in_index_order(&self) -> Result<RecordBatch> {
        let refs: Vec<(usize, usize)> = self
            .index
            .rows()
            .map(|(_, r)| (r.chunk as usize, r.row as usize))
            .collect();
        let schema = Arc::clone(&self.plan.right.schema);
        if refs.is_empty() {
            return Ok(RecordBatch::new_empty(schema));
        }
        let columns = (0..schema.fields().len())
            .map(|j| {
                let arrays: Vec<&dyn Array> = self
                    .right_chunks
                    .iter()
                    .map(|b| b.column(j).as_ref())
                    .collect();
                Ok(interleave(&arrays, &refs)?)
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(RecordBatch::try_new(schema, columns)?)
    }

    fn renumber_keys_if_sparse(&mut self) -> Result<()> {
        let pending_keys = self.pending.iter().flat_map(|p| p.keys.iter().flatten());
        let live = self.index.keys().chain(pending_keys.copied());
        let Some(renumber) = self.keys.renumber_if_sparse(live)? else {
            return Ok(());
        };
        self.index.rekey(&renumber);
        for p in &mut self.pending {
            for k in p.keys.iter_mut().flatten() {
                *k = renumber[k];
            }
        }
        Ok(())
    }

    /// The left rows still waiting, in one batch.
    fn pending_rows(&self) -> Result<RecordBatch> {
        let open = self
            .pending
            .iter()
            .map(|p| {
                let mask: BooleanArray = p.done.iter().map(|d| Some(!d)).collect();
                Ok(filter_record_batch(&p.rows, &mask)?)
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(concat_batches(&self.plan.left.schema, &open)?)
    }

    fn count_state(&mut self) {
        let open: usize = self.pending.iter().map(|p| p.remaining).sum();
        self.metrics.open_windows = (open + self.index.len()) as u64;
    }
}

impl StreamOperator for AsofJoin {
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
            match input {
                LEFT => self.arrive_left(rows, out)?,
                _ => self.arrive_right(rows)?,
            }
        }
        self.count_state();
        Ok(())
    }

    fn on_watermark(&mut self, watermark: i64, out: &mut Output) -> Result<()> {
        self.on_input_watermarks(&[watermark, watermark], out)
    }

    fn on_input_watermarks(&mut self, watermarks: &[i64], out: &mut Output) -> Result<()> {
        let before = self.watermarks;
        for (mine, &new) in self.watermarks.iter_mut().zip(watermarks) {
            *mine = (*mine).max(new);
        }
        if self.watermarks == before {
            return Ok(());
        }
        if self.watermarks[RIGHT] != before[RIGHT] {
            self.settle(0, out)?;
        }
        self.prune()?;
        self.count_state();
        Ok(())
    }

    fn output_watermark(&self) -> Option<i64> {
        Some(self.left_floor())
    }

    fn snapshot(&mut self) -> Result<OperatorState> {
        let left = side_state(&self.plan, LEFT, &[], &self.pending_rows()?, Vec::new())?;
        let right_rows = self.right_rows_in_index_order()?;
        let right = side_state(&self.plan, RIGHT, &[], &right_rows, Vec::new())?;
        Ok(OperatorState {
            meta: state_meta(&self.metrics, &self.watermarks),
            batch: Some(concat_batches(
                &state_schema(&self.plan, &[]),
                [&left, &right],
            )?),
        })
    }

    fn restore(&mut self, state: OperatorState) -> Result<()> {
        restore_meta(&state.meta, &mut self.metrics, &mut self.watermarks);
        self.pending.clear();
        self.right_chunks.clear();
        self.right_stored = 0;
        self.index = AsofIndex::default();
        let Some(batch) = state.batch else {
            return Ok(());
        };
        let (right, _) = split_state(&self.plan, &[], &batch, RIGHT)?;
        self.arrive_right(right)?;
        let (left, _) = split_state(&self.plan, &[], &batch, LEFT)?;
        if left.num_rows() > 0 {
            self.hold_left(left)?;
        }
        self.count_state();
        Ok(())
    }

    fn metrics(&self) -> OperatorMetrics {
        self.metrics
    }
}
