//! What every streaming operator shares: the operator interface, evaluation
//! of a batch's inputs, row subsets, and turning aggregate results into
//! output rows (HAVING, projection).

use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, RecordBatch, TimestampMillisecondArray, UInt32Array,
};
use arrow::compute::{SortColumn, cast, filter_record_batch, lexsort_to_indices, partition, take};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit, TimestampMillisecondType};
use datafusion::error::{DataFusionError, Result};
use datafusion::logical_expr::GroupsAccumulator;
use datafusion::physical_expr::aggregate::AggregateFunctionExpr;
use datafusion::physical_expr::{GroupsAccumulatorAdapter, PhysicalExpr};

use super::keys::dense_ids;
use super::plan::{AggregateSpec, GroupSlot, RankStage, RowStep, WindowedPlan, apply_steps};
use super::watermark::NO_WATERMARK;

/// What a batch or a watermark step produced.
#[derive(Default, Debug)]
pub struct Output {
    /// Result rows, in the stream's output schema. For an updating stream,
    /// each is the new row of its key (an upsert).
    pub rows: Vec<RecordBatch>,
    /// Keys an updating stream deleted: rows in the output schema with only
    /// the key columns set.
    pub deletes: Vec<RecordBatch>,
    /// Source rows that arrived after their window closed.
    pub late: Vec<RecordBatch>,
    /// Source rows an expression of the stream could not be evaluated on.
    pub rejected: Vec<RejectedRows>,
}

/// Source rows a stream's expressions failed on (division by zero, an
/// overflow, a failed CAST), with the error. They go to the dead letters; the
/// rest of their batch is processed.
#[derive(Debug)]
pub struct RejectedRows {
    pub rows: RecordBatch,
    pub error: String,
}

/// Serialized operator state, part of a checkpoint.
#[derive(Clone)]
pub struct OperatorState {
    /// Small scalar state (positions in event time, counters).
    pub meta: serde_json::Value,
    /// Bulk state (partial aggregates) as one Arrow batch.
    pub batch: Option<RecordBatch>,
}

/// Counters every operator keeps.
#[derive(Clone, Copy, Debug, Default, serde::Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct OperatorMetrics {
    pub rows_in: u64,
    pub rows_out: u64,
    pub late_events: u64,
    /// Rows an expression failed on (sent to the dead letters).
    #[serde(default)]
    pub rejected_rows: u64,
    /// Windows (or sessions) currently holding state.
    pub open_windows: u64,
}

/// A streaming operator: source rows in, result rows out.
pub trait StreamOperator: Send {
    /// Consumes one batch of source rows.
    fn on_batch(&mut self, batch: &RecordBatch, out: &mut Output) -> Result<()>;
    /// Consumes one batch of the stream's input number `input` (a UNION ALL
    /// reads several); streams with one input take it in [`on_batch`](Self::on_batch).
    fn on_input_batch(
        &mut self,
        input: usize,
        batch: &RecordBatch,
        out: &mut Output,
    ) -> Result<()> {
        debug_assert_eq!(input, 0, "a stream with one input");
        self.on_batch(batch, out)
    }
    /// Keys an updating input stream deleted (rows with its key columns
    /// set). Only streams the planner lets read an updating stream get any.
    fn on_input_deletes(
        &mut self,
        _input: usize,
        _keys: &RecordBatch,
        _out: &mut Output,
    ) -> Result<()> {
        Err(DataFusionError::Internal(
            "this stream cannot read deletions; the planner should have refused it".into(),
        ))
    }
    /// The source watermark moved to `watermark`: emit what it completes.
    fn on_watermark(&mut self, watermark: i64, out: &mut Output) -> Result<()>;
    /// The watermark of an input moved; `watermarks` has each input's.
    /// Most streams follow the slowest input (the minimum); a join needs
    /// both sides' own.
    fn on_input_watermarks(&mut self, watermarks: &[i64], out: &mut Output) -> Result<()> {
        let slowest = watermarks.iter().copied().min().unwrap_or(NO_WATERMARK);
        self.on_watermark(slowest, out)
    }
    /// The watermark of what the operator emitted, when it trails the input
    /// watermark: every row it emits from now on has an event time at or
    /// after it. `None`: rows go out as the input watermark passes them
    /// (row-by-row, windows), so the input watermark is the output's.
    fn output_watermark(&self) -> Option<i64> {
        None
    }
    /// A copy of the state; the operator carries on unchanged.
    fn snapshot(&mut self) -> Result<OperatorState>;
    /// Replaces the state with a snapshot's.
    fn restore(&mut self, state: OperatorState) -> Result<()>;
    fn metrics(&self) -> OperatorMetrics;
}

/// One fresh (per-group) accumulator per aggregate, in order.
pub fn new_accumulators(
    aggregates: &[AggregateSpec],
) -> Result<Vec<Box<dyn datafusion::logical_expr::Accumulator>>> {
    aggregates
        .iter()
        .map(|a| a.function.create_accumulator())
        .collect()
}

/// Creates the vectorised accumulator of an aggregate, falling back to
/// DataFusion's per-group adapter where the function has no groups version
/// (e.g. COUNT(DISTINCT)).
pub fn new_groups_accumulator(
    f: &Arc<AggregateFunctionExpr>,
) -> Result<Box<dyn GroupsAccumulator>> {
    if f.groups_accumulator_supported() {
        f.create_groups_accumulator()
    } else {
        let f = Arc::clone(f);
        Ok(Box::new(GroupsAccumulatorAdapter::new(move || {
            f.create_accumulator()
        })))
    }
}

pub fn evaluate(e: &Arc<dyn PhysicalExpr>, batch: &RecordBatch) -> Result<ArrayRef> {
    e.evaluate(batch)?.into_array(batch.num_rows())
}

pub(crate) fn evaluate_mask(
    e: &Arc<dyn PhysicalExpr>,
    batch: &RecordBatch,
) -> Result<BooleanArray> {
    let a = evaluate(e, batch)?;
    a.as_boolean_opt().cloned().ok_or_else(|| {
        DataFusionError::Execution(format!("filter is {}, not boolean", a.data_type()))
    })
}

/// Runs the pure evaluation `eval` (WHERE, projections, aggregate inputs)
/// over `batch` and hands each evaluated run of rows to `apply`. Where `eval`
/// fails, the batch is bisected until the rows it fails on are isolated: each
/// goes to `out.rejected` with its error, and every other row is still
/// applied, in order. Failing rows cost O(log n) evaluations each; a batch
/// without errors is evaluated once.
///
/// `eval` must not change state: it may run several times on the same rows.
pub fn evaluate_rows<T>(
    batch: &RecordBatch,
    out: &mut Output,
    eval: &impl Fn(&RecordBatch) -> Result<T>,
    apply: &mut impl FnMut(&RecordBatch, T, &mut Output) -> Result<()>,
) -> Result<()> {
    match eval(batch) {
        Ok(v) => apply(batch, v, out),
        Err(e) if batch.num_rows() <= 1 => {
            if batch.num_rows() == 1 {
                out.rejected.push(RejectedRows {
                    rows: batch.clone(),
                    error: e.to_string(),
                });
            }
            Ok(())
        }
        Err(_) => {
            let half = batch.num_rows() / 2;
            evaluate_rows(&batch.slice(0, half), out, eval, apply)?;
            evaluate_rows(
                &batch.slice(half, batch.num_rows() - half),
                out,
                eval,
                apply,
            )
        }
    }
}

/// Runs row `steps` (WHERE, the SELECT list) over `rows` into `schema`
/// and emits what they keep; rows they fail on go to the dead letters.
/// Counts both in `metrics`.
pub fn emit_through_steps(
    steps: &[RowStep],
    schema: &SchemaRef,
    rows: &RecordBatch,
    out: &mut Output,
    metrics: &mut OperatorMetrics,
) -> Result<()> {
    if rows.num_rows() == 0 {
        return Ok(());
    }
    let eval = |batch: &RecordBatch| apply_steps(steps, batch, schema);
    let mut emitted = 0;
    let mut apply = |_: &RecordBatch, rows: RecordBatch, out: &mut Output| {
        if rows.num_rows() > 0 {
            emitted += rows.num_rows() as u64;
            out.rows.push(rows);
        }
        Ok(())
    };
    let before = out.rejected.len();
    evaluate_rows(rows, out, &eval, &mut apply)?;
    metrics.rows_out += emitted;
    metrics.rejected_rows += (out.rejected.len() - before) as u64;
    Ok(())
}

/// Applies a WHERE clause.
pub fn apply_filter(
    filter: Option<&Arc<dyn PhysicalExpr>>,
    batch: &RecordBatch,
) -> Result<RecordBatch> {
    match filter {
        None => Ok(batch.clone()),
        Some(f) => Ok(filter_record_batch(batch, &evaluate_mask(f, batch)?)?),
    }
}

/// Event times in milliseconds; `None` marks a null event time.
pub fn event_times(batch: &RecordBatch, index: usize) -> Result<(Vec<i64>, usize)> {
    let col = batch.column(index);
    let ms = match col.data_type() {
        DataType::Timestamp(TimeUnit::Millisecond, _) => Arc::clone(col),
        _ => cast(col, &DataType::Timestamp(TimeUnit::Millisecond, None))?,
    };
    let ms = ms.as_primitive::<TimestampMillisecondType>();
    let nulls = ms.null_count();
    Ok((ms.values().to_vec(), nulls))
}

/// Inputs of a windowed aggregation evaluated once per batch.
pub struct BatchInputs {
    pub keys: Vec<ArrayRef>,
    pub values: Vec<Vec<ArrayRef>>,
    pub filters: Vec<Option<BooleanArray>>,
}

impl BatchInputs {
    pub fn evaluate(plan: &WindowedPlan, batch: &RecordBatch) -> Result<Self> {
        Self::of(&plan.keys, &plan.aggregates, batch)
    }

    /// GROUP BY `keys` and the arguments and FILTERs of `aggregates` over
    /// `batch` (windowed and updating aggregations alike).
    pub fn of(
        keys: &[Arc<dyn PhysicalExpr>],
        aggregates: &[AggregateSpec],
        batch: &RecordBatch,
    ) -> Result<Self> {
        let keys = keys
            .iter()
            .map(|k| evaluate(k, batch))
            .collect::<Result<_>>()?;
        let values = aggregates
            .iter()
            .map(|a| {
                a.inputs
                    .iter()
                    .map(|e| evaluate(e, batch))
                    .collect::<Result<Vec<_>>>()
            })
            .collect::<Result<_>>()?;
        let filters = aggregates
            .iter()
            .map(|a| {
                a.filter
                    .as_ref()
                    .map(|f| evaluate_mask(f, batch))
                    .transpose()
            })
            .collect::<Result<_>>()?;
        Ok(Self {
            keys,
            values,
            filters,
        })
    }

    /// The same inputs restricted to a subset of rows.
    pub fn select(&self, subset: &Subset) -> Result<Self> {
        let sel = |a: &ArrayRef| subset.apply(a);
        Ok(Self {
            keys: self.keys.iter().map(sel).collect::<Result<_>>()?,
            values: self
                .values
                .iter()
                .map(|v| v.iter().map(sel).collect::<Result<Vec<_>>>())
                .collect::<Result<_>>()?,
            filters: self
                .filters
                .iter()
                .map(|f| {
                    f.as_ref()
                        .map(|f| {
                            Ok(subset
                                .apply(&(Arc::new(f.clone()) as ArrayRef))?
                                .as_boolean()
                                .clone())
                        })
                        .transpose()
                })
                .collect::<Result<_>>()?,
        })
    }
}

/// A subset of a batch's rows: a contiguous range (zero-copy) or indices.
pub enum Subset {
    Range(usize, usize),
    Indices(UInt32Array),
}

impl Subset {
    pub fn apply(&self, a: &ArrayRef) -> Result<ArrayRef> {
        match self {
            Subset::Range(off, len) => Ok(a.slice(*off, *len)),
            Subset::Indices(idx) => Ok(take(a.as_ref(), idx, None)?),
        }
    }

    pub fn len(&self) -> usize {
        match self {
            Subset::Range(_, len) => *len,
            Subset::Indices(idx) => idx.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Splits rows by a per-row slice id (pane start), keeping zero-copy ranges
/// where a slice's rows are contiguous, as they are for time-ordered input.
pub fn split_by(ids: &[i64]) -> Vec<(i64, Subset)> {
    if ids.is_empty() {
        return vec![];
    }
    let mut runs: std::collections::BTreeMap<i64, Vec<(usize, usize)>> = Default::default();
    let mut start = 0;
    for i in 1..=ids.len() {
        if i == ids.len() || ids[i] != ids[start] {
            runs.entry(ids[start]).or_default().push((start, i - start));
            start = i;
        }
    }
    runs.into_iter()
        .map(|(id, r)| {
            let subset = if r.len() == 1 {
                Subset::Range(r[0].0, r[0].1)
            } else {
                let idx: Vec<u32> = r
                    .iter()
                    .flat_map(|&(s, l)| (s as u32)..((s + l) as u32))
                    .collect();
                Subset::Indices(UInt32Array::from(idx))
            };
            (id, subset)
        })
        .collect()
}

/// Builds output rows from group keys, window bounds and aggregate results,
/// then applies HAVING and the projection.
pub fn finish_rows(
    plan: &WindowedPlan,
    output_schema: &SchemaRef,
    keys: &[ArrayRef],
    starts: Vec<i64>,
    ends: Vec<i64>,
    aggregates: Vec<ArrayRef>,
) -> Result<Option<RecordBatch>> {
    if starts.is_empty() {
        return Ok(None);
    }
    let start: ArrayRef = Arc::new(TimestampMillisecondArray::from(starts));
    let end: ArrayRef = Arc::new(TimestampMillisecondArray::from(ends));
    let mut columns: Vec<ArrayRef> = plan
        .group_layout
        .iter()
        .map(|slot| match slot {
            GroupSlot::Key(i) => Arc::clone(&keys[*i]),
            GroupSlot::WindowStart => Arc::clone(&start),
            GroupSlot::WindowEnd => Arc::clone(&end),
        })
        .collect();
    columns.extend(aggregates);
    let columns = conform(&plan.aggregate_schema, columns)?;
    let mut batch = RecordBatch::try_new(Arc::clone(&plan.aggregate_schema), columns)?;
    if let Some(h) = &plan.having {
        batch = filter_record_batch(&batch, &evaluate_mask(h, &batch)?)?;
        if batch.num_rows() == 0 {
            return Ok(None);
        }
    }
    if let Some(rank) = &plan.rank {
        let rows = apply_steps(&rank.pre, &batch, &rank.ranked_schema)?;
        if rows.num_rows() == 0 {
            return Ok(None);
        }
        let ranked = rank_rows(rank, &rows)?;
        let rows = apply_steps(&rank.post, &ranked, output_schema)?;
        return Ok((rows.num_rows() > 0).then_some(rows));
    }
    let projected = plan
        .projection
        .iter()
        .map(|e| evaluate(e, &batch))
        .collect::<Result<Vec<_>>>()?;
    let projected = conform(output_schema, projected)?;
    Ok(Some(RecordBatch::try_new(
        Arc::clone(output_schema),
        projected,
    )?))
}

/// Ranks one window's aggregate rows: sorted by the ranking's partition
/// and ORDER BY, each function evaluated per partition, its values
/// appended as columns.
fn rank_rows(rank: &RankStage, batch: &RecordBatch) -> Result<RecordBatch> {
    let first = &rank.functions[0];
    let ids = dense_ids(first.partition_by(), batch)?;
    let mut sort = vec![SortColumn {
        values: Arc::clone(&ids),
        options: None,
    }];
    for o in first.order_by() {
        sort.push(o.evaluate_to_sort_column(batch)?);
    }
    let order = lexsort_to_indices(&sort, None)?;
    let columns = batch
        .columns()
        .iter()
        .map(|c| take(c.as_ref(), &order, None))
        .collect::<std::result::Result<Vec<_>, _>>()?;
    let sorted = RecordBatch::try_new(batch.schema(), columns)?;
    let ranges = partition(&[take(ids.as_ref(), &order, None)?])?.ranges();
    let mut columns = sorted.columns().to_vec();
    let mut fields: Vec<Field> = sorted
        .schema()
        .fields()
        .iter()
        .map(|f| f.as_ref().clone())
        .collect();
    for (i, f) in rank.functions.iter().enumerate() {
        let pieces = ranges
            .iter()
            .map(|r| f.evaluate(&sorted.slice(r.start, r.len())))
            .collect::<Result<Vec<_>>>()?;
        let refs: Vec<&dyn Array> = pieces.iter().map(|a| a.as_ref()).collect();
        let values = arrow::compute::concat(&refs)?;
        fields.push(Field::new(
            format!("rank{i}"),
            values.data_type().clone(),
            true,
        ));
        columns.push(values);
    }
    Ok(RecordBatch::try_new(
        Arc::new(Schema::new(fields)),
        columns,
    )?)
}

/// Casts columns whose type differs only in representation from the schema
/// (e.g. a timestamp time zone) so the batch can be built.
pub fn conform(schema: &Schema, columns: Vec<ArrayRef>) -> Result<Vec<ArrayRef>> {
    columns
        .into_iter()
        .zip(schema.fields())
        .map(|(c, f)| {
            if c.data_type() == f.data_type() {
                Ok(c)
            } else {
                Ok(cast(&c, f.data_type())?)
            }
        })
        .collect()
}

/// Schema of an operator's state batch: slice bounds, keys, accumulator states.
pub fn state_schema(plan: &WindowedPlan, bounds: &[&str]) -> Result<SchemaRef> {
    let mut fields: Vec<Field> = bounds
        .iter()
        .map(|b| Field::new(*b, DataType::Int64, false))
        .collect();
    for (i, k) in plan.key_fields.iter().enumerate() {
        fields.push(Field::new(format!("key{i}"), k.data_type().clone(), true));
    }
    for (i, a) in plan.aggregates.iter().enumerate() {
        for f in a.function.state_fields()? {
            fields.push(Field::new(
                format!("agg{i}.{}", f.name()),
                f.data_type().clone(),
                true,
            ));
        }
    }
    Ok(Arc::new(Schema::new(fields)))
}

/// Checks a restored state batch against the schema the query needs now:
/// same number of columns, same types. A checkpoint written by a release
/// whose accumulators kept other types (or by another query that slipped
/// past the fingerprint) is refused with the column that differs, never
/// read with the wrong layout.
pub fn check_state_layout(batch: &RecordBatch, expected: &Schema) -> Result<()> {
    let bad =
        |what: String| DataFusionError::Execution(format!("checkpoint state is malformed: {what}"));
    if batch.num_columns() != expected.fields().len() {
        return Err(bad(format!(
            "{} state columns, the query needs {}",
            batch.num_columns(),
            expected.fields().len()
        )));
    }
    for (column, field) in batch.columns().iter().zip(expected.fields()) {
        if column.data_type() != field.data_type() {
            return Err(bad(format!(
                "state column {} is {}, the query needs {}",
                field.name(),
                column.data_type(),
                field.data_type()
            )));
        }
    }
    Ok(())
}

/// Number of state columns of each aggregate.
pub fn state_widths(aggregates: &[AggregateSpec]) -> Result<Vec<usize>> {
    aggregates
        .iter()
        .map(|a| Ok(a.function.state_fields()?.len()))
        .collect()
}
