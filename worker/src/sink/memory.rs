//! In-memory sink: keeps the latest rows of each stream (the demo's views,
//! tests).

use std::collections::VecDeque;

use arrow::array::RecordBatch;

/// The most recent batches of one stream, bounded by row count.
pub struct MemorySink {
    batches: VecDeque<RecordBatch>,
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
        self.rows += batch.num_rows();
        self.total_rows += batch.num_rows() as u64;
        self.batches.push_back(batch);
        while self.rows > self.max_rows && self.batches.len() > 1 {
            let old = self.batches.pop_front().expect("non-empty");
            self.rows -= old.num_rows();
        }
    }

    /// Retained batches, oldest first.
    pub fn batches(&self) -> impl DoubleEndedIterator<Item = &RecordBatch> {
        self.batches.iter()
    }

    pub fn total_rows(&self) -> u64 {
        self.total_rows
    }
}
