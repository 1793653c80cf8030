//! Row-wise steps: the projections, filters and subquery/CTE aliases that
//! DataFusion plans around a stream's core (the source scan, or the OVER
//! window), kept in the order they apply.
//!
//! `SELECT … FROM (SELECT …, LAG(x) OVER w AS prev FROM t) WHERE x > prev`
//! and its `WITH` form plan as Projection → Filter → SubqueryAlias →
//! Projection → Window → TableScan: everything above the Window is a list
//! of steps applied to each emitted row batch.

use std::sync::Arc;

use arrow::array::{AsArray, RecordBatch, UInt32Array};
use arrow::compute::{filter, filter_record_batch};
use arrow::datatypes::{Field, Schema, SchemaRef};
use datafusion::error::Result;
use datafusion::execution::context::SessionState;
use datafusion::logical_expr::LogicalPlan;
use datafusion::physical_expr::PhysicalExpr;

use super::physical;
use crate::EngineError;
use crate::operator::{apply_filter, conform, evaluate, evaluate_mask};
use crate::sql::StreamDef;

/// One row-wise step.
#[derive(Clone, Debug)]
pub enum RowStep {
    /// Keeps the rows the predicate is true for.
    Filter(Arc<dyn PhysicalExpr>),
    /// Computes new columns from the previous step's.
    Project(Vec<Arc<dyn PhysicalExpr>>),
}

/// Peels projections, filters and aliases off the top of `plan`. Returns
/// the steps in the order they apply (innermost first) and the first node
/// that is not one of them.
pub(super) fn peel_row_steps<'a>(
    def: &StreamDef,
    state: &SessionState,
    plan: &'a LogicalPlan,
) -> Result<(Vec<RowStep>, &'a LogicalPlan), EngineError> {
    let mut steps = Vec::new();
    let mut node = plan;
    loop {
        node = match node {
            LogicalPlan::Projection(p) => {
                let input = p.input.schema();
                let exprs = p
                    .expr
                    .iter()
                    .map(|e| physical(state, e, input, def))
                    .collect::<Result<Vec<_>, _>>()?;
                steps.push(RowStep::Project(exprs));
                &p.input
            }
            LogicalPlan::Filter(f) => {
                steps.push(RowStep::Filter(physical(
                    state,
                    &f.predicate,
                    f.input.schema(),
                    def,
                )?));
                &f.input
            }
            LogicalPlan::SubqueryAlias(a) => &a.input,
            _ => break,
        };
    }
    steps.reverse();
    Ok((steps, node))
}

/// Applies `steps` to `batch`; the result has `output`'s columns.
pub fn apply_steps(
    steps: &[RowStep],
    batch: &RecordBatch,
    output: &SchemaRef,
) -> Result<RecordBatch> {
    let mut rows = batch.clone();
    for step in steps {
        rows = match step {
            RowStep::Filter(predicate) => apply_filter(Some(predicate), &rows)?,
            RowStep::Project(exprs) => project(exprs, &rows)?,
        };
    }
    let columns = conform(output, rows.columns().to_vec())?;
    Ok(RecordBatch::try_new(Arc::clone(output), columns)?)
}

/// [`apply_steps`], also giving for each result row its index in `batch`
/// (a regular join tells a row its side's subquery filtered out from one
/// it kept).
pub fn apply_steps_tracked(
    steps: &[RowStep],
    batch: &RecordBatch,
    output: &SchemaRef,
) -> Result<(RecordBatch, UInt32Array)> {
    let mut kept = UInt32Array::from_iter_values(0..batch.num_rows() as u32);
    let mut rows = batch.clone();
    let mut done = 0;
    for (i, step) in steps.iter().enumerate() {
        if let RowStep::Filter(predicate) = step {
            rows = apply_steps_raw(&steps[done..i], &rows)?;
            let mask = evaluate_mask(predicate, &rows)?;
            rows = filter_record_batch(&rows, &mask)?;
            kept = filter(&kept, &mask)?.as_primitive().clone();
            done = i + 1;
        }
    }
    let rows = apply_steps(&steps[done..], &rows, output)?;
    Ok((rows, kept))
}

/// The steps' projections (no filters among them), columns named by position.
fn apply_steps_raw(steps: &[RowStep], batch: &RecordBatch) -> Result<RecordBatch> {
    let mut rows = batch.clone();
    for step in steps {
        if let RowStep::Project(exprs) = step {
            rows = project(exprs, &rows)?;
        }
    }
    Ok(rows)
}

fn project(exprs: &[Arc<dyn PhysicalExpr>], rows: &RecordBatch) -> Result<RecordBatch> {
    let columns = exprs
        .iter()
        .map(|e| evaluate(e, rows))
        .collect::<Result<Vec<_>>>()?;
    // Steps address columns by position; names only matter at the end.
    let fields: Vec<Field> = columns
        .iter()
        .enumerate()
        .map(|(i, c)| Field::new(format!("c{i}"), c.data_type().clone(), true))
        .collect();
    Ok(RecordBatch::try_new_with_options(
        Arc::new(Schema::new(fields)),
        columns,
        &arrow::array::RecordBatchOptions::new().with_row_count(Some(rows.num_rows())),
    )?)
}

/// The input column that output column `index` of `steps` is an unchanged
/// copy of (through projections of plain columns and filters), if any.
pub(crate) fn traces_to(steps: &[RowStep], mut index: usize) -> Option<usize> {
    use datafusion::physical_expr::expressions::Column;
    for step in steps.iter().rev() {
        if let RowStep::Project(exprs) = step {
            index = exprs.get(index)?.downcast_ref::<Column>()?.index();
        }
    }
    Some(index)
}
