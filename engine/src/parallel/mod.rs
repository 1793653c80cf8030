//! A query split into key groups, run on threads.
//!
//! The rows of a query's sources are split by a hash of their key column
//! ([`route`]) into a fixed number of key groups, each with its own copy of
//! the streams ([`StreamGraph`]); key group `g` runs on thread `g mod N`,
//! the first of them the caller's own. Every group gets every watermark,
//! including groups that got no rows in a batch, so windows close, rows
//! count as late and state expires exactly as in one group. Outputs are
//! put back in key-group order after every step, so a run's output does
//! not depend on N, only on the number of key groups.
//!
//! The number of key groups is fixed for a query's life (like Flink's
//! maximum parallelism): each has its own state in a checkpoint, so N can
//! change between runs without splitting state; a checkpoint with another
//! number of key groups is refused.

pub mod partition;
mod project;
pub mod route;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::mpsc;
use std::thread::JoinHandle;

use arrow::array::{RecordBatch, UInt32Array};
use arrow::compute::{concat_batches, take_record_batch};

use project::{Origin, Placeholders, Restorer};
use route::Routed;

use crate::graph::{RunningStream, StreamGraph};
use crate::operator::OperatorMetrics;
use crate::{EngineError, OutputKind, Rejected, StreamOutput};

pub(crate) use crate::graph::GroupState;

/// The key groups of a query and the threads they run on.
pub(crate) struct KeyGroups {
    count: usize,
    /// Column to split each source's rows by; empty with one group.
    key_columns: BTreeMap<String, usize>,
    /// The columns a group's share of each source's rows copies (by
    /// lower-case name; absent: all), see [`project`].
    columns_read: BTreeMap<String, Arc<[bool]>>,
    /// Rows go to the key group of their source partition's number
    /// instead (sources partitioned by the key already: a query on
    /// several workers, see [`KeyGroups::start`]).
    by_partition: bool,
    /// The groups run on the caller's thread (group 0 among them).
    local: Shard,
    workers: Vec<Worker>,
    /// Each stream's counters over the other threads' groups, as of their
    /// last step.
    remote_metrics: Vec<Vec<OperatorMetrics>>,
}

impl KeyGroups {
    /// No groups yet (replaced by [`start`](Self::start)).
    pub(crate) fn empty() -> Self {
        Self {
            count: 0,
            key_columns: BTreeMap::new(),
            columns_read: BTreeMap::new(),
            by_partition: false,
            local: Shard::new(Vec::new()),
            workers: Vec::new(),
            remote_metrics: Vec::new(),
        }
    }

    /// `graphs[g]` is key group `g`; they run on `threads` threads. Rows
    /// are split by `key_columns` (each share copying only the
    /// `columns_read`), or with `by_partition` sent whole to the
    /// group numbered like the partition they came from (sources whose
    /// partitions each hold a share of the keys, as a Kafka topic keyed by
    /// the key column does).
    ///
    /// Groups are dealt to the threads in turn; with `busy`, only those are
    /// (the partitions a worker of several reads), and the others, which
    /// never get rows, stay on the caller's thread.
    pub(crate) fn start(
        graphs: Vec<StreamGraph>,
        key_columns: BTreeMap<String, usize>,
        columns_read: BTreeMap<String, Vec<bool>>,
        by_partition: bool,
        threads: usize,
        busy: Option<&[usize]>,
    ) -> Self {
        let count = graphs.len();
        let dealt = busy.map_or(count, <[usize]>::len);
        let threads = threads.clamp(1, dealt.max(1));
        let thread_of = |g: usize| match busy {
            None => g % threads,
            Some(busy) => busy.iter().position(|&b| b == g).map_or(0, |i| i % threads),
        };
        let mut shards: Vec<Shard> = (0..threads).map(|_| Shard::new(Vec::new())).collect();
        for (g, graph) in graphs.into_iter().enumerate() {
            shards[thread_of(g)].groups.push((g, graph));
        }
        let mut shards = shards.into_iter();
        let local = shards.next().expect("at least one thread");
        let workers: Vec<Worker> = shards
            .enumerate()
            .map(|(i, s)| Worker::spawn(i + 1, s))
            .collect();
        // Only sources some column of which no stream reads are projected.
        let columns_read = columns_read
            .into_iter()
            .filter(|(_, read)| read.contains(&false))
            .map(|(table, read)| (table, Arc::from(read)))
            .collect();
        Self {
            count,
            key_columns,
            columns_read,
            by_partition,
            local,
            remote_metrics: vec![Vec::new(); workers.len()],
            workers,
        }
    }

    pub(crate) fn count(&self) -> usize {
        self.count
    }

    pub(crate) fn threads(&self) -> usize {
        self.workers.len() + 1
    }

    /// The streams of key group 0 (names, schemas; every group has the same).
    pub(crate) fn streams(&self) -> &[RunningStream] {
        self.local.groups[0].1.streams()
    }

    /// Counters of stream `i` over all key groups: summed, except open
    /// windows, the most any group holds (every group has the same windows).
    pub(crate) fn metrics(&self, i: usize) -> OperatorMetrics {
        let local = self
            .local
            .groups
            .iter()
            .map(|(_, g)| g.streams()[i].metrics());
        let remote = self.remote_metrics.iter().filter_map(|m| m.get(i).copied());
        local
            .chain(remote)
            .fold(OperatorMetrics::default(), combine)
    }

    /// Batches of source rows (split by key, or each whole to its
    /// partition's group), each followed by its source's new watermark, in
    /// one step: every group takes each batch's share and then its
    /// watermark, in order, exactly as pushed one by one, but the threads
    /// work through all of them before they meet again. Batches of
    /// different partitions (sources already partitioned by the key) thus
    /// keep every thread busy at once.
    pub(crate) fn push_all(
        &mut self,
        arrivals: Vec<Arrival>,
        out: &mut Vec<StreamOutput>,
        rejected: &mut Vec<Rejected>,
    ) -> Result<(), EngineError> {
        let pushed = arrivals
            .into_iter()
            .map(|a| {
                Ok(Pushed {
                    rows: self.rows_of(&a.source, a.partition, a.rows)?,
                    source: a.source,
                    watermark: a.watermark,
                })
            })
            .collect::<Result<Vec<_>, EngineError>>()?;
        if pushed.is_empty() {
            return Ok(());
        }
        self.step(|| Command::Push(pushed.clone()), out, rejected)
    }

    /// Which groups a batch of `source` from `partition` goes to.
    fn rows_of(
        &self,
        source: &str,
        partition: usize,
        rows: RecordBatch,
    ) -> Result<Rows, EngineError> {
        Ok(match self.key_columns.get(source) {
            _ if self.by_partition => {
                if partition >= self.count {
                    return Err(EngineError::IncompatibleState(format!(
                        "rows of `{source}` came from partition {partition}, but the query keeps \
                         {} key groups, one per source partition: did the topic gain partitions?",
                        self.count
                    )));
                }
                Rows::OfGroup {
                    group: partition,
                    rows,
                }
            }
            Some(&key) => Rows::ByKey {
                rows,
                key,
                groups: self.count,
                read: self.columns_read.get(&source.to_ascii_lowercase()).cloned(),
            },
            None if self.count == 1 => Rows::OfGroup { group: 0, rows },
            None => {
                return Err(EngineError::DataFusion(
                    datafusion::error::DataFusionError::Internal(format!(
                        "table `{source}` has no key column to split its rows into key groups by"
                    )),
                ));
            }
        })
    }

    /// `source`'s watermark moved without rows (idle partitions, the end
    /// of input).
    pub(crate) fn advance(
        &mut self,
        source: &str,
        watermark: i64,
        out: &mut Vec<StreamOutput>,
        rejected: &mut Vec<Rejected>,
    ) -> Result<(), EngineError> {
        self.step(
            || Command::Advance {
                source: source.into(),
                watermark,
            },
            out,
            rejected,
        )
    }

    /// Every group's state, by group.
    pub(crate) fn snapshot(&mut self) -> Result<Vec<GroupState>, EngineError> {
        for w in &self.workers {
            w.send(Command::Snapshot)?;
        }
        let mut states = self.local.run(Command::Snapshot)?.states;
        for (i, w) in self.workers.iter().enumerate() {
            let reply = w.receive()?;
            self.remote_metrics[i] = reply.metrics;
            states.extend(reply.states);
        }
        states.sort_by_key(|(g, _)| *g);
        Ok(states.into_iter().map(|(_, s)| s).collect())
    }

    /// Checks every group's state against its streams, then restores it
    /// (`states[g]` is group `g`'s).
    pub(crate) fn restore(
        &mut self,
        mut states: Vec<Option<GroupState>>,
    ) -> Result<(), EngineError> {
        for (g, graph) in &self.local.groups {
            if let Some((saved, _)) = &states[*g] {
                graph.check_restorable(saved)?;
            }
        }
        let mut take = |groups: &[usize]| -> Vec<Option<GroupState>> {
            groups.iter().map(|&g| states[g].take()).collect()
        };
        for w in &self.workers {
            w.send(Command::Restore(take(&w.groups)))?;
        }
        let own: Vec<usize> = self.local.groups.iter().map(|(g, _)| *g).collect();
        self.local.run(Command::Restore(take(&own)))?;
        for (i, w) in self.workers.iter().enumerate() {
            self.remote_metrics[i] = w.receive()?.metrics;
        }
        Ok(())
    }

    /// Runs one command on every thread and gathers the outputs in
    /// key-group order.
    fn step(
        &mut self,
        command: impl Fn() -> Command,
        out: &mut Vec<StreamOutput>,
        rejected: &mut Vec<Rejected>,
    ) -> Result<(), EngineError> {
        for w in &self.workers {
            w.send(command())?;
        }
        let mut results = self.local.run(command())?.outputs;
        let mut failed = None;
        for (i, w) in self.workers.iter().enumerate() {
            // Every thread answers before an error is returned, so the next
            // command finds no stale reply.
            match w.receive() {
                Ok(reply) => {
                    self.remote_metrics[i] = reply.metrics;
                    results.extend(reply.outputs);
                }
                Err(e) => failed = failed.or(Some(e)),
            }
        }
        if let Some(e) = failed {
            return Err(e);
        }
        results.sort_by_key(|r| r.group);
        let mut outputs = Vec::new();
        for r in results {
            outputs.extend(r.outputs);
            rejected.extend(r.rejected);
        }
        if self.count == 1 {
            out.extend(outputs); // one group emits its windows in order
        } else {
            out.extend(in_window_order(self.local.groups[0].1.streams(), outputs)?);
        }
        Ok(())
    }
}

/// A step's outputs with each windowed stream's result rows from several
/// groups merged into one batch in window order (stable by `window_end`),
/// as one group emits the windows a watermark closes; everything else in
/// key-group order.
fn in_window_order(
    streams: &[RunningStream],
    outputs: Vec<StreamOutput>,
) -> Result<Vec<StreamOutput>, EngineError> {
    let ordered = |o: &StreamOutput| {
        let s = &streams[o.stream];
        (o.kind == OutputKind::Rows && s.windowed)
            .then(|| {
                s.event_time
                    .as_deref()
                    .and_then(|c| s.output_schema.index_of(c).ok())
            })
            .flatten()
    };
    let mut merged: Vec<StreamOutput> = Vec::with_capacity(outputs.len());
    // Where each windowed stream's rows went, and the batches to merge there.
    let mut pending: BTreeMap<usize, (usize, usize, Vec<RecordBatch>)> = BTreeMap::new();
    for o in outputs {
        match ordered(&o) {
            Some(column) => match pending.get_mut(&o.stream) {
                Some((_, _, batches)) => batches.push(o.rows),
                None => {
                    pending.insert(o.stream, (merged.len(), column, vec![o.rows.clone()]));
                    merged.push(o);
                }
            },
            None => merged.push(o),
        }
    }
    for (at, column, batches) in pending.into_values() {
        if batches.len() > 1 {
            let rows = concat_batches(&batches[0].schema(), &batches)?;
            let (ends, _) = crate::operator::event_times(&rows, column)?;
            let mut order: Vec<u32> = (0..rows.num_rows() as u32).collect();
            order.sort_by_key(|&i| ends[i as usize]); // stable: groups in order
            merged[at].rows = take_record_batch(&rows, &UInt32Array::from(order))?;
        }
    }
    Ok(merged)
}

/// Late rows among `outputs` of a projected share's push, given their
/// source rows back. Late rows are rows of the share (a stream decides
/// lateness as rows arrive), so one not found is a broken invariant, and
/// an error rather than placeholders passed off as a row's values.
fn restore_late(
    restorer: &mut Restorer<'_>,
    outputs: &mut [StreamOutput],
) -> Result<(), EngineError> {
    for o in outputs.iter_mut().filter(|o| o.kind == OutputKind::Late) {
        match restorer.source_rows(&format!("late rows of {}", o.stream), &o.rows)? {
            Some(rows) => o.rows = rows,
            None if restorer.is_share_schema(&o.rows) => {
                return Err(EngineError::DataFusion(
                    datafusion::error::DataFusionError::Internal(format!(
                        "late rows of stream {} are not rows of the key group's share",
                        o.stream
                    )),
                ));
            }
            None => {} // rows of a stream the stream reads, not of the source
        }
    }
    Ok(())
}

/// Counters of two groups of one stream.
fn combine(a: OperatorMetrics, b: OperatorMetrics) -> OperatorMetrics {
    OperatorMetrics {
        rows_in: a.rows_in + b.rows_in,
        rows_out: a.rows_out + b.rows_out,
        late_events: a.late_events + b.late_events,
        rejected_rows: a.rejected_rows + b.rejected_rows,
        open_windows: a.open_windows.max(b.open_windows),
    }
}

/// A batch of a source's rows as it arrived, with the source's watermark
/// after it.
pub(crate) struct Arrival {
    pub source: Arc<str>,
    pub partition: usize,
    pub rows: RecordBatch,
    pub watermark: i64,
}

/// A batch on its way to the groups, and the source's watermark after it.
#[derive(Clone)]
struct Pushed {
    source: Arc<str>,
    rows: Rows,
    watermark: i64,
}

/// A batch of a source's rows and which key groups they go to. Every
/// thread gets the whole batch (its columns are shared, not copied) and
/// takes out its own groups' rows, so no thread copies rows for another.
#[derive(Clone)]
enum Rows {
    /// All to one group (the partition's, or the only one).
    OfGroup { group: usize, rows: RecordBatch },
    /// Each row to the group of its `key` column's hash among `groups`,
    /// copying the `read` columns only (all without).
    ByKey {
        rows: RecordBatch,
        key: usize,
        groups: usize,
        read: Option<Arc<[bool]>>,
    },
}

/// A group's share of a batch.
struct Share {
    rows: RecordBatch,
    /// Which rows of the batch it holds, when it copies only the columns
    /// its streams read (to give dead letters their source rows back).
    projected: Option<UInt32Array>,
}

impl Share {
    /// The shares of `groups` when all of `rows` go to `group`.
    fn all_to(group: usize, groups: &[usize], rows: &RecordBatch) -> Vec<Option<Self>> {
        groups
            .iter()
            .map(|&g| {
                (g == group).then(|| Self {
                    rows: rows.clone(),
                    projected: None,
                })
            })
            .collect()
    }
}

impl Rows {
    /// The shares of `groups` (in that order), `None` for no rows.
    fn shares(
        &self,
        groups: &[usize],
        placeholders: &mut Placeholders,
    ) -> Result<Vec<Option<Share>>, EngineError> {
        let (rows, key, count, read) = match self {
            Rows::OfGroup { group, rows } => return Ok(Share::all_to(*group, groups, rows)),
            Rows::ByKey {
                rows,
                key,
                groups,
                read,
            } => (rows, *key, *groups, read),
        };
        let per_group = match route::route_for(rows, key, count, groups)? {
            Routed::Whole(group) => return Ok(Share::all_to(group, groups, rows)),
            Routed::Rows(per_group) => per_group,
        };
        per_group
            .into_iter()
            .map(|taken| {
                if taken.is_empty() {
                    return Ok(None);
                }
                let taken = UInt32Array::from(taken);
                Ok(Some(match read {
                    Some(read) => Share {
                        rows: project::take_read(rows, &taken, read, placeholders)?,
                        projected: Some(taken),
                    },
                    None => Share {
                        rows: take_record_batch(rows, &taken)?,
                        projected: None,
                    },
                }))
            })
            .collect()
    }

    /// The batch and the columns its shares copy, when they copy only some.
    fn projected(&self) -> Option<(&RecordBatch, &[bool])> {
        match self {
            Rows::ByKey {
                rows,
                read: Some(read),
                ..
            } => Some((rows, read)),
            _ => None,
        }
    }
}

/// What a thread is asked to do with its groups.
enum Command {
    /// Batches of source rows, each followed by its source's new
    /// watermark; the thread takes its groups' share of each.
    Push(Vec<Pushed>),
    Advance {
        source: Arc<str>,
        watermark: i64,
    },
    Snapshot,
    /// One entry per group of the thread, in its order.
    Restore(Vec<Option<GroupState>>),
}

/// What one group produced in a step.
struct GroupOutput {
    group: usize,
    outputs: Vec<StreamOutput>,
    rejected: Vec<Rejected>,
}

#[derive(Default)]
struct Reply {
    outputs: Vec<GroupOutput>,
    states: Vec<(usize, GroupState)>,
    /// The thread's counters per stream, over its groups.
    metrics: Vec<OperatorMetrics>,
}

/// The key groups one thread runs.
struct Shard {
    groups: Vec<(usize, StreamGraph)>,
    /// Placeholder columns of projected shares, by source.
    placeholders: BTreeMap<Arc<str>, Placeholders>,
}

impl Shard {
    fn new(groups: Vec<(usize, StreamGraph)>) -> Self {
        Self {
            groups,
            placeholders: BTreeMap::new(),
        }
    }

    fn run(&mut self, command: Command) -> Result<Reply, EngineError> {
        let mut reply = Reply::default();
        match command {
            Command::Push(pushed) => {
                let own: Vec<usize> = self.groups.iter().map(|(g, _)| *g).collect();
                // shares[b][i]: batch b's rows for the thread's i-th group.
                let shares = pushed
                    .iter()
                    .map(|p| {
                        let placeholders = self.placeholders.entry(p.source.clone()).or_default();
                        p.rows.shares(&own, placeholders)
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                for (i, (group, graph)) in self.groups.iter_mut().enumerate() {
                    let mut outputs = Vec::new();
                    let mut rejected = Vec::new();
                    for (p, shares) in pushed.iter().zip(&shares) {
                        let share = shares[i].as_ref();
                        let before = outputs.len();
                        graph.push(&p.source, share.map(|s| &s.rows), p.watermark, &mut outputs)?;
                        let mut refused = graph.take_rejected();
                        if let (Some((batch, read)), Some(rows)) =
                            (p.rows.projected(), share.and_then(|s| s.projected.as_ref()))
                        {
                            let mut restorer = Restorer::new(Origin { batch, rows, read });
                            restore_late(&mut restorer, &mut outputs[before..])?;
                            restorer.dead_letters(&mut refused, &p.source)?;
                        }
                        rejected.extend(refused);
                    }
                    reply.outputs.push(GroupOutput {
                        group: *group,
                        outputs,
                        rejected,
                    });
                }
            }
            Command::Advance { source, watermark } => {
                for (group, graph) in &mut self.groups {
                    let mut outputs = Vec::new();
                    graph.advance(&source, watermark, &mut outputs)?;
                    reply.outputs.push(GroupOutput {
                        group: *group,
                        outputs,
                        rejected: graph.take_rejected(),
                    });
                }
            }
            Command::Snapshot => {
                for (group, graph) in &mut self.groups {
                    reply.states.push((*group, graph.snapshot()?));
                }
            }
            Command::Restore(states) => {
                for ((_, graph), state) in self.groups.iter_mut().zip(states) {
                    if let Some((saved, batches)) = state {
                        graph.check_restorable(&saved)?;
                        graph.restore(&saved, batches)?;
                    }
                }
            }
        }
        reply.metrics = self.metrics();
        Ok(reply)
    }

    fn metrics(&self) -> Vec<OperatorMetrics> {
        let mut total: Vec<OperatorMetrics> = Vec::new();
        for (_, graph) in &self.groups {
            let m = graph.metrics();
            if total.is_empty() {
                total = m;
            } else {
                for (t, m) in total.iter_mut().zip(m) {
                    *t = combine(*t, m);
                }
            }
        }
        total
    }
}

/// A thread running a [`Shard`]; commands and replies go in order.
struct Worker {
    /// The key groups it runs.
    groups: Vec<usize>,
    commands: Option<mpsc::Sender<Command>>,
    replies: mpsc::Receiver<Result<Reply, EngineError>>,
    thread: Option<JoinHandle<()>>,
}

impl Worker {
    fn spawn(index: usize, mut shard: Shard) -> Self {
        let groups = shard.groups.iter().map(|(g, _)| *g).collect();
        let (commands, inbox) = mpsc::channel::<Command>();
        let (outbox, replies) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name(format!("tickflow-keys-{index}"))
            .spawn(move || {
                for command in inbox {
                    if outbox.send(shard.run(command)).is_err() {
                        break;
                    }
                }
            })
            .expect("spawning a pipeline thread");
        Self {
            groups,
            commands: Some(commands),
            replies,
            thread: Some(thread),
        }
    }

    fn send(&self, command: Command) -> Result<(), EngineError> {
        self.commands
            .as_ref()
            .and_then(|c| c.send(command).ok())
            .ok_or_else(Self::gone)
    }

    fn receive(&self) -> Result<Reply, EngineError> {
        self.replies.recv().map_err(|_| Self::gone())?
    }

    fn gone() -> EngineError {
        EngineError::DataFusion(datafusion::error::DataFusionError::Internal(
            "a pipeline thread stopped (it panicked; see the log above)".into(),
        ))
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.commands = None; // the thread's loop ends
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
