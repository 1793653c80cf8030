//! What the run loop needs of a source: batches of rows per table and
//! partition, malformed records as dead letters, a position it can checkpoint
//! and start from again, and the end of bounded input.

use std::collections::BTreeMap;
use std::time::Duration;

use arrow::array::RecordBatch;

use super::{ConnectorError, DeadLetter};

/// Rows of one table from one partition (a Kafka partition, a file: 0).
#[derive(Debug)]
pub struct TableBatch {
    pub table: String,
    pub partition: usize,
    pub rows: RecordBatch,
}

/// Something a source depends on is failing; it keeps trying by itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Trouble {
    /// The broker connection dropped (the client reconnects).
    Broker(String),
    /// The schema registry could not be reached; what could not be decoded
    /// was rewound and will be read again.
    Registry(String),
}

/// What one poll returned.
#[derive(Debug, Default)]
pub struct Polled {
    pub batches: Vec<TableBatch>,
    pub dead_letters: Vec<DeadLetter>,
    /// Records read, decodable or not.
    pub records: usize,
    /// Partitions that reached the end of bounded input in this poll (each
    /// reported once).
    pub finished: Vec<(String, usize)>,
    pub trouble: Option<Trouble>,
    /// Records read that on purpose became neither rows nor dead letters,
    /// by reason (`tombstone`: a Kafka record with a null value). Counted in
    /// `records`. The run loop should add these to the run summary
    /// (`skipped`, like `dead_letters`) and to `/status` and `/metrics`.
    pub skipped: BTreeMap<&'static str, u64>,
    /// Positions that were out of the partition's range (retention deleted
    /// them, or the topic was recreated) and were moved by the source's
    /// out-of-range policy; each is also logged once by the source.
    pub offset_resets: Vec<OffsetReset>,
}

/// A partition's position moved because it was out of range.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OffsetReset {
    /// `topic/partition` (or the file's name).
    pub partition: String,
    /// The position that was out of range.
    pub from: i64,
    /// Where reading continues.
    pub to: i64,
    /// Records between the two that will never be read (0 when unknown or
    /// when the reset went backwards).
    pub skipped: u64,
}

/// Figures a source reports for `/status` and `/metrics`.
#[derive(Debug, Default)]
pub struct SourceFigures {
    /// Records read per topic or file.
    pub records_in: BTreeMap<String, u64>,
    pub bytes_in: BTreeMap<String, u64>,
    /// `topic/partition` → records behind the end.
    pub lag: BTreeMap<String, i64>,
    /// Records read that became neither rows nor dead letters, by reason
    /// (this process), as in [`Polled::skipped`].
    pub skipped: BTreeMap<String, u64>,
    /// Out-of-range positions moved, per `topic/partition` (this process).
    pub offset_resets: BTreeMap<String, u64>,
}

/// A source of table rows for the run loop.
///
/// Life cycle: constructed by the wiring (configuration checked), then
/// [`Source::start`] exactly once with the checkpointed position (or none),
/// then [`Source::poll`] until [`Source::is_done`] or the run stops.
pub trait Source: Send {
    /// Key of its position in checkpoints.
    fn name(&self) -> &str;

    /// Opens the input at `position` (from [`Source::position`] of an
    /// earlier run), or at its configured start.
    fn start(&mut self, position: Option<&serde_json::Value>) -> Result<(), ConnectorError>;

    /// Tables this source feeds and how many partitions each has, so the
    /// watermark waits for all of them.
    fn partitions(&self) -> Vec<(String, usize)>;

    /// Up to `max_records` records, waiting at most `max_wait` for the first.
    fn poll(&mut self, max_records: usize, max_wait: Duration) -> Result<Polled, ConnectorError>;

    /// Where the next poll continues, for the checkpoint.
    fn position(&self) -> serde_json::Value;

    /// Bounded input read to its end.
    fn is_done(&self) -> bool;

    fn figures(&self) -> SourceFigures {
        SourceFigures::default()
    }
}
