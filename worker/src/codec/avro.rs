//! Avro binary ↔ Arrow, specialised to a schema.
//!
//! [`AvroDecoder`] compiles a reader schema (optionally resolved against a
//! different writer schema) into a flat list of field operations once, then
//! decodes record bodies straight into typed column buffers — no intermediate
//! `Value`s. A record that fails to decode is rolled back completely, so a
//! batch only ever contains whole, valid rows. [`AvroDecoder::finish`] hands the
//! buffers to Arrow without copying.
//!
//! [`AvroEncoder`] writes Arrow rows as Avro binary bodies for a record schema
//! (e.g. one made by [`arrow_to_avro`](super::schema::arrow_to_avro)).

use std::collections::HashMap;
use std::sync::Arc;

use apache_avro::Schema;
use apache_avro::schema::{Namespace, RecordField, RecordSchema};
use arrow::array::builder::BooleanBufferBuilder;
use arrow::array::{
    Array, ArrayRef, AsArray, BinaryArray, BooleanArray, Date32Array, Float32Array, Float64Array,
    Int32Array, Int64Array, RecordBatch, RecordBatchOptions, StringArray,
    TimestampMicrosecondArray, TimestampMillisecondArray, TimestampNanosecondArray,
};
use arrow::buffer::{Buffer, NullBuffer, OffsetBuffer, ScalarBuffer};
use arrow::datatypes::{
    DataType, Date32Type, Int8Type, Int16Type, Int32Type, Int64Type, SchemaRef, TimeUnit,
    TimestampMicrosecondType, TimestampMillisecondType, TimestampNanosecondType,
    TimestampSecondType, UInt8Type, UInt16Type, UInt32Type, UInt64Type,
};

use super::schema::{Names, avro_to_arrow, deref, kind_name, named_types, nullable_union};
use super::{CodecError, DecodeError};

// ---------------------------------------------------------------------------
// Low-level reading
// ---------------------------------------------------------------------------

/// A decode failure before the field name is attached (kept small so the hot
/// loop's `Result` stays cheap).
#[derive(Debug, Clone, Copy)]
enum Raw {
    Truncated,
    Varint,
    Utf8,
    UnionIndex(i64),
    EnumIndex(i64),
    UnknownSymbol { table: u32, index: u32 },
    Length(i64),
    Null,
    Bool(u8),
}

#[inline(always)]
fn read_varint(buf: &[u8], pos: &mut usize) -> Result<u64, Raw> {
    let p = *pos;
    match buf.get(p) {
        Some(&b) if b < 0x80 => {
            *pos = p + 1;
            Ok(u64::from(b))
        }
        Some(_) => read_varint_multi(buf, pos),
        None => Err(Raw::Truncated),
    }
}

/// Multi-byte varints: unrolled over a fixed 10-byte window when the buffer
/// has one (no per-byte bounds checks), byte by byte near the end.
#[inline(always)]
fn read_varint_multi(buf: &[u8], pos: &mut usize) -> Result<u64, Raw> {
    let p = *pos;
    if let Some(chunk) = buf.get(p..).and_then(|s| s.first_chunk::<10>()) {
        let mut v = 0u64;
        for (i, &b) in chunk.iter().enumerate() {
            v |= u64::from(b & 0x7f) << (7 * i);
            if b < 0x80 {
                if i == 9 && b > 1 {
                    return Err(Raw::Varint);
                }
                *pos = p + i + 1;
                return Ok(v);
            }
        }
        return Err(Raw::Varint);
    }
    let mut v = 0u64;
    for i in 0..10 {
        let Some(&b) = buf.get(p + i) else {
            return Err(Raw::Truncated);
        };
        v |= u64::from(b & 0x7f) << (7 * i);
        if b < 0x80 {
            if i == 9 && b > 1 {
                return Err(Raw::Varint);
            }
            *pos = p + i + 1;
            return Ok(v);
        }
    }
    Err(Raw::Varint)
}

#[inline(always)]
fn read_long(buf: &[u8], pos: &mut usize) -> Result<i64, Raw> {
    let u = read_varint(buf, pos)?;
    Ok((u >> 1) as i64 ^ -((u & 1) as i64))
}

#[inline(always)]
fn read_int(buf: &[u8], pos: &mut usize) -> Result<i32, Raw> {
    i32::try_from(read_long(buf, pos)?).map_err(|_| Raw::Varint)
}

#[inline(always)]
fn read_fixed<'a, const N: usize>(buf: &'a [u8], pos: &mut usize) -> Result<&'a [u8; N], Raw> {
    let p = *pos;
    match buf.get(p..).and_then(|s| s.first_chunk::<N>()) {
        Some(b) => {
            *pos = p + N;
            Ok(b)
        }
        None => Err(Raw::Truncated),
    }
}

/// Length-prefixed bytes (Avro `bytes`/`string`).
#[inline(always)]
fn read_bytes<'a>(buf: &'a [u8], pos: &mut usize) -> Result<&'a [u8], Raw> {
    let len = read_long(buf, pos)?;
    let p = *pos;
    if len < 0 {
        return Err(Raw::Length(len));
    }
    let rest = buf.len() - p;
    if len as u64 > rest as u64 {
        return Err(Raw::Truncated);
    }
    let end = p + len as usize;
    *pos = end;
    Ok(&buf[p..end])
}

/// UTF-8 validation with an inline fast path for the short ASCII strings
/// market data is made of (symbols, venues, sides).
#[inline(always)]
fn is_utf8(b: &[u8]) -> bool {
    if b.len() <= 16 && b.iter().fold(0u8, |acc, &x| acc | x) < 0x80 {
        return true;
    }
    std::str::from_utf8(b).is_ok()
}

#[inline(always)]
fn read_bool(buf: &[u8], pos: &mut usize) -> Result<bool, Raw> {
    match buf.get(*pos) {
        Some(0) => {
            *pos += 1;
            Ok(false)
        }
        Some(1) => {
            *pos += 1;
            Ok(true)
        }
        Some(&b) => Err(Raw::Bool(b)),
        None => Err(Raw::Truncated),
    }
}

fn skip_n(buf: &[u8], pos: &mut usize, n: i64) -> Result<(), Raw> {
    if n < 0 {
        return Err(Raw::Length(n));
    }
    if n as u64 > (buf.len() - *pos) as u64 {
        return Err(Raw::Truncated);
    }
    *pos += n as usize;
    Ok(())
}

// ---------------------------------------------------------------------------
// Skipping writer fields the reader does not have
// ---------------------------------------------------------------------------

#[derive(Debug, Clone)]
enum Skip {
    /// `null` or a record without fields: nothing on the wire.
    Zero,
    Bool,
    Varint,
    Fixed(usize),
    Bytes,
    Union(Vec<Skip>),
    Array(Box<Skip>),
    Map(Box<Skip>),
    Record(Vec<Skip>),
}

impl Skip {
    fn compile(
        schema: &Schema,
        names: &Names<'_>,
        ns: &Namespace,
        visiting: &mut Vec<String>,
    ) -> Result<Skip, String> {
        let schema = deref(schema, names, ns)?;
        Ok(match schema {
            Schema::Null => Skip::Zero,
            Schema::Boolean => Skip::Bool,
            Schema::Int
            | Schema::Long
            | Schema::Enum(_)
            | Schema::Date
            | Schema::TimeMillis
            | Schema::TimeMicros
            | Schema::TimestampMillis
            | Schema::TimestampMicros
            | Schema::TimestampNanos
            | Schema::LocalTimestampMillis
            | Schema::LocalTimestampMicros
            | Schema::LocalTimestampNanos => Skip::Varint,
            Schema::Float => Skip::Fixed(4),
            Schema::Double => Skip::Fixed(8),
            Schema::Duration => Skip::Fixed(12),
            Schema::Fixed(f) => Skip::Fixed(f.size),
            Schema::Bytes | Schema::String | Schema::Uuid | Schema::BigDecimal => Skip::Bytes,
            Schema::Decimal(d) => Skip::compile(&d.inner, names, ns, visiting)?,
            Schema::Union(u) => Skip::Union(
                u.variants()
                    .iter()
                    .map(|v| Skip::compile(v, names, ns, visiting))
                    .collect::<Result<_, _>>()?,
            ),
            Schema::Array(a) => {
                Skip::Array(Box::new(Skip::compile(&a.items, names, ns, visiting)?))
            }
            Schema::Map(m) => Skip::Map(Box::new(Skip::compile(&m.types, names, ns, visiting)?)),
            Schema::Record(r) => {
                let full = r.name.fullname(None);
                if visiting.contains(&full) {
                    return Err(format!("recursive record `{full}` is not supported"));
                }
                visiting.push(full);
                let inner_ns = &r.name.namespace;
                let fields = r
                    .fields
                    .iter()
                    .map(|f| Skip::compile(&f.schema, names, inner_ns, visiting))
                    .collect::<Result<Vec<_>, _>>()?;
                visiting.pop();
                if fields.iter().all(|f| matches!(f, Skip::Zero)) {
                    Skip::Zero
                } else {
                    Skip::Record(fields)
                }
            }
            Schema::Ref { .. } => return Err("unresolved reference".into()),
        })
    }

    fn skip(&self, buf: &[u8], pos: &mut usize) -> Result<(), Raw> {
        match self {
            Skip::Zero => Ok(()),
            Skip::Bool => read_bool(buf, pos).map(|_| ()),
            Skip::Varint => read_varint(buf, pos).map(|_| ()),
            Skip::Fixed(n) => {
                if *n > buf.len() - *pos {
                    return Err(Raw::Truncated);
                }
                *pos += n;
                Ok(())
            }
            Skip::Bytes => read_bytes(buf, pos).map(|_| ()),
            Skip::Union(variants) => {
                let idx = read_long(buf, pos)?;
                let v = usize::try_from(idx)
                    .ok()
                    .and_then(|i| variants.get(i))
                    .ok_or(Raw::UnionIndex(idx))?;
                v.skip(buf, pos)
            }
            Skip::Record(fields) => fields.iter().try_for_each(|f| f.skip(buf, pos)),
            Skip::Array(item) => Self::skip_blocks(buf, pos, |buf, pos| item.skip(buf, pos), item),
            Skip::Map(value) => Self::skip_blocks(
                buf,
                pos,
                |buf, pos| {
                    read_bytes(buf, pos)?;
                    value.skip(buf, pos)
                },
                &Skip::Bytes,
            ),
        }
    }

    /// Array/map blocks: `count` items, or `-count` items preceded by the
    /// block's byte size; a zero count ends the sequence.
    fn skip_blocks(
        buf: &[u8],
        pos: &mut usize,
        mut item: impl FnMut(&[u8], &mut usize) -> Result<(), Raw>,
        item_kind: &Skip,
    ) -> Result<(), Raw> {
        loop {
            let count = read_long(buf, pos)?;
            if count == 0 {
                return Ok(());
            }
            if count < 0 {
                let size = read_long(buf, pos)?;
                skip_n(buf, pos, size)?;
                continue;
            }
            if matches!(item_kind, Skip::Zero) {
                continue;
            }
            // Every non-empty item takes at least one byte.
            if count as u64 > (buf.len() - *pos) as u64 {
                return Err(Raw::Truncated);
            }
            for _ in 0..count {
                item(buf, pos)?;
            }
        }
    }
}

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

fn unsupported(msg: impl Into<String>) -> CodecError {
    CodecError::UnsupportedSchema(msg.into())
}

/// Units per second of a timestamp logical type.
fn timestamp_unit(schema: &Schema) -> Option<i64> {
    match schema {
        Schema::TimestampMillis | Schema::LocalTimestampMillis => Some(1_000),
        Schema::TimestampMicros | Schema::LocalTimestampMicros => Some(1_000_000),
        Schema::TimestampNanos | Schema::LocalTimestampNanos => Some(1_000_000_000),
        _ => None,
    }
}

fn is_int_like(s: &Schema) -> bool {
    matches!(s, Schema::Int | Schema::Date | Schema::TimeMillis)
}

fn is_long_like(s: &Schema) -> bool {
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

// ---------------------------------------------------------------------------
// Encoding
// ---------------------------------------------------------------------------

#[inline]
fn write_long(out: &mut Vec<u8>, v: i64) {
    let mut z = ((v << 1) ^ (v >> 63)) as u64;
    while z >= 0x80 {
        out.push((z as u8) | 0x80);
        z >>= 7;
    }
    out.push(z as u8);
}

#[inline]
fn write_bytes(out: &mut Vec<u8>, b: &[u8]) {
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

fn is_arrow_int(dt: &DataType) -> bool {
    matches!(
        dt,
        DataType::Int8
            | DataType::Int16
            | DataType::Int32
            | DataType::Int64
            | DataType::UInt8
            | DataType::UInt16
            | DataType::UInt32
            | DataType::UInt64
    )
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
            let numeric = is_arrow_int(dt) || matches!(dt, DataType::Float32 | DataType::Float64);
            let kind = match value {
                Schema::Boolean if *dt == DataType::Boolean => EncKind::Bool,
                Schema::Int | Schema::Date | Schema::TimeMillis
                    if is_arrow_int(dt) || *dt == DataType::Date32 =>
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
                    dt if is_arrow_int(dt) || *dt == DataType::Date32 => {
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

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::codec::SourceTable;
    use apache_avro::types::Value;
    use arrow::array::{Array, AsArray};
    use arrow::datatypes::{Field, Schema as ArrowSchema};

    /// A hand-built MarketTick batch (the simulator is not used here).
    pub(crate) fn ticks(n: usize, start_ts: i64) -> RecordBatch {
        let symbols = [
            "AAPL", "GOOGL", "MSFT", "AMZN", "TSLA", "NVDA", "META", "NFLX",
        ];
        let exchanges = ["NASDAQ", "NYSE", "ARCA", "BATS"];
        let sym: Vec<&str> = (0..n).map(|i| symbols[i % 8]).collect();
        let exch: Vec<&str> = (0..n).map(|i| exchanges[i % 4]).collect();
        let price: Vec<f64> = (0..n).map(|i| 100.0 + (i % 97) as f64 * 0.25).collect();
        let bid: Vec<f64> = price.iter().map(|p| p - 0.01).collect();
        let ask: Vec<f64> = price.iter().map(|p| p + 0.01).collect();
        let bid_size: Vec<i64> = (0..n).map(|i| 100 * (1 + i as i64 % 9)).collect();
        let ask_size: Vec<i64> = (0..n).map(|i| 100 * (1 + i as i64 % 7)).collect();
        let volume: Vec<i64> = (0..n).map(|i| 1 + (i as i64 * 37) % 1000).collect();
        let side: Vec<&str> = (0..n)
            .map(|i| if i % 3 == 0 { "sell" } else { "buy" })
            .collect();
        let ts: Vec<i64> = (0..n).map(|i| start_ts + i as i64).collect();
        RecordBatch::try_new(
            SourceTable::MarketTicks.arrow_schema(),
            vec![
                Arc::new(StringArray::from(sym)),
                Arc::new(StringArray::from(exch)),
                Arc::new(Float64Array::from(price)),
                Arc::new(Float64Array::from(bid)),
                Arc::new(Float64Array::from(ask)),
                Arc::new(Int64Array::from(bid_size)),
                Arc::new(Int64Array::from(ask_size)),
                Arc::new(Int64Array::from(volume)),
                Arc::new(StringArray::from(side)),
                Arc::new(TimestampMillisecondArray::from(ts)),
            ],
        )
        .unwrap()
    }

    fn parse(json: &str) -> Schema {
        Schema::parse_str(json).unwrap()
    }

    const ALL_TYPES: &str = r#"{
      "type": "record", "name": "AllTypes", "namespace": "t",
      "fields": [
        {"name": "b", "type": "boolean"},
        {"name": "i", "type": "int"},
        {"name": "l", "type": "long"},
        {"name": "f", "type": "float"},
        {"name": "d", "type": "double"},
        {"name": "s", "type": "string"},
        {"name": "by", "type": "bytes"},
        {"name": "ts", "type": {"type": "long", "logicalType": "timestamp-millis"}},
        {"name": "tu", "type": {"type": "long", "logicalType": "timestamp-micros"}},
        {"name": "nb", "type": ["null", "boolean"], "default": null},
        {"name": "ni", "type": ["null", "int"], "default": null},
        {"name": "nl", "type": ["null", "long"], "default": null},
        {"name": "nf", "type": ["null", "float"], "default": null},
        {"name": "nd", "type": ["double", "null"], "default": 1.5},
        {"name": "ns", "type": ["null", "string"], "default": null},
        {"name": "nby", "type": ["null", "bytes"], "default": null},
        {"name": "nts", "type": ["null", {"type": "long", "logicalType": "timestamp-millis"}], "default": null}
      ]
    }"#;

    fn all_types_batch() -> RecordBatch {
        let schema = avro_to_arrow(&parse(ALL_TYPES)).unwrap();
        let cols: Vec<ArrayRef> = vec![
            Arc::new(BooleanArray::from(vec![true, false, true])),
            Arc::new(Int32Array::from(vec![0, -1, i32::MAX])),
            Arc::new(Int64Array::from(vec![i64::MIN, 0, i64::MAX])),
            Arc::new(Float32Array::from(vec![1.5, -0.0, f32::MAX])),
            Arc::new(Float64Array::from(vec![0.1, f64::MIN_POSITIVE, -1e300])),
            Arc::new(StringArray::from(vec!["", "héllo", "日本語 \u{1F600}"])),
            Arc::new(BinaryArray::from(vec![
                &b""[..],
                &[0u8, 255, 1][..],
                &b"xyz"[..],
            ])),
            Arc::new(TimestampMillisecondArray::from(vec![
                1_767_605_400_123,
                -1,
                0,
            ])),
            Arc::new(TimestampMicrosecondArray::from(vec![
                1_767_605_400_123_456,
                1,
                -5,
            ])),
            Arc::new(BooleanArray::from(vec![Some(true), None, Some(false)])),
            Arc::new(Int32Array::from(vec![None, Some(7), Some(-7)])),
            Arc::new(Int64Array::from(vec![Some(1 << 40), None, None])),
            Arc::new(Float32Array::from(vec![None, Some(2.5), None])),
            Arc::new(Float64Array::from(vec![Some(3.25), None, Some(-1.0)])),
            Arc::new(StringArray::from(vec![Some("x"), None, Some("")])),
            Arc::new(BinaryArray::from(vec![
                None,
                Some(&b"\x00"[..]),
                Some(&b""[..]),
            ])),
            Arc::new(TimestampMillisecondArray::from(vec![None, Some(5), None])),
        ];
        RecordBatch::try_new(schema, cols).unwrap()
    }

    fn encode_rows(enc: &AvroEncoder, batch: &RecordBatch) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        let mut ends = Vec::new();
        enc.encode_batch(batch, &mut out, &mut ends).unwrap();
        let mut start = 0;
        ends.iter()
            .map(|&e| {
                let row = out[start..e].to_vec();
                start = e;
                row
            })
            .collect()
    }

    #[test]
    fn round_trip_every_type_with_nulls() {
        let avro = parse(ALL_TYPES);
        let batch = all_types_batch();
        let enc = AvroEncoder::new(batch.schema(), &avro).unwrap();
        let mut dec = AvroDecoder::new(&avro).unwrap();
        for row in encode_rows(&enc, &batch) {
            dec.decode(&row).unwrap();
        }
        assert_eq!(dec.len(), 3);
        let out = dec.finish();
        assert_eq!(out, batch);
        assert!(dec.is_empty());
        // encode_row gives the same bytes as encode_batch.
        let mut one = Vec::new();
        enc.encode_row(&batch, 1, &mut one).unwrap();
        assert_eq!(one, encode_rows(&enc, &batch)[1]);
        // A second batch through the same decoder.
        let rows = encode_rows(&enc, &batch);
        dec.decode(&rows[2]).unwrap();
        assert_eq!(dec.finish(), batch.slice(2, 1));
        assert_eq!(dec.finish().num_rows(), 0);
    }

    #[test]
    fn market_ticks_round_trip() {
        let t = SourceTable::MarketTicks;
        let batch = ticks(1000, 1_767_605_400_000);
        let enc = AvroEncoder::new(t.arrow_schema(), t.avro_schema()).unwrap();
        let mut dec = AvroDecoder::new(t.avro_schema()).unwrap();
        assert_eq!(dec.schema(), t.arrow_schema());
        let mut out = Vec::new();
        let mut ends = Vec::new();
        enc.encode_batch(&batch, &mut out, &mut ends).unwrap();
        // Records back to back, as in a container block.
        let mut at = 0;
        for &end in &ends {
            let used = dec.decode_one(&out[at..]).unwrap();
            assert_eq!(at + used, end);
            at = end;
        }
        assert_eq!(dec.finish(), batch);
    }

    /// Expected apache-avro `Value` of one ALL_TYPES row.
    fn expected_values(row: usize) -> Vec<(String, Value)> {
        let u = |i: u32, v: Value| Value::Union(i, Box::new(v));
        let null = |i: u32| Value::Union(i, Box::new(Value::Null));
        let rows = [
            vec![
                Value::Boolean(true),
                Value::Int(0),
                Value::Long(i64::MIN),
                Value::Float(1.5),
                Value::Double(0.1),
                Value::String("".into()),
                Value::Bytes(vec![]),
                Value::TimestampMillis(1_767_605_400_123),
                Value::TimestampMicros(1_767_605_400_123_456),
                u(1, Value::Boolean(true)),
                null(0),
                u(1, Value::Long(1 << 40)),
                null(0),
                u(0, Value::Double(3.25)),
                u(1, Value::String("x".into())),
                null(0),
                null(0),
            ],
            vec![
                Value::Boolean(false),
                Value::Int(-1),
                Value::Long(0),
                Value::Float(-0.0),
                Value::Double(f64::MIN_POSITIVE),
                Value::String("héllo".into()),
                Value::Bytes(vec![0, 255, 1]),
                Value::TimestampMillis(-1),
                Value::TimestampMicros(1),
                null(0),
                u(1, Value::Int(7)),
                null(0),
                u(1, Value::Float(2.5)),
                null(1),
                null(0),
                u(1, Value::Bytes(vec![0])),
                u(1, Value::TimestampMillis(5)),
            ],
        ];
        let names = [
            "b", "i", "l", "f", "d", "s", "by", "ts", "tu", "nb", "ni", "nl", "nf", "nd", "ns",
            "nby", "nts",
        ];
        names
            .iter()
            .map(|n| n.to_string())
            .zip(rows[row].clone())
            .collect()
    }

    #[test]
    fn our_bytes_decode_with_apache_avro() {
        let avro = parse(ALL_TYPES);
        let batch = all_types_batch();
        let enc = AvroEncoder::new(batch.schema(), &avro).unwrap();
        let rows = encode_rows(&enc, &batch);
        for (i, row) in rows.iter().enumerate().take(2) {
            let mut reader = &row[..];
            let value = apache_avro::from_avro_datum(&avro, &mut reader, None).unwrap();
            assert!(reader.is_empty(), "apache-avro left bytes in row {i}");
            assert_eq!(value, Value::Record(expected_values(i)), "row {i}");
        }
        // And the source schemas.
        let t = SourceTable::MarketTicks;
        let enc = AvroEncoder::new(t.arrow_schema(), t.avro_schema()).unwrap();
        let mut body = Vec::new();
        enc.encode_row(&ticks(3, 1000), 2, &mut body).unwrap();
        let value = apache_avro::from_avro_datum(t.avro_schema(), &mut &body[..], None).unwrap();
        let Value::Record(fields) = value else {
            panic!("not a record")
        };
        assert_eq!(fields[0], ("symbol".into(), Value::String("MSFT".into())));
        assert_eq!(fields[2], ("price".into(), Value::Double(100.5)));
        assert_eq!(fields[8], ("side".into(), Value::String("buy".into())));
        assert_eq!(fields[9], ("ts".into(), Value::TimestampMillis(1002)));
    }

    #[test]
    fn apache_avro_bytes_decode_with_ours() {
        let avro = parse(ALL_TYPES);
        let mut dec = AvroDecoder::new(&avro).unwrap();
        for row in 0..2 {
            let body =
                apache_avro::to_avro_datum(&avro, Value::Record(expected_values(row))).unwrap();
            dec.decode(&body).unwrap();
        }
        assert_eq!(dec.finish(), all_types_batch().slice(0, 2));

        // OrderEvent with a null and a non-null price.
        let t = SourceTable::OrderEvents;
        let mut dec = AvroDecoder::new(t.avro_schema()).unwrap();
        for (i, price) in [None, Some(101.25)].into_iter().enumerate() {
            let s = |v: &str| Value::String(v.into());
            let record = Value::Record(vec![
                ("order_id".into(), s(&format!("o{i}"))),
                ("client_order_id".into(), s("c")),
                ("trader_id".into(), s("t1")),
                ("symbol".into(), s("AAPL")),
                ("side".into(), s("buy")),
                (
                    "order_type".into(),
                    s(if price.is_some() { "limit" } else { "market" }),
                ),
                ("quantity".into(), Value::Long(100)),
                (
                    "price".into(),
                    match price {
                        None => Value::Union(0, Box::new(Value::Null)),
                        Some(p) => Value::Union(1, Box::new(Value::Double(p))),
                    },
                ),
                ("status".into(), s("new")),
                ("filled_quantity".into(), Value::Long(0)),
                (
                    "ts".into(),
                    Value::TimestampMillis(1_767_605_400_000 + i as i64),
                ),
            ]);
            dec.decode(&apache_avro::to_avro_datum(t.avro_schema(), record).unwrap())
                .unwrap();
        }
        let batch = dec.finish();
        let price = batch
            .column_by_name("price")
            .unwrap()
            .as_primitive::<arrow::datatypes::Float64Type>();
        assert!(price.is_null(0));
        assert_eq!(price.value(1), 101.25);
        assert_eq!(
            batch
                .column_by_name("order_id")
                .unwrap()
                .as_string::<i32>()
                .value(1),
            "o1"
        );
    }

    /// An OrderEvent writer schema from before `filled_quantity` existed,
    /// with an extra field of every skippable shape.
    const OLD_ORDER: &str = r#"{
      "type": "record", "name": "OrderEvent", "namespace": "io.tickflow.market",
      "fields": [
        {"name": "order_id", "type": "string"},
        {"name": "extra_arr", "type": {"type": "array", "items": "string"}},
        {"name": "client_order_id", "type": "string"},
        {"name": "trader_id", "type": "string"},
        {"name": "extra_map", "type": {"type": "map", "values": ["null", "long"]}},
        {"name": "symbol", "type": "string"},
        {"name": "side", "type": {"type": "enum", "name": "Side", "symbols": ["buy", "sell"]}},
        {"name": "order_type", "type": "string"},
        {"name": "extra_rec", "type": {"type": "record", "name": "Extra", "fields": [
            {"name": "a", "type": "double"}, {"name": "b", "type": {"type": "fixed", "name": "F4", "size": 4}},
            {"name": "c", "type": "boolean"}, {"name": "d", "type": "Side"}]}},
        {"name": "quantity", "type": "int"},
        {"name": "price", "type": ["null", "float"]},
        {"name": "status", "type": "bytes"},
        {"name": "extra_union", "type": ["null", "string", "long"]},
        {"name": "ts", "type": {"type": "long", "logicalType": "timestamp-micros"}}
      ]
    }"#;

    fn old_order(i: i64, price: Option<f32>) -> Value {
        let s = |v: &str| Value::String(v.into());
        Value::Record(vec![
            ("order_id".into(), s(&format!("o{i}"))),
            ("extra_arr".into(), Value::Array(vec![s("a"), s("bb")])),
            ("client_order_id".into(), s("c")),
            ("trader_id".into(), s("t")),
            (
                "extra_map".into(),
                Value::Map(
                    [("k".to_string(), Value::Union(1, Box::new(Value::Long(5))))]
                        .into_iter()
                        .collect(),
                ),
            ),
            ("symbol".into(), s("TSLA")),
            ("side".into(), Value::Enum(1, "sell".into())),
            ("order_type".into(), s("limit")),
            (
                "extra_rec".into(),
                Value::Record(vec![
                    ("a".into(), Value::Double(1.0)),
                    ("b".into(), Value::Fixed(4, vec![1, 2, 3, 4])),
                    ("c".into(), Value::Boolean(true)),
                    ("d".into(), Value::Enum(0, "buy".into())),
                ]),
            ),
            ("quantity".into(), Value::Int(250)),
            (
                "price".into(),
                match price {
                    None => Value::Union(0, Box::new(Value::Null)),
                    Some(p) => Value::Union(1, Box::new(Value::Float(p))),
                },
            ),
            ("status".into(), Value::Bytes(b"filled".to_vec())),
            (
                "extra_union".into(),
                Value::Union(2, Box::new(Value::Long(-3))),
            ),
            (
                "ts".into(),
                Value::TimestampMicros(1_767_605_400_123_999 + i),
            ),
        ])
    }

    #[test]
    fn schema_resolution_defaults_promotions_and_skips() {
        let writer = parse(OLD_ORDER);
        let reader = SourceTable::OrderEvents.avro_schema();
        let mut dec = AvroDecoder::with_writer(&writer, reader).unwrap();
        for (i, price) in [(0, Some(99.5f32)), (1, None)] {
            let body = apache_avro::to_avro_datum(&writer, old_order(i, price)).unwrap();
            dec.decode(&body).unwrap();
        }
        let batch = dec.finish();
        assert_eq!(batch.schema(), SourceTable::OrderEvents.arrow_schema());
        assert_eq!(batch.num_rows(), 2);
        let col = |n: &str| batch.column_by_name(n).unwrap().clone();
        // Reader default for the missing field.
        let filled = col("filled_quantity");
        assert_eq!(filled.as_primitive::<Int64Type>().values(), &[0, 0]);
        // int → long, float → double (nullable), enum → string, bytes → string.
        assert_eq!(col("quantity").as_primitive::<Int64Type>().value(0), 250);
        let price = col("price");
        let price = price.as_primitive::<arrow::datatypes::Float64Type>();
        assert_eq!(price.value(0), 99.5);
        assert!(price.is_null(1));
        assert_eq!(col("side").as_string::<i32>().value(0), "sell");
        assert_eq!(col("status").as_string::<i32>().value(1), "filled");
        assert_eq!(col("symbol").as_string::<i32>().value(1), "TSLA");
        assert_eq!(col("order_id").as_string::<i32>().value(1), "o1");
        // timestamp-micros writer → timestamp-millis reader (floor).
        let ts = col("ts");
        let ts = ts.as_primitive::<TimestampMillisecondType>();
        assert_eq!(ts.values(), &[1_767_605_400_123, 1_767_605_400_124]);
    }

    #[test]
    fn schema_resolution_numeric_promotions() {
        let writer = parse(
            r#"{"type":"record","name":"P","fields":[
              {"name":"a","type":"int"},{"name":"b","type":"int"},{"name":"c","type":"int"},
              {"name":"d","type":"long"},{"name":"e","type":"long"},{"name":"f","type":"float"},
              {"name":"g","type":"string"},{"name":"h","type":"long"}]}"#,
        );
        let reader = parse(
            r#"{"type":"record","name":"P","fields":[
              {"name":"h","type":["null","long"]},
              {"name":"a","type":"long"},{"name":"b","type":"float"},{"name":"c","type":"double"},
              {"name":"d","type":"float"},{"name":"e","type":"double"},{"name":"f","type":"double"},
              {"name":"g","type":"bytes"},
              {"name":"z","type":"string","default":"zz"},
              {"name":"y","type":["null","int"],"default":null}]}"#,
        );
        let value = Value::Record(vec![
            ("a".into(), Value::Int(-5)),
            ("b".into(), Value::Int(3)),
            ("c".into(), Value::Int(i32::MIN)),
            ("d".into(), Value::Long(1 << 40)),
            ("e".into(), Value::Long(-7)),
            ("f".into(), Value::Float(0.5)),
            ("g".into(), Value::String("é".into())),
            ("h".into(), Value::Long(42)),
        ]);
        let body = apache_avro::to_avro_datum(&writer, value).unwrap();
        let mut dec = AvroDecoder::with_writer(&writer, &reader).unwrap();
        dec.decode(&body).unwrap();
        let b = dec.finish();
        let expected = RecordBatch::try_new(
            Arc::new(ArrowSchema::new(vec![
                Field::new("h", DataType::Int64, true),
                Field::new("a", DataType::Int64, false),
                Field::new("b", DataType::Float32, false),
                Field::new("c", DataType::Float64, false),
                Field::new("d", DataType::Float32, false),
                Field::new("e", DataType::Float64, false),
                Field::new("f", DataType::Float64, false),
                Field::new("g", DataType::Binary, false),
                Field::new("z", DataType::Utf8, false),
                Field::new("y", DataType::Int32, true),
            ])),
            vec![
                Arc::new(Int64Array::from(vec![42])),
                Arc::new(Int64Array::from(vec![-5])),
                Arc::new(Float32Array::from(vec![3.0])),
                Arc::new(Float64Array::from(vec![f64::from(i32::MIN)])),
                Arc::new(Float32Array::from(vec![(1u64 << 40) as f32])),
                Arc::new(Float64Array::from(vec![-7.0])),
                Arc::new(Float64Array::from(vec![0.5])),
                Arc::new(BinaryArray::from(vec!["é".as_bytes()])),
                Arc::new(StringArray::from(vec!["zz"])),
                Arc::new(Int32Array::from(vec![None])),
            ],
        )
        .unwrap();
        assert_eq!(b, expected);
    }

    #[test]
    fn schema_resolution_errors_at_construction() {
        let writer = parse(r#"{"type":"record","name":"P","fields":[{"name":"a","type":"long"}]}"#);
        // Reader field without default, missing from the writer.
        let reader = parse(
            r#"{"type":"record","name":"P","fields":[{"name":"a","type":"long"},{"name":"b","type":"long"}]}"#,
        );
        let err = AvroDecoder::with_writer(&writer, &reader)
            .unwrap_err()
            .to_string();
        assert!(err.contains("`b`") && err.contains("no default"), "{err}");
        // Narrowing is not a promotion.
        let reader = parse(r#"{"type":"record","name":"P","fields":[{"name":"a","type":"int"}]}"#);
        let err = AvroDecoder::with_writer(&writer, &reader)
            .unwrap_err()
            .to_string();
        assert!(err.contains("`a`"), "{err}");
        let reader =
            parse(r#"{"type":"record","name":"P","fields":[{"name":"a","type":"string"}]}"#);
        assert!(AvroDecoder::with_writer(&writer, &reader).is_err());
        // Not a record.
        assert!(AvroDecoder::new(&Schema::Long).is_err());
    }

    #[test]
    fn nullable_writer_into_non_null_reader() {
        let writer = parse(
            r#"{"type":"record","name":"P","fields":[{"name":"a","type":["null","double"]},{"name":"s","type":"string"}]}"#,
        );
        let reader = parse(
            r#"{"type":"record","name":"P","fields":[{"name":"a","type":"double"},{"name":"s","type":"string"}]}"#,
        );
        let mut dec = AvroDecoder::with_writer(&writer, &reader).unwrap();
        let rec = |a: Option<f64>, s: &str| {
            let a = match a {
                None => Value::Union(0, Box::new(Value::Null)),
                Some(v) => Value::Union(1, Box::new(Value::Double(v))),
            };
            apache_avro::to_avro_datum(
                &writer,
                Value::Record(vec![("a".into(), a), ("s".into(), Value::String(s.into()))]),
            )
            .unwrap()
        };
        dec.decode(&rec(Some(1.0), "x")).unwrap();
        let err = dec.decode(&rec(None, "y")).unwrap_err();
        assert_eq!(err, DecodeError::NullInNonNullable { field: "a".into() });
        assert_eq!(err.reason(), "null-in-non-nullable");
        dec.decode(&rec(Some(2.0), "z")).unwrap();
        let b = dec.finish();
        assert_eq!(
            b.column(0)
                .as_primitive::<arrow::datatypes::Float64Type>()
                .values(),
            &[1.0, 2.0]
        );
        assert_eq!(b.column(1).as_string::<i32>().value(1), "z");
    }

    fn tick_body(row: usize) -> Vec<u8> {
        let t = SourceTable::MarketTicks;
        let enc = AvroEncoder::new(t.arrow_schema(), t.avro_schema()).unwrap();
        let mut body = Vec::new();
        enc.encode_row(&ticks(row + 1, 1_767_605_400_000), row, &mut body)
            .unwrap();
        body
    }

    /// Decodes good, `bad`, good and checks the error and that the batch has
    /// exactly the two good rows.
    fn check_rejected(bad: &[u8], expected: DecodeError) {
        let t = SourceTable::MarketTicks;
        let mut dec = AvroDecoder::new(t.avro_schema()).unwrap();
        dec.decode(&tick_body(0)).unwrap();
        assert_eq!(dec.decode(bad), Err(expected));
        assert_eq!(dec.len(), 1);
        dec.decode(&tick_body(1)).unwrap();
        let batch = dec.finish();
        let all = ticks(2, 1_767_605_400_000);
        assert_eq!(batch, all, "no partial row may survive a bad record");
    }

    /// A MarketTick body with hand-made field encodings.
    fn raw_tick(symbol: &[u8], exchange_len: &[u8], side_tail: &[u8]) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(symbol);
        b.extend_from_slice(exchange_len);
        b.extend_from_slice(b"NYSE");
        for _ in 0..3 {
            b.extend_from_slice(&100.0f64.to_le_bytes());
        }
        for v in [10, 20, 30] {
            write_long(&mut b, v);
        }
        b.extend_from_slice(side_tail);
        b
    }

    #[test]
    fn malformed_inputs_are_rejected_without_partial_rows() {
        let good = tick_body(0);
        // Every proper prefix is truncated.
        for cut in 0..good.len() {
            let err = {
                let mut dec = AvroDecoder::new(SourceTable::MarketTicks.avro_schema()).unwrap();
                dec.decode(&good[..cut]).unwrap_err()
            };
            assert!(
                matches!(err, DecodeError::Truncated { .. }),
                "cut {cut}: {err:?}"
            );
        }
        check_rejected(
            &good[..good.len() - 3],
            DecodeError::Truncated { field: "ts".into() },
        );

        // Trailing bytes.
        let mut long = good.clone();
        long.push(0);
        check_rejected(&long, DecodeError::TrailingBytes(1));

        // Invalid UTF-8 in the symbol.
        let mut sym = vec![];
        write_long(&mut sym, 2);
        sym.extend_from_slice(&[0xff, 0xfe]);
        let bad = raw_tick(&sym, &[8], b"\x06buy\x02");
        check_rejected(
            &bad,
            DecodeError::InvalidUtf8 {
                field: "symbol".into(),
            },
        );

        // Negative length.
        let bad = raw_tick(b"\x02A", &[1], b"");
        check_rejected(
            &bad,
            DecodeError::BadLength {
                field: "exchange".into(),
                len: -1,
            },
        );

        // Length larger than the remaining buffer.
        let mut huge = Vec::new();
        write_long(&mut huge, 1 << 40);
        let bad = raw_tick(b"\x02A", &huge, b"");
        check_rejected(
            &bad,
            DecodeError::Truncated {
                field: "exchange".into(),
            },
        );

        // Overlong varint (11 continuation bytes) and a 10-byte varint whose
        // last byte overflows 64 bits.
        let bad = raw_tick(b"\x02A", &[0xff; 11], b"");
        check_rejected(
            &bad,
            DecodeError::BadVarint {
                field: "exchange".into(),
            },
        );
        let mut ovf = vec![0xff; 9];
        ovf.push(0x02);
        let bad = raw_tick(b"\x02A", &ovf, b"");
        check_rejected(
            &bad,
            DecodeError::BadVarint {
                field: "exchange".into(),
            },
        );
        // Overlong near the end of the buffer (slow varint path).
        let mut tail = good[..good.len() - 6].to_vec();
        tail.extend_from_slice(&[0x80, 0x80, 0x80]);
        check_rejected(&tail, DecodeError::Truncated { field: "ts".into() });

        // Union index out of range (OrderEvent.price).
        let t = SourceTable::OrderEvents;
        let mut dec = AvroDecoder::new(t.avro_schema()).unwrap();
        let mut b = Vec::new();
        for s in ["o", "c", "t", "AAPL", "buy", "limit"] {
            write_bytes(&mut b, s.as_bytes());
        }
        write_long(&mut b, 100);
        let before_union = b.len();
        write_long(&mut b, 5); // union branch 5 of ["null","double"]
        let err = dec.decode(&b).unwrap_err();
        assert_eq!(
            err,
            DecodeError::BadUnionIndex {
                field: "price".into(),
                index: 5
            }
        );
        assert_eq!(err.reason(), "bad-union-index");
        b.truncate(before_union);
        write_long(&mut b, -1);
        assert!(matches!(
            dec.decode(&b),
            Err(DecodeError::BadUnionIndex { index: -1, .. })
        ));
        b.truncate(before_union);
        write_long(&mut b, 0); // null price
        write_bytes(&mut b, b"new");
        write_long(&mut b, 0);
        write_long(&mut b, 1_767_605_400_000);
        dec.decode(&b).unwrap();
        assert_eq!(dec.finish().num_rows(), 1);

        // Bad boolean byte.
        let schema =
            parse(r#"{"type":"record","name":"B","fields":[{"name":"x","type":"boolean"}]}"#);
        let mut dec = AvroDecoder::new(&schema).unwrap();
        let err = dec.decode(&[2]).unwrap_err();
        assert_eq!(
            err,
            DecodeError::BadBoolean {
                field: "x".into(),
                byte: 2
            }
        );
        assert_eq!(err.reason(), "bad-boolean");
        dec.decode(&[1]).unwrap();
        assert_eq!(dec.finish().num_rows(), 1);

        // Reasons are stable codes.
        assert_eq!(
            DecodeError::Truncated {
                field: String::new()
            }
            .reason(),
            "truncated"
        );
        assert_eq!(
            DecodeError::InvalidUtf8 {
                field: String::new()
            }
            .reason(),
            "invalid-utf8"
        );
        assert_eq!(DecodeError::TrailingBytes(1).reason(), "trailing-bytes");
        assert_eq!(
            DecodeError::UnknownSchemaId(1).reason(),
            "unknown-schema-id"
        );
    }

    #[test]
    fn enum_index_out_of_range() {
        let schema = parse(
            r#"{"type":"record","name":"E","fields":[{"name":"e","type":{"type":"enum","name":"S","symbols":["a","b"]}}]}"#,
        );
        let mut dec = AvroDecoder::new(&schema).unwrap();
        dec.decode(&[2]).unwrap(); // index 1 = "b"
        let err = dec.decode(&[4]).unwrap_err();
        assert_eq!(
            err,
            DecodeError::BadEnumIndex {
                field: "e".into(),
                index: 2
            }
        );
        let b = dec.finish();
        assert_eq!(b.column(0).as_string::<i32>().value(0), "b");
        assert_eq!(b.num_rows(), 1);
    }

    /// Random corruption of valid records never panics, and every accepted
    /// record yields exactly one row.
    #[test]
    fn fuzzed_bodies_never_panic() {
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut rnd = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let avro = parse(ALL_TYPES);
        let enc = AvroEncoder::new(all_types_batch().schema(), &avro).unwrap();
        let rows = encode_rows(&enc, &all_types_batch());
        let mut dec = AvroDecoder::new(&avro).unwrap();
        let writer = parse(OLD_ORDER);
        let mut resolving =
            AvroDecoder::with_writer(&writer, SourceTable::OrderEvents.avro_schema()).unwrap();
        let old = apache_avro::to_avro_datum(&writer, old_order(1, Some(1.0))).unwrap();
        let mut ok = 0;
        let mut ok_resolving = 0;
        // TICKFLOW_FUZZ_ITERS=… runs a longer campaign.
        let iters = std::env::var("TICKFLOW_FUZZ_ITERS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(20_000);
        for i in 0..iters {
            let base = if i % 2 == 0 { &rows[i % 3] } else { &old };
            let mut b = base.clone();
            for _ in 0..1 + rnd() % 3 {
                let at = (rnd() as usize) % b.len().max(1);
                match rnd() % 3 {
                    0 if !b.is_empty() => b[at] = rnd() as u8,
                    1 => b.truncate(at),
                    _ => b.insert(at.min(b.len()), rnd() as u8),
                }
            }
            if i % 2 == 0 {
                ok += usize::from(dec.decode(&b).is_ok());
            } else {
                ok_resolving += usize::from(resolving.decode(&b).is_ok());
            }
        }
        assert_eq!(dec.len(), ok);
        assert_eq!(dec.finish().num_rows(), ok);
        assert_eq!(resolving.finish().num_rows(), ok_resolving);
    }

    #[test]
    fn encoder_handles_query_output_types() {
        let arrow = Arc::new(ArrowSchema::new(vec![
            Field::new("symbol", DataType::Utf8, false),
            Field::new(
                "window_start",
                DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())),
                false,
            ),
            Field::new(
                "window_end",
                DataType::Timestamp(TimeUnit::Microsecond, None),
                true,
            ),
            Field::new("tick_count", DataType::UInt64, false),
            Field::new("vwap", DataType::Float64, true),
        ]));
        let avro = crate::codec::arrow_to_avro(&arrow, "ohlc", "io.tickflow.out").unwrap();
        let batch = RecordBatch::try_new(
            arrow.clone(),
            vec![
                Arc::new(StringArray::from(vec!["AAPL", "MSFT"])),
                Arc::new(TimestampMillisecondArray::from(vec![1000, 2000]).with_timezone("UTC")),
                Arc::new(TimestampMicrosecondArray::from(vec![Some(6_000_000), None])),
                Arc::new(arrow::array::UInt64Array::from(vec![
                    3,
                    u64::from(u32::MAX) + 1,
                ])),
                Arc::new(Float64Array::from(vec![Some(101.5), None])),
            ],
        )
        .unwrap();
        let enc = AvroEncoder::new(arrow.clone(), &avro).unwrap();
        let rows = encode_rows(&enc, &batch);
        let v = apache_avro::from_avro_datum(&avro, &mut &rows[0][..], None).unwrap();
        assert_eq!(
            v,
            Value::Record(vec![
                ("symbol".into(), Value::String("AAPL".into())),
                ("window_start".into(), Value::TimestampMillis(1000)),
                (
                    "window_end".into(),
                    Value::Union(1, Box::new(Value::TimestampMicros(6_000_000)))
                ),
                ("tick_count".into(), Value::Long(3)),
                (
                    "vwap".into(),
                    Value::Union(1, Box::new(Value::Double(101.5)))
                ),
            ])
        );
        // Decoding back gives the Arrow mapping of the Avro schema.
        let mut dec = AvroDecoder::new(&avro).unwrap();
        for r in &rows {
            dec.decode(r).unwrap();
        }
        let back = dec.finish();
        assert_eq!(back.column(3).as_primitive::<Int64Type>().value(1), 1 << 32);
        assert!(back.column(2).is_null(1));
        assert!(back.column(4).is_null(1));

        // Values that do not fit are errors, not silent corruption.
        let big = RecordBatch::try_new(
            Arc::new(ArrowSchema::new(vec![Field::new(
                "n",
                DataType::UInt64,
                false,
            )])),
            vec![Arc::new(arrow::array::UInt64Array::from(vec![u64::MAX]))],
        )
        .unwrap();
        let avro_n = crate::codec::arrow_to_avro(&big.schema(), "N", "").unwrap();
        let enc = AvroEncoder::new(big.schema(), &avro_n).unwrap();
        let mut out = vec![9];
        let err = enc.encode_row(&big, 0, &mut out).unwrap_err();
        assert!(matches!(err, CodecError::Encode { row: 0, .. }), "{err}");
        assert_eq!(out, vec![9], "a failed row leaves nothing behind");
    }

    #[test]
    fn encoder_errors_and_defaults() {
        // Null into a non-nullable Avro field.
        let arrow = Arc::new(ArrowSchema::new(vec![Field::new(
            "a",
            DataType::Int64,
            true,
        )]));
        let avro = parse(
            r#"{"type":"record","name":"R","fields":[
            {"name":"a","type":"long"},
            {"name":"d","type":"string","default":"dflt"},
            {"name":"e","type":{"type":"enum","name":"E","symbols":["x","y"]},"default":"y"}]}"#,
        );
        let enc = AvroEncoder::new(arrow.clone(), &avro).unwrap();
        let batch = RecordBatch::try_new(
            arrow.clone(),
            vec![Arc::new(Int64Array::from(vec![Some(1), None]))],
        )
        .unwrap();
        let mut out = Vec::new();
        let mut ends = Vec::new();
        let err = enc.encode_batch(&batch, &mut out, &mut ends).unwrap_err();
        assert!(
            matches!(&err, CodecError::Encode { field, row: 1, .. } if field == "a"),
            "{err}"
        );
        assert_eq!(ends, vec![out.len()]);
        // Missing Arrow columns are written with the Avro default.
        let v = apache_avro::from_avro_datum(&avro, &mut &out[..], None).unwrap();
        assert_eq!(
            v,
            Value::Record(vec![
                ("a".into(), Value::Long(1)),
                ("d".into(), Value::String("dflt".into())),
                ("e".into(), Value::Enum(1, "y".into())),
            ])
        );
        // A batch of another shape.
        let other = RecordBatch::try_new(
            Arc::new(ArrowSchema::new(vec![Field::new(
                "a",
                DataType::Utf8,
                true,
            )])),
            vec![Arc::new(StringArray::from(vec!["x"]))],
        )
        .unwrap();
        assert!(matches!(
            enc.encode_row(&other, 0, &mut out),
            Err(CodecError::SchemaMismatch(_))
        ));
        // Type mismatch at construction.
        let avro_s =
            parse(r#"{"type":"record","name":"R","fields":[{"name":"a","type":"string"}]}"#);
        assert!(AvroEncoder::new(arrow.clone(), &avro_s).is_err());
        // Missing column without default.
        let avro_m =
            parse(r#"{"type":"record","name":"R","fields":[{"name":"zz","type":"long"}]}"#);
        assert!(AvroEncoder::new(arrow, &avro_m).is_err());
        // Unknown enum symbol.
        let arrow = Arc::new(ArrowSchema::new(vec![Field::new(
            "e",
            DataType::Utf8,
            false,
        )]));
        let enc = AvroEncoder::new(arrow.clone(), &avro_with_enum()).unwrap();
        let batch =
            RecordBatch::try_new(arrow, vec![Arc::new(StringArray::from(vec!["x", "nope"]))])
                .unwrap();
        let mut out = Vec::new();
        enc.encode_row(&batch, 0, &mut out).unwrap();
        assert_eq!(out, vec![0]);
        assert!(enc.encode_row(&batch, 1, &mut out).is_err());
    }

    fn avro_with_enum() -> Schema {
        parse(
            r#"{"type":"record","name":"R","fields":[{"name":"e","type":{"type":"enum","name":"E","symbols":["x","y"]}}]}"#,
        )
    }

    #[test]
    fn varint_edges() {
        for v in [
            0i64,
            1,
            -1,
            63,
            -64,
            64,
            1 << 20,
            i64::MAX,
            i64::MIN,
            1_767_605_400_000,
        ] {
            let mut b = Vec::new();
            write_long(&mut b, v);
            // Fast path (padded) and slow path (exact length).
            let mut padded = b.clone();
            padded.extend_from_slice(&[0; 10]);
            let mut pos = 0;
            assert_eq!(read_long(&padded, &mut pos).unwrap(), v);
            assert_eq!(pos, b.len());
            let mut pos = 0;
            assert_eq!(read_long(&b, &mut pos).unwrap(), v);
            assert_eq!(pos, b.len());
        }
        let mut pos = 0;
        assert!(matches!(
            read_int(&[0xfe, 0xff, 0xff, 0xff, 0x1f], &mut pos),
            Err(Raw::Varint)
        ));
    }
}
