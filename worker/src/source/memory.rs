//! In-memory source: batches handed over by the caller (the demo's simulator,
//! tests, benchmarks). Its position is the number of batches consumed.

use std::collections::VecDeque;

use arrow::array::RecordBatch;

/// A queue of batches of one source table.
#[derive(Default)]
pub struct MemorySource {
    queue: VecDeque<RecordBatch>,
    consumed: u64,
}

impl MemorySource {
    pub fn new(batches: impl IntoIterator<Item = RecordBatch>) -> Self {
        Self {
            queue: batches.into_iter().collect(),
            consumed: 0,
        }
    }

    pub fn push(&mut self, batch: RecordBatch) {
        self.queue.push_back(batch);
    }

    pub fn next_batch(&mut self) -> Option<RecordBatch> {
        let b = self.queue.pop_front()?;
        self.consumed += 1;
        Some(b)
    }

    /// Batches consumed so far.
    pub fn position(&self) -> u64 {
        self.consumed
    }
}
