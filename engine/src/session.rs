//! SESSION windows: per key, a session grows while events arrive less than
//! `gap` apart and closes when the watermark passes its last event + gap.
//!
//! Out-of-order events can bridge two sessions, which then merge, partial
//! aggregates included. Sessions are few per key, so each keeps DataFusion's
//! per-group `Accumulator`s and is fed contiguous runs of its rows.

use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, Int64Array, RecordBatch, UInt32Array};
use arrow::compute::{filter, take};
use arrow::datatypes::{Int64Type, SchemaRef};
use datafusion::common::ScalarValue;
use datafusion::error::{DataFusionError, Result};
use datafusion::logical_expr::Accumulator;

use super::keys::GroupKeys;
use super::operator::{
    BatchInputs, OperatorMetrics, OperatorState, Output, StreamOperator, Subset, apply_filter,
    check_state_layout, conform, evaluate_rows, event_times, finish_rows, state_schema,
    state_widths,
};
use super::plan::WindowedPlan;
use super::sql::EmitMode;
use super::watermark::NO_WATERMARK;

/// Below this many interned keys, closed ones are not worth forgetting.
const MIN_KEYS_TO_COMPACT: usize = 1024;

struct Session {
    start: i64,
    /// Last event time + gap.
    end: i64,
    accs: Vec<Box<dyn Accumulator>>,
}

pub struct SessionAggregate {
    plan: Box<WindowedPlan>,
    output_schema: SchemaRef,
    emit: EmitMode,
    gap: i64,
    keys: GroupKeys,
    /// Open sessions per key index, sorted by start, non-overlapping.
    sessions: HashMap<usize, Vec<Session>>,
    emitted_up_to: i64,
    metrics: OperatorMetrics,
}

impl SessionAggregate {
    pub fn new(plan: Box<WindowedPlan>, output_schema: SchemaRef, emit: EmitMode) -> Result<Self> {
        let super::window::WindowSpec::Session { gap_ms } = plan.window else {
            return Err(DataFusionError::Internal(
                "session operator needs a SESSION window".into(),
            ));
        };
        let keys = GroupKeys::new(&plan.key_fields)?;
        Ok(Self {
            plan,
            output_schema,
            emit,
            gap: gap_ms,
            keys,
            sessions: HashMap::new(),
            emitted_up_to: NO_WATERMARK,
            metrics: OperatorMetrics::default(),
        })
    }

    fn new_accumulators(&self) -> Result<Vec<Box<dyn Accumulator>>> {
        super::operator::new_accumulators(&self.plan.aggregates)
    }

    /// Renumbers the keys once most of them have no open session, so keys
    /// never seen again stop costing memory (amortised: each renumbering at
    /// least halves the key table).
    fn forget_closed_keys(&mut self) -> Result<()> {
        if self.keys.len() < MIN_KEYS_TO_COMPACT || self.sessions.len() * 2 > self.keys.len() {
            return Ok(());
        }
        let mut live: Vec<usize> = self.sessions.keys().copied().collect();
        live.sort_unstable();
        let (keys, new_index) = self.keys.retain(&live)?;
        let mut sessions = HashMap::with_capacity(live.len());
        for (old, new) in live.into_iter().zip(new_index) {
            sessions.insert(new, self.sessions.remove(&old).expect("live key"));
        }
        self.keys = keys;
        self.sessions = sessions;
        Ok(())
    }

    /// Number of interned keys (open or not), for tests.
    pub fn interned_keys(&self) -> usize {
        self.keys.len()
    }

    fn open_sessions(&self) -> u64 {
        self.sessions.values().map(|v| v.len() as u64).sum()
    }

    /// Current results of the given sessions (key, session start).
    fn evaluate(&mut self, which: &[(usize, i64)], finalize: bool) -> Result<Option<RecordBatch>> {
        if which.is_empty() {
            return Ok(None);
        }
        let mut key_idx = Vec::with_capacity(which.len());
        let (mut starts, mut ends) = (Vec::new(), Vec::new());
        let mut values: Vec<Vec<ScalarValue>> = vec![Vec::new(); self.plan.aggregates.len()];
        for &(key, start) in which {
            let list = self.sessions.get_mut(&key).expect("session exists");
            let pos = list
                .iter()
                .position(|s| s.start == start)
                .expect("session exists");
            let s = &mut list[pos];
            for (i, acc) in s.accs.iter_mut().enumerate() {
                let v = if finalize {
                    acc.evaluate()?
                } else {
                    // Evaluate a copy: evaluate() may consume accumulator state.
                    let mut copy = self.plan.aggregates[i].function.create_accumulator()?;
                    let st: Vec<ArrayRef> = acc
                        .state()?
                        .iter()
                        .map(|v| v.to_array())
                        .collect::<Result<_>>()?;
                    copy.merge_batch(&st)?;
                    copy.evaluate()?
                };
                values[i].push(v);
            }
            key_idx.push(key);
            starts.push(s.start);
            ends.push(s.end);
        }
        let keys = self.keys.key_columns_of(&key_idx)?;
        let results = values
            .into_iter()
            .map(ScalarValue::iter_to_array)
            .collect::<Result<Vec<_>>>()?;
        finish_rows(
            &self.plan,
            &self.output_schema,
            &keys,
            starts,
            ends,
            results,
        )
    }
}

impl SessionAggregate {
    /// Folds filtered, evaluated rows into their keys' sessions; late rows
    /// go to `out.late`.
    fn absorb(&mut self, batch: RecordBatch, inputs: BatchInputs, out: &mut Output) -> Result<()> {
        self.metrics.rows_in += batch.num_rows() as u64;
        let (ts, _) = event_times(&batch, self.plan.event_time_index)?;
        let valid = batch.column(self.plan.event_time_index).logical_nulls();
        let mut key_idx = Vec::new();
        self.keys
            .intern(&inputs.keys, batch.num_rows(), &mut key_idx)?;

        // Rows by (key, event time): each key's rows split into runs of events
        // closer than `gap`, each run being (part of) one session.
        let mut order: Vec<u32> = (0..batch.num_rows() as u32)
            .filter(|&i| valid.as_ref().is_none_or(|v| v.is_valid(i as usize)))
            .collect();
        let null_rows = batch.num_rows() - order.len();
        order.sort_unstable_by_key(|&i| (key_idx[i as usize], ts[i as usize], i));
        let mut late_rows: Vec<u32> = Vec::new();
        let mut touched: Vec<(usize, i64)> = Vec::new();
        let mut run_start = 0;
        for i in 1..=order.len() {
            let boundary = i == order.len() || {
                let (a, b) = (order[i - 1] as usize, order[i] as usize);
                key_idx[a] != key_idx[b] || ts[b].saturating_sub(ts[a]) >= self.gap
            };
            if !boundary {
                continue;
            }
            let run = &order[run_start..i];
            run_start = i;
            let key = key_idx[run[0] as usize];
            let first = ts[run[0] as usize];
            let last = ts[run[run.len() - 1] as usize];
            let (start, end) = (first, last.saturating_add(self.gap));
            let list = self.sessions.entry(key).or_default();
            let overlapping: Vec<usize> = (0..list.len())
                .filter(|&j| list[j].start < end && start < list[j].end)
                .collect();
            if overlapping.is_empty() && end <= self.emitted_up_to {
                late_rows.extend_from_slice(run);
                continue;
            }
            // Merge the run and every session it touches into one session.
            let mut merged = match overlapping.first() {
                Some(&j) => list.remove(j),
                None => Session {
                    start,
                    end,
                    accs: Vec::new(),
                },
            };
            for &j in overlapping.iter().skip(1).rev() {
                let other = list.remove(j - 1);
                for (acc, mut o) in merged.accs.iter_mut().zip(other.accs) {
                    let st: Vec<ArrayRef> = o
                        .state()?
                        .iter()
                        .map(|v| v.to_array())
                        .collect::<Result<_>>()?;
                    acc.merge_batch(&st)?;
                }
                merged.start = merged.start.min(other.start);
                merged.end = merged.end.max(other.end);
            }
            if merged.accs.is_empty() {
                merged.accs = self
                    .plan
                    .aggregates
                    .iter()
                    .map(|a| a.function.create_accumulator())
                    .collect::<Result<_>>()?;
            }
            merged.start = merged.start.min(start);
            merged.end = merged.end.max(end);
            let rows = Subset::Indices(UInt32Array::from(run.to_vec()));
            for (k, acc) in merged.accs.iter_mut().enumerate() {
                let mut values: Vec<ArrayRef> = inputs.values[k]
                    .iter()
                    .map(|v| rows.apply(v))
                    .collect::<Result<_>>()?;
                if let Some(f) = &inputs.filters[k] {
                    let mask = rows.apply(&(Arc::new(f.clone()) as ArrayRef))?;
                    let mask = mask.as_boolean();
                    values = values
                        .iter()
                        .map(|v| Ok(filter(v.as_ref(), mask)?))
                        .collect::<Result<_>>()?;
                }
                acc.update_batch(&values)?;
            }
            let pos = list.partition_point(|s| s.start < merged.start);
            touched.retain(|(k, s)| !(*k == key && *s >= merged.start && *s < merged.end));
            touched.push((key, merged.start));
            list.insert(pos, merged);
        }

        if !late_rows.is_empty() || null_rows > 0 {
            let mut late_idx = late_rows;
            if let Some(v) = &valid {
                late_idx.extend((0..batch.num_rows() as u32).filter(|&i| v.is_null(i as usize)));
            }
            late_idx.sort_unstable();
            self.metrics.late_events += late_idx.len() as u64;
            let sel = UInt32Array::from(late_idx);
            let cols = batch
                .columns()
                .iter()
                .map(|c| Ok(take(c.as_ref(), &sel, None)?))
                .collect::<Result<Vec<_>>>()?;
            out.late.push(RecordBatch::try_new(batch.schema(), cols)?);
        }
        if self.emit == EmitMode::Changes {
            touched.sort_unstable_by_key(|&(k, s)| (s, k));
            if let Some(rows) = self.evaluate(&touched, false)? {
                self.metrics.rows_out += rows.num_rows() as u64;
                out.rows.push(rows);
            }
        }
        self.metrics.open_windows = self.open_sessions();
        Ok(())
    }
}

impl StreamOperator for SessionAggregate {
    fn on_batch(&mut self, batch: &RecordBatch, out: &mut Output) -> Result<()> {
        let plan = &self.plan;
        let eval = |batch: &RecordBatch| -> Result<Option<(RecordBatch, BatchInputs)>> {
            let batch = apply_filter(plan.filter.as_ref(), batch)?;
            if batch.num_rows() == 0 {
                return Ok(None);
            }
            let inputs = BatchInputs::evaluate(plan, &batch)?;
            Ok(Some((batch, inputs)))
        };
        let rejected_before = out.rejected.len();
        let mut evaluated = Vec::new();
        evaluate_rows(batch, out, &eval, &mut |_, e, _| {
            evaluated.extend(e);
            Ok(())
        })?;
        self.metrics.rejected_rows += (out.rejected.len() - rejected_before) as u64;
        for (rows, inputs) in evaluated {
            self.absorb(rows, inputs, out)?;
        }
        Ok(())
    }

    fn on_watermark(&mut self, watermark: i64, out: &mut Output) -> Result<()> {
        if watermark <= self.emitted_up_to {
            return Ok(());
        }
        let mut closing: Vec<(usize, i64)> = self
            .sessions
            .iter()
            .flat_map(|(&k, list)| {
                list.iter()
                    .filter(|s| s.end <= watermark)
                    .map(move |s| (k, s.start))
            })
            .collect();
        // Deterministic output order: by session start, then key.
        closing.sort_unstable_by_key(|&(k, s)| (s, k));
        if self.emit == EmitMode::OnWindowClose
            && let Some(rows) = self.evaluate(&closing, true)?
        {
            self.metrics.rows_out += rows.num_rows() as u64;
            out.rows.push(rows);
        }
        for list in self.sessions.values_mut() {
            list.retain(|s| s.end > watermark);
        }
        self.sessions.retain(|_, l| !l.is_empty());
        self.forget_closed_keys()?;
        self.emitted_up_to = watermark;
        self.metrics.open_windows = self.open_sessions();
        Ok(())
    }

    fn snapshot(&mut self) -> Result<OperatorState> {
        let schema = state_schema(&self.plan, &["start", "end"])?;
        let mut order: Vec<(usize, i64)> = self
            .sessions
            .iter()
            .flat_map(|(&k, l)| l.iter().map(move |s| (k, s.start)))
            .collect();
        order.sort_unstable();
        let batch = if order.is_empty() {
            None
        } else {
            let widths = state_widths(&self.plan.aggregates)?;
            let mut states: Vec<Vec<ScalarValue>> = vec![Vec::new(); widths.iter().sum()];
            let (mut starts, mut ends, mut key_idx) = (Vec::new(), Vec::new(), Vec::new());
            for &(k, start) in &order {
                let list = self.sessions.get_mut(&k).expect("listed");
                let s = list.iter_mut().find(|s| s.start == start).expect("listed");
                starts.push(s.start);
                ends.push(s.end);
                key_idx.push(k);
                let mut c = 0;
                for (acc, w) in s.accs.iter_mut().zip(&widths) {
                    for (j, v) in acc.state()?.into_iter().enumerate().take(*w) {
                        states[c + j].push(v);
                    }
                    c += w;
                }
            }
            let mut columns: Vec<ArrayRef> = vec![
                Arc::new(Int64Array::from(starts)),
                Arc::new(Int64Array::from(ends)),
            ];
            columns.extend(self.keys.key_columns_of(&key_idx)?);
            for st in states {
                columns.push(ScalarValue::iter_to_array(st)?);
            }
            let columns = conform(&schema, columns)?;
            Some(RecordBatch::try_new(schema, columns)?)
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
        self.sessions.clear();
        self.keys = GroupKeys::new(&self.plan.key_fields)?;
        let Some(batch) = state.batch else {
            return Ok(());
        };
        check_state_layout(&batch, &*state_schema(&self.plan, &["start", "end"])?)?;
        let nkeys = self.plan.key_fields.len();
        let widths = state_widths(&self.plan.aggregates)?;
        let starts = batch
            .column(0)
            .as_primitive_opt::<Int64Type>()
            .ok_or_else(|| bad("start"))?
            .clone();
        let ends = batch
            .column(1)
            .as_primitive_opt::<Int64Type>()
            .ok_or_else(|| bad("end"))?
            .clone();
        let mut key_idx = Vec::new();
        self.keys.intern(
            &batch.columns()[2..2 + nkeys],
            batch.num_rows(),
            &mut key_idx,
        )?;
        for (row, &key) in key_idx.iter().enumerate() {
            let mut accs = self.new_accumulators()?;
            let mut c = 2 + nkeys;
            for (acc, w) in accs.iter_mut().zip(&widths) {
                let st: Vec<ArrayRef> = batch.columns()[c..c + w]
                    .iter()
                    .map(|a| a.slice(row, 1))
                    .collect();
                acc.merge_batch(&st)?;
                c += w;
            }
            let list = self.sessions.entry(key).or_default();
            list.push(Session {
                start: starts.value(row),
                end: ends.value(row),
                accs,
            });
            list.sort_by_key(|s| s.start);
        }
        self.metrics.open_windows = self.open_sessions();
        Ok(())
    }

    fn metrics(&self) -> OperatorMetrics {
        self.metrics
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::{StreamKind, plan_sql};
    use crate::{Catalog, operator::StreamOperator};
    use arrow::array::{Float64Array, StringArray, TimestampMillisecondArray};
    use arrow::datatypes::{DataType, TimeUnit};

    /// Market ticks, one per `(symbol, ts)`.
    fn ticks(rows: &[(String, i64)]) -> RecordBatch {
        let def = Catalog::builtin().get("market_ticks").unwrap().clone();
        let columns: Vec<ArrayRef> = def
            .schema
            .fields()
            .iter()
            .map(|f| -> ArrayRef {
                match (f.name().as_str(), f.data_type()) {
                    ("symbol", _) => Arc::new(StringArray::from_iter_values(
                        rows.iter().map(|(s, _)| s.as_str()),
                    )),
                    (_, DataType::Utf8) => {
                        Arc::new(StringArray::from_iter_values(rows.iter().map(|_| "x")))
                    }
                    (_, DataType::Float64) => Arc::new(Float64Array::from(vec![1.0; rows.len()])),
                    (_, DataType::Int64) => Arc::new(Int64Array::from(vec![1; rows.len()])),
                    (_, DataType::Timestamp(TimeUnit::Millisecond, _)) => Arc::new(
                        TimestampMillisecondArray::from_iter_values(rows.iter().map(|r| r.1)),
                    ),
                    (n, t) => panic!("no test value for {n}: {t}"),
                }
            })
            .collect();
        RecordBatch::try_new(def.schema.clone(), columns).unwrap()
    }

    #[test]
    fn keys_of_closed_sessions_are_forgotten() {
        let sql = "CREATE STREAM s AS SELECT symbol, COUNT(*) AS n FROM market_ticks \
                   GROUP BY symbol, SESSION(ts, INTERVAL '1' SECOND);";
        let plan = plan_sql(sql, &Catalog::builtin())
            .unwrap()
            .streams
            .remove(0);
        let StreamKind::Windowed(w) = plan.kind else {
            panic!("windowed")
        };
        let mut op = SessionAggregate::new(w, plan.output_schema, EmitMode::OnWindowClose).unwrap();
        let mut out = Output::default();
        // 20 000 symbols, each seen once, 10 ms apart: a stream of one-off keys.
        for chunk in 0..20 {
            let rows: Vec<(String, i64)> = (0..1000)
                .map(|i| {
                    let n = chunk * 1000 + i;
                    (format!("S{n}"), n * 10)
                })
                .collect();
            op.on_batch(&ticks(&rows), &mut out).unwrap();
            let watermark = (chunk + 1) * 10_000 - 2_000;
            op.on_watermark(watermark, &mut out).unwrap();
            assert!(
                op.interned_keys() <= 2 * (MIN_KEYS_TO_COMPACT + op.open_sessions() as usize),
                "after chunk {chunk}: {} keys interned, {} sessions open",
                op.interned_keys(),
                op.open_sessions()
            );
        }
        op.on_watermark(i64::MAX, &mut out).unwrap();
        let emitted: usize = out.rows.iter().map(|b| b.num_rows()).sum();
        assert_eq!(emitted, 20_000, "every session was emitted once");
        // A forgotten key seen again at the end of time is late, not an
        // overflow.
        let mut more = Output::default();
        op.on_batch(&ticks(&[("S0".into(), i64::MAX - 10)]), &mut more)
            .unwrap();
        assert_eq!(more.late.iter().map(|b| b.num_rows()).sum::<usize>(), 1);
    }

    #[test]
    fn a_state_with_other_column_types_is_refused_not_misread() {
        let sql = "CREATE STREAM s AS SELECT symbol, SUM(price) AS p FROM market_ticks \
                   GROUP BY symbol, SESSION(ts, INTERVAL '1' SECOND);";
        let new = || {
            let plan = plan_sql(sql, &Catalog::builtin())
                .unwrap()
                .streams
                .remove(0);
            let StreamKind::Windowed(w) = plan.kind else {
                panic!("windowed")
            };
            SessionAggregate::new(w, plan.output_schema, EmitMode::OnWindowClose).unwrap()
        };
        let mut op = new();
        op.on_batch(&ticks(&[("AAPL".into(), 1_000)]), &mut Output::default())
            .unwrap();
        let state = op.snapshot().unwrap();
        let batch = state.batch.clone().unwrap();
        // The same checkpoint restores...
        new().restore(state.clone()).unwrap();
        // ...but not with the sum kept as text (another release's layout).
        let last = batch.num_columns() - 1;
        let mut columns = batch.columns().to_vec();
        columns[last] = arrow::compute::cast(&columns[last], &DataType::Utf8).unwrap();
        let mut fields: Vec<_> = batch.schema().fields().iter().cloned().collect();
        fields[last] = Arc::new(fields[last].as_ref().clone().with_data_type(DataType::Utf8));
        let retyped =
            RecordBatch::try_new(Arc::new(arrow::datatypes::Schema::new(fields)), columns).unwrap();
        let err = new()
            .restore(OperatorState {
                meta: state.meta,
                batch: Some(retyped),
            })
            .unwrap_err()
            .to_string();
        assert!(err.contains("is Utf8, the query needs Float64"), "{err}");
    }
}
