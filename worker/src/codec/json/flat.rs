//! The fast path for the common JSON line: one flat object whose values are
//! numbers, strings without escapes, booleans or null, decoded straight into
//! Arrow builders in one pass over the bytes.
//!
//! arrow-json first writes a tape of every token and then converts it
//! column by column; for the flat records a market feed carries that is most
//! of a replay's time. This path only decides *faster*, never differently:
//! whatever it is not sure of (an escape, a nested value, a duplicate key, a
//! string where a number is expected, a number that lexical-core does not
//! parse, a missing value in a non-nullable column, a column type it does not
//! handle) makes it give up on the whole chunk, and arrow-json decodes it as
//! before. Where it does decode, it parses numbers with the same lexical-core
//! calls arrow-json makes, so the rows are arrow-json's (`tests` check this
//! on generated lines, malformed ones included).

use std::sync::Arc;

use arrow::array::{
    ArrayRef, BooleanBuilder, Float32Builder, Float64Builder, Int32Builder, Int64Builder,
    RecordBatch, StringBuilder,
};
use arrow::compute::cast;
use arrow::compute::kernels::cast_utils::string_to_datetime;
use arrow::datatypes::{DataType, SchemaRef, TimeUnit};

/// Column types the fast path fills; any other type in the schema turns it off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Utf8,
    Boolean,
    Int32,
    Int64,
    Float32,
    Float64,
    /// Epoch numbers in the column's unit; date-time strings too when the
    /// column has no time zone (parsed by arrow's own `string_to_datetime`
    /// in UTC, as arrow-json does).
    Timestamp(TimeUnit),
}

impl Kind {
    fn of(data_type: &DataType) -> Option<Kind> {
        Some(match data_type {
            DataType::Utf8 => Kind::Utf8,
            DataType::Boolean => Kind::Boolean,
            DataType::Int32 => Kind::Int32,
            DataType::Int64 => Kind::Int64,
            DataType::Float32 => Kind::Float32,
            DataType::Float64 => Kind::Float64,
            DataType::Timestamp(unit, _) => Kind::Timestamp(*unit),
            _ => return None,
        })
    }
}

/// One column being filled.
enum Builder {
    Utf8(StringBuilder),
    Boolean(BooleanBuilder),
    Int32(Int32Builder),
    Int64(Int64Builder),
    /// Timestamps: i64 values until `finish`; `strings` when the column has
    /// no time zone.
    Timestamp {
        values: Int64Builder,
        unit: TimeUnit,
        strings: bool,
    },
    Float32(Float32Builder),
    Float64(Float64Builder),
}

impl Builder {
    fn new(kind: Kind, data_type: &DataType, rows: usize) -> Builder {
        match kind {
            Kind::Utf8 => Builder::Utf8(StringBuilder::with_capacity(rows, rows * 8)),
            Kind::Boolean => Builder::Boolean(BooleanBuilder::with_capacity(rows)),
            Kind::Int32 => Builder::Int32(Int32Builder::with_capacity(rows)),
            Kind::Int64 => Builder::Int64(Int64Builder::with_capacity(rows)),
            Kind::Timestamp(unit) => Builder::Timestamp {
                values: Int64Builder::with_capacity(rows),
                unit,
                strings: matches!(data_type, DataType::Timestamp(_, None)),
            },
            Kind::Float32 => Builder::Float32(Float32Builder::with_capacity(rows)),
            Kind::Float64 => Builder::Float64(Float64Builder::with_capacity(rows)),
        }
    }

    fn append_null(&mut self) {
        match self {
            Builder::Utf8(b) => b.append_null(),
            Builder::Boolean(b) => b.append_null(),
            Builder::Int32(b) => b.append_null(),
            Builder::Int64(b) | Builder::Timestamp { values: b, .. } => b.append_null(),
            Builder::Float32(b) => b.append_null(),
            Builder::Float64(b) => b.append_null(),
        }
    }

    fn finish(self, data_type: &DataType) -> Result<ArrayRef, Decline> {
        Ok(match self {
            Builder::Utf8(mut b) => Arc::new(b.finish()) as ArrayRef,
            Builder::Boolean(mut b) => Arc::new(b.finish()),
            Builder::Int32(mut b) => Arc::new(b.finish()),
            Builder::Float32(mut b) => Arc::new(b.finish()),
            Builder::Float64(mut b) => Arc::new(b.finish()),
            Builder::Int64(mut b) => Arc::new(b.finish()),
            // Int64 to a timestamp type reinterprets the values; it does not fail.
            Builder::Timestamp { mut values, .. } => {
                return cast(&values.finish(), data_type).map_err(|_| Decline);
            }
        })
    }
}

/// Decodes chunks of flat JSON objects of one schema, or declines.
#[derive(Debug)]
pub struct FlatDecoder {
    schema: SchemaRef,
    kinds: Vec<Kind>,
    names: Vec<Box<[u8]>>,
    nullable: Vec<bool>,
}

/// Gives up on the chunk (arrow-json decodes it instead).
struct Decline;

impl FlatDecoder {
    /// `None` when the schema has a column type the fast path does not fill.
    pub fn new(schema: &SchemaRef) -> Option<FlatDecoder> {
        let kinds = schema
            .fields()
            .iter()
            .map(|f| Kind::of(f.data_type()))
            .collect::<Option<Vec<_>>>()?;
        Some(FlatDecoder {
            schema: SchemaRef::clone(schema),
            kinds,
            names: schema
                .fields()
                .iter()
                .map(|f| f.name().as_bytes().into())
                .collect(),
            nullable: schema.fields().iter().map(|f| f.is_nullable()).collect(),
        })
    }

    /// The rows of `lines` (each one JSON object, not blank), or `None` when
    /// any line is outside the fast path.
    pub fn decode(&self, lines: &[(u64, &str)]) -> Option<RecordBatch> {
        let mut row = Row {
            decoder: self,
            builders: self
                .kinds
                .iter()
                .zip(self.schema.fields())
                .map(|(k, f)| Builder::new(*k, f.data_type(), lines.len()))
                .collect(),
            seen: vec![0; self.kinds.len()],
            stamp: 0,
        };
        for (_, line) in lines {
            row.stamp += 1;
            row.line(line.as_bytes()).ok()?;
        }
        let columns = row
            .builders
            .into_iter()
            .zip(self.schema.fields())
            .map(|(b, f)| b.finish(f.data_type()))
            .collect::<Result<_, _>>()
            .ok()?;
        RecordBatch::try_new(SchemaRef::clone(&self.schema), columns).ok()
    }

    /// The column named `key`, trying `hint` (the column after the last one
    /// seen: lines usually list the columns in schema order) first.
    fn column(&self, key: &[u8], hint: usize) -> Option<usize> {
        if self.names.get(hint).is_some_and(|n| **n == *key) {
            return Some(hint);
        }
        self.names.iter().position(|n| **n == *key)
    }
}

/// The builders while a chunk is decoded.
struct Row<'a> {
    decoder: &'a FlatDecoder,
    builders: Vec<Builder>,
    /// `stamp` of the last line that set each column (duplicates decline).
    seen: Vec<u64>,
    stamp: u64,
}

impl Row<'_> {
    fn line(&mut self, b: &[u8]) -> Result<(), Decline> {
        let mut at = skip_ws(b, 0);
        expect(b, &mut at, b'{')?;
        at = skip_ws(b, at);
        let mut hint = 0;
        if b.get(at) == Some(&b'}') {
            at += 1;
        } else {
            loop {
                let key = string(b, &mut at)?;
                at = skip_ws(b, at);
                expect(b, &mut at, b':')?;
                at = skip_ws(b, at);
                match self.decoder.column(key, hint) {
                    Some(c) => {
                        if self.seen[c] == self.stamp {
                            return Err(Decline);
                        }
                        self.seen[c] = self.stamp;
                        self.value(c, b, &mut at)?;
                        hint = c + 1;
                    }
                    None => skip_scalar(b, &mut at)?,
                }
                at = skip_ws(b, at);
                match b.get(at) {
                    Some(b',') => at = skip_ws(b, at + 1),
                    Some(b'}') => {
                        at += 1;
                        break;
                    }
                    _ => return Err(Decline),
                }
            }
        }
        if skip_ws(b, at) != b.len() {
            return Err(Decline);
        }
        for c in 0..self.builders.len() {
            if self.seen[c] != self.stamp {
                self.null(c)?;
            }
        }
        Ok(())
    }

    fn null(&mut self, c: usize) -> Result<(), Decline> {
        if !self.decoder.nullable[c] {
            return Err(Decline);
        }
        self.builders[c].append_null();
        Ok(())
    }

    /// Appends the value at `at` to column `c`.
    fn value(&mut self, c: usize, b: &[u8], at: &mut usize) -> Result<(), Decline> {
        if b[*at..].starts_with(b"null") {
            *at += 4;
            return self.null(c);
        }
        match &mut self.builders[c] {
            Builder::Utf8(s) => {
                let bytes = string(b, at)?;
                // The line is UTF-8 and quotes are ASCII, so this holds.
                s.append_value(std::str::from_utf8(bytes).map_err(|_| Decline)?);
            }
            Builder::Boolean(v) => {
                if b[*at..].starts_with(b"true") {
                    *at += 4;
                    v.append_value(true);
                } else if b[*at..].starts_with(b"false") {
                    *at += 5;
                    v.append_value(false);
                } else {
                    return Err(Decline);
                }
            }
            Builder::Int32(v) => v.append_value(parse(number(b, at)?)?),
            Builder::Int64(v) => v.append_value(parse(number(b, at)?)?),
            Builder::Timestamp {
                values,
                unit,
                strings,
            } => match b.get(*at) {
                Some(b'"') if *strings => {
                    let text = std::str::from_utf8(string(b, at)?).map_err(|_| Decline)?;
                    values.append_value(date_time(text, *unit)?);
                }
                _ => values.append_value(parse(number(b, at)?)?),
            },
            Builder::Float32(v) => v.append_value(parse(number(b, at)?)?),
            Builder::Float64(v) => v.append_value(parse(number(b, at)?)?),
        }
        Ok(())
    }
}

/// A date-time string in `unit`, as arrow-json reads it into a column
/// without a time zone.
fn date_time(text: &str, unit: TimeUnit) -> Result<i64, Decline> {
    let at = string_to_datetime(&chrono::Utc, text).map_err(|_| Decline)?;
    match unit {
        TimeUnit::Second => Ok(at.timestamp()),
        TimeUnit::Millisecond => Ok(at.timestamp_millis()),
        TimeUnit::Microsecond => Ok(at.timestamp_micros()),
        TimeUnit::Nanosecond => at.timestamp_nanos_opt().ok_or(Decline),
    }
}

fn parse<T: lexical_core::FromLexical>(token: &[u8]) -> Result<T, Decline> {
    lexical_core::parse(token).map_err(|_| Decline)
}

fn skip_ws(b: &[u8], mut at: usize) -> usize {
    while matches!(b.get(at), Some(b' ' | b'\t' | b'\n' | b'\r')) {
        at += 1;
    }
    at
}

fn expect(b: &[u8], at: &mut usize, byte: u8) -> Result<(), Decline> {
    if b.get(*at) != Some(&byte) {
        return Err(Decline);
    }
    *at += 1;
    Ok(())
}

/// A string without escapes at `at`, without its quotes.
fn string<'b>(b: &'b [u8], at: &mut usize) -> Result<&'b [u8], Decline> {
    expect(b, at, b'"')?;
    let start = *at;
    let len = b[start..]
        .iter()
        .position(|&c| c == b'"' || c == b'\\')
        .ok_or(Decline)?;
    if b[start + len] == b'\\' {
        return Err(Decline);
    }
    *at = start + len + 1;
    Ok(&b[start..start + len])
}

/// The bytes of the number token at `at` (the bytes arrow-json's tape takes).
fn number<'b>(b: &'b [u8], at: &mut usize) -> Result<&'b [u8], Decline> {
    let start = *at;
    if !matches!(b.get(start), Some(b'-' | b'0'..=b'9')) {
        return Err(Decline);
    }
    let len = b[start..]
        .iter()
        .position(|c| !matches!(c, b'0'..=b'9' | b'-' | b'+' | b'.' | b'e' | b'E'))
        .unwrap_or(b.len() - start);
    *at = start + len;
    Ok(&b[start..start + len])
}

/// Skips the value of a key the schema does not have (nested values decline).
fn skip_scalar(b: &[u8], at: &mut usize) -> Result<(), Decline> {
    match b.get(*at) {
        Some(b'"') => string(b, at).map(|_| ()),
        Some(b'-' | b'0'..=b'9') => number(b, at).map(|_| ()),
        _ => {
            for literal in [&b"null"[..], b"true", b"false"] {
                if b[*at..].starts_with(literal) {
                    *at += literal.len();
                    return Ok(());
                }
            }
            Err(Decline)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::json::JsonLinesDecoder;
    use arrow::datatypes::{Field, Schema};
    use rand::{Rng, SeedableRng};

    fn schema() -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new("symbol", DataType::Utf8, false),
            Field::new("price", DataType::Float64, true),
            Field::new("size", DataType::Int64, true),
            Field::new("small", DataType::Int32, true),
            Field::new("ratio", DataType::Float32, true),
            Field::new("live", DataType::Boolean, true),
            Field::new(
                "ts",
                DataType::Timestamp(TimeUnit::Millisecond, None),
                false,
            ),
        ]))
    }

    /// arrow-json alone (the reference): the codec with the fast path off.
    fn reference(lines: &[(u64, &str)]) -> (Option<RecordBatch>, usize) {
        let mut d = JsonLinesDecoder::without_fast_path(schema()).unwrap();
        let (rows, bad) = d.decode(lines);
        (rows, bad.len())
    }

    fn numbered(lines: &[String]) -> Vec<(u64, &str)> {
        lines
            .iter()
            .enumerate()
            .map(|(i, l)| (i as u64 + 1, l.as_str()))
            .collect()
    }

    /// A value for `column` that is usually right and sometimes hostile.
    fn value(rng: &mut impl Rng, column: &str) -> String {
        let odd = [
            "null",
            "\"7\"",
            "1e400",
            "-",
            "1.5",
            "007",
            "1e3",
            "-0.0",
            "99999999999999999999",
            "true",
            "{}",
            "[1]",
            "\"a\\\"b\"",
            "nul",
            "+1",
            "2147483648",
            "\"é✓\"",
            "\"2026-01-05T09:30:05.123Z\"",
            "\"2026-01-05 09:30:05\"",
            "\"2026-01-05T09:30:05.123456789+02:00\"",
            "\"2026-13-45T00:00:00Z\"",
        ];
        if rng.random_bool(0.04) {
            return odd[rng.random_range(0..odd.len())].to_string();
        }
        match column {
            "symbol" => format!("\"S{}\"", rng.random_range(0..5)),
            "price" | "ratio" => format!("{}", rng.random_range(-1e6..1e6f64)),
            "size" | "small" | "ts" => format!("{}", rng.random_range(-100_000..100_000i64)),
            "live" => format!("{}", rng.random_bool(0.5)),
            _ => "1".into(),
        }
    }

    fn line(rng: &mut impl Rng) -> String {
        let mut columns = vec!["symbol", "price", "size", "small", "ratio", "live", "ts"];
        if rng.random_bool(0.1) {
            columns.swap(0, rng.random_range(0..7));
        }
        if rng.random_bool(0.1) {
            columns.remove(rng.random_range(0..columns.len()));
        }
        if rng.random_bool(0.05) {
            columns.push("price");
        }
        if rng.random_bool(0.1) {
            columns.insert(rng.random_range(0..columns.len()), "extra");
        }
        let fields: Vec<String> = columns
            .iter()
            .map(|c| format!("\"{c}\":{}", value(rng, c)))
            .collect();
        let sep = if rng.random_bool(0.1) { " , " } else { "," };
        format!("{{{}}}", fields.join(sep))
    }

    #[test]
    fn decodes_what_arrow_json_decodes_or_declines() {
        let fast = FlatDecoder::new(&schema()).unwrap();
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        let (mut taken, mut declined) = (0, 0);
        for _ in 0..1000 {
            let n = rng.random_range(1..4);
            let lines: Vec<String> = (0..n).map(|_| line(&mut rng)).collect();
            let lines = numbered(&lines);
            match fast.decode(&lines) {
                Some(rows) => {
                    taken += 1;
                    let (expected, bad) = reference(&lines);
                    assert_eq!(bad, 0, "{lines:?}");
                    assert_eq!(Some(rows), expected, "{lines:?}");
                }
                None => declined += 1,
            }
        }
        // Both branches ran, so the comparison above was exercised.
        assert!(
            taken > 50 && declined > 50,
            "{taken} taken, {declined} declined"
        );
    }

    #[test]
    fn takes_plain_market_lines_and_declines_what_it_does_not_handle() {
        let fast = FlatDecoder::new(&schema()).unwrap();
        let plain = [
            r#"{"symbol":"AAPL","price":187.25,"size":100,"small":-3,"ratio":0.5,"live":true,"ts":1767225600000}"#,
            r#" { "ts" : 5 , "symbol" : "MSFT", "extra": "x", "more": null } "#,
            r#"{"symbol":"IBM","ts":"2026-01-05T09:30:05.123Z"}"#,
        ];
        let rows = fast
            .decode(&numbered(&plain.map(String::from)))
            .expect("plain lines take the fast path");
        assert_eq!(Some(rows), reference(&numbered(&plain.map(String::from))).0);
        for declined in [
            r#"{"symbol":"A\"B","ts":1}"#,
            r#"{"symbol":"A","ts":1,"ts":2}"#,
            r#"{"symbol":"A","ts":"not a time"}"#,
            r#"{"symbol":"A","ts":1,"nested":{"a":1}}"#,
            r#"{"symbol":"A"}"#,
            r#"{"symbol":"A","ts":1} {"symbol":"B","ts":2}"#,
            r#"{"symbol":"A","ts":1,"price":"1.5"}"#,
        ] {
            assert!(
                fast.decode(&[(1, declined)]).is_none(),
                "{declined} should go to arrow-json"
            );
        }
    }

    #[test]
    fn schemas_with_other_column_types_have_no_fast_path() {
        let schema = Arc::new(Schema::new(vec![Field::new("d", DataType::Date32, true)]));
        assert!(FlatDecoder::new(&schema).is_none());
    }
}
