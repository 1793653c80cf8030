//! Low-level Avro binary reading: zig-zag varints, fixed-size values,
//! length-prefixed bytes, booleans, and [`Skip`] programs for writer fields
//! the reader does not have.
//!
//! Invariants: every primitive reads from `buf` at `*pos` and advances `*pos`
//! only past bytes it consumed successfully; it never panics on malformed or
//! truncated input but returns a [`Raw`] error (kept small so the decoder's
//! hot loop stays cheap). Lengths are checked against the remaining buffer
//! before anything is sliced or skipped.

use apache_avro::Schema;
use apache_avro::schema::Namespace;

use crate::codec::schema::{Names, deref};

// ---------------------------------------------------------------------------
// Low-level reading
// ---------------------------------------------------------------------------

/// A decode failure before the field name is attached (kept small so the hot
/// loop's `Result` stays cheap).
#[derive(Debug, Clone, Copy)]
pub(super) enum Raw {
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
pub(super) fn read_long(buf: &[u8], pos: &mut usize) -> Result<i64, Raw> {
    let u = read_varint(buf, pos)?;
    Ok((u >> 1) as i64 ^ -((u & 1) as i64))
}

#[inline(always)]
pub(super) fn read_int(buf: &[u8], pos: &mut usize) -> Result<i32, Raw> {
    i32::try_from(read_long(buf, pos)?).map_err(|_| Raw::Varint)
}

#[inline(always)]
pub(super) fn read_fixed<'a, const N: usize>(
    buf: &'a [u8],
    pos: &mut usize,
) -> Result<&'a [u8; N], Raw> {
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
pub(super) fn read_bytes<'a>(buf: &'a [u8], pos: &mut usize) -> Result<&'a [u8], Raw> {
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
pub(super) fn is_utf8(b: &[u8]) -> bool {
    if b.len() <= 16 && b.iter().fold(0u8, |acc, &x| acc | x) < 0x80 {
        return true;
    }
    std::str::from_utf8(b).is_ok()
}

#[inline(always)]
pub(super) fn read_bool(buf: &[u8], pos: &mut usize) -> Result<bool, Raw> {
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
pub(super) enum Skip {
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
    pub(super) fn compile(
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

    pub(super) fn skip(&self, buf: &[u8], pos: &mut usize) -> Result<(), Raw> {
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
