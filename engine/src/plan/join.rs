//! Planning joins in event time:
//! - interval: `FROM a JOIN b ON a.k = b.k AND b.ts BETWEEN a.ts - x AND a.ts + y`
//!   (a window join, `a.window_end = b.window_end`, is one of width zero);
//! - ASOF: `FROM a [LEFT] ASOF JOIN b MATCH_CONDITION (a.ts >= b.ts) ON a.k = b.k`.
//!
//! DataFusion does not plan ASOF joins, so the AST is rewritten first: the
//! match condition joins ON (see [`rewrite_asof_join`]). A temporal join
//! (`JOIN t FOR SYSTEM_TIME AS OF l.ts`, the version of `t`'s key valid at
//! `l.ts`) is the backward ASOF join `l.ts >= t.ts` on that key (see
//! [`rewrite_temporal_join`]); an updating aggregate's versions come from a
//! hidden stream of its running form (see [`super::versions`]). DataFusion then
//! plans the query (Projection → [Filter] → Join → one scan per side, each
//! possibly under projections and filters of subqueries); this module
//! splits the join condition into the equality keys, the bounds on
//! `right.ts - left.ts` (which is what lets the operator forget rows) and
//! what remains (a residual predicate over the joined row). An interval
//! join needs both bounds, an ASOF join exactly one (its direction).
//! A join without any bound is a regular join: each side is read as a
//! table by its key (an updating stream's, an append table's `'key'`) and
//! the result is an updating stream addressed by the sides' keys.

use arrow::datatypes::SchemaRef;
use datafusion::common::{Column, DFSchema};
use datafusion::execution::context::SessionState;
use datafusion::logical_expr::{BinaryExpr, Expr, JoinType, LogicalPlan, Operator};

use super::steps::{peel_row_steps, traces_to};
use super::{RowStep, StreamKind, nullable, physical, unsupported_node};
use crate::EngineError;
use crate::catalog::SourceDef;
use crate::join::{AsofDirection, JoinCondition, JoinKind, JoinPlan, JoinSide};
use crate::sql::StreamDef;

/// Which input of the join an expression reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Side {
    Left,
    Right,
}

/// Plans a join stream; returns its plan, output schema and the two
/// inputs (left, right).
pub(super) fn decompose_join(
    def: &StreamDef,
    state: &SessionState,
    plan: &LogicalPlan,
    sources: &[&SourceDef],
    asof: bool,
    ttl_ms: Option<i64>,
) -> Result<(StreamKind, SchemaRef, Vec<String>), EngineError> {
    let plan_err = |message: String| EngineError::Plan {
        stream: def.name.clone(),
        line: def.line,
        message,
    };
    let (post, below) = peel_row_steps(def, state, plan)?;
    let LogicalPlan::Join(join) = below else {
        return Err(unsupported_node(def, below));
    };
    let kind = match join.join_type {
        JoinType::Inner => JoinKind::Inner,
        JoinType::Left => JoinKind::Left,
        other => {
            return Err(plan_err(format!(
                "{other} JOIN is not supported; use JOIN or LEFT JOIN"
            )));
        }
    };
    let (left, left_input) = join_side(def, state, &join.left, sources)?;
    let (right, right_input) = join_side(def, state, &join.right, sources)?;
    let left_schema = join.left.schema();
    let right_schema = join.right.schema();
    let sides = Sides {
        left: left_schema,
        right: right_schema,
        left_ts: left.event_time_index,
        right_ts: right.event_time_index,
    };

    // The condition: ON pairs the planner split off, and the conjuncts of
    // the rest.
    let mut keys: Vec<(Expr, Expr)> = Vec::new();
    let mut bounds = TimeBounds::default();
    let mut residual: Vec<Expr> = Vec::new();
    let on_pairs = join.on.iter().map(|(l, r)| l.clone().eq(r.clone()));
    let conjuncts = join
        .filter
        .iter()
        .flat_map(|f| datafusion::logical_expr::utils::split_conjunction(f))
        .cloned();
    for c in on_pairs.chain(conjuncts) {
        // An equality of the event times (a window join's `window_end`s)
        // is a key and a bound.
        let is_bound = sides.time_bound(&c, &mut bounds);
        if let Some(pair) = sides.key_pair(&c) {
            keys.push(pair);
        } else if !is_bound {
            residual.push(c);
        }
    }
    if keys.is_empty() {
        return Err(plan_err(
            "a join needs at least one equality between the two sides in ON (e.g. `a.symbol = b.symbol`)".into(),
        ));
    }
    let timed = |form: &str| match [(&left, &left_input), (&right, &right_input)]
        .into_iter()
        .find(|(s, _)| s.changelog)
    {
        Some((_, name)) => Err(plan_err(format!(
            "`{name}` is an updating stream, without event time: {form} needs both sides' event times; join it without time bounds (a regular join) instead"
        ))),
        None => Ok(()),
    };
    let regular = !asof && bounds.lower.is_none() && bounds.upper.is_none();
    let condition = if asof {
        timed("an ASOF join")?;
        asof_condition(&sides, &bounds, &residual).map_err(plan_err)?
    } else if regular {
        JoinCondition::Regular { ttl_ms }
    } else {
        timed("a join with time bounds")?;
        interval_condition(&sides, &bounds).map_err(plan_err)?
    };
    if ttl_ms.is_some() && !regular {
        return Err(plan_err(
            "'state.ttl' applies to joins without time bounds; a join in event time keeps rows only until the watermarks pass them".into(),
        ));
    }
    if ttl_ms.is_some() && left.changelog && right.changelog {
        return Err(plan_err(format!(
            "'state.ttl' forgets rows of append-only sides by event time; `{left_input}` and `{right_input}` are updating streams, whose own deletions remove rows"
        )));
    }
    let left_keys = keys
        .iter()
        .map(|(l, _)| physical(state, l, left_schema, def))
        .collect::<Result<Vec<_>, _>>()?;
    let right_keys = keys
        .iter()
        .map(|(_, r)| physical(state, r, right_schema, def))
        .collect::<Result<Vec<_>, _>>()?;
    let residual = match datafusion::logical_expr::utils::conjunction(residual) {
        Some(e) => Some(physical(state, &e, &join.schema, def)?),
        None => None,
    };
    let output = nullable(plan.schema().as_arrow());
    let joined_schema = nullable(join.schema.as_arrow());
    let output_keys = match regular {
        true => regular_output_keys(
            &post,
            &output,
            [(&left, &left_input), (&right, &right_input)],
            &right_keys,
            left_schema.fields().len(),
        )
        .map_err(plan_err)?,
        false => Vec::new(),
    };
    let join_plan = JoinPlan {
        kind,
        left: JoinSide {
            keys: left_keys,
            ..left
        },
        right: JoinSide {
            keys: right_keys,
            ..right
        },
        condition,
        residual,
        joined_schema,
        post,
        output_keys,
    };
    Ok((
        StreamKind::Join(Box::new(join_plan)),
        output,
        vec![left_input, right_input],
    ))
}

/// An interval join's bounds: both must be there, and admit a pair.
fn interval_condition(sides: &Sides, bounds: &TimeBounds) -> Result<JoinCondition, String> {
    let (Some(lower_ms), Some(upper_ms)) = (bounds.lower, bounds.upper) else {
        return Err(format!(
            "a join of two streams needs its event times bounded both ways in ON, e.g. `{r} BETWEEN {l} - INTERVAL '1' SECOND AND {l} + INTERVAL '1' SECOND`, or the two windows' `window_end` equal: otherwise every row would have to be kept (ASOF JOIN or FOR SYSTEM_TIME AS OF take the latest row before; without any time bound it is a regular join of the two tables)",
            r = sides.right.field(sides.right_ts.unwrap_or_default()).name(),
            l = sides.left.field(sides.left_ts.unwrap_or_default()).name(),
        ));
    };
    if lower_ms > upper_ms {
        return Err(format!(
            "the join's time bounds admit no pair: the right event time must be at least {lower_ms} ms and at most {upper_ms} ms after the left"
        ));
    }
    Ok(JoinCondition::Interval { lower_ms, upper_ms })
}

/// An ASOF join's match condition: one bound on the event times, whose
/// side gives the direction; the rest of ON may hold only the keys.
fn asof_condition(
    sides: &Sides,
    bounds: &TimeBounds,
    residual: &[Expr],
) -> Result<JoinCondition, String> {
    let (l, r) = (
        sides.left.field(sides.left_ts.unwrap_or_default()).name(),
        sides.right.field(sides.right_ts.unwrap_or_default()).name(),
    );
    if !residual.is_empty() {
        return Err(format!(
            "an ASOF join's ON may hold only equalities between the two sides, and MATCH_CONDITION one comparison of the event times (`{l} >= {r}`); filter a side in a subquery instead"
        ));
    }
    match (bounds.lower, bounds.upper) {
        // r - l <= c: the latest right row at or before l + c.
        (None, Some(offset_ms)) => Ok(JoinCondition::Asof {
            direction: AsofDirection::Backward,
            offset_ms,
        }),
        // r - l >= c: the earliest right row at or after l + c.
        (Some(offset_ms), None) => Ok(JoinCondition::Asof {
            direction: AsofDirection::Forward,
            offset_ms,
        }),
        _ => Err(format!(
            "an ASOF join's MATCH_CONDITION compares the two event times once, with >=, >, <= or <: `{l} >= {r}` takes the latest right row at or before the left row"
        )),
    }
}

/// One side of the join: the steps from its input's rows to the join's
/// input columns, and where its event time is among them.
fn join_side(
    def: &StreamDef,
    state: &SessionState,
    plan: &LogicalPlan,
    sources: &[&SourceDef],
) -> Result<(JoinSide, String), EngineError> {
    let (steps, below) = peel_row_steps(def, state, plan)?;
    let LogicalPlan::TableScan(scan) = below else {
        return Err(EngineError::Plan {
            stream: def.name.clone(),
            line: def.line,
            message: format!(
                "each side of a join must filter or project one table or stream (this one needs a `{}` step); aggregate in a stream of its own and join the streams",
                below.display()
            ),
        });
    };
    let table = scan.table_name.table();
    let source = sources
        .iter()
        .find(|s| s.name.eq_ignore_ascii_case(table))
        .expect("the planner registered every input");
    let schema = nullable(plan.schema().as_arrow());
    let traced =
        |input: usize| (0..schema.fields().len()).find(|&j| traces_to(&steps, j) == Some(input));
    let event_time_index = match source.changelog {
        true => None,
        false => Some(
            traced(source.event_time_index()).ok_or_else(|| EngineError::Plan {
                stream: def.name.clone(),
                line: def.line,
                message: format!(
                    "a join side reading `{}` must keep its event-time column `{}`",
                    source.name, source.event_time
                ),
            })?,
        ),
    };
    // The table key, where the side keeps it (a regular join needs it).
    let identity_input: Vec<usize> = source
        .key_columns
        .iter()
        .filter_map(|k| source.schema.index_of(k).ok())
        .collect();
    let identity: Vec<usize> = identity_input.iter().filter_map(|&i| traced(i)).collect();
    let identity_complete = !identity_input.is_empty() && identity.len() == identity_input.len();
    Ok((
        JoinSide {
            steps,
            schema,
            event_time_index,
            keys: Vec::new(),
            identity: if identity_complete {
                identity
            } else {
                Vec::new()
            },
            identity_input: if identity_complete {
                identity_input
            } else {
                Vec::new()
            },
            changelog: source.changelog,
        },
        source.name.clone(),
    ))
}

/// The output columns that address a regular join's result rows: the left
/// side's key, then those of the right side's key that ON does not equate
/// with a left expression (a left row fixes those). Each must reach the
/// output unchanged.
fn regular_output_keys(
    post: &[RowStep],
    output: &SchemaRef,
    sides: [(&JoinSide, &String); 2],
    right_keys: &[std::sync::Arc<dyn datafusion::physical_expr::PhysicalExpr>],
    left_width: usize,
) -> Result<Vec<usize>, String> {
    use datafusion::physical_expr::expressions::Column as PhysicalColumn;
    let mut keys = Vec::new();
    for (s, (side, name)) in sides.into_iter().enumerate() {
        if side.identity.is_empty() {
            return Err(format!(
                "a join without time bounds reads each side as a table by its key: `{name}` has no key (declare one with `'key' = 'col, …'` in its CREATE TABLE, or read an updating stream), or its side does not keep the key columns; to pair rows in event time, bound the join (`b.ts BETWEEN a.ts - INTERVAL … AND a.ts + INTERVAL …`, ASOF JOIN or FOR SYSTEM_TIME AS OF)"
            ));
        }
        let offset = if s == 0 { 0 } else { left_width };
        let fixed_by_on = |c: usize| {
            right_keys.iter().any(|k| {
                k.downcast_ref::<PhysicalColumn>()
                    .is_some_and(|k| k.index() == c)
            })
        };
        for &c in &side.identity {
            if s == 1 && fixed_by_on(c) {
                continue;
            }
            let column = side.schema.field(c).name();
            let selected =
                (0..output.fields().len()).find(|&j| traces_to(post, j) == Some(offset + c));
            match selected {
                Some(j) => keys.push(j),
                None => {
                    return Err(format!(
                        "a join without time bounds updates its rows by the sides' keys: select `{name}`'s key column `{column}` unchanged"
                    ));
                }
            }
        }
    }
    Ok(keys)
}

/// The bounds found so far on `right.ts - left.ts`, in milliseconds.
#[derive(Default)]
struct TimeBounds {
    lower: Option<i64>,
    upper: Option<i64>,
}

/// The schemas of both sides and their event-time columns.
struct Sides<'a> {
    left: &'a DFSchema,
    right: &'a DFSchema,
    left_ts: Option<usize>,
    right_ts: Option<usize>,
}

impl Sides<'_> {
    /// The side every column of `e` belongs to, if one.
    fn side_of(&self, e: &Expr) -> Option<Side> {
        let columns = e.column_refs();
        if columns.is_empty() {
            return None;
        }
        if columns.iter().all(|c| self.left.has_column(c)) {
            Some(Side::Left)
        } else if columns.iter().all(|c| self.right.has_column(c)) {
            Some(Side::Right)
        } else {
            None
        }
    }

    /// `l = r` between the sides, as (left, right).
    fn key_pair(&self, e: &Expr) -> Option<(Expr, Expr)> {
        let Expr::BinaryExpr(BinaryExpr {
            left,
            op: Operator::Eq,
            right,
        }) = e
        else {
            return None;
        };
        match (self.side_of(left), self.side_of(right)) {
            (Some(Side::Left), Some(Side::Right)) => Some((*left.clone(), *right.clone())),
            (Some(Side::Right), Some(Side::Left)) => Some((*right.clone(), *left.clone())),
            _ => None,
        }
    }

    /// Records the bound `e` puts on `right.ts - left.ts`, if it is one
    /// (a comparison or BETWEEN of the two event times, each plus or minus
    /// a constant interval).
    fn time_bound(&self, e: &Expr, bounds: &mut TimeBounds) -> bool {
        match e {
            Expr::Between(b) if !b.negated => {
                let ge = Expr::BinaryExpr(BinaryExpr::new(
                    b.expr.clone(),
                    Operator::GtEq,
                    b.low.clone(),
                ));
                let le = Expr::BinaryExpr(BinaryExpr::new(
                    b.expr.clone(),
                    Operator::LtEq,
                    b.high.clone(),
                ));
                let mut found = TimeBounds::default();
                if self.time_bound(&ge, &mut found) && self.time_bound(&le, &mut found) {
                    tighten(bounds, found.lower, found.upper);
                    return true;
                }
                false
            }
            Expr::BinaryExpr(BinaryExpr { left, op, right }) => {
                let (Some((a_side, a)), Some((b_side, b))) =
                    (self.time_term(left), self.time_term(right))
                else {
                    return false;
                };
                // `a_side.ts + a  op  b_side.ts + b`, as a bound on r - l.
                let (op, c) = match (a_side, b_side) {
                    (Side::Right, Side::Left) => (*op, b - a),
                    (Side::Left, Side::Right) => match op.swap() {
                        Some(swapped) => (swapped, a - b),
                        None => return false,
                    },
                    _ => return false,
                };
                match op {
                    Operator::GtEq => tighten(bounds, Some(c), None),
                    Operator::Gt => tighten(bounds, Some(c + 1), None),
                    Operator::LtEq => tighten(bounds, None, Some(c)),
                    Operator::Lt => tighten(bounds, None, Some(c - 1)),
                    Operator::Eq => tighten(bounds, Some(c), Some(c)),
                    _ => return false,
                }
                true
            }
            _ => false,
        }
    }

    /// `side.ts + offset` for an event-time column plus or minus constant
    /// intervals, with the offset in milliseconds.
    fn time_term(&self, e: &Expr) -> Option<(Side, i64)> {
        match e {
            Expr::Column(c) => self.event_time_side(c).map(|s| (s, 0)),
            Expr::Cast(c) => self.time_term(&c.expr),
            Expr::BinaryExpr(BinaryExpr { left, op, right }) => {
                let (side, base) = self.time_term(left)?;
                let Expr::Literal(v, _) = right.as_ref() else {
                    return None;
                };
                let ms = super::over::interval_ms(v)?;
                match op {
                    Operator::Plus => Some((side, base.checked_add(ms)?)),
                    Operator::Minus => Some((side, base.checked_sub(ms)?)),
                    _ => None,
                }
            }
            _ => None,
        }
    }

    fn event_time_side(&self, c: &Column) -> Option<Side> {
        let index = |schema: &DFSchema| schema.index_of_column(c).ok();
        if self.left_ts.is_some() && index(self.left) == self.left_ts {
            Some(Side::Left)
        } else if self.right_ts.is_some() && index(self.right) == self.right_ts {
            Some(Side::Right)
        } else {
            None
        }
    }
}

fn tighten(bounds: &mut TimeBounds, lower: Option<i64>, upper: Option<i64>) {
    if let Some(l) = lower {
        bounds.lower = Some(bounds.lower.map_or(l, |b| b.max(l)));
    }
    if let Some(u) = upper {
        bounds.upper = Some(bounds.upper.map_or(u, |b| b.min(u)));
    }
}

/// What the text pre-pass took out of a stream's query so that the
/// generic dialect parses it.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct JoinSyntax {
    /// `LEFT [OUTER] ASOF JOIN` (the parser reads only `ASOF JOIN`).
    pub left_asof: bool,
    /// `FOR SYSTEM_TIME AS OF col` after the right table of a temporal
    /// join: the column's name parts (`o.ts` → `["o", "ts"]`).
    pub system_time: Option<Vec<String>>,
}

/// The query's tokens without whitespace, and their places in the text.
struct SqlWords<'a> {
    query: &'a str,
    words: Vec<datafusion::sql::sqlparser::tokenizer::TokenWithSpan>,
    line_starts: Vec<usize>,
}

impl<'a> SqlWords<'a> {
    fn new(query: &'a str) -> Option<Self> {
        use datafusion::sql::sqlparser::dialect::GenericDialect;
        use datafusion::sql::sqlparser::tokenizer::{Token, Tokenizer};
        let tokens = Tokenizer::new(&GenericDialect {}, query)
            .tokenize_with_location()
            .ok()?;
        Some(Self {
            query,
            words: tokens
                .into_iter()
                .filter(|t| !matches!(t.token, Token::Whitespace(_)))
                .collect(),
            line_starts: std::iter::once(0)
                .chain(query.match_indices('\n').map(|(i, _)| i + 1))
                .collect(),
        })
    }

    fn keyword(&self, i: usize) -> Option<datafusion::sql::sqlparser::keywords::Keyword> {
        use datafusion::sql::sqlparser::tokenizer::Token;
        match self.words.get(i).map(|t| &t.token) {
            Some(Token::Word(w)) if w.quote_style.is_none() => Some(w.keyword),
            _ => None,
        }
    }

    fn is_keywords(
        &self,
        at: usize,
        keywords: &[datafusion::sql::sqlparser::keywords::Keyword],
    ) -> bool {
        keywords
            .iter()
            .enumerate()
            .all(|(k, &kw)| self.keyword(at + k) == Some(kw))
    }

    fn byte_at(&self, loc: datafusion::sql::sqlparser::tokenizer::Location) -> usize {
        let start = self.line_starts[loc.line as usize - 1];
        self.query[start..]
            .char_indices()
            .nth(loc.column as usize - 1)
            .map_or(self.query.len(), |(i, _)| start + i)
    }

    /// Blanks words `from..to` in `text` (positions in it stay put).
    fn blank(&self, text: &mut String, from: usize, to: usize) {
        for w in &self.words[from..to] {
            let (a, b) = (self.byte_at(w.span.start), self.byte_at(w.span.end));
            text.replace_range(a..b, &" ".repeat(b - a));
        }
    }
}

/// Takes out what the generic dialect does not read: `LEFT [OUTER]` before
/// `ASOF JOIN`, and a temporal join's `FOR SYSTEM_TIME AS OF col`; blanks
/// them (positions in the text stay where they were) and says what it took.
pub(super) fn strip_join_syntax(query: &str) -> (String, JoinSyntax) {
    use datafusion::sql::sqlparser::keywords::Keyword;
    use datafusion::sql::sqlparser::tokenizer::Token;
    let mut found = JoinSyntax::default();
    let Some(words) = SqlWords::new(query) else {
        // The parser reports the error with its position.
        return (query.to_string(), found);
    };
    let mut text = query.to_string();
    for i in 0..words.words.len() {
        if words.keyword(i) == Some(Keyword::LEFT) {
            let asof_at = match words.keyword(i + 1) {
                Some(Keyword::OUTER) => i + 2,
                _ => i + 1,
            };
            if words.keyword(asof_at) == Some(Keyword::ASOF) {
                words.blank(&mut text, i, asof_at);
                found.left_asof = true;
            }
        }
        let system_time = [Keyword::FOR, Keyword::SYSTEM_TIME, Keyword::AS, Keyword::OF];
        if words.is_keywords(i, &system_time) {
            // The column: `name` or `qualifier.name`.
            let mut parts = Vec::new();
            let mut end = i + 4;
            while let Some(Token::Word(w)) = words.words.get(end).map(|t| &t.token) {
                parts.push(w.value.clone());
                end += 1;
                if !matches!(words.words.get(end).map(|t| &t.token), Some(Token::Period)) {
                    break;
                }
                end += 1;
            }
            if !parts.is_empty() {
                words.blank(&mut text, i, end);
                found.system_time = Some(parts);
            }
        }
    }
    (text, found)
}

/// Turns a temporal join, `JOIN t FOR SYSTEM_TIME AS OF l.ts AS r ON e`
/// (its `FOR SYSTEM_TIME` already taken out), into the ASOF join it is:
/// `ON e AND l.ts >= r.<t's event time>`, the latest version of each key
/// at the left row's time. `event_time_of` gives a table's or stream's
/// event-time column, or why it has none; and the table or stream that holds
/// its versions when that is another one (an updating aggregate's hidden
/// versions stream, see [`super::versions`]). Says whether it found the join.
pub(super) fn rewrite_temporal_join(
    query: &mut datafusion::sql::sqlparser::ast::Query,
    as_of: &[String],
    event_time_of: impl Fn(&str) -> Result<(String, Option<String>), String>,
) -> Result<bool, String> {
    use datafusion::sql::sqlparser::ast::{
        BinaryOperator, Expr as SqlExpr, Ident, JoinConstraint, JoinOperator, ObjectName, SetExpr,
        TableAlias, TableFactor,
    };
    let SetExpr::Select(select) = query.body.as_mut() else {
        return Ok(false);
    };
    let Some(join) = select
        .from
        .iter_mut()
        .flat_map(|f| f.joins.iter_mut())
        .next()
    else {
        return Err("FOR SYSTEM_TIME AS OF names the version of a JOIN's right table: `FROM orders o JOIN positions FOR SYSTEM_TIME AS OF o.ts AS p ON …`".into());
    };
    let TableFactor::Table { name, alias, .. } = &mut join.relation else {
        return Err("FOR SYSTEM_TIME AS OF applies to a table or stream by name".into());
    };
    let table = name.to_string();
    let (event_time, versions) = event_time_of(&table)?;
    let qualifier = alias
        .as_ref()
        .map_or(table.clone(), |a| a.name.value.clone());
    if let Some(versions) = versions {
        *name = ObjectName::from(vec![Ident::new(versions)]);
        *alias = Some(TableAlias {
            explicit: true,
            at: None,
            name: Ident::new(&qualifier),
            columns: vec![],
        });
    }
    let version_time =
        SqlExpr::CompoundIdentifier(vec![Ident::new(qualifier), Ident::new(event_time)]);
    let as_of = match as_of {
        [column] => SqlExpr::Identifier(Ident::new(column)),
        parts => SqlExpr::CompoundIdentifier(parts.iter().map(Ident::new).collect()),
    };
    let condition = SqlExpr::BinaryOp {
        left: Box::new(as_of),
        op: BinaryOperator::GtEq,
        right: Box::new(version_time),
    };
    let and = |e: &SqlExpr| SqlExpr::BinaryOp {
        left: Box::new(e.clone()),
        op: BinaryOperator::And,
        right: Box::new(condition.clone()),
    };
    join.join_operator = match &join.join_operator {
        JoinOperator::Join(JoinConstraint::On(e)) | JoinOperator::Inner(JoinConstraint::On(e)) => {
            JoinOperator::Inner(JoinConstraint::On(and(e)))
        }
        JoinOperator::Left(JoinConstraint::On(e))
        | JoinOperator::LeftOuter(JoinConstraint::On(e)) => {
            JoinOperator::Left(JoinConstraint::On(and(e)))
        }
        _ => {
            return Err("a temporal join is `JOIN` or `LEFT JOIN … FOR SYSTEM_TIME AS OF … ON` the versioned table's key".into());
        }
    };
    Ok(true)
}

/// Turns the query's `ASOF JOIN … MATCH_CONDITION (m) ON e` into
/// `[LEFT] JOIN … ON e AND m`, which DataFusion plans; says whether it
/// found one. The decomposition then reads `m` as the one-sided time bound.
pub(super) fn rewrite_asof_join(
    query: &mut datafusion::sql::sqlparser::ast::Query,
    left: bool,
) -> bool {
    use datafusion::sql::sqlparser::ast::{
        BinaryOperator, Expr as SqlExpr, JoinConstraint, JoinOperator, VisitMut, VisitorMut,
    };
    use std::ops::ControlFlow;
    struct Rewrite {
        left: bool,
        found: bool,
    }
    impl VisitorMut for Rewrite {
        type Break = ();
        fn pre_visit_query(
            &mut self,
            query: &mut datafusion::sql::sqlparser::ast::Query,
        ) -> ControlFlow<()> {
            let datafusion::sql::sqlparser::ast::SetExpr::Select(select) = query.body.as_mut()
            else {
                return ControlFlow::Continue(());
            };
            for from in &mut select.from {
                for join in &mut from.joins {
                    let JoinOperator::AsOf {
                        match_condition,
                        constraint,
                    } = &join.join_operator
                    else {
                        continue;
                    };
                    let on = match constraint {
                        JoinConstraint::On(e) => SqlExpr::BinaryOp {
                            left: Box::new(e.clone()),
                            op: BinaryOperator::And,
                            right: Box::new(match_condition.clone()),
                        },
                        _ => match_condition.clone(),
                    };
                    join.join_operator = match self.left {
                        true => JoinOperator::Left(JoinConstraint::On(on)),
                        false => JoinOperator::Inner(JoinConstraint::On(on)),
                    };
                    self.found = true;
                }
            }
            ControlFlow::Continue(())
        }
    }
    let mut rewrite = Rewrite { left, found: false };
    let _ = query.visit(&mut rewrite);
    rewrite.found
}
