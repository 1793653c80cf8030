//! `UNION ALL`: rows of several tables or streams in one stream.
//!
//! Each branch is a filter/projection of one input; DataFusion's planner
//! coerces the branches to one schema (a `Union` over per-branch
//! projections), and each branch becomes its own list of row steps ending
//! in the stream's output columns. Aggregating or ranking inside a branch
//! is refused: aggregate in a stream of its own and union the streams.
//! The stream's watermark is the minimum of its inputs' (the pipeline's
//! job), so a later stream never sees a row behind it.

use datafusion::execution::context::SessionState;
use datafusion::logical_expr::LogicalPlan;

use super::steps::{RowStep, peel_row_steps};
use super::{StatelessPlan, StreamKind, nullable};
use crate::EngineError;
use crate::catalog::SourceDef;
use crate::sql::StreamDef;
use arrow::datatypes::SchemaRef;

/// The branches of a UNION ALL stream, with the input each reads.
pub(super) fn decompose_union(
    def: &StreamDef,
    state: &SessionState,
    plan: &LogicalPlan,
    sources: &[&SourceDef],
) -> Result<(StreamKind, SchemaRef, Vec<String>), EngineError> {
    let (above, union) = peel_row_steps(def, state, plan)?;
    let mut branches = Vec::new();
    collect_branches(def, state, union, &above, sources, &mut branches)?;
    let output = nullable(plan.schema().as_arrow());
    let (inputs, steps) = branches.into_iter().unzip();
    Ok((
        StreamKind::Stateless(StatelessPlan { branches: steps }),
        output,
        inputs,
    ))
}

/// Walks (possibly nested) `Union` nodes down to the branches' scans; each
/// branch's steps are its own followed by those of every level above it.
fn collect_branches(
    def: &StreamDef,
    state: &SessionState,
    node: &LogicalPlan,
    above: &[RowStep],
    sources: &[&SourceDef],
    out: &mut Vec<(String, Vec<RowStep>)>,
) -> Result<(), EngineError> {
    let LogicalPlan::Union(union) = node else {
        return Err(branch_error(def, node));
    };
    for input in &union.inputs {
        let (steps, below) = peel_row_steps(def, state, input)?;
        let mut steps = steps;
        steps.extend(above.iter().cloned());
        match below {
            LogicalPlan::Union(_) => collect_branches(def, state, below, &steps, sources, out)?,
            LogicalPlan::TableScan(scan) => {
                let table = scan.table_name.table();
                let source = sources
                    .iter()
                    .find(|s| s.name.eq_ignore_ascii_case(table))
                    .expect("the planner registered every input");
                out.push((source.name.clone(), steps));
            }
            other => return Err(branch_error(def, other)),
        }
    }
    Ok(())
}

fn branch_error(def: &StreamDef, node: &LogicalPlan) -> EngineError {
    EngineError::Plan {
        stream: def.name.clone(),
        line: def.line,
        message: format!(
            "a UNION ALL branch must filter or project one table or stream (this one needs a `{}` step); aggregate or rank in a stream of its own and union the streams",
            node.display()
        ),
    }
}
