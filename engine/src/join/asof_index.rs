//! The right side of an ASOF join, per key: row references sorted by
//! (event time, arrival), the lookup of a left row's match, and pruning
//! of the rows no future left row can pick.
//!
//! A left row at event time `t` looks for `target = t + offset`:
//! backward (`l.ts >= r.ts`, offset 0; `>` is offset −1) takes the latest
//! right row at or before the target, forward (`<=`, `<`) the earliest at
//! or after it. Rows with the same event time are ordered by arrival and
//! the last to arrive wins in both directions, so the result does not
//! depend on how the input was cut into batches.
//!
//! Pure: no Arrow, no watermarks; the operator decides when a lookup is
//! final and where its rows live (`chunk`, `row`).

use std::collections::HashMap;

/// Which right row an ASOF join takes for a left row.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AsofDirection {
    /// The latest right row with `ts <= target`.
    Backward,
    /// The earliest right row with `ts >= target`.
    Forward,
}

/// Where a right row lives, and its order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RightRef {
    pub ts: i64,
    /// Arrival order; breaks ties on `ts`.
    pub seq: u64,
    pub chunk: u32,
    pub row: u32,
}

/// Right rows per key id, each key's rows sorted by (`ts`, `seq`).
#[derive(Debug, Default)]
pub struct AsofIndex {
    by_key: HashMap<usize, Vec<RightRef>>,
    next_seq: u64,
    len: usize,
}

impl AsofIndex {
    /// Number of right rows held.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Adds a right row; it arrived after every row added before.
    pub fn insert(&mut self, key: usize, ts: i64, chunk: u32, row: u32) {
        let seq = self.next_seq;
        self.next_seq += 1;
        let rows = self.by_key.entry(key).or_default();
        // `seq` is the largest yet: the row goes after every row of its ts.
        let at = rows.partition_point(|r| r.ts <= ts);
        rows.insert(
            at,
            RightRef {
                ts,
                seq,
                chunk,
                row,
            },
        );
        self.len += 1;
    }

    /// The row a left row of `key` looking for `target` takes among the
    /// rows held, if any.
    pub fn lookup(&self, key: usize, target: i64, direction: AsofDirection) -> Option<RightRef> {
        let rows = self.by_key.get(&key)?;
        match direction {
            AsofDirection::Backward => {
                let n = rows.partition_point(|r| r.ts <= target);
                n.checked_sub(1).map(|i| rows[i])
            }
            AsofDirection::Forward => {
                let first = rows.get(rows.partition_point(|r| r.ts < target))?;
                let last = rows.partition_point(|r| r.ts <= first.ts) - 1;
                Some(rows[last])
            }
        }
    }

    /// Drops the rows no left row looking for a target at or after
    /// `floor` can take: backward, all but the last at or before `floor`;
    /// forward, all before `floor`.
    pub fn prune(&mut self, floor: i64, direction: AsofDirection) {
        let mut dropped = 0;
        self.by_key.retain(|_, rows| {
            let n = match direction {
                AsofDirection::Backward => {
                    rows.partition_point(|r| r.ts <= floor).saturating_sub(1)
                }
                AsofDirection::Forward => rows.partition_point(|r| r.ts < floor),
            };
            rows.drain(..n);
            dropped += n;
            !rows.is_empty()
        });
        self.len -= dropped;
    }

    /// Every row held, per key in (`ts`, `seq`) order.
    pub fn rows(&self) -> impl Iterator<Item = (usize, &RightRef)> {
        self.by_key
            .iter()
            .flat_map(|(&k, rows)| rows.iter().map(move |r| (k, r)))
    }

    /// Points every row somewhere else (after its rows were compacted).
    pub fn relocate(&mut self, mut place: impl FnMut(&RightRef) -> (u32, u32)) {
        for r in self.by_key.values_mut().flatten() {
            (r.chunk, r.row) = place(r);
        }
    }

    /// The key ids with rows held.
    pub fn keys(&self) -> impl Iterator<Item = usize> + '_ {
        self.by_key.keys().copied()
    }

    /// Renames key ids (after the key numbering was rebuilt).
    pub fn rekey(&mut self, renumber: &HashMap<usize, usize>) {
        self.by_key = std::mem::take(&mut self.by_key)
            .into_iter()
            .map(|(k, rows)| (renumber[&k], rows))
            .collect();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use AsofDirection::{Backward, Forward};

    fn index(rows: &[(usize, i64)]) -> AsofIndex {
        let mut ix = AsofIndex::default();
        for (i, &(k, ts)) in rows.iter().enumerate() {
            ix.insert(k, ts, 0, i as u32);
        }
        ix
    }

    fn row(ix: &AsofIndex, key: usize, target: i64, d: AsofDirection) -> Option<u32> {
        ix.lookup(key, target, d).map(|r| r.row)
    }

    #[test]
    fn backward_takes_the_latest_at_or_before_and_forward_the_earliest_at_or_after() {
        // Out of order within a key, two keys.
        let ix = index(&[(1, 30), (1, 10), (2, 15), (1, 20)]);
        assert_eq!(row(&ix, 1, 25, Backward), Some(3));
        assert_eq!(row(&ix, 1, 20, Backward), Some(3), "at the target counts");
        assert_eq!(row(&ix, 1, 9, Backward), None, "nothing before");
        assert_eq!(row(&ix, 1, 11, Forward), Some(3));
        assert_eq!(row(&ix, 1, 31, Forward), None, "nothing after");
        assert_eq!(row(&ix, 2, 100, Backward), Some(2));
        assert_eq!(row(&ix, 3, 100, Backward), None, "unknown key");
    }

    #[test]
    fn ties_go_to_the_last_arrival_in_both_directions() {
        let ix = index(&[(1, 10), (1, 20), (1, 20), (1, 30)]);
        assert_eq!(row(&ix, 1, 25, Backward), Some(2));
        assert_eq!(row(&ix, 1, 15, Forward), Some(2));
    }

    #[test]
    fn pruning_keeps_what_a_later_target_can_take() {
        let mut ix = index(&[(1, 10), (1, 20), (1, 30), (2, 5)]);
        ix.prune(25, Backward);
        // Key 1 keeps 20 (the match of 25) and 30; key 2 keeps 5.
        assert_eq!(ix.len(), 3);
        assert_eq!(row(&ix, 1, 25, Backward), Some(1));
        assert_eq!(row(&ix, 2, 25, Backward), Some(3));
        let mut ix = index(&[(1, 10), (1, 20), (1, 30), (2, 5)]);
        ix.prune(20, Forward);
        assert_eq!(ix.len(), 2, "10 and key 2's 5 go");
        assert_eq!(row(&ix, 1, 20, Forward), Some(1));
        assert!(ix.keys().all(|k| k == 1));
    }
}
