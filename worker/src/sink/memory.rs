//! In-memory sink: keeps the latest rows of each stream (the demo's views,
//! tests).

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};

use arrow::array::RecordBatch;

use crate::runner::{
    ConnectorError, DeadLetter, Positions, RestoredSink, RowKind, Sink, SinkCheckpoint,
};

/// The most recent batches of one stream, bounded by row count: results,
/// and for an updating stream the keys it deleted.
pub struct MemorySink {
    batches: VecDeque<(RowKind, RecordBatch)>,
    rows: usize,
    max_rows: usize,
    total_rows: u64,
}

impl MemorySink {
    pub fn new(max_rows: usize) -> Self {
        Self {
            batches: VecDeque::new(),
            rows: 0,
            max_rows,
            total_rows: 0,
        }
    }

    pub fn write(&mut self, batch: RecordBatch) {
        self.write_kind(RowKind::Results, batch);
    }

    /// Keeps `batch` as rows of `kind` (results or deletions).
    pub fn write_kind(&mut self, kind: RowKind, batch: RecordBatch) {
        self.rows += batch.num_rows();
        if kind == RowKind::Results {
            self.total_rows += batch.num_rows() as u64;
        }
        self.batches.push_back((kind, batch));
        while self.rows > self.max_rows && self.batches.len() > 1 {
            let (_, old) = self.batches.pop_front().expect("non-empty");
            self.rows -= old.num_rows();
        }
    }

    /// Retained result batches, oldest first.
    pub fn batches(&self) -> impl DoubleEndedIterator<Item = &RecordBatch> {
        self.batches
            .iter()
            .filter(|(kind, _)| *kind == RowKind::Results)
            .map(|(_, b)| b)
    }

    /// Retained results and deletions, oldest first.
    pub fn changes(&self) -> impl DoubleEndedIterator<Item = (RowKind, &RecordBatch)> {
        self.batches.iter().map(|(kind, b)| (*kind, b))
    }

    pub fn total_rows(&self) -> u64 {
        self.total_rows
    }
}

/// The latest rows of every stream, shared with whoever shows them: the
/// demo's [`Sink`]. Nothing here is durable, so a restored run starts with
/// empty views over restored state.
#[derive(Clone, Default)]
pub struct MemoryOutputs {
    results: Arc<Mutex<BTreeMap<String, MemorySink>>>,
    max_rows: usize,
}

impl MemoryOutputs {
    /// Keeps the newest `max_rows` rows of each stream.
    pub fn new(max_rows: usize) -> Self {
        Self {
            results: Arc::default(),
            max_rows,
        }
    }

    /// Reads the kept rows of every stream.
    pub fn with<T>(&self, f: impl FnOnce(&BTreeMap<String, MemorySink>) -> T) -> T {
        f(&self.results.lock().expect("not poisoned"))
    }
}

impl Sink for MemoryOutputs {
    fn name(&self) -> &str {
        "memory"
    }

    fn start(
        &mut self,
        _restored: Option<RestoredSink<'_>>,
        _positions: &Positions,
    ) -> Result<bool, ConnectorError> {
        Ok(false)
    }

    fn write(
        &mut self,
        stream: &str,
        kind: RowKind,
        rows: &RecordBatch,
    ) -> Result<(), ConnectorError> {
        if matches!(kind, RowKind::Results | RowKind::Deletes) {
            let max_rows = self.max_rows;
            self.results
                .lock()
                .expect("not poisoned")
                .entry(stream.to_string())
                .or_insert_with(|| MemorySink::new(max_rows))
                .write_kind(kind, rows.clone());
        }
        Ok(())
    }

    fn dead_letters(&mut self, _bad: &[DeadLetter]) -> Result<(), ConnectorError> {
        Ok(())
    }

    fn pre_commit(&mut self, _epoch: u64) -> Result<SinkCheckpoint, ConnectorError> {
        Ok(SinkCheckpoint::default())
    }

    fn commit(&mut self, _epoch: u64, _positions: &Positions) -> Result<(), ConnectorError> {
        Ok(())
    }
}
