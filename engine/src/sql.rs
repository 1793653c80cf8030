//! The streaming dialect's outer layer: a SQL file is `CREATE TABLE …;`
//! source declarations and `CREATE STREAM name AS <query> [EMIT …];`
//! definitions.
//!
//! Splits a SQL file into statements and strips the non-standard parts
//! (`CREATE STREAM … AS`, `EMIT …`), so the query itself goes to DataFusion's
//! parser; table declarations go whole to [`ddl`](super::ddl). Every text
//! handed on keeps its original line and column positions (the parts before
//! it are blanked, not removed), so parser errors point into the user's file.

use super::EngineError;

/// When a windowed stream emits rows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EmitMode {
    /// Once per window, when the watermark passes its end (the default).
    OnWindowClose,
    /// An updated row for every group a micro-batch changes.
    Changes,
}

/// One `CREATE STREAM` statement.
#[derive(Clone, Debug)]
pub struct StreamDef {
    pub name: String,
    /// The SELECT, blank-padded so its positions match the original file.
    pub query: String,
    /// `None` when the statement has no EMIT clause.
    pub emit: Option<EmitMode>,
    /// 1-based line of the `CREATE STREAM` keyword.
    pub line: usize,
    /// `WITH ('state.ttl' = '1 day')`: keys of a GROUP BY without a window
    /// that see no row for this long (event time) are dropped.
    pub state_ttl_ms: Option<i64>,
}

/// One `CREATE TABLE` statement (a user-defined source).
#[derive(Clone, Debug)]
pub struct TableDecl {
    pub name: String,
    /// The whole statement, blank-padded so its positions match the file.
    pub text: String,
    /// 1-based line of the `CREATE TABLE` keyword.
    pub line: usize,
}

/// The statements of a SQL file, in file order per kind.
#[derive(Clone, Debug, Default)]
pub struct Script {
    pub tables: Vec<TableDecl>,
    pub streams: Vec<StreamDef>,
}

/// Splits `sql` into its `CREATE TABLE` and `CREATE STREAM` statements.
/// Names are unique across both (case-insensitive), and at least one
/// stream is defined.
pub fn parse_script(sql: &str) -> Result<Script, EngineError> {
    let mut script = Script::default();
    for (start, end) in split_statements(sql) {
        let text = &sql[start..end];
        if text.trim().is_empty() || is_only_comments(text) {
            continue;
        }
        match parse_statement(sql, start, end)? {
            Statement::Table(t) => script.tables.push(t),
            Statement::Stream(s) => script.streams.push(s),
        }
    }
    if script.streams.is_empty() {
        return Err(EngineError::sql_at(
            sql,
            sql.len(),
            "no stream defined: expected `CREATE STREAM <name> AS SELECT …;`",
        ));
    }
    let mut seen = std::collections::HashMap::new();
    let named = script
        .tables
        .iter()
        .map(|t| (t.name.as_str(), t.line, "table"))
        .chain(
            script
                .streams
                .iter()
                .map(|s| (s.name.as_str(), s.line, "stream")),
        );
    for (name, line, kind) in named {
        if let Some(first) = seen.insert(name.to_ascii_lowercase(), kind) {
            return Err(EngineError::Sql {
                line,
                column: 1,
                message: if first == kind {
                    format!("{kind} `{name}` is defined twice")
                } else {
                    format!("`{name}` names both a table and a stream")
                },
            });
        }
    }
    Ok(script)
}

enum Statement {
    Table(TableDecl),
    Stream(StreamDef),
}

/// The text from `from` on, with everything before it blanked (newlines
/// kept), so positions in it are positions in `sql`.
fn blank_before(sql: &str, from: usize, to: usize) -> String {
    let mut out = String::with_capacity(to);
    for c in sql[..from].chars() {
        out.push(if c == '\n' { '\n' } else { ' ' });
    }
    out.push_str(&sql[from..to]);
    out
}

fn parse_statement(sql: &str, start: usize, end: usize) -> Result<Statement, EngineError> {
    let text = &sql[start..end];
    let words = Words::new(text);
    let toks: Vec<(usize, &str)> = words.take(4).collect();
    let kw = |i: usize, w: &str| toks.get(i).is_some_and(|(_, t)| t.eq_ignore_ascii_case(w));
    if kw(0, "CREATE") && kw(1, "TABLE") {
        let Some(&(name_off, name)) = toks.get(2) else {
            return Err(EngineError::sql_at(
                sql,
                start + toks[1].0,
                "expected a table name after `CREATE TABLE`",
            ));
        };
        check_name(sql, start + name_off, name, "table")?;
        return Ok(Statement::Table(TableDecl {
            name: name.to_string(),
            text: blank_before(sql, start + toks[0].0, end),
            line: line_of(sql, start + toks[0].0),
        }));
    }
    let with_options = kw(0, "CREATE")
        && kw(1, "STREAM")
        && toks
            .get(3)
            .is_some_and(|(_, t)| t.to_ascii_uppercase().starts_with("WITH"));
    if !(kw(0, "CREATE") && kw(1, "STREAM") && (kw(3, "AS") || with_options)) {
        let at = toks.first().map_or(0, |(o, _)| *o);
        return Err(EngineError::sql_at(
            sql,
            start + at,
            "expected `CREATE TABLE <name> (…) WITH (…)` or `CREATE STREAM <name> [WITH (…)] AS SELECT …`",
        ));
    }
    let (name_off, name) = toks[2];
    check_name(sql, start + name_off, name, "stream")?;
    let (body_start, state_ttl_ms) = if with_options {
        stream_options(sql, start, start + toks[3].0, end)?
    } else {
        (toks[3].0 + 2, None)
    };

    // Optional trailing EMIT clause.
    let mut body_end = text.len();
    let mut emit = None;
    let tail: Vec<(usize, &str)> = Words::new(text).collect();
    let n = tail.len();
    let last = |k: usize| -> Option<&str> { n.checked_sub(k).map(|i| tail[i].1) };
    let ieq = |a: Option<&str>, b: &str| a.is_some_and(|a| a.eq_ignore_ascii_case(b));
    if ieq(last(4), "EMIT") && ieq(last(3), "ON") && ieq(last(2), "WINDOW") && ieq(last(1), "CLOSE")
    {
        emit = Some(EmitMode::OnWindowClose);
        body_end = tail[n - 4].0;
    } else if ieq(last(2), "EMIT") && ieq(last(1), "CHANGES") {
        emit = Some(EmitMode::Changes);
        body_end = tail[n - 2].0;
    } else if let Some(i) = tail
        .iter()
        .position(|(_, w)| w.eq_ignore_ascii_case("EMIT"))
    {
        return Err(EngineError::sql_at(
            sql,
            start + tail[i].0,
            "unsupported EMIT clause: use `EMIT ON WINDOW CLOSE` or `EMIT CHANGES` at the end of the statement",
        ));
    }

    Ok(Statement::Stream(StreamDef {
        name: name.to_string(),
        query: blank_before(sql, start + body_start, start + body_end),
        emit,
        line: line_of(sql, start + toks[0].0),
        state_ttl_ms,
    }))
}

/// `WITH ('state.ttl' = '1 day') AS` after a stream's name, from the byte
/// offset of `WITH`: the offset of the query (relative to `start`) and the
/// options.
fn stream_options(
    sql: &str,
    start: usize,
    with_at: usize,
    end: usize,
) -> Result<(usize, Option<i64>), EngineError> {
    use datafusion::sql::sqlparser::dialect::GenericDialect;
    use datafusion::sql::sqlparser::tokenizer::{Token, Tokenizer};
    let text = &sql[with_at..end];
    let err = |offset: usize, msg: &str| EngineError::sql_at(sql, with_at + offset, msg);
    let open = text
        .find('(')
        .filter(|&i| text[4..i].trim().is_empty())
        .ok_or_else(|| {
            err(
                0,
                "expected `WITH ('option' = 'value', …) AS` after the stream name",
            )
        })?;
    // The closing parenthesis: the first one outside a quoted string.
    let mut quoted = false;
    let close = text[open..]
        .char_indices()
        .find(|&(_, c)| {
            if c == '\'' {
                quoted = !quoted;
            }
            c == ')' && !quoted
        })
        .map(|(i, _)| open + i)
        .ok_or_else(|| err(open, "unclosed `(` in the stream's WITH options"))?;
    let after = &text[close + 1..];
    let as_at = after.len() - after.trim_start().len();
    if !after[as_at..]
        .get(..2)
        .is_some_and(|w| w.eq_ignore_ascii_case("AS"))
        || after[as_at + 2..].starts_with(|c: char| c.is_ascii_alphanumeric() || c == '_')
    {
        return Err(err(
            close + 1 + as_at,
            "expected `AS SELECT …` after the stream's WITH options",
        ));
    }
    let tokens = Tokenizer::new(&GenericDialect {}, &text[open + 1..close])
        .tokenize()
        .map_err(|e| err(open + 1, &format!("stream options: {e}")))?;
    let tokens: Vec<Token> = tokens
        .into_iter()
        .filter(|t| !matches!(t, Token::Whitespace(_)))
        .collect();
    let mut ttl = None;
    for option in tokens.split(|t| *t == Token::Comma) {
        match option {
            [
                Token::SingleQuotedString(k),
                Token::Eq,
                Token::SingleQuotedString(v),
            ] => {
                if k != "state.ttl" {
                    return Err(err(
                        open,
                        &format!("unknown stream option '{k}' (known: 'state.ttl')"),
                    ));
                }
                let compact: String = v.split_whitespace().collect();
                let d = humantime::parse_duration(&compact).map_err(|e| {
                    err(
                        open,
                        &format!("'state.ttl' = '{v}': {e} (e.g. '1 day', '30 min')"),
                    )
                })?;
                let ms = i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
                if ms <= 0 {
                    return Err(err(open, "'state.ttl' must be positive"));
                }
                ttl = Some(ms);
            }
            [] => {}
            _ => {
                return Err(err(
                    open,
                    "stream options are 'key' = 'value' pairs separated by commas",
                ));
            }
        }
    }
    Ok((with_at + close + 1 + as_at + 2 - start, ttl))
}

/// Table and stream names are plain identifiers: they become topic and
/// file names.
fn check_name(sql: &str, offset: usize, name: &str, kind: &str) -> Result<(), EngineError> {
    if name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !name.starts_with(|c: char| c.is_ascii_digit())
    {
        return Ok(());
    }
    Err(EngineError::sql_at(
        sql,
        offset,
        &format!("invalid {kind} name `{name}`: use letters, digits and `_`"),
    ))
}

/// 1-based line number of a byte offset.
pub fn line_of(sql: &str, offset: usize) -> usize {
    sql[..offset.min(sql.len())].matches('\n').count() + 1
}

fn is_only_comments(text: &str) -> bool {
    Words::new(text).next().is_none()
}

/// Byte ranges of the statements, split at `;` outside quotes and comments.
fn split_statements(sql: &str) -> Vec<(usize, usize)> {
    let bytes = sql.as_bytes();
    let mut out = Vec::new();
    let (mut i, mut start) = (0, 0);
    while i < bytes.len() {
        match bytes[i] {
            b'\'' | b'"' => i = skip_quoted(bytes, i),
            b'-' if bytes.get(i + 1) == Some(&b'-') => i = skip_line(bytes, i),
            b'/' if bytes.get(i + 1) == Some(&b'*') => i = skip_block(bytes, i),
            b';' => {
                out.push((start, i));
                i += 1;
                start = i;
            }
            _ => i += 1,
        }
    }
    out.push((start, bytes.len()));
    out
}

fn skip_quoted(b: &[u8], i: usize) -> usize {
    let q = b[i];
    let mut j = i + 1;
    while j < b.len() {
        if b[j] == q {
            if b.get(j + 1) == Some(&q) {
                j += 2;
                continue;
            }
            return j + 1;
        }
        j += 1;
    }
    j
}

fn skip_line(b: &[u8], i: usize) -> usize {
    b[i..]
        .iter()
        .position(|&c| c == b'\n')
        .map_or(b.len(), |p| i + p)
}

fn skip_block(b: &[u8], i: usize) -> usize {
    b[i + 2..]
        .windows(2)
        .position(|w| w == b"*/")
        .map_or(b.len(), |p| i + 2 + p + 2)
}

/// Iterator over the words (and single punctuation characters) of a statement,
/// skipping comments and quoted text, with their byte offsets.
struct Words<'a> {
    s: &'a str,
    i: usize,
}

impl<'a> Words<'a> {
    fn new(s: &'a str) -> Self {
        Self { s, i: 0 }
    }
}

impl<'a> Iterator for Words<'a> {
    type Item = (usize, &'a str);
    fn next(&mut self) -> Option<Self::Item> {
        let b = self.s.as_bytes();
        while self.i < b.len() {
            let c = b[self.i];
            if c.is_ascii_whitespace() {
                self.i += 1;
            } else if c == b'-' && b.get(self.i + 1) == Some(&b'-') {
                self.i = skip_line(b, self.i);
            } else if c == b'/' && b.get(self.i + 1) == Some(&b'*') {
                self.i = skip_block(b, self.i);
            } else if c == b'\'' || c == b'"' {
                let start = self.i;
                self.i = skip_quoted(b, self.i);
                return Some((start, &self.s[start..self.i]));
            } else if c.is_ascii_alphanumeric() || c == b'_' {
                let start = self.i;
                while self.i < b.len() && (b[self.i].is_ascii_alphanumeric() || b[self.i] == b'_') {
                    self.i += 1;
                }
                return Some((start, &self.s[start..self.i]));
            } else {
                let start = self.i;
                self.i += self.s[start..].chars().next().map_or(1, char::len_utf8);
                return Some((start, &self.s[start..self.i]));
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_streams_and_emit_clauses() {
        let sql = "-- header; with a semicolon\nCREATE STREAM a AS\nSELECT 'x;y' AS s FROM t\nEMIT ON WINDOW CLOSE;\n\ncreate stream b as select * from t emit changes;\nCREATE STREAM c AS SELECT 1 FROM t; -- done";
        let defs = parse_script(sql).unwrap().streams;
        assert_eq!(defs.len(), 3);
        assert_eq!(defs[0].name, "a");
        assert_eq!(defs[0].emit, Some(EmitMode::OnWindowClose));
        assert_eq!(defs[0].line, 2);
        assert_eq!(defs[0].query.trim(), "SELECT 'x;y' AS s FROM t");
        // Positions are preserved: the SELECT starts on line 3, column 1.
        assert_eq!(
            line_of(&defs[0].query, defs[0].query.find("SELECT").unwrap()),
            3
        );
        assert_eq!(defs[1].emit, Some(EmitMode::Changes));
        assert_eq!(defs[2].emit, None);
    }

    #[test]
    fn rejects_other_statements_with_position() {
        let err = parse_script("\n  SELECT 1;").unwrap_err().to_string();
        assert!(err.contains("line 2, column 3"), "{err}");
        assert!(err.contains("CREATE STREAM"), "{err}");
        let err = parse_script("CREATE STREAM a AS SELECT 1 EMIT SOMETIMES;")
            .unwrap_err()
            .to_string();
        assert!(err.contains("unsupported EMIT"), "{err}");
        let err = parse_script("CREATE STREAM a AS SELECT 1; CREATE STREAM A AS SELECT 2;")
            .unwrap_err()
            .to_string();
        assert!(err.contains("defined twice"), "{err}");
    }

    #[test]
    fn table_declarations_keep_their_positions_and_share_the_namespace() {
        let sql = "-- sources\nCREATE TABLE fills (id BIGINT) WITH ('format' = 'json');\nCREATE STREAM s AS SELECT id FROM fills;";
        let script = parse_script(sql).unwrap();
        assert_eq!(script.tables.len(), 1);
        let t = &script.tables[0];
        assert_eq!((t.name.as_str(), t.line), ("fills", 2));
        assert_eq!(t.text.find("CREATE"), sql.find("CREATE"), "{:?}", t.text);
        assert_eq!(script.streams[0].name, "s");
        let err = parse_script("CREATE TABLE s (id INT); CREATE STREAM s AS SELECT 1;")
            .unwrap_err()
            .to_string();
        assert!(err.contains("names both a table and a stream"), "{err}");
        let err = parse_script("CREATE TABLE t (id INT);")
            .unwrap_err()
            .to_string();
        assert!(err.contains("no stream defined"), "{err}");
        let err = parse_script("CREATE TABLE `x-y` (id INT);")
            .unwrap_err()
            .to_string();
        assert!(err.contains("invalid table name"), "{err}");
    }
}
