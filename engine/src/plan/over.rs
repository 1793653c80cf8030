//! Planning OVER streams:
//! `SELECT …, f(…) OVER (PARTITION BY … ORDER BY ts [frame]) FROM t [WHERE …]`.
//!
//! DataFusion plans the query (Projection → Window → [Filter] → TableScan)
//! and creates the window expressions; this module checks what a stream
//! can compute with finite state (ORDER BY the event time, frames bounded
//! before the current row) and works out how far back (rows, event time)
//! and forward (rows) the frames reach, which is what the operator keeps.

use std::sync::Arc;

use arrow::datatypes::SchemaRef;
use datafusion::common::ScalarValue;
use datafusion::execution::context::SessionState;
use datafusion::logical_expr::expr::WindowFunction;
use datafusion::logical_expr::physical_planning_context::PhysicalPlanningContext;
use datafusion::logical_expr::{
    Expr, LogicalPlan, WindowFrameBound, WindowFrameUnits, WindowFunctionDefinition,
};
use datafusion::physical_planner::create_window_expr;

use super::{
    StreamKind, clean_df_error, expect_scan, nullable, peel_filter, physical, unsupported_node,
};
use crate::EngineError;
use crate::catalog::SourceDef;
use crate::over::{DirectFunction, OverPlan};
use crate::sql::StreamDef;

/// How far one window function reaches around the current row.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Reach {
    preceding_rows: usize,
    preceding_ms: i64,
    following_rows: usize,
}

impl Reach {
    fn max(self, o: Reach) -> Reach {
        Reach {
            preceding_rows: self.preceding_rows.max(o.preceding_rows),
            preceding_ms: self.preceding_ms.max(o.preceding_ms),
            following_rows: self.following_rows.max(o.following_rows),
        }
    }
}

/// Largest row offset a frame or LAG/LEAD may use (state is kept per
/// partition for that many rows).
const MAX_ROWS_REACH: u64 = 100_000;

pub(super) fn decompose_over(
    def: &StreamDef,
    state: &SessionState,
    plan: &LogicalPlan,
    source: &SourceDef,
) -> Result<(StreamKind, SchemaRef), EngineError> {
    let plan_err = |message: String| EngineError::Plan {
        stream: def.name.clone(),
        line: def.line,
        message,
    };
    // Above the window: projections and filters, also those of subqueries
    // and CTEs (`… WHERE volume > 3 * avg_volume`).
    let (post, below) = super::steps::peel_row_steps(def, state, plan)?;
    let LogicalPlan::Window(window) = below else {
        return Err(unsupported_node(def, below));
    };
    if matches!(window.input.as_ref(), LogicalPlan::Window(_)) {
        return Err(plan_err(
            "all OVER clauses of a stream must have the same PARTITION BY and ORDER BY".into(),
        ));
    }
    let (filter, below_window) = peel_filter(&window.input);
    let scan = expect_scan(def, below_window)?;
    let input_schema = window.input.schema();

    let mut partition_by: Option<&Vec<Expr>> = None;
    let mut reach = Reach::default();
    let mut functions = Vec::new();
    let mut direct = Vec::new();
    for e in &window.window_expr {
        let Expr::WindowFunction(wf) = unaliased(e) else {
            return Err(plan_err(format!("unexpected window expression {e}")));
        };
        check_order(def, wf, source)?;
        match partition_by {
            None => partition_by = Some(&wf.params.partition_by),
            Some(p) if *p == wf.params.partition_by => {}
            Some(_) => {
                return Err(plan_err(
                    "all OVER clauses of a stream must have the same PARTITION BY".into(),
                ));
            }
        }
        // Refusals before DataFusion plans the function (its errors say
        // less), except for frames a running aggregate may take.
        let bounded_reach = function_reach(wf);
        if let Err(e) = &bounded_reach
            && !(matches!(wf.fun, WindowFunctionDefinition::AggregateUDF(_))
                && runs_from_start(&wf.params.window_frame))
        {
            return Err(plan_err(e.clone()));
        }
        let planning = PhysicalPlanningContext::default();
        let function = create_window_expr(
            &super::simplified(e, input_schema)
                .map_err(|err| plan_err(clean_df_error(&err.to_string())))?,
            input_schema,
            state.execution_props(),
            &planning,
        )
        .map_err(|err| plan_err(clean_df_error(&err.to_string())))?;
        let direct_form = direct_function(wf, &function, input_schema.as_arrow());
        reach = reach.max(match &direct_form {
            // The partition's last emitted row, with its running state.
            Some(DirectFunction::Running(_)) => Reach {
                preceding_rows: 1,
                ..Reach::default()
            },
            _ => bounded_reach.map_err(&plan_err)?,
        });
        direct.push(direct_form);
        functions.push(function);
    }
    let partition_by = partition_by
        .map(|p| {
            p.iter()
                .map(|e| physical(state, e, input_schema, def))
                .collect::<Result<Vec<_>, _>>()
        })
        .transpose()?
        .unwrap_or_default();
    let filter = filter
        .map(|f| physical(state, f, scan.schema(), def))
        .transpose()?;
    let window_schema = window.schema.as_ref();
    let output = nullable(plan.schema().as_arrow());
    let plan = OverPlan {
        event_time_index: source.event_time_index(),
        filter,
        partition_by,
        functions,
        direct,
        preceding_rows: reach.preceding_rows,
        preceding_ms: reach.preceding_ms,
        following_rows: reach.following_rows,
        post,
        window_schema: nullable(window_schema.as_arrow()),
        ttl_ms: def.state_ttl_ms,
    };
    Ok((StreamKind::Over(Box::new(plan)), output))
}

/// The direct form of a window function, where it has one (see
/// `over::DirectFunction`): `LAG` with a literal offset and default, and
/// aggregates over a short `ROWS` frame ending at or before the current
/// row or a frame from `UNBOUNDED PRECEDING` to it (a running aggregate),
/// over a Float64 or Int64 argument. `None`: DataFusion evaluates it.
fn direct_function(
    wf: &WindowFunction,
    function: &Arc<dyn datafusion::physical_expr::window::WindowExpr>,
    input: &arrow::datatypes::Schema,
) -> Option<DirectFunction> {
    use crate::over::{DIRECT_FRAME_ROWS, RowsAggregate, RowsFunction, RunningAggregate};
    if wf.fun.name().eq_ignore_ascii_case("lag") {
        let offset = match wf.params.args.get(1) {
            None => 1,
            Some(Expr::Literal(v, _)) => usize::try_from(scalar_i64(v)?).ok()?,
            Some(_) => return None,
        };
        let default = match wf.params.args.get(2) {
            None => None,
            Some(Expr::Literal(v, _)) => Some(v.clone()),
            Some(_) => return None,
        };
        if wf.params.null_treatment.is_some() || u32::try_from(offset).is_err() {
            return None;
        }
        let argument = function.expressions().into_iter().next()?;
        return Some(DirectFunction::Lag {
            argument,
            offset,
            default,
        });
    }
    let WindowFunctionDefinition::AggregateUDF(udf) = &wf.fun else {
        return None;
    };
    let kind = match udf.name().to_ascii_lowercase().as_str() {
        "sum" => RowsFunction::Sum,
        "count" => RowsFunction::Count,
        "avg" => RowsFunction::Avg,
        "min" => RowsFunction::Min,
        "max" => RowsFunction::Max,
        _ => return None,
    };
    let p = &wf.params;
    if p.distinct || p.filter.is_some() || p.null_treatment.is_some() || p.args.len() != 1 {
        return None;
    }
    let frame = &p.window_frame;
    if runs_from_start(frame) {
        let argument = function.expressions().into_iter().next()?;
        let argument_type = argument.data_type(input).ok()?;
        let output = function.field().ok()?.data_type().clone();
        let peers = frame.units == WindowFrameUnits::Range;
        return RunningAggregate::new(kind, argument, argument_type, peers, output)
            .map(DirectFunction::Running);
    }
    if frame.units != WindowFrameUnits::Rows {
        return None;
    }
    let bound = |b: &WindowFrameBound| -> Option<usize> {
        match b {
            WindowFrameBound::CurrentRow => Some(0),
            WindowFrameBound::Preceding(v) if !v.is_null() => {
                scalar_i64(v).and_then(|n| usize::try_from(n).ok())
            }
            _ => None,
        }
    };
    let (start, end) = (bound(&frame.start_bound)?, bound(&frame.end_bound)?);
    if start > DIRECT_FRAME_ROWS || end > start {
        return None;
    }
    let argument = function.expressions().into_iter().next()?;
    let output = function.field().ok()?.data_type().clone();
    RowsAggregate::new(kind, argument, start, end, output).map(DirectFunction::Rows)
}

/// A `ROWS` or `RANGE` frame from `UNBOUNDED PRECEDING` to the current row:
/// the frame of a running aggregate.
fn runs_from_start(frame: &datafusion::logical_expr::WindowFrame) -> bool {
    let from_start = matches!(&frame.start_bound, WindowFrameBound::Preceding(v) if v.is_null());
    from_start
        && frame.end_bound == WindowFrameBound::CurrentRow
        && frame.units != WindowFrameUnits::Groups
}

fn unaliased(e: &Expr) -> &Expr {
    match e {
        Expr::Alias(a) => unaliased(&a.expr),
        other => other,
    }
}

/// OVER rows are ordered by the event time, ascending: the only order in
/// which a row's frame is ever complete.
fn check_order(
    def: &StreamDef,
    wf: &WindowFunction,
    source: &SourceDef,
) -> Result<(), EngineError> {
    let order = &wf.params.order_by;
    let by_event_time = order.len() == 1
        && order[0].asc
        && matches!(&order[0].expr, Expr::Column(c) if c.name.eq_ignore_ascii_case(&source.event_time));
    if by_event_time {
        return Ok(());
    }
    Err(EngineError::Plan {
        stream: def.name.clone(),
        line: def.line,
        message: format!(
            "{}: OVER needs `ORDER BY {}` (ascending event time) and nothing else in its ORDER BY",
            wf.fun.name().to_ascii_uppercase(),
            source.event_time
        ),
    })
}

/// How far `wf` reaches, or why a stream cannot compute it.
fn function_reach(wf: &WindowFunction) -> Result<Reach, String> {
    let name = wf.fun.name().to_ascii_lowercase();
    let upper = name.to_ascii_uppercase();
    match name.as_str() {
        "lag" | "lead" => {
            let offset = match wf.params.args.get(1) {
                None => 1,
                Some(Expr::Literal(v, _)) => scalar_i64(v)
                    .ok_or_else(|| format!("{upper}: the offset must be an integer literal"))?,
                Some(_) => return Err(format!("{upper}: the offset must be an integer literal")),
            };
            let back = if name == "lag" { offset } else { -offset };
            let rows = back.unsigned_abs();
            if rows > MAX_ROWS_REACH {
                return Err(format!("{upper}: offsets are at most {MAX_ROWS_REACH}"));
            }
            Ok(if back >= 0 {
                Reach {
                    preceding_rows: rows as usize,
                    ..Reach::default()
                }
            } else {
                Reach {
                    following_rows: rows as usize,
                    ..Reach::default()
                }
            })
        }
        "row_number" | "rank" | "dense_rank" | "percent_rank" | "cume_dist" | "ntile" => {
            Err(format!(
                "{upper} over an unbounded stream never ends; rank the rows of a window (top-N), which is not supported yet"
            ))
        }
        _ => frame_reach(wf, &upper),
    }
}

fn frame_reach(wf: &WindowFunction, upper: &str) -> Result<Reach, String> {
    let frame = &wf.params.window_frame;
    let hint = "use ROWS BETWEEN n PRECEDING AND CURRENT ROW or RANGE BETWEEN INTERVAL 'd' SECOND PRECEDING AND CURRENT ROW";
    let mut reach = Reach::default();
    match frame.units {
        WindowFrameUnits::Rows => {
            match &frame.start_bound {
                WindowFrameBound::Preceding(v) => {
                    reach.preceding_rows = rows_of(v).ok_or_else(|| {
                        format!(
                            "{upper}: a frame from UNBOUNDED PRECEDING grows without end (only SUM, COUNT, AVG, MIN and MAX of a number run from it to the current row); {hint}"
                        )
                    })?;
                }
                WindowFrameBound::CurrentRow => {}
                WindowFrameBound::Following(v) => {
                    reach.following_rows = rows_of(v).ok_or("frame starts after the partition")?;
                }
            }
            match &frame.end_bound {
                WindowFrameBound::Preceding(_) | WindowFrameBound::CurrentRow => {}
                WindowFrameBound::Following(v) => {
                    let rows = rows_of(v).ok_or_else(|| {
                        format!("{upper}: a frame up to UNBOUNDED FOLLOWING waits for the end of the stream; {hint}")
                    })?;
                    reach.following_rows = reach.following_rows.max(rows);
                }
            }
        }
        WindowFrameUnits::Range => {
            match &frame.start_bound {
                WindowFrameBound::Preceding(v) => {
                    reach.preceding_ms = interval_ms(v).ok_or_else(|| {
                        if v.is_null() {
                            format!("{upper}: a frame from UNBOUNDED PRECEDING grows without end (it is the default frame with ORDER BY; only SUM, COUNT, AVG, MIN and MAX of a number run from it to the current row); {hint}")
                        } else {
                            format!("{upper}: RANGE frames over the event time take an INTERVAL of days or less, not {v}")
                        }
                    })?;
                }
                WindowFrameBound::CurrentRow => {}
                WindowFrameBound::Following(_) => {
                    return Err(format!(
                        "{upper}: RANGE … FOLLOWING is not supported; {hint}"
                    ));
                }
            }
            if matches!(frame.end_bound, WindowFrameBound::Following(_)) {
                return Err(format!(
                    "{upper}: RANGE … FOLLOWING is not supported; {hint}"
                ));
            }
        }
        WindowFrameUnits::Groups => {
            return Err(format!("{upper}: GROUPS frames are not supported; {hint}"));
        }
    }
    if reach.preceding_rows as u64 > MAX_ROWS_REACH || reach.following_rows as u64 > MAX_ROWS_REACH
    {
        return Err(format!(
            "{upper}: frames reach at most {MAX_ROWS_REACH} rows"
        ));
    }
    Ok(reach)
}

fn scalar_i64(v: &ScalarValue) -> Option<i64> {
    match v {
        ScalarValue::Int8(Some(n)) => Some(i64::from(*n)),
        ScalarValue::Int16(Some(n)) => Some(i64::from(*n)),
        ScalarValue::Int32(Some(n)) => Some(i64::from(*n)),
        ScalarValue::Int64(Some(n)) => Some(*n),
        ScalarValue::UInt8(Some(n)) => Some(i64::from(*n)),
        ScalarValue::UInt16(Some(n)) => Some(i64::from(*n)),
        ScalarValue::UInt32(Some(n)) => Some(i64::from(*n)),
        ScalarValue::UInt64(Some(n)) => i64::try_from(*n).ok(),
        _ => None,
    }
}

/// A ROWS bound's row count; `None` for UNBOUNDED (a null value).
fn rows_of(v: &ScalarValue) -> Option<usize> {
    scalar_i64(v).and_then(|n| usize::try_from(n).ok())
}

/// A RANGE bound over the event time, in milliseconds; `None` for
/// UNBOUNDED or an interval with months (no fixed length).
pub(super) fn interval_ms(v: &ScalarValue) -> Option<i64> {
    match v {
        ScalarValue::IntervalDayTime(Some(d)) => {
            Some(i64::from(d.days) * 86_400_000 + i64::from(d.milliseconds))
        }
        ScalarValue::IntervalMonthDayNano(Some(m)) if m.months == 0 => {
            Some(i64::from(m.days) * 86_400_000 + m.nanoseconds.div_euclid(1_000_000))
        }
        ScalarValue::DurationMillisecond(Some(ms)) => Some(*ms),
        ScalarValue::DurationSecond(Some(s)) => s.checked_mul(1000),
        _ => None,
    }
    .filter(|ms| *ms >= 0)
}
