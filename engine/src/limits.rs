//! Bounds on the SQL the planner accepts, checked on tokens before parsing.
//!
//! Parsing and planning recurse over the expression tree, and so does
//! dropping it: `SELECT 1+1+…` with tens of thousands of terms would
//! overflow the stack, and the operator plans every StreamQuery, so one
//! resource would crash-loop it for every namespace. The tokenizer is
//! iterative, so these checks run in bounded stack on any input; the
//! planner itself then runs on a thread whose stack is sized for the
//! deepest statement these bounds let through ([`PLANNER_STACK_BYTES`]).
//!
//! The nesting measure is conservative: every operator token counts as
//! one level (a chain `a + b + c` nests two deep), plus one per
//! parenthesis. Real queries stay far below the bounds.

use sqlparser::dialect::GenericDialect;
use sqlparser::keywords::Keyword;
use sqlparser::tokenizer::{Token, Tokenizer};

use datafusion::sql::sqlparser;

use super::EngineError;

/// Largest SQL text accepted (a ConfigMap holds at most 1 MiB).
pub const MAX_SQL_BYTES: usize = 1 << 20;
/// Most statements in one SQL file.
pub const MAX_STATEMENTS: usize = 256;
/// Most bytes of all statements' position-padded queries together.
pub const MAX_PADDED_BYTES: usize = 64 << 20;
/// Most tokens in one statement.
pub const MAX_STATEMENT_TOKENS: usize = 50_000;
/// Deepest expression nesting accepted, as estimated above.
pub const MAX_EXPRESSION_DEPTH: usize = 500;
/// Longest window interval (TUMBLE/HOP size, HOP slide, SESSION gap).
pub const MAX_WINDOW_MS: i64 = 366 * 86_400_000;
/// Most slices (panes) one HOP window is merged from, which is also the
/// most windows one event belongs to: `HOP(ts, 1 ms, 1 day)` would be 86.4
/// million per event.
pub const MAX_PANES_PER_WINDOW: i64 = 10_000;
/// Stack of the planner thread: generous for [`MAX_EXPRESSION_DEPTH`] even
/// in debug builds (only touched pages cost memory).
pub const PLANNER_STACK_BYTES: usize = 256 << 20;

/// Fails with a positioned error if `sql` is larger than the planner takes.
pub fn check_sql_size(sql: &str) -> Result<(), EngineError> {
    if sql.len() > MAX_SQL_BYTES {
        return Err(EngineError::sql_at(
            sql,
            0,
            &format!(
                "the SQL is {} bytes; at most {MAX_SQL_BYTES} are accepted",
                sql.len()
            ),
        ));
    }
    Ok(())
}

/// Fails if the file has more statements than [`MAX_STATEMENTS`], or if
/// their queries, each blank-padded to its position in the file, add up to
/// more than [`MAX_PADDED_BYTES`] (the parser reads the padding: many
/// statements deep into a large file would cost quadratic time).
pub fn check_statements<'a>(
    sql: &str,
    queries: impl ExactSizeIterator<Item = &'a str>,
) -> Result<(), EngineError> {
    let count = queries.len();
    if count > MAX_STATEMENTS {
        return Err(EngineError::sql_at(
            sql,
            0,
            &format!("the SQL has {count} statements; at most {MAX_STATEMENTS} are accepted"),
        ));
    }
    let padded: usize = queries.map(str::len).sum();
    if padded > MAX_PADDED_BYTES {
        return Err(EngineError::sql_at(
            sql,
            0,
            &format!(
                "the SQL is too large for its {count} statements: split it into several files"
            ),
        ));
    }
    Ok(())
}

/// Fails with a positioned error if one statement's `query` (blank-padded
/// to its position in the file) has too many tokens or nests too deep.
pub fn check_statement(stream: &str, query: &str) -> Result<(), EngineError> {
    // Tokenize from the first non-blank: the padding only keeps positions.
    let start = query.len() - query.trim_start().len();
    let (line_offset, column_offset) = {
        let prefix = &query[..start];
        let lines = prefix.matches('\n').count();
        let column = prefix.len() - prefix.rfind('\n').map_or(0, |p| p + 1);
        (lines, column)
    };
    let dialect = GenericDialect {};
    let tokens = Tokenizer::new(&dialect, &query[start..])
        .tokenize_with_location()
        .map_err(|e| EngineError::Parse {
            stream: stream.to_string(),
            message: e.to_string(),
        })?;
    let too_complex = |at: &sqlparser::tokenizer::TokenWithSpan, what: String| {
        let line = at.span.start.line as usize;
        EngineError::Sql {
            line: line + line_offset,
            column: at.span.start.column as usize + if line == 1 { column_offset } else { 0 },
            message: format!("stream `{stream}` is too complex to plan: {what}"),
        }
    };
    let mut counted = 0usize;
    // One frame per open parenthesis: (operators in it, deepest child).
    let mut groups: Vec<(usize, usize)> = vec![(0, 0)];
    for t in &tokens {
        if matches!(t.token, Token::Whitespace(_) | Token::EOF) {
            continue;
        }
        counted += 1;
        if counted > MAX_STATEMENT_TOKENS {
            return Err(too_complex(
                t,
                format!("more than {MAX_STATEMENT_TOKENS} tokens"),
            ));
        }
        match &t.token {
            Token::LParen => groups.push((0, 0)),
            // An unmatched `)` is the parser's to report.
            Token::RParen if groups.len() > 1 => {
                let (ops, deepest) = groups.pop().expect("more than one");
                let depth = ops + deepest + 1;
                let parent = groups.last_mut().expect("root stays");
                parent.1 = parent.1.max(depth);
            }
            tok if is_operator(tok) => groups.last_mut().expect("root stays").0 += 1,
            _ => {}
        }
        let depth: usize =
            groups.iter().map(|(ops, _)| ops + 1).sum::<usize>() + groups.last().map_or(0, |g| g.1);
        if depth > MAX_EXPRESSION_DEPTH {
            return Err(too_complex(
                t,
                format!(
                    "expressions nest deeper than {MAX_EXPRESSION_DEPTH} levels (each operator and parenthesis is one)"
                ),
            ));
        }
    }
    Ok(())
}

/// Tokens that nest an expression one level deeper.
fn is_operator(token: &Token) -> bool {
    match token {
        Token::Word(w) if w.quote_style.is_none() => matches!(
            w.keyword,
            Keyword::AND
                | Keyword::OR
                | Keyword::NOT
                | Keyword::IS
                | Keyword::LIKE
                | Keyword::ILIKE
                | Keyword::SIMILAR
                | Keyword::IN
                | Keyword::BETWEEN
                | Keyword::CASE
                | Keyword::WHEN
                | Keyword::CAST
                | Keyword::TRY_CAST
                | Keyword::EXISTS
                | Keyword::SELECT
        ),
        Token::Word(_)
        | Token::Number(..)
        | Token::Comma
        | Token::Period
        | Token::SemiColon
        | Token::LParen
        | Token::RParen
        | Token::Whitespace(_)
        | Token::EOF => false,
        Token::Char(_) => false,
        t => !is_literal(t),
    }
}

fn is_literal(token: &Token) -> bool {
    matches!(
        token,
        Token::SingleQuotedString(_)
            | Token::DoubleQuotedString(_)
            | Token::TripleSingleQuotedString(_)
            | Token::TripleDoubleQuotedString(_)
            | Token::DollarQuotedString(_)
            | Token::SingleQuotedByteStringLiteral(_)
            | Token::DoubleQuotedByteStringLiteral(_)
            | Token::TripleSingleQuotedByteStringLiteral(_)
            | Token::TripleDoubleQuotedByteStringLiteral(_)
            | Token::SingleQuotedRawStringLiteral(_)
            | Token::DoubleQuotedRawStringLiteral(_)
            | Token::TripleSingleQuotedRawStringLiteral(_)
            | Token::TripleDoubleQuotedRawStringLiteral(_)
            | Token::NationalStringLiteral(_)
            | Token::QuoteDelimitedStringLiteral(_)
            | Token::NationalQuoteDelimitedStringLiteral(_)
            | Token::EscapedStringLiteral(_)
            | Token::UnicodeStringLiteral(_)
            | Token::HexStringLiteral(_)
    )
}

/// Runs `plan` on a thread with [`PLANNER_STACK_BYTES`] of stack: planning
/// recurses over the expression tree, and a caller's thread (a Tokio worker
/// in the operator: 2 MiB) may have little stack left.
pub fn on_planner_stack<T: Send>(plan: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|scope| {
        std::thread::Builder::new()
            .name("sql-planner".into())
            .stack_size(PLANNER_STACK_BYTES)
            .spawn_scoped(scope, plan)
            .expect("spawn the SQL planner thread")
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn depth_error(sql: &str) -> Option<String> {
        check_statement("s", sql).err().map(|e| e.to_string())
    }

    #[test]
    fn ordinary_queries_pass() {
        assert_eq!(
            depth_error(
                "SELECT symbol, AVG(price) FILTER (WHERE size > 10 AND NOT (side = 'B' OR price < 0.5)) \
                 FROM market_ticks WHERE CAST(size AS DOUBLE) / 2 > 1 GROUP BY symbol"
            ),
            None
        );
    }

    #[test]
    fn long_operator_chains_are_refused_with_a_position() {
        let sql = format!("SELECT 1{}", "+1".repeat(20_000));
        let e = depth_error(&sql).expect("refused");
        assert!(e.contains("SQL error at line 1"), "{e}");
        assert!(e.contains("nest deeper than 500"), "{e}");
        let ok = format!("SELECT 1{}", "+1".repeat(400));
        assert_eq!(depth_error(&ok), None);
    }

    #[test]
    fn deep_parentheses_and_token_floods_are_refused() {
        let sql = format!("SELECT {}1{}", "(".repeat(600), ")".repeat(600));
        assert!(depth_error(&sql).expect("refused").contains("nest deeper"));
        let many = format!(
            "SELECT symbol FROM t WHERE symbol IN ({})",
            "'a',".repeat(60_000)
        );
        assert!(depth_error(&many).expect("refused").contains("tokens"));
        let big = "x".repeat(MAX_SQL_BYTES + 1);
        assert!(check_sql_size(&big).is_err());
    }

    #[test]
    fn errors_point_into_the_file_past_the_padding() {
        let padded = format!("{}\n  SELECT 1{}", " ".repeat(40), "+1".repeat(600));
        let e = check_statement("s", &padded).unwrap_err();
        let EngineError::Sql { line, column, .. } = e else {
            panic!("{e}")
        };
        assert_eq!(line, 2);
        assert!(column > 2, "column {column} counts the indentation");
    }

    #[test]
    fn many_statements_deep_in_a_large_file_are_refused_cheaply() {
        let many: Vec<String> = (0..300).map(|_| "SELECT 1".to_string()).collect();
        assert!(check_statements("", many.iter().map(String::as_str)).is_err());
        let deep: Vec<String> = (0..100).map(|_| " ".repeat(1 << 20)).collect();
        let e = check_statements("", deep.iter().map(String::as_str)).unwrap_err();
        assert!(e.to_string().contains("split it"), "{e}");
    }

    #[test]
    fn unterminated_strings_are_parse_errors_not_panics() {
        assert!(depth_error("SELECT 'abc").is_some());
    }
}
