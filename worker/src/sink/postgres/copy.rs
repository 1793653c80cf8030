//! Arrow rows → PostgreSQL binary `COPY` tuples (pure).
//!
//! The binary format (PostgreSQL docs, "COPY … Binary Format"): a fixed
//! header, then per row a 16-bit field count and per field a 32-bit length
//! (-1 for NULL) followed by the value in the type's binary send format,
//! then a 16-bit -1 trailer. Tuples are encoded when rows are written, kept
//! (and checkpointed) as bytes, and framed with [`HEADER`]/[`TRAILER`] when
//! an epoch commits, so a re-sent epoch is the same bytes.
//!
//! A tuple of a keyed table carries the stream's columns and two more: the
//! row's order in the epoch (`int8`) and whether it deletes its key
//! (`bool`); the merge into the target table keeps each key's last change.
//! An appended table's tuples are the stream's columns only: they are
//! copied straight into the table.

use arrow::array::{Array, ArrayRef, AsArray, BooleanArray, RecordBatch};
use arrow::datatypes::{
    DataType, Date32Type, Float32Type, Float64Type, Int8Type, Int16Type, Int32Type, Int64Type,
    TimeUnit, TimestampMicrosecondType, TimestampMillisecondType, TimestampNanosecondType,
    TimestampSecondType, UInt8Type, UInt16Type, UInt32Type, UInt64Type,
};

/// `PGCOPY\n\377\r\n\0`, flags 0, header extension length 0.
pub const HEADER: &[u8] = b"PGCOPY\n\xff\r\n\0\0\0\0\0\0\0\0\0";
/// Field count -1: end of data.
pub const TRAILER: &[u8] = &[0xff, 0xff];

/// Microseconds (and days) between the Unix epoch and PostgreSQL's
/// (2000-01-01), in which timestamps and dates are sent.
const PG_EPOCH_US: i64 = 946_684_800_000_000;
const PG_EPOCH_DAYS: i32 = 10_957;

/// The PostgreSQL column type for an Arrow type, or `None` when the sink
/// cannot write it.
pub fn pg_type(data_type: &DataType) -> Option<&'static str> {
    Some(match data_type {
        DataType::Boolean => "BOOLEAN",
        DataType::Int8 | DataType::Int16 | DataType::UInt8 => "SMALLINT",
        DataType::Int32 | DataType::UInt16 => "INTEGER",
        // UInt64 values above i64::MAX are refused when written.
        DataType::Int64 | DataType::UInt32 | DataType::UInt64 => "BIGINT",
        DataType::Float32 => "REAL",
        DataType::Float64 => "DOUBLE PRECISION",
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => "TEXT",
        DataType::Binary | DataType::LargeBinary | DataType::BinaryView => "BYTEA",
        DataType::Date32 => "DATE",
        DataType::Timestamp(_, _) => "TIMESTAMPTZ",
        _ => return None,
    })
}

/// A value PostgreSQL cannot hold.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum EncodeError {
    #[error("column `{column}`: {value} does not fit PostgreSQL's BIGINT")]
    OutOfRange { column: String, value: u64 },
    #[error("column `{column}`: type {data_type} has no PostgreSQL column type here")]
    Unsupported { column: String, data_type: DataType },
}

/// What [`encode_rows`] did beside encoding.
#[derive(Debug, Default, PartialEq)]
pub struct EncodeNotes {
    /// Text values with NUL characters, which PostgreSQL text cannot hold:
    /// each NUL was written as U+FFFD.
    pub nul_replaced: u64,
}

/// The staging columns of a keyed table's tuples.
#[derive(Clone, Copy, Debug)]
pub struct Change {
    /// Order of the first row in the epoch.
    pub first_seq: i64,
    pub delete: bool,
}

/// Appends one tuple per row of `rows` to `out`: the columns in order, then
/// (with `change`) the row's order and delete flag.
pub fn encode_rows(
    rows: &RecordBatch,
    change: Option<Change>,
    out: &mut Vec<u8>,
) -> Result<EncodeNotes, EncodeError> {
    let fields = rows.num_columns() + if change.is_some() { 2 } else { 0 };
    let fields = i16::try_from(fields).expect("a stream has fewer than 32 K columns");
    let schema = rows.schema();
    let columns: Vec<(&ArrayRef, &str)> = rows
        .columns()
        .iter()
        .zip(schema.fields())
        .map(|(c, f)| (c, f.name().as_str()))
        .collect();
    let mut notes = EncodeNotes::default();
    for i in 0..rows.num_rows() {
        out.extend_from_slice(&fields.to_be_bytes());
        for (array, name) in &columns {
            encode_value(array, i, name, out, &mut notes)?;
        }
        if let Some(c) = change {
            field(out, &(c.first_seq + i as i64).to_be_bytes());
            field(out, &[u8::from(c.delete)]);
        }
    }
    Ok(notes)
}

fn field(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&(bytes.len() as i32).to_be_bytes());
    out.extend_from_slice(bytes);
}

fn null(out: &mut Vec<u8>) {
    out.extend_from_slice(&(-1i32).to_be_bytes());
}

fn encode_value(
    array: &ArrayRef,
    i: usize,
    column: &str,
    out: &mut Vec<u8>,
    notes: &mut EncodeNotes,
) -> Result<(), EncodeError> {
    if array.is_null(i) {
        null(out);
        return Ok(());
    }
    macro_rules! int {
        ($t:ty, $as:ty) => {
            field(
                out,
                &(array.as_primitive::<$t>().value(i) as $as).to_be_bytes(),
            )
        };
    }
    match array.data_type() {
        DataType::Boolean => {
            let b: &BooleanArray = array.as_boolean();
            field(out, &[u8::from(b.value(i))]);
        }
        DataType::Int8 => int!(Int8Type, i16),
        DataType::Int16 => int!(Int16Type, i16),
        DataType::UInt8 => int!(UInt8Type, i16),
        DataType::Int32 => int!(Int32Type, i32),
        DataType::UInt16 => int!(UInt16Type, i32),
        DataType::Int64 => int!(Int64Type, i64),
        DataType::UInt32 => int!(UInt32Type, i64),
        DataType::UInt64 => {
            let v = array.as_primitive::<UInt64Type>().value(i);
            let v = i64::try_from(v).map_err(|_| EncodeError::OutOfRange {
                column: column.to_string(),
                value: v,
            })?;
            field(out, &v.to_be_bytes());
        }
        DataType::Float32 => field(
            out,
            &array.as_primitive::<Float32Type>().value(i).to_be_bytes(),
        ),
        DataType::Float64 => field(
            out,
            &array.as_primitive::<Float64Type>().value(i).to_be_bytes(),
        ),
        DataType::Utf8 => text(out, array.as_string::<i32>().value(i), notes),
        DataType::LargeUtf8 => text(out, array.as_string::<i64>().value(i), notes),
        DataType::Utf8View => text(out, array.as_string_view().value(i), notes),
        DataType::Binary => field(out, array.as_binary::<i32>().value(i)),
        DataType::LargeBinary => field(out, array.as_binary::<i64>().value(i)),
        DataType::BinaryView => field(out, array.as_binary_view().value(i)),
        DataType::Date32 => {
            let days = array.as_primitive::<Date32Type>().value(i) - PG_EPOCH_DAYS;
            field(out, &days.to_be_bytes());
        }
        DataType::Timestamp(unit, _) => {
            let us = match unit {
                TimeUnit::Second => array
                    .as_primitive::<TimestampSecondType>()
                    .value(i)
                    .saturating_mul(1_000_000),
                TimeUnit::Millisecond => array
                    .as_primitive::<TimestampMillisecondType>()
                    .value(i)
                    .saturating_mul(1_000),
                TimeUnit::Microsecond => array.as_primitive::<TimestampMicrosecondType>().value(i),
                TimeUnit::Nanosecond => {
                    array.as_primitive::<TimestampNanosecondType>().value(i) / 1_000
                }
            };
            field(out, &us.saturating_sub(PG_EPOCH_US).to_be_bytes());
        }
        other => {
            return Err(EncodeError::Unsupported {
                column: column.to_string(),
                data_type: other.clone(),
            });
        }
    }
    Ok(())
}

/// UTF-8 text; PostgreSQL refuses NUL in text, so each becomes U+FFFD
/// (counted, never dropped with its row).
fn text(out: &mut Vec<u8>, s: &str, notes: &mut EncodeNotes) {
    if !s.contains('\0') {
        field(out, s.as_bytes());
        return;
    }
    notes.nul_replaced += 1;
    field(out, s.replace('\0', "\u{FFFD}").as_bytes());
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{
        Float64Array, Int64Array, StringArray, TimestampMillisecondArray, UInt64Array,
    };
    use arrow::datatypes::{Field, Schema};

    use super::*;

    /// Splits one encoded tuple into its fields (None for NULL).
    fn fields(mut b: &[u8]) -> Vec<Option<Vec<u8>>> {
        let n = i16::from_be_bytes([b[0], b[1]]);
        b = &b[2..];
        (0..n)
            .map(|_| {
                let len = i32::from_be_bytes(b[..4].try_into().unwrap());
                b = &b[4..];
                if len < 0 {
                    return None;
                }
                let (v, rest) = b.split_at(len as usize);
                b = rest;
                Some(v.to_vec())
            })
            .collect()
    }

    #[test]
    fn values_are_sent_in_postgres_binary_formats_with_order_and_delete_flag() {
        let schema = Arc::new(Schema::new(vec![
            Field::new(
                "window_start",
                DataType::Timestamp(TimeUnit::Millisecond, None),
                false,
            ),
            Field::new("symbol", DataType::Utf8, true),
            Field::new("volume", DataType::Int64, true),
            Field::new("vwap", DataType::Float64, true),
        ]));
        let rows = RecordBatch::try_new(
            schema,
            vec![
                // 2000-01-01T00:00:01.5Z: 1.5 s after PostgreSQL's epoch.
                Arc::new(TimestampMillisecondArray::from(vec![946_684_801_500])),
                Arc::new(StringArray::from(vec![Some("a\0b")])),
                Arc::new(Int64Array::from(vec![None])),
                Arc::new(Float64Array::from(vec![Some(2.5)])),
            ],
        )
        .unwrap();
        let mut out = Vec::new();
        let change = Change {
            first_seq: 7,
            delete: true,
        };
        let notes = encode_rows(&rows, Some(change), &mut out).unwrap();
        assert_eq!(notes.nul_replaced, 1);
        let f = fields(&out);
        assert_eq!(f.len(), 6);
        assert_eq!(f[0], Some(1_500_000i64.to_be_bytes().to_vec()));
        assert_eq!(f[1], Some("a\u{FFFD}b".as_bytes().to_vec()));
        assert_eq!(f[2], None);
        assert_eq!(f[3], Some(2.5f64.to_be_bytes().to_vec()));
        assert_eq!(f[4], Some(7i64.to_be_bytes().to_vec()));
        assert_eq!(f[5], Some(vec![1]));
        // An appended table's tuple: the columns only.
        let mut out = Vec::new();
        encode_rows(&rows, None, &mut out).unwrap();
        assert_eq!(fields(&out).len(), 4);
    }

    #[test]
    fn an_unsigned_count_past_bigint_is_refused_not_wrapped() {
        let schema = Arc::new(Schema::new(vec![Field::new("n", DataType::UInt64, false)]));
        let rows = RecordBatch::try_new(schema, vec![Arc::new(UInt64Array::from(vec![u64::MAX]))])
            .unwrap();
        let err = encode_rows(&rows, None, &mut Vec::new()).unwrap_err();
        assert_eq!(
            err,
            EncodeError::OutOfRange {
                column: "n".into(),
                value: u64::MAX
            }
        );
    }
}
