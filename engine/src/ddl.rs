//! `CREATE TABLE` declarations: user-defined sources, in Flink's form.
//!
//! ```sql
//! CREATE TABLE fills (
//!   fill_id BIGINT, trader_id VARCHAR, price DOUBLE, ts TIMESTAMP(3),
//!   WATERMARK FOR ts AS ts - INTERVAL '1' SECOND
//! ) WITH ('topic' = 'fills', 'format' = 'json', 'key' = 'trader_id');
//! ```
//!
//! A declaration becomes a [`SourceDef`]: the columns its Arrow schema, the
//! `WATERMARK` column its event time and the subtracted interval its
//! allowed lateness; the options its topic, value format and key columns.
//! Parsing uses sqlparser's pieces (identifiers, data types, expressions)
//! on the statement text, which keeps its positions in the user's file, so
//! every error names a line and column.
//!
//! Invariant: the result has exactly the declared columns, in order, and
//! passes [`Catalog::register`](crate::Catalog::register)'s checks.

use std::sync::Arc;
use std::time::Duration;

use arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use datafusion::sql::sqlparser::ast::{self, ExactNumberInfo, TimezoneInfo};
use datafusion::sql::sqlparser::dialect::GenericDialect;
use datafusion::sql::sqlparser::keywords::Keyword;
use datafusion::sql::sqlparser::parser::{Parser, ParserError};
use datafusion::sql::sqlparser::tokenizer::{Location, Token};

use super::EngineError;
use super::catalog::{SourceDef, SourceFormat, output_topic};
use super::plan::interval_ms;
use super::sql::TableDecl;

/// The `WITH` options a declaration may set.
const OPTIONS: &[&str] = &["connector", "topic", "format", "value.format", "key"];

/// Column types a declaration may use, for messages.
const TYPES: &str =
    "BOOLEAN, INT, BIGINT, SMALLINT, DOUBLE, FLOAT, DECIMAL(p, s), VARCHAR, TIMESTAMP, DATE";

/// Decimal precision Arrow's `Decimal128` holds.
const MAX_DECIMAL_PRECISION: u64 = 38;

/// Reads one `CREATE TABLE` statement into a catalog entry.
pub fn source_def(decl: &TableDecl) -> Result<SourceDef, EngineError> {
    let dialect = GenericDialect {};
    let mut p = Parser::new(&dialect)
        .try_with_sql(&decl.text)
        .map_err(|e| parse_error(decl, e))?;
    let parsed = parse_declaration(&mut p, &decl.text).map_err(|e| match e {
        Failure::Parser(e) => parse_error(decl, e),
        Failure::At(at, message) => at_error(decl, at, &message),
    })?;
    let Declaration {
        name,
        columns,
        watermark,
        options,
        end,
    } = parsed;
    let Some(watermark) = watermark else {
        return Err(at_error(
            decl,
            end,
            "a source table needs an event time: add `WATERMARK FOR <timestamp column> AS <column> - INTERVAL '1' SECOND` to the column list",
        ));
    };
    let schema = Arc::new(Schema::new(
        columns
            .iter()
            .map(|c| Field::new(&c.name, c.data_type.clone(), c.nullable))
            .collect::<Vec<_>>(),
    ));
    let column_named = |name: &str, at: Location| {
        columns
            .iter()
            .find(|c| c.name.eq_ignore_ascii_case(name))
            .map(|c| c.name.clone())
            .ok_or_else(|| at_error(decl, at, &format!("no column `{name}` in `{}`", decl.name)))
    };
    let event_time = column_named(&watermark.column, watermark.at)?;
    let time_type = schema
        .field_with_name(&event_time)
        .expect("found")
        .data_type();
    if !matches!(time_type, DataType::Timestamp(..)) {
        return Err(at_error(
            decl,
            watermark.at,
            &format!("the WATERMARK column `{event_time}` is {time_type}; it must be a TIMESTAMP"),
        ));
    }
    let mut format = None;
    let mut topic = None;
    let mut key_columns = Vec::new();
    for o in &options {
        match o.key.as_str() {
            "connector" if o.value.eq_ignore_ascii_case("kafka") => {}
            "connector" => {
                return Err(at_error(
                    decl,
                    o.at,
                    &format!(
                        "connector `{}` is not supported: sources are Kafka topics ('connector' = 'kafka', or leave it out)",
                        o.value
                    ),
                ));
            }
            "topic" if !o.value.trim().is_empty() => topic = Some(o.value.clone()),
            "topic" => return Err(at_error(decl, o.at, "'topic' must not be empty")),
            "format" | "value.format" => {
                format = Some(match o.value.to_ascii_lowercase().as_str() {
                    "json" => SourceFormat::Json,
                    "avro" | "avro-confluent" => SourceFormat::Avro,
                    other => {
                        return Err(at_error(
                            decl,
                            o.at,
                            &format!("format `{other}` is not supported (use 'json' or 'avro')"),
                        ));
                    }
                });
            }
            "key" => {
                for k in o.value.split(',').map(str::trim) {
                    key_columns.push(column_named(k, o.at)?);
                }
            }
            _ => unreachable!("options are checked while parsing"),
        }
    }
    let Some(format) = format else {
        return Err(at_error(
            decl,
            end,
            "the WITH options need a 'format' ('json', or 'avro' with the schema from the registry subject <topic>-value)",
        ));
    };
    Ok(SourceDef {
        topic: topic.unwrap_or_else(|| output_topic(&name)),
        name,
        schema,
        event_time,
        key_columns,
        format,
        avro_schema: None,
        watermark_delay: Some(watermark.delay),
        declared_at: Some(decl.line),
        changelog: false,
    })
}

struct Column {
    name: String,
    data_type: DataType,
    nullable: bool,
}

struct Watermark {
    column: String,
    delay: Duration,
    at: Location,
}

struct TableOption {
    key: String,
    value: String,
    at: Location,
}

struct Declaration {
    name: String,
    columns: Vec<Column>,
    watermark: Option<Watermark>,
    options: Vec<TableOption>,
    /// Where the statement ends (for "missing …" messages).
    end: Location,
}

enum Failure {
    Parser(ParserError),
    At(Location, String),
}

impl From<ParserError> for Failure {
    fn from(e: ParserError) -> Self {
        Failure::Parser(e)
    }
}

fn parse_declaration(p: &mut Parser, text: &str) -> Result<Declaration, Failure> {
    p.expect_keywords(&[Keyword::CREATE, Keyword::TABLE])?;
    let name = p.parse_identifier()?.value;
    p.expect_token(&Token::LParen)?;
    let mut columns: Vec<Column> = Vec::new();
    let mut watermark = None;
    loop {
        let at = p.peek_token().span.start;
        if is_word(p, "WATERMARK") {
            p.next_token();
            if watermark.is_some() {
                return Err(Failure::At(
                    at,
                    "only one WATERMARK clause per table".into(),
                ));
            }
            watermark = Some(parse_watermark(p, at)?);
        } else {
            let column = p.parse_identifier()?.value;
            if columns.iter().any(|c| c.name.eq_ignore_ascii_case(&column)) {
                return Err(Failure::At(
                    at,
                    format!("column `{column}` is declared twice"),
                ));
            }
            let type_at = p.peek_token().span.start;
            let sql_type = p.parse_data_type()?;
            let data_type = arrow_type(&sql_type).map_err(|m| Failure::At(type_at, m))?;
            let nullable = !p.parse_keywords(&[Keyword::NOT, Keyword::NULL]);
            if nullable {
                let _ = p.parse_keyword(Keyword::NULL);
            }
            columns.push(Column {
                name: column,
                data_type,
                nullable,
            });
        }
        if !p.consume_token(&Token::Comma) {
            break;
        }
    }
    p.expect_token(&Token::RParen)?;
    let mut options = Vec::new();
    if p.parse_keyword(Keyword::WITH) {
        p.expect_token(&Token::LParen)?;
        loop {
            let at = p.peek_token().span.start;
            let key = p.parse_literal_string()?.to_ascii_lowercase();
            if !OPTIONS.contains(&key.as_str()) {
                return Err(Failure::At(
                    at,
                    format!("unknown option '{key}' (known: {})", OPTIONS.join(", ")),
                ));
            }
            if options.iter().any(|o: &TableOption| o.key == key) {
                return Err(Failure::At(at, format!("option '{key}' is given twice")));
            }
            p.expect_token(&Token::Eq)?;
            let value = p.parse_literal_string()?;
            options.push(TableOption { key, value, at });
            if !p.consume_token(&Token::Comma) {
                break;
            }
        }
        p.expect_token(&Token::RParen)?;
    }
    let next = p.peek_token();
    if next.token != Token::EOF {
        return Err(Failure::At(
            next.span.start,
            format!("unexpected `{}` after the table declaration", next.token),
        ));
    }
    Ok(Declaration {
        name,
        columns,
        watermark,
        options,
        end: last_char(text),
    })
}

/// Position of the last character of `text` that is not white space
/// (sqlparser gives its end-of-input token no position).
fn last_char(text: &str) -> Location {
    let trimmed = text.trim_end();
    let line = trimmed.matches('\n').count() + 1;
    let column = trimmed
        .rfind('\n')
        .map_or(trimmed, |nl| &trimmed[nl + 1..])
        .chars()
        .count();
    Location::new(line as u64, column as u64)
}

/// `FOR ts AS ts [- INTERVAL '1' SECOND]` (after `WATERMARK`).
fn parse_watermark(p: &mut Parser, at: Location) -> Result<Watermark, Failure> {
    p.expect_keyword(Keyword::FOR)?;
    let column = p.parse_identifier()?.value;
    p.expect_keyword(Keyword::AS)?;
    let expr_at = p.peek_token().span.start;
    let expr = p.parse_expr()?;
    let usage = || {
        Failure::At(
            expr_at,
            format!(
                "the watermark must be `{column}` or `{column} - INTERVAL '<n>' <unit>` (the allowed lateness)"
            ),
        )
    };
    let is_column = |e: &ast::Expr| matches!(e, ast::Expr::Identifier(id) if id.value.eq_ignore_ascii_case(&column));
    let delay_ms = match &expr {
        e if is_column(e) => 0,
        ast::Expr::BinaryOp {
            left,
            op: ast::BinaryOperator::Minus,
            right,
        } if is_column(left) => interval_ms(right).map_err(|why| Failure::At(expr_at, why))?,
        _ => return Err(usage()),
    };
    if delay_ms < 0 {
        return Err(usage());
    }
    Ok(Watermark {
        column,
        delay: Duration::from_millis(delay_ms as u64),
        at,
    })
}

fn is_word(p: &Parser, word: &str) -> bool {
    matches!(&p.peek_token().token, Token::Word(w) if w.quote_style.is_none() && w.value.eq_ignore_ascii_case(word))
}

/// The Arrow type of a declared column type.
fn arrow_type(t: &ast::DataType) -> Result<DataType, String> {
    use ast::DataType as S;
    Ok(match t {
        S::Boolean | S::Bool => DataType::Boolean,
        S::SmallInt(_) | S::Int2(_) => DataType::Int16,
        S::Int(_) | S::Integer(_) | S::Int4(_) => DataType::Int32,
        S::BigInt(_) | S::Int8(_) => DataType::Int64,
        S::Real | S::Float4 => DataType::Float32,
        S::Float(ExactNumberInfo::None) => DataType::Float32,
        S::Double(ExactNumberInfo::None) | S::DoublePrecision | S::Float8 | S::Float64 => {
            DataType::Float64
        }
        S::Decimal(info) | S::Numeric(info) | S::Dec(info) => {
            let (precision, scale) = match *info {
                ExactNumberInfo::None => (MAX_DECIMAL_PRECISION, 0),
                ExactNumberInfo::Precision(p) => (p, 0),
                ExactNumberInfo::PrecisionAndScale(p, s) => (p, s),
            };
            if precision == 0 || precision > MAX_DECIMAL_PRECISION {
                return Err(format!(
                    "DECIMAL precision must be 1 to {MAX_DECIMAL_PRECISION}, not {precision}"
                ));
            }
            if scale < 0 || scale as u64 > precision {
                return Err(format!(
                    "DECIMAL scale must be 0 to the precision ({precision}), not {scale}"
                ));
            }
            DataType::Decimal128(precision as u8, scale as i8)
        }
        S::Varchar(_)
        | S::CharacterVarying(_)
        | S::CharVarying(_)
        | S::Char(_)
        | S::Character(_)
        | S::String(_)
        | S::Text => DataType::Utf8,
        S::Timestamp(precision, TimezoneInfo::None | TimezoneInfo::WithoutTimeZone) => {
            match precision {
                None | Some(0..=3) => DataType::Timestamp(TimeUnit::Millisecond, None),
                Some(p) => {
                    return Err(format!(
                        "TIMESTAMP({p}) is not supported: event times are in milliseconds (TIMESTAMP or TIMESTAMP(3))"
                    ));
                }
            }
        }
        S::Date => DataType::Date32,
        other => return Err(format!("type {other} is not supported (use {TYPES})")),
    })
}

fn parse_error(decl: &TableDecl, e: ParserError) -> EngineError {
    EngineError::Parse {
        stream: decl.name.clone(),
        message: e.to_string(),
    }
}

fn at_error(decl: &TableDecl, at: Location, message: &str) -> EngineError {
    EngineError::Sql {
        line: at.line as usize,
        column: at.column as usize,
        message: format!("table `{}`: {message}", decl.name),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sql::parse_script;

    fn declare(sql: &str) -> Result<SourceDef, String> {
        let script = parse_script(&format!("{sql};\nCREATE STREAM s AS SELECT 1 FROM t;"))
            .map_err(|e| e.to_string())?;
        source_def(&script.tables[0]).map_err(|e| e.to_string())
    }

    #[test]
    fn a_flink_style_declaration_becomes_a_catalog_entry() {
        let def = declare(
            "CREATE TABLE fills (
               fill_id BIGINT NOT NULL, trader_id VARCHAR, symbol STRING, side VARCHAR(4),
               quantity INT, price DOUBLE, notional DECIMAL(18, 4), ok BOOLEAN,
               day DATE, ts TIMESTAMP(3),
               WATERMARK FOR ts AS ts - INTERVAL '2' SECOND
             ) WITH ('connector' = 'kafka', 'topic' = 'desk.fills', 'format' = 'json', 'key' = 'trader_id, symbol')",
        )
        .unwrap();
        assert_eq!(def.name, "fills");
        assert_eq!(def.topic, "desk.fills");
        assert_eq!(def.format, SourceFormat::Json);
        assert_eq!(def.event_time, "ts");
        assert_eq!(def.key_columns, ["trader_id", "symbol"]);
        assert_eq!(def.watermark_delay, Some(Duration::from_secs(2)));
        assert_eq!(def.declared_at, Some(1));
        let types: Vec<String> = def
            .schema
            .fields()
            .iter()
            .map(|f| format!("{}:{}:{}", f.name(), f.data_type(), f.is_nullable()))
            .collect();
        assert_eq!(
            types,
            [
                "fill_id:Int64:false",
                "trader_id:Utf8:true",
                "symbol:Utf8:true",
                "side:Utf8:true",
                "quantity:Int32:true",
                "price:Float64:true",
                "notional:Decimal128(18, 4):true",
                "ok:Boolean:true",
                "day:Date32:true",
                "ts:Timestamp(ms):true",
            ]
        );
    }

    #[test]
    fn defaults_topic_from_the_name_and_lateness_zero_without_an_interval() {
        let def = declare(
            "CREATE TABLE my_quotes (px DOUBLE, ts TIMESTAMP, WATERMARK FOR ts AS ts) WITH ('format' = 'avro')",
        )
        .unwrap();
        assert_eq!(def.topic, "my-quotes");
        assert_eq!(def.format, SourceFormat::Avro);
        assert_eq!(def.watermark_delay, Some(Duration::ZERO));
        assert!(def.key_columns.is_empty());
    }

    #[test]
    fn bad_declarations_are_refused_with_their_position() {
        let cases = [
            (
                "CREATE TABLE t (ts TIMESTAMP) WITH ('format' = 'json')",
                "line 1, column 54",
                "needs an event time",
            ),
            (
                "CREATE TABLE t (\n  ts TIMESTAMP, x BLOB,\n  WATERMARK FOR ts AS ts)",
                "line 2, column 19",
                "type BLOB is not supported",
            ),
            (
                "CREATE TABLE t (n BIGINT, WATERMARK FOR n AS n) WITH ('format' = 'json')",
                "line 1, column 27",
                "must be a TIMESTAMP",
            ),
            (
                "CREATE TABLE t (ts TIMESTAMP, WATERMARK FOR tz AS tz) WITH ('format' = 'json')",
                "line 1, column 31",
                "no column `tz`",
            ),
            (
                "CREATE TABLE t (ts TIMESTAMP, WATERMARK FOR ts AS ts + INTERVAL '1' SECOND)",
                "line 1, column 51",
                "the watermark must be `ts` or `ts - INTERVAL",
            ),
            (
                "CREATE TABLE t (ts TIMESTAMP, WATERMARK FOR ts AS ts) WITH ('partitions' = '3')",
                "line 1, column 61",
                "unknown option 'partitions'",
            ),
            (
                "CREATE TABLE t (ts TIMESTAMP, WATERMARK FOR ts AS ts) WITH ('format' = 'csv')",
                "line 1, column 61",
                "format `csv` is not supported",
            ),
            (
                "CREATE TABLE t (ts TIMESTAMP, WATERMARK FOR ts AS ts) WITH ('format' = 'json', 'key' = 'nope')",
                "line 1, column 80",
                "no column `nope`",
            ),
            (
                "CREATE TABLE t (ts TIMESTAMP, WATERMARK FOR ts AS ts)",
                "line 1, column 53",
                "need a 'format'",
            ),
            (
                "CREATE TABLE t (ts TIMESTAMP, d DECIMAL(40, 2), WATERMARK FOR ts AS ts)",
                "line 1, column 33",
                "DECIMAL precision",
            ),
            (
                "CREATE TABLE t (ts TIMESTAMP, ts BIGINT, WATERMARK FOR ts AS ts)",
                "line 1, column 31",
                "declared twice",
            ),
        ];
        for (sql, at, what) in cases {
            let err = declare(sql).unwrap_err();
            assert!(err.contains(at) && err.contains(what), "{sql}\n→ {err}");
        }
        let err = declare("CREATE TABLE t (ts TIMESTAMP WATERMARK)").unwrap_err();
        assert!(err.contains("Line: 1"), "{err}");
    }
}
