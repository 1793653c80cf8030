//! Planning a `GROUP BY` without a window: an updating stream.
//!
//! DataFusion plans `[steps] → Aggregate → [WHERE] → scan`; the steps above
//! the aggregate (HAVING, the SELECT list, enclosing subqueries) run on
//! each changed group's row. The GROUP BY columns must reach the output
//! unchanged: they are the key every change is addressed by.

use std::sync::Arc;

use datafusion::execution::context::SessionState;
use datafusion::logical_expr::{Expr, LogicalPlan};

use super::steps::{peel_row_steps, traces_to};
use super::{
    StreamKind, aggregate_specs, expect_scan, nullable, peel_filter, physical, unsupported_node,
};
use crate::EngineError;
use crate::catalog::SourceDef;
use crate::sql::StreamDef;
use crate::updating::UpdatingPlan;
use arrow::datatypes::SchemaRef;

pub(super) fn decompose_updating(
    def: &StreamDef,
    state: &SessionState,
    plan: &LogicalPlan,
    source: &SourceDef,
    ttl_ms: Option<i64>,
) -> Result<(StreamKind, SchemaRef), EngineError> {
    let plan_err = |message: String| EngineError::Plan {
        stream: def.name.clone(),
        line: def.line,
        message,
    };
    let (post, below) = peel_row_steps(def, state, plan)?;
    let LogicalPlan::Aggregate(agg) = below else {
        return Err(unsupported_node(def, below));
    };
    let (filter, below_agg) = peel_filter(&agg.input);
    let scan = expect_scan(def, below_agg)?;
    let input = agg.input.schema();
    let mut keys = Vec::new();
    let mut key_fields = Vec::new();
    for (i, g) in agg.group_expr.iter().enumerate() {
        if matches!(g, Expr::GroupingSet(_)) {
            return Err(plan_err(
                "GROUPING SETS/ROLLUP/CUBE are not supported".into(),
            ));
        }
        keys.push(physical(state, g, input, def)?);
        key_fields.push(Arc::clone(agg.schema.field(i)));
    }
    let event_time = (!source.changelog).then_some(source.event_time.as_str());
    let aggregates = aggregate_specs(def, state, agg, event_time)?;
    let output = nullable(plan.schema().as_arrow());
    let mut output_keys = Vec::new();
    for (k, f) in key_fields.iter().enumerate() {
        let selected = (0..output.fields().len()).find(|&j| {
            traces_to(&post, j) == Some(k) && output.field(j).data_type() == f.data_type()
        });
        match selected {
            Some(j) => output_keys.push(j),
            None => {
                return Err(plan_err(format!(
                    "a GROUP BY without a window updates its rows by key: select the GROUP BY column `{}` unchanged",
                    f.name()
                )));
            }
        }
    }
    if ttl_ms.is_some() && source.changelog {
        return Err(plan_err(format!(
            "'state.ttl' applies to aggregates of append-only inputs; `{}` is an updating stream, whose own deletions remove keys",
            source.name
        )));
    }
    let input_keys = source.changelog.then(|| {
        source
            .key_columns
            .iter()
            .map(|k| source.schema.index_of(k).expect("key columns checked"))
            .collect()
    });
    let filter = filter
        .map(|f| physical(state, f, scan.schema(), def))
        .transpose()?;
    let plan = UpdatingPlan {
        input_schema: Arc::clone(&source.schema),
        filter,
        keys,
        key_fields,
        aggregates,
        aggregate_schema: nullable(agg.schema.as_arrow()),
        post,
        output_keys,
        input_keys,
        event_time_index: (!source.changelog).then(|| source.event_time_index()),
        ttl_ms,
    };
    Ok((StreamKind::Updating(Box::new(plan)), output))
}
