//! Bounded out-of-order emission.
//!
//! Each event gets a random delay `d` in `[0, max_jitter]` and is released in
//! order of its arrival key `ts + d` (among equal keys the later `ts` first, so
//! even a one-millisecond jitter reorders) once the simulated clock guarantees that no event still to
//! come can have a smaller key. Release keys are therefore non-decreasing, and
//! for every emitted `e` and every `e'` emitted before it,
//! `e'.ts <= key(e') <= key(e) <= e.ts + max_jitter`: out-of-orderness is
//! bounded by `max_jitter`.

use std::cmp::Ordering;
use std::collections::BinaryHeap;

struct Held<T> {
    key: i64,
    ts: i64,
    seq: u64,
    item: T,
}

impl<T> PartialEq for Held<T> {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl<T> Eq for Held<T> {}
impl<T> PartialOrd for Held<T> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl<T> Ord for Held<T> {
    /// Release order: smallest key, then largest ts, then first pushed;
    /// reversed because `BinaryHeap` pops the greatest.
    fn cmp(&self, other: &Self) -> Ordering {
        (other.key, self.ts, other.seq).cmp(&(self.key, other.ts, self.seq))
    }
}

pub(crate) struct ReorderBuffer<T> {
    heap: BinaryHeap<Held<T>>,
    seq: u64,
}

impl<T> ReorderBuffer<T> {
    pub(crate) fn new() -> Self {
        Self {
            heap: BinaryHeap::new(),
            seq: 0,
        }
    }

    /// Holds an event of time `ts` until its arrival `ts + delay`.
    pub(crate) fn push(&mut self, ts: i64, delay: i64, item: T) {
        self.seq += 1;
        self.heap.push(Held {
            key: ts + delay,
            ts,
            seq: self.seq,
            item,
        });
    }

    /// Releases every held event with key `< limit`, smallest key first.
    pub(crate) fn release_before(&mut self, limit: i64, out: &mut Vec<T>) {
        while self.heap.peek().is_some_and(|h| h.key < limit) {
            out.push(self.heap.pop().expect("peeked").item);
        }
    }

    /// Releases everything, smallest key first.
    pub(crate) fn drain(&mut self, out: &mut Vec<T>) {
        out.reserve(self.heap.len());
        while let Some(h) = self.heap.pop() {
            out.push(h.item);
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.heap.len()
    }
}
