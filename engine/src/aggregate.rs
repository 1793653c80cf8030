//! Windowed aggregation over TUMBLE and HOP windows.
//!
//! Two-phase: each batch is folded into per-pane partial aggregates
//! (DataFusion `GroupsAccumulator`s, one group per key); a window's result
//! merges the partial states of its panes and evaluates them once, when the
//! watermark passes the window end (or on every change with EMIT CHANGES).
//! State is therefore proportional to keys × open panes, not to events.

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::array::{ArrayRef, AsArray, Int64Array, RecordBatch, UInt32Array};
use arrow::compute::{concat, filter_record_batch, take};
use arrow::datatypes::{Int64Type, SchemaRef};
use datafusion::error::{DataFusionError, Result};
use datafusion::logical_expr::{EmitTo, GroupsAccumulator};

use super::keys::GroupKeys;
use super::operator::{
    BatchInputs, OperatorMetrics, OperatorState, Output, StreamOperator, Subset, apply_filter,
    check_state_layout, evaluate_rows, event_times, finish_rows, new_groups_accumulator, split_by,
    state_schema, state_widths,
};
use super::plan::WindowedPlan;
use super::sql::EmitMode;
use super::watermark::NO_WATERMARK;

/// Partial aggregates of one pane.
struct Pane {
    keys: GroupKeys,
    data: PaneData,
}

enum PaneData {
    /// Still receiving rows.
    Live(Vec<Box<dyn GroupsAccumulator>>),
    /// No more rows can arrive: the accumulator states, read once.
    Frozen(Vec<Vec<ArrayRef>>),
}

pub struct WindowAggregate {
    plan: Arc<WindowedPlanHolder>,
    emit: EmitMode,
    panes: BTreeMap<i64, Pane>,
    /// Every window ending at or before this has been emitted.
    emitted_up_to: i64,
    metrics: OperatorMetrics,
    group_idx: Vec<usize>,
}

/// The parts of a stream plan the operator reads.
pub struct WindowedPlanHolder {
    pub plan: Box<WindowedPlan>,
    pub output_schema: SchemaRef,
}

impl WindowAggregate {
    pub fn new(plan: Box<WindowedPlan>, output_schema: SchemaRef, emit: EmitMode) -> Self {
        debug_assert!(plan.window.pane_ms().is_some());
        Self {
            plan: Arc::new(WindowedPlanHolder {
                plan,
                output_schema,
            }),
            emit,
            panes: BTreeMap::new(),
            emitted_up_to: NO_WATERMARK,
            metrics: OperatorMetrics::default(),
            group_idx: Vec::new(),
        }
    }

    fn new_accumulators(&self) -> Result<Vec<Box<dyn GroupsAccumulator>>> {
        self.plan
            .plan
            .aggregates
            .iter()
            .map(|a| new_groups_accumulator(&a.function))
            .collect()
    }

    fn is_tumble(&self) -> bool {
        matches!(
            self.plan.plan.window,
            super::window::WindowSpec::Tumble { .. }
        )
    }

    /// Folds the rows of one pane into its partial aggregates. Returns the
    /// group indices touched.
    fn update_pane(&mut self, pane_start: i64, inputs: &BatchInputs, rows: usize) -> Result<()> {
        if !self.panes.contains_key(&pane_start) {
            let pane = Pane {
                keys: GroupKeys::new(&self.plan.plan.key_fields)?,
                data: PaneData::Live(self.new_accumulators()?),
            };
            self.panes.insert(pane_start, pane);
        }
        let pane = self.panes.get_mut(&pane_start).expect("inserted above");
        pane.keys.intern(&inputs.keys, rows, &mut self.group_idx)?;
        let groups = pane.keys.len();
        let PaneData::Live(accs) = &mut pane.data else {
            return Err(DataFusionError::Internal(format!(
                "rows for frozen pane {pane_start}"
            )));
        };
        for (acc, (values, filter)) in accs
            .iter_mut()
            .zip(inputs.values.iter().zip(&inputs.filters))
        {
            acc.update_batch(values, &self.group_idx, filter.as_ref(), groups)?;
        }
        Ok(())
    }

    /// Merges the panes of window `[start, start + size)` and evaluates it.
    /// `only` restricts the output to keys touched by the last batch.
    fn evaluate_window(
        &mut self,
        start: i64,
        only: Option<&[(i64, Vec<usize>)]>,
    ) -> Result<Option<RecordBatch>> {
        let plan = Arc::clone(&self.plan);
        let size = plan.plan.window.size_ms().expect("time window");
        let aggregates = &plan.plan.aggregates;
        let mut keys = GroupKeys::new(&plan.plan.key_fields)?;
        let mut accs = self.new_accumulators()?;
        let mut wanted: Vec<usize> = Vec::new();
        let mut idx = Vec::new();
        for (&pane_start, pane) in self.panes.range_mut(start..start.saturating_add(size)) {
            let states = pane_states(pane, aggregates)?;
            let key_cols = pane.keys.key_columns()?;
            keys.intern(&key_cols, pane.keys.len(), &mut idx)?;
            for (acc, st) in accs.iter_mut().zip(&states) {
                acc.merge_batch(st, &idx, keys.len())?;
            }
            if let Some(touched) = only
                && let Some((_, groups)) = touched.iter().find(|(p, _)| *p == pane_start)
            {
                wanted.extend(groups.iter().map(|g| idx[*g]));
            }
        }
        let n = keys.len();
        if n == 0 {
            return Ok(None);
        }
        let mut results = accs
            .iter_mut()
            .map(|a| a.evaluate(EmitTo::All))
            .collect::<Result<Vec<_>>>()?;
        let mut key_cols = keys.key_columns()?;
        let mut rows = n;
        if only.is_some() {
            wanted.sort_unstable();
            wanted.dedup();
            let sel = UInt32Array::from(wanted.iter().map(|&i| i as u32).collect::<Vec<_>>());
            for c in key_cols.iter_mut().chain(results.iter_mut()) {
                *c = take(c.as_ref(), &sel, None)?;
            }
            rows = wanted.len();
        }
        finish_rows(
            &plan.plan,
            &plan.output_schema,
            &key_cols,
            vec![start; rows],
            vec![start + size; rows],
            results,
        )
    }

    /// Emits closed tumbling windows, each from its single pane without
    /// copying state. Without a top-N (which ranks each window on its own)
    /// the windows' rows go through HAVING and the projection together, in
    /// batches of up to [`EMIT_BATCH_ROWS`]: with few keys per window
    /// (sparse data) that per-call cost would otherwise dominate.
    fn emit_tumble_panes(&mut self, closed: Vec<(i64, Pane)>, out: &mut Output) -> Result<()> {
        let plan = Arc::clone(&self.plan);
        let size = plan.plan.window.size_ms().expect("time window");
        let mut pending = PendingRows::new(&plan.plan);
        for (start, pane) in closed {
            let Some(window) = self.evaluate_tumble_pane(pane)? else {
                continue;
            };
            pending.add(start, start + size, window);
            if plan.plan.rank.is_some() || pending.rows() >= EMIT_BATCH_ROWS {
                self.push_rows(pending.finish(&plan)?, out);
            }
        }
        self.push_rows(pending.finish(&plan)?, out);
        Ok(())
    }

    fn push_rows(&mut self, rows: Option<RecordBatch>, out: &mut Output) {
        if let Some(rows) = rows {
            self.metrics.rows_out += rows.num_rows() as u64;
            out.rows.push(rows);
        }
    }

    /// The groups of a tumbling window's pane, `None` if it holds none.
    fn evaluate_tumble_pane(&self, pane: Pane) -> Result<Option<EvaluatedGroups>> {
        let n = pane.keys.len();
        if n == 0 {
            return Ok(None);
        }
        let results = match pane.data {
            PaneData::Live(mut accs) => accs
                .iter_mut()
                .map(|a| a.evaluate(EmitTo::All))
                .collect::<Result<Vec<_>>>()?,
            PaneData::Frozen(states) => {
                let idx: Vec<usize> = (0..n).collect();
                let mut accs = self.new_accumulators()?;
                for (acc, st) in accs.iter_mut().zip(&states) {
                    acc.merge_batch(st, &idx, n)?;
                }
                accs.iter_mut()
                    .map(|a| a.evaluate(EmitTo::All))
                    .collect::<Result<Vec<_>>>()?
            }
        };
        Ok(Some(EvaluatedGroups {
            rows: n,
            keys: pane.keys.key_columns()?,
            results,
        }))
    }
}

/// Most rows of closed windows evaluated as one output batch.
const EMIT_BATCH_ROWS: usize = 65_536;

/// One window's groups: key columns and aggregate results, `rows` each.
struct EvaluatedGroups {
    rows: usize,
    keys: Vec<ArrayRef>,
    results: Vec<ArrayRef>,
}

/// Evaluated windows waiting to go through HAVING and the projection
/// together: per column, the parts of each window.
struct PendingRows {
    starts: Vec<i64>,
    ends: Vec<i64>,
    keys: Vec<Vec<ArrayRef>>,
    results: Vec<Vec<ArrayRef>>,
}

impl PendingRows {
    fn new(plan: &WindowedPlan) -> Self {
        Self {
            starts: Vec::new(),
            ends: Vec::new(),
            keys: vec![Vec::new(); plan.key_fields.len()],
            results: vec![Vec::new(); plan.aggregates.len()],
        }
    }

    fn rows(&self) -> usize {
        self.starts.len()
    }

    fn add(&mut self, start: i64, end: i64, window: EvaluatedGroups) {
        self.starts.extend(std::iter::repeat_n(start, window.rows));
        self.ends.extend(std::iter::repeat_n(end, window.rows));
        for (all, part) in self.keys.iter_mut().zip(window.keys) {
            all.push(part);
        }
        for (all, part) in self.results.iter_mut().zip(window.results) {
            all.push(part);
        }
    }

    /// The output rows of what was added since the last call.
    fn finish(&mut self, plan: &WindowedPlanHolder) -> Result<Option<RecordBatch>> {
        if self.starts.is_empty() {
            return Ok(None);
        }
        let keys = concat_columns(&mut self.keys)?;
        let results = concat_columns(&mut self.results)?;
        finish_rows(
            &plan.plan,
            &plan.output_schema,
            &keys,
            std::mem::take(&mut self.starts),
            std::mem::take(&mut self.ends),
            results,
        )
    }
}

/// Each column's parts as one array; the parts are taken.
fn concat_columns(columns: &mut [Vec<ArrayRef>]) -> Result<Vec<ArrayRef>> {
    columns
        .iter_mut()
        .map(|parts| {
            let parts = std::mem::take(parts);
            match parts.as_slice() {
                [one] => Ok(Arc::clone(one)),
                _ => Ok(concat(
                    &parts.iter().map(|a| a.as_ref()).collect::<Vec<_>>(),
                )?),
            }
        })
        .collect()
}

/// The partial states of a pane without disturbing it.
fn pane_states(
    pane: &mut Pane,
    aggregates: &[super::plan::AggregateSpec],
) -> Result<Vec<Vec<ArrayRef>>> {
    let n = pane.keys.len();
    match &mut pane.data {
        PaneData::Frozen(states) => Ok(states.clone()),
        PaneData::Live(accs) => {
            // GroupsAccumulator::state drains; merge the state straight back.
            let identity: Vec<usize> = (0..n).collect();
            accs.iter_mut()
                .zip(aggregates)
                .map(|(acc, spec)| {
                    let st = acc.state(EmitTo::All)?;
                    let mut fresh = new_groups_accumulator(&spec.function)?;
                    fresh.merge_batch(&st, &identity, n)?;
                    *acc = fresh;
                    Ok(st)
                })
                .collect()
        }
    }
}

fn freeze(pane: &mut Pane) -> Result<()> {
    if let PaneData::Live(accs) = &mut pane.data {
        let states = accs
            .iter_mut()
            .map(|a| a.state(EmitTo::All))
            .collect::<Result<Vec<_>>>()?;
        pane.data = PaneData::Frozen(states);
    }
    Ok(())
}

impl WindowAggregate {
    /// Folds filtered, evaluated rows into their panes; late rows go to
    /// `out.late`.
    fn absorb(&mut self, batch: RecordBatch, inputs: BatchInputs, out: &mut Output) -> Result<()> {
        let plan = Arc::clone(&self.plan);
        let wp = &plan.plan;
        self.metrics.rows_in += batch.num_rows() as u64;
        let (mut ts, nulls) = event_times(&batch, wp.event_time_index)?;
        let window = wp.window;

        // Late rows: their earliest window has already been emitted.
        let mut batch = batch;
        let mut inputs = inputs;
        let min_ts = ts.iter().copied().min().unwrap_or(i64::MAX);
        if nulls > 0 || window.earliest_end(min_ts) <= self.emitted_up_to {
            let valid = batch.column(wp.event_time_index).logical_nulls();
            let on_time: arrow::array::BooleanArray = ts
                .iter()
                .enumerate()
                .map(|(i, &t)| {
                    Some(
                        valid.as_ref().is_none_or(|v| v.is_valid(i))
                            && window.earliest_end(t) > self.emitted_up_to,
                    )
                })
                .collect();
            let late = filter_record_batch(&batch, &arrow::compute::not(&on_time)?)?;
            self.metrics.late_events += late.num_rows() as u64;
            out.late.push(late);
            batch = filter_record_batch(&batch, &on_time)?;
            let kept: Vec<u32> = (0..on_time.len() as u32)
                .filter(|&i| on_time.value(i as usize))
                .collect();
            inputs = inputs.select(&Subset::Indices(UInt32Array::from(kept)))?;
            ts = ts
                .iter()
                .zip(on_time.values().iter())
                .filter(|(_, ok)| *ok)
                .map(|(t, _)| *t)
                .collect();
            if batch.num_rows() == 0 {
                return Ok(());
            }
        }

        let panes: Vec<i64> = ts.iter().map(|&t| window.pane_start(t)).collect();
        let splits = split_by(&panes);
        let mut touched: Vec<(i64, Vec<usize>)> = Vec::new();
        for (pane_start, subset) in splits {
            let rows = subset.len();
            if matches!(subset, Subset::Range(0, len) if len == batch.num_rows()) {
                self.update_pane(pane_start, &inputs, rows)?;
            } else {
                self.update_pane(pane_start, &inputs.select(&subset)?, rows)?;
            }
            if self.emit == EmitMode::Changes {
                let mut g = self.group_idx.clone();
                g.sort_unstable();
                g.dedup();
                touched.push((pane_start, g));
            }
        }

        if self.emit == EmitMode::Changes {
            // Every still-open window containing a touched pane gets an update.
            let mut windows: Vec<i64> = touched
                .iter()
                .flat_map(|(p, _)| window.window_starts(*p).collect::<Vec<_>>())
                .filter(|&s| s + window.size_ms().expect("time window") > self.emitted_up_to)
                .collect();
            windows.sort_unstable();
            windows.dedup();
            for start in windows {
                if let Some(rows) = self.evaluate_window(start, Some(&touched))? {
                    self.metrics.rows_out += rows.num_rows() as u64;
                    out.rows.push(rows);
                }
            }
        }
        self.metrics.open_windows = self.panes.len() as u64;
        Ok(())
    }
}

impl StreamOperator for WindowAggregate {
    fn on_batch(&mut self, batch: &RecordBatch, out: &mut Output) -> Result<()> {
        let plan = Arc::clone(&self.plan);
        let eval = |batch: &RecordBatch| -> Result<Option<(RecordBatch, BatchInputs)>> {
            let batch = apply_filter(plan.plan.filter.as_ref(), batch)?;
            if batch.num_rows() == 0 {
                return Ok(None);
            }
            let inputs = BatchInputs::evaluate(&plan.plan, &batch)?;
            Ok(Some((batch, inputs)))
        };
        let rejected_before = out.rejected.len();
        evaluate_rows(
            batch,
            out,
            &eval,
            &mut |_, evaluated, out| match evaluated {
                Some((rows, inputs)) => self.absorb(rows, inputs, out),
                None => Ok(()),
            },
        )?;
        self.metrics.rejected_rows += (out.rejected.len() - rejected_before) as u64;
        Ok(())
    }

    fn on_watermark(&mut self, watermark: i64, out: &mut Output) -> Result<()> {
        if watermark <= self.emitted_up_to {
            return Ok(());
        }
        let window = self.plan.plan.window;
        let emit_final = self.emit == EmitMode::OnWindowClose;
        if self.is_tumble() {
            let size = window.size_ms().expect("time window");
            let mut closed = Vec::new();
            while let Some(entry) = self.panes.first_entry() {
                if entry.key().saturating_add(size) > watermark {
                    break;
                }
                closed.push(entry.remove_entry());
            }
            if emit_final {
                self.emit_tumble_panes(closed, out)?;
            }
        } else {
            // Panes that can no longer receive rows are read once and frozen.
            for (&start, pane) in self.panes.iter_mut() {
                if window.earliest_end(start) <= watermark {
                    freeze(pane)?;
                }
            }
            if emit_final {
                let closing = window.windows_closing(
                    self.panes.keys().copied(),
                    self.emitted_up_to,
                    watermark,
                );
                for start in closing {
                    if let Some(rows) = self.evaluate_window(start, None)? {
                        self.metrics.rows_out += rows.num_rows() as u64;
                        out.rows.push(rows);
                    }
                }
            }
            self.panes
                .retain(|&start, _| window.pane_retire_at(start) > watermark);
        }
        self.emitted_up_to = watermark;
        self.metrics.open_windows = self.panes.len() as u64;
        Ok(())
    }

    fn snapshot(&mut self) -> Result<OperatorState> {
        let plan = Arc::clone(&self.plan);
        let wp = &plan.plan;
        let schema = state_schema(wp, &["pane"])?;
        let mut columns: Vec<Vec<ArrayRef>> = vec![Vec::new(); schema.fields().len()];
        for (&start, pane) in self.panes.iter_mut() {
            let n = pane.keys.len();
            if n == 0 {
                continue;
            }
            let mut c = 0;
            columns[c].push(Arc::new(Int64Array::from(vec![start; n])) as ArrayRef);
            c += 1;
            for k in pane.keys.key_columns()? {
                columns[c].push(k);
                c += 1;
            }
            for st in pane_states(pane, &wp.aggregates)? {
                for s in st {
                    columns[c].push(s);
                    c += 1;
                }
            }
        }
        let batch = if columns[0].is_empty() {
            None
        } else {
            let arrays = columns
                .iter()
                .map(|parts| concat(&parts.iter().map(|a| a.as_ref()).collect::<Vec<_>>()))
                .collect::<std::result::Result<Vec<_>, _>>()?;
            let arrays = super::operator::conform(&schema, arrays)?;
            Some(RecordBatch::try_new(schema, arrays)?)
        };
        Ok(OperatorState {
            meta: serde_json::json!({ "emitted_up_to": self.emitted_up_to, "metrics": self.metrics }),
            batch,
        })
    }

    fn restore(&mut self, state: OperatorState) -> Result<()> {
        let bad = |what: &str| {
            DataFusionError::Execution(format!("checkpoint state is malformed: {what}"))
        };
        self.emitted_up_to = state.meta["emitted_up_to"]
            .as_i64()
            .ok_or_else(|| bad("emitted_up_to"))?;
        self.metrics = serde_json::from_value(state.meta["metrics"].clone())
            .map_err(|e| bad(&e.to_string()))?;
        self.panes.clear();
        let Some(batch) = state.batch else {
            return Ok(());
        };
        let plan = Arc::clone(&self.plan);
        let wp = &plan.plan;
        check_state_layout(&batch, &*state_schema(wp, &["pane"])?)?;
        let pane_col = batch
            .column(0)
            .as_primitive_opt::<Int64Type>()
            .ok_or_else(|| bad("pane column"))?;
        let splits = split_by(pane_col.values());
        let nkeys = wp.key_fields.len();
        let widths = state_widths(&wp.aggregates)?;
        for (start, subset) in splits {
            let cols: Vec<ArrayRef> = batch
                .columns()
                .iter()
                .map(|c| subset.apply(c))
                .collect::<Result<_>>()?;
            let n = subset.len();
            let mut keys = GroupKeys::new(&wp.key_fields)?;
            let mut idx = Vec::new();
            keys.intern(&cols[1..1 + nkeys], n, &mut idx)?;
            let mut accs = self.new_accumulators()?;
            let mut c = 1 + nkeys;
            for (acc, w) in accs.iter_mut().zip(&widths) {
                acc.merge_batch(&cols[c..c + w], &idx, keys.len())?;
                c += w;
            }
            let mut pane = Pane {
                keys,
                data: PaneData::Live(accs),
            };
            if !self.is_tumble() && wp.window.earliest_end(start) <= self.emitted_up_to {
                freeze(&mut pane)?;
            }
            self.panes.insert(start, pane);
        }
        self.metrics.open_windows = self.panes.len() as u64;
        Ok(())
    }

    fn metrics(&self) -> OperatorMetrics {
        self.metrics
    }
}
