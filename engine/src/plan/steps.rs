//! Row-wise steps: the projections, filters and subquery/CTE aliases that
//! DataFusion plans around a stream's core (the source scan, or the OVER
//! window), kept in the order they apply.
//!
//! `SELECT … FROM (SELECT …, LAG(x) OVER w AS prev FROM t) WHERE x > prev`
//! and its `WITH` form plan as Projection → Filter → SubqueryAlias →
//! Projection → Window → TableScan: everything above the Window is a list
//! of steps applied to each emitted row batch.

use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::{Field, Schema, SchemaRef};
use datafusion::error::Result;
use datafusion::execution::context::SessionState;
use datafusion::logical_expr::LogicalPlan;
use datafusion::physical_expr::PhysicalExpr;

use super::physical;
use crate::EngineError;
use crate::operator::{apply_filter, conform, evaluate};
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
            RowStep::Project(exprs) => {
                let columns = exprs
                    .iter()
                    .map(|e| evaluate(e, &rows))
                    .collect::<Result<Vec<_>>>()?;
                // Steps address columns by position; names only matter at
                // the end.
                let fields: Vec<Field> = columns
                    .iter()
                    .enumerate()
                    .map(|(i, c)| Field::new(format!("c{i}"), c.data_type().clone(), true))
                    .collect();
                RecordBatch::try_new(Arc::new(Schema::new(fields)), columns)?
            }
        };
    }
    let columns = conform(output, rows.columns().to_vec())?;
    Ok(RecordBatch::try_new(Arc::clone(output), columns)?)
}

/// The input column that output column `index` of `steps` is an unchanged
/// copy of (through projections of plain columns and filters), if any.
pub(super) fn traces_to(steps: &[RowStep], mut index: usize) -> Option<usize> {
    use datafusion::physical_expr::expressions::Column;
    for step in steps.iter().rev() {
        if let RowStep::Project(exprs) = step {
            index = exprs.get(index)?.downcast_ref::<Column>()?.index();
        }
    }
    Some(index)
}
