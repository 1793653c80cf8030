//! What the run loop needs of a sink: rows routed by stream name, dead
//! letters, and the two-step commit that makes output exactly-once.
//!
//! Per epoch the loop calls [`Sink::pre_commit`] (make the epoch's output
//! durable or recoverable, say what the checkpoint must hold), writes the
//! checkpoint, then calls [`Sink::commit`] with the source positions of that
//! checkpoint. A crash between the two is repaired by [`Sink::start`] from
//! the checkpoint: the output ends up exactly as if nothing had happened.

use std::collections::BTreeMap;

use arrow::array::RecordBatch;

use super::{ConnectorError, DeadLetter};
use crate::checkpoint::partitioned::StateRecord;

/// Source name → position, as checkpointed.
pub type Positions = BTreeMap<String, serde_json::Value>;

/// What a checkpoint holds for one sink.
#[derive(Debug, Default)]
pub struct SinkCheckpoint {
    /// Small, JSON (e.g. committed file lengths).
    pub position: serde_json::Value,
    /// Bulk, in chunks (e.g. the epoch's records, to send again if the
    /// commit is lost); empty: none.
    pub state: Vec<RecordBatch>,
}

/// A sink's part of the checkpoint a run restored.
#[derive(Debug)]
pub struct RestoredSink<'a> {
    /// The checkpoint's id, which is the epoch it closed.
    pub epoch: u64,
    pub position: Option<&'a serde_json::Value>,
    pub state: Vec<RecordBatch>,
}

/// How rows of a stream are meant: results, keys an updating stream
/// deleted, or late source rows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RowKind {
    Results,
    /// Rows in the stream's columns with only the key columns set; they go
    /// where its results go (a tombstone, a `"deleted": true` line).
    Deletes,
    Late,
}

impl From<crate::engine::OutputKind> for RowKind {
    fn from(kind: crate::engine::OutputKind) -> Self {
        match kind {
            crate::engine::OutputKind::Rows => Self::Results,
            crate::engine::OutputKind::Deletes => Self::Deletes,
            crate::engine::OutputKind::Late => Self::Late,
        }
    }
}

/// Which output of a sink takes the rows of a stream (results or late
/// rows): the routing by stream name every sink with several outputs needs.
#[derive(Debug, Default)]
pub struct Routes(BTreeMap<(String, RowKind), usize>);

impl FromIterator<((String, RowKind), usize)> for Routes {
    fn from_iter<I: IntoIterator<Item = ((String, RowKind), usize)>>(iter: I) -> Self {
        Self(iter.into_iter().collect())
    }
}

impl Routes {
    /// Index of the output for `stream`'s rows of `kind`, if the sink has one.
    pub fn get(&self, stream: &str, kind: RowKind) -> Option<usize> {
        let kind = match kind {
            RowKind::Deletes => RowKind::Results,
            other => other,
        };
        // Output batches are few and large: the key's String is noise.
        self.0.get(&(stream.to_string(), kind)).copied()
    }
}

/// A sink of stream output for the run loop.
pub trait Sink: Send {
    /// Key of its position and state in checkpoints.
    fn name(&self) -> &str;

    /// Brings the output in line with the restored checkpoint (cuts files
    /// back, sends an epoch whose commit was lost again) or starts it empty.
    /// `positions` are the sources' start positions. Returns whether the
    /// restored epoch's output had to be sent again.
    fn start(
        &mut self,
        restored: Option<RestoredSink<'_>>,
        positions: &Positions,
    ) -> Result<bool, ConnectorError>;

    /// Writes rows of `stream`. A sink without an output for it ignores them.
    fn write(
        &mut self,
        stream: &str,
        kind: RowKind,
        rows: &RecordBatch,
    ) -> Result<(), ConnectorError>;

    /// Writes malformed input records where dead letters go (if anywhere).
    fn dead_letters(&mut self, bad: &[DeadLetter]) -> Result<(), ConnectorError>;

    /// First step of closing epoch `epoch`: what its checkpoint must hold.
    fn pre_commit(&mut self, epoch: u64) -> Result<SinkCheckpoint, ConnectorError>;

    /// Second step, once the checkpoint is durable: makes the epoch's output
    /// visible together with the sources' `positions`.
    fn commit(&mut self, epoch: u64, positions: &Positions) -> Result<(), ConnectorError>;

    /// Adds the query's state (a query on several workers, see
    /// [`crate::runner::shared`]) to the open epoch, to commit with its
    /// output. Returns false when this sink does not keep state.
    fn stage_state(&mut self, _records: &[StateRecord]) -> Result<bool, ConnectorError> {
        Ok(false)
    }

    /// Flushes and closes at the end of a run.
    fn close(&mut self) -> Result<(), ConnectorError> {
        Ok(())
    }

    /// Rows written per output target (topic, file).
    fn records_out(&self) -> BTreeMap<String, u64> {
        BTreeMap::new()
    }

    /// Delay of result rows from emission to commit, if the sink measures it.
    fn commit_delays(&self) -> Option<CommitDelays> {
        None
    }

    /// Bytes of output held until the open epoch commits (what a sink
    /// keeps to re-send after a failure); the run loop closes the epoch
    /// early once all sinks together hold `RunOptions::max_pending_bytes`.
    fn pending_bytes(&self) -> u64 {
        0
    }
}

/// How long result rows waited between emission and commit.
#[derive(Clone, Debug, serde::Serialize)]
pub struct CommitDelays {
    pub rows: usize,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}
