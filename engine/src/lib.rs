//! tickflow's streaming SQL engine.
//!
//! [`catalog`] says what a source table is, [`sql`] splits the dialect's
//! statements, [`ddl`] reads `CREATE TABLE` declarations into catalog
//! entries, [`plan`] turns each stream into DataFusion expressions and
//! accumulators, [`window`] and [`watermark`] hold the pure event-time
//! logic, and the operators ([`aggregate`], [`session`], [`stateless`],
//! [`over`], [`updating`], [`join`]) run batches through them. [`Pipeline`] routes source
//! batches to every stream and drives watermarks. Nothing here knows where
//! batches come from or where results go: the crate depends on DataFusion
//! and Arrow only (no Kafka, no codecs), so the operator can plan SQL with
//! exactly the worker's planner.

pub mod aggregate;
pub mod catalog;
pub mod ddl;
pub mod graph;
pub mod join;
pub mod keys;
pub mod limits;
pub mod operator;
pub mod over;
pub mod parallel;
pub mod plan;
pub mod session;
pub mod sql;
pub mod stateless;
pub mod updating;
pub mod watermark;
pub mod window;

use std::collections::BTreeMap;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use arrow::array::RecordBatch;
use datafusion::error::DataFusionError;

pub use catalog::{Catalog, SourceDef, SourceFormat, SourceTable, output_topic};
pub use graph::RunningStream;

/// Most key groups a checkpoint may ask for (each is a copy of the streams).
pub const MAX_KEY_GROUPS: usize = 4096;
pub use operator::{OperatorMetrics, OperatorState, Output, RejectedRows, StreamOperator};
pub use parallel::partition::Partitioning;
pub use plan::{PlannedSql, StreamKind, StreamPlan, plan_sql};
pub use sql::EmitMode;
pub use watermark::{END_OF_INPUT, NO_WATERMARK, WatermarkTracker};

/// Engine errors: SQL problems carry the position in the user's file.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("SQL error at line {line}, column {column}: {message}")]
    Sql {
        line: usize,
        column: usize,
        message: String,
    },
    #[error("SQL error in stream `{stream}`: {message}")]
    Parse { stream: String, message: String },
    #[error("cannot plan stream `{stream}` (defined at line {line}): {message}")]
    Plan {
        stream: String,
        line: usize,
        message: String,
    },
    #[error("output for unknown stream `{name}` (the SQL defines: {defined})")]
    UnknownStream { name: String, defined: String },
    #[error("checkpoint does not fit this query: {0}")]
    IncompatibleState(String),
    #[error(transparent)]
    DataFusion(#[from] DataFusionError),
    #[error(transparent)]
    Arrow(#[from] arrow::error::ArrowError),
}

impl EngineError {
    /// A SQL error at a byte offset of `sql`.
    pub fn sql_at(sql: &str, offset: usize, message: &str) -> Self {
        let before = &sql[..offset.min(sql.len())];
        let line = before.matches('\n').count() + 1;
        let column = before
            .rfind('\n')
            .map_or(before.chars().count(), |p| before[p + 1..].chars().count())
            + 1;
        EngineError::Sql {
            line,
            column,
            message: message.to_string(),
        }
    }
}

/// Watermark settings shared by all sources.
#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// Allowed out-of-orderness: the watermark trails the newest event by this.
    pub allowed_lateness: Duration,
    /// A partition silent for this long stops holding the watermark back.
    pub idle_timeout: Option<Duration>,
    /// Event times accepted at all; rows outside are rejected before they
    /// touch a watermark or a window.
    pub event_time_bounds: EventTimeBounds,
    /// Threads the key groups run on (at most the number of key groups).
    pub parallelism: usize,
    /// Key groups a query that splits by key is divided into at its first
    /// start: the most threads or workers it can ever use (Flink's maximum
    /// parallelism). `None`: as many as `parallelism`, which costs nothing
    /// over one pipeline per thread but leaves no room to grow. A restore
    /// takes the checkpoint's number, since each group's state is kept
    /// apart.
    pub key_groups: Option<usize>,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            allowed_lateness: Duration::from_secs(1),
            idle_timeout: Some(Duration::from_secs(30)),
            event_time_bounds: EventTimeBounds::default(),
            parallelism: 1,
            key_groups: None,
        }
    }
}

/// The range of sane event times. A row far in the future would move the
/// watermark forward for good (every later row "late"); one near the ends
/// of `i64` would break window arithmetic. Both are rejected instead.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EventTimeBounds {
    /// Earliest accepted event time, ms since the Unix epoch (default: the
    /// epoch itself; earlier times are almost always a unit error).
    pub min_ms: i64,
    /// How far an event may lie ahead of the later of the wall clock and the
    /// source's newest accepted event (default: 1 hour). Measured from the
    /// newest event too, so replaying history, or data from a simulator
    /// running faster than real time, is not affected.
    pub max_ahead: Duration,
}

impl Default for EventTimeBounds {
    fn default() -> Self {
        Self {
            min_ms: 0,
            max_ahead: Duration::from_secs(3600),
        }
    }
}

/// Why the engine refused source rows. Each rejected row goes to the dead
/// letters with this reason; nothing else in the pipeline sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RejectReason {
    /// Event time before [`EventTimeBounds::min_ms`].
    EventTimeTooEarly,
    /// Event time beyond [`EventTimeBounds::max_ahead`].
    EventTimeTooFarAhead,
    /// An expression of a stream failed on the row.
    Evaluation,
}

impl RejectReason {
    /// Stable short code for counters and dead-letter headers.
    pub fn code(self) -> &'static str {
        match self {
            Self::EventTimeTooEarly => "event-time-too-early",
            Self::EventTimeTooFarAhead => "event-time-too-far-ahead",
            Self::Evaluation => "evaluation-error",
        }
    }
}

/// Source rows the engine refused, waiting for [`Pipeline::take_rejected`].
#[derive(Debug)]
pub struct Rejected {
    /// The source table the rows came from.
    pub source: String,
    /// The stream whose expression failed (`None` when refused for all).
    pub stream: Option<String>,
    pub reason: RejectReason,
    pub error: String,
    pub rows: RecordBatch,
}

/// Output of one stream.
#[derive(Debug)]
pub struct StreamOutput {
    /// Index into [`Pipeline::streams`].
    pub stream: usize,
    pub rows: RecordBatch,
    pub kind: OutputKind,
}

/// What the rows of a [`StreamOutput`] are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutputKind {
    /// Results; for an updating stream, the new row of each key (upserts).
    Rows,
    /// Keys an updating stream deleted (only the key columns are set).
    Deletes,
    /// Input rows that arrived after their window closed.
    Late,
}

struct SourceRuntime {
    def: SourceDef,
    watermark: WatermarkTracker,
    records_in: u64,
    rejected: u64,
}

/// Engine state of a checkpoint.
pub struct EngineSnapshot {
    /// Watermarks, counters and per-stream fingerprints and small state.
    pub meta: serde_json::Value,
    /// Bulk state per stream name.
    pub states: BTreeMap<String, RecordBatch>,
}

/// All streams of a SQL file, fed by their sources and by each other: a
/// DAG in file order (a stream reads only tables and earlier streams; see
/// [`graph`]).
///
/// The pipeline owns the sources: it screens their event times and
/// tracks their watermarks, then hands rows and watermarks to the query's
/// key groups ([`parallel`]), one or more copies of the streams, each
/// for a share of the keys, on one or more threads.
pub struct Pipeline {
    /// The catalog the SQL was planned against, with its declarations.
    catalog: Catalog,
    sources: BTreeMap<String, SourceRuntime>,
    /// Streams read by later streams, as inputs.
    derived: BTreeMap<String, SourceDef>,
    bounds: EventTimeBounds,
    /// Refused rows not yet taken by the run loop.
    rejected: Vec<Rejected>,
    groups: parallel::KeyGroups,
    partitioning: Partitioning,
    /// The columns of each source the streams evaluate (by lower-case
    /// name): a key group's share of a batch copies only those.
    columns_read: BTreeMap<String, Vec<bool>>,
    /// What building the key groups anew takes (a restore of a checkpoint
    /// with another number of them).
    plans: Vec<StreamPlan>,
    read: Vec<bool>,
    threads: usize,
    /// Key groups follow the sources' partitions ([`Pipeline::group_by_partition`]).
    by_partition: bool,
    /// With `by_partition`: the partitions this process reads, whose groups
    /// are dealt to the threads.
    read_partitions: Option<Vec<usize>>,
}

/// One key group's state ([`Pipeline::snapshot_groups`]): each stream's
/// fingerprint and small state, and its bulk state by stream name.
#[derive(Clone, Debug, Default)]
pub struct GroupSnapshot {
    pub streams: serde_json::Map<String, serde_json::Value>,
    pub states: BTreeMap<String, RecordBatch>,
}

impl Pipeline {
    /// Plans `sql` against `catalog` (plus the file's own `CREATE TABLE`
    /// declarations) and builds its operators.
    pub fn new(sql: &str, catalog: &Catalog, config: &EngineConfig) -> Result<Self, EngineError> {
        Self::from_plans(plan_sql(sql, catalog)?, config)
    }

    pub fn from_plans(planned: PlannedSql, config: &EngineConfig) -> Result<Self, EngineError> {
        let read: Vec<bool> = planned
            .streams
            .iter()
            .map(|p| planned.is_read_by_streams(&p.name))
            .collect();
        let partitioning = parallel::partition::partitioning(&planned);
        let columns_read = parallel::partition::columns_read(&planned);
        let count = match &partitioning {
            Partitioning::ByKey(_) => config
                .key_groups
                .unwrap_or(config.parallelism)
                .clamp(1, MAX_KEY_GROUPS),
            Partitioning::Whole(_) => 1,
        };
        let PlannedSql {
            catalog,
            streams: plans,
        } = planned;
        let mut sources = BTreeMap::new();
        let mut derived: BTreeMap<String, SourceDef> = BTreeMap::new();
        for (p, &intermediate) in plans.iter().zip(&read) {
            for input in &p.inputs {
                if derived.contains_key(&input.to_ascii_lowercase()) {
                    continue;
                }
                let def = catalog.get(input).expect("planner resolved the input");
                sources
                    .entry(input.clone())
                    .or_insert_with(|| SourceRuntime {
                        def: def.clone(),
                        watermark: WatermarkTracker::new(
                            def.watermark_delay.unwrap_or(config.allowed_lateness),
                            config.idle_timeout,
                        ),
                        records_in: 0,
                        rejected: 0,
                    });
            }
            if intermediate && let Ok(input) = &p.as_input {
                derived.insert(p.name.to_ascii_lowercase(), input.clone());
            }
        }
        let mut pipeline = Self {
            catalog,
            sources,
            derived,
            bounds: config.event_time_bounds,
            rejected: Vec::new(),
            groups: parallel::KeyGroups::empty(),
            partitioning,
            columns_read,
            plans,
            read,
            threads: config.parallelism,
            by_partition: false,
            read_partitions: None,
        };
        pipeline.start_key_groups(count)?;
        Ok(pipeline)
    }

    /// (Re)builds the streams as `count` key groups, on at most
    /// `self.threads` threads.
    fn start_key_groups(&mut self, count: usize) -> Result<(), EngineError> {
        let key_columns = match &self.partitioning {
            Partitioning::ByKey(columns) if count > 1 && !self.by_partition => columns.clone(),
            _ => BTreeMap::new(),
        };
        let graphs = (0..count)
            .map(|_| {
                graph::StreamGraph::build(
                    self.plans.clone(),
                    &self.read,
                    &self.catalog,
                    &self.derived,
                )
            })
            .collect::<Result<Vec<_>, _>>()?;
        self.groups = parallel::KeyGroups::start(
            graphs,
            key_columns,
            self.columns_read.clone(),
            self.by_partition,
            self.threads,
            self.read_partitions.as_deref(),
        );
        Ok(())
    }

    /// Makes the key groups follow the sources' partitions: one group per
    /// partition, and rows of partition `p` go to group `p` whole. For
    /// sources partitioned by the query's key already (a Kafka topic keyed
    /// by it), so that each partition's state can be saved and moved on its
    /// own: a query on several workers, each owning some partitions
    /// (`read`: the ones this process reads, whose groups its threads
    /// share). Fails for a query that does not split by key. Call before a
    /// restore.
    pub fn group_by_partition(
        &mut self,
        partitions: usize,
        read: &[usize],
    ) -> Result<(), EngineError> {
        if let Partitioning::Whole(why) = &self.partitioning {
            return Err(EngineError::IncompatibleState(format!(
                "the query cannot be split by key ({why}), so it runs on one worker"
            )));
        }
        if !(1..=MAX_KEY_GROUPS).contains(&partitions) {
            return Err(EngineError::IncompatibleState(format!(
                "{partitions} source partitions: a query splits into 1 to {MAX_KEY_GROUPS} key groups"
            )));
        }
        self.by_partition = true;
        self.read_partitions = Some(read.to_vec());
        self.start_key_groups(partitions)
    }

    /// The state of key groups `groups` (with [`group_by_partition`]:
    /// partitions), each on its own; processing continues unchanged.
    ///
    /// [`group_by_partition`]: Pipeline::group_by_partition
    pub fn snapshot_groups(
        &mut self,
        groups: &[usize],
    ) -> Result<Vec<(usize, GroupSnapshot)>, EngineError> {
        let mut all = self.groups.snapshot()?;
        groups
            .iter()
            .map(|&g| {
                let (streams, states) = all.get_mut(g).map(std::mem::take).ok_or_else(|| {
                    EngineError::IncompatibleState(format!(
                        "no key group {g} (the query has {})",
                        self.groups.count()
                    ))
                })?;
                Ok((g, GroupSnapshot { streams, states }))
            })
            .collect()
    }

    /// Restores some key groups (the others keep their state), then raises
    /// each source's watermark to at least `watermarks[source]`. Fails like
    /// [`restore`](Pipeline::restore) when a stream's query changed.
    pub fn restore_groups(
        &mut self,
        groups: Vec<(usize, GroupSnapshot)>,
        watermarks: &BTreeMap<String, i64>,
    ) -> Result<(), EngineError> {
        let count = self.groups.count();
        let mut states: Vec<Option<parallel::GroupState>> = vec![None; count];
        for (g, snapshot) in groups {
            let slot = states.get_mut(g).ok_or_else(|| {
                EngineError::IncompatibleState(format!(
                    "state of key group {g}, but the query has {count}"
                ))
            })?;
            *slot = Some((snapshot.streams, snapshot.states));
        }
        self.groups.restore(states)?;
        for (name, src) in &mut self.sources {
            if let Some(&wm) = watermarks.get(name) {
                src.watermark.restore(wm);
            }
        }
        Ok(())
    }

    /// How the query splits into key groups, or why it runs as one.
    pub fn partitioning(&self) -> &Partitioning {
        &self.partitioning
    }

    /// Number of key groups (1 for a query that does not split).
    pub fn key_groups(&self) -> usize {
        self.groups.count()
    }

    /// Threads the key groups run on.
    pub fn threads(&self) -> usize {
        self.groups.threads()
    }

    /// Every table the SQL can read: the built-in ones and its own
    /// `CREATE TABLE` declarations.
    pub fn catalog(&self) -> &Catalog {
        &self.catalog
    }

    /// The streams, in file order (names, schemas and watermarks; counters
    /// over all key groups are [`stream_metrics`](Self::stream_metrics)).
    pub fn streams(&self) -> &[RunningStream] {
        self.groups.streams()
    }

    /// Counters of stream `i` (an index into [`streams`](Self::streams))
    /// over all key groups.
    pub fn stream_metrics(&self, i: usize) -> OperatorMetrics {
        self.groups.metrics(i)
    }

    /// Fails on the first of `names` that is no stream of this pipeline
    /// (an output bound to a stream the SQL does not define).
    pub fn check_stream_names<'a>(
        &self,
        names: impl IntoIterator<Item = &'a String>,
    ) -> Result<(), EngineError> {
        match names
            .into_iter()
            .find(|n| !self.streams().iter().any(|s| &s.name == *n))
        {
            Some(name) => Err(EngineError::UnknownStream {
                name: name.clone(),
                defined: self
                    .streams()
                    .iter()
                    .map(|s| s.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            }),
            None => Ok(()),
        }
    }

    /// Source tables the streams read, by name.
    pub fn source_names(&self) -> Vec<String> {
        self.sources.keys().cloned().collect()
    }

    /// The catalog entry of a source the streams read.
    pub fn source(&self, name: &str) -> Option<&SourceDef> {
        self.sources.get(name).map(|s| &s.def)
    }

    /// What a stream's first input is: a source table or an earlier stream
    /// (late rows of the stream have its columns).
    pub fn input_def(&self, stream: &RunningStream) -> &SourceDef {
        let first = &stream.inputs[0];
        self.source(first)
            .or_else(|| self.derived.get(&first.to_ascii_lowercase()))
            .expect("every input is a source or an earlier stream")
    }

    /// Current watermark of a source.
    pub fn watermark(&self, source: &str) -> Option<i64> {
        self.sources.get(source).map(|s| s.watermark.watermark())
    }

    /// Highest event time seen on a source.
    pub fn max_event_time(&self, source: &str) -> Option<i64> {
        self.sources
            .get(source)
            .map(|s| s.watermark.max_event_time())
    }

    pub fn records_in(&self, source: &str) -> u64 {
        self.sources.get(source).map_or(0, |s| s.records_in)
    }

    /// Declares how many partitions `source` has (e.g. a Kafka topic's), so
    /// the watermark waits for all of them.
    pub fn declare_partitions(&mut self, source: &str, partitions: usize) {
        if let Some(src) = self.sources.get_mut(source) {
            src.watermark.declare_partitions(partitions);
        }
    }

    /// Feeds one batch of `source` rows from `partition`, then advances the
    /// source's watermark and emits what it completes.
    pub fn push(
        &mut self,
        source: &str,
        partition: usize,
        batch: &RecordBatch,
        out: &mut Vec<StreamOutput>,
    ) -> Result<(), EngineError> {
        self.push_all([(source, partition, batch)], out)
    }

    /// Feeds several batches (`(source, partition, rows)`, say one poll of
    /// every partition) as [`push`](Self::push) one after another would,
    /// with the same rows out, but as one step for the key groups' threads:
    /// each works through its share of all of them before they meet, so
    /// batches of different partitions run on different threads at once.
    pub fn push_all<'a>(
        &mut self,
        batches: impl IntoIterator<Item = (&'a str, usize, &'a RecordBatch)>,
        out: &mut Vec<StreamOutput>,
    ) -> Result<(), EngineError> {
        let mut arrivals = Vec::new();
        for (source, partition, batch) in batches {
            if let Some(arrival) = self.arrive(source, partition, batch)? {
                arrivals.push(arrival);
            }
        }
        self.groups.push_all(arrivals, out, &mut self.rejected)
    }

    /// A batch's rows with good event times and the source's watermark
    /// after them; `None` when no stream reads the source or no row is left.
    fn arrive(
        &mut self,
        source: &str,
        partition: usize,
        batch: &RecordBatch,
    ) -> Result<Option<parallel::Arrival>, EngineError> {
        let Some(src) = self.sources.get_mut(source) else {
            return Ok(None); // no stream reads this source
        };
        if batch.num_rows() == 0 {
            return Ok(None);
        }
        src.records_in += batch.num_rows() as u64;
        let (batch, max_ts) = match screen_event_times(src, batch, self.bounds)? {
            Screened::AllGood(max_ts) => (batch.clone(), max_ts),
            Screened::Some {
                good,
                max_ts,
                rejected,
            } => {
                src.rejected += rejected
                    .iter()
                    .map(|r| r.rows.num_rows() as u64)
                    .sum::<u64>();
                self.rejected.extend(rejected);
                (good, max_ts)
            }
        };
        if batch.num_rows() == 0 {
            return Ok(None);
        }
        let watermark = src.watermark.observe(partition, max_ts, Instant::now());
        Ok(Some(parallel::Arrival {
            source: source.into(),
            partition,
            rows: batch,
            watermark,
        }))
    }

    /// Source rows refused since the last call: out of the event-time
    /// bounds, or failing a stream's expression. The run loop takes them
    /// after every push and sends them to the dead letters.
    pub fn take_rejected(&mut self) -> Vec<Rejected> {
        std::mem::take(&mut self.rejected)
    }

    /// Rows of `source` refused so far for their event time.
    pub fn rejected_rows(&self, source: &str) -> u64 {
        self.sources.get(source).map_or(0, |s| s.rejected)
    }

    /// A partition of `source` reached its end (bounded input).
    pub fn finish_partition(
        &mut self,
        source: &str,
        partition: usize,
        out: &mut Vec<StreamOutput>,
    ) -> Result<(), EngineError> {
        let Some(src) = self.sources.get_mut(source) else {
            return Ok(());
        };
        let wm = src.watermark.finish(partition, Instant::now());
        self.groups.advance(source, wm, out, &mut self.rejected)
    }

    /// Re-evaluates idle partitions (call periodically when sources are quiet).
    pub fn tick(&mut self, out: &mut Vec<StreamOutput>) -> Result<(), EngineError> {
        let now = Instant::now();
        let marks: Vec<(String, i64)> = self
            .sources
            .iter_mut()
            .map(|(n, s)| (n.clone(), s.watermark.recompute(now)))
            .collect();
        for (source, wm) in marks {
            self.groups.advance(&source, wm, out, &mut self.rejected)?;
        }
        Ok(())
    }

    /// A consistent copy of all state; processing continues unchanged.
    ///
    /// One key group keeps the layout of a pipeline without groups
    /// (`streams` and states by stream name); several write `key_groups`,
    /// `groups` (one `streams` object each) and states as `g{group}/{stream}`.
    pub fn snapshot(&mut self) -> Result<EngineSnapshot, EngineError> {
        let mut groups = self.groups.snapshot()?;
        let sources: serde_json::Map<String, serde_json::Value> = self
            .sources
            .iter()
            .map(|(n, s)| (n.clone(), serde_json::json!({ "watermark": s.watermark.watermark(), "records_in": s.records_in })))
            .collect();
        if groups.len() == 1 {
            let (streams, states) = groups.pop().expect("one group");
            return Ok(EngineSnapshot {
                meta: serde_json::json!({ "streams": streams, "sources": sources }),
                states,
            });
        }
        let mut states = BTreeMap::new();
        let mut metas = Vec::with_capacity(groups.len());
        for (g, (streams, batches)) in groups.into_iter().enumerate() {
            metas.push(serde_json::Value::Object(streams));
            states.extend(
                batches
                    .into_iter()
                    .map(|(name, b)| (format!("g{g}/{name}"), b)),
            );
        }
        Ok(EngineSnapshot {
            meta: serde_json::json!({ "key_groups": metas.len(), "groups": metas, "sources": sources }),
            states,
        })
    }

    /// Restores a snapshot, in as many key groups as it has (on at most
    /// as many threads). Fails if a stream's query changed since (its
    /// fingerprint differs), a stream of the checkpoint no longer exists,
    /// or the checkpoint has several key groups and the query no longer
    /// splits by key.
    pub fn restore(&mut self, mut snapshot: EngineSnapshot) -> Result<(), EngineError> {
        let count = snapshot.meta["key_groups"].as_u64().unwrap_or(1) as usize;
        if count != self.groups.count() {
            if let Partitioning::Whole(why) = &self.partitioning
                && count > 1
            {
                return Err(EngineError::IncompatibleState(format!(
                    "the checkpoint keeps state in {count} key groups, but the query no longer splits by key ({why})"
                )));
            }
            self.start_key_groups(count.clamp(1, MAX_KEY_GROUPS))?;
        }
        let states: Vec<Option<parallel::GroupState>> = if count == 1 {
            let streams = snapshot.meta["streams"]
                .as_object()
                .cloned()
                .unwrap_or_default();
            vec![Some((streams, std::mem::take(&mut snapshot.states)))]
        } else {
            let metas = snapshot.meta["groups"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            if metas.len() != count {
                return Err(EngineError::IncompatibleState(format!(
                    "the checkpoint names {count} key groups but holds {}",
                    metas.len()
                )));
            }
            let mut by_group: Vec<BTreeMap<String, RecordBatch>> = vec![BTreeMap::new(); count];
            for (key, batch) in std::mem::take(&mut snapshot.states) {
                let group = key
                    .strip_prefix('g')
                    .and_then(|k| k.split_once('/'))
                    .and_then(|(g, name)| Some((g.parse::<usize>().ok()?, name)))
                    .filter(|(g, _)| *g < count)
                    .ok_or_else(|| {
                        EngineError::IncompatibleState(format!(
                            "state `{key}` belongs to no key group"
                        ))
                    })?;
                by_group[group.0].insert(group.1.to_string(), batch);
            }
            metas
                .into_iter()
                .zip(by_group)
                .map(|(m, b)| Some((m.as_object().cloned().unwrap_or_default(), b)))
                .collect()
        };
        self.groups.restore(states)?;
        if let Some(sources) = snapshot.meta["sources"].as_object() {
            for (name, src) in &mut self.sources {
                if let Some(v) = sources.get(name) {
                    src.watermark
                        .restore(v["watermark"].as_i64().unwrap_or(NO_WATERMARK));
                    src.records_in = v["records_in"].as_u64().unwrap_or(0);
                }
            }
        }
        Ok(())
    }
}

/// A batch after the event-time bounds.
enum Screened {
    /// Every row is in range; the batch's highest event time.
    AllGood(i64),
    Some {
        good: RecordBatch,
        max_ts: i64,
        rejected: Vec<Rejected>,
    },
}

/// Splits off rows whose event time is outside `bounds`. Null event times
/// pass (the operators treat them as late).
fn screen_event_times(
    src: &SourceRuntime,
    batch: &RecordBatch,
    bounds: EventTimeBounds,
) -> Result<Screened, EngineError> {
    let index = src.def.event_time_index();
    let (ts, nulls) = operator::event_times(batch, index)?;
    let valid = batch.column(index).logical_nulls();
    let is_valid = |i: usize| nulls == 0 || valid.as_ref().is_none_or(|v| v.is_valid(i));
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    let ahead_ms = i64::try_from(bounds.max_ahead.as_millis()).unwrap_or(i64::MAX);
    let ceiling = now_ms
        .max(src.watermark.newest_known())
        .saturating_add(ahead_ms);
    let verdict = |i: usize, t: i64| -> Option<RejectReason> {
        if !is_valid(i) {
            None
        } else if t < bounds.min_ms {
            Some(RejectReason::EventTimeTooEarly)
        } else if t > ceiling {
            Some(RejectReason::EventTimeTooFarAhead)
        } else {
            None
        }
    };
    let max_valid = |keep: &dyn Fn(usize) -> bool| {
        ts.iter()
            .enumerate()
            .filter(|&(i, _)| is_valid(i) && keep(i))
            .map(|(_, &t)| t)
            .max()
            .unwrap_or(NO_WATERMARK)
    };
    if ts.iter().enumerate().all(|(i, &t)| verdict(i, t).is_none()) {
        return Ok(Screened::AllGood(max_valid(&|_| true)));
    }
    let reasons: Vec<Option<RejectReason>> =
        ts.iter().enumerate().map(|(i, &t)| verdict(i, t)).collect();
    let select = |want: Option<RejectReason>| -> Result<RecordBatch, EngineError> {
        let mask: arrow::array::BooleanArray = reasons.iter().map(|r| Some(*r == want)).collect();
        Ok(arrow::compute::filter_record_batch(batch, &mask)?)
    };
    let mut rejected = Vec::new();
    for (reason, error) in [
        (
            RejectReason::EventTimeTooEarly,
            format!(
                "event time is before the earliest accepted, {} (the minimum event time setting)",
                format_ms(bounds.min_ms)
            ),
        ),
        (
            RejectReason::EventTimeTooFarAhead,
            format!(
                "event time is more than {} ahead of {} (the later of the wall clock and the newest accepted event; the maximum event-time skew setting)",
                humantime::format_duration(bounds.max_ahead),
                format_ms(ceiling.saturating_sub(ahead_ms))
            ),
        ),
    ] {
        let rows = select(Some(reason))?;
        if rows.num_rows() > 0 {
            rejected.push(Rejected {
                source: src.def.name.clone(),
                stream: None,
                reason,
                error,
                rows,
            });
        }
    }
    Ok(Screened::Some {
        good: select(None)?,
        max_ts: max_valid(&|i| reasons[i].is_none()),
        rejected,
    })
}

/// An event time for messages: RFC 3339 where it is representable.
fn format_ms(ms: i64) -> String {
    // humantime refuses years after 9999 (its Display would panic).
    const YEAR_10000_MS: u64 = 253_402_300_800_000;
    u64::try_from(ms)
        .ok()
        .filter(|&ms| ms < YEAR_10000_MS)
        .and_then(|ms| UNIX_EPOCH.checked_add(Duration::from_millis(ms)))
        .map_or_else(
            || format!("{ms} ms since the Unix epoch"),
            |t| humantime::format_rfc3339_millis(t).to_string(),
        )
}
