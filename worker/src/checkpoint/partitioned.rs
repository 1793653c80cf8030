//! A query's state per source partition, as records of a compacted Kafka
//! topic (pure: encoding and decoding only; `crate::kafka::state` reads and
//! writes the topic).
//!
//! A query on several workers keeps one key group per source partition
//! (`Pipeline::group_by_partition`), so a partition's state is its key
//! group's state plus its read positions: whichever worker owns the
//! partition next restores exactly that. Each epoch writes every owned
//! partition's state in the transaction that commits the epoch's output,
//! as Kafka Streams writes its changelogs: output and state are committed
//! together or not at all.
//!
//! Record layout: key `p<partition>/<chunk>`; value `TFPS` + version byte +
//! u32 header length + header JSON + a slice of the payload. Chunks keep
//! records under the broker's default 1 MB limit. Every chunk names the
//! write it belongs to (`version`) and how many chunks it has, so after
//! compaction a partition whose state shrank still reads back only its
//! newest chunks: a chunk of another version is ignored.
//!
//! Payload: u32 length + JSON meta (positions, watermarks, stream
//! fingerprints, the order of the states), then per state a u64 length and
//! an Arrow IPC file.

use std::collections::BTreeMap;
use std::io::Cursor;

use arrow::array::RecordBatch;
use arrow::ipc::reader::FileReader;
use arrow::ipc::writer::FileWriter;
use serde::{Deserialize, Serialize};

use crate::engine::GroupSnapshot;

const MAGIC: &[u8; 4] = b"TFPS";
const FORMAT_VERSION: u8 = 1;
/// Payload bytes per record: with the header well under the 1,000,000 bytes
/// a producer and a topic take by default.
pub const CHUNK_BYTES: usize = 900 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum PartitionStateError {
    #[error("state record `{key}` is not a tickflow partition state: {reason}")]
    Malformed { key: String, reason: String },
    #[error(
        "the state of partition {partition} is incomplete: chunk {missing} of write {version} \
         is missing (the state topic was altered, or written by another tool)"
    )]
    Incomplete {
        partition: usize,
        version: String,
        missing: usize,
    },
    #[error("encoding partition state: {0}")]
    Encode(String),
}

/// One source partition's state: where reading continues, how far its
/// writer's watermarks were, and its key group's state.
#[derive(Clone, Debug)]
pub struct PartitionState {
    pub partition: usize,
    /// Epoch of the writer that committed it (for logs and status).
    pub epoch: u64,
    /// The worker that wrote it (`w<index>/<workers>`) and its run.
    pub writer: String,
    /// `topic/partition` → next offset, of this partition in every source topic.
    pub positions: BTreeMap<String, i64>,
    /// Source → watermark of the writer when it wrote this (a lower bound
    /// of this partition's own).
    pub watermarks: BTreeMap<String, i64>,
    pub group: GroupSnapshot,
}

/// A record of the state topic.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StateRecord {
    pub key: String,
    pub value: Vec<u8>,
}

#[derive(Serialize, Deserialize)]
struct ChunkHeader {
    partition: usize,
    version: String,
    chunk: usize,
    chunks: usize,
}

#[derive(Serialize, Deserialize)]
struct PayloadMeta {
    epoch: u64,
    writer: String,
    positions: BTreeMap<String, i64>,
    watermarks: BTreeMap<String, i64>,
    streams: serde_json::Map<String, serde_json::Value>,
    /// Stream names of the states that follow, in order.
    states: Vec<String>,
}

/// The records that store `state`, tagged with `version` (unique per write).
pub fn encode(
    state: &PartitionState,
    version: &str,
) -> Result<Vec<StateRecord>, PartitionStateError> {
    let payload = encode_payload(state)?;
    let chunks = payload.len().div_ceil(CHUNK_BYTES).max(1);
    (0..chunks)
        .map(|chunk| {
            let header = ChunkHeader {
                partition: state.partition,
                version: version.to_string(),
                chunk,
                chunks,
            };
            let header = serde_json::to_vec(&header)
                .map_err(|e| PartitionStateError::Encode(e.to_string()))?;
            let body = &payload[(chunk * CHUNK_BYTES).min(payload.len())
                ..((chunk + 1) * CHUNK_BYTES).min(payload.len())];
            let mut value = Vec::with_capacity(9 + header.len() + body.len());
            value.extend_from_slice(MAGIC);
            value.push(FORMAT_VERSION);
            value.extend_from_slice(&(header.len() as u32).to_be_bytes());
            value.extend_from_slice(&header);
            value.extend_from_slice(body);
            Ok(StateRecord {
                key: chunk_key(state.partition, chunk),
                value,
            })
        })
        .collect()
}

fn chunk_key(partition: usize, chunk: usize) -> String {
    format!("p{partition}/{chunk}")
}

fn encode_payload(state: &PartitionState) -> Result<Vec<u8>, PartitionStateError> {
    let err = |e: &dyn std::fmt::Display| PartitionStateError::Encode(e.to_string());
    let meta = PayloadMeta {
        epoch: state.epoch,
        writer: state.writer.clone(),
        positions: state.positions.clone(),
        watermarks: state.watermarks.clone(),
        streams: state.group.streams.clone(),
        states: state.group.states.keys().cloned().collect(),
    };
    let meta = serde_json::to_vec(&meta).map_err(|e| err(&e))?;
    let mut out = Vec::new();
    out.extend_from_slice(&(meta.len() as u32).to_be_bytes());
    out.extend_from_slice(&meta);
    for batch in state.group.states.values() {
        let mut ipc = Vec::new();
        let mut w = FileWriter::try_new(&mut ipc, &batch.schema()).map_err(|e| err(&e))?;
        w.write(batch).map_err(|e| err(&e))?;
        w.finish().map_err(|e| err(&e))?;
        drop(w);
        out.extend_from_slice(&(ipc.len() as u64).to_be_bytes());
        out.extend_from_slice(&ipc);
    }
    Ok(out)
}

/// The latest value per key of a state topic (as a reader of a compacted
/// topic keeps them), decoded into each partition's newest complete state.
/// Tombstones (a `None` value) delete a key. Keys of other partitions are
/// skipped without decoding their payload.
pub fn decode_latest(
    latest: &BTreeMap<String, Option<Vec<u8>>>,
    partitions: &[usize],
) -> Result<BTreeMap<usize, PartitionState>, PartitionStateError> {
    let mut out = BTreeMap::new();
    for &p in partitions {
        let Some(Some(first)) = latest.get(&chunk_key(p, 0)) else {
            continue;
        };
        let (head, body) = split_chunk(&chunk_key(p, 0), first)?;
        let mut payload = body.to_vec();
        for chunk in 1..head.chunks {
            let key = chunk_key(p, chunk);
            let next = latest
                .get(&key)
                .and_then(Option::as_ref)
                .map(|v| split_chunk(&key, v))
                .transpose()?
                .filter(|(h, _)| h.version == head.version && h.chunk == chunk);
            let Some((_, body)) = next else {
                return Err(PartitionStateError::Incomplete {
                    partition: p,
                    version: head.version,
                    missing: chunk,
                });
            };
            payload.extend_from_slice(body);
        }
        out.insert(p, decode_payload(p, &chunk_key(p, 0), &payload)?);
    }
    Ok(out)
}

fn split_chunk<'a>(
    key: &str,
    value: &'a [u8],
) -> Result<(ChunkHeader, &'a [u8]), PartitionStateError> {
    let bad = |reason: &str| PartitionStateError::Malformed {
        key: key.to_string(),
        reason: reason.to_string(),
    };
    if value.len() < 9 || &value[..4] != MAGIC {
        return Err(bad("no TFPS marker"));
    }
    if value[4] != FORMAT_VERSION {
        return Err(bad(&format!(
            "format version {} (this worker reads {FORMAT_VERSION})",
            value[4]
        )));
    }
    let len = u32::from_be_bytes(value[5..9].try_into().expect("4 bytes")) as usize;
    let header = value
        .get(9..9 + len)
        .ok_or_else(|| bad("header cut short"))?;
    let header: ChunkHeader =
        serde_json::from_slice(header).map_err(|e| bad(&format!("header: {e}")))?;
    Ok((header, &value[9 + len..]))
}

fn decode_payload(
    partition: usize,
    key: &str,
    payload: &[u8],
) -> Result<PartitionState, PartitionStateError> {
    let bad = |reason: String| PartitionStateError::Malformed {
        key: key.to_string(),
        reason,
    };
    let mut at = 0usize;
    let mut take = |n: usize| -> Result<&[u8], PartitionStateError> {
        let end = at.checked_add(n).filter(|&e| e <= payload.len());
        let end = end.ok_or_else(|| bad(format!("payload cut short at byte {at}")))?;
        let slice = &payload[at..end];
        at = end;
        Ok(slice)
    };
    let len = u32::from_be_bytes(take(4)?.try_into().expect("4 bytes")) as usize;
    let meta: PayloadMeta =
        serde_json::from_slice(take(len)?).map_err(|e| bad(format!("meta: {e}")))?;
    let mut states = BTreeMap::new();
    for name in &meta.states {
        let len = u64::from_be_bytes(take(8)?.try_into().expect("8 bytes"));
        let len = usize::try_from(len).map_err(|_| bad(format!("state `{name}` too large")))?;
        let ipc = take(len)?;
        let reader = FileReader::try_new(Cursor::new(ipc), None)
            .map_err(|e| bad(format!("state `{name}`: {e}")))?;
        let schema = reader.schema();
        let batches: Vec<RecordBatch> = reader
            .collect::<Result<_, _>>()
            .map_err(|e| bad(format!("state `{name}`: {e}")))?;
        let batch = arrow::compute::concat_batches(&schema, &batches)
            .map_err(|e| bad(format!("state `{name}`: {e}")))?;
        states.insert(name.clone(), batch);
    }
    Ok(PartitionState {
        partition,
        epoch: meta.epoch,
        writer: meta.writer,
        positions: meta.positions,
        watermarks: meta.watermarks,
        group: GroupSnapshot {
            streams: meta.streams,
            states,
        },
    })
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{Int64Array, StringArray};
    use arrow::datatypes::{DataType, Field, Schema};

    use super::*;

    fn state(partition: usize, rows: usize) -> PartitionState {
        let schema = Arc::new(Schema::new(vec![
            Field::new("symbol", DataType::Utf8, false),
            Field::new("n", DataType::Int64, false),
        ]));
        let batch = RecordBatch::try_new(
            schema,
            vec![
                Arc::new(StringArray::from_iter_values(
                    (0..rows).map(|i| format!("S{i:06}")),
                )),
                Arc::new(Int64Array::from_iter_values(0..rows as i64)),
            ],
        )
        .unwrap();
        let mut streams = serde_json::Map::new();
        streams.insert("ohlc".into(), serde_json::json!({"fingerprint": "abc"}));
        PartitionState {
            partition,
            epoch: 7,
            writer: "w1/3 run-x".into(),
            positions: BTreeMap::from([(format!("ticks/{partition}"), 1234)]),
            watermarks: BTreeMap::from([("market_ticks".into(), 99)]),
            group: GroupSnapshot {
                streams,
                states: BTreeMap::from([("ohlc".into(), batch)]),
            },
        }
    }

    fn latest(records: &[StateRecord]) -> BTreeMap<String, Option<Vec<u8>>> {
        records
            .iter()
            .map(|r| (r.key.clone(), Some(r.value.clone())))
            .collect()
    }

    #[test]
    fn a_partition_state_reads_back_as_written() {
        let s = state(4, 10);
        let records = encode(&s, "v1").unwrap();
        assert_eq!(records.len(), 1);
        let back = decode_latest(&latest(&records), &[4, 5]).unwrap();
        assert_eq!(
            back.keys().copied().collect::<Vec<_>>(),
            vec![4],
            "5 has no state"
        );
        let b = &back[&4];
        assert_eq!((b.epoch, b.writer.as_str()), (7, "w1/3 run-x"));
        assert_eq!(b.positions, s.positions);
        assert_eq!(b.watermarks, s.watermarks);
        assert_eq!(b.group.streams, s.group.streams);
        assert_eq!(b.group.states["ohlc"], s.group.states["ohlc"]);
    }

    #[test]
    fn a_large_state_is_chunked_and_a_shrunk_one_ignores_stale_chunks() {
        let big = state(0, 200_000);
        let records = encode(&big, "v1").unwrap();
        assert!(records.len() > 2, "{} chunks", records.len());
        assert!(records.iter().all(|r| r.value.len() < 1_000_000));
        let mut topic = latest(&records);
        assert_eq!(
            decode_latest(&topic, &[0]).unwrap()[&0].group.states["ohlc"].num_rows(),
            200_000
        );
        // A later, smaller write overwrites chunk 0 only; compaction keeps the
        // old higher chunks, which must not be read.
        let small = state(0, 3);
        topic.extend(latest(&encode(&small, "v2").unwrap()));
        assert_eq!(
            decode_latest(&topic, &[0]).unwrap()[&0].group.states["ohlc"].num_rows(),
            3
        );
    }

    #[test]
    fn a_missing_chunk_or_a_foreign_record_is_an_error_not_a_silent_reset() {
        let records = encode(&state(2, 200_000), "v1").unwrap();
        let mut topic = latest(&records);
        topic.insert(
            "p2/1".into(),
            Some(encode(&state(2, 200_000), "v0").unwrap()[1].value.clone()),
        );
        assert!(matches!(
            decode_latest(&topic, &[2]),
            Err(PartitionStateError::Incomplete {
                partition: 2,
                missing: 1,
                ..
            })
        ));
        let topic = BTreeMap::from([("p1/0".to_string(), Some(b"hello".to_vec()))]);
        let err = decode_latest(&topic, &[1]).unwrap_err().to_string();
        assert!(err.contains("`p1/0`") && err.contains("TFPS"), "{err}");
    }

    #[test]
    fn a_deleted_key_means_no_state() {
        let mut topic = latest(&encode(&state(3, 5), "v1").unwrap());
        topic.insert("p3/0".into(), None);
        assert!(decode_latest(&topic, &[3]).unwrap().is_empty());
    }
}
