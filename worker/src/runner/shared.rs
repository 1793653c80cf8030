//! A query on several workers: which source partitions a worker owns, and
//! how its state per partition is cut from and put back into the pipeline.
//!
//! Worker `i` of `N` owns the source partitions `p` with `p mod N == i`
//! (the same numbers in every source topic, which must all have the same
//! partition count and be keyed by the query's key). The pipeline keeps one
//! key group per partition (`Pipeline::group_by_partition`), so a
//! partition's state is its key group, its read positions and the
//! watermarks as its writer saw them. Each epoch stages every owned
//! partition's state in the sink's transaction; a start, with any `N`,
//! restores the partitions it owns from their newest committed state. The
//! run loop (`super::Runner`) does both; this module holds the pure parts
//! and the store interface.

use std::collections::BTreeMap;

use crate::checkpoint::partitioned::PartitionState;
use crate::engine::NO_WATERMARK;

use super::ConnectorError;

/// One worker's share of a query's source partitions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WorkerShare {
    pub index: usize,
    pub workers: usize,
}

impl WorkerShare {
    /// `index` of `workers`; `None` unless `index < workers`.
    pub fn new(index: usize, workers: usize) -> Option<Self> {
        (index < workers).then_some(Self { index, workers })
    }

    pub fn owns(&self, partition: usize) -> bool {
        partition % self.workers == self.index
    }

    /// The partitions of `0..partitions` this worker owns.
    pub fn owned(&self, partitions: usize) -> Vec<usize> {
        (0..partitions).filter(|&p| self.owns(p)).collect()
    }

    /// How logs and state records name this worker: `w<index>/<workers>`.
    pub fn label(&self) -> String {
        format!("w{}/{}", self.index, self.workers)
    }
}

/// Where the partitions' states are kept (the query's state topic).
pub trait PartitionStore: Send {
    /// The newest committed state of each of `partitions` that has one.
    /// Fails when a partition has none although its input was read before
    /// (its state was lost: starting over would write output twice).
    fn load(
        &mut self,
        partitions: &[usize],
    ) -> Result<BTreeMap<usize, PartitionState>, ConnectorError>;
}

/// A run's part in a query on several workers.
pub struct SharedState {
    pub share: WorkerShare,
    /// Partitions of every source topic: the pipeline's key groups.
    pub partitions: usize,
    pub store: Box<dyn PartitionStore>,
    /// Names this run in the states it writes (worker label and run id).
    pub writer: String,
}

/// The part of a source position (an object keyed by `<topic>/<partition>`,
/// as the Kafka source's) that belongs to `partition`.
pub fn position_of_partition(
    position: &serde_json::Value,
    partition: usize,
) -> BTreeMap<String, i64> {
    let suffix = format!("/{partition}");
    position
        .as_object()
        .into_iter()
        .flatten()
        .filter(|(k, _)| k.ends_with(&suffix))
        .filter_map(|(k, v)| Some((k.clone(), v.as_i64()?)))
        .collect()
}

/// The source position to start from: the restored partitions' positions
/// together (each partition appears in one state only).
pub fn merged_position(states: &BTreeMap<usize, PartitionState>) -> serde_json::Value {
    let merged: serde_json::Map<String, serde_json::Value> = states
        .values()
        .flat_map(|s| s.positions.iter().map(|(k, &v)| (k.clone(), v.into())))
        .collect();
    serde_json::Value::Object(merged)
}

/// Each source's watermark to restore: the lowest any restored partition's
/// writer had. Every partition's rows stay on time that were on time for
/// its writer; windows close no earlier than they would have.
pub fn restored_watermarks(states: &BTreeMap<usize, PartitionState>) -> BTreeMap<String, i64> {
    let mut out: BTreeMap<String, i64> = BTreeMap::new();
    for s in states.values() {
        for (source, &wm) in &s.watermarks {
            out.entry(source.clone())
                .and_modify(|w| *w = (*w).min(wm))
                .or_insert(wm);
        }
    }
    out.retain(|_, wm| *wm != NO_WATERMARK);
    out
}

/// A start that found state for some owned partitions and none for others
/// cannot be resumed consistently (the topic gained partitions, or states
/// were deleted): the message says which.
pub fn check_complete(
    owned: &[usize],
    states: &BTreeMap<usize, PartitionState>,
) -> Result<(), String> {
    if states.is_empty() {
        return Ok(());
    }
    let missing: Vec<usize> = owned
        .iter()
        .copied()
        .filter(|p| !states.contains_key(p))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    Err(format!(
        "partitions {missing:?} have no saved state while partitions {:?} do: the source topics \
         gained partitions (keys then move between partitions, which a query on several workers \
         cannot follow) or the state topic lost records. Start over with --start-fresh",
        states.keys().collect::<Vec<_>>()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::GroupSnapshot;

    fn state(p: usize, wm: i64) -> PartitionState {
        PartitionState {
            partition: p,
            epoch: 1,
            writer: "w0/2".into(),
            positions: BTreeMap::from([
                (format!("ticks/{p}"), 10 * p as i64),
                (format!("orders/{p}"), 5),
            ]),
            watermarks: BTreeMap::from([("market_ticks".into(), wm)]),
            group: GroupSnapshot::default(),
        }
    }

    #[test]
    fn shares_cover_every_partition_exactly_once() {
        for workers in 1..=7 {
            let mut owners = vec![0; 12];
            for i in 0..workers {
                for p in WorkerShare::new(i, workers).unwrap().owned(12) {
                    owners[p] += 1;
                }
            }
            assert!(
                owners.iter().all(|&n| n == 1),
                "{workers} workers: {owners:?}"
            );
        }
        assert_eq!(WorkerShare::new(3, 3), None);
    }

    #[test]
    fn positions_split_by_partition_and_merge_back() {
        let position = serde_json::json!({"ticks/0": 4, "ticks/1": 7, "ticks/10": 9, "a/b/1": 2});
        assert_eq!(
            position_of_partition(&position, 1),
            BTreeMap::from([("ticks/1".into(), 7), ("a/b/1".into(), 2)])
        );
        let states = BTreeMap::from([(1, state(1, 100)), (3, state(3, 50))]);
        assert_eq!(
            merged_position(&states),
            serde_json::json!({"ticks/1": 10, "orders/1": 5, "ticks/3": 30, "orders/3": 5})
        );
    }

    #[test]
    fn the_restored_watermark_is_the_lowest_writer_watermark() {
        let mut states = BTreeMap::from([(0, state(0, 100)), (2, state(2, 40))]);
        assert_eq!(
            restored_watermarks(&states),
            BTreeMap::from([("market_ticks".into(), 40)])
        );
        // A writer that had seen nothing yet: nothing is restored.
        states.insert(4, state(4, NO_WATERMARK));
        assert_eq!(restored_watermarks(&states), BTreeMap::new());
    }

    #[test]
    fn state_for_only_some_owned_partitions_is_refused() {
        let states = BTreeMap::from([(0, state(0, 1))]);
        assert!(check_complete(&[0, 2], &BTreeMap::new()).is_ok());
        assert!(check_complete(&[0], &states).is_ok());
        let err = check_complete(&[0, 2], &states).unwrap_err();
        assert!(
            err.contains("[2]") && err.contains("--start-fresh"),
            "{err}"
        );
    }
}
