//! The worker's `/status` document: the JSON contract between a worker and
//! the operator, which reads it back into the resource's status.
//!
//! It lives here, beside the resource types, so both sides depend on the
//! contract and not on each other. Fields are additive: the document is read
//! with `#[serde(default)]`, so an older worker and a newer operator (or the
//! reverse) still understand each other.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Life-cycle state of the worker.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WorkerState {
    #[default]
    Starting,
    Recovering,
    Running,
    /// Running, but something it depends on (e.g. the schema registry) is failing.
    Degraded,
    Stopping,
    Stopped,
    Failed,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct WorkerCheckpoint {
    pub id: u64,
    /// Milliseconds since the Unix epoch.
    pub time_ms: i64,
    pub bytes: u64,
    pub duration_ms: u64,
}

/// The checkpoint a run restored.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct WorkerRestore {
    pub id: u64,
    /// Newer checkpoints that did not read back (corrupt, checksum
    /// mismatch) and were skipped, newest first: non-empty means the worker
    /// fell back to an older checkpoint.
    pub skipped: Vec<SkippedCheckpoint>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct SkippedCheckpoint {
    pub id: u64,
    pub reason: String,
}

/// The `/status` document (the operator reads it back).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct WorkerStatus {
    pub state: WorkerState,
    /// Query name or producer name.
    pub name: String,
    pub records_in: BTreeMap<String, u64>,
    pub bytes_in: BTreeMap<String, u64>,
    pub records_out: BTreeMap<String, u64>,
    pub late_events: BTreeMap<String, u64>,
    /// Dead letters by reason.
    pub dead_letters: BTreeMap<String, u64>,
    /// Records read that on purpose became neither rows nor dead letters,
    /// by reason (`tombstone`).
    pub skipped: BTreeMap<String, u64>,
    /// Out-of-range positions moved by the out-of-range policy, per
    /// `topic/partition`.
    pub offset_resets: BTreeMap<String, u64>,
    /// `topic/partition` → messages behind the high watermark.
    pub lag: BTreeMap<String, i64>,
    /// Source table → watermark (ms since the epoch).
    pub watermarks: BTreeMap<String, i64>,
    pub checkpoints: u64,
    /// Restarts from the last checkpoint within this process.
    pub failovers: u32,
    pub last_checkpoint: Option<WorkerCheckpoint>,
    /// The checkpoint this process last restored (and any it skipped).
    pub restored_checkpoint: Option<WorkerRestore>,
    /// Checkpoint writes that found the disk full (each pruned an older
    /// checkpoint and tried again, or put the epoch off).
    pub checkpoint_disk_full: u64,
    pub last_error: Option<String>,
    pub started_at_ms: i64,
}

impl WorkerStatus {
    pub fn total_lag(&self) -> i64 {
        self.lag.values().sum()
    }
}
