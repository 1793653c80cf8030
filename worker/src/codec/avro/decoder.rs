//! [`AvroDecoder`]: a reader schema (optionally resolved against a writer
//! schema) compiled once into a flat list of field operations, run by a hot
//! loop that writes straight into typed column buffers.
//!
//! Invariants: a record that fails to decode is rolled back completely (the
//! store is truncated to the rows decoded before it), so a batch only ever
//! contains whole, valid rows; decoding never panics on bad input. Schema
//! incompatibilities are reported when the decoder is built, not per record.

use std::sync::Arc;

use apache_avro::Schema;
use apache_avro::schema::{Namespace, RecordField, RecordSchema};
use arrow::array::builder::BooleanBufferBuilder;
use arrow::array::{
    ArrayRef, BinaryArray, BooleanArray, Date32Array, Float32Array, Float64Array, Int32Array,
    Int64Array, RecordBatch, RecordBatchOptions, StringArray, TimestampMicrosecondArray,
    TimestampMillisecondArray, TimestampNanosecondArray,
};
use arrow::buffer::{Buffer, NullBuffer, OffsetBuffer, ScalarBuffer};
use arrow::datatypes::{DataType, SchemaRef, TimeUnit};

use super::reader::{Raw, Skip, is_utf8, read_bool, read_bytes, read_fixed, read_int, read_long};
use crate::codec::schema::{Names, avro_to_arrow, deref, kind_name, named_types, nullable_union};
use crate::codec::{CodecError, DecodeError};

// ---------------------------------------------------------------------------
// Compiled field operations
// ---------------------------------------------------------------------------

/// Where a reader column's values live: index into the typed store vectors.
#[derive(Debug, Clone, Copy)]
enum Target {
    Bool(u32),
    I32(u32),
    I64(u32),
    F32(u32),
    F64(u32),
    Bytes(u32),
}

/// How to read one writer field and where to put it.
#[derive(Debug, Clone, Copy)]
enum Kind {
    Bool,
    IntI32,
    IntI64,
    IntF32,
    IntF64,
    LongI64,
    /// Timestamp unit conversion: multiply (e.g. millis → micros).
    LongMul(i64),
    /// Timestamp unit conversion: floor-divide (e.g. micros → millis).
    LongDiv(i64),
    LongF32,
    LongF64,
    FloatF32,
    FloatF64,
    DoubleF64,
    /// string/bytes → Utf8 (validated).
    Str,
    /// string/bytes → Binary.
    Bin,
    /// enum index → Utf8 symbol via a symbol table.
    EnumStr(u32),
    /// Writer field the reader does not have.
    Skip(u32),
}

const NONE: u32 = u32::MAX;

#[derive(Debug, Clone, Copy)]
struct Op {
    kind: Kind,
    slot: u32,
    /// Index into `store.valid` for nullable reader columns, else `NONE`.
    valid: u32,
    /// Writer union `["null", T]`: branch index of null and of T.
    union: Option<(i64, i64)>,
    /// Reader column (for pushing nulls); unused for skips.
    target: Target,
    /// Index into `field_names` (writer field), for error messages.
    field: u32,
}

/// Writer enum symbols mapped to reader symbols.
#[derive(Debug, Clone)]
struct EnumTable {
    writer: Vec<String>,
    /// Reader symbol for each writer index (`None`: unknown to the reader and
    /// the reader enum has no default).
    reader: Vec<Option<String>>,
}

#[derive(Debug, Clone)]
enum DefaultValue {
    Null,
    Bool(bool),
    I32(i32),
    I64(i64),
    F32(f32),
    F64(f64),
    Bytes(Vec<u8>),
}

#[derive(Debug, Clone)]
struct DefaultOp {
    target: Target,
    valid: u32,
    value: DefaultValue,
}

#[derive(Debug, Default)]
struct ByteCol {
    offsets: Vec<i32>,
    data: Vec<u8>,
}

/// Column buffers, grouped by type so each op dispatches once.
#[derive(Debug, Default)]
struct Store {
    bools: Vec<BooleanBufferBuilder>,
    i32s: Vec<Vec<i32>>,
    i64s: Vec<Vec<i64>>,
    f32s: Vec<Vec<f32>>,
    f64s: Vec<Vec<f64>>,
    bytes: Vec<ByteCol>,
    valid: Vec<BooleanBufferBuilder>,
}

impl Store {
    #[inline]
    fn push_null(&mut self, target: Target) {
        match target {
            Target::Bool(s) => self.bools[s as usize].append(false),
            Target::I32(s) => self.i32s[s as usize].push(0),
            Target::I64(s) => self.i64s[s as usize].push(0),
            Target::F32(s) => self.f32s[s as usize].push(0.0),
            Target::F64(s) => self.f64s[s as usize].push(0.0),
            Target::Bytes(s) => {
                let col = &mut self.bytes[s as usize];
                let end = col.offsets.last().copied().unwrap_or(0);
                col.offsets.push(end);
            }
        }
    }

    fn push_bytes(&mut self, slot: u32, bytes: &[u8], len: i64) -> Result<(), Raw> {
        let col = &mut self.bytes[slot as usize];
        col.data.extend_from_slice(bytes);
        // Offsets are i32: refuse (and roll back) a row that would overflow them.
        let end = i32::try_from(col.data.len()).map_err(|_| Raw::Length(len))?;
        col.offsets.push(end);
        Ok(())
    }

    fn push_default(&mut self, d: &DefaultOp) -> Result<(), Raw> {
        if matches!(d.value, DefaultValue::Null) {
            self.push_null(d.target);
            if d.valid != NONE {
                self.valid[d.valid as usize].append(false);
            }
            return Ok(());
        }
        match (&d.value, d.target) {
            (DefaultValue::Bool(v), Target::Bool(s)) => self.bools[s as usize].append(*v),
            (DefaultValue::I32(v), Target::I32(s)) => self.i32s[s as usize].push(*v),
            (DefaultValue::I64(v), Target::I64(s)) => self.i64s[s as usize].push(*v),
            (DefaultValue::F32(v), Target::F32(s)) => self.f32s[s as usize].push(*v),
            (DefaultValue::F64(v), Target::F64(s)) => self.f64s[s as usize].push(*v),
            (DefaultValue::Bytes(v), Target::Bytes(s)) => self.push_bytes(s, v, v.len() as i64)?,
            // Checked when the default was compiled.
            _ => self.push_null(d.target),
        }
        if d.valid != NONE {
            self.valid[d.valid as usize].append(true);
        }
        Ok(())
    }

    /// Drops every value past the first `rows` rows.
    fn truncate(&mut self, rows: usize) {
        for b in &mut self.bools {
            b.truncate(rows);
        }
        for v in &mut self.i32s {
            v.truncate(rows);
        }
        for v in &mut self.i64s {
            v.truncate(rows);
        }
        for v in &mut self.f32s {
            v.truncate(rows);
        }
        for v in &mut self.f64s {
            v.truncate(rows);
        }
        for c in &mut self.bytes {
            c.offsets.truncate(rows + 1);
            let end = c.offsets.last().copied().unwrap_or(0);
            c.data.truncate(end as usize);
        }
        for b in &mut self.valid {
            b.truncate(rows);
        }
    }
}

/// One reader column: its Arrow type and where its values are.
#[derive(Debug, Clone)]
struct Column {
    data_type: DataType,
    target: Target,
    valid: u32,
}

/// A decode failure: which op, what happened.
struct Fail {
    op: usize,
    raw: Raw,
}

// ---------------------------------------------------------------------------
// The decoder
// ---------------------------------------------------------------------------

/// Decodes Avro binary record bodies of one schema into Arrow record batches.
///
/// ```ignore
/// let mut dec = AvroDecoder::new(SourceTable::MarketTicks.avro_schema())?;
/// for msg in messages {
///     let (_id, body) = confluent::unframe(msg)?;
///     if let Err(e) = dec.decode(body) { dead_letter(msg, e.reason()) }
/// }
/// let batch = dec.finish();
/// ```
#[derive(Debug)]
pub struct AvroDecoder {
    schema: SchemaRef,
    ops: Vec<Op>,
    defaults: Vec<DefaultOp>,
    skips: Vec<Skip>,
    enums: Vec<EnumTable>,
    /// Field names for error messages: writer fields, then reader fields
    /// filled from defaults.
    field_names: Vec<String>,
    columns: Vec<Column>,
    store: Store,
    rows: usize,
    /// Rows of the last finished batch, to size the next one's buffers.
    capacity: usize,
}

pub(super) fn unsupported(msg: impl Into<String>) -> CodecError {
    CodecError::UnsupportedSchema(msg.into())
}

/// Units per second of a timestamp logical type.
pub(super) fn timestamp_unit(schema: &Schema) -> Option<i64> {
    match schema {
        Schema::TimestampMillis | Schema::LocalTimestampMillis => Some(1_000),
        Schema::TimestampMicros | Schema::LocalTimestampMicros => Some(1_000_000),
        Schema::TimestampNanos | Schema::LocalTimestampNanos => Some(1_000_000_000),
        _ => None,
    }
}

pub(super) fn is_int_like(s: &Schema) -> bool {
    matches!(s, Schema::Int | Schema::Date | Schema::TimeMillis)
}

pub(super) fn is_long_like(s: &Schema) -> bool {
    matches!(s, Schema::Long | Schema::TimeMicros) || timestamp_unit(s).is_some()
}

fn is_bytes_like(s: &Schema) -> bool {
    matches!(s, Schema::String | Schema::Bytes | Schema::Uuid)
}

impl AvroDecoder {
    /// A decoder for records written with `reader` itself.
    pub fn new(reader: &Schema) -> Result<Self, CodecError> {
        Self::with_writer(reader, reader)
    }

    /// A decoder for records written with `writer`, producing the columns of
    /// `reader` (Avro schema resolution): writer fields the reader lacks are
    /// skipped, reader fields the writer lacks take the reader's default,
    /// numeric types are promoted (int → long/float/double, long →
    /// float/double, float → double), string ↔ bytes, enums → strings, a
    /// writer `["null", T]` into a non-null reader field fails only for null
    /// values, and timestamps are converted between millis/micros/nanos.
    pub fn with_writer(writer: &Schema, reader: &Schema) -> Result<Self, CodecError> {
        let schema = avro_to_arrow(reader)?;
        let Schema::Record(rrec) = reader else {
            return Err(unsupported("reader schema must be a record"));
        };
        let Schema::Record(wrec) = writer else {
            return Err(unsupported("writer schema must be a record"));
        };
        let rnames = named_types(reader)?;
        let wnames = named_types(writer)?;
        let rns = &rrec.name.namespace;
        let wns = &wrec.name.namespace;

        let mut store = Store::default();
        let mut columns = Vec::with_capacity(rrec.fields.len());
        for f in schema.fields() {
            let n = |len: usize| len as u32;
            let target = match f.data_type() {
                DataType::Boolean => {
                    store.bools.push(BooleanBufferBuilder::new(0));
                    Target::Bool(n(store.bools.len() - 1))
                }
                DataType::Int32 | DataType::Date32 => {
                    store.i32s.push(Vec::new());
                    Target::I32(n(store.i32s.len() - 1))
                }
                DataType::Int64 | DataType::Timestamp(_, _) => {
                    store.i64s.push(Vec::new());
                    Target::I64(n(store.i64s.len() - 1))
                }
                DataType::Float32 => {
                    store.f32s.push(Vec::new());
                    Target::F32(n(store.f32s.len() - 1))
                }
                DataType::Float64 => {
                    store.f64s.push(Vec::new());
                    Target::F64(n(store.f64s.len() - 1))
                }
                DataType::Utf8 | DataType::Binary => {
                    store.bytes.push(ByteCol {
                        offsets: vec![0],
                        data: Vec::new(),
                    });
                    Target::Bytes(n(store.bytes.len() - 1))
                }
                other => return Err(unsupported(format!("Arrow type {other} in decoder"))),
            };
            let valid = if f.is_nullable() {
                store.valid.push(BooleanBufferBuilder::new(0));
                n(store.valid.len() - 1)
            } else {
                NONE
            };
            columns.push(Column {
                data_type: f.data_type().clone(),
                target,
                valid,
            });
        }

        let mut dec = AvroDecoder {
            schema,
            ops: Vec::new(),
            defaults: Vec::new(),
            skips: Vec::new(),
            enums: Vec::new(),
            field_names: Vec::new(),
            columns,
            store,
            rows: 0,
            capacity: 0,
        };

        let mut matched = vec![false; rrec.fields.len()];
        for wf in &wrec.fields {
            let field = dec.field_names.len() as u32;
            dec.field_names.push(wf.name.clone());
            match find_reader_field(rrec, &wf.name) {
                None => {
                    let skip = Skip::compile(&wf.schema, &wnames, wns, &mut Vec::new())
                        .map_err(|why| unsupported(format!("writer field `{}`: {why}", wf.name)))?;
                    if matches!(skip, Skip::Zero) {
                        continue;
                    }
                    dec.skips.push(skip);
                    dec.ops.push(Op {
                        kind: Kind::Skip(dec.skips.len() as u32 - 1),
                        slot: 0,
                        valid: NONE,
                        union: None,
                        target: Target::Bool(0),
                        field,
                    });
                }
                Some(ri) => {
                    if matched[ri] {
                        return Err(unsupported(format!(
                            "reader field `{}` matches two writer fields",
                            rrec.fields[ri].name
                        )));
                    }
                    matched[ri] = true;
                    let rf = &rrec.fields[ri];
                    let op = dec
                        .compile_read(wf, &wnames, wns, rf, &rnames, rns, ri, field)
                        .map_err(|why| unsupported(format!("field `{}`: {why}", rf.name)))?;
                    dec.ops.push(op);
                }
            }
        }
        for (ri, rf) in rrec.fields.iter().enumerate() {
            if matched[ri] {
                continue;
            }
            let col = &dec.columns[ri];
            let value = compile_default(rf, &rnames, rns, &col.data_type, col.valid != NONE)
                .map_err(|why| unsupported(format!("reader field `{}`: {why}", rf.name)))?;
            dec.defaults.push(DefaultOp {
                target: col.target,
                valid: col.valid,
                value,
            });
            dec.field_names.push(rf.name.clone());
        }
        Ok(dec)
    }

    #[allow(clippy::too_many_arguments)]
    fn compile_read(
        &mut self,
        wf: &RecordField,
        wnames: &Names<'_>,
        wns: &Namespace,
        rf: &RecordField,
        rnames: &Names<'_>,
        rns: &Namespace,
        ri: usize,
        field: u32,
    ) -> Result<Op, String> {
        let col = self.columns[ri].clone();
        let runion = nullable_union(&rf.schema)?;
        let rvalue = match (&rf.schema, runion) {
            (Schema::Union(u), Some((_, v))) => &u.variants()[v],
            _ => &rf.schema,
        };
        let rvalue = deref(rvalue, rnames, rns)?;
        let wunion = nullable_union(&wf.schema)?;
        let wvalue = match (&wf.schema, wunion) {
            (Schema::Union(u), Some((_, v))) => &u.variants()[v],
            _ => &wf.schema,
        };
        let wvalue = deref(wvalue, wnames, wns)?;

        let mismatch = || {
            format!(
                "writer type {} cannot be read as {}",
                kind_name(wvalue),
                kind_name(rvalue)
            )
        };
        let (kind, slot) = match col.target {
            Target::Bool(s) => match wvalue {
                Schema::Boolean => (Kind::Bool, s),
                _ => return Err(mismatch()),
            },
            Target::I32(s) => match wvalue {
                w if is_int_like(w) => (Kind::IntI32, s),
                _ => return Err(mismatch()),
            },
            Target::I64(s) => match wvalue {
                w if is_int_like(w) => (Kind::IntI64, s),
                w if is_long_like(w) => {
                    let kind = match (timestamp_unit(w), timestamp_unit(rvalue)) {
                        (Some(wu), Some(ru)) if wu < ru => Kind::LongMul(ru / wu),
                        (Some(wu), Some(ru)) if wu > ru => Kind::LongDiv(wu / ru),
                        _ => Kind::LongI64,
                    };
                    (kind, s)
                }
                _ => return Err(mismatch()),
            },
            Target::F32(s) => match wvalue {
                w if is_int_like(w) => (Kind::IntF32, s),
                w if is_long_like(w) => (Kind::LongF32, s),
                Schema::Float => (Kind::FloatF32, s),
                _ => return Err(mismatch()),
            },
            Target::F64(s) => match wvalue {
                w if is_int_like(w) => (Kind::IntF64, s),
                w if is_long_like(w) => (Kind::LongF64, s),
                Schema::Float => (Kind::FloatF64, s),
                Schema::Double => (Kind::DoubleF64, s),
                _ => return Err(mismatch()),
            },
            Target::Bytes(s) => {
                let utf8 = col.data_type == DataType::Utf8;
                match wvalue {
                    w if is_bytes_like(w) => (if utf8 { Kind::Str } else { Kind::Bin }, s),
                    Schema::Enum(we) if utf8 => {
                        let reader: Vec<Option<String>> = match rvalue {
                            Schema::Enum(re) => we
                                .symbols
                                .iter()
                                .map(|sym| {
                                    if re.symbols.contains(sym) {
                                        Some(sym.clone())
                                    } else {
                                        re.default.clone()
                                    }
                                })
                                .collect(),
                            _ => we.symbols.iter().cloned().map(Some).collect(),
                        };
                        self.enums.push(EnumTable {
                            writer: we.symbols.clone(),
                            reader,
                        });
                        (Kind::EnumStr(self.enums.len() as u32 - 1), s)
                    }
                    _ => return Err(mismatch()),
                }
            }
        };
        Ok(Op {
            kind,
            slot,
            valid: col.valid,
            union: wunion.map(|(n, v)| (n as i64, v as i64)),
            target: col.target,
            field,
        })
    }

    /// Arrow schema of the batches (the mapping of the reader schema).
    pub fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    /// Rows decoded since the last [`finish`](Self::finish).
    pub fn len(&self) -> usize {
        self.rows
    }

    pub fn is_empty(&self) -> bool {
        self.rows == 0
    }

    /// Decodes exactly one record from `body`; bytes after it are an error
    /// (and the record is not kept).
    pub fn decode(&mut self, body: &[u8]) -> Result<(), DecodeError> {
        let used = self.decode_one(body)?;
        if used != body.len() {
            self.rows -= 1;
            self.store.truncate(self.rows);
            return Err(DecodeError::TrailingBytes(body.len() - used));
        }
        Ok(())
    }

    /// Decodes one record from the start of `buf` and returns the number of
    /// bytes it took (records in a container block follow each other).
    pub fn decode_one(&mut self, buf: &[u8]) -> Result<usize, DecodeError> {
        match run(
            &self.ops,
            &self.defaults,
            &self.skips,
            &self.enums,
            &mut self.store,
            buf,
        ) {
            Ok(used) => {
                self.rows += 1;
                Ok(used)
            }
            Err(fail) => {
                self.store.truncate(self.rows);
                Err(self.describe(fail))
            }
        }
    }

    /// Drops the rows decoded since the last [`finish`](Self::finish).
    pub fn clear(&mut self) {
        self.rows = 0;
        self.store.truncate(0);
    }

    fn describe(&self, fail: Fail) -> DecodeError {
        let field = || {
            let idx = match self.ops.get(fail.op) {
                Some(op) => op.field as usize,
                // Defaults follow the writer fields in `field_names`.
                None => self.field_names.len() - self.defaults.len() + (fail.op - self.ops.len()),
            };
            self.field_names.get(idx).cloned().unwrap_or_default()
        };
        match fail.raw {
            Raw::Truncated => DecodeError::Truncated { field: field() },
            Raw::Varint => DecodeError::BadVarint { field: field() },
            Raw::Utf8 => DecodeError::InvalidUtf8 { field: field() },
            Raw::UnionIndex(index) => DecodeError::BadUnionIndex {
                field: field(),
                index,
            },
            Raw::EnumIndex(index) => DecodeError::BadEnumIndex {
                field: field(),
                index,
            },
            Raw::UnknownSymbol { table, index } => DecodeError::UnknownEnumSymbol {
                field: field(),
                symbol: self.enums[table as usize].writer[index as usize].clone(),
            },
            Raw::Length(len) => DecodeError::BadLength {
                field: field(),
                len,
            },
            Raw::Null => DecodeError::NullInNonNullable { field: field() },
            Raw::Bool(byte) => DecodeError::BadBoolean {
                field: field(),
                byte,
            },
        }
    }

    /// Builds a record batch of the rows decoded so far and resets the
    /// buffers. The column buffers move into Arrow without copying.
    pub fn finish(&mut self) -> RecordBatch {
        let rows = self.rows;
        self.capacity = self.capacity.max(rows);
        let cap = self.capacity;
        let mut arrays: Vec<ArrayRef> = Vec::with_capacity(self.columns.len());
        for col in &self.columns {
            let nulls = if col.valid != NONE {
                let b = &mut self.store.valid[col.valid as usize];
                let buf = NullBuffer::new(b.finish());
                *b = BooleanBufferBuilder::new(cap);
                (buf.null_count() > 0).then_some(buf)
            } else {
                None
            };
            let array: ArrayRef = match col.target {
                Target::Bool(s) => {
                    let b = &mut self.store.bools[s as usize];
                    let values = b.finish();
                    *b = BooleanBufferBuilder::new(cap);
                    Arc::new(BooleanArray::new(values, nulls))
                }
                Target::I32(s) => {
                    let v = std::mem::replace(
                        &mut self.store.i32s[s as usize],
                        Vec::with_capacity(cap),
                    );
                    let values = ScalarBuffer::from(v);
                    match col.data_type {
                        DataType::Date32 => Arc::new(Date32Array::new(values, nulls)),
                        _ => Arc::new(Int32Array::new(values, nulls)),
                    }
                }
                Target::I64(s) => {
                    let v = std::mem::replace(
                        &mut self.store.i64s[s as usize],
                        Vec::with_capacity(cap),
                    );
                    let values = ScalarBuffer::from(v);
                    match &col.data_type {
                        DataType::Timestamp(TimeUnit::Millisecond, _) => {
                            Arc::new(TimestampMillisecondArray::new(values, nulls))
                        }
                        DataType::Timestamp(TimeUnit::Microsecond, _) => {
                            Arc::new(TimestampMicrosecondArray::new(values, nulls))
                        }
                        DataType::Timestamp(TimeUnit::Nanosecond, _) => {
                            Arc::new(TimestampNanosecondArray::new(values, nulls))
                        }
                        _ => Arc::new(Int64Array::new(values, nulls)),
                    }
                }
                Target::F32(s) => {
                    let v = std::mem::replace(
                        &mut self.store.f32s[s as usize],
                        Vec::with_capacity(cap),
                    );
                    Arc::new(Float32Array::new(ScalarBuffer::from(v), nulls))
                }
                Target::F64(s) => {
                    let v = std::mem::replace(
                        &mut self.store.f64s[s as usize],
                        Vec::with_capacity(cap),
                    );
                    Arc::new(Float64Array::new(ScalarBuffer::from(v), nulls))
                }
                Target::Bytes(s) => {
                    let c = &mut self.store.bytes[s as usize];
                    let data_cap = c.data.len();
                    let mut offsets = Vec::with_capacity(cap + 1);
                    offsets.push(0);
                    let offsets = std::mem::replace(&mut c.offsets, offsets);
                    let data = std::mem::replace(&mut c.data, Vec::with_capacity(data_cap));
                    let offsets = OffsetBuffer::new(ScalarBuffer::from(offsets));
                    let data = Buffer::from_vec(data);
                    if col.data_type == DataType::Utf8 {
                        // Every value was validated when decoded; `new` re-checks
                        // the whole buffer once (cheap for short strings).
                        Arc::new(StringArray::new(offsets, data, nulls))
                    } else {
                        Arc::new(BinaryArray::new(offsets, data, nulls))
                    }
                }
            };
            arrays.push(array);
        }
        self.rows = 0;
        RecordBatch::try_new_with_options(
            self.schema.clone(),
            arrays,
            &RecordBatchOptions::new().with_row_count(Some(rows)),
        )
        .expect("decoder columns match the decoder schema")
    }
}

fn find_reader_field(rrec: &RecordSchema, name: &str) -> Option<usize> {
    if let Some(&i) = rrec.lookup.get(name) {
        return Some(i);
    }
    rrec.fields.iter().position(|f| {
        f.aliases
            .as_ref()
            .is_some_and(|a| a.iter().any(|alias| alias == name))
    })
}

fn compile_default(
    rf: &RecordField,
    rnames: &Names<'_>,
    rns: &Namespace,
    data_type: &DataType,
    nullable: bool,
) -> Result<DefaultValue, String> {
    let Some(json) = &rf.default else {
        return Err("missing from the writer schema and has no default".into());
    };
    // For a union the default belongs to the first branch.
    let first = match &rf.schema {
        Schema::Union(u) => u.variants().first().ok_or("empty union")?,
        s => s,
    };
    if json.is_null() {
        return if nullable && matches!(first, Schema::Null) {
            Ok(DefaultValue::Null)
        } else {
            Err("default null for a non-null type".into())
        };
    }
    let first = deref(first, rnames, rns)?;
    let bad = || format!("default {json} does not fit {}", kind_name(first));
    Ok(match data_type {
        DataType::Boolean => DefaultValue::Bool(json.as_bool().ok_or_else(bad)?),
        DataType::Int32 | DataType::Date32 => DefaultValue::I32(
            json.as_i64()
                .and_then(|v| i32::try_from(v).ok())
                .ok_or_else(bad)?,
        ),
        DataType::Int64 | DataType::Timestamp(_, _) => {
            DefaultValue::I64(json.as_i64().ok_or_else(bad)?)
        }
        DataType::Float32 => DefaultValue::F32(json.as_f64().ok_or_else(bad)? as f32),
        DataType::Float64 => DefaultValue::F64(json.as_f64().ok_or_else(bad)?),
        DataType::Utf8 => DefaultValue::Bytes(json.as_str().ok_or_else(bad)?.as_bytes().to_vec()),
        DataType::Binary => {
            // Avro `bytes` defaults are strings of code points 0-255.
            let s = json.as_str().ok_or_else(bad)?;
            DefaultValue::Bytes(
                s.chars()
                    .map(|c| u8::try_from(u32::from(c)).map_err(|_| bad()))
                    .collect::<Result<_, _>>()?,
            )
        }
        other => return Err(format!("unsupported type {other}")),
    })
}

/// The hot loop: decodes one record by running the compiled ops.
#[inline]
fn run(
    ops: &[Op],
    defaults: &[DefaultOp],
    skips: &[Skip],
    enums: &[EnumTable],
    st: &mut Store,
    buf: &[u8],
) -> Result<usize, Fail> {
    let mut pos = 0usize;
    for (i, op) in ops.iter().enumerate() {
        if op.union.is_some() || op.valid != NONE {
            let present = match op.union {
                Some((null_idx, value_idx)) => {
                    let idx = read_long(buf, &mut pos).map_err(|raw| Fail { op: i, raw })?;
                    if idx == value_idx {
                        true
                    } else if idx == null_idx {
                        false
                    } else {
                        return Err(Fail {
                            op: i,
                            raw: Raw::UnionIndex(idx),
                        });
                    }
                }
                None => true,
            };
            if op.valid != NONE {
                st.valid[op.valid as usize].append(present);
            }
            if !present {
                if op.valid == NONE {
                    return Err(Fail {
                        op: i,
                        raw: Raw::Null,
                    });
                }
                st.push_null(op.target);
                continue;
            }
        }
        step(op, skips, enums, st, buf, &mut pos).map_err(|raw| Fail { op: i, raw })?;
    }
    for (i, d) in defaults.iter().enumerate() {
        st.push_default(d).map_err(|raw| Fail {
            op: ops.len() + i,
            raw,
        })?;
    }
    Ok(pos)
}

#[inline(always)]
fn step(
    op: &Op,
    skips: &[Skip],
    enums: &[EnumTable],
    st: &mut Store,
    buf: &[u8],
    pos: &mut usize,
) -> Result<(), Raw> {
    let s = op.slot as usize;
    match op.kind {
        Kind::DoubleF64 => {
            let b = read_fixed::<8>(buf, pos)?;
            st.f64s[s].push(f64::from_le_bytes(*b));
        }
        Kind::LongI64 => {
            let v = read_long(buf, pos)?;
            st.i64s[s].push(v);
        }
        Kind::Str => {
            let bytes = read_bytes(buf, pos)?;
            if !is_utf8(bytes) {
                return Err(Raw::Utf8);
            }
            st.push_bytes(op.slot, bytes, bytes.len() as i64)?;
        }
        Kind::Bin => {
            let bytes = read_bytes(buf, pos)?;
            st.push_bytes(op.slot, bytes, bytes.len() as i64)?;
        }
        Kind::IntI32 => {
            let v = read_int(buf, pos)?;
            st.i32s[s].push(v);
        }
        Kind::IntI64 => {
            let v = read_int(buf, pos)?;
            st.i64s[s].push(i64::from(v));
        }
        Kind::IntF32 => {
            let v = read_int(buf, pos)?;
            st.f32s[s].push(v as f32);
        }
        Kind::IntF64 => {
            let v = read_int(buf, pos)?;
            st.f64s[s].push(f64::from(v));
        }
        Kind::LongMul(m) => {
            let v = read_long(buf, pos)?;
            st.i64s[s].push(v.saturating_mul(m));
        }
        Kind::LongDiv(d) => {
            let v = read_long(buf, pos)?;
            st.i64s[s].push(v.div_euclid(d));
        }
        Kind::LongF32 => {
            let v = read_long(buf, pos)?;
            st.f32s[s].push(v as f32);
        }
        Kind::LongF64 => {
            let v = read_long(buf, pos)?;
            st.f64s[s].push(v as f64);
        }
        Kind::FloatF32 => {
            let b = read_fixed::<4>(buf, pos)?;
            st.f32s[s].push(f32::from_le_bytes(*b));
        }
        Kind::FloatF64 => {
            let b = read_fixed::<4>(buf, pos)?;
            st.f64s[s].push(f64::from(f32::from_le_bytes(*b)));
        }
        Kind::Bool => {
            let v = read_bool(buf, pos)?;
            st.bools[s].append(v);
        }
        Kind::EnumStr(t) => {
            let idx = read_long(buf, pos)?;
            let table = &enums[t as usize];
            let i = usize::try_from(idx)
                .ok()
                .filter(|&i| i < table.reader.len())
                .ok_or(Raw::EnumIndex(idx))?;
            let Some(sym) = &table.reader[i] else {
                return Err(Raw::UnknownSymbol {
                    table: t,
                    index: i as u32,
                });
            };
            st.push_bytes(op.slot, sym.as_bytes(), sym.len() as i64)?;
        }
        Kind::Skip(k) => skips[k as usize].skip(buf, pos)?,
    }
    Ok(())
}
