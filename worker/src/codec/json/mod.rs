//! JSON lines ↔ Arrow.
//!
//! Decoding takes a chunk of lines at once: flat records of simple columns go
//! through the fast path in `flat` (one pass, straight into builders), and
//! anything that path declines through arrow-json's tape decoder; if the
//! chunk has a bad line it falls back to line-by-line decoding, so every
//! bad line is reported with its line number and all good lines still decode,
//! in order. Timestamp columns accept epoch numbers (in the column's unit, i.e.
//! milliseconds for `ts`) or RFC 3339 strings.
//!
//! Encoding is by hand per column type, for exact output: one object per row,
//! columns in schema order, timestamps as RFC 3339 UTC strings with a `Z`
//! (millisecond precision; microsecond/nanosecond columns keep their
//! precision), floats in Rust's shortest round-trip form (non-finite → null).

use std::io::Write as _;

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::compute::concat_batches;
use arrow::datatypes::{
    DataType, Date32Type, Float32Type, Float64Type, Int8Type, Int16Type, Int32Type, Int64Type,
    SchemaRef, TimeUnit, TimestampMicrosecondType, TimestampMillisecondType,
    TimestampNanosecondType, TimestampSecondType, UInt8Type, UInt16Type, UInt32Type, UInt64Type,
};
use arrow::json::ReaderBuilder;
use arrow::json::reader::Decoder;
use arrow::util::display::{ArrayFormatter, FormatOptions};

use super::CodecError;

mod flat;
use flat::FlatDecoder;

/// A line that could not be decoded (the caller turns it into a dead letter).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadLine {
    /// Line number as given by the caller.
    pub line: u64,
    pub reason: String,
    /// The line as read.
    pub raw: String,
}

const BATCH_ROWS: usize = 64 * 1024;

/// Decodes chunks of JSON lines into record batches of a fixed schema.
pub struct JsonLinesDecoder {
    schema: SchemaRef,
    decoder: Decoder,
    /// `None` when the schema has a column type the fast path does not fill.
    fast: Option<FlatDecoder>,
    buf: Vec<u8>,
}

impl std::fmt::Debug for JsonLinesDecoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JsonLinesDecoder")
            .field("schema", &self.schema)
            .finish_non_exhaustive()
    }
}

fn build_decoder(schema: &SchemaRef) -> Result<Decoder, CodecError> {
    Ok(ReaderBuilder::new(schema.clone())
        .with_batch_size(BATCH_ROWS)
        .build_decoder()?)
}

/// A line must hold one JSON object; this cheap check keeps line ↔ row
/// correspondence in the bulk path (a line with an unterminated object could
/// otherwise merge with the next one).
fn looks_like_object(line: &str) -> bool {
    let t = line.trim();
    t.starts_with('{') && t.ends_with('}')
}

impl JsonLinesDecoder {
    pub fn new(schema: SchemaRef) -> Result<Self, CodecError> {
        let mut decoder = Self::without_fast_path(schema)?;
        decoder.fast = FlatDecoder::new(&decoder.schema);
        Ok(decoder)
    }

    /// arrow-json alone: the reference the fast path is checked and
    /// measured against.
    pub fn without_fast_path(schema: SchemaRef) -> Result<Self, CodecError> {
        let decoder = build_decoder(&schema)?;
        Ok(JsonLinesDecoder {
            schema,
            decoder,
            fast: None,
            buf: Vec::new(),
        })
    }

    pub fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn reset(&mut self) {
        // Building succeeded once for this schema, so it succeeds again.
        if let Ok(d) = build_decoder(&self.schema) {
            self.decoder = d;
        }
    }

    /// Decodes `lines` (line number, text). Blank lines are skipped. Returns
    /// the rows of the good lines, in order (`None` if there are none), and
    /// the bad lines with the reason.
    pub fn decode(&mut self, lines: &[(u64, &str)]) -> (Option<RecordBatch>, Vec<BadLine>) {
        let records: Vec<(u64, &str)> = lines
            .iter()
            .copied()
            .filter(|(_, l)| !l.trim().is_empty())
            .collect();
        if records.is_empty() {
            return (None, Vec::new());
        }
        if records.iter().all(|(_, l)| looks_like_object(l)) {
            if let Some(batch) = self.fast.as_ref().and_then(|f| f.decode(&records)) {
                return (Some(batch), Vec::new());
            }
            if let Some(batch) = self.decode_bulk(&records) {
                return (Some(batch), Vec::new());
            }
        }
        self.decode_each(&records)
    }

    /// All lines at once; `None` if anything is off.
    fn decode_bulk(&mut self, records: &[(u64, &str)]) -> Option<RecordBatch> {
        self.buf.clear();
        for (_, l) in records {
            self.buf.extend_from_slice(l.as_bytes());
            self.buf.push(b'\n');
        }
        let mut batches = Vec::new();
        let mut at = 0;
        let ok = loop {
            match self.decoder.decode(&self.buf[at..]) {
                Ok(n) => at += n,
                Err(_) => break false,
            }
            let done = at >= self.buf.len();
            match self.decoder.flush() {
                Ok(Some(b)) => batches.push(b),
                Ok(None) => {}
                Err(_) => break false,
            }
            if done {
                break true;
            }
        };
        if !ok {
            self.reset();
            return None;
        }
        let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
        if rows != records.len() {
            return None;
        }
        match batches.len() {
            1 => batches.pop(),
            _ => concat_batches(&self.schema, &batches).ok(),
        }
    }

    fn decode_each(&mut self, records: &[(u64, &str)]) -> (Option<RecordBatch>, Vec<BadLine>) {
        let mut good = Vec::new();
        let mut bad = Vec::new();
        for &(line, text) in records {
            let result = self.decoder.decode(text.as_bytes()).and_then(|n| {
                if n < text.len() {
                    // Batch size reached within one line: more than one value.
                    Err(arrow::error::ArrowError::JsonError(
                        "too many JSON values on one line".into(),
                    ))
                } else {
                    self.decoder.flush()
                }
            });
            match result {
                Ok(Some(b)) if b.num_rows() == 1 => good.push(b),
                Ok(Some(b)) => bad.push(BadLine {
                    line,
                    reason: format!("expected one JSON object, found {} values", b.num_rows()),
                    raw: text.to_string(),
                }),
                Ok(None) => bad.push(BadLine {
                    line,
                    reason: "no JSON object on the line".into(),
                    raw: text.to_string(),
                }),
                Err(e) => {
                    self.reset();
                    bad.push(BadLine {
                        line,
                        reason: e.to_string(),
                        raw: text.to_string(),
                    });
                }
            }
        }
        let batch = match good.len() {
            0 => None,
            _ => match concat_batches(&self.schema, &good) {
                Ok(b) => Some(b),
                Err(e) => {
                    // Cannot happen: all batches share the schema. Report
                    // rather than drop.
                    for &(line, text) in records {
                        bad.push(BadLine {
                            line,
                            reason: format!("internal error: {e}"),
                            raw: text.to_string(),
                        });
                    }
                    None
                }
            },
        };
        (batch, bad)
    }
}

/// Writes record batches as JSON lines.
#[derive(Debug, Clone, Default)]
pub struct JsonLinesEncoder {}

/// Appends `s` as a JSON string literal.
pub fn write_json_str(out: &mut Vec<u8>, s: &str) {
    out.push(b'"');
    let bytes = s.as_bytes();
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let esc: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0x08 => b"\\b",
            0x0c => b"\\f",
            0..=0x1f => b"",
            _ => continue,
        };
        out.extend_from_slice(&bytes[start..i]);
        if esc.is_empty() {
            let _ = write!(out, "\\u{:04x}", b);
        } else {
            out.extend_from_slice(esc);
        }
        start = i + 1;
    }
    out.extend_from_slice(&bytes[start..]);
    out.push(b'"');
}

/// Days since 1970-01-01 → (year, month, day) (proleptic Gregorian).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// Appends an RFC 3339 UTC timestamp (`2026-01-05T09:30:05.000Z`) for
/// `value` in `unit`: milliseconds for second/millisecond columns, 6 or 9
/// fractional digits for microsecond/nanosecond columns.
pub fn write_rfc3339(out: &mut Vec<u8>, value: i64, unit: TimeUnit) {
    let (per_sec, digits) = match unit {
        TimeUnit::Second => (1, 3),
        TimeUnit::Millisecond => (1_000, 3),
        TimeUnit::Microsecond => (1_000_000, 6),
        TimeUnit::Nanosecond => (1_000_000_000, 9),
    };
    let secs = value.div_euclid(per_sec);
    let sub = value.rem_euclid(per_sec);
    let frac = match unit {
        TimeUnit::Second => 0,
        _ => sub,
    };
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    let _ = if (0..=9999).contains(&y) {
        write!(out, "\"{y:04}-{m:02}-{d:02}T")
    } else {
        write!(out, "\"{y:+05}-{m:02}-{d:02}T")
    };
    let _ = write!(
        out,
        "{:02}:{:02}:{:02}.{:0width$}Z\"",
        sod / 3600,
        sod / 60 % 60,
        sod % 60,
        frac,
        width = digits
    );
}

fn write_f64(out: &mut Vec<u8>, v: f64) {
    if v.is_finite() {
        let _ = write!(out, "{v:?}");
    } else {
        out.extend_from_slice(b"null");
    }
}

fn write_f32(out: &mut Vec<u8>, v: f32) {
    if v.is_finite() {
        let _ = write!(out, "{v:?}");
    } else {
        out.extend_from_slice(b"null");
    }
}

enum JCol<'a> {
    Bool(&'a arrow::array::BooleanArray),
    Int(Box<dyn Fn(usize) -> i128 + 'a>),
    F32(&'a arrow::array::Float32Array),
    F64(&'a arrow::array::Float64Array),
    Str(Box<dyn Fn(usize) -> &'a str + 'a>),
    Ts(Box<dyn Fn(usize) -> i64 + 'a>, TimeUnit),
    Date(&'a arrow::array::PrimitiveArray<Date32Type>),
    Other(ArrayFormatter<'a>),
}

impl JsonLinesEncoder {
    pub fn new() -> Self {
        JsonLinesEncoder {}
    }

    /// Appends one JSON object per row of `batch`, each ending in `\n`.
    pub fn encode_batch(&self, batch: &RecordBatch, out: &mut Vec<u8>) -> Result<(), CodecError> {
        let schema = batch.schema();
        let keys: Vec<Vec<u8>> = schema
            .fields()
            .iter()
            .map(|f| {
                let mut k = Vec::new();
                write_json_str(&mut k, f.name());
                k.push(b':');
                k
            })
            .collect();
        let options = FormatOptions::default();
        let mut cols = Vec::with_capacity(batch.num_columns());
        for c in batch.columns() {
            let col = match c.data_type() {
                DataType::Boolean => JCol::Bool(c.as_boolean()),
                DataType::Int8 => {
                    let a = c.as_primitive::<Int8Type>();
                    JCol::Int(Box::new(move |i| i128::from(a.value(i))))
                }
                DataType::Int16 => {
                    let a = c.as_primitive::<Int16Type>();
                    JCol::Int(Box::new(move |i| i128::from(a.value(i))))
                }
                DataType::Int32 => {
                    let a = c.as_primitive::<Int32Type>();
                    JCol::Int(Box::new(move |i| i128::from(a.value(i))))
                }
                DataType::Int64 => {
                    let a = c.as_primitive::<Int64Type>();
                    JCol::Int(Box::new(move |i| i128::from(a.value(i))))
                }
                DataType::UInt8 => {
                    let a = c.as_primitive::<UInt8Type>();
                    JCol::Int(Box::new(move |i| i128::from(a.value(i))))
                }
                DataType::UInt16 => {
                    let a = c.as_primitive::<UInt16Type>();
                    JCol::Int(Box::new(move |i| i128::from(a.value(i))))
                }
                DataType::UInt32 => {
                    let a = c.as_primitive::<UInt32Type>();
                    JCol::Int(Box::new(move |i| i128::from(a.value(i))))
                }
                DataType::UInt64 => {
                    let a = c.as_primitive::<UInt64Type>();
                    JCol::Int(Box::new(move |i| i128::from(a.value(i))))
                }
                DataType::Float32 => JCol::F32(c.as_primitive::<Float32Type>()),
                DataType::Float64 => JCol::F64(c.as_primitive::<Float64Type>()),
                DataType::Utf8 => {
                    let a = c.as_string::<i32>();
                    JCol::Str(Box::new(move |i| a.value(i)))
                }
                DataType::LargeUtf8 => {
                    let a = c.as_string::<i64>();
                    JCol::Str(Box::new(move |i| a.value(i)))
                }
                DataType::Utf8View => {
                    let a = c.as_string_view();
                    JCol::Str(Box::new(move |i| a.value(i)))
                }
                DataType::Timestamp(unit, _) => {
                    let f: Box<dyn Fn(usize) -> i64> = match unit {
                        TimeUnit::Second => {
                            let a = c.as_primitive::<TimestampSecondType>();
                            Box::new(move |i| a.value(i))
                        }
                        TimeUnit::Millisecond => {
                            let a = c.as_primitive::<TimestampMillisecondType>();
                            Box::new(move |i| a.value(i))
                        }
                        TimeUnit::Microsecond => {
                            let a = c.as_primitive::<TimestampMicrosecondType>();
                            Box::new(move |i| a.value(i))
                        }
                        TimeUnit::Nanosecond => {
                            let a = c.as_primitive::<TimestampNanosecondType>();
                            Box::new(move |i| a.value(i))
                        }
                    };
                    JCol::Ts(f, *unit)
                }
                DataType::Date32 => JCol::Date(c.as_primitive::<Date32Type>()),
                _ => JCol::Other(ArrayFormatter::try_new(c.as_ref(), &options)?),
            };
            cols.push(col);
        }
        let mut scratch = String::new();
        for row in 0..batch.num_rows() {
            out.push(b'{');
            for (i, (col, array)) in cols.iter().zip(batch.columns()).enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                out.extend_from_slice(&keys[i]);
                if array.is_null(row) {
                    out.extend_from_slice(b"null");
                    continue;
                }
                match col {
                    JCol::Bool(a) => {
                        out.extend_from_slice(if a.value(row) { b"true" } else { b"false" })
                    }
                    JCol::Int(f) => {
                        let _ = write!(out, "{}", f(row));
                    }
                    JCol::F32(a) => write_f32(out, a.value(row)),
                    JCol::F64(a) => write_f64(out, a.value(row)),
                    JCol::Str(f) => write_json_str(out, f(row)),
                    JCol::Ts(f, unit) => write_rfc3339(out, f(row), *unit),
                    JCol::Date(a) => {
                        let (y, m, d) = civil_from_days(i64::from(a.value(row)));
                        let _ = write!(out, "\"{y:04}-{m:02}-{d:02}\"");
                    }
                    JCol::Other(f) => {
                        scratch.clear();
                        use std::fmt::Write as _;
                        let _ = write!(scratch, "{}", f.value(row));
                        write_json_str(out, &scratch);
                    }
                }
            }
            out.extend_from_slice(b"}\n");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::SourceTable;
    use crate::codec::avro::tests::ticks;
    use arrow::array::{Float64Array, Int64Array, StringArray, TimestampMillisecondArray};
    use arrow::datatypes::{Field, Schema};
    use std::sync::Arc;

    const GOOD: &str = r#"{"symbol":"AAPL","exchange":"NASDAQ","price":189.5,"bid":189.49,"ask":189.51,"bid_size":100,"ask_size":200,"volume":50,"side":"buy","ts":"2026-01-05T09:30:00.123Z"}"#;

    fn tick_line(symbol: &str, ts: &str) -> String {
        format!(
            r#"{{"symbol":"{symbol}","exchange":"NYSE","price":10.0,"bid":9.99,"ask":10.01,"bid_size":1,"ask_size":2,"volume":3,"side":"sell","ts":{ts}}}"#
        )
    }

    #[test]
    fn bad_lines_are_reported_and_good_lines_survive() {
        let mut dec = JsonLinesDecoder::new(SourceTable::MarketTicks.arrow_schema()).unwrap();
        let l1 = tick_line("AAPL", "1767605400000");
        let l3 = tick_line("MSFT", "1767605400001");
        let missing = r#"{"symbol":"X","exchange":"NYSE","price":1.0,"bid":1.0,"ask":1.0,"bid_size":1,"ask_size":1,"side":"buy","ts":1}"#;
        let wrong_type = tick_line("TSLA", "1").replace("\"volume\":3", "\"volume\":\"lots\"");
        let two = format!("{l1}{l1}");
        let l9 = tick_line("NFLX", "\"2026-01-05T09:30:00.002Z\"");
        let lines: Vec<(u64, &str)> = vec![
            (1, &l1),
            (2, "{not json"),
            (3, &l3),
            (4, missing),
            (5, ""),
            (6, &wrong_type),
            (7, &two),
            (8, "[1,2]"),
            (9, &l9),
        ];
        let (batch, bad) = dec.decode(&lines);
        let batch = batch.unwrap();
        assert_eq!(batch.num_rows(), 3);
        let sym = batch.column(0).as_string::<i32>();
        assert_eq!(
            (sym.value(0), sym.value(1), sym.value(2)),
            ("AAPL", "MSFT", "NFLX")
        );
        let ts = batch.column(9).as_primitive::<TimestampMillisecondType>();
        assert_eq!(
            ts.values(),
            &[1_767_605_400_000, 1_767_605_400_001, 1_767_605_400_002]
        );
        let lines_bad: Vec<u64> = bad.iter().map(|b| b.line).collect();
        assert_eq!(lines_bad, vec![2, 4, 6, 7, 8]);
        assert_eq!(bad[0].raw, "{not json");
        assert!(bad[1].reason.contains("volume"), "{}", bad[1].reason);
        for b in &bad {
            assert!(!b.reason.is_empty());
        }
        // The decoder is still usable after a bad chunk.
        let (batch, bad) = dec.decode(&[(10, GOOD)]);
        assert!(bad.is_empty());
        assert_eq!(batch.unwrap().num_rows(), 1);
        assert_eq!(dec.decode(&[]).0, None);
    }

    #[test]
    fn ts_as_number_or_rfc3339_is_the_same_instant() {
        let mut dec = JsonLinesDecoder::new(SourceTable::MarketTicks.arrow_schema()).unwrap();
        let a = tick_line("AAPL", "1767605400123");
        let b = tick_line("AAPL", "\"2026-01-05T09:30:00.123Z\"");
        let c = tick_line("AAPL", "\"2026-01-05T10:30:00.123+01:00\"");
        let (batch, bad) = dec.decode(&[(1, &a), (2, &b), (3, &c)]);
        assert!(bad.is_empty(), "{bad:?}");
        let ts = batch.unwrap();
        let ts = ts.column(9).as_primitive::<TimestampMillisecondType>();
        assert_eq!(ts.values(), &[1_767_605_400_123; 3]);
    }

    #[test]
    fn encoder_output_is_exact() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("symbol", DataType::Utf8, true),
            Field::new("n", DataType::Int64, true),
            Field::new("x", DataType::Float64, true),
            Field::new(
                "window_start",
                DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())),
                false,
            ),
            Field::new("u", DataType::UInt64, false),
            Field::new("ok", DataType::Boolean, true),
        ]));
        let batch = RecordBatch::try_new(
            schema,
            vec![
                Arc::new(StringArray::from(vec![Some("A\"B\\\n\u{1}é"), None])),
                Arc::new(Int64Array::from(vec![Some(-5), None])),
                Arc::new(Float64Array::from(vec![Some(0.1), Some(f64::NAN)])),
                Arc::new(
                    TimestampMillisecondArray::from(vec![1_767_605_405_000, -1])
                        .with_timezone("UTC"),
                ),
                Arc::new(arrow::array::UInt64Array::from(vec![u64::MAX, 0])),
                Arc::new(arrow::array::BooleanArray::from(vec![Some(true), None])),
            ],
        )
        .unwrap();
        let mut out = Vec::new();
        JsonLinesEncoder::new()
            .encode_batch(&batch, &mut out)
            .unwrap();
        let text = String::from_utf8(out).unwrap();
        assert_eq!(
            text,
            concat!(
                r#"{"symbol":"A\"B\\\n\u0001é","n":-5,"x":0.1,"window_start":"2026-01-05T09:30:05.000Z","u":18446744073709551615,"ok":true}"#,
                "\n",
                r#"{"symbol":null,"n":null,"x":null,"window_start":"1969-12-31T23:59:59.999Z","u":0,"ok":null}"#,
                "\n"
            )
        );
        for line in text.lines() {
            serde_json::from_str::<serde_json::Value>(line).unwrap();
        }
    }

    #[test]
    fn float_formatting_round_trips() {
        let values = [
            0.1,
            1.0,
            -2.5,
            1e21,
            1e-7,
            123456.789,
            f64::MAX,
            f64::MIN_POSITIVE,
            -0.0,
        ];
        for v in values {
            let mut out = Vec::new();
            write_f64(&mut out, v);
            let s = String::from_utf8(out).unwrap();
            assert!(
                serde_json::from_str::<serde_json::Value>(&s)
                    .unwrap()
                    .is_number(),
                "{s}"
            );
            let parsed: f64 = s.parse().unwrap();
            assert_eq!(parsed.to_bits(), v.to_bits(), "{s}");
        }
        let mut out = Vec::new();
        write_f64(&mut out, f64::INFINITY);
        assert_eq!(out, b"null");
    }

    #[test]
    fn timestamps_format_in_every_unit() {
        let mut out = Vec::new();
        write_rfc3339(&mut out, 1_767_605_405, TimeUnit::Second);
        write_rfc3339(&mut out, 1_767_605_405_123_456, TimeUnit::Microsecond);
        write_rfc3339(&mut out, 951_782_400_000_000_001, TimeUnit::Nanosecond);
        write_rfc3339(&mut out, -62_135_596_800_000, TimeUnit::Millisecond);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            concat!(
                "\"2026-01-05T09:30:05.000Z\"",
                "\"2026-01-05T09:30:05.123456Z\"",
                "\"2000-02-29T00:00:00.000000001Z\"",
                "\"0001-01-01T00:00:00.000Z\""
            )
        );
        // Agrees with chrono over a range of instants.
        let mut v = -100_000_000_000_000i64;
        while v < 100_000_000_000_000 {
            let mut out = Vec::new();
            write_rfc3339(&mut out, v, TimeUnit::Millisecond);
            let expected = chrono::DateTime::from_timestamp_millis(v)
                .unwrap()
                .to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
            assert_eq!(String::from_utf8(out).unwrap(), format!("\"{expected}\""));
            v += 7_777_777_777_777;
        }
    }

    #[test]
    fn encode_then_decode_round_trip() {
        let batch = ticks(500, 1_767_605_400_000);
        let mut out = Vec::new();
        JsonLinesEncoder::new()
            .encode_batch(&batch, &mut out)
            .unwrap();
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<(u64, &str)> = text
            .lines()
            .enumerate()
            .map(|(i, l)| (i as u64 + 1, l))
            .collect();
        let mut dec = JsonLinesDecoder::new(batch.schema()).unwrap();
        let (back, bad) = dec.decode(&lines);
        assert!(bad.is_empty());
        assert_eq!(back.unwrap(), batch);
    }

    /// Every non-blank line ends up either as a row or as a bad record, and
    /// mangled input never panics.
    #[test]
    fn fuzzed_lines_are_rows_or_bad_records() {
        let mut seed = 0xdead_beef_cafe_f00du64;
        let mut rnd = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let mut dec = JsonLinesDecoder::new(SourceTable::MarketTicks.arrow_schema()).unwrap();
        let base = [
            GOOD.to_string(),
            tick_line("AAPL", "1767605400000"),
            tick_line("NVDA", "\"2026-01-05T09:30:00Z\""),
        ];
        let iters: usize = std::env::var("TICKFLOW_FUZZ_ITERS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(2_000);
        for _ in 0..iters / 10 {
            let lines: Vec<String> = (0..10)
                .map(|_| {
                    let mut b = base[rnd() as usize % 3].clone().into_bytes();
                    if rnd() % 2 == 0 {
                        for _ in 0..1 + rnd() % 3 {
                            let at = rnd() as usize % b.len();
                            match rnd() % 3 {
                                0 => {
                                    b[at] = b" {}[]\":,0123456789.eEtrufalsn-"[rnd() as usize % 30]
                                }
                                1 => {
                                    b.remove(at);
                                }
                                _ => b.insert(at, b"{}\",:"[rnd() as usize % 5]),
                            }
                        }
                    }
                    String::from_utf8_lossy(&b).replace('\n', " ")
                })
                .collect();
            let numbered: Vec<(u64, &str)> = lines
                .iter()
                .enumerate()
                .map(|(i, l)| (i as u64, l.as_str()))
                .collect();
            let (batch, bad) = dec.decode(&numbered);
            let rows = batch.map_or(0, |b| b.num_rows());
            let non_blank = lines.iter().filter(|l| !l.trim().is_empty()).count();
            assert_eq!(rows + bad.len(), non_blank, "{lines:#?} {bad:#?}");
        }
    }
}
