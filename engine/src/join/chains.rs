//! The rows of one join side by key, for probing: each key's rows are
//! chained through flat arrays (newest first), so keeping a row allocates
//! nothing per key.
//!
//! Pure: key ids come from the join's shared numbering, and a row is
//! wherever the operator keeps it (`(chunk, row)`).

const NONE: u32 = u32::MAX;

#[derive(Debug, Default)]
pub struct KeyChains {
    /// Per key id: the newest slot of that key, or `NONE`.
    newest: Vec<u32>,
    /// Per slot: where its row lives.
    slots: Vec<(u32, u32)>,
    /// Per slot: the next older slot of the same key, or `NONE`.
    older: Vec<u32>,
}

impl KeyChains {
    /// Adds the row at `at` under `key`.
    pub fn insert(&mut self, key: usize, at: (u32, u32)) {
        if key >= self.newest.len() {
            self.newest.resize(key + 1, NONE);
        }
        let slot = self.slots.len() as u32;
        self.slots.push(at);
        self.older.push(self.newest[key]);
        self.newest[key] = slot;
    }

    /// Where the rows of `key` live, newest first.
    pub fn rows_of(&self, key: usize) -> impl Iterator<Item = (u32, u32)> + '_ {
        let mut slot = self.newest.get(key).copied().unwrap_or(NONE);
        std::iter::from_fn(move || {
            (slot != NONE).then(|| {
                let at = self.slots[slot as usize];
                slot = self.older[slot as usize];
                at
            })
        })
    }

    /// The keys with rows.
    pub fn keys(&self) -> impl Iterator<Item = usize> + '_ {
        (0..self.newest.len()).filter(|&k| self.newest[k] != NONE)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_key_finds_its_own_rows_newest_first() {
        let mut chains = KeyChains::default();
        chains.insert(3, (0, 0));
        chains.insert(1, (0, 1));
        chains.insert(3, (1, 0));
        assert_eq!(chains.rows_of(3).collect::<Vec<_>>(), [(1, 0), (0, 0)]);
        assert_eq!(chains.rows_of(1).collect::<Vec<_>>(), [(0, 1)]);
        assert_eq!(chains.rows_of(2).count(), 0, "a key without rows");
        assert_eq!(chains.rows_of(99).count(), 0, "a key never seen");
        assert_eq!(chains.keys().collect::<Vec<_>>(), [1, 3]);
    }
}
