//! The records of an open Kafka transaction, kept until it commits.
//!
//! They are stored the way the checkpoint writes them: Arrow chunks of at
//! most [`CHUNK_BYTES`] / [`CHUNK_ROWS`] (topic, key, value, headers).
//! So a record costs its bytes plus an offset, not three heap allocations;
//! [`Pending::bytes`] is the memory actually held (buffer capacities), which
//! the run loop compares with the epoch's memory share; and the checkpoint
//! shares the chunks (`Arc`) instead of copying them. Chunks are pre-sized
//! and sealed when full, so a growing epoch never reallocates (and briefly
//! doubles) a large buffer.
//!
//! 64-bit offsets throughout: an epoch's output may exceed 2 GiB. Pure.

use std::sync::Arc;

use arrow::array::{
    Array, ArrayBuilder, ArrayRef, LargeBinaryArray, LargeBinaryBuilder, LargeStringArray,
    LargeStringBuilder, RecordBatch,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};

/// A chunk is sealed once its data (topics, keys, values, headers) would
/// exceed this many bytes...
pub const CHUNK_BYTES: usize = 1 << 20;
/// ...or it holds this many records.
pub const CHUNK_ROWS: usize = 16 * 1024;
/// Initial room for a chunk's topic names and keys.
const CHUNK_SHORT_BYTES: usize = CHUNK_ROWS * 16;

/// One record of the open transaction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PendingRecord<'a> {
    pub topic: &'a str,
    pub key: Option<&'a [u8]>,
    /// `None`: a tombstone (the key's row was deleted).
    pub value: Option<&'a [u8]>,
    /// Headers as a JSON object of strings (dead letters only).
    pub headers: Option<&'a str>,
}

/// The open transaction's records, in send order.
#[derive(Default)]
pub struct Pending {
    sealed: Vec<RecordBatch>,
    sealed_bytes: u64,
    open: Option<OpenChunk>,
    len: usize,
}

struct OpenChunk {
    topic: LargeStringBuilder,
    key: LargeBinaryBuilder,
    value: LargeBinaryBuilder,
    headers: LargeStringBuilder,
}

impl OpenChunk {
    fn new() -> Self {
        Self {
            topic: LargeStringBuilder::with_capacity(CHUNK_ROWS, CHUNK_SHORT_BYTES),
            key: LargeBinaryBuilder::with_capacity(CHUNK_ROWS, CHUNK_SHORT_BYTES),
            value: LargeBinaryBuilder::with_capacity(CHUNK_ROWS, CHUNK_BYTES),
            // Dead letters only: most chunks hold nulls here.
            headers: LargeStringBuilder::with_capacity(CHUNK_ROWS, 0),
        }
    }

    fn rows(&self) -> usize {
        self.value.len()
    }

    /// Data bytes held (what the chunk limit counts).
    fn data_len(&self) -> usize {
        self.topic.values_slice().len()
            + self.key.values_slice().len()
            + self.value.values_slice().len()
            + self.headers.values_slice().len()
    }

    fn bytes(&self) -> u64 {
        // validity_capacity() is in bytes already.
        let string = |b: &LargeStringBuilder| {
            b.values_capacity() + b.offsets_capacity() * 8 + b.validity_capacity()
        };
        let binary = |b: &LargeBinaryBuilder| {
            b.values_capacity() + b.offsets_capacity() * 8 + b.validity_capacity()
        };
        (string(&self.topic) + binary(&self.key) + binary(&self.value) + string(&self.headers))
            as u64
    }

    fn finish(mut self) -> RecordBatch {
        let columns: Vec<ArrayRef> = vec![
            Arc::new(self.topic.finish()),
            Arc::new(self.key.finish()),
            Arc::new(self.value.finish()),
            Arc::new(self.headers.finish()),
        ];
        RecordBatch::try_new(schema(), columns).expect("columns match the schema")
    }
}

/// Layout of a chunk, and of the records in the checkpoint.
pub fn schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("topic", DataType::LargeUtf8, false),
        Field::new("key", DataType::LargeBinary, true),
        Field::new("value", DataType::LargeBinary, true),
        Field::new("headers", DataType::LargeUtf8, true),
    ]))
}

impl Pending {
    pub fn push(&mut self, r: PendingRecord<'_>) {
        let record_len = r.topic.len()
            + r.key.map_or(0, <[u8]>::len)
            + r.value.map_or(0, <[u8]>::len)
            + r.headers.map_or(0, str::len);
        let full = self
            .open
            .as_ref()
            .is_some_and(|c| c.rows() >= CHUNK_ROWS || c.data_len() + record_len > CHUNK_BYTES);
        if full {
            self.seal_open();
        }
        let c = self.open.get_or_insert_with(OpenChunk::new);
        c.topic.append_value(r.topic);
        c.key.append_option(r.key);
        c.value.append_option(r.value);
        c.headers.append_option(r.headers);
        self.len += 1;
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Memory held: the capacity of every buffer, sealed or open.
    pub fn bytes(&self) -> u64 {
        self.sealed_bytes + self.open.as_ref().map_or(0, OpenChunk::bytes)
    }

    /// Seals the open chunk and returns all chunks (shared, not copied),
    /// for the checkpoint.
    pub fn chunks(&mut self) -> Vec<RecordBatch> {
        self.seal_open();
        self.sealed.clone()
    }

    /// Every record in send order.
    pub fn records(&mut self) -> impl Iterator<Item = PendingRecord<'_>> {
        self.seal_open();
        self.sealed.iter().flat_map(|b| {
            let column = |i: usize| b.column(i);
            let topic = downcast::<LargeStringArray>(column(0));
            let key = downcast::<LargeBinaryArray>(column(1));
            let value = downcast::<LargeBinaryArray>(column(2));
            let headers = downcast::<LargeStringArray>(column(3));
            (0..b.num_rows()).map(move |i| PendingRecord {
                topic: topic.value(i),
                key: key.is_valid(i).then(|| key.value(i)),
                value: value.is_valid(i).then(|| value.value(i)),
                headers: headers.is_valid(i).then(|| headers.value(i)),
            })
        })
    }

    /// The records a checkpoint holds. Older checkpoints wrote 32-bit
    /// offsets (`Utf8`, `Binary`): they are cast. Any other layout is
    /// refused, never reinterpreted.
    pub fn from_checkpoint(batches: Vec<RecordBatch>) -> Result<Self, String> {
        let mut p = Pending::default();
        for b in batches {
            if b.num_columns() != 4 {
                return Err(format!("{} columns instead of 4", b.num_columns()));
            }
            let mut columns = Vec::with_capacity(4);
            for ((column, found), field) in b
                .columns()
                .iter()
                .zip(b.schema().fields())
                .zip(schema().fields())
            {
                let narrow = match field.data_type() {
                    DataType::LargeUtf8 => DataType::Utf8,
                    _ => DataType::Binary,
                };
                if found.name() != field.name()
                    || (column.data_type() != field.data_type() && *column.data_type() != narrow)
                {
                    return Err(format!(
                        "column {} {} where {} {} belongs",
                        found.name(),
                        column.data_type(),
                        field.name(),
                        field.data_type()
                    ));
                }
                let cast = arrow::compute::cast(column, field.data_type())
                    .map_err(|e| format!("column {}: {e}", field.name()))?;
                if !field.is_nullable() && cast.null_count() > 0 {
                    return Err(format!("column {} has nulls", field.name()));
                }
                columns.push(cast);
            }
            let batch = RecordBatch::try_new(schema(), columns).map_err(|e| e.to_string())?;
            p.len += batch.num_rows();
            p.sealed_bytes += held_bytes(&batch);
            p.sealed.push(batch);
        }
        Ok(p)
    }

    fn seal_open(&mut self) {
        if let Some(c) = self.open.take().filter(|c| c.rows() > 0) {
            let batch = c.finish();
            self.sealed_bytes += batch.get_array_memory_size() as u64;
            self.sealed.push(batch);
        }
    }
}

/// Bytes a batch read from a file holds: its buffers' lengths. (They are
/// slices of the file's one block, whose whole capacity
/// `get_array_memory_size` would count once per buffer.)
fn held_bytes(batch: &RecordBatch) -> u64 {
    batch
        .columns()
        .iter()
        .map(|c| {
            let data = c.to_data();
            let buffers: usize = data.buffers().iter().map(|b| b.len()).sum();
            buffers + data.nulls().map_or(0, |n| n.buffer().len())
        })
        .sum::<usize>() as u64
}

fn downcast<T: 'static>(a: &ArrayRef) -> &T {
    a.as_any()
        .downcast_ref::<T>()
        .expect("sealed chunks have the pending schema")
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{BinaryArray, StringArray};

    fn record<'a>(topic: &'a str, value: &'a [u8]) -> PendingRecord<'a> {
        PendingRecord {
            topic,
            key: None,
            value: Some(value),
            headers: None,
        }
    }

    #[test]
    fn records_come_back_in_order_across_chunks_and_the_checkpoint() {
        let mut p = Pending::default();
        let headers = r#"{"tickflow.error.reason":"bad-magic"}"#;
        let n = CHUNK_ROWS * 2 + 7;
        for i in 0..n {
            let value = i.to_le_bytes();
            let key = (i % 3 == 0).then_some(&b"AAPL"[..]);
            p.push(PendingRecord {
                topic: if i % 2 == 0 { "out" } else { "dlq" },
                key,
                value: Some(&value),
                headers: (i % 5 == 0).then_some(headers),
            });
        }
        assert_eq!(p.len(), n);
        let chunks = p.chunks();
        assert_eq!(chunks.len(), 3, "sealed every {CHUNK_ROWS} rows");
        let mut back = Pending::from_checkpoint(chunks).unwrap();
        assert_eq!(back.len(), n);
        for (i, r) in back.records().enumerate() {
            assert_eq!(r.value, Some(&i.to_le_bytes()[..]));
            assert_eq!(r.topic, if i % 2 == 0 { "out" } else { "dlq" });
            assert_eq!(r.key, (i % 3 == 0).then_some(&b"AAPL"[..]));
            assert_eq!(r.headers, (i % 5 == 0).then_some(headers));
        }
    }

    #[test]
    fn bytes_are_what_the_buffers_hold_and_large_values_seal_the_chunk() {
        let mut p = Pending::default();
        assert_eq!(p.bytes(), 0);
        let big = vec![7u8; CHUNK_BYTES / 2 + 1];
        p.push(record("t", &big));
        let one = p.bytes();
        // The pre-sized chunk: at least a chunk of values and its offsets.
        assert!(one >= (CHUNK_BYTES + CHUNK_ROWS * 8) as u64, "{one}");
        p.push(record("t", &big));
        assert_eq!(p.chunks().len(), 2, "two halves do not fit one chunk");
        // A value larger than a chunk gets a chunk of its own, counted.
        let huge = vec![1u8; 3 * CHUNK_BYTES];
        p.push(record("t", &huge));
        assert!(p.bytes() >= 2 * one + huge.len() as u64);
        assert_eq!(p.records().nth(2).unwrap().value.unwrap().len(), huge.len());
    }

    #[test]
    fn a_checkpoint_with_32_bit_offsets_reads_back_and_a_wrong_layout_is_refused() {
        let old = RecordBatch::try_new(
            Arc::new(Schema::new(vec![
                Field::new("topic", DataType::Utf8, false),
                Field::new("key", DataType::Binary, true),
                Field::new("value", DataType::Binary, false),
                Field::new("headers", DataType::Utf8, true),
            ])),
            vec![
                Arc::new(StringArray::from(vec!["a"])),
                Arc::new(BinaryArray::from(vec![Some(&b"k"[..])])),
                Arc::new(BinaryArray::from(vec![&b"v"[..]])),
                Arc::new(StringArray::from(vec![None::<&str>])),
            ],
        )
        .unwrap();
        let mut back = Pending::from_checkpoint(vec![old.clone()]).unwrap();
        let r = back.records().next().unwrap();
        assert_eq!(
            (r.topic, r.key, r.value),
            ("a", Some(&b"k"[..]), Some(&b"v"[..]))
        );
        assert!(Pending::from_checkpoint(vec![old.project(&[0, 1]).unwrap()]).is_err());
        // Columns in another order, or of other types, are not cast into
        // records to send.
        let swapped = old.project(&[0, 2, 1, 3]).unwrap();
        assert!(Pending::from_checkpoint(vec![swapped]).is_err());
        let mut columns = old.columns().to_vec();
        columns[0] = Arc::new(arrow::array::Int64Array::from(vec![1234]));
        let mut fields: Vec<_> = old.schema().fields().iter().cloned().collect();
        fields[0] = Arc::new(Field::new("topic", DataType::Int64, false));
        let numeric = RecordBatch::try_new(Arc::new(Schema::new(fields)), columns).unwrap();
        let err = Pending::from_checkpoint(vec![numeric]).err().unwrap();
        assert!(err.contains("Int64"), "{err}");
    }

    #[test]
    fn keys_and_headers_count_toward_the_chunk_too() {
        let mut p = Pending::default();
        let key = vec![1u8; 8 * 1024];
        for _ in 0..(4 * CHUNK_BYTES / key.len()) {
            p.push(PendingRecord {
                topic: "dlq",
                key: Some(&key),
                value: Some(b""),
                headers: None,
            });
        }
        // Four chunks' worth of keys: at least four chunks, none oversized.
        let chunks = p.chunks();
        assert!(chunks.len() >= 4, "{} chunks", chunks.len());
        for c in &chunks {
            let keys = downcast::<LargeBinaryArray>(c.column(1));
            assert!(keys.value_data().len() <= CHUNK_BYTES);
        }
    }
}
