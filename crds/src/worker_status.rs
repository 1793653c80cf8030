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
    /// Per output stream: how long result rows took from their event time
    /// to their output being committed.
    pub end_to_end_latency: BTreeMap<String, LatencyHistogram>,
    pub last_error: Option<String>,
    pub started_at_ms: i64,
}

/// A latency histogram in seconds: `counts[i]` rows took at most
/// `LATENCY_BUCKETS_S[i]` (and more than the bound before); the last count
/// is the rows beyond every bound.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct LatencyHistogram {
    pub counts: Vec<u64>,
    pub sum_seconds: f64,
    pub count: u64,
}

/// Upper bounds (seconds) of [`LatencyHistogram`]: from a fast live
/// pipeline (tens of milliseconds) to a query catching up (minutes).
pub const LATENCY_BUCKETS_S: [f64; 14] = [
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0,
];

impl LatencyHistogram {
    /// Counts `rows` rows that each took `seconds` (negative: clock skew
    /// between the data and this machine, counted as 0).
    pub fn observe(&mut self, seconds: f64, rows: u64) {
        let seconds = seconds.max(0.0);
        if self.counts.len() != LATENCY_BUCKETS_S.len() + 1 {
            self.counts.resize(LATENCY_BUCKETS_S.len() + 1, 0);
        }
        let i = LATENCY_BUCKETS_S
            .iter()
            .position(|b| seconds <= *b)
            .unwrap_or(LATENCY_BUCKETS_S.len());
        self.counts[i] += rows;
        self.sum_seconds += seconds * rows as f64;
        self.count += rows;
    }
}

impl WorkerStatus {
    pub fn total_lag(&self) -> i64 {
        self.lag.values().sum()
    }
}
