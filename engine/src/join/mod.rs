//! Joins of two streams in event time.
//!
//! - [`interval`]: each left row with every right row of the same key
//!   whose event time lies within bounds of its own (also the window
//!   join: two windowed streams on equal `window_end`).
//! - [`asof`]: each left row with the one right row of the same key
//!   nearest in event time on one side of it ([`asof_index`] is its pure
//!   part).
//! - [`regular`]: without time bounds, each side read as a table by its
//!   key; the result is an updating stream.
//!
//! What they share lives here: the plan, the numbering of keys across
//! both sides, admitting a side's rows (its subquery steps, a trial of
//! its keys, the late split) and the layout of their checkpointed state.
//! Every join in event time emits rows at the left row's event time.

pub mod asof;
pub mod asof_index;
pub mod chains;
pub mod interval;
pub mod regular;

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, BooleanArray, RecordBatch, new_null_array};
use arrow::compute::filter_record_batch;
use arrow::datatypes::{DataType, Field, FieldRef, Schema, SchemaRef};
use datafusion::error::Result;
use datafusion::physical_expr::PhysicalExpr;

use super::keys::GroupKeys;
use super::operator::{
    OperatorMetrics, Output, StreamOperator, check_state_layout, conform, evaluate, evaluate_rows,
    event_times,
};
use super::plan::{RowStep, apply_steps};
pub use asof_index::AsofDirection;

/// Inner join, or LEFT (unmatched left rows with nulls).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JoinKind {
    Inner,
    Left,
}

/// Which right rows a left row joins with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JoinCondition {
    /// Every right row with `right.ts - left.ts` in `[lower_ms, upper_ms]`.
    Interval { lower_ms: i64, upper_ms: i64 },
    /// The one right row nearest to `left.ts + offset_ms` in `direction`.
    Asof {
        direction: AsofDirection,
        offset_ms: i64,
    },
    /// No time bound: every pair of the two tables' current rows whose
    /// keys are equal. `ttl_ms` (`'state.ttl'`): a key of an append-only
    /// side whose row is that far behind its side's watermark is forgotten.
    Regular { ttl_ms: Option<i64> },
}

/// One input of a join.
#[derive(Clone, Debug)]
pub struct JoinSide {
    /// From the input's rows to the join's input columns (the filters and
    /// projections of subqueries on this side).
    pub steps: Vec<RowStep>,
    /// The join's input columns from this side, all nullable.
    pub schema: SchemaRef,
    /// Index of the event-time column in `schema`; `None` for an updating
    /// stream (only a regular join reads one).
    pub event_time_index: Option<usize>,
    /// The equality keys, on `schema` rows (pairwise with the other side's).
    pub keys: Vec<Arc<dyn PhysicalExpr>>,
    /// Regular joins: the columns that identify a row of this side's table
    /// (an updating stream's key, an append table's `'key'`), as indices
    /// into `schema` and into the input's own rows (where deletions and
    /// rows the side's subquery filters out are addressed).
    pub identity: Vec<usize>,
    pub identity_input: Vec<usize>,
    /// The input is an updating stream (upserts and deletions by key).
    pub changelog: bool,
}

impl JoinSide {
    /// The event-time column of a side of a join in event time.
    fn event_time(&self) -> usize {
        self.event_time_index
            .expect("the planner gives both sides of a join in event time an event time")
    }
}

/// A planned join.
#[derive(Clone, Debug)]
pub struct JoinPlan {
    pub kind: JoinKind,
    pub left: JoinSide,
    pub right: JoinSide,
    pub condition: JoinCondition,
    /// The rest of ON, on joined rows (interval joins only).
    pub residual: Option<Arc<dyn PhysicalExpr>>,
    /// Left columns followed by right columns.
    pub joined_schema: SchemaRef,
    /// WHERE and the SELECT list, on joined rows.
    pub post: Vec<RowStep>,
    /// Regular joins: the output columns that address a result row (the
    /// left identity, and the right one unless the ON equalities fix it).
    pub output_keys: Vec<usize>,
}

impl JoinPlan {
    /// A join without time bounds (its result is an updating stream).
    pub fn is_regular(&self) -> bool {
        matches!(self.condition, JoinCondition::Regular { .. })
    }

    fn side(&self, side: usize) -> &JoinSide {
        match side {
            LEFT => &self.left,
            _ => &self.right,
        }
    }

    /// Left rows joined with nulls for the right columns.
    fn with_null_right(&self, left_rows: &RecordBatch) -> Result<RecordBatch> {
        let n = left_rows.num_rows();
        let mut columns = left_rows.columns().to_vec();
        columns.extend(
            self.right
                .schema
                .fields()
                .iter()
                .map(|f| new_null_array(f.data_type(), n)),
        );
        let schema = &self.joined_schema;
        Ok(RecordBatch::try_new(
            Arc::clone(schema),
            conform(schema, columns)?,
        )?)
    }
}

/// The operator that runs `plan`.
pub fn new_operator(plan: JoinPlan, output_schema: SchemaRef) -> Result<Box<dyn StreamOperator>> {
    Ok(match plan.condition {
        JoinCondition::Interval { .. } => {
            Box::new(interval::IntervalJoin::new(plan, output_schema)?)
        }
        JoinCondition::Asof { .. } => Box::new(asof::AsofJoin::new(plan, output_schema)?),
        JoinCondition::Regular { .. } => Box::new(regular::RegularJoin::new(plan, output_schema)?),
    })
}

const LEFT: usize = 0;
const RIGHT: usize = 1;
/// State column: which side a row belongs to.
const SIDE: &str = "__tickflow_side";

/// One numbering of key tuples for both sides.
struct JoinKeys {
    ids: GroupKeys,
    /// The key columns, in the left keys' types.
    fields: Vec<FieldRef>,
}

impl JoinKeys {
    fn new(plan: &JoinPlan) -> Result<Self> {
        let fields: Vec<FieldRef> = plan
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
            ids: GroupKeys::new(&fields)?,
            fields,
        })
    }

    /// The key id of each row of `rows` of `side`, and which rows have no
    /// null key (only those can match).
    fn intern(&mut self, side: &JoinSide, rows: &RecordBatch) -> Result<(Vec<usize>, Vec<bool>)> {
        let columns = side
            .keys
            .iter()
            .zip(&self.fields)
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
        let mut ids = Vec::new();
        self.ids.intern(&columns, rows.num_rows(), &mut ids)?;
        Ok((ids, valid))
    }

    /// Keeps only the numbers of `live` keys once the others are most of
    /// the numbering (so memory follows the state, not every key ever
    /// seen); returns the renumbering to apply to the state, if it did.
    fn renumber_if_sparse(
        &mut self,
        live: impl Iterator<Item = usize>,
    ) -> Result<Option<std::collections::HashMap<usize, usize>>> {
        let mut keep: Vec<usize> = live.collect();
        keep.sort_unstable();
        keep.dedup();
        if self.ids.len() <= 2 * keep.len() + 1024 {
            return Ok(None);
        }
        let (fresh, new_ids) = self.ids.retain(&keep)?;
        self.ids = fresh;
        Ok(Some(keep.into_iter().zip(new_ids).collect()))
    }
}

/// A side's arriving input rows as the join's input columns, on time:
/// rows its steps or keys fail on go to the dead letters, rows behind
/// `watermark` (or without event time) to the late rows.
fn admit(
    side: &JoinSide,
    watermark: i64,
    batch: &RecordBatch,
    out: &mut Output,
    metrics: &mut OperatorMetrics,
) -> Result<Vec<RecordBatch>> {
    metrics.rows_in += batch.num_rows() as u64;
    // A trial of the keys too: a row they fail on is a dead letter now,
    // not a failure at every later probe.
    let eval = |b: &RecordBatch| -> Result<RecordBatch> {
        let rows = apply_steps(&side.steps, b, &side.schema)?;
        for k in &side.keys {
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
    metrics.rejected_rows += (out.rejected.len() - before) as u64;
    let mut admitted = Vec::new();
    for rows in arrived {
        if rows.num_rows() == 0 {
            continue;
        }
        let (ts, _) = event_times(&rows, side.event_time())?;
        let valid = rows.column(side.event_time()).logical_nulls();
        let on_time: BooleanArray = ts
            .iter()
            .enumerate()
            .map(|(i, &t)| Some(valid.as_ref().is_none_or(|v| v.is_valid(i)) && t >= watermark))
            .collect();
        let rows = if on_time.true_count() == rows.num_rows() {
            rows
        } else {
            let late = filter_record_batch(&rows, &arrow::compute::not(&on_time)?)?;
            metrics.late_events += late.num_rows() as u64;
            out.late.push(late);
            filter_record_batch(&rows, &on_time)?
        };
        if rows.num_rows() > 0 {
            admitted.push(rows);
        }
    }
    Ok(admitted)
}

/// The checkpoint layout of a join's rows: which side, then `flags`
/// (per-row booleans of the operator), then the left and the right input
/// columns (all nullable; a row fills only its own side's).
fn state_schema(plan: &JoinPlan, flags: &[&str]) -> SchemaRef {
    let mut fields = vec![Field::new(SIDE, DataType::UInt8, false)];
    fields.extend(
        flags
            .iter()
            .map(|f| Field::new(*f, DataType::Boolean, false)),
    );
    for side in [&plan.left, &plan.right] {
        fields.extend(
            side.schema
                .fields()
                .iter()
                .map(|f| f.as_ref().clone().with_nullable(true)),
        );
    }
    Arc::new(Schema::new(fields))
}

/// `rows` of `side` with their `flags`, in [`state_schema`].
fn side_state(
    plan: &JoinPlan,
    side: usize,
    flag_names: &[&str],
    rows: &RecordBatch,
    flags: Vec<BooleanArray>,
) -> Result<RecordBatch> {
    let n = rows.num_rows();
    let mut columns: Vec<ArrayRef> = vec![Arc::new(arrow::array::UInt8Array::from(vec![
        side as u8;
        n
    ]))];
    columns.extend(flags.into_iter().map(|f| Arc::new(f) as ArrayRef));
    for s in [LEFT, RIGHT] {
        if s == side {
            columns.extend(rows.columns().iter().cloned());
        } else {
            columns.extend(
                plan.side(s)
                    .schema
                    .fields()
                    .iter()
                    .map(|f| new_null_array(f.data_type(), n)),
            );
        }
    }
    Ok(RecordBatch::try_new(
        state_schema(plan, flag_names),
        columns,
    )?)
}

/// One side's rows out of a state batch, with their flags.
fn split_state(
    plan: &JoinPlan,
    flag_names: &[&str],
    batch: &RecordBatch,
    side: usize,
) -> Result<(RecordBatch, Vec<Vec<bool>>)> {
    check_state_layout(batch, &state_schema(plan, flag_names))?;
    let sides = batch
        .column(0)
        .as_primitive::<arrow::datatypes::UInt8Type>();
    let mask: BooleanArray = sides.iter().map(|s| Some(s == Some(side as u8))).collect();
    let first = 1 + flag_names.len();
    let left_width = plan.left.schema.fields().len();
    let range = match side {
        LEFT => first..first + left_width,
        _ => first + left_width..batch.num_columns(),
    };
    let columns = batch.columns()[range]
        .iter()
        .map(|c| Ok(arrow::compute::filter(c.as_ref(), &mask)?))
        .collect::<Result<Vec<_>>>()?;
    let rows = RecordBatch::try_new(Arc::clone(&plan.side(side).schema), columns)?;
    let flags = (1..first)
        .map(|j| {
            let f = arrow::compute::filter(batch.column(j), &mask)?;
            Ok(f.as_boolean().values().iter().collect())
        })
        .collect::<Result<Vec<_>>>()?;
    Ok((rows, flags))
}

/// The checkpoint's metadata: metrics and both input watermarks.
fn state_meta(metrics: &OperatorMetrics, watermarks: &[i64; 2]) -> serde_json::Value {
    serde_json::json!({ "metrics": metrics, "watermarks": watermarks })
}

/// Reads [`state_meta`] back.
fn restore_meta(
    meta: &serde_json::Value,
    metrics: &mut OperatorMetrics,
    watermarks: &mut [i64; 2],
) {
    if let Ok(m) = serde_json::from_value(meta["metrics"].clone()) {
        *metrics = m;
    }
    if let Some(marks) = meta["watermarks"].as_array()
        && marks.len() == 2
    {
        for (mine, saved) in watermarks.iter_mut().zip(marks) {
            *mine = saved.as_i64().unwrap_or(super::watermark::NO_WATERMARK);
        }
    }
}
