//! The versions of an updating aggregate, for a temporal join that reads it
//! as a versioned table: `JOIN positions FOR SYSTEM_TIME AS OF o.ts AS p`
//! where `positions` is `SELECT k, SUM(x) … FROM t GROUP BY k`.
//!
//! An updating stream's changes follow batch boundaries and carry no event
//! time, so "the row valid at `o.ts`" is not defined on them. It is on the
//! aggregate's input: the version of key `k` at time `T` is the aggregate
//! over `k`'s rows with event time at or before `T`, which is what
//! `SUM(x) OVER (PARTITION BY k ORDER BY ts RANGE BETWEEN UNBOUNDED
//! PRECEDING AND CURRENT ROW)` gives at each of those rows. So the planner
//! adds a hidden stream, `<stream>__versions`, with the aggregate rewritten
//! that way plus the input's event-time column, and the temporal join reads
//! it as the ASOF join it is. Each version comes out once the watermark has
//! passed it (it is final then), as a batch computation over the same rows
//! gives.
//!
//! Only a plain aggregate has such versions: one table or stream with an
//! event time, a GROUP BY of expressions, no HAVING (a key that HAVING
//! removes would need versions that are absences), no DISTINCT.

use std::collections::HashSet;
use std::ops::ControlFlow;

use datafusion::prelude::SessionContext;
use datafusion::sql::sqlparser::ast::{
    Expr as SqlExpr, GroupByExpr, Ident, OrderByExpr, OrderByOptions, SelectItem, SetExpr,
    Statement, TableFactor, Value, VisitMut, VisitorMut, WindowFrame, WindowFrameBound,
    WindowFrameUnits, WindowSpec, WindowType,
};
use datafusion::sql::sqlparser::dialect::GenericDialect;
use datafusion::sql::sqlparser::parser::Parser;

use crate::catalog::Catalog;
use crate::sql::StreamDef;

/// Name of the hidden stream holding the versions of updating stream `of`.
pub(super) fn versions_name(of: &str) -> String {
    format!("{of}__versions")
}

/// The table or stream a temporal join (`JOIN t FOR SYSTEM_TIME AS OF …`)
/// of `def` reads as its versioned table, if `def` has one.
pub(super) fn versioned_table(def: &StreamDef) -> Option<String> {
    let (text, syntax) = super::join::strip_join_syntax(&def.query);
    syntax.system_time.as_ref()?;
    let mut statements = Parser::parse_sql(&GenericDialect {}, &text).ok()?;
    let Statement::Query(query) = statements.pop()? else {
        return None;
    };
    let SetExpr::Select(select) = query.body.as_ref() else {
        return None;
    };
    let join = select.from.iter().flat_map(|f| f.joins.iter()).next()?;
    match &join.relation {
        TableFactor::Table { name, .. } => Some(name.to_string()),
        _ => None,
    }
}

/// The definition of the versions stream of updating stream `of` (its
/// `CREATE STREAM` as written), reading `inputs`; or why it has none.
pub(super) fn versions_def(of: &StreamDef, inputs: &Catalog) -> Result<StreamDef, String> {
    let not_versioned = |why: &str| {
        format!(
            "`{}` is an updating stream; a temporal join reads the versions of a plain aggregate (`SELECT k, SUM(x) … FROM t GROUP BY k`, the aggregate of each key's rows up to a time), and {why}. Compute the versions as running aggregates (`SUM(x) OVER (PARTITION BY k ORDER BY ts)`), or join the updating stream without time bounds for its current row",
            of.name
        )
    };
    let mut statements = Parser::parse_sql(&GenericDialect {}, &of.query)
        .map_err(|_| not_versioned("its query does not parse on its own"))?;
    let Some(Statement::Query(mut query)) = statements.pop() else {
        return Err(not_versioned("it is not a SELECT"));
    };
    if query.with.is_some() || query.order_by.is_some() || query.limit_clause.is_some() {
        return Err(not_versioned("it has a WITH, ORDER BY or LIMIT"));
    }
    let SetExpr::Select(select) = query.body.as_mut() else {
        return Err(not_versioned("it is not one SELECT"));
    };
    if select.having.is_some() {
        return Err(not_versioned(
            "it has a HAVING (a key it removes would have versions that are absences)",
        ));
    }
    if select.distinct.is_some() {
        return Err(not_versioned("it is a SELECT DISTINCT"));
    }
    let [from] = select.from.as_slice() else {
        return Err(not_versioned("it reads more than one table"));
    };
    let TableFactor::Table { name, .. } = &from.relation else {
        return Err(not_versioned("it reads a subquery"));
    };
    if !from.joins.is_empty() {
        return Err(not_versioned("it is a join"));
    }
    let input = inputs
        .get(&name.to_string())
        .ok_or_else(|| format!("unknown table or stream `{name}`"))?;
    if input.event_time.is_empty() {
        return Err(not_versioned(&format!(
            "it aggregates `{}`, itself an updating stream, whose changes carry no event time",
            input.name
        )));
    }
    let event_time = input.event_time.clone();
    let GroupByExpr::Expressions(keys, modifiers) = &select.group_by else {
        return Err(not_versioned("it groups by ALL"));
    };
    if keys.is_empty() || !modifiers.is_empty() {
        return Err(not_versioned("it is not a GROUP BY of expressions"));
    }
    if keys
        .iter()
        .any(|k| matches!(k, SqlExpr::Value(v) if matches!(v.value, Value::Number(..))))
    {
        return Err(not_versioned(
            "it groups by column positions (name the expressions)",
        ));
    }
    let over = WindowType::WindowSpec(WindowSpec {
        window_name: None,
        partition_by: keys.clone(),
        order_by: vec![OrderByExpr {
            expr: SqlExpr::Identifier(Ident::new(&event_time)),
            options: OrderByOptions {
                asc: Some(true),
                nulls_first: None,
            },
            with_fill: None,
        }],
        window_frame: Some(WindowFrame {
            units: WindowFrameUnits::Range,
            start_bound: WindowFrameBound::Preceding(None),
            end_bound: Some(WindowFrameBound::CurrentRow),
        }),
    });
    let mut running = RunningAggregates {
        aggregates: aggregate_names(),
        over,
    };
    for item in &mut select.projection {
        let output = match item {
            SelectItem::UnnamedExpr(SqlExpr::Identifier(i)) => Some(&i.value),
            SelectItem::ExprWithAlias { alias, .. } => Some(&alias.value),
            _ => None,
        };
        if output.is_some_and(|o| o.eq_ignore_ascii_case(&event_time)) {
            return Err(not_versioned(&format!(
                "an output column is named `{event_time}`, which its versions need for their time"
            )));
        }
        let _ = item.visit(&mut running);
    }
    select.group_by = GroupByExpr::Expressions(vec![], vec![]);
    select
        .projection
        .push(SelectItem::UnnamedExpr(SqlExpr::Identifier(Ident::new(
            &event_time,
        ))));
    Ok(StreamDef {
        name: versions_name(&of.name),
        query: query.to_string(),
        emit: None,
        line: of.line,
        state_ttl_ms: of.state_ttl_ms,
    })
}

/// Names (lower case) of the aggregate functions DataFusion knows.
fn aggregate_names() -> HashSet<String> {
    let ctx = SessionContext::new();
    let state = ctx.state();
    state
        .aggregate_functions()
        .iter()
        .flat_map(|(name, f)| {
            std::iter::once(name.to_ascii_lowercase())
                .chain(f.aliases().iter().map(|a| a.to_ascii_lowercase()))
        })
        .collect()
}

/// Turns every aggregate call into its running form over `over`.
struct RunningAggregates {
    aggregates: HashSet<String>,
    over: WindowType,
}

impl VisitorMut for RunningAggregates {
    type Break = ();

    fn post_visit_expr(&mut self, expr: &mut SqlExpr) -> ControlFlow<()> {
        let SqlExpr::Function(f) = expr else {
            return ControlFlow::Continue(());
        };
        let name = f.name.to_string().to_ascii_lowercase();
        if f.over.is_none() && self.aggregates.contains(&name) {
            f.over = Some(self.over.clone());
        }
        ControlFlow::Continue(())
    }
}
