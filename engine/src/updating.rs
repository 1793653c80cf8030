//! Updating aggregation: `GROUP BY` without a window.
//!
//! The result is a table that changes. After every input batch each group
//! the batch touched is evaluated: its row is emitted if it changed (an
//! upsert by the GROUP BY key), and its key is deleted if the group no
//! longer passes HAVING or has emptied. A compacted topic of these changes
//! is the table.
//!
//! Over an append-only input every group keeps DataFusion accumulators, so
//! state grows with the keys, not the rows; `state.ttl` drops keys that saw
//! no row for that long in event time (their rows are deleted). Over an
//! updating input (upserts and deletions, e.g. the latest quote per
//! exchange) a row can be withdrawn, so the operator keeps the current row
//! of every input key and re-aggregates each group a change touches: exact
//! for every function, MIN and MAX included, at the cost of the group's size
//! per change.
//!
//! Invariant: a group's `emitted` is the row last sent for its key (`None`
//! once deleted). Changes go out at the end of every batch and checkpoints
//! fall between batches, so it is a function of the state: a restore
//! recomputes it instead of storing it.

use std::collections::HashSet;
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, BooleanArray, Int64Array, RecordBatch, UInt32Array, new_null_array,
};
use arrow::compute::{cast, concat_batches, filter, sort_to_indices, take, take_record_batch};
use arrow::datatypes::{DataType, Field, FieldRef, Schema, SchemaRef};
use arrow::row::{RowConverter, SortField};
use datafusion::common::ScalarValue;
use datafusion::error::{DataFusionError, Result};
use datafusion::logical_expr::Accumulator;
use datafusion::physical_expr::PhysicalExpr;

use super::keys::GroupKeys;
use super::operator::{
    BatchInputs, OperatorMetrics, OperatorState, Output, StreamOperator, apply_filter, conform,
    evaluate, evaluate_mask, evaluate_rows, event_times,
};
use super::plan::{AggregateSpec, RowStep, apply_steps};
use super::watermark::{END_OF_INPUT, NO_WATERMARK};

/// A planned `GROUP BY` without a window.
#[derive(Clone, Debug)]
pub struct UpdatingPlan {
    /// Columns of the input rows.
    pub input_schema: SchemaRef,
    /// WHERE, on input rows.
    pub filter: Option<Arc<dyn PhysicalExpr>>,
    /// GROUP BY expressions, on input rows.
    pub keys: Vec<Arc<dyn PhysicalExpr>>,
    pub key_fields: Vec<FieldRef>,
    pub aggregates: Vec<AggregateSpec>,
    /// Group columns then aggregate results.
    pub aggregate_schema: SchemaRef,
    /// HAVING, the SELECT list and what encloses them, on aggregate rows.
    pub post: Vec<RowStep>,
    /// The output column of each GROUP BY key, in key order.
    pub output_keys: Vec<usize>,
    /// When the input is itself an updating stream: its key columns.
    pub input_keys: Option<Vec<usize>>,
    /// Event-time column of an append-only input (for `state.ttl`).
    pub event_time_index: Option<usize>,
    /// `state.ttl`: a key without rows for this long in event time is dropped.
    pub ttl_ms: Option<i64>,
}

struct Group {
    /// Append-only input: the running aggregates.
    accumulators: Vec<Box<dyn Accumulator>>,
    /// Updating input: the input keys whose current row is in the group.
    members: HashSet<usize>,
    /// Newest event time of the group's rows (append-only input).
    newest_ms: i64,
    /// The output row last emitted for the key, as Arrow row bytes.
    emitted: Option<Box<[u8]>>,
}

/// The current row of every key of an updating input.
struct InputTable {
    keys: GroupKeys,
    /// By input key: the group the row is in and the row itself.
    rows: Vec<Option<(usize, RecordBatch)>>,
}

pub struct UpdatingAggregate {
    plan: UpdatingPlan,
    output_schema: SchemaRef,
    keys: GroupKeys,
    groups: Vec<Option<Group>>,
    table: Option<InputTable>,
    /// Updating input whose aggregates can take a row back in any order
    /// (COUNT, SUM, AVG): groups keep accumulators and retract replaced
    /// rows, instead of recomputing from every member on each change.
    retracting_accumulators: bool,
    output_rows: RowConverter,
    metrics: OperatorMetrics,
}

/// A batch's aggregate inputs, evaluated once (append-only input).
struct Evaluated {
    rows: usize,
    keys: Vec<ArrayRef>,
    values: Vec<Vec<ArrayRef>>,
    filters: Vec<Option<BooleanArray>>,
    event_ms: Option<Vec<i64>>,
}

impl UpdatingAggregate {
    pub fn new(plan: UpdatingPlan, output_schema: SchemaRef) -> Result<Self> {
        let table = match &plan.input_keys {
            Some(cols) => {
                let fields: Vec<FieldRef> = cols
                    .iter()
                    .map(|&i| Arc::new(plan.input_schema.field(i).clone()))
                    .collect();
                Some(InputTable {
                    keys: GroupKeys::new(&fields)?,
                    rows: Vec::new(),
                })
            }
            None => None,
        };
        let output_rows = RowConverter::new(
            output_schema
                .fields()
                .iter()
                .map(|f| SortField::new(f.data_type().clone()))
                .collect(),
        )?;
        let retracting_accumulators = table.is_some() && retract_in_any_order(&plan.aggregates)?;
        Ok(Self {
            keys: GroupKeys::new(&plan.key_fields)?,
            plan,
            output_schema,
            groups: Vec::new(),
            table,
            retracting_accumulators,
            output_rows,
            metrics: OperatorMetrics::default(),
        })
    }

    fn new_accumulators(&self) -> Result<Vec<Box<dyn Accumulator>>> {
        match self.retracting_accumulators {
            true => self
                .plan
                .aggregates
                .iter()
                .map(|a| a.function.create_sliding_accumulator())
                .collect(),
            false => super::operator::new_accumulators(&self.plan.aggregates),
        }
    }

    /// Whether groups recompute from their member rows on each change.
    fn recomputes(&self) -> bool {
        self.table.is_some() && !self.retracting_accumulators
    }

    /// The group slot `g`, created empty if needed.
    fn group(&mut self, g: usize) -> Result<&mut Group> {
        if self.groups.len() <= g {
            self.groups.resize_with(g + 1, || None);
        }
        if self.groups[g].is_none() {
            let accumulators = if self.recomputes() {
                Vec::new()
            } else {
                self.new_accumulators()?
            };
            self.groups[g] = Some(Group {
                accumulators,
                members: HashSet::new(),
                newest_ms: NO_WATERMARK,
                emitted: None,
            });
        }
        Ok(self.groups[g].as_mut().expect("just created"))
    }

    /// Folds evaluated rows into the groups' accumulators, or with
    /// `retract` takes them back out.
    fn accumulate(&mut self, ev: Evaluated, retract: bool, dirty: &mut Vec<usize>) -> Result<()> {
        if ev.rows == 0 {
            return Ok(());
        }
        let mut ids = Vec::new();
        self.keys.intern(&ev.keys, ev.rows, &mut ids)?;
        // Rows of one group side by side, so each group updates once.
        let order = sort_to_indices(
            &UInt32Array::from_iter_values(ids.iter().map(|&i| i as u32)),
            None,
            None,
        )?;
        let sorted: Vec<usize> = order.values().iter().map(|&i| ids[i as usize]).collect();
        let values = ev
            .values
            .iter()
            .map(|vs| {
                vs.iter()
                    .map(|v| take(v.as_ref(), &order, None))
                    .collect::<std::result::Result<Vec<_>, _>>()
            })
            .collect::<std::result::Result<Vec<_>, _>>()?;
        let filters = ev
            .filters
            .iter()
            .map(|f| {
                f.as_ref()
                    .map(|f| {
                        take(f, &order, None).map(|a| {
                            a.as_any()
                                .downcast_ref::<BooleanArray>()
                                .cloned()
                                .expect("a mask")
                        })
                    })
                    .transpose()
            })
            .collect::<std::result::Result<Vec<_>, _>>()?;
        let event_ms: Option<Vec<i64>> = ev
            .event_ms
            .map(|ts| order.values().iter().map(|&i| ts[i as usize]).collect());
        let mut start = 0;
        while start < sorted.len() {
            let g = sorted[start];
            let end = start + sorted[start..].iter().take_while(|&&x| x == g).count();
            let len = end - start;
            let group = self.group(g)?;
            for (a, acc) in group.accumulators.iter_mut().enumerate() {
                let mut args: Vec<ArrayRef> =
                    values[a].iter().map(|v| v.slice(start, len)).collect();
                if let Some(mask) = &filters[a] {
                    let mask = mask.slice(start, len);
                    args = args
                        .iter()
                        .map(|v| filter(v.as_ref(), &mask))
                        .collect::<std::result::Result<_, _>>()?;
                }
                match retract {
                    true => acc.retract_batch(&args)?,
                    false => acc.update_batch(&args)?,
                }
            }
            if let Some(ts) = event_ms.as_ref().filter(|_| !retract) {
                group.newest_ms = ts[start..end]
                    .iter()
                    .copied()
                    .fold(group.newest_ms, i64::max);
            }
            dirty.push(g);
            start = end;
        }
        Ok(())
    }

    /// Replaces the rows of an updating input's keys; rows failing WHERE
    /// leave their key's group.
    fn upsert(
        &mut self,
        batch: &RecordBatch,
        passes: &BooleanArray,
        group_keys: &[ArrayRef],
        dirty: &mut Vec<usize>,
    ) -> Result<()> {
        let n = batch.num_rows();
        let mut gids = Vec::new();
        self.keys.intern(group_keys, n, &mut gids)?;
        let ids = self.input_ids(batch, true)?;
        let mut replaced = Vec::new();
        for i in 0..n {
            let id = ids[i].expect("interned");
            replaced.extend(self.withdraw(id, dirty));
            if passes.is_valid(i) && passes.value(i) {
                let row = take_record_batch(batch, &UInt32Array::from(vec![i as u32]))?;
                self.group(gids[i])?.members.insert(id);
                let table = self.table.as_mut().expect("an updating input");
                table.rows[id] = Some((gids[i], row));
                dirty.push(gids[i]);
            }
        }
        if self.retracting_accumulators {
            // Sums and counts do not care in which order rows come and go.
            self.retract(replaced, dirty)?;
            let added = evaluate_inputs(&self.plan, batch)?;
            self.accumulate(added, false, dirty)?;
        }
        Ok(())
    }

    /// Takes replaced or deleted rows out of their groups' accumulators.
    fn retract(&mut self, rows: Vec<RecordBatch>, dirty: &mut Vec<usize>) -> Result<()> {
        if !self.retracting_accumulators || rows.is_empty() {
            return Ok(());
        }
        let rows = concat_batches(&self.plan.input_schema, &rows)?;
        let ev = evaluate_inputs(&self.plan, &rows)?;
        self.accumulate(ev, true, dirty)
    }

    /// Input key ids of `batch`'s rows (interned when `add`).
    fn input_ids(&mut self, batch: &RecordBatch, add: bool) -> Result<Vec<Option<usize>>> {
        let plan_keys = self.plan.input_keys.as_ref().expect("an updating input");
        let table = self.table.as_mut().expect("an updating input");
        let cols: Vec<ArrayRef> = plan_keys
            .iter()
            .map(|&i| Arc::clone(batch.column(i)))
            .collect();
        if add {
            let mut ids = Vec::new();
            table.keys.intern(&cols, batch.num_rows(), &mut ids)?;
            if table.rows.len() < table.keys.len() {
                table.rows.resize_with(table.keys.len(), || None);
            }
            Ok(ids.into_iter().map(Some).collect())
        } else {
            table.keys.find(&cols, batch.num_rows())
        }
    }

    /// Takes an input key's current row out of its group; returns it.
    fn withdraw(&mut self, id: usize, dirty: &mut Vec<usize>) -> Option<RecordBatch> {
        let table = self.table.as_mut().expect("an updating input");
        let (g, row) = table.rows[id].take()?;
        if let Some(group) = self.groups[g].as_mut() {
            group.members.remove(&id);
        }
        dirty.push(g);
        Some(row)
    }

    /// One row per group in `groups` (keys, then aggregate values).
    fn aggregate_rows(&mut self, groups: &[usize]) -> Result<RecordBatch> {
        let mut columns = self.keys.key_columns_of(groups)?;
        let mut values: Vec<Vec<ScalarValue>> =
            vec![Vec::with_capacity(groups.len()); self.plan.aggregates.len()];
        for &g in groups {
            let results = match self.table.as_ref().filter(|_| self.recomputes()) {
                None => {
                    let group = self.groups[g].as_mut().expect("a live group");
                    group
                        .accumulators
                        .iter_mut()
                        .map(|a| a.evaluate())
                        .collect::<Result<Vec<_>>>()?
                }
                Some(table) => {
                    let group = self.groups[g].as_ref().expect("a live group");
                    let mut members: Vec<usize> = group.members.iter().copied().collect();
                    members.sort_unstable(); // first-seen order, as arrival
                    let rows = concat_batches(
                        &self.plan.input_schema,
                        members
                            .iter()
                            .map(|&m| &table.rows[m].as_ref().expect("a member row").1),
                    )?;
                    let ev = evaluate_inputs(&self.plan, &rows)?;
                    let mut accs = self.new_accumulators()?;
                    for (a, acc) in accs.iter_mut().enumerate() {
                        let mut args = ev.values[a].clone();
                        if let Some(mask) = &ev.filters[a] {
                            args = args
                                .iter()
                                .map(|v| filter(v.as_ref(), mask))
                                .collect::<std::result::Result<_, _>>()?;
                        }
                        acc.update_batch(&args)?;
                    }
                    accs.iter_mut()
                        .map(|a| a.evaluate())
                        .collect::<Result<Vec<_>>>()?
                }
            };
            for (a, v) in results.into_iter().enumerate() {
                values[a].push(v);
            }
        }
        for v in values {
            columns.push(ScalarValue::iter_to_array(v)?);
        }
        let columns = conform(&self.plan.aggregate_schema, columns)?;
        Ok(RecordBatch::try_new(
            Arc::clone(&self.plan.aggregate_schema),
            columns,
        )?)
    }

    /// Evaluates the `dirty` groups and, with `send`, emits the rows that
    /// changed and the keys that left the output.
    fn emit_changes(&mut self, mut dirty: Vec<usize>, out: &mut Output, send: bool) -> Result<()> {
        dirty.sort_unstable();
        dirty.dedup();
        let retracting = self.table.is_some();
        let live: Vec<usize> = dirty
            .iter()
            .copied()
            .filter(|&g| {
                self.groups[g]
                    .as_ref()
                    .is_some_and(|grp| !retracting || !grp.members.is_empty())
            })
            .collect();
        let mut visible = HashSet::new();
        let mut upserts = Vec::new();
        let mut rows = RecordBatch::new_empty(Arc::clone(&self.output_schema));
        if !live.is_empty() {
            let aggregated = self.aggregate_rows(&live)?;
            rows = apply_steps(&self.plan.post, &aggregated, &self.output_schema)?;
            let keys: Vec<ArrayRef> = self
                .plan
                .output_keys
                .iter()
                .zip(&self.plan.key_fields)
                .map(|(&i, f)| cast(rows.column(i), f.data_type()))
                .collect::<std::result::Result<_, _>>()?;
            let found = self.keys.find(&keys, rows.num_rows())?;
            let bytes = self.output_rows.convert_columns(rows.columns())?;
            for (i, g) in found.into_iter().enumerate() {
                let Some(g) = g.filter(|g| live.contains(g)) else {
                    return Err(DataFusionError::Execution(
                        "an output row's GROUP BY columns do not match its group: select the GROUP BY columns unchanged".into(),
                    ));
                };
                visible.insert(g);
                let row = bytes.row(i);
                let group = self.groups[g].as_mut().expect("a live group");
                if group.emitted.as_deref() != Some(row.as_ref()) {
                    group.emitted = Some(row.as_ref().into());
                    upserts.push(i as u32);
                }
            }
        }
        let mut deleted = Vec::new();
        for &g in &dirty {
            if visible.contains(&g) {
                continue;
            }
            if let Some(group) = self.groups[g].as_mut()
                && group.emitted.take().is_some()
            {
                deleted.push(g);
            }
            if retracting
                && self.groups[g]
                    .as_ref()
                    .is_some_and(|grp| grp.members.is_empty())
            {
                self.groups[g] = None;
            }
        }
        if send {
            self.send(&rows, &upserts, &deleted, out)?;
        }
        Ok(())
    }

    fn send(
        &mut self,
        rows: &RecordBatch,
        upserts: &[u32],
        deleted: &[usize],
        out: &mut Output,
    ) -> Result<()> {
        if !upserts.is_empty() {
            out.rows.push(take_record_batch(
                rows,
                &UInt32Array::from(upserts.to_vec()),
            )?);
        }
        if !deleted.is_empty() {
            out.deletes.push(self.deletion_rows(deleted)?);
        }
        self.metrics.rows_out += (upserts.len() + deleted.len()) as u64;
        Ok(())
    }

    /// Rows in the output schema with only the keys of `groups` set.
    fn deletion_rows(&self, groups: &[usize]) -> Result<RecordBatch> {
        let keys = self.keys.key_columns_of(groups)?;
        let columns = self
            .output_schema
            .fields()
            .iter()
            .enumerate()
            .map(
                |(j, f)| match self.plan.output_keys.iter().position(|&k| k == j) {
                    Some(k) => Ok(cast(&keys[k], f.data_type())?),
                    None => Ok(new_null_array(f.data_type(), groups.len())),
                },
            )
            .collect::<Result<Vec<_>>>()?;
        Ok(RecordBatch::try_new(
            Arc::clone(&self.output_schema),
            columns,
        )?)
    }

    fn live_groups(&self) -> Vec<usize> {
        (0..self.groups.len())
            .filter(|&g| self.groups[g].is_some())
            .collect()
    }
}

/// WHERE, the GROUP BY keys, the aggregates' arguments and FILTERs and the
/// event times of a batch: pure, so a failing row can be isolated.
/// Whether every aggregate can take rows back in any order: COUNT, SUM
/// and AVG (not DISTINCT). MIN and MAX retract only in arrival order (as a
/// sliding window does), so groups with them recompute from their rows.
fn retract_in_any_order(aggregates: &[crate::plan::AggregateSpec]) -> Result<bool> {
    for a in aggregates {
        let name = a.function.fun().name().to_ascii_lowercase();
        if a.function.is_distinct()
            || !matches!(name.as_str(), "count" | "sum" | "avg")
            || !a
                .function
                .create_sliding_accumulator()?
                .supports_retract_batch()
        {
            return Ok(false);
        }
    }
    Ok(true)
}

fn evaluate_inputs(plan: &UpdatingPlan, batch: &RecordBatch) -> Result<Evaluated> {
    let batch = apply_filter(plan.filter.as_ref(), batch)?;
    let inputs = BatchInputs::of(&plan.keys, &plan.aggregates, &batch)?;
    let event_ms = plan
        .event_time_index
        .map(|i| event_times(&batch, i).map(|(ts, _)| ts))
        .transpose()?;
    Ok(Evaluated {
        rows: batch.num_rows(),
        keys: inputs.keys,
        values: inputs.values,
        filters: inputs.filters,
        event_ms,
    })
}

impl StreamOperator for UpdatingAggregate {
    fn on_batch(&mut self, batch: &RecordBatch, out: &mut Output) -> Result<()> {
        self.metrics.rows_in += batch.num_rows() as u64;
        let mut dirty = Vec::new();
        let rejected_before = out.rejected.len();
        if self.table.is_none() {
            let plan = &self.plan;
            let eval = |b: &RecordBatch| evaluate_inputs(plan, b);
            let mut evaluated = Vec::new();
            evaluate_rows(batch, out, &eval, &mut |_, ev, _| {
                evaluated.push(ev);
                Ok(())
            })?;
            for ev in evaluated {
                self.accumulate(ev, false, &mut dirty)?;
            }
        } else {
            let plan = &self.plan;
            let eval = |b: &RecordBatch| -> Result<(BooleanArray, Vec<ArrayRef>)> {
                let passes = match &plan.filter {
                    Some(f) => evaluate_mask(f, b)?,
                    None => BooleanArray::from(vec![true; b.num_rows()]),
                };
                let keys = plan
                    .keys
                    .iter()
                    .map(|k| evaluate(k, b))
                    .collect::<Result<_>>()?;
                Ok((passes, keys))
            };
            let mut evaluated = Vec::new();
            evaluate_rows(batch, out, &eval, &mut |b, v, _| {
                evaluated.push((b.clone(), v));
                Ok(())
            })?;
            for (rows, (passes, keys)) in evaluated {
                self.upsert(&rows, &passes, &keys, &mut dirty)?;
            }
        }
        self.metrics.rejected_rows += (out.rejected.len() - rejected_before) as u64;
        self.emit_changes(dirty, out, true)
    }

    fn on_input_deletes(
        &mut self,
        _input: usize,
        keys: &RecordBatch,
        out: &mut Output,
    ) -> Result<()> {
        if self.table.is_none() {
            return Err(DataFusionError::Internal(
                "deletions reached an aggregate of an append-only input".into(),
            ));
        }
        let mut dirty = Vec::new();
        let mut deleted = Vec::new();
        for id in self.input_ids(keys, false)?.into_iter().flatten() {
            deleted.extend(self.withdraw(id, &mut dirty));
        }
        self.retract(deleted, &mut dirty)?;
        self.emit_changes(dirty, out, true)
    }

    fn on_watermark(&mut self, watermark: i64, out: &mut Output) -> Result<()> {
        // An ended input does not age its keys: time stopped, it did not pass.
        let Some(ttl) = self.plan.ttl_ms else {
            return Ok(());
        };
        if watermark == END_OF_INPUT || watermark == NO_WATERMARK {
            return Ok(());
        }
        let horizon = watermark.saturating_sub(ttl);
        let expired: Vec<usize> = self
            .live_groups()
            .into_iter()
            .filter(|&g| {
                self.groups[g]
                    .as_ref()
                    .is_some_and(|grp| grp.newest_ms < horizon)
            })
            .collect();
        let mut deleted = Vec::new();
        for g in expired {
            if self.groups[g].take().and_then(|grp| grp.emitted).is_some() {
                deleted.push(g);
            }
        }
        let empty = RecordBatch::new_empty(Arc::clone(&self.output_schema));
        self.send(&empty, &[], &deleted, out)?;
        if self.live_groups().len() * 2 < self.keys.len() {
            self.compact()?;
        }
        Ok(())
    }

    fn snapshot(&mut self) -> Result<OperatorState> {
        let meta = serde_json::json!({ "metrics": self.metrics });
        let batch = match &self.table {
            Some(table) => {
                let rows: Vec<&RecordBatch> = table.rows.iter().flatten().map(|(_, r)| r).collect();
                Some(concat_batches(&self.plan.input_schema, rows)?)
            }
            None => self.accumulator_state()?,
        };
        Ok(OperatorState { meta, batch })
    }

    fn restore(&mut self, state: OperatorState) -> Result<()> {
        if let Ok(m) = serde_json::from_value(state.meta["metrics"].clone()) {
            self.metrics = m;
        }
        self.keys = GroupKeys::new(&self.plan.key_fields)?;
        self.groups.clear();
        let Some(batch) = state.batch else {
            return Ok(());
        };
        let mut dirty = Vec::new();
        if self.table.is_some() {
            if batch.schema().fields().len() != self.plan.input_schema.fields().len() {
                return Err(DataFusionError::Execution(
                    "checkpoint state is malformed: the stored input rows have other columns"
                        .into(),
                ));
            }
            let batch = RecordBatch::try_new(
                Arc::clone(&self.plan.input_schema),
                conform(&self.plan.input_schema, batch.columns().to_vec())?,
            )?;
            let (passes, keys) = {
                let keys = self
                    .plan
                    .keys
                    .iter()
                    .map(|k| evaluate(k, &batch))
                    .collect::<Result<Vec<_>>>()?;
                (BooleanArray::from(vec![true; batch.num_rows()]), keys)
            };
            self.upsert(&batch, &passes, &keys, &mut dirty)?;
        } else {
            dirty = self.restore_accumulators(&batch)?;
        }
        // Rebuild what was last emitted; send nothing.
        self.emit_changes(dirty, &mut Output::default(), false)
    }

    fn metrics(&self) -> OperatorMetrics {
        OperatorMetrics {
            open_windows: self.live_groups().len() as u64,
            ..self.metrics
        }
    }
}

impl UpdatingAggregate {
    /// Keys, accumulator states and newest event time of every group.
    fn accumulator_state(&mut self) -> Result<Option<RecordBatch>> {
        let live = self.live_groups();
        if live.is_empty() {
            return Ok(None);
        }
        let mut columns = self.keys.key_columns_of(&live)?;
        let mut fields: Vec<Field> = self
            .plan
            .key_fields
            .iter()
            .enumerate()
            .map(|(i, f)| Field::new(format!("key{i}"), f.data_type().clone(), true))
            .collect();
        for (a, spec) in self.plan.aggregates.iter().enumerate() {
            let width = spec.function.state_fields()?.len();
            let mut states: Vec<Vec<ScalarValue>> = vec![Vec::with_capacity(live.len()); width];
            for &g in &live {
                let group = self.groups[g].as_mut().expect("live");
                for (s, v) in group.accumulators[a].state()?.into_iter().enumerate() {
                    states[s].push(v);
                }
            }
            for (s, values) in states.into_iter().enumerate() {
                let array = ScalarValue::iter_to_array(values)?;
                fields.push(Field::new(
                    format!("agg{a}_{s}"),
                    array.data_type().clone(),
                    true,
                ));
                columns.push(array);
            }
        }
        let newest: Int64Array = live
            .iter()
            .map(|&g| Some(self.groups[g].as_ref().expect("live").newest_ms))
            .collect();
        fields.push(Field::new("newest_ms", DataType::Int64, false));
        columns.push(Arc::new(newest));
        Ok(Some(RecordBatch::try_new(
            Arc::new(Schema::new(fields)),
            columns,
        )?))
    }

    /// Rebuilds the groups of an [`accumulator_state`](Self::accumulator_state) batch.
    fn restore_accumulators(&mut self, batch: &RecordBatch) -> Result<Vec<usize>> {
        let widths = self
            .plan
            .aggregates
            .iter()
            .map(|a| Ok(a.function.state_fields()?.len()))
            .collect::<Result<Vec<_>>>()?;
        let nkeys = self.plan.key_fields.len();
        if batch.num_columns() != nkeys + widths.iter().sum::<usize>() + 1 {
            return Err(DataFusionError::Execution(format!(
                "checkpoint state is malformed: {} state columns, the query needs {}",
                batch.num_columns(),
                nkeys + widths.iter().sum::<usize>() + 1
            )));
        }
        let key_cols: Vec<ArrayRef> = self
            .plan
            .key_fields
            .iter()
            .enumerate()
            .map(|(i, f)| cast(batch.column(i), f.data_type()))
            .collect::<std::result::Result<_, _>>()?;
        let mut ids = Vec::new();
        self.keys.intern(&key_cols, batch.num_rows(), &mut ids)?;
        let newest = batch
            .column(batch.num_columns() - 1)
            .as_any()
            .downcast_ref::<Int64Array>()
            .ok_or_else(|| {
                DataFusionError::Execution("checkpoint state is malformed: newest_ms".into())
            })?
            .clone();
        for (r, &g) in ids.iter().enumerate() {
            let mut col = nkeys;
            let group = self.group(g)?;
            for (a, &w) in widths.iter().enumerate() {
                let states: Vec<ArrayRef> = (col..col + w)
                    .map(|c| batch.column(c).slice(r, 1))
                    .collect();
                group.accumulators[a].merge_batch(&states)?;
                col += w;
            }
            group.newest_ms = newest.value(r);
        }
        Ok(ids)
    }

    /// Renumbers the keys so expired ones stop costing memory.
    fn compact(&mut self) -> Result<()> {
        let live = self.live_groups();
        let (keys, new_index) = self.keys.retain(&live)?;
        let mut groups: Vec<Option<Group>> = Vec::new();
        groups.resize_with(live.len(), || None);
        for (old, new) in live.into_iter().zip(new_index) {
            groups[new] = self.groups[old].take();
        }
        self.keys = keys;
        self.groups = groups;
        Ok(())
    }
}

#[cfg(test)]
mod tests {

    use arrow::array::{AsArray, StringArray, TimestampMillisecondArray};
    use arrow::datatypes::Int64Type;

    use super::*;
    use crate::{Catalog, EngineConfig, OutputKind, Pipeline, StreamOutput};

    const SQL: &str = "CREATE TABLE t (k VARCHAR, ts TIMESTAMP(3), WATERMARK FOR ts AS ts) WITH ('topic' = 't', 'format' = 'json');
CREATE STREAM counts WITH ('state.ttl' = '5 s') AS SELECT k, COUNT(*) AS n FROM t GROUP BY k;";

    fn rows(keys: &[&str], ts: &[i64]) -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![
            Field::new("k", DataType::Utf8, true),
            Field::new(
                "ts",
                DataType::Timestamp(arrow::datatypes::TimeUnit::Millisecond, None),
                true,
            ),
        ]));
        RecordBatch::try_new(
            schema,
            vec![
                Arc::new(StringArray::from(keys.to_vec())),
                Arc::new(TimestampMillisecondArray::from(ts.to_vec())),
            ],
        )
        .unwrap()
    }

    /// (kind, key, count) of every change.
    fn changes(out: &[StreamOutput]) -> Vec<(OutputKind, String, Option<i64>)> {
        out.iter()
            .flat_map(|o| {
                let keys = o.rows.column(0).as_string::<i32>().clone();
                let n = o.rows.column(1).as_primitive::<Int64Type>().clone();
                (0..o.rows.num_rows()).map(move |i| {
                    (
                        o.kind,
                        keys.value(i).to_string(),
                        n.is_valid(i).then(|| n.value(i)),
                    )
                })
            })
            .collect()
    }

    #[test]
    fn keys_expire_after_the_ttl_in_event_time_and_start_afresh() {
        let config = EngineConfig {
            idle_timeout: None,
            ..EngineConfig::default()
        };
        let base = 1_700_000_000_000;
        let mut p = Pipeline::new(SQL, &Catalog::empty(), &config).unwrap();
        let mut out = Vec::new();
        p.push(
            "t",
            0,
            &rows(&["a", "b", "a"], &[base, base, base + 1000]),
            &mut out,
        )
        .unwrap();
        assert_eq!(
            changes(&out),
            [
                (OutputKind::Rows, "a".into(), Some(2)),
                (OutputKind::Rows, "b".into(), Some(1))
            ]
        );
        out.clear();
        // `b` keeps coming; `a`'s last row is 5 s behind the watermark at 6.5 s.
        p.push("t", 0, &rows(&["b"], &[base + 6500]), &mut out)
            .unwrap();
        assert_eq!(
            changes(&out),
            [
                (OutputKind::Rows, "b".into(), Some(2)),
                (OutputKind::Deletes, "a".into(), None)
            ]
        );
        out.clear();
        // A checkpoint keeps what expiry left; `a` comes back counting from 1.
        let snapshot = p.snapshot().unwrap();
        let mut p = Pipeline::new(SQL, &Catalog::empty(), &config).unwrap();
        p.restore(snapshot).unwrap();
        p.push(
            "t",
            0,
            &rows(&["a", "b"], &[base + 7000, base + 7000]),
            &mut out,
        )
        .unwrap();
        let mut after_restore = changes(&out);
        after_restore.sort_by(|x, y| x.1.cmp(&y.1));
        assert_eq!(
            after_restore,
            [
                (OutputKind::Rows, "a".into(), Some(1)),
                (OutputKind::Rows, "b".into(), Some(3))
            ]
        );
        // The end of the input is not the passing of time: nothing expires.
        out.clear();
        p.finish_partition("t", 0, &mut out).unwrap();
        assert!(out.is_empty(), "{out:?}");
    }

    #[test]
    fn an_unchanged_row_is_not_sent_again() {
        let sql = "CREATE TABLE t (k VARCHAR, ts TIMESTAMP(3), WATERMARK FOR ts AS ts) WITH ('topic' = 't', 'format' = 'json');
CREATE STREAM firsts AS SELECT k, MIN(ts) AS first_seen FROM t GROUP BY k;";
        let config = EngineConfig::default();
        let mut p = Pipeline::new(sql, &Catalog::empty(), &config).unwrap();
        let base = 1_700_000_000_000;
        let mut out = Vec::new();
        p.push("t", 0, &rows(&["a"], &[base]), &mut out).unwrap();
        assert_eq!(out.len(), 1);
        out.clear();
        p.push(
            "t",
            0,
            &rows(&["a", "a"], &[base + 10, base + 20]),
            &mut out,
        )
        .unwrap();
        assert!(out.is_empty(), "MIN(ts) did not change: {out:?}");
    }
}
