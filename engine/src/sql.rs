//! The streaming dialect's outer layer: `CREATE STREAM name AS <query> [EMIT …];`.
//!
//! Splits a SQL file into stream definitions and strips the non-standard parts
//! (`CREATE STREAM … AS`, `EMIT …`), so the query itself goes to DataFusion's
//! parser. The query text keeps its original line and column positions (the
//! stripped parts are blanked, not removed), so parser errors point into the
//! user's file.

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
}

/// Splits `sql` into its `CREATE STREAM` statements.
pub fn parse_streams(sql: &str) -> Result<Vec<StreamDef>, EngineError> {
    let mut defs = Vec::new();
    for (start, end) in split_statements(sql) {
        let text = &sql[start..end];
        if text.trim().is_empty() || is_only_comments(text) {
            continue;
        }
        defs.push(parse_statement(sql, start, end)?);
    }
    if defs.is_empty() {
        return Err(EngineError::sql_at(
            sql,
            0,
            "no statement found: expected `CREATE STREAM <name> AS SELECT …;`",
        ));
    }
    let mut seen = std::collections::HashSet::new();
    for d in &defs {
        if !seen.insert(d.name.to_ascii_lowercase()) {
            return Err(EngineError::Sql {
                line: d.line,
                column: 1,
                message: format!("stream `{}` is defined twice", d.name),
            });
        }
    }
    Ok(defs)
}

fn parse_statement(sql: &str, start: usize, end: usize) -> Result<StreamDef, EngineError> {
    let text = &sql[start..end];
    let words = Words::new(text);
    let toks: Vec<(usize, &str)> = words.take(4).collect();
    let kw = |i: usize, w: &str| toks.get(i).is_some_and(|(_, t)| t.eq_ignore_ascii_case(w));
    if !(kw(0, "CREATE") && kw(1, "STREAM") && kw(3, "AS")) {
        let at = toks.first().map_or(0, |(o, _)| *o);
        return Err(EngineError::sql_at(
            sql,
            start + at,
            "expected `CREATE STREAM <name> AS SELECT …`",
        ));
    }
    let (name_off, name) = toks[2];
    if !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        || name.starts_with(|c: char| c.is_ascii_digit())
    {
        return Err(EngineError::sql_at(
            sql,
            start + name_off,
            &format!("invalid stream name `{name}`: use letters, digits and `_`"),
        ));
    }
    let body_start = toks[3].0 + 2;

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

    // Blank everything outside the query body, keeping newlines.
    let mut query = String::with_capacity(start + body_end);
    for c in sql[..start + body_start].chars() {
        query.push(if c == '\n' { '\n' } else { ' ' });
    }
    query.push_str(&sql[start + body_start..start + body_end]);
    Ok(StreamDef {
        name: name.to_string(),
        query,
        emit,
        line: line_of(sql, start + toks[0].0),
    })
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
        let defs = parse_streams(sql).unwrap();
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
        let err = parse_streams("\n  SELECT 1;").unwrap_err().to_string();
        assert!(err.contains("line 2, column 3"), "{err}");
        assert!(err.contains("CREATE STREAM"), "{err}");
        let err = parse_streams("CREATE STREAM a AS SELECT 1 EMIT SOMETIMES;")
            .unwrap_err()
            .to_string();
        assert!(err.contains("unsupported EMIT"), "{err}");
        let err = parse_streams("CREATE STREAM a AS SELECT 1; CREATE STREAM A AS SELECT 2;")
            .unwrap_err()
            .to_string();
        assert!(err.contains("defined twice"), "{err}");
    }
}
