//! Sources: where batches of source rows come from.
//!
//! Every source has a position it can report and seek back to, so a
//! checkpoint can resume it exactly where the checkpointed state left off.

pub mod file;
pub mod kafka;
pub mod memory;

use arrow::array::RecordBatch;

/// A record a source could not decode. It is reported and counted, never
/// silently dropped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BadRecord {
    /// Where it came from (`market-ticks.jsonl:17`, `…avro@block 4096`).
    pub location: String,
    pub reason: String,
    /// The raw record (lossy UTF-8 for binary input), for the dead-letter output.
    pub raw: String,
}

/// One read from a source.
#[derive(Debug, Default)]
pub struct SourceBatch {
    pub rows: Option<RecordBatch>,
    pub bad: Vec<BadRecord>,
}
