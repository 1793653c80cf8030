//! The one run loop every command uses: file replay, Kafka queries and the
//! demo are wiring around it.
//!
//! A [`Runner`] owns a [`Pipeline`], its [`Source`]s and [`Sink`]s and the
//! checkpoint store, and runs
//!
//! ```text
//! restore ─▶ poll ─▶ engine ─▶ route by stream name ─▶ (epoch due?)
//!              ▲                                            │
//!              └── commit ◀─ checkpoint write ◀─ pre-commit ◀┘ snapshot
//! ```
//!
//! Invariants (docs/exactly-once.md):
//! - a checkpoint is written only after every sink's pre-commit, so it
//!   never points past output that could be lost;
//! - a sink's commit gets exactly the source positions of the checkpoint
//!   just written, and the checkpoint's id is the epoch it closes;
//! - on start, the engine state is restored before any source is opened or
//!   any sink touched, so a checkpoint of another query changes nothing.
//!
//! Nothing here knows Kafka or files: sources and sinks hide that behind the
//! traits in [`source`] and [`sink`]. Sources tag batches with table and
//! partition, so one runner can feed several tables (joins), and several
//! runners, each with its own partition subset, can run on threads of one
//! process (everything a runner owns is `Send`).

mod dead_letter;
pub mod failover;
pub mod faults;
mod health;
mod latency;
pub mod shared;
pub mod sink;
pub mod source;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::checkpoint::partitioned::{self, PartitionState};
use crate::checkpoint::{Checkpoint, CheckpointError, CheckpointInfo, CheckpointStore};
use crate::engine::{EngineError, Partitioning, Pipeline, StreamOutput};
use crate::runtime::{CheckpointStatus, StatusHandle, WorkerState};
use tickflow_crds::worker_status::{SkippedCheckpoint, WorkerRestore};

pub use dead_letter::{DeadLetter, KafkaOrigin};
pub use shared::{PartitionStore, SharedState, WorkerShare};
pub use sink::{CommitDelays, Positions, RestoredSink, Routes, RowKind, Sink, SinkCheckpoint};
pub use source::{Polled, Source, SourceFigures, TableBatch, Trouble};

/// A source or sink failed, and whether new clients and a restart from the
/// last checkpoint may help: yes for a broker gone, retries used up or a
/// stuck client; no for a fenced producer or a record the broker refuses;
/// "depends" for failures to connect, which the failover judges by how far
/// the run had got.
#[derive(Debug, thiserror::Error)]
#[error("{error:#}")]
pub struct ConnectorError {
    error: anyhow::Error,
    retry: Retry,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Retry {
    Helps,
    Useless,
    Unknown,
}

impl ConnectorError {
    /// Failing over would not help.
    pub fn fatal(error: impl Into<anyhow::Error>) -> Self {
        Self {
            error: error.into(),
            retry: Retry::Useless,
        }
    }

    /// New clients may not have this problem.
    pub fn transient(error: impl Into<anyhow::Error>) -> Self {
        Self {
            error: error.into(),
            retry: Retry::Helps,
        }
    }

    /// Setting up a client failed (connect, topics, registry).
    pub fn setup(error: impl Into<anyhow::Error>) -> Self {
        Self {
            error: error.into(),
            retry: Retry::Unknown,
        }
    }

    pub fn retry(&self) -> Retry {
        self.retry
    }
}

/// Why a run stopped before its end.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// The newest checkpoint was taken for a different query.
    #[error("{0}")]
    IncompatibleCheckpoint(String),
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    #[error(transparent)]
    Connector(#[from] ConnectorError),
    /// Building the run failed (bindings, topics, schemas).
    #[error("{0:#}")]
    Setup(anyhow::Error),
    /// The view watching the run failed (the demo's terminal).
    #[error("{0:#}")]
    Observer(anyhow::Error),
}

impl RunError {
    /// Whether new clients and a restart from the last checkpoint may help.
    pub fn retry(&self) -> Retry {
        match self {
            Self::Connector(e) => e.retry(),
            Self::Setup(_) => Retry::Unknown,
            _ => Retry::Useless,
        }
    }
}

/// How a run checkpoints and paces itself.
#[derive(Clone, Debug)]
pub struct RunOptions {
    /// Checkpoint (and commit) at least this often.
    pub checkpoint_interval: Duration,
    /// Once caught up with the input, commit output this soon after it is
    /// produced (bounds result latency); `None`: on the interval only.
    pub max_output_delay: Option<Duration>,
    /// Records per poll of each source.
    pub max_batch_records: usize,
    /// Close the epoch early once the sinks hold this much uncommitted
    /// output, so a backlog cannot grow it without bound (see
    /// `crate::memory`).
    pub max_pending_bytes: u64,
    /// How long a poll may wait for the first record.
    pub poll_wait: Duration,
    /// Ignore existing checkpoints.
    pub start_fresh: bool,
    /// Where to start when nothing is restored (a failover before the first
    /// checkpoint starts where the first attempt did).
    pub start_positions: Option<Positions>,
    /// Set by SIGTERM: take a final checkpoint and stop.
    pub stop: Arc<AtomicBool>,
    pub status: StatusHandle,
}

impl RunOptions {
    pub fn new(stop: Arc<AtomicBool>, status: StatusHandle) -> Self {
        Self {
            checkpoint_interval: Duration::from_secs(10),
            max_output_delay: None,
            max_batch_records: 8192,
            max_pending_bytes: crate::memory::MemoryBudget(crate::memory::DEFAULT_BUDGET)
                .split()
                .pending_output_bytes,
            poll_wait: Duration::from_millis(100),
            start_fresh: false,
            start_positions: None,
            stop,
            status,
        }
    }
}

/// How far a run got, for the failover decision.
#[derive(Debug, Default)]
pub struct Progress {
    /// Loading the checkpoint (a failure here repeats on every attempt).
    pub restoring: bool,
    pub running: bool,
    /// A checkpoint is on disk whose output may be in doubt: from now on the
    /// query must restore, never start over.
    pub checkpoint_stored: bool,
    pub checkpoint_committed: bool,
    /// The sources' resolved start, when nothing was restored.
    pub start_positions: Option<Positions>,
}

/// What a run did.
#[derive(Debug, Default, Serialize)]
pub struct RunSummary {
    /// Records read from all sources, decodable or not.
    pub records_in: u64,
    /// Rows that reached the engine, per source table.
    pub rows_in: BTreeMap<String, u64>,
    pub rows_out: BTreeMap<String, u64>,
    pub late_events: BTreeMap<String, u64>,
    /// Malformed records (all went to the dead letters).
    pub bad_records: u64,
    /// Malformed records by reason.
    pub dead_letters: BTreeMap<String, u64>,
    /// Records read that on purpose became neither rows nor dead letters,
    /// by reason (`tombstone`): records_in = rows_in + bad_records + these.
    pub skipped: BTreeMap<String, u64>,
    /// Out-of-range positions moved, per `topic/partition`.
    pub offset_resets: BTreeMap<String, u64>,
    /// Records those moves jumped over (never read).
    pub offset_reset_skipped_records: u64,
    pub checkpoints_written: u64,
    /// The checkpoint this run restored; the counts above are since then.
    pub restored_from: Option<u64>,
    /// Restarts from the last checkpoint within this process.
    pub failovers: u32,
    /// The restored epoch's output had not been committed and was sent again.
    pub recovered_epoch: bool,
    /// Newer checkpoints that did not read back and were skipped on restore.
    pub skipped_checkpoints: Vec<u64>,
    /// Stopped by a signal (or the viewer) before the end of the input.
    pub stopped: bool,
    pub elapsed_ms: u64,
    /// From the first record read to the end (start-up excluded).
    pub processing_ms: u64,
    /// Result rows' delay from emission to the commit that made them visible.
    pub commit_delay: Option<CommitDelays>,
}

/// What an [`Observer`] sees after each step.
pub struct RunView<'a> {
    pub pipeline: &'a Pipeline,
    pub summary: &'a RunSummary,
    pub last_checkpoint: Option<&'a CheckpointInfo>,
}

/// Watches a run step by step (the demo's live view); may pace it.
pub trait Observer {
    /// Called after every step. Returns `true` to stop the run (with a
    /// final checkpoint).
    fn after_step(&mut self, view: &RunView<'_>) -> anyhow::Result<bool>;
}

/// Dead letters logged one by one; past this they are only counted.
const MAX_LOGGED_DEAD_LETTERS: u64 = 100;
/// How often idle partitions are re-evaluated.
const TICK_INTERVAL: Duration = Duration::from_millis(500);
/// How often `/status` figures are refreshed.
const STATUS_INTERVAL: Duration = Duration::from_secs(2);

/// What the loop carries from one step to the next.
struct StepState {
    out: Vec<StreamOutput>,
    /// Partitions already finished in the engine.
    finished: BTreeSet<(String, usize)>,
    health: health::Health,
    dead_logged: u64,
    last_checkpoint: Instant,
    last_tick: Instant,
    last_status: Instant,
    oldest_uncommitted: Option<Instant>,
    first_record: Option<Instant>,
    /// Every source is polled at least once, so one that is at its end
    /// from the start (a bounded run resumed at the end) still reports its
    /// partitions finished and the final windows close.
    polled_once: bool,
}

impl Default for StepState {
    fn default() -> Self {
        let now = Instant::now();
        Self {
            out: Vec::new(),
            finished: BTreeSet::new(),
            health: health::Health::default(),
            dead_logged: 0,
            last_checkpoint: now,
            last_tick: now,
            last_status: now,
            oldest_uncommitted: None,
            first_record: None,
            polled_once: false,
        }
    }
}

/// The run loop over one pipeline.
pub struct Runner {
    pipeline: Pipeline,
    sources: Vec<Box<dyn Source>>,
    sinks: Vec<Box<dyn Sink>>,
    store: Option<CheckpointStore>,
    /// A query on several workers: state per source partition, committed
    /// with the output instead of into `store`.
    shared: Option<SharedState>,
    opts: RunOptions,
    summary: RunSummary,
    last_checkpoint: Option<CheckpointInfo>,
    next_epoch: u64,
    /// A checkpoint the disk had no room for: when, and how often in a row.
    /// Retried with a growing pause, and the sources are not read while the
    /// open epoch holds its full memory share (nothing can be committed).
    deferred: Option<Deferred>,
    /// Status counters as earlier attempts of this process left them.
    base: Counters,
    /// Event times of the open epoch's result rows, for the end-to-end
    /// latency its commit observes.
    latencies: latency::EpochLatencies,
}

impl Runner {
    /// A run of `pipeline` from `sources` into `sinks`; without a `store`
    /// it never checkpoints (and restores nothing).
    pub fn new(
        pipeline: Pipeline,
        sources: Vec<Box<dyn Source>>,
        sinks: Vec<Box<dyn Sink>>,
        store: Option<CheckpointStore>,
        opts: RunOptions,
    ) -> Self {
        let base = Counters::of(&opts.status);
        Self {
            pipeline,
            sources,
            sinks,
            store,
            shared: None,
            opts,
            summary: RunSummary::default(),
            last_checkpoint: None,
            next_epoch: 0,
            deferred: None,
            base,
            latencies: latency::EpochLatencies::default(),
        }
    }

    /// Makes the run one worker of several ([`shared`]): it restores and
    /// checkpoints the state of the partitions it owns through `shared`'s
    /// store and the sinks' transactions, not a checkpoint directory.
    pub fn with_shared_state(mut self, shared: SharedState) -> Self {
        self.shared = Some(shared);
        self
    }

    pub fn pipeline(&self) -> &Pipeline {
        &self.pipeline
    }

    /// Whether the run checkpoints at all.
    fn checkpoints(&self) -> bool {
        self.store.is_some() || self.shared.is_some()
    }

    /// Restores, then runs until the input ends, `stop` is set or the
    /// observer asks to stop; a final checkpoint closes the run.
    pub fn run(
        &mut self,
        progress: &mut Progress,
        mut observer: Option<&mut dyn Observer>,
    ) -> Result<RunSummary, RunError> {
        let started = Instant::now();
        self.start(progress)?;
        let mut step = StepState::default();
        loop {
            self.opts.status.beat();
            if self.opts.stop.load(Ordering::Relaxed) {
                tracing::info!("stop requested: taking a final checkpoint");
                self.stopping();
                break;
            }
            let records = if self.held_back() {
                std::thread::sleep(self.opts.poll_wait);
                0
            } else {
                self.poll_sources(&mut step)?
            };
            if step.last_tick.elapsed() >= TICK_INTERVAL {
                self.pipeline.tick(&mut step.out)?;
                step.last_tick = Instant::now();
            }
            if !step.out.is_empty() {
                step.oldest_uncommitted.get_or_insert_with(Instant::now);
                self.route(&mut step.out)?;
            }
            if self.sources.iter().all(|s| s.is_done()) {
                break;
            }
            if self.epoch_due(&step, records) {
                self.checkpoint(progress, true)?;
                step.last_checkpoint = Instant::now();
                step.oldest_uncommitted = None;
            }
            if step.last_status.elapsed() >= STATUS_INTERVAL {
                self.publish_status();
                step.last_status = Instant::now();
            }
            if let Some(obs) = observer.as_deref_mut() {
                let view = RunView {
                    pipeline: &self.pipeline,
                    summary: &self.summary,
                    last_checkpoint: self.last_checkpoint.as_ref(),
                };
                if obs.after_step(&view).map_err(RunError::Observer)? {
                    self.stopping();
                    break;
                }
            }
        }
        self.finish(progress, &step, started)
    }

    /// One poll of every source (of every source not at its end, after the
    /// first step) into the engine. Returns the records read.
    fn poll_sources(&mut self, step: &mut StepState) -> Result<usize, RunError> {
        let mut records = 0;
        for i in 0..self.sources.len() {
            if self.sources[i].is_done() && step.polled_once {
                continue;
            }
            let polled = self.sources[i].poll(self.opts.max_batch_records, self.opts.poll_wait)?;
            records += polled.records;
            if polled.records > 0 {
                step.first_record.get_or_insert_with(Instant::now);
            }
            if !polled.dead_letters.is_empty() {
                step.oldest_uncommitted.get_or_insert_with(Instant::now);
                self.dead_letters(&polled.dead_letters, &mut step.dead_logged)?;
            }
            self.summary.records_in += polled.records as u64;
            for (reason, n) in &polled.skipped {
                *self.summary.skipped.entry(reason.to_string()).or_default() += n;
            }
            for reset in &polled.offset_resets {
                *self
                    .summary
                    .offset_resets
                    .entry(reset.partition.clone())
                    .or_default() += 1;
                self.summary.offset_reset_skipped_records += reset.skipped;
            }
            // One step for the whole poll: each partition's batch can run
            // on its own thread.
            self.pipeline.push_all(
                polled
                    .batches
                    .iter()
                    .map(|b| (b.table.as_str(), b.partition, &b.rows)),
                &mut step.out,
            )?;
            let rejected = self.pipeline.take_rejected();
            if !rejected.is_empty() {
                step.oldest_uncommitted.get_or_insert_with(Instant::now);
                let letters = dead_letter::from_rejected(rejected)?;
                self.dead_letters(&letters, &mut step.dead_logged)?;
            }
            for part in polled.finished {
                if step.finished.insert(part.clone()) {
                    self.pipeline
                        .finish_partition(&part.0, part.1, &mut step.out)?;
                }
            }
            step.health
                .observe(polled.trouble.as_ref(), polled.records, &self.opts.status);
        }
        step.polled_once = true;
        Ok(records)
    }

    /// Whether to close the epoch now: on the interval, or, caught up with
    /// the input (fewer than a full batch read), as soon as output has
    /// waited `max_output_delay` (latency); with a backlog on the interval
    /// (throughput) or once the pending output reaches its memory share.
    fn pending_bytes(&self) -> u64 {
        self.sinks.iter().map(|s| s.pending_bytes()).sum()
    }

    /// Whether reading must wait: a deferred checkpoint and an open epoch
    /// at its memory share.
    fn held_back(&self) -> bool {
        self.deferred.is_some() && self.pending_bytes() >= self.opts.max_pending_bytes
    }

    fn epoch_due(&self, step: &StepState, records: usize) -> bool {
        if let Some(d) = &self.deferred
            && d.since.elapsed() < d.pause(self.opts.checkpoint_interval)
        {
            return false;
        }
        let caught_up = records < self.opts.max_batch_records;
        let output_due = self.opts.max_output_delay.is_some_and(|delay| {
            caught_up
                && step
                    .oldest_uncommitted
                    .is_some_and(|t| t.elapsed() >= delay)
        });
        let pending = self.pending_bytes();
        self.checkpoints()
            && (output_due
                || pending >= self.opts.max_pending_bytes
                || step.last_checkpoint.elapsed() >= self.opts.checkpoint_interval)
    }

    /// The final checkpoint, sinks closed, the summary.
    fn finish(
        &mut self,
        progress: &mut Progress,
        step: &StepState,
        started: Instant,
    ) -> Result<RunSummary, RunError> {
        if self.checkpoints() {
            self.checkpoint(progress, false)?;
        }
        for sink in &mut self.sinks {
            sink.close()?;
        }
        if step.dead_logged > MAX_LOGGED_DEAD_LETTERS {
            tracing::warn!(
                total = self.summary.bad_records,
                "{} more malformed records were not logged one by one",
                step.dead_logged - MAX_LOGGED_DEAD_LETTERS
            );
        }
        self.publish_status();
        self.opts.status.set_state(WorkerState::Stopped);
        let mut summary = std::mem::take(&mut self.summary);
        for (i, s) in self.pipeline.streams().iter().enumerate() {
            let m = self.pipeline.stream_metrics(i);
            summary.rows_out.insert(s.name.clone(), m.rows_out);
            summary.late_events.insert(s.name.clone(), m.late_events);
        }
        for name in self.pipeline.source_names() {
            let n = self.pipeline.records_in(&name);
            summary.rows_in.insert(name, n);
        }
        summary.elapsed_ms = started.elapsed().as_millis() as u64;
        summary.processing_ms = step
            .first_record
            .map_or(0, |t| t.elapsed().as_millis() as u64);
        summary.commit_delay = self.sinks.iter().find_map(|s| s.commit_delays());
        Ok(summary)
    }

    fn stopping(&mut self) {
        self.summary.stopped = true;
        self.opts.status.set_state(WorkerState::Stopping);
    }

    /// Restore: engine state first, then sources at their positions, then
    /// sinks in line with the checkpoint.
    fn start(&mut self, progress: &mut Progress) -> Result<(), RunError> {
        if self.shared.is_some() {
            return self.start_shared(progress);
        }
        let status = &self.opts.status;
        status.set_state(WorkerState::Recovering);
        progress.restoring = true;
        let restored = match &self.store {
            Some(store) if !self.opts.start_fresh => {
                // Unreadable newer checkpoints are skipped (and set aside);
                // whether restoring an older one is safe is the sinks' call
                // (the Kafka sink refuses if a skipped epoch was committed).
                let (cp, skipped) = store.latest_readable()?;
                self.summary.skipped_checkpoints = skipped.iter().map(|s| s.id).collect();
                if let Some(cp) = &cp {
                    let restore = WorkerRestore {
                        id: cp.id,
                        skipped: skipped
                            .into_iter()
                            .map(|s| SkippedCheckpoint {
                                id: s.id,
                                reason: s.reason,
                            })
                            .collect(),
                    };
                    status.update(|s| s.restored_checkpoint = Some(restore));
                }
                cp
            }
            _ => None,
        };
        if let Some(store) = &self.store {
            self.next_epoch = store.next_id()?;
        }
        let mut positions = self.opts.start_positions.clone().unwrap_or_default();
        let mut restored_sinks = None;
        if let Some(cp) = restored {
            tracing::info!(id = cp.id, "restoring checkpoint");
            self.check_layout(&cp, store_dir(&self.store))?;
            self.summary.restored_from = Some(cp.id);
            positions = cp.sources;
            restored_sinks = Some((cp.id, cp.sinks, cp.sink_states));
            self.pipeline.restore(cp.engine).map_err(|e| match e {
                EngineError::IncompatibleState(_) => RunError::IncompatibleCheckpoint(format!(
                    "{e}\nThe checkpoint in {} was taken for a different query. Start over with --start-fresh \
                     (upgradeMode: stateless), or restore the previous SQL.",
                    store_dir(&self.store)
                )),
                e => RunError::Engine(e),
            })?;
        }
        log_parallelism(&self.pipeline);
        progress.restoring = false;
        for source in &mut self.sources {
            source.start(positions.get(source.name()))?;
            for (table, partitions) in source.partitions() {
                self.pipeline.declare_partitions(&table, partitions);
            }
        }
        let positions = self.positions();
        if self.summary.restored_from.is_none() {
            progress.start_positions = Some(positions.clone());
        }
        for sink in &mut self.sinks {
            let restored = restored_sinks
                .as_mut()
                .map(|(epoch, positions, states)| RestoredSink {
                    epoch: *epoch,
                    position: positions.get(sink.name()),
                    state: states.remove(sink.name()).unwrap_or_default(),
                });
            self.summary.recovered_epoch |= sink.start(restored, &positions)?;
        }
        status.set_state(WorkerState::Running);
        progress.running = true;
        Ok(())
    }

    /// A checkpoint names a position for every source and sink of this
    /// run; one that does not (another query's, or an older layout) would
    /// restore the engine but start the input over, so it is refused.
    fn check_layout(&self, cp: &Checkpoint, dir: String) -> Result<(), RunError> {
        let missing = self
            .sources
            .iter()
            .map(|s| ("source", s.name(), cp.sources.contains_key(s.name())))
            .chain(
                self.sinks
                    .iter()
                    .map(|s| ("sink", s.name(), cp.sinks.contains_key(s.name()))),
            )
            .find(|(_, _, present)| !present);
        match missing {
            Some((what, name, _)) => Err(RunError::IncompatibleCheckpoint(format!(
                "checkpoint {} in {dir} holds no position for the {what} `{name}` (it was written by                  another kind of run or an older tickflow). Start over with --start-fresh.",
                cp.id
            ))),
            None => Ok(()),
        }
    }

    fn positions(&self) -> Positions {
        self.sources
            .iter()
            .map(|s| (s.name().to_string(), s.position()))
            .collect()
    }

    /// Sends the engine's output to the sinks by stream name.
    fn route(&mut self, out: &mut Vec<StreamOutput>) -> Result<(), RunError> {
        for o in out.drain(..) {
            let stream = &self.pipeline.streams()[o.stream];
            let kind = RowKind::from(o.kind);
            for sink in &mut self.sinks {
                sink.write(&stream.name, kind, &o.rows)?;
            }
            if let (RowKind::Results, false, Some(column)) =
                (kind, stream.intermediate, &stream.event_time)
            {
                self.latencies.add(&stream.name, &o.rows, column);
            }
        }
        if !self.checkpoints() {
            // Without checkpoints, written is as committed as it gets.
            self.observe_latencies();
        }
        Ok(())
    }

    /// The open epoch's rows are committed now.
    fn observe_latencies(&mut self) {
        if self.latencies.is_empty() {
            return;
        }
        let now = crate::clock::now_ms();
        let latencies = &mut self.latencies;
        self.opts
            .status
            .update(|s| latencies.commit(now, &mut s.end_to_end_latency));
    }

    fn dead_letters(&mut self, bad: &[DeadLetter], logged: &mut u64) -> Result<(), RunError> {
        for b in bad {
            self.summary.bad_records += 1;
            *self
                .summary
                .dead_letters
                .entry(b.reason.to_string())
                .or_default() += 1;
            *logged += 1;
            if *logged <= MAX_LOGGED_DEAD_LETTERS {
                tracing::warn!(table = %b.table, location = %b.location, reason = b.reason, "malformed record: {}", b.error);
            }
        }
        for sink in &mut self.sinks {
            sink.dead_letters(bad)?;
        }
        Ok(())
    }

    /// The start of one worker of several: sinks first (starting the
    /// producer aborts what this worker left open), then the owned
    /// partitions' newest committed states, the sources at their positions,
    /// and at once an epoch that stages those states again, so every owned
    /// partition has a state from the first moment the worker runs.
    fn start_shared(&mut self, progress: &mut Progress) -> Result<(), RunError> {
        self.opts.status.set_state(WorkerState::Recovering);
        for sink in &mut self.sinks {
            sink.start(None, &Positions::new())?;
        }
        // Only loading and restoring the state repeat their failure on
        // every attempt; the sinks' start may just wait for the broker.
        progress.restoring = true;
        let shared = self.shared.as_mut().expect("shared run");
        let owned = shared.share.owned(shared.partitions);
        let states = if self.opts.start_fresh {
            BTreeMap::new()
        } else {
            shared.store.load(&owned)?
        };
        shared::check_complete(&owned, &states).map_err(RunError::IncompatibleCheckpoint)?;
        let mut positions = self.opts.start_positions.clone().unwrap_or_default();
        if !states.is_empty() {
            tracing::info!(
                worker = %shared.share.label(),
                partitions = ?owned,
                writers = ?states.values().map(|s| format!("{} epoch {}", s.writer, s.epoch)).collect::<std::collections::BTreeSet<_>>(),
                "restoring the state of the partitions this worker owns"
            );
            self.summary.restored_from = states.values().map(|s| s.epoch).max();
            let watermarks = shared::restored_watermarks(&states);
            for source in &self.sources {
                positions.insert(source.name().to_string(), shared::merged_position(&states));
            }
            let groups = states
                .into_values()
                .map(|s| (s.partition, s.group))
                .collect();
            self.pipeline
                .restore_groups(groups, &watermarks)
                .map_err(|e| match e {
                    EngineError::IncompatibleState(_) => RunError::IncompatibleCheckpoint(format!(
                        "{e}\nThe state in the query's state topic was saved for a different query. \
                         Start over with --start-fresh, or restore the previous SQL."
                    )),
                    e => RunError::Engine(e),
                })?;
        }
        log_parallelism(&self.pipeline);
        progress.restoring = false;
        let mut out = Vec::new();
        for source in &mut self.sources {
            source.start(positions.get(source.name()))?;
            for (table, partitions) in source.partitions() {
                self.pipeline.declare_partitions(&table, partitions);
                // Other workers' partitions never deliver here: they must
                // not hold this worker's watermark back.
                for p in (0..partitions).filter(|&p| !shared_owns(&self.shared, p)) {
                    self.pipeline.finish_partition(&table, p, &mut out)?;
                }
            }
        }
        self.route(&mut out)?;
        if self.summary.restored_from.is_none() {
            progress.start_positions = Some(self.positions());
        }
        self.next_epoch = 1;
        self.checkpoint(progress, false)?;
        self.opts.status.set_state(WorkerState::Running);
        progress.running = true;
        Ok(())
    }

    /// Closes an epoch of one worker of several: each owned partition's
    /// state is staged in the sinks' transaction, which then commits it with
    /// the epoch's output and the source positions.
    fn checkpoint_shared(&mut self, progress: &mut Progress) -> Result<(), RunError> {
        let t0 = Instant::now();
        let epoch = self.next_epoch;
        let shared = self.shared.as_ref().expect("shared run");
        let owned = shared.share.owned(shared.partitions);
        let positions = self.positions();
        let watermarks: BTreeMap<String, i64> = self
            .pipeline
            .source_names()
            .into_iter()
            .filter_map(|s| Some((s.clone(), self.pipeline.watermark(&s)?)))
            .collect();
        let version = format!("{}/{epoch}", shared.writer);
        let mut records = Vec::new();
        for (partition, group) in self.pipeline.snapshot_groups(&owned)? {
            let state = PartitionState {
                partition,
                epoch,
                writer: shared.writer.clone(),
                positions: positions
                    .values()
                    .flat_map(|p| shared::position_of_partition(p, partition))
                    .collect(),
                watermarks: watermarks.clone(),
                group,
            };
            records.extend(
                partitioned::encode(&state, &version)
                    .map_err(|e| RunError::Setup(anyhow::Error::new(e)))?,
            );
        }
        let bytes: u64 = records.iter().map(|r| r.value.len() as u64).sum();
        let mut kept = false;
        for sink in &mut self.sinks {
            sink.pre_commit(epoch)?;
            kept |= sink.stage_state(&records)?;
        }
        if !kept {
            return Err(RunError::Setup(anyhow::anyhow!(
                "a query on several workers keeps its state in its Kafka output's transactions, \
                 and this run has no Kafka output"
            )));
        }
        faults::crash_point("after-checkpoint", self.summary.checkpoints_written + 1);
        for sink in &mut self.sinks {
            sink.commit(epoch, &positions)?;
        }
        // Nothing is durable before the commit (state and output are in
        // one transaction): until then a failover may still start fresh
        // and from the first attempt's positions.
        progress.checkpoint_stored = true;
        progress.checkpoint_committed = true;
        self.observe_latencies();
        faults::crash_point("after-commit", self.summary.checkpoints_written + 1);
        self.committed(CheckpointInfo {
            id: epoch,
            path: std::path::PathBuf::new(),
            bytes,
            duration: t0.elapsed(),
            created_at_ms: crate::clock::now_ms(),
            pruned_for_space: Vec::new(),
        });
        Ok(())
    }

    /// Closes an epoch: pre-commit every sink, write the checkpoint, commit
    /// every sink with the checkpoint's source positions. With `may_defer`,
    /// a disk too full for the checkpoint (after pruning older ones) puts
    /// the epoch off to the next try instead of failing: nothing is
    /// committed without its checkpoint, and the open epoch just grows.
    fn checkpoint(&mut self, progress: &mut Progress, may_defer: bool) -> Result<(), RunError> {
        if self.shared.is_some() {
            return self.checkpoint_shared(progress);
        }
        let Some(store) = &self.store else {
            return Ok(());
        };
        let t0 = Instant::now();
        let epoch = self.next_epoch;
        let nth = self.summary.checkpoints_written + 1;
        let mut sinks = BTreeMap::new();
        let mut sink_states = BTreeMap::new();
        for sink in &mut self.sinks {
            let c = sink.pre_commit(epoch)?;
            sinks.insert(sink.name().to_string(), c.position);
            if !c.state.is_empty() {
                sink_states.insert(sink.name().to_string(), c.state);
            }
        }
        let positions = self.positions();
        let cp = Checkpoint {
            id: epoch,
            created_at_ms: crate::clock::now_ms(),
            sources: positions.clone(),
            sinks,
            sink_states,
            engine: self.pipeline.snapshot()?,
        };
        faults::crash_point("before-checkpoint", nth);
        let info = match store.write(&cp) {
            Ok(info) => info,
            Err(e) if may_defer && e.is_disk_full() => {
                let tries = self.deferred.as_ref().map_or(0, |d| d.tries) + 1;
                self.deferred = Some(Deferred {
                    since: Instant::now(),
                    tries,
                });
                tracing::warn!(
                    tries,
                    "{e}; the epoch stays open and the checkpoint is tried again"
                );
                self.opts.status.update(|s| {
                    s.checkpoint_disk_full += 1;
                    s.last_error = Some(e.to_string());
                });
                return Ok(());
            }
            Err(e) => return Err(e.into()),
        };
        if !info.pruned_for_space.is_empty() {
            self.opts
                .status
                .update(|s| s.checkpoint_disk_full += info.pruned_for_space.len() as u64);
        }
        self.deferred = None;
        progress.checkpoint_stored = true;
        faults::crash_point("after-checkpoint", nth);
        faults::arm_stall(nth);
        for sink in &mut self.sinks {
            sink.commit(epoch, &positions)?;
        }
        progress.checkpoint_committed = true;
        self.observe_latencies();
        faults::crash_point("after-commit", nth);
        tracing::debug!(
            id = info.id,
            bytes = info.bytes,
            write_ms = info.duration.as_millis() as u64,
            total_ms = t0.elapsed().as_millis() as u64,
            "checkpoint committed"
        );
        self.committed(info);
        Ok(())
    }

    /// An epoch committed: the next one opens, and the status shows it.
    fn committed(&mut self, info: CheckpointInfo) {
        self.next_epoch += 1;
        self.summary.checkpoints_written += 1;
        self.opts.status.update(|s| {
            s.checkpoints += 1;
            s.last_checkpoint = Some(CheckpointStatus {
                id: info.id,
                time_ms: info.created_at_ms,
                bytes: info.bytes,
                duration_ms: info.duration.as_millis() as u64,
            });
        });
        self.last_checkpoint = Some(info);
    }

    fn publish_status(&self) {
        let mut figures = SourceFigures::default();
        for s in &self.sources {
            let f = s.figures();
            figures.records_in.extend(f.records_in);
            figures.bytes_in.extend(f.bytes_in);
            figures.lag.extend(f.lag);
        }
        let mut records_out = BTreeMap::new();
        for s in &self.sinks {
            records_out.extend(s.records_out());
        }
        let base = &self.base;
        self.opts.status.update(|s| {
            s.records_in = plus(&base.records_in, &figures.records_in);
            s.bytes_in = plus(&base.bytes_in, &figures.bytes_in);
            s.records_out = plus(&base.records_out, &records_out);
            s.dead_letters = plus(&base.dead_letters, &self.summary.dead_letters);
            s.skipped = plus(&base.skipped, &self.summary.skipped);
            s.offset_resets = plus(&base.offset_resets, &self.summary.offset_resets);
            s.lag = figures.lag;
            s.watermarks = self
                .pipeline
                .source_names()
                .into_iter()
                .filter_map(|n| Some((n.clone(), self.pipeline.watermark(&n)?)))
                .collect();
            s.late_events = self
                .pipeline
                .streams()
                .iter()
                .enumerate()
                .map(|(i, st)| {
                    let late = self.pipeline.stream_metrics(i).late_events;
                    (st.name.clone(), late)
                })
                .collect();
        });
    }
}

/// A checkpoint put off for lack of disk space.
#[derive(Debug)]
struct Deferred {
    since: Instant,
    tries: u32,
}

impl Deferred {
    /// 1 s, 2 s, 4 s, … up to the checkpoint interval.
    fn pause(&self, interval: Duration) -> Duration {
        let secs = 1u64 << self.tries.saturating_sub(1).min(16);
        Duration::from_secs(secs).min(interval.max(Duration::from_secs(1)))
    }
}

/// Whether this run reads `partition` (every partition outside a shared run).
fn shared_owns(shared: &Option<SharedState>, partition: usize) -> bool {
    shared.as_ref().is_none_or(|s| s.share.owns(partition))
}

/// Says in the log how the query runs: split by key on threads, or as one
/// (and why), so a user asking for threads learns why a query does not
/// use them.
fn log_parallelism(pipeline: &Pipeline) {
    match pipeline.partitioning() {
        Partitioning::ByKey(columns) if pipeline.key_groups() > 1 => tracing::info!(
            key_groups = pipeline.key_groups(),
            threads = pipeline.threads(),
            split_by = ?columns.keys().collect::<Vec<_>>(),
            "the query splits by key"
        ),
        Partitioning::ByKey(_) => tracing::info!(
            "the query splits by key; it runs as one key group (--key-groups and --parallelism 1, or a checkpoint with one)"
        ),
        Partitioning::Whole(reason) => tracing::info!(
            reason = %reason,
            "the query runs on one thread: its state does not split by key"
        ),
    }
}

fn store_dir(store: &Option<CheckpointStore>) -> String {
    store
        .as_ref()
        .map(|s| s.dir().display().to_string())
        .unwrap_or_default()
}

/// The status counters as the previous attempts left them: an attempt
/// counts from zero, and `/status` and `/metrics` add these, so counters do
/// not go back after a failover.
#[derive(Debug, Default)]
struct Counters {
    records_in: BTreeMap<String, u64>,
    bytes_in: BTreeMap<String, u64>,
    records_out: BTreeMap<String, u64>,
    dead_letters: BTreeMap<String, u64>,
    skipped: BTreeMap<String, u64>,
    offset_resets: BTreeMap<String, u64>,
}

impl Counters {
    fn of(status: &StatusHandle) -> Self {
        let s = status.get();
        Self {
            records_in: s.records_in,
            bytes_in: s.bytes_in,
            records_out: s.records_out,
            dead_letters: s.dead_letters,
            skipped: s.skipped,
            offset_resets: s.offset_resets,
        }
    }
}

fn plus(base: &BTreeMap<String, u64>, now: &BTreeMap<String, u64>) -> BTreeMap<String, u64> {
    let mut sum = base.clone();
    for (k, v) in now {
        *sum.entry(k.clone()).or_default() += v;
    }
    sum
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use arrow::array::{
        Float64Array, Int64Array, RecordBatch, StringArray, TimestampMillisecondArray,
    };

    use super::*;
    use crate::engine::{Catalog, EngineConfig, SourceTable};

    const SQL: &str = "CREATE STREAM n AS SELECT symbol, window_end, COUNT(*) AS c FROM market_ticks \
                       GROUP BY symbol, TUMBLE(ts, INTERVAL '1' SECOND);";

    /// Ticks of one symbol at the given event times.
    fn ticks(ts: &[i64]) -> RecordBatch {
        let schema = SourceTable::MarketTicks.arrow_schema();
        let n = ts.len();
        let cols: Vec<arrow::array::ArrayRef> = schema
            .fields()
            .iter()
            .map(|f| -> arrow::array::ArrayRef {
                match f.name().as_str() {
                    "ts" => Arc::new(TimestampMillisecondArray::from(ts.to_vec())),
                    "symbol" | "exchange" | "side" => Arc::new(StringArray::from(vec!["AAPL"; n])),
                    _ if f.data_type() == &arrow::datatypes::DataType::Float64 => {
                        Arc::new(Float64Array::from(vec![1.0; n]))
                    }
                    _ => Arc::new(Int64Array::from(vec![1; n])),
                }
            })
            .collect();
        RecordBatch::try_new(schema, cols).unwrap()
    }

    /// Batches of `market_ticks`; the position is how many were read.
    /// Unbounded input never ends (the run stops from outside).
    struct Batches {
        name: &'static str,
        batches: Vec<RecordBatch>,
        bounded: bool,
        next: usize,
        finished_reported: bool,
    }

    impl Source for Batches {
        fn name(&self) -> &str {
            self.name
        }
        fn start(&mut self, position: Option<&serde_json::Value>) -> Result<(), ConnectorError> {
            self.next = position.and_then(|p| p.as_u64()).unwrap_or(0) as usize;
            Ok(())
        }
        fn partitions(&self) -> Vec<(String, usize)> {
            vec![("market_ticks".into(), 1)]
        }
        fn poll(&mut self, _: usize, _: Duration) -> Result<Polled, ConnectorError> {
            let mut p = Polled::default();
            if let Some(b) = self.batches.get(self.next) {
                self.next += 1;
                p.records = b.num_rows();
                p.batches.push(TableBatch {
                    table: "market_ticks".into(),
                    partition: 0,
                    rows: b.clone(),
                });
            } else if self.bounded && !self.finished_reported {
                self.finished_reported = true;
                p.finished.push(("market_ticks".into(), 0));
            }
            Ok(p)
        }
        fn position(&self) -> serde_json::Value {
            serde_json::json!(self.next)
        }
        fn is_done(&self) -> bool {
            self.bounded && self.next >= self.batches.len()
        }
    }

    /// Rows per stream, shared with the test.
    #[derive(Clone, Default)]
    struct Rows(Arc<Mutex<u64>>);

    impl Sink for Rows {
        fn name(&self) -> &str {
            "rows"
        }
        fn start(
            &mut self,
            _: Option<RestoredSink<'_>>,
            _: &Positions,
        ) -> Result<bool, ConnectorError> {
            Ok(false)
        }
        fn write(&mut self, _: &str, _: RowKind, rows: &RecordBatch) -> Result<(), ConnectorError> {
            *self.0.lock().unwrap() += rows.num_rows() as u64;
            Ok(())
        }
        fn dead_letters(&mut self, _: &[DeadLetter]) -> Result<(), ConnectorError> {
            Ok(())
        }
        fn pre_commit(&mut self, _: u64) -> Result<SinkCheckpoint, ConnectorError> {
            Ok(SinkCheckpoint::default())
        }
        fn commit(&mut self, _: u64, _: &Positions) -> Result<(), ConnectorError> {
            Ok(())
        }
    }

    /// Stops the run once `records` records were read.
    struct StopAfter(u64);

    impl Observer for StopAfter {
        fn after_step(&mut self, view: &RunView<'_>) -> anyhow::Result<bool> {
            Ok(view.summary.records_in >= self.0)
        }
    }

    fn runner(
        name: &'static str,
        batches: Vec<RecordBatch>,
        bounded: bool,
        rows: &Rows,
        dir: &std::path::Path,
    ) -> Runner {
        let pipeline = Pipeline::new(SQL, &Catalog::builtin(), &EngineConfig::default()).unwrap();
        let source = Batches {
            name,
            batches,
            bounded,
            next: 0,
            finished_reported: false,
        };
        let opts = RunOptions::new(Arc::new(AtomicBool::new(false)), StatusHandle::new("t"));
        Runner::new(
            pipeline,
            vec![Box::new(source)],
            vec![Box::new(rows.clone())],
            Some(CheckpointStore::open(dir, 3).unwrap()),
            opts,
        )
    }

    #[test]
    fn a_source_at_its_end_from_the_start_still_closes_the_windows() {
        let dir = tempfile::tempdir().unwrap();
        let input = vec![ticks(&[0, 100, 1500])];
        // An unbounded run reads everything and is stopped: the watermark
        // (1500 - 1 s) has closed no window yet.
        let first = Rows::default();
        let s = runner("src", input.clone(), false, &first, dir.path())
            .run(&mut Progress::default(), Some(&mut StopAfter(3)))
            .unwrap();
        assert!(s.stopped);
        assert_eq!(*first.0.lock().unwrap(), 0);
        // A bounded run from its checkpoint has nothing left to read; the end
        // of input must still be seen and close both windows.
        let second = Rows::default();
        let s = runner("src", input, true, &second, dir.path())
            .run(&mut Progress::default(), None)
            .unwrap();
        assert!(s.restored_from.is_some());
        assert_eq!(
            *second.0.lock().unwrap(),
            2,
            "both windows close at the end"
        );
    }

    #[test]
    fn committed_windows_are_counted_in_the_end_to_end_latency_from_their_end() {
        let dir = tempfile::tempdir().unwrap();
        let rows = Rows::default();
        // The watermark (5 s - 1 s) closes the windows ending at 1 s and 2 s.
        let input = vec![ticks(&[0, 100, 1500, 5000])];
        let mut run = runner("src", input, true, &rows, dir.path());
        let status = run.opts.status.clone();
        let n = &run.pipeline().streams()[0];
        assert_eq!(
            n.event_time.as_deref(),
            Some("window_end"),
            "{:?}",
            n.output_schema
        );
        let before = crate::clock::now_ms();
        run.run(&mut Progress::default(), None).unwrap();
        let h = &status.get().end_to_end_latency["n"];
        assert_eq!(h.count, 2, "both closed windows, counted once each");
        // Windows end at 1 s and 2 s after the Unix epoch: committed now,
        // each waited about `before` ms.
        let expected = 2.0 * before as f64 / 1000.0 - 3.0;
        assert!(
            h.sum_seconds >= expected && h.sum_seconds < expected + 600.0,
            "{} s for {expected} s",
            h.sum_seconds
        );
    }

    #[test]
    fn an_unreadable_newest_checkpoint_is_skipped_and_the_status_says_which_was_restored() {
        let dir = tempfile::tempdir().unwrap();
        let rows = Rows::default();
        for _ in 0..2 {
            runner("src", vec![ticks(&[0, 100])], false, &rows, dir.path())
                .run(&mut Progress::default(), Some(&mut StopAfter(0)))
                .unwrap();
        }
        std::fs::write(dir.path().join("chk-0000000002/meta.json"), b"{").unwrap();
        let mut r = runner("src", vec![ticks(&[0, 100])], false, &rows, dir.path());
        let s = r
            .run(&mut Progress::default(), Some(&mut StopAfter(0)))
            .unwrap();
        assert_eq!(s.restored_from, Some(1));
        assert_eq!(s.skipped_checkpoints, vec![2]);
        let restored = r.opts.status.get().restored_checkpoint.unwrap();
        assert_eq!(restored.id, 1);
        assert_eq!(restored.skipped[0].id, 2);
        assert!(
            restored.skipped[0].reason.contains("checksum mismatch"),
            "{}",
            restored.skipped[0].reason
        );
        assert!(dir.path().join("chk-0000000002.unreadable").exists());
    }

    #[test]
    fn a_checkpoint_without_this_runs_source_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let rows = Rows::default();
        runner("files", vec![ticks(&[0])], true, &rows, dir.path())
            .run(&mut Progress::default(), None)
            .unwrap();
        let err = runner("kafka", vec![ticks(&[0])], true, &rows, dir.path())
            .run(&mut Progress::default(), None)
            .unwrap_err();
        assert!(
            matches!(&err, RunError::IncompatibleCheckpoint(m) if m.contains("source `kafka`")),
            "{err}"
        );
        assert_eq!(err.retry(), Retry::Useless);
    }
}
