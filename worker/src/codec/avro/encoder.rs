//! [`AvroEncoder`]: Arrow rows → Avro binary record bodies, plus the Avro
//! binary writing primitives (`write_long`, `write_bytes`) and the encoding
//! of field defaults.
//!
//! Invariants: Avro fields are matched to Arrow columns by name once, when the
//! encoder is built; a row that fails to encode leaves nothing behind in the
//! output buffer (it is truncated back to where the row started).

use std::collections::HashMap;

use apache_avro::Schema;
use apache_avro::schema::Namespace;
use arrow::array::{
    Array, AsArray, BinaryArray, BooleanArray, Float32Array, Float64Array, RecordBatch, StringArray,
};
use arrow::datatypes::{
    DataType, Date32Type, Int8Type, Int16Type, Int32Type, Int64Type, SchemaRef, TimeUnit,
    TimestampMicrosecondType, TimestampMillisecondType, TimestampNanosecondType,
    TimestampSecondType, UInt8Type, UInt16Type, UInt32Type, UInt64Type,
};

use super::decoder::{is_int_like, is_long_like, timestamp_unit, unsupported};
use crate::codec::CodecError;
use crate::codec::schema::{Names, deref, kind_name, named_types, nullable_union};

// ---------------------------------------------------------------------------
// Encoding
// ---------------------------------------------------------------------------

#[inline]
pub(super) fn write_long(out: &mut Vec<u8>, v: i64) {
    let mut z = ((v << 1) ^ (v >> 63)) as u64;
    while z >= 0x80 {
        out.push((z as u8) | 0x80);
        z >>= 7;
    }
    out.push(z as u8);
}

#[inline]
pub(super) fn write_bytes(out: &mut Vec<u8>, b: &[u8]) {
    write_long(out, b.len() as i64);
    out.extend_from_slice(b);
}

/// Avro value type an encoder field writes.
#[derive(Debug, Clone)]
enum EncKind {
    Bool,
    Int,
    /// long (and long-based logical types), with a unit conversion for
    /// timestamps: value * mul / div.
    Long {
        mul: i64,
        div: i64,
    },
    Float,
    Double,
    /// string, uuid or bytes: length-prefixed.
    Bytes,
    Enum(HashMap<String, i64>),
}

#[derive(Debug, Clone)]
enum EncSource {
    Column(usize),
    /// Pre-encoded default (field missing from the Arrow schema).
    Default(Vec<u8>),
}

#[derive(Debug, Clone)]
struct EncField {
    name: String,
    source: EncSource,
    kind: EncKind,
    union: Option<(i64, i64)>,
}

/// Encodes Arrow rows as Avro binary bodies of a record schema.
///
/// Avro fields are matched to Arrow columns by name (extra Arrow columns are
/// ignored; Avro fields without a column are written with their default).
#[derive(Debug, Clone)]
pub struct AvroEncoder {
    arrow: SchemaRef,
    fields: Vec<EncField>,
}

/// Units per second of an Arrow time unit.
fn arrow_unit(unit: &TimeUnit) -> i64 {
    match unit {
        TimeUnit::Second => 1,
        TimeUnit::Millisecond => 1_000,
        TimeUnit::Microsecond => 1_000_000,
        TimeUnit::Nanosecond => 1_000_000_000,
    }
}

fn is_arrow_str(dt: &DataType) -> bool {
    matches!(
        dt,
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View
    )
}

fn is_arrow_bin(dt: &DataType) -> bool {
    matches!(
        dt,
        DataType::Binary | DataType::LargeBinary | DataType::BinaryView
    )
}

impl AvroEncoder {
    /// An encoder from rows of `arrow` to the Avro record schema `avro`.
    pub fn new(arrow: SchemaRef, avro: &Schema) -> Result<Self, CodecError> {
        let Schema::Record(rec) = avro else {
            return Err(unsupported("Avro schema must be a record"));
        };
        let names = named_types(avro)?;
        let ns = &rec.name.namespace;
        let mut fields = Vec::with_capacity(rec.fields.len());
        for af in &rec.fields {
            let union = nullable_union(&af.schema)
                .map_err(|why| unsupported(format!("field `{}`: {why}", af.name)))?;
            let value = match (&af.schema, union) {
                (Schema::Union(u), Some((_, v))) => &u.variants()[v],
                _ => &af.schema,
            };
            let value = deref(value, &names, ns)
                .map_err(|why| unsupported(format!("field `{}`: {why}", af.name)))?;
            let Ok(col) = arrow.index_of(&af.name) else {
                let Some(default) = &af.default else {
                    return Err(unsupported(format!(
                        "Avro field `{}` has no Arrow column and no default",
                        af.name
                    )));
                };
                let bytes = encode_default(&af.schema, default, &names, ns)
                    .map_err(|why| unsupported(format!("field `{}`: {why}", af.name)))?;
                fields.push(EncField {
                    name: af.name.clone(),
                    source: EncSource::Default(bytes),
                    kind: EncKind::Bool,
                    union: None,
                });
                continue;
            };
            let dt = arrow.field(col).data_type();
            let mismatch = || {
                unsupported(format!(
                    "column `{}`: Arrow type {dt} cannot be written as Avro {}",
                    af.name,
                    kind_name(value)
                ))
            };
            let numeric = dt.is_integer() || matches!(dt, DataType::Float32 | DataType::Float64);
            let kind = match value {
                Schema::Boolean if *dt == DataType::Boolean => EncKind::Bool,
                Schema::Int | Schema::Date | Schema::TimeMillis
                    if dt.is_integer() || *dt == DataType::Date32 =>
                {
                    EncKind::Int
                }
                v if is_long_like(v) => match dt {
                    DataType::Timestamp(unit, _) => {
                        let from = arrow_unit(unit);
                        let to = timestamp_unit(v).unwrap_or(from);
                        if to >= from {
                            EncKind::Long {
                                mul: to / from,
                                div: 1,
                            }
                        } else {
                            EncKind::Long {
                                mul: 1,
                                div: from / to,
                            }
                        }
                    }
                    dt if dt.is_integer() || *dt == DataType::Date32 => {
                        EncKind::Long { mul: 1, div: 1 }
                    }
                    _ => return Err(mismatch()),
                },
                Schema::Float if numeric => EncKind::Float,
                Schema::Double if numeric => EncKind::Double,
                Schema::String | Schema::Uuid if is_arrow_str(dt) => EncKind::Bytes,
                Schema::Bytes if is_arrow_str(dt) || is_arrow_bin(dt) => EncKind::Bytes,
                Schema::Enum(e) if is_arrow_str(dt) => EncKind::Enum(
                    e.symbols
                        .iter()
                        .enumerate()
                        .map(|(i, s)| (s.clone(), i as i64))
                        .collect(),
                ),
                _ => return Err(mismatch()),
            };
            fields.push(EncField {
                name: af.name.clone(),
                source: EncSource::Column(col),
                kind,
                union: union.map(|(n, v)| (n as i64, v as i64)),
            });
        }
        Ok(AvroEncoder { arrow, fields })
    }

    /// The Arrow schema rows are expected in.
    pub fn arrow_schema(&self) -> SchemaRef {
        self.arrow.clone()
    }

    fn bind<'a>(&self, batch: &'a RecordBatch) -> Result<Vec<Option<Col<'a>>>, CodecError> {
        if batch.num_columns() != self.arrow.fields().len() {
            return Err(CodecError::SchemaMismatch(format!(
                "batch has {} columns, encoder expects {}",
                batch.num_columns(),
                self.arrow.fields().len()
            )));
        }
        self.fields
            .iter()
            .map(|f| match f.source {
                EncSource::Default(_) => Ok(None),
                EncSource::Column(i) => {
                    let expected = self.arrow.field(i).data_type();
                    let array = batch.column(i);
                    if array.data_type() != expected {
                        return Err(CodecError::SchemaMismatch(format!(
                            "column `{}` is {}, encoder expects {expected}",
                            f.name,
                            array.data_type()
                        )));
                    }
                    Col::bind(array.as_ref())
                        .map(Some)
                        .ok_or_else(|| CodecError::SchemaMismatch(format!("column `{}`", f.name)))
                }
            })
            .collect()
    }

    fn encode_bound(
        &self,
        cols: &[Option<Col<'_>>],
        row: usize,
        out: &mut Vec<u8>,
    ) -> Result<(), CodecError> {
        for (f, col) in self.fields.iter().zip(cols) {
            let col = match (&f.source, col) {
                (EncSource::Default(bytes), _) => {
                    out.extend_from_slice(bytes);
                    continue;
                }
                (EncSource::Column(_), Some(col)) => col,
                (EncSource::Column(_), None) => continue,
            };
            let err = |reason: String| CodecError::Encode {
                field: f.name.clone(),
                row,
                reason,
            };
            let null = col.is_null(row);
            match f.union {
                Some((null_idx, value_idx)) => {
                    if null {
                        write_long(out, null_idx);
                        continue;
                    }
                    write_long(out, value_idx);
                }
                None if null => return Err(err("null in a non-nullable Avro field".into())),
                None => {}
            }
            match &f.kind {
                EncKind::Bool => out.push(u8::from(col.bool(row))),
                EncKind::Int => {
                    let v = col.int(row).map_err(err)?;
                    let v = i32::try_from(v).map_err(|_| err(format!("{v} overflows Avro int")))?;
                    write_long(out, i64::from(v));
                }
                EncKind::Long { mul, div } => {
                    let v = col.int(row).map_err(err)?;
                    let v = if *mul != 1 {
                        v.checked_mul(*mul)
                            .ok_or_else(|| err(format!("timestamp {v} overflows")))?
                    } else {
                        v.div_euclid(*div)
                    };
                    write_long(out, v);
                }
                EncKind::Float => out.extend_from_slice(&(col.float(row) as f32).to_le_bytes()),
                EncKind::Double => out.extend_from_slice(&col.float(row).to_le_bytes()),
                EncKind::Bytes => write_bytes(out, col.bytes(row)),
                EncKind::Enum(symbols) => {
                    let s = col.bytes(row);
                    let idx = std::str::from_utf8(s)
                        .ok()
                        .and_then(|s| symbols.get(s))
                        .ok_or_else(|| {
                            err(format!(
                                "`{}` is not a symbol of the enum",
                                String::from_utf8_lossy(s)
                            ))
                        })?;
                    write_long(out, *idx);
                }
            }
        }
        Ok(())
    }

    /// Appends the Avro body of `batch` row `row` to `out`.
    pub fn encode_row(
        &self,
        batch: &RecordBatch,
        row: usize,
        out: &mut Vec<u8>,
    ) -> Result<(), CodecError> {
        if row >= batch.num_rows() {
            return Err(CodecError::SchemaMismatch(format!(
                "row {row} out of range (batch has {} rows)",
                batch.num_rows()
            )));
        }
        let cols = self.bind(batch)?;
        let start = out.len();
        self.encode_bound(&cols, row, out)
            .inspect_err(|_| out.truncate(start))
    }

    /// Appends the Avro bodies of all rows of `batch` to `out`, pushing the
    /// end offset (in `out`) of each row to `row_ends`. On error `out` and
    /// `row_ends` hold the rows before the failing one.
    pub fn encode_batch(
        &self,
        batch: &RecordBatch,
        out: &mut Vec<u8>,
        row_ends: &mut Vec<usize>,
    ) -> Result<(), CodecError> {
        let cols = self.bind(batch)?;
        row_ends.reserve(batch.num_rows());
        for row in 0..batch.num_rows() {
            let start = out.len();
            self.encode_bound(&cols, row, out)
                .inspect_err(|_| out.truncate(start))?;
            row_ends.push(out.len());
        }
        Ok(())
    }
}

/// A typed view of one Arrow column for encoding.
enum Col<'a> {
    Bool(&'a BooleanArray),
    I8(&'a arrow::array::PrimitiveArray<Int8Type>),
    I16(&'a arrow::array::PrimitiveArray<Int16Type>),
    I32(&'a arrow::array::PrimitiveArray<Int32Type>),
    I64(&'a arrow::array::PrimitiveArray<Int64Type>),
    U8(&'a arrow::array::PrimitiveArray<UInt8Type>),
    U16(&'a arrow::array::PrimitiveArray<UInt16Type>),
    U32(&'a arrow::array::PrimitiveArray<UInt32Type>),
    U64(&'a arrow::array::PrimitiveArray<UInt64Type>),
    Date32(&'a arrow::array::PrimitiveArray<Date32Type>),
    TsS(&'a arrow::array::PrimitiveArray<TimestampSecondType>),
    TsMs(&'a arrow::array::PrimitiveArray<TimestampMillisecondType>),
    TsUs(&'a arrow::array::PrimitiveArray<TimestampMicrosecondType>),
    TsNs(&'a arrow::array::PrimitiveArray<TimestampNanosecondType>),
    F32(&'a Float32Array),
    F64(&'a Float64Array),
    Str(&'a StringArray),
    LargeStr(&'a arrow::array::LargeStringArray),
    StrView(&'a arrow::array::StringViewArray),
    Bin(&'a BinaryArray),
    LargeBin(&'a arrow::array::LargeBinaryArray),
    BinView(&'a arrow::array::BinaryViewArray),
}

impl<'a> Col<'a> {
    fn bind(a: &'a dyn Array) -> Option<Self> {
        Some(match a.data_type() {
            DataType::Boolean => Col::Bool(a.as_boolean()),
            DataType::Int8 => Col::I8(a.as_primitive()),
            DataType::Int16 => Col::I16(a.as_primitive()),
            DataType::Int32 => Col::I32(a.as_primitive()),
            DataType::Int64 => Col::I64(a.as_primitive()),
            DataType::UInt8 => Col::U8(a.as_primitive()),
            DataType::UInt16 => Col::U16(a.as_primitive()),
            DataType::UInt32 => Col::U32(a.as_primitive()),
            DataType::UInt64 => Col::U64(a.as_primitive()),
            DataType::Date32 => Col::Date32(a.as_primitive()),
            DataType::Timestamp(TimeUnit::Second, _) => Col::TsS(a.as_primitive()),
            DataType::Timestamp(TimeUnit::Millisecond, _) => Col::TsMs(a.as_primitive()),
            DataType::Timestamp(TimeUnit::Microsecond, _) => Col::TsUs(a.as_primitive()),
            DataType::Timestamp(TimeUnit::Nanosecond, _) => Col::TsNs(a.as_primitive()),
            DataType::Float32 => Col::F32(a.as_primitive()),
            DataType::Float64 => Col::F64(a.as_primitive()),
            DataType::Utf8 => Col::Str(a.as_string()),
            DataType::LargeUtf8 => Col::LargeStr(a.as_string()),
            DataType::Utf8View => Col::StrView(a.as_string_view()),
            DataType::Binary => Col::Bin(a.as_binary()),
            DataType::LargeBinary => Col::LargeBin(a.as_binary()),
            DataType::BinaryView => Col::BinView(a.as_binary_view()),
            _ => return None,
        })
    }

    fn is_null(&self, row: usize) -> bool {
        match self {
            Col::Bool(a) => a.is_null(row),
            Col::I8(a) => a.is_null(row),
            Col::I16(a) => a.is_null(row),
            Col::I32(a) => a.is_null(row),
            Col::I64(a) => a.is_null(row),
            Col::U8(a) => a.is_null(row),
            Col::U16(a) => a.is_null(row),
            Col::U32(a) => a.is_null(row),
            Col::U64(a) => a.is_null(row),
            Col::Date32(a) => a.is_null(row),
            Col::TsS(a) => a.is_null(row),
            Col::TsMs(a) => a.is_null(row),
            Col::TsUs(a) => a.is_null(row),
            Col::TsNs(a) => a.is_null(row),
            Col::F32(a) => a.is_null(row),
            Col::F64(a) => a.is_null(row),
            Col::Str(a) => a.is_null(row),
            Col::LargeStr(a) => a.is_null(row),
            Col::StrView(a) => a.is_null(row),
            Col::Bin(a) => a.is_null(row),
            Col::LargeBin(a) => a.is_null(row),
            Col::BinView(a) => a.is_null(row),
        }
    }

    fn bool(&self, row: usize) -> bool {
        match self {
            Col::Bool(a) => a.value(row),
            _ => false,
        }
    }

    /// Integer-like value (integers, dates, timestamps).
    fn int(&self, row: usize) -> Result<i64, String> {
        Ok(match self {
            Col::I8(a) => i64::from(a.value(row)),
            Col::I16(a) => i64::from(a.value(row)),
            Col::I32(a) => i64::from(a.value(row)),
            Col::I64(a) => a.value(row),
            Col::U8(a) => i64::from(a.value(row)),
            Col::U16(a) => i64::from(a.value(row)),
            Col::U32(a) => i64::from(a.value(row)),
            Col::U64(a) => {
                let v = a.value(row);
                i64::try_from(v).map_err(|_| format!("{v} overflows Avro long"))?
            }
            Col::Date32(a) => i64::from(a.value(row)),
            Col::TsS(a) => a.value(row),
            Col::TsMs(a) => a.value(row),
            Col::TsUs(a) => a.value(row),
            Col::TsNs(a) => a.value(row),
            _ => return Err("not an integer column".into()),
        })
    }

    fn float(&self, row: usize) -> f64 {
        match self {
            Col::F32(a) => f64::from(a.value(row)),
            Col::F64(a) => a.value(row),
            Col::U64(a) => a.value(row) as f64,
            other => other.int(row).map(|v| v as f64).unwrap_or(f64::NAN),
        }
    }

    fn bytes(&self, row: usize) -> &'a [u8] {
        match self {
            Col::Str(a) => a.value(row).as_bytes(),
            Col::LargeStr(a) => a.value(row).as_bytes(),
            Col::StrView(a) => a.value(row).as_bytes(),
            Col::Bin(a) => a.value(row),
            Col::LargeBin(a) => a.value(row),
            Col::BinView(a) => a.value(row),
            _ => &[],
        }
    }
}

/// Avro binary encoding of a field default (JSON), for the field's schema.
fn encode_default(
    schema: &Schema,
    json: &serde_json::Value,
    names: &Names<'_>,
    ns: &Namespace,
) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    let schema = match schema {
        Schema::Union(u) => {
            // The default belongs to the first branch.
            write_long(&mut out, 0);
            u.variants().first().ok_or("empty union")?
        }
        s => s,
    };
    let schema = deref(schema, names, ns)?;
    let bad = || format!("default {json} does not fit {}", kind_name(schema));
    match schema {
        Schema::Null if json.is_null() => {}
        Schema::Boolean => out.push(u8::from(json.as_bool().ok_or_else(bad)?)),
        s if is_int_like(s) || is_long_like(s) => {
            write_long(&mut out, json.as_i64().ok_or_else(bad)?)
        }
        Schema::Float => {
            out.extend_from_slice(&(json.as_f64().ok_or_else(bad)? as f32).to_le_bytes())
        }
        Schema::Double => out.extend_from_slice(&json.as_f64().ok_or_else(bad)?.to_le_bytes()),
        Schema::String | Schema::Uuid => {
            write_bytes(&mut out, json.as_str().ok_or_else(bad)?.as_bytes())
        }
        Schema::Bytes => {
            let s = json.as_str().ok_or_else(bad)?;
            let b: Vec<u8> = s
                .chars()
                .map(|c| u8::try_from(u32::from(c)).map_err(|_| bad()))
                .collect::<Result<_, _>>()?;
            write_bytes(&mut out, &b);
        }
        Schema::Enum(e) => {
            let s = json.as_str().ok_or_else(bad)?;
            let idx = e.symbols.iter().position(|x| x == s).ok_or_else(bad)?;
            write_long(&mut out, idx as i64);
        }
        _ => return Err(bad()),
    }
    Ok(out)
}
