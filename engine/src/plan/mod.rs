//! Planning: from a `CREATE STREAM` definition to the physical pieces the
//! streaming operators run.
//!
//! DataFusion does the heavy lifting: its parser, its logical planner (name
//! resolution, type coercion, aggregate de-duplication, HAVING rewriting) and
//! its physical expressions and accumulators. What is streaming-specific
//! happens here: the window call in GROUP BY is replaced by the columns
//! `window_start` and `window_end`, which the operators fill in, and the
//! logical plan is taken apart into filter → keys + aggregates → HAVING →
//! projection.

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::datatypes::{DataType, Field, FieldRef, Schema, SchemaRef, TimeUnit};
use datafusion::common::{Column, DFSchema};
use datafusion::datasource::MemTable;
use datafusion::error::DataFusionError;
use datafusion::execution::context::SessionState;
use datafusion::logical_expr::physical_planning_context::PhysicalPlanningContext;
use datafusion::logical_expr::{Expr, LogicalPlan, SortExpr};
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_expr::aggregate::AggregateFunctionExpr;
use datafusion::physical_expr::aggregate::LoweredAggregateBuilder;
use datafusion::prelude::{SessionConfig, SessionContext};
use datafusion::sql::parser::Statement as DfStatement;
use datafusion::sql::sqlparser::ast::{
    self, DateTimeField, FunctionArg, FunctionArgExpr, FunctionArguments, GroupByExpr, Ident,
    SetExpr, Spanned, Statement, TableFactor,
};
use datafusion::sql::sqlparser::dialect::GenericDialect;
use datafusion::sql::sqlparser::parser::Parser;

use super::EngineError;
use super::catalog::{Catalog, SourceDef};
use super::limits;
use super::sql::{EmitMode, StreamDef};
use super::window::WindowSpec;

mod join;
mod over;
mod steps;
mod union;
mod updating;
mod versions;

pub(crate) use steps::traces_to;
pub use steps::{RowStep, apply_steps, apply_steps_tracked};

/// Name of the window-start column of every windowed output row.
pub const WINDOW_START: &str = "window_start";
/// Name of the window-end column of every windowed output row.
pub const WINDOW_END: &str = "window_end";

/// Everything needed to run one stream.
#[derive(Clone, Debug)]
pub struct StreamPlan {
    pub name: String,
    /// What the stream reads: source tables or earlier streams of the same
    /// file, by catalog name. One, except for a UNION ALL (one per branch,
    /// in branch order; a name may repeat).
    pub inputs: Vec<String>,
    pub emit: EmitMode,
    /// Schema of the rows the stream emits.
    pub output_schema: SchemaRef,
    /// Output columns that identify a result row's group (the GROUP BY
    /// keys; the input's key columns a stateless stream passes through).
    pub key_columns: Vec<String>,
    /// Output columns that identify one result row, where the stream has
    /// them: a windowed aggregate's `window_start` and GROUP BY keys (all
    /// projected), an updating stream's key (empty: one row). `None`: rows
    /// are appended (several may share their key columns). Sinks that
    /// upsert key their tables by it.
    pub row_key: Option<Vec<String>>,
    /// The stream's rows as an input of later streams, or why later
    /// streams cannot read them.
    pub as_input: Result<SourceDef, String>,
    /// Changes whenever the state layout or semantics change.
    pub fingerprint: String,
    pub kind: StreamKind,
}

/// Stateless filter/projection, windowed aggregation, OVER windows, an
/// updating aggregation (GROUP BY without a window), or an interval join.
#[derive(Clone, Debug)]
pub enum StreamKind {
    Stateless(StatelessPlan),
    Windowed(Box<WindowedPlan>),
    Over(Box<crate::over::OverPlan>),
    Updating(Box<crate::updating::UpdatingPlan>),
    Join(Box<crate::join::JoinPlan>),
}

/// Row-wise steps over input rows: WHERE, projections, and those of
/// subqueries and CTEs. One list per input (UNION ALL branches), each
/// ending in the stream's output columns.
#[derive(Clone, Debug)]
pub struct StatelessPlan {
    pub branches: Vec<Vec<RowStep>>,
}

/// Where each GROUP BY column of the aggregate output comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GroupSlot {
    Key(usize),
    WindowStart,
    WindowEnd,
}

/// One aggregate call with the expressions that feed it.
#[derive(Clone, Debug)]
pub struct AggregateSpec {
    pub function: Arc<AggregateFunctionExpr>,
    /// Arguments followed by ORDER BY expressions (as DataFusion feeds them).
    pub inputs: Vec<Arc<dyn PhysicalExpr>>,
    /// `FILTER (WHERE …)`.
    pub filter: Option<Arc<dyn PhysicalExpr>>,
}

#[derive(Clone, Debug)]
pub struct WindowedPlan {
    pub window: WindowSpec,
    /// Index of the event-time column in the source schema.
    pub event_time_index: usize,
    /// WHERE, evaluated on source rows.
    pub filter: Option<Arc<dyn PhysicalExpr>>,
    /// GROUP BY expressions other than the window, on source rows.
    pub keys: Vec<Arc<dyn PhysicalExpr>>,
    pub key_fields: Vec<FieldRef>,
    /// Order of the group columns in `aggregate_schema`.
    pub group_layout: Vec<GroupSlot>,
    pub aggregates: Vec<AggregateSpec>,
    /// Group columns then aggregate results.
    pub aggregate_schema: SchemaRef,
    /// HAVING, on `aggregate_schema` rows.
    pub having: Option<Arc<dyn PhysicalExpr>>,
    /// Output columns, on `aggregate_schema` rows.
    pub projection: Vec<Arc<dyn PhysicalExpr>>,
    /// Window top-N: ranking over each closed window's rows, then the
    /// enclosing query's steps (`WHERE rn <= 3`). The projection is then
    /// the identity.
    pub rank: Option<RankStage>,
}

/// `ROW_NUMBER()`/`RANK()`/`DENSE_RANK() OVER (PARTITION BY window_start,
/// window_end[, …] ORDER BY …)` over a windowed aggregation's rows.
#[derive(Clone, Debug)]
pub struct RankStage {
    /// HAVING and what a CTE or subquery does to the aggregate rows before
    /// they are ranked; the result has `ranked_schema`.
    pub pre: Vec<RowStep>,
    pub ranked_schema: SchemaRef,
    /// The ranking functions, on `ranked_schema` rows of one partition
    /// sorted by their ORDER BY.
    pub functions: Vec<Arc<dyn datafusion::physical_expr::window::WindowExpr>>,
    /// What encloses the ranking (projections, the filter on the rank), on
    /// `ranked_schema` columns followed by the ranks.
    pub post: Vec<RowStep>,
}

/// A planned SQL file: the catalog its streams were planned against (the
/// given one plus the file's `CREATE TABLE` declarations) and the streams,
/// in file order (a stream reads only tables and earlier streams).
#[derive(Clone, Debug)]
pub struct PlannedSql {
    pub catalog: Catalog,
    pub streams: Vec<StreamPlan>,
}

impl PlannedSql {
    /// The source tables the streams read (not the streams they read).
    pub fn tables_read(&self) -> std::collections::BTreeSet<&str> {
        self.streams
            .iter()
            .flat_map(|p| &p.inputs)
            .filter(|i| !self.streams.iter().any(|s| s.name.eq_ignore_ascii_case(i)))
            .map(String::as_str)
            .collect()
    }

    /// Whether a later stream reads stream `name` (an intermediate stream
    /// gets an output only where one is bound to it).
    pub fn is_read_by_streams(&self, name: &str) -> bool {
        self.streams
            .iter()
            .flat_map(|p| &p.inputs)
            .any(|i| i.eq_ignore_ascii_case(name))
            && self
                .streams
                .iter()
                .any(|s| s.name.eq_ignore_ascii_case(name))
    }
}

/// What a stream can read while it is planned: the tables, the earlier
/// streams later ones can read, and why the others cannot be read.
struct Scope<'a> {
    /// Tables and readable earlier streams.
    inputs: Catalog,
    /// Earlier streams that cannot be read, with the reason.
    unreadable: BTreeMap<String, String>,
    /// Every stream of the file, in lower case (to say "defined later").
    all_streams: &'a [String],
}

/// Plans every stream of a SQL file, after adding its table declarations
/// to `catalog` (a declaration may replace a built-in table).
///
/// Size and nesting are bounded first ([`limits`](super::limits)), so no
/// input can overflow the planner's stack.
pub fn plan_sql(sql: &str, catalog: &Catalog) -> Result<PlannedSql, EngineError> {
    limits::check_sql_size(sql)?;
    let script = super::sql::parse_script(sql)?;
    let texts = script
        .tables
        .iter()
        .map(|t| t.text.as_str())
        .chain(script.streams.iter().map(|d| d.query.as_str()))
        .collect::<Vec<_>>();
    limits::check_statements(sql, texts.into_iter())?;
    for t in &script.tables {
        limits::check_statement(&t.name, &t.text)?;
    }
    for d in &script.streams {
        limits::check_statement(&d.name, &d.query)?;
    }
    limits::on_planner_stack(|| {
        let mut catalog = catalog.clone();
        for t in &script.tables {
            let def = super::ddl::source_def(t)?;
            catalog.register(def).map_err(|e| EngineError::Sql {
                line: t.line,
                column: 1,
                message: e.to_string(),
            })?;
        }
        let all_streams: Vec<String> = script
            .streams
            .iter()
            .map(|d| d.name.to_ascii_lowercase())
            .collect();
        let mut scope = Scope {
            inputs: catalog.clone(),
            unreadable: BTreeMap::new(),
            all_streams: &all_streams,
        };
        let mut streams = Vec::new();
        for d in &script.streams {
            if catalog.get(&d.name).is_some() {
                return Err(EngineError::Sql {
                    line: d.line,
                    column: 1,
                    message: format!(
                        "stream `{}` has the name of a source table; name it differently",
                        d.name
                    ),
                });
            }
            if let Some(versions) = versions_for_temporal_join(d, &script.streams, &scope)? {
                let plan = plan_stream(&versions, &scope)?;
                let input = plan.as_input.clone().map_err(|why| EngineError::Plan {
                    stream: d.name.clone(),
                    line: d.line,
                    message: why,
                })?;
                scope
                    .inputs
                    .register(input)
                    .expect("a stream's event-time column is checked when planned");
                streams.push(plan);
            }
            let plan = plan_stream(d, &scope)?;
            match &plan.as_input {
                Ok(input) => scope
                    .inputs
                    .register(input.clone())
                    .expect("a stream's event-time column is checked when planned"),
                Err(why) => {
                    scope
                        .unreadable
                        .insert(plan.name.to_ascii_lowercase(), why.clone());
                }
            }
            streams.push(plan);
        }
        Ok(PlannedSql { catalog, streams })
    })
}

/// The hidden versions stream a temporal join of `def` needs (one per
/// updating aggregate, planned before the first join that reads it), see
/// [`versions`].
fn versions_for_temporal_join(
    def: &StreamDef,
    defs: &[StreamDef],
    scope: &Scope,
) -> Result<Option<StreamDef>, EngineError> {
    let Some(table) = versions::versioned_table(def) else {
        return Ok(None);
    };
    let updating = scope
        .inputs
        .get(&table)
        .is_some_and(|s| s.event_time.is_empty());
    if !updating {
        return Ok(None);
    }
    // Only earlier streams are updating inputs (tables have an event time).
    let Some(of) = defs.iter().find(|d| d.name.eq_ignore_ascii_case(&table)) else {
        return Ok(None);
    };
    if let Some(clash) = defs.iter().find(|d| {
        d.name
            .eq_ignore_ascii_case(&versions::versions_name(&of.name))
    }) {
        return Err(EngineError::Plan {
            stream: clash.name.clone(),
            line: clash.line,
            message: format!(
                "the versions of `{}` for a temporal join are a stream of this name; name it differently",
                of.name
            ),
        });
    }
    if scope
        .inputs
        .get(&versions::versions_name(&of.name))
        .is_some()
    {
        return Ok(None);
    }
    versions::versions_def(of, &scope.inputs)
        .map(Some)
        .map_err(|message| EngineError::Plan {
            stream: def.name.clone(),
            line: def.line,
            message,
        })
}

/// Plans one stream against what it can read.
fn plan_stream(def: &StreamDef, scope: &Scope) -> Result<StreamPlan, EngineError> {
    let ctx_err = |message: String| EngineError::Plan {
        stream: def.name.clone(),
        line: def.line,
        message,
    };
    // `LEFT ASOF JOIN` and `FOR SYSTEM_TIME AS OF` are read by blanking
    // them (see `join::strip_join_syntax`) and rewriting the join below.
    let (text, join_syntax) = join::strip_join_syntax(&def.query);
    let mut statements =
        Parser::parse_sql(&GenericDialect {}, &text).map_err(|e| EngineError::Parse {
            stream: def.name.clone(),
            message: e.to_string(),
        })?;
    if statements.len() != 1 {
        return Err(ctx_err("expected exactly one SELECT after `AS`".into()));
    }
    let Statement::Query(mut query) = statements.remove(0) else {
        return Err(ctx_err("expected a SELECT after `AS`".into()));
    };
    let mut asof = join::rewrite_asof_join(&mut query, join_syntax.left_asof);
    if let Some(as_of) = &join_syntax.system_time {
        // An updating aggregate is read through its versions stream,
        // planned before this one (see `versions_for_temporal_join`).
        let event_time_of = |table: &str| match scope.inputs.get(table) {
            Some(s) if !s.event_time.is_empty() => Ok((s.event_time.clone(), None)),
            Some(s) => {
                let name = versions::versions_name(&s.name);
                let versions = scope.inputs.get(&name).ok_or_else(|| {
                    format!("`{}` is an updating stream without versions", s.name)
                })?;
                Ok((versions.event_time.clone(), Some(name)))
            }
            None => Err(format!("unknown table or stream `{table}`")),
        };
        asof |= join::rewrite_temporal_join(&mut query, as_of, event_time_of).map_err(ctx_err)?;
    }
    let sources = check_supported_shape(def, &query, scope)?;
    let source = sources[0];
    let is_union = matches!(query.body.as_ref(), SetExpr::SetOperation { .. });

    // Take the window call out of GROUP BY (of the query, or of the
    // subquery or CTE a top-N ranks), put the window columns in its place.
    let mut window = None;
    rewrite_window_calls(def, &mut query, source, &mut window)?;

    let state = planning_state(&sources, window.is_some())?;
    let logical = futures::executor::block_on(
        state.statement_to_plan(DfStatement::Statement(Box::new(Statement::Query(query)))),
    )
    .map_err(|e| ctx_err(clean_df_error(&e.to_string())))?;
    let logical = state
        .analyzer()
        .execute_and_check(logical, state.config_options(), |_, _| {})
        .map_err(|e| ctx_err(clean_df_error(&e.to_string())))?;

    let updating = window.is_none() && matches!(query_body(&logical), LogicalPlan::Aggregate(_));
    let emit = match (window.is_some(), def.emit) {
        (false, Some(EmitMode::OnWindowClose)) => {
            return Err(ctx_err(
                "EMIT ON WINDOW CLOSE needs a window (TUMBLE, HOP or SESSION) in GROUP BY".into(),
            ));
        }
        (_, Some(mode)) => mode,
        // A GROUP BY without a window has no window to close.
        (_, None) if updating => EmitMode::Changes,
        (_, None) => EmitMode::OnWindowClose,
    };
    let joins = !is_union && matches!(query_body(&logical), LogicalPlan::Join(_));
    if let Some(changelog) = sources.iter().find(|s| s.changelog)
        && (!(updating || joins) || is_union)
    {
        return Err(ctx_err(format!(
            "`{}` is an updating stream (a GROUP BY without a window or a join without time bounds); a stream reading it must aggregate it with a GROUP BY without a window or join it without time bounds, which follow its updates and deletions",
            changelog.name
        )));
    }
    if emit == EmitMode::Changes && has_window_node(&logical) {
        return Err(ctx_err(
            "a window top-N ranks each window once it is complete: use EMIT ON WINDOW CLOSE".into(),
        ));
    }
    let (kind, output_schema, inputs) = match window {
        _ if is_union || matches!(query_body(&logical), LogicalPlan::Union(_)) => {
            union::decompose_union(def, &state, &logical, &sources)?
        }
        None if matches!(query_body(&logical), LogicalPlan::Join(_)) => {
            join::decompose_join(def, &state, &logical, &sources, asof, def.state_ttl_ms)?
        }
        _ if has_join_node(&logical) => {
            return Err(ctx_err(
                "a join's rows can be aggregated, ranked or windowed only in a stream of their own: make the join a stream and read it from the next one".into(),
            ));
        }
        None if updating => {
            let (kind, schema) =
                updating::decompose_updating(def, &state, &logical, source, def.state_ttl_ms)?;
            (kind, schema, vec![source.name.clone()])
        }
        None if has_window_node(&logical) => {
            let (kind, schema) = over::decompose_over(def, &state, &logical, source)?;
            (kind, schema, vec![source.name.clone()])
        }
        None => {
            let (kind, schema) = decompose_stateless(def, &state, &logical)?;
            (kind, schema, vec![source.name.clone()])
        }
        Some(w) => {
            let (kind, schema) = decompose_windowed(def, &state, &logical, w, source)?;
            (kind, schema, vec![source.name.clone()])
        }
    };
    if def.state_ttl_ms.is_some()
        && !matches!(
            kind,
            StreamKind::Updating(_) | StreamKind::Over(_) | StreamKind::Join(_)
        )
    {
        return Err(ctx_err(
            "'state.ttl' applies to a GROUP BY without a window, to OVER partitions and to joins without time bounds; windows keep state only until the watermark passes it".into(),
        ));
    }
    // A join without time bounds is an updating stream: its changes have
    // no window to close.
    let emit = match kind.is_updating() {
        true => EmitMode::Changes,
        false => emit,
    };
    let fingerprint = fingerprint(def, window, emit);
    let key_columns: Vec<String> = match &kind {
        StreamKind::Stateless(_) | StreamKind::Over(_) => source.key_columns.clone(),
        StreamKind::Join(j) => j
            .output_keys
            .iter()
            .map(|&i| output_schema.field(i).name().clone())
            .collect(),
        StreamKind::Windowed(w) => w.key_fields.iter().map(|f| f.name().clone()).collect(),
        StreamKind::Updating(u) => u
            .output_keys
            .iter()
            .map(|&i| output_schema.field(i).name().clone())
            .collect(),
    }
    .into_iter()
    .filter(|c| output_schema.index_of(c).is_ok())
    .collect();
    let as_input = as_input(def, &kind, emit, source, &output_schema, &key_columns);
    let row_key = row_key(&kind, &output_schema, &key_columns);
    Ok(StreamPlan {
        name: def.name.clone(),
        inputs,
        emit,
        output_schema,
        key_columns,
        row_key,
        as_input,
        fingerprint,
        kind,
    })
}

/// See [`StreamPlan::row_key`].
fn row_key(kind: &StreamKind, output: &Schema, key_columns: &[String]) -> Option<Vec<String>> {
    match kind {
        k if k.is_updating() => Some(key_columns.to_vec()),
        StreamKind::Windowed(w) => {
            let all_keys_projected = w.key_fields.len() == key_columns.len();
            (all_keys_projected && output.index_of(WINDOW_START).is_ok()).then(|| {
                std::iter::once(WINDOW_START.to_string())
                    .chain(key_columns.iter().filter(|k| *k != WINDOW_START).cloned())
                    .collect()
            })
        }
        _ => None,
    }
}

impl StreamKind {
    /// The stream's rows are upserts and deletions by key (a GROUP BY
    /// without a window, a join without time bounds).
    pub fn is_updating(&self) -> bool {
        match self {
            StreamKind::Updating(_) => true,
            StreamKind::Join(j) => j.is_regular(),
            _ => false,
        }
    }
}

/// The plan below the projections, filters and aliases at its top.
fn query_body(plan: &LogicalPlan) -> &LogicalPlan {
    match plan {
        LogicalPlan::Projection(p) => query_body(&p.input),
        LogicalPlan::Filter(f) => query_body(&f.input),
        LogicalPlan::SubqueryAlias(a) => query_body(&a.input),
        other => other,
    }
}

/// A stream's rows as the input of later streams. Their event time is the
/// input's event-time column, kept under its name; for a windowed stream,
/// `window_end` (rows are emitted when the watermark passes it, so it is
/// never behind the watermark later streams see).
fn as_input(
    def: &StreamDef,
    kind: &StreamKind,
    emit: EmitMode,
    source: &SourceDef,
    output: &SchemaRef,
    key_columns: &[String],
) -> Result<SourceDef, String> {
    let traced = |steps: &[RowStep]| {
        let ts = source.event_time_index();
        let candidates: Vec<usize> = (0..output.fields().len())
            .filter(|&j| steps::traces_to(steps, j) == Some(ts))
            .collect();
        // Prefer the column that kept its name.
        candidates
            .iter()
            .find(|&&j| output.field(j).name() == &source.event_time)
            .or(candidates.first())
            .map(|&j| output.field(j).name().clone())
    };
    let read_as = |event_time: String, changelog: bool| SourceDef {
        name: def.name.clone(),
        schema: Arc::clone(output),
        event_time,
        key_columns: key_columns.to_vec(),
        topic: super::catalog::output_topic(&def.name),
        format: super::catalog::SourceFormat::Json,
        avro_schema: None,
        watermark_delay: None,
        declared_at: Some(def.line),
        changelog,
    };
    if kind.is_updating() {
        // Read as upserts and deletions by key, without event time.
        return Ok(read_as(String::new(), true));
    }
    let event_time = match kind {
        StreamKind::Updating(_) => unreachable!("an updating stream is read as changes (above)"),
        StreamKind::Windowed(_) if emit == EmitMode::Changes => {
            return Err(
                "it emits changes (EMIT CHANGES), and later streams read only final rows".into(),
            );
        }
        StreamKind::Windowed(_) => WINDOW_END.to_string(),
        // The input's event-time column, under whatever name it kept.
        StreamKind::Stateless(s) => traced(&s.branches[0]).unwrap_or(source.event_time.clone()),
        StreamKind::Over(o) => traced(&o.post).unwrap_or(source.event_time.clone()),
        // The left row's event time (the join's output watermark follows it).
        StreamKind::Join(j) => (0..output.fields().len())
            .find(|&i| steps::traces_to(&j.post, i) == j.left.event_time_index)
            .map(|i| output.field(i).name().clone())
            .ok_or_else(|| {
                "its rows do not carry the left side's event time; select it to read the stream"
                    .to_string()
            })?,
    };
    match output.field_with_name(&event_time) {
        Ok(f) if matches!(f.data_type(), DataType::Timestamp(..)) => {}
        _ => {
            return Err(format!(
                "its rows do not carry the event-time column `{event_time}`; select it to read the stream"
            ));
        }
    }
    Ok(read_as(event_time, false))
}

/// Replaces `TUMBLE(…)`/`HOP(…)`/`SESSION(…)` in the GROUP BY of `query`
/// and of the subqueries and CTEs it reads by `window_start, window_end`;
/// at most one window in the whole query.
fn rewrite_window_calls(
    def: &StreamDef,
    query: &mut ast::Query,
    source: &SourceDef,
    window: &mut Option<WindowSpec>,
) -> Result<(), EngineError> {
    if let Some(with) = &mut query.with {
        for cte in &mut with.cte_tables {
            rewrite_window_calls(def, &mut cte.query, source, window)?;
        }
    }
    let SetExpr::Select(select) = query.body.as_mut() else {
        return Ok(());
    };
    for from in &mut select.from {
        if let TableFactor::Derived { subquery, .. } = &mut from.relation {
            rewrite_window_calls(def, subquery, source, window)?;
        }
    }
    let GroupByExpr::Expressions(exprs, _) = &mut select.group_by else {
        return Ok(());
    };
    let mut rewritten = Vec::with_capacity(exprs.len() + 1);
    for e in exprs.drain(..) {
        match window_call(def, &e, source)? {
            Some(spec) => {
                if window.is_some() {
                    return Err(unsupported(def, &e, "more than one window in the query"));
                }
                *window = Some(spec);
                rewritten.push(ast::Expr::Identifier(Ident::new(WINDOW_START)));
                rewritten.push(ast::Expr::Identifier(Ident::new(WINDOW_END)));
            }
            None => rewritten.push(e),
        }
    }
    *exprs = rewritten;
    Ok(())
}

/// Rejects SQL the streaming engine cannot run yet, with its position.
/// Returns what the query reads: one table or stream, or one per UNION ALL
/// branch (distinct).
fn check_supported_shape<'a>(
    def: &StreamDef,
    query: &ast::Query,
    scope: &'a Scope,
) -> Result<Vec<&'a SourceDef>, EngineError> {
    if let Some(order_by) = &query.order_by {
        return Err(unsupported(
            def,
            order_by,
            "ORDER BY on an unbounded stream is not supported",
        ));
    }
    if let Some(limit) = &query.limit_clause {
        return Err(unsupported(
            def,
            limit,
            "LIMIT on an unbounded stream is not supported",
        ));
    }
    let mut selects = Vec::new();
    union_all_branches(def, query.body.as_ref(), &mut selects)?;
    for select in &selects {
        check_select(def, select)?;
        if selects.len() > 1
            && !matches!(&select.group_by, GroupByExpr::Expressions(e, _) if e.is_empty())
        {
            return Err(unsupported(
                def,
                *select,
                "a UNION ALL branch must filter or project one table or stream; aggregate in a stream of its own and union the streams",
            ));
        }
    }
    let joined = selects.len() == 1 && selects[0].from.iter().any(|f| !f.joins.is_empty());
    let names = source_tables(def, query, selects.len() > 1 || joined)?;
    names
        .iter()
        .map(|name| resolve_input(def, name, scope))
        .collect()
}

/// The SELECTs of `body`: itself, or the branches of a UNION ALL.
fn union_all_branches<'q>(
    def: &StreamDef,
    body: &'q SetExpr,
    out: &mut Vec<&'q ast::Select>,
) -> Result<(), EngineError> {
    match body {
        SetExpr::Select(s) => out.push(s),
        SetExpr::Query(q)
            if q.order_by.is_none() && q.limit_clause.is_none() && q.with.is_none() =>
        {
            union_all_branches(def, q.body.as_ref(), out)?
        }
        SetExpr::SetOperation {
            op: ast::SetOperator::Union,
            set_quantifier: ast::SetQuantifier::All,
            left,
            right,
        } => {
            union_all_branches(def, left, out)?;
            union_all_branches(def, right, out)?;
        }
        SetExpr::SetOperation {
            op: ast::SetOperator::Union,
            ..
        } => {
            return Err(unsupported(
                def,
                body,
                "UNION without ALL would keep every row seen to drop duplicates; use UNION ALL",
            ));
        }
        other => {
            return Err(unsupported(
                def,
                other,
                "only SELECT and UNION ALL are supported (INTERSECT, EXCEPT and VALUES are not)",
            ));
        }
    }
    Ok(())
}

/// The catalog entry of an input, or why it cannot be read.
fn resolve_input<'a>(
    def: &StreamDef,
    name: &ast::ObjectName,
    scope: &'a Scope,
) -> Result<&'a SourceDef, EngineError> {
    let table = name.to_string();
    let lower = table.to_ascii_lowercase();
    let at = |message: String| EngineError::Sql {
        line: name.span().start.line as usize,
        column: name.span().start.column as usize,
        message,
    };
    if let Some(def) = scope.inputs.get(&table) {
        return Ok(def);
    }
    if let Some(why) = scope.unreadable.get(&lower) {
        return Err(at(format!(
            "stream `{}` cannot read stream `{table}`: {why}",
            def.name
        )));
    }
    if scope.all_streams.contains(&lower) {
        return Err(at(format!(
            "stream `{}` reads stream `{table}`, which is defined after it (or is itself); a stream reads only streams defined before it",
            def.name
        )));
    }
    Err(at(format!(
        "stream `{}`: unknown source table `{table}` (known: {})",
        def.name,
        scope.inputs.names().join(", ")
    )))
}

/// One SELECT of a stream: one FROM item, no JOIN, no OVER next to GROUP BY
/// (other than a window top-N's ranking).
fn check_select(def: &StreamDef, select: &ast::Select) -> Result<(), EngineError> {
    if select.from.len() != 1 {
        return Err(unsupported(
            def,
            select,
            "a stream reads from exactly one source table",
        ));
    }
    let from = &select.from[0];
    if let Some(extra) = from.joins.get(1) {
        return Err(unsupported(
            def,
            extra,
            "a stream joins two inputs; join a third in a stream that reads this one",
        ));
    }
    if let Some(join) = from.joins.first() {
        check_join(def, join)?;
    }
    let relations = std::iter::once(&from.relation).chain(from.joins.iter().map(|j| &j.relation));
    for relation in relations {
        if !matches!(
            relation,
            TableFactor::Table { .. } | TableFactor::Derived { .. }
        ) {
            return Err(unsupported(
                def,
                relation,
                "FROM must name a source table, a CTE or a subquery",
            ));
        }
    }
    let grouped = !matches!(&select.group_by, GroupByExpr::Expressions(e, _) if e.is_empty());
    for item in &select.projection {
        if let ast::SelectItem::UnnamedExpr(e) | ast::SelectItem::ExprWithAlias { expr: e, .. } =
            item
            && grouped
            && let Some(at) = first_over(e)
        {
            return Err(EngineError::Sql {
                line: at.line as usize,
                column: at.column as usize,
                message: format!(
                    "stream `{}`: window functions (OVER) in a GROUP BY query are not supported yet, apart from ROW_NUMBER/RANK/DENSE_RANK per window (top-N)",
                    def.name
                ),
            });
        }
    }
    Ok(())
}

/// A join the engine runs: `[INNER] JOIN` or `LEFT [OUTER] JOIN` with an
/// ON condition.
fn check_join(def: &StreamDef, join: &ast::Join) -> Result<(), EngineError> {
    use ast::{JoinConstraint, JoinOperator};
    match &join.join_operator {
        JoinOperator::Join(JoinConstraint::On(_))
        | JoinOperator::Inner(JoinConstraint::On(_))
        | JoinOperator::Left(JoinConstraint::On(_))
        | JoinOperator::LeftOuter(JoinConstraint::On(_)) => Ok(()),
        JoinOperator::Join(_)
        | JoinOperator::Inner(_)
        | JoinOperator::Left(_)
        | JoinOperator::LeftOuter(_) => Err(unsupported(
            def,
            join,
            "a join needs an ON condition with the keys and the event-time bounds (USING and NATURAL are not supported)",
        )),
        _ => Err(unsupported(
            def,
            join,
            "only JOIN and LEFT JOIN (with an interval on the event times, or equal window ends) and [LEFT] ASOF JOIN are supported yet (RIGHT, FULL and CROSS joins are not)",
        )),
    }
}

/// The tables and streams a query reads, through its CTEs and subqueries:
/// exactly one, or (a UNION ALL or a join, `several`) one or more.
fn source_tables(
    def: &StreamDef,
    query: &ast::Query,
    several: bool,
) -> Result<Vec<ast::ObjectName>, EngineError> {
    use std::ops::ControlFlow;
    let mut ctes = std::collections::HashSet::new();
    collect_cte_names(query, &mut ctes);
    let mut tables: Vec<ast::ObjectName> = Vec::new();
    let _ = ast::visit_relations(query, |name: &ast::ObjectName| {
        let lower = name.to_string().to_ascii_lowercase();
        if !ctes.contains(&lower)
            && !tables
                .iter()
                .any(|t| t.to_string().eq_ignore_ascii_case(&lower))
        {
            tables.push(name.clone());
        }
        ControlFlow::<()>::Continue(())
    });
    match tables.as_slice() {
        [] => Err(unsupported(def, query, "the query reads no source table")),
        [_, second, ..] if !several => Err(unsupported(
            def,
            second,
            "a stream reads from exactly one source table or stream (joins are not supported yet; UNION ALL merges streams)",
        )),
        _ => Ok(tables),
    }
}

/// Names of the CTEs defined anywhere in `query`, in lower case.
fn collect_cte_names(query: &ast::Query, out: &mut std::collections::HashSet<String>) {
    if let Some(with) = &query.with {
        for cte in &with.cte_tables {
            out.insert(cte.alias.name.value.to_ascii_lowercase());
            collect_cte_names(&cte.query, out);
        }
    }
}

/// Where the first window-function call (`… OVER (…)`) in `e` starts,
/// other than the rankings of a window top-N.
fn first_over(e: &ast::Expr) -> Option<datafusion::sql::sqlparser::tokenizer::Location> {
    use std::ops::ControlFlow;
    let found = ast::visit_expressions(e, |x: &ast::Expr| match x {
        ast::Expr::Function(f)
            if f.over.is_some()
                && !["ROW_NUMBER", "RANK", "DENSE_RANK"]
                    .iter()
                    .any(|r| f.name.to_string().eq_ignore_ascii_case(r)) =>
        {
            ControlFlow::Break(x.span().start)
        }
        _ => ControlFlow::Continue(()),
    });
    match found {
        ControlFlow::Break(at) => Some(at),
        ControlFlow::Continue(()) => None,
    }
}

/// Whether the plan joins two inputs anywhere.
fn has_join_node(plan: &LogicalPlan) -> bool {
    match plan {
        LogicalPlan::Join(_) => true,
        other => other.inputs().into_iter().any(has_join_node),
    }
}

/// Whether DataFusion planned a `Window` step (an OVER clause).
fn has_window_node(plan: &LogicalPlan) -> bool {
    match plan {
        LogicalPlan::Window(_) => true,
        other => other.inputs().into_iter().any(has_window_node),
    }
}

fn unsupported(def: &StreamDef, node: &impl Spanned, what: &str) -> EngineError {
    let start = node.span().start;
    EngineError::Sql {
        line: start.line as usize,
        column: start.column as usize,
        message: format!("stream `{}`: {what}", def.name),
    }
}

/// Recognises `TUMBLE(ts, size)`, `HOP(ts, slide, size)` and `SESSION(ts, gap)`.
fn window_call(
    def: &StreamDef,
    e: &ast::Expr,
    source: &SourceDef,
) -> Result<Option<WindowSpec>, EngineError> {
    let ast::Expr::Function(f) = e else {
        return Ok(None);
    };
    let name = f.name.to_string().to_ascii_uppercase();
    let arity = match name.as_str() {
        "TUMBLE" | "SESSION" => 2,
        "HOP" => 3,
        _ => return Ok(None),
    };
    let FunctionArguments::List(list) = &f.args else {
        return Err(unsupported(def, e, &format!("{name} needs arguments")));
    };
    let args: Vec<&ast::Expr> = list
        .args
        .iter()
        .filter_map(|a| match a {
            FunctionArg::Unnamed(FunctionArgExpr::Expr(x)) => Some(x),
            _ => None,
        })
        .collect();
    if args.len() != arity || list.args.len() != arity {
        let usage = match name.as_str() {
            "TUMBLE" => "TUMBLE(ts, INTERVAL '5' SECOND)",
            "SESSION" => "SESSION(ts, INTERVAL '10' SECOND)",
            _ => "HOP(ts, INTERVAL '5' SECOND /* slide */, INTERVAL '1' MINUTE /* size */)",
        };
        return Err(unsupported(def, e, &format!("expected {usage}")));
    }
    let time_col = match args[0] {
        ast::Expr::Identifier(id) => id.value.clone(),
        ast::Expr::CompoundIdentifier(ids) => {
            ids.last().map(|i| i.value.clone()).unwrap_or_default()
        }
        other => {
            return Err(unsupported(
                def,
                other,
                "the first window argument must be the event-time column",
            ));
        }
    };
    if !time_col.eq_ignore_ascii_case(&source.event_time) {
        return Err(unsupported(
            def,
            args[0],
            &format!(
                "windows are on the event-time column `{}` of `{}`, not `{time_col}`",
                source.event_time, source.name
            ),
        ));
    }
    let mut durations = Vec::new();
    for a in &args[1..] {
        let ms = interval_ms(a).map_err(|why| unsupported(def, *a, &why))?;
        if ms <= 0 {
            return Err(unsupported(def, *a, "window intervals must be positive"));
        }
        durations.push(ms);
    }
    Ok(Some(match name.as_str() {
        "TUMBLE" => WindowSpec::Tumble {
            size_ms: durations[0],
        },
        "SESSION" => WindowSpec::Session {
            gap_ms: durations[0],
        },
        _ => {
            let (slide_ms, size_ms) = (durations[0], durations[1]);
            if slide_ms > size_ms {
                return Err(unsupported(
                    def,
                    e,
                    "HOP slide (second argument) must not exceed the window size (third argument)",
                ));
            }
            let hop = WindowSpec::Hop { slide_ms, size_ms };
            let panes = size_ms / hop.pane_ms().expect("time window");
            if panes > limits::MAX_PANES_PER_WINDOW {
                return Err(unsupported(
                    def,
                    e,
                    &format!(
                        "HOP size and slide make each window {panes} slices (of their greatest common divisor); \
                         at most {} are supported: make the slide longer or a divisor of the size",
                        limits::MAX_PANES_PER_WINDOW
                    ),
                ));
            }
            hop
        }
    }))
}

/// Milliseconds of `INTERVAL '5' SECOND` or `INTERVAL '5 seconds'`.
pub(crate) fn interval_ms(e: &ast::Expr) -> Result<i64, String> {
    let ast::Expr::Interval(iv) = e else {
        return Err("expected an INTERVAL, e.g. INTERVAL '5' SECOND".into());
    };
    if iv.last_field.is_some() {
        return Err("compound intervals (… TO …) are not supported".into());
    }
    let text = match iv.value.as_ref() {
        ast::Expr::Value(v) => match &v.value {
            ast::Value::SingleQuotedString(s) | ast::Value::Number(s, _) => s.clone(),
            other => return Err(format!("unsupported interval value {other}")),
        },
        other => return Err(format!("unsupported interval value {other}")),
    };
    let mut parts = text.split_whitespace();
    let amount: f64 = parts
        .next()
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| format!("invalid interval amount '{text}'"))?;
    let unit = match (parts.next(), &iv.leading_field) {
        (Some(u), None) => u.to_ascii_lowercase(),
        (None, Some(f)) => match f {
            DateTimeField::Millisecond | DateTimeField::Milliseconds => "millisecond".into(),
            DateTimeField::Second | DateTimeField::Seconds => "second".into(),
            DateTimeField::Minute | DateTimeField::Minutes => "minute".into(),
            DateTimeField::Hour | DateTimeField::Hours => "hour".into(),
            DateTimeField::Day | DateTimeField::Days => "day".into(),
            other => return Err(format!("unsupported interval unit {other}")),
        },
        _ => {
            return Err(format!(
                "invalid interval '{text}': give one amount and one unit"
            ));
        }
    };
    let unit_ms = match unit.trim_end_matches('s') {
        "millisecond" | "m" => 1.0,
        "second" | "sec" => 1_000.0,
        "minute" | "min" => 60_000.0,
        "hour" | "h" => 3_600_000.0,
        "day" => 86_400_000.0,
        _ => return Err(format!("unsupported interval unit '{unit}'")),
    };
    let ms = amount * unit_ms;
    if !ms.is_finite() || ms.fract() != 0.0 {
        return Err("interval must be a whole number of milliseconds".into());
    }
    if ms > limits::MAX_WINDOW_MS as f64 {
        return Err(format!(
            "window intervals are at most {} days",
            limits::MAX_WINDOW_MS / 86_400_000
        ));
    }
    Ok(ms as i64)
}

/// A DataFusion session that knows the inputs (plus, for a windowed
/// stream, the window columns).
fn planning_state(sources: &[&SourceDef], windowed: bool) -> Result<SessionState, EngineError> {
    let mut config = SessionConfig::new().with_target_partitions(1);
    // Strings are Utf8 throughout the engine and its codecs: `CAST(x AS
    // VARCHAR)` must not turn a column into Utf8View.
    config.options_mut().sql_parser.map_string_types_to_utf8view = false;
    let ctx = SessionContext::new_with_config(config);
    for source in sources {
        let mut fields: Vec<FieldRef> = source.schema.fields().iter().cloned().collect();
        if windowed {
            let ts = DataType::Timestamp(TimeUnit::Millisecond, None);
            fields.push(Arc::new(Field::new(WINDOW_START, ts.clone(), false)));
            fields.push(Arc::new(Field::new(WINDOW_END, ts, false)));
        }
        let schema = Arc::new(Schema::new(fields));
        let table = MemTable::try_new(schema, vec![vec![]])?;
        ctx.register_table(source.name.as_str(), Arc::new(table))?;
    }
    Ok(ctx.state())
}

/// DataFusion errors carry a category prefix that means nothing to users.
fn clean_df_error(msg: &str) -> String {
    let msg = msg
        .trim_start_matches("Error during planning: ")
        .trim_start_matches("Schema error: ")
        .trim_start_matches("This feature is not implemented: ");
    msg.to_string()
}

/// Identifies a stream's state across restarts: a checkpoint restores only
/// into a stream with the same fingerprint. Built from a canonical form of
/// the query text (tokens without whitespace or comments, unquoted words in
/// lower case), not from DataFusion's plan text, so a release that prints
/// plans differently keeps every checkpoint usable. The `v2` prefix changes
/// only if this form does (a test pins a value).
fn fingerprint(def: &StreamDef, window: Option<WindowSpec>, emit: EmitMode) -> String {
    let window = match window {
        None => "none".to_string(),
        Some(WindowSpec::Tumble { size_ms }) => format!("tumble:{size_ms}"),
        Some(WindowSpec::Hop { slide_ms, size_ms }) => format!("hop:{slide_ms}:{size_ms}"),
        Some(WindowSpec::Session { gap_ms }) => format!("session:{gap_ms}"),
    };
    let emit = match emit {
        EmitMode::OnWindowClose => "on-window-close",
        EmitMode::Changes => "changes",
    };
    let text = format!(
        "v2|{}|{window}|{emit}|{}",
        def.name.to_ascii_lowercase(),
        canonical_query(&def.query)
    );
    // FNV-1a: stable across Rust versions and platforms, unlike std's hasher.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in text.bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{h:016x}")
}

/// The query's tokens, whitespace and comments dropped, unquoted words in
/// lower case, joined by single spaces.
fn canonical_query(query: &str) -> String {
    use datafusion::sql::sqlparser::tokenizer::{Token, Tokenizer};
    let dialect = GenericDialect {};
    // The planner tokenized this text already (limits), so this succeeds.
    let tokens = Tokenizer::new(&dialect, query.trim_start())
        .tokenize()
        .unwrap_or_default();
    let mut out = String::with_capacity(query.len());
    for t in tokens {
        let text = match t {
            Token::Whitespace(_) | Token::EOF => continue,
            Token::Word(w) if w.quote_style.is_none() => w.value.to_lowercase(),
            t => t.to_string(),
        };
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(&text);
    }
    out
}

/// Peels `Filter` nodes (and no-op aliases) off a plan.
fn peel_filter(plan: &LogicalPlan) -> (Option<&Expr>, &LogicalPlan) {
    match plan {
        LogicalPlan::Filter(f) => (Some(&f.predicate), f.input.as_ref()),
        other => (None, other),
    }
}

fn unsupported_node(def: &StreamDef, node: &LogicalPlan) -> EngineError {
    EngineError::Plan {
        stream: def.name.clone(),
        line: def.line,
        message: format!(
            "this query needs a `{}` step, which the streaming engine does not support yet",
            node.display()
        ),
    }
}

fn expect_scan<'a>(def: &StreamDef, plan: &'a LogicalPlan) -> Result<&'a LogicalPlan, EngineError> {
    match plan {
        LogicalPlan::TableScan(_) => Ok(plan),
        other => Err(unsupported_node(def, other)),
    }
}

fn physical(
    state: &SessionState,
    e: &Expr,
    schema: &DFSchema,
    def: &StreamDef,
) -> Result<Arc<dyn PhysicalExpr>, EngineError> {
    let plan_err = |err: DataFusionError| EngineError::Plan {
        stream: def.name.clone(),
        line: def.line,
        message: clean_df_error(&err.to_string()),
    };
    state
        .create_physical_expr(simplified(e, schema).map_err(plan_err)?, schema)
        .map_err(|err| EngineError::Plan {
            stream: def.name.clone(),
            line: def.line,
            message: clean_df_error(&err.to_string()),
        })
}

/// `e` as DataFusion's optimizer leaves it before execution: some
/// functions (COALESCE, NVL, NULLIF's relatives) exist only in their
/// simplified form and fail if evaluated as written. Every expression the
/// engine evaluates goes through this, as DataFusion's own plans do.
pub(crate) fn simplified(e: &Expr, schema: &DFSchema) -> Result<Expr, DataFusionError> {
    use datafusion::logical_expr::simplify::SimplifyContext;
    use datafusion::optimizer::simplify_expressions::ExprSimplifier;
    let context = SimplifyContext::builder()
        .with_schema(Arc::new(schema.clone()))
        .build();
    ExprSimplifier::new(context).simplify(e.clone())
}

/// Output schema with every column nullable: aggregates over empty filters
/// produce nulls whatever the planner inferred.
fn nullable(schema: &Schema) -> SchemaRef {
    Arc::new(Schema::new(
        schema
            .fields()
            .iter()
            .map(|f| f.as_ref().clone().with_nullable(true))
            .collect::<Vec<_>>(),
    ))
}

fn decompose_stateless(
    def: &StreamDef,
    state: &SessionState,
    plan: &LogicalPlan,
) -> Result<(StreamKind, SchemaRef), EngineError> {
    let (steps, below) = steps::peel_row_steps(def, state, plan)?;
    if let LogicalPlan::Aggregate(_) = below {
        return Err(EngineError::Plan {
            stream: def.name.clone(),
            line: def.line,
            message: "aggregation needs a window in GROUP BY: TUMBLE(ts, …), HOP(ts, …, …) or SESSION(ts, …)".into(),
        });
    }
    expect_scan(def, below)?;
    let output = nullable(plan.schema().as_arrow());
    Ok((
        StreamKind::Stateless(StatelessPlan {
            branches: vec![steps],
        }),
        output,
    ))
}

fn decompose_windowed(
    def: &StreamDef,
    state: &SessionState,
    plan: &LogicalPlan,
    window: WindowSpec,
    source: &SourceDef,
) -> Result<(StreamKind, SchemaRef), EngineError> {
    let plan_err = |message: String| EngineError::Plan {
        stream: def.name.clone(),
        line: def.line,
        message,
    };
    // Window top-N: the enclosing query's steps, a ranking Window, then
    // [HAVING] → Aggregate. Otherwise Projection → [HAVING] → Aggregate.
    let (top_steps, top_below) = steps::peel_row_steps(def, state, plan)?;
    let (proj, ranking, having, below) = match top_below {
        LogicalPlan::Window(w) => {
            // HAVING, and the SELECT list of a CTE or subquery between the
            // aggregation and the ranking, become steps before it.
            let (pre, below) = steps::peel_row_steps(def, state, &w.input)?;
            (None, Some((pre, top_steps, w)), None, below)
        }
        _ => {
            let LogicalPlan::Projection(proj) = plan else {
                return Err(unsupported_node(def, plan));
            };
            let (having, below) = peel_filter(&proj.input);
            (Some(proj), None, having, below)
        }
    };
    let LogicalPlan::Aggregate(agg) = below else {
        return Err(unsupported_node(def, below));
    };
    let (filter, below_agg) = peel_filter(&agg.input);
    let scan = expect_scan(def, below_agg)?;
    let scan_schema = scan.schema();
    let agg_input_schema = agg.input.schema();

    let is_window_col = |c: &Column| c.name == WINDOW_START || c.name == WINDOW_END;
    let mentions_window = |e: &Expr| e.column_refs().iter().any(|c| is_window_col(c));
    if let Some(f) = filter
        && mentions_window(f)
    {
        return Err(plan_err(
            "WHERE cannot use window_start/window_end; use HAVING".into(),
        ));
    }

    let mut keys = Vec::new();
    let mut key_fields = Vec::new();
    let mut group_layout = Vec::new();
    for (i, g) in agg.group_expr.iter().enumerate() {
        match g {
            Expr::Column(c) if c.name == WINDOW_START => group_layout.push(GroupSlot::WindowStart),
            Expr::Column(c) if c.name == WINDOW_END => group_layout.push(GroupSlot::WindowEnd),
            e if mentions_window(e) => {
                return Err(plan_err(
                    "GROUP BY expressions cannot use window_start/window_end".into(),
                ));
            }
            e => {
                group_layout.push(GroupSlot::Key(keys.len()));
                keys.push(physical(state, e, agg_input_schema, def)?);
                key_fields.push(Arc::clone(agg.schema.field(i)));
            }
        }
    }
    if !group_layout.contains(&GroupSlot::WindowStart) {
        return Err(plan_err(
            "GROUPING SETS/ROLLUP/CUBE are not supported".into(),
        ));
    }

    if agg.aggr_expr.iter().any(mentions_window) {
        return Err(plan_err(
            "aggregates cannot use window_start/window_end".into(),
        ));
    }
    let aggregates = aggregate_specs(def, state, agg, Some(&source.event_time))?;

    let filter = filter
        .map(|f| physical(state, f, scan_schema, def))
        .transpose()?;
    let agg_schema = agg.schema.as_ref();
    let having = having
        .map(|h| physical(state, h, agg_schema, def))
        .transpose()?;
    let (projection, output, rank) = match ranking {
        Some((pre, post, window_node)) => {
            // The ranking sees the aggregate rows as they are.
            let identity = agg_schema
                .columns()
                .iter()
                .map(|c| physical(state, &Expr::Column(c.clone()), agg_schema, def))
                .collect::<Result<Vec<_>, _>>()?;
            let rank = rank_stage(def, state, window_node, pre, post)?;
            (identity, nullable(plan.schema().as_arrow()), Some(rank))
        }
        None => {
            let proj = proj.expect("a projection when there is no ranking");
            let (projection, output) = windowed_projection(def, state, proj)?;
            (projection, output, None)
        }
    };
    let plan = WindowedPlan {
        window,
        event_time_index: source.event_time_index(),
        filter,
        keys,
        key_fields,
        group_layout,
        aggregates,
        aggregate_schema: nullable(agg.schema.as_arrow()),
        having,
        projection,
        rank,
    };
    Ok((StreamKind::Windowed(Box::new(plan)), output))
}

/// The aggregate calls of `agg` with their input expressions. With an
/// event-time column, FIRST_VALUE/LAST_VALUE are by event time, not by
/// arrival order.
fn aggregate_specs(
    def: &StreamDef,
    state: &SessionState,
    agg: &datafusion::logical_expr::logical_plan::Aggregate,
    event_time: Option<&str>,
) -> Result<Vec<AggregateSpec>, EngineError> {
    let plan_err = |message: String| EngineError::Plan {
        stream: def.name.clone(),
        line: def.line,
        message,
    };
    let agg_input_schema = agg.input.schema();
    let ts_col = event_time
        .map(|name| {
            agg_input_schema
                .qualified_field_with_unqualified_name(name)
                .map(|(q, f)| Expr::Column(Column::from((q, f))))
                .map_err(|e| plan_err(e.to_string()))
        })
        .transpose()?;
    let mut aggregates = Vec::new();
    for e in &agg.aggr_expr {
        let e = match &ts_col {
            Some(ts) => order_by_event_time(e, ts),
            None => e.clone(),
        };
        let e = simplified(&e, agg_input_schema)
            .map_err(|err| plan_err(clean_df_error(&err.to_string())))?;
        let planning = PhysicalPlanningContext::default();
        let lowered = LoweredAggregateBuilder::new(
            &e,
            agg_input_schema,
            agg_input_schema.as_arrow(),
            state.execution_props(),
            &planning,
        )
        .build()
        .map_err(|err| plan_err(clean_df_error(&err.to_string())))?;
        let (function, agg_filter) = (lowered.aggregate, lowered.filter);
        let mut inputs = function.expressions();
        inputs.extend(function.order_bys().iter().map(|s| Arc::clone(&s.expr)));
        aggregates.push(AggregateSpec {
            function,
            inputs,
            filter: agg_filter,
        });
    }
    Ok(aggregates)
}

/// The SELECT list of a windowed aggregation, on aggregate rows; every
/// windowed row carries its window bounds, added when not selected.
fn windowed_projection(
    def: &StreamDef,
    state: &SessionState,
    proj: &datafusion::logical_expr::logical_plan::Projection,
) -> Result<(Vec<Arc<dyn PhysicalExpr>>, SchemaRef), EngineError> {
    let plan_err = |message: String| EngineError::Plan {
        stream: def.name.clone(),
        line: def.line,
        message,
    };
    let proj_in = proj.input.schema();
    let mut projection = proj
        .expr
        .iter()
        .map(|e| physical(state, e, proj_in, def))
        .collect::<Result<Vec<_>, _>>()?;
    let mut out_fields: Vec<Field> = proj
        .schema
        .fields()
        .iter()
        .map(|f| f.as_ref().clone())
        .collect();
    for name in [WINDOW_START, WINDOW_END] {
        if !out_fields.iter().any(|f| f.name() == name) {
            let col = Expr::Column(Column::new_unqualified(name));
            let (_, field) = proj_in
                .qualified_field_with_unqualified_name(name)
                .map_err(|e| plan_err(e.to_string()))?;
            projection.push(physical(state, &col, proj_in, def)?);
            out_fields.push(field.as_ref().clone());
        }
    }
    let mut names = std::collections::HashSet::new();
    for f in &out_fields {
        if !names.insert(f.name().clone()) {
            return Err(plan_err(format!(
                "output column `{}` appears twice; give it an alias with AS",
                f.name()
            )));
        }
    }
    Ok((projection, nullable(&Schema::new(out_fields))))
}

/// The ranking of a window top-N: ROW_NUMBER, RANK or DENSE_RANK,
/// partitioned by the window (`window_start, window_end`, and more).
fn rank_stage(
    def: &StreamDef,
    state: &SessionState,
    window: &datafusion::logical_expr::logical_plan::Window,
    pre: Vec<RowStep>,
    post: Vec<RowStep>,
) -> Result<RankStage, EngineError> {
    let plan_err = |message: String| EngineError::Plan {
        stream: def.name.clone(),
        line: def.line,
        message,
    };
    let mut functions = Vec::new();
    for e in &window.window_expr {
        let mut inner = e;
        while let Expr::Alias(a) = inner {
            inner = &a.expr;
        }
        let Expr::WindowFunction(wf) = inner else {
            return Err(plan_err(format!("unexpected window expression {e}")));
        };
        let name = wf.fun.name().to_ascii_lowercase();
        if !matches!(name.as_str(), "row_number" | "rank" | "dense_rank") {
            return Err(plan_err(format!(
                "{}: over a windowed aggregation only ROW_NUMBER, RANK and DENSE_RANK (top-N) are supported",
                name.to_ascii_uppercase()
            )));
        }
        let by_window = [WINDOW_START, WINDOW_END].iter().all(|bound| {
            wf.params
                .partition_by
                .iter()
                .any(|p| matches!(p, Expr::Column(c) if c.name == *bound))
        });
        if !by_window {
            return Err(plan_err(format!(
                "{}: a top-N ranks within each window: PARTITION BY window_start, window_end[, …]",
                name.to_ascii_uppercase()
            )));
        }
        let planning = PhysicalPlanningContext::default();
        functions.push(
            datafusion::physical_planner::create_window_expr(
                &simplified(e, window.input.schema())
                    .map_err(|err| plan_err(clean_df_error(&err.to_string())))?,
                window.input.schema(),
                state.execution_props(),
                &planning,
            )
            .map_err(|err| plan_err(clean_df_error(&err.to_string())))?,
        );
    }
    Ok(RankStage {
        pre,
        ranked_schema: nullable(window.input.schema().as_arrow()),
        functions,
        post,
    })
}

/// Adds `ORDER BY <event time>` to FIRST_VALUE/LAST_VALUE calls that have none.
fn order_by_event_time(e: &Expr, ts: &Expr) -> Expr {
    match e {
        Expr::AggregateFunction(f)
            if f.params.order_by.is_empty()
                && matches!(f.func.name(), "first_value" | "last_value") =>
        {
            let mut f = f.clone();
            f.params.order_by = vec![SortExpr::new(ts.clone(), true, false)];
            Expr::AggregateFunction(f)
        }
        Expr::Alias(a) => order_by_event_time(&a.expr, ts).alias(a.name.clone()),
        other => other.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(sql: &str) -> Result<Vec<StreamPlan>, EngineError> {
        plan_sql(sql, &Catalog::builtin()).map(|p| p.streams)
    }

    #[test]
    fn ohlc_plans_with_window_columns() {
        let p = plan(
            "CREATE STREAM ohlc_5s AS SELECT symbol, FIRST_VALUE(price) AS open, MAX(price) AS high, \
             SUM(price * volume) / SUM(volume) AS vwap, COUNT(*) AS n FROM market_ticks \
             GROUP BY symbol, TUMBLE(ts, INTERVAL '5' SECOND) EMIT ON WINDOW CLOSE;",
        )
        .unwrap();
        let names: Vec<_> = p[0]
            .output_schema
            .fields()
            .iter()
            .map(|f| f.name().clone())
            .collect();
        assert_eq!(
            names,
            [
                "symbol",
                "open",
                "high",
                "vwap",
                "n",
                "window_start",
                "window_end"
            ]
        );
        let StreamKind::Windowed(w) = &p[0].kind else {
            panic!("windowed")
        };
        assert_eq!(w.window, WindowSpec::Tumble { size_ms: 5000 });
        // SUM(volume) is shared by VWAP's denominator: 5 distinct aggregates.
        assert_eq!(w.aggregates.len(), 5);
        // FIRST_VALUE got the event-time ordering.
        assert_eq!(w.aggregates[0].inputs.len(), 2);
    }

    #[test]
    fn intervals_and_hop_order() {
        let p = plan(
            "CREATE STREAM r AS SELECT symbol, AVG(price) AS a FROM market_ticks \
             GROUP BY symbol, HOP(ts, INTERVAL '5' SECOND, INTERVAL '100' SECOND);",
        )
        .unwrap();
        let StreamKind::Windowed(w) = &p[0].kind else {
            panic!()
        };
        assert_eq!(
            w.window,
            WindowSpec::Hop {
                slide_ms: 5_000,
                size_ms: 100_000
            }
        );
        assert_eq!(p[0].emit, EmitMode::OnWindowClose);
        let p = plan(
            "CREATE STREAM s AS SELECT symbol, COUNT(*) AS c FROM market_ticks \
             GROUP BY symbol, SESSION(ts, INTERVAL '1 minute') EMIT CHANGES;",
        )
        .unwrap();
        let StreamKind::Windowed(w) = &p[0].kind else {
            panic!()
        };
        assert_eq!(w.window, WindowSpec::Session { gap_ms: 60_000 });
        assert_eq!(p[0].emit, EmitMode::Changes);
    }

    #[test]
    fn interval_join_conditions_split_into_keys_bounds_and_residual() {
        let p = plan(
            "CREATE STREAM j AS SELECT o.order_id, t.price FROM order_events o \
             LEFT JOIN market_ticks t ON t.symbol = o.symbol AND t.ts >= o.ts - INTERVAL '2' SECOND \
             AND o.ts + INTERVAL '1' SECOND > t.ts AND t.price > o.price;",
        )
        .unwrap();
        let StreamKind::Join(j) = &p[0].kind else {
            panic!("a join")
        };
        assert_eq!(j.kind, crate::join::JoinKind::Left);
        assert_eq!(
            j.condition,
            crate::join::JoinCondition::Interval {
                lower_ms: -2_000,
                upper_ms: 999
            }
        );
        assert_eq!((j.left.keys.len(), j.right.keys.len()), (1, 1));
        assert!(
            j.residual.is_some(),
            "t.price > o.price is checked per pair"
        );
    }

    #[test]
    fn asof_match_conditions_give_the_direction_and_offset() {
        use crate::join::{AsofDirection, JoinCondition, JoinKind};
        let join = |on: &str, left: &str| {
            let p = plan(&format!(
                "CREATE STREAM j AS SELECT o.order_id, t.price FROM order_events o \
                 {left} ASOF JOIN market_ticks t MATCH_CONDITION ({on}) ON o.symbol = t.symbol;"
            ))
            .unwrap();
            let StreamKind::Join(j) = &p[0].kind else {
                panic!("a join")
            };
            (j.kind, j.condition)
        };
        let asof = |direction, offset_ms| JoinCondition::Asof {
            direction,
            offset_ms,
        };
        assert_eq!(
            join("o.ts >= t.ts", ""),
            (JoinKind::Inner, asof(AsofDirection::Backward, 0))
        );
        assert_eq!(
            join("t.ts < o.ts", "LEFT"),
            (JoinKind::Left, asof(AsofDirection::Backward, -1))
        );
        assert_eq!(
            join("o.ts <= t.ts", "LEFT OUTER"),
            (JoinKind::Left, asof(AsofDirection::Forward, 0))
        );
        assert_eq!(
            join("o.ts + INTERVAL '1' SECOND < t.ts", ""),
            (JoinKind::Inner, asof(AsofDirection::Forward, 1_001))
        );
        let err = |sql: &str| plan(sql).unwrap_err().to_string();
        let e = err(
            "CREATE STREAM x AS SELECT o.order_id FROM order_events o ASOF JOIN market_ticks t \
             MATCH_CONDITION (o.ts >= t.ts) ON o.symbol = t.symbol AND t.price > o.price;",
        );
        assert!(e.contains("only equalities"), "a residual: {e}");
        let e = err(
            "CREATE STREAM x AS SELECT o.order_id FROM order_events o ASOF JOIN market_ticks t \
             MATCH_CONDITION (o.price >= t.price) ON o.symbol = t.symbol;",
        );
        assert!(e.contains("only equalities"), "not the event times: {e}");
    }

    #[test]
    fn temporal_joins_are_backward_asof_joins_on_the_version_time() {
        use crate::join::{AsofDirection, JoinCondition, JoinKind};
        let p = plan(
            "CREATE STREAM q AS SELECT symbol, ts, ask FROM market_ticks WHERE exchange = 'NASDAQ'; \
             CREATE STREAM j AS SELECT o.order_id, v.ask FROM order_events o \
             LEFT JOIN q FOR SYSTEM_TIME AS OF o.ts AS v ON o.symbol = v.symbol;",
        )
        .unwrap();
        let StreamKind::Join(j) = &p[1].kind else {
            panic!("a join")
        };
        assert_eq!(j.kind, JoinKind::Left);
        let backward = JoinCondition::Asof {
            direction: AsofDirection::Backward,
            offset_ms: 0,
        };
        assert_eq!(j.condition, backward);
        let err = |sql: &str| plan(sql).unwrap_err().to_string();
        let e = err(
            "CREATE STREAM pos AS SELECT trader_id, SUM(quantity) AS q FROM order_events \
               GROUP BY trader_id HAVING SUM(quantity) > 0; \
             CREATE STREAM j AS SELECT o.order_id, p.q FROM order_events o \
             JOIN pos FOR SYSTEM_TIME AS OF o.ts AS p ON o.trader_id = p.trader_id;",
        );
        assert!(
            e.contains("is an updating stream") && e.contains("HAVING"),
            "{e}"
        );
        let e = err(
            "CREATE STREAM pos AS SELECT trader_id, SUM(quantity) AS q FROM order_events GROUP BY trader_id; \
             CREATE STREAM top AS SELECT trader_id, MAX(q) AS q FROM pos GROUP BY trader_id; \
             CREATE STREAM j AS SELECT o.order_id, t.q FROM order_events o \
             JOIN top FOR SYSTEM_TIME AS OF o.ts AS t ON o.trader_id = t.trader_id;",
        );
        assert!(e.contains("itself an updating stream"), "{e}");
        let e = err("CREATE STREAM j AS SELECT symbol FROM market_ticks FOR SYSTEM_TIME AS OF ts;");
        assert!(e.contains("version of a JOIN's right table"), "{e}");
    }

    #[test]
    fn a_temporal_join_reads_an_updating_aggregate_through_its_running_versions() {
        use crate::join::{AsofDirection, JoinCondition};
        let p = plan(
            "CREATE STREAM pos AS SELECT trader_id, SUM(quantity) AS q, COUNT(*) AS n \
               FROM order_events WHERE status = 'filled' GROUP BY trader_id; \
             CREATE STREAM j AS SELECT o.order_id, pos.q, p2.n FROM order_events o \
             JOIN pos FOR SYSTEM_TIME AS OF o.ts ON o.trader_id = pos.trader_id \
             LEFT JOIN market_ticks p2 ON FALSE;",
        );
        // Only one join per stream; the second is refused, not misread.
        assert!(p.is_err());
        let p = plan(
            "CREATE STREAM pos AS SELECT trader_id, SUM(quantity) AS q, COUNT(*) AS n \
               FROM order_events WHERE status = 'filled' GROUP BY trader_id; \
             CREATE STREAM j AS SELECT o.order_id, pos.q, pos.n FROM order_events o \
             JOIN pos FOR SYSTEM_TIME AS OF o.ts ON o.trader_id = pos.trader_id; \
             CREATE STREAM k AS SELECT o.order_id, v.q FROM order_events o \
             LEFT JOIN pos FOR SYSTEM_TIME AS OF o.ts AS v ON o.trader_id = v.trader_id;",
        )
        .unwrap();
        let names: Vec<&str> = p.iter().map(|s| s.name.as_str()).collect();
        // One versions stream, planned before its first reader.
        assert_eq!(names, ["pos", "pos__versions", "j", "k"]);
        assert!(matches!(p[0].kind, StreamKind::Updating(_)));
        let StreamKind::Over(_) = &p[1].kind else {
            panic!("the versions are running aggregates")
        };
        let columns: Vec<&str> = p[1]
            .output_schema
            .fields()
            .iter()
            .map(|f| f.name().as_str())
            .collect();
        assert_eq!(columns, ["trader_id", "q", "n", "ts"]);
        for join in &p[2..] {
            assert_eq!(join.inputs, ["order_events", "pos__versions"]);
            let StreamKind::Join(j) = &join.kind else {
                panic!("a join")
            };
            let backward = JoinCondition::Asof {
                direction: AsofDirection::Backward,
                offset_ms: 0,
            };
            assert_eq!(j.condition, backward);
        }
        let e = plan(
            "CREATE STREAM pos AS SELECT trader_id, SUM(quantity) AS q FROM order_events GROUP BY trader_id; \
             CREATE STREAM pos__versions AS SELECT * FROM order_events; \
             CREATE STREAM j AS SELECT o.order_id, p.q FROM order_events o \
             JOIN pos FOR SYSTEM_TIME AS OF o.ts AS p ON o.trader_id = p.trader_id;",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("name it differently"), "{e}");
    }

    #[test]
    fn windowed_streams_join_on_equal_window_ends() {
        let p = plan(
            "CREATE STREAM a AS SELECT symbol, COUNT(*) AS n FROM market_ticks \
               GROUP BY TUMBLE(ts, INTERVAL '5' SECOND), symbol; \
             CREATE STREAM b AS SELECT symbol, SUM(quantity) AS q FROM order_events \
               GROUP BY TUMBLE(ts, INTERVAL '5' SECOND), symbol; \
             CREATE STREAM j AS SELECT a.window_end, a.symbol, a.n, b.q FROM a LEFT JOIN b \
               ON a.symbol = b.symbol AND a.window_start = b.window_start AND a.window_end = b.window_end;",
        )
        .unwrap();
        let StreamKind::Join(j) = &p[2].kind else {
            panic!("a join")
        };
        assert_eq!(
            j.condition,
            crate::join::JoinCondition::Interval {
                lower_ms: 0,
                upper_ms: 0
            }
        );
        assert_eq!(j.left.keys.len(), 3, "the window bounds are keys too");
    }

    #[test]
    fn joins_that_would_keep_every_row_are_refused() {
        let err = |sql: &str| plan(sql).unwrap_err().to_string();
        let e = err(
            "CREATE STREAM x AS SELECT o.order_id FROM order_events o JOIN market_ticks t \
             ON o.symbol = t.symbol AND t.ts >= o.ts;",
        );
        assert!(e.contains("bounded both ways"), "one bound only: {e}");
        let e = err(
            "CREATE STREAM x AS SELECT o.order_id FROM order_events o JOIN market_ticks t \
             ON t.ts BETWEEN o.ts AND o.ts + INTERVAL '1' SECOND;",
        );
        assert!(e.contains("at least one equality"), "no key: {e}");
        let e = err(
            "CREATE STREAM x AS SELECT o.order_id FROM order_events o JOIN market_ticks t \
             ON o.symbol = t.symbol AND t.ts BETWEEN o.ts + INTERVAL '1' SECOND AND o.ts;",
        );
        assert!(e.contains("admit no pair"), "empty interval: {e}");
        let e = err(
            "CREATE STREAM x AS SELECT o.order_id FROM order_events o FULL JOIN market_ticks t \
             ON o.symbol = t.symbol AND t.ts BETWEEN o.ts AND o.ts + INTERVAL '1' SECOND;",
        );
        assert!(e.contains("only JOIN and LEFT JOIN"), "FULL: {e}");
    }

    #[test]
    fn joins_without_time_bounds_are_updating_streams_keyed_by_the_sides_keys() {
        let p = plan(
            "CREATE STREAM activity AS SELECT order_id, symbol, COUNT(*) AS n \
             FROM order_events GROUP BY order_id, symbol;\n\
             CREATE STREAM marks WITH ('state.ttl' = '1 hour') AS \
             SELECT a.order_id, a.symbol, a.n, t.price FROM activity a \
             LEFT JOIN market_ticks t ON a.symbol = t.symbol AND t.price > 1;",
        )
        .unwrap();
        let marks = &p[1];
        assert_eq!(marks.emit, EmitMode::Changes);
        // market_ticks' key (symbol) is fixed by ON: the left key suffices.
        assert_eq!(marks.key_columns, ["order_id", "symbol"]);
        let StreamKind::Join(j) = &marks.kind else {
            panic!("a join")
        };
        assert_eq!(
            j.condition,
            crate::join::JoinCondition::Regular {
                ttl_ms: Some(3_600_000)
            }
        );
        assert!(j.left.changelog && !j.right.changelog);
        assert!(j.residual.is_some(), "the rest of ON is checked per pair");
        let read = marks.as_input.as_ref().unwrap();
        assert!(
            read.changelog,
            "later streams read it as upserts and deletions"
        );

        let err = |sql: &str| plan(sql).unwrap_err().to_string();
        let e = err(
            "CREATE TABLE fills (id BIGINT, symbol VARCHAR, ts TIMESTAMP(3), \
             WATERMARK FOR ts AS ts - INTERVAL '1' SECOND) WITH ('format' = 'json');\n\
             CREATE STREAM x AS SELECT f.id, t.price FROM fills f JOIN market_ticks t ON f.symbol = t.symbol;",
        );
        assert!(
            e.contains("`fills` has no key") && e.contains("'key'"),
            "{e}"
        );
        let e = err(
            "CREATE STREAM x AS SELECT t.price, b.quantity FROM market_ticks t \
             JOIN book_updates b ON t.symbol = b.symbol;",
        );
        assert!(
            e.contains("key column `symbol`"),
            "the left key unselected: {e}"
        );
        let e = err(
            "CREATE STREAM x AS SELECT o.symbol, t.price FROM order_events o JOIN market_ticks t \
             ON o.symbol = t.symbol EMIT ON WINDOW CLOSE;",
        );
        assert!(e.contains("EMIT ON WINDOW CLOSE needs a window"), "{e}");
        let e = err(
            "CREATE STREAM x WITH ('state.ttl' = '1 hour') AS SELECT o.order_id FROM order_events o \
             JOIN market_ticks t ON o.symbol = t.symbol AND t.ts BETWEEN o.ts AND o.ts + INTERVAL '1' SECOND;",
        );
        assert!(e.contains("joins without time bounds"), "{e}");
    }

    #[test]
    fn clear_errors_for_unsupported_sql() {
        let err = |sql: &str| plan(sql).unwrap_err().to_string();
        let e = err("CREATE STREAM x AS\nSELECT * FROM trades;");
        assert!(
            e.contains("unknown source table `trades`") && e.contains("line 2"),
            "{e}"
        );
        let e = err(
            "CREATE STREAM x AS SELECT a.symbol FROM market_ticks a JOIN book_updates b ON a.symbol = b.symbol AND b.ts < a.ts;",
        );
        assert!(e.contains("bounded both ways in ON"), "{e}");
        let e = err(
            "CREATE STREAM x AS WITH t AS (SELECT * FROM market_ticks) SELECT t.symbol FROM t, book_updates;",
        );
        assert!(e.contains("exactly one source table"), "{e}");
        let e = err(
            "CREATE STREAM x AS WITH t AS (SELECT * FROM order_events)\nSELECT * FROM t WHERE symbol IN (SELECT symbol FROM market_ticks);",
        );
        assert!(
            e.contains("exactly one source table") && e.contains("line 2"),
            "{e}"
        );
        let e = err(
            "CREATE STREAM x AS SELECT n FROM (SELECT symbol, COUNT(*) AS n FROM market_ticks GROUP BY symbol) AS c;",
        );
        assert!(
            e.contains("select the GROUP BY column `symbol` unchanged"),
            "{e}"
        );
        for (sql, why) in [
            (
                "FIRST_VALUE(price) OVER (PARTITION BY symbol ORDER BY ts)",
                "UNBOUNDED PRECEDING grows without end",
            ),
            (
                "SUM(CAST(volume AS DECIMAL(10, 2))) OVER (PARTITION BY symbol ORDER BY ts ROWS UNBOUNDED PRECEDING)",
                "only SUM, COUNT, AVG, MIN and MAX of a number",
            ),
            (
                "LAG(price) OVER (PARTITION BY symbol ORDER BY price)",
                "OVER needs `ORDER BY ts`",
            ),
            (
                "LAG(price) OVER (PARTITION BY symbol)",
                "OVER needs `ORDER BY ts`",
            ),
            ("ROW_NUMBER() OVER (ORDER BY ts)", "never ends"),
            (
                "AVG(price) OVER (ORDER BY ts ROWS BETWEEN 2 PRECEDING AND UNBOUNDED FOLLOWING)",
                "waits for the end of the stream",
            ),
            (
                "AVG(price) OVER (ORDER BY ts RANGE BETWEEN CURRENT ROW AND INTERVAL '1' SECOND FOLLOWING)",
                "RANGE … FOLLOWING",
            ),
            (
                "LAG(price) OVER (PARTITION BY symbol ORDER BY ts), LAG(price) OVER (PARTITION BY exchange ORDER BY ts) AS b",
                "same PARTITION BY",
            ),
            ("LAG(price, volume) OVER (ORDER BY ts)", "integer literal"),
        ] {
            let e = err(&format!(
                "CREATE STREAM x AS SELECT symbol, {sql} FROM market_ticks;"
            ));
            assert!(e.contains(why), "{sql}: {e}");
        }
        let top_n = |rank: &str, emit: &str| {
            format!(
                "CREATE STREAM x AS SELECT * FROM (SELECT symbol, window_start, window_end, COUNT(*) AS n, \
                 {rank} AS rn FROM market_ticks GROUP BY symbol, TUMBLE(ts, INTERVAL '1' SECOND)) WHERE rn <= 3 {emit};"
            )
        };
        for (rank, emit, why) in [
            (
                "ROW_NUMBER() OVER (PARTITION BY window_start, window_end ORDER BY COUNT(*) DESC)",
                "EMIT CHANGES",
                "EMIT ON WINDOW CLOSE",
            ),
            (
                "ROW_NUMBER() OVER (ORDER BY COUNT(*) DESC)",
                "",
                "PARTITION BY window_start, window_end",
            ),
            (
                "NTILE(4) OVER (PARTITION BY window_start, window_end ORDER BY COUNT(*))",
                "",
                "only ROW_NUMBER, RANK and DENSE_RANK",
            ),
        ] {
            let e = err(&top_n(rank, emit));
            assert!(e.contains(why), "{rank} {emit}: {e}");
        }
        let e = err(
            "CREATE STREAM x AS SELECT symbol, COUNT(*), LAG(symbol) OVER (ORDER BY ts) FROM market_ticks GROUP BY symbol, TUMBLE(ts, INTERVAL '1' SECOND);",
        );
        assert!(e.contains("OVER") && e.contains("column 45"), "{e}");
        let e = err(
            "CREATE STREAM x AS SELECT UPPER(symbol) AS symbol, COUNT(*) FROM market_ticks GROUP BY symbol;",
        );
        assert!(e.contains("GROUP BY column `symbol` unchanged"), "{e}");
        let e = err("CREATE STREAM x AS SELECT nosuch FROM market_ticks;");
        assert!(e.contains("nosuch"), "{e}");
        let e = err(
            "CREATE STREAM x AS SELECT symbol FROM market_ticks GROUP BY symbol, TUMBLE(price, INTERVAL '1' SECOND);",
        );
        assert!(e.contains("event-time column `ts`"), "{e}");
        let e = err(
            "CREATE STREAM x AS SELECT symbol FROM market_ticks GROUP BY symbol, HOP(ts, INTERVAL '1' MINUTE, INTERVAL '5' SECOND);",
        );
        assert!(e.contains("slide"), "{e}");
        let e = err("CREATE STREAM x AS SELEC symbol FROM market_ticks;");
        assert!(e.contains("Line: 1"), "{e}");
    }

    #[test]
    fn streams_read_earlier_streams() {
        let p = plan(
            "CREATE STREAM moves AS SELECT symbol, ts, price FROM market_ticks WHERE price > 0;\n\
             CREATE STREAM bars AS SELECT symbol, MAX(price) AS high FROM moves \
             GROUP BY symbol, TUMBLE(ts, INTERVAL '1' SECOND);\n\
             CREATE STREAM wide AS SELECT symbol, high FROM bars WHERE high > 100;",
        )
        .unwrap();
        assert_eq!(p[1].inputs, ["moves"]);
        assert_eq!(p[2].inputs, ["bars"]);
        let moves = p[0].as_input.as_ref().unwrap();
        assert_eq!(
            (moves.event_time.as_str(), moves.key_columns.as_slice()),
            ("ts", &["symbol".to_string()][..])
        );
        // A windowed stream's rows are timed by their window's end.
        assert_eq!(p[1].as_input.as_ref().unwrap().event_time, "window_end");
        // `wide` drops `window_end`, its event time: nothing can read it,
        // which is only an error for a stream that tries.
        assert!(p[2].as_input.is_err());
    }

    #[test]
    fn union_all_merges_tables_and_streams() {
        let p = plan(
            "CREATE STREAM big AS SELECT symbol, ts, CAST(volume AS INT) AS size FROM market_ticks WHERE volume > 900;\n\
             CREATE STREAM merged AS SELECT symbol, ts, size FROM big \
             UNION ALL SELECT symbol, ts, quantity AS size FROM order_events WHERE quantity > 100 \
             UNION ALL SELECT symbol, ts, CAST(volume AS INT) FROM market_ticks WHERE volume < 2;",
        )
        .unwrap();
        assert_eq!(p[1].inputs, ["big", "order_events", "market_ticks"]);
        let StreamKind::Stateless(s) = &p[1].kind else {
            panic!("a row-by-row stream")
        };
        assert_eq!(s.branches.len(), 3);
        // Names come from the first branch; INT and BIGINT coerce to BIGINT.
        let size = p[1].output_schema.field_with_name("size").unwrap();
        assert_eq!(size.data_type(), &DataType::Int64);
        assert_eq!(p[1].as_input.as_ref().unwrap().event_time, "ts");
    }

    #[test]
    fn a_row_key_exists_only_where_it_identifies_one_result_row() {
        let p = plan(
            "CREATE STREAM bars AS SELECT symbol, MAX(price) AS high FROM market_ticks \
             GROUP BY symbol, TUMBLE(ts, INTERVAL '5' SECOND) EMIT ON WINDOW CLOSE;\n\
             CREATE STREAM counts AS SELECT COUNT(*) AS n FROM market_ticks \
             GROUP BY symbol, TUMBLE(ts, INTERVAL '5' SECOND) EMIT ON WINDOW CLOSE;\n\
             CREATE STREAM latest AS SELECT symbol, LAST_VALUE(price) AS price FROM market_ticks GROUP BY symbol;\n\
             CREATE STREAM total AS SELECT COUNT(*) AS n FROM market_ticks;\n\
             CREATE STREAM big AS SELECT symbol, price FROM market_ticks WHERE volume > 100;",
        )
        .unwrap();
        let key = |name: &str| p.iter().find(|s| s.name == name).unwrap().row_key.clone();
        assert_eq!(
            key("bars"),
            Some(vec!["window_start".into(), "symbol".into()])
        );
        // The group key is not an output column: rows of a window share the key.
        assert_eq!(key("counts"), None);
        assert_eq!(key("latest"), Some(vec!["symbol".into()]));
        assert_eq!(key("total"), Some(vec![]), "one row");
        assert_eq!(key("big"), None, "row by row: appended");
    }

    #[test]
    fn a_group_by_without_a_window_is_an_updating_stream() {
        let p = plan(
            "CREATE STREAM latest WITH ('state.ttl' = '1 day') AS\n\
             SELECT symbol, exchange, LAST_VALUE(bid) AS bid, LAST_VALUE(ask) AS ask FROM market_ticks GROUP BY symbol, exchange;\n\
             CREATE STREAM spread AS SELECT symbol, MAX(bid) AS best_bid, MIN(ask) AS best_ask FROM latest \
             GROUP BY symbol HAVING MAX(bid) > MIN(ask);",
        )
        .unwrap();
        assert_eq!(p[0].emit, EmitMode::Changes);
        assert_eq!(p[0].key_columns, ["symbol", "exchange"]);
        let StreamKind::Updating(u) = &p[0].kind else {
            panic!("updating")
        };
        assert_eq!(u.ttl_ms, Some(86_400_000));
        // LAST_VALUE is by event time.
        assert_eq!(u.aggregates[0].inputs.len(), 2);
        let latest = p[0].as_input.as_ref().unwrap();
        assert!(latest.changelog);
        let StreamKind::Updating(s) = &p[1].kind else {
            panic!("updating")
        };
        assert_eq!(s.input_keys.as_deref(), Some(&[0, 1][..]));
    }

    #[test]
    fn clear_errors_for_updating_streams() {
        let err = |sql: &str| plan(sql).unwrap_err().to_string();
        let latest = "CREATE STREAM latest AS SELECT symbol, exchange, LAST_VALUE(price) AS price FROM market_ticks GROUP BY symbol, exchange;\n";
        for reader in [
            "CREATE STREAM r AS SELECT symbol, price FROM latest WHERE price > 1;",
            "CREATE STREAM r AS SELECT symbol, LAG(price) OVER (PARTITION BY symbol ORDER BY price) AS p FROM latest;",
        ] {
            let e = err(&format!("{latest}{reader}"));
            assert!(e.contains("`latest` is an updating stream"), "{e}");
        }
        let e = err(&format!(
            "{latest}CREATE STREAM r WITH ('state.ttl' = '1 h') AS SELECT symbol, COUNT(*) AS n FROM latest GROUP BY symbol;"
        ));
        assert!(
            e.contains("'state.ttl' applies to aggregates of append-only inputs"),
            "{e}"
        );
        let e = err(
            "CREATE STREAM r WITH ('state.ttl' = 'soon') AS SELECT symbol, COUNT(*) AS n FROM market_ticks GROUP BY symbol;",
        );
        assert!(
            e.contains("'state.ttl' = 'soon'") && e.contains("line 1"),
            "{e}"
        );
        let e = err(
            "CREATE STREAM r WITH ('retention' = '1 h') AS SELECT symbol, COUNT(*) AS n FROM market_ticks GROUP BY symbol;",
        );
        assert!(e.contains("unknown stream option 'retention'"), "{e}");
        let e = err(
            "CREATE STREAM r AS SELECT symbol, COUNT(*) AS n FROM market_ticks GROUP BY symbol EMIT ON WINDOW CLOSE;",
        );
        assert!(e.contains("needs a window"), "{e}");
    }

    #[test]
    fn clear_errors_for_streams_that_cannot_be_read() {
        let err = |sql: &str| plan(sql).unwrap_err().to_string();
        let e = err(
            "CREATE STREAM a AS SELECT * FROM b;\nCREATE STREAM b AS SELECT * FROM market_ticks;",
        );
        assert!(
            e.contains("defined after it") && e.contains("line 1"),
            "{e}"
        );
        let e = err(
            "CREATE STREAM a AS SELECT symbol, COUNT(*) AS n FROM market_ticks \
             GROUP BY symbol, TUMBLE(ts, INTERVAL '1' SECOND) EMIT CHANGES;\n\
             CREATE STREAM b AS SELECT * FROM a;",
        );
        assert!(
            e.contains("cannot read stream `a`") && e.contains("EMIT CHANGES"),
            "{e}"
        );
        let e = err(
            "CREATE STREAM a AS SELECT symbol, price FROM market_ticks;\n\
             CREATE STREAM b AS SELECT symbol, COUNT(*) AS n FROM a GROUP BY symbol, TUMBLE(ts, INTERVAL '1' SECOND);",
        );
        assert!(
            e.contains("event-time column `ts`") && e.contains("line 2"),
            "{e}"
        );
        let e = err("CREATE STREAM market_ticks AS SELECT * FROM order_events;");
        assert!(e.contains("name of a source table"), "{e}");
        let e = err(
            "CREATE STREAM u AS SELECT symbol FROM market_ticks UNION SELECT symbol FROM order_events;",
        );
        assert!(e.contains("use UNION ALL"), "{e}");
        let e = err(
            "CREATE STREAM u AS SELECT symbol, COUNT(*) AS n FROM market_ticks GROUP BY symbol, TUMBLE(ts, INTERVAL '1' SECOND) \
             UNION ALL SELECT symbol, quantity FROM order_events;",
        );
        assert!(e.contains("UNION ALL branch"), "{e}");
        let e = err(
            "CREATE STREAM u AS SELECT symbol, price FROM market_ticks UNION ALL SELECT symbol FROM order_events;",
        );
        assert!(e.contains("u"), "{e}");
    }

    #[test]
    fn ctes_and_subqueries_become_row_steps() {
        let p = plan(
            "CREATE STREAM s AS WITH q AS (SELECT symbol, ask - bid AS spread FROM market_ticks)\n\
             SELECT symbol, spread FROM (SELECT * FROM q WHERE spread > 0.01) AS w WHERE symbol <> 'X';",
        )
        .unwrap();
        assert_eq!(p[0].inputs, ["market_ticks"]);
        let StreamKind::Stateless(s) = &p[0].kind else {
            panic!("a row-by-row stream")
        };
        let kinds: Vec<&str> = s.branches[0]
            .iter()
            .map(|s| match s {
                RowStep::Filter(_) => "filter",
                RowStep::Project(_) => "project",
            })
            .collect();
        // Both WHEREs apply, inner first; projections as DataFusion plans them.
        assert_eq!(kinds.iter().filter(|k| **k == "filter").count(), 2);
        assert_eq!(kinds.first(), Some(&"project"), "{kinds:?}");
        assert_eq!(kinds.last(), Some(&"project"), "{kinds:?}");
        let p = plan(
            "CREATE STREAM s AS SELECT * FROM (SELECT symbol, ts, LAG(price) OVER (PARTITION BY symbol ORDER BY ts) AS prev FROM market_ticks) WHERE prev > 0;",
        )
        .unwrap();
        assert!(matches!(p[0].kind, StreamKind::Over(_)));
    }

    #[test]
    fn fingerprint_tracks_query_changes() {
        let a = plan("CREATE STREAM x AS SELECT symbol, COUNT(*) AS c FROM market_ticks GROUP BY symbol, TUMBLE(ts, INTERVAL '5' SECOND);").unwrap();
        let b = plan("CREATE STREAM x AS SELECT symbol, COUNT(*) AS c FROM market_ticks GROUP BY symbol, TUMBLE(ts, INTERVAL '5' SECOND);").unwrap();
        let c = plan("CREATE STREAM x AS SELECT symbol, COUNT(*) AS c FROM market_ticks GROUP BY symbol, TUMBLE(ts, INTERVAL '10' SECOND);").unwrap();
        assert_eq!(a[0].fingerprint, b[0].fingerprint);
        assert_ne!(a[0].fingerprint, c[0].fingerprint);
    }

    /// Checkpoints restore only into streams with the same fingerprint: if
    /// this value changes, every `last-state` upgrade starts over. Change it
    /// only on purpose (and say so in the release notes).
    #[test]
    fn fingerprint_is_pinned_and_ignores_layout() {
        let pinned = plan("CREATE STREAM x AS SELECT symbol, COUNT(*) AS c FROM market_ticks GROUP BY symbol, TUMBLE(ts, INTERVAL '5' SECOND);").unwrap();
        let relaid = plan("create stream x as\n  -- per symbol\n  select SYMBOL,   count(*) as C\n  from MARKET_TICKS\n  group by symbol, tumble(ts, interval '5' second)\n;").unwrap();
        assert_eq!(pinned[0].fingerprint, "b541c7de613ae7b7");
        assert_eq!(relaid[0].fingerprint, pinned[0].fingerprint);
        let quoted = plan("CREATE STREAM x AS SELECT \"symbol\", COUNT(*) AS c FROM market_ticks GROUP BY symbol, TUMBLE(ts, INTERVAL '5' SECOND);").unwrap();
        assert_ne!(quoted[0].fingerprint, pinned[0].fingerprint);
    }

    #[test]
    fn hop_and_interval_bounds() {
        let hop = |slide: &str, size: &str| {
            plan(&format!(
                "CREATE STREAM x AS SELECT symbol, COUNT(*) AS c FROM market_ticks \
                 GROUP BY symbol, HOP(ts, INTERVAL {slide}, INTERVAL {size});"
            ))
        };
        let e = hop("'1' MILLISECOND", "'1' DAY").unwrap_err().to_string();
        assert!(e.contains("86400000 slices"), "{e}");
        // 7 s slide over 1 day: panes of gcd(7 s, 1 day) = 1 s, 86 400 per window.
        assert!(hop("'7' SECOND", "'1' DAY").is_err());
        hop("'1' MINUTE", "'1' DAY").expect("1 440 panes are fine");
        let e = hop("'1' DAY", "'400' DAY").unwrap_err().to_string();
        assert!(e.contains("at most 366 days"), "{e}");
        assert!(hop("'inf' SECOND", "'1' DAY").is_err());
    }

    #[test]
    fn deep_sql_is_refused_before_planning() {
        let sql = format!(
            "CREATE STREAM x AS SELECT symbol, 1{} AS n FROM market_ticks;",
            "+1".repeat(50_000)
        );
        let e = plan(&sql).unwrap_err().to_string();
        assert!(e.contains("too complex to plan"), "{e}");
        // Just under the bound still plans, on the planner's own stack.
        let sql = format!(
            "CREATE STREAM x AS SELECT symbol, 1{} AS n FROM market_ticks;",
            "+1".repeat(limits::MAX_EXPRESSION_DEPTH - 10)
        );
        plan(&sql).expect("plans");
    }
}
