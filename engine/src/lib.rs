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
pub mod join;
pub mod keys;
pub mod limits;
pub mod operator;
pub mod over;
pub mod plan;
pub mod session;
pub mod sql;
pub mod stateless;
pub mod updating;
pub mod watermark;
pub mod window;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use datafusion::error::DataFusionError;

pub use catalog::{Catalog, SourceDef, SourceFormat, SourceTable, output_topic};
pub use operator::{OperatorMetrics, OperatorState, Output, RejectedRows, StreamOperator};
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
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            allowed_lateness: Duration::from_secs(1),
            idle_timeout: Some(Duration::from_secs(30)),
            event_time_bounds: EventTimeBounds::default(),
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

/// A running stream: its plan summary and operator.
pub struct RunningStream {
    pub name: String,
    /// Source tables or earlier streams it reads (several for UNION ALL).
    pub inputs: Vec<String>,
    /// Whether a later stream reads it. Its rows then feed that stream and
    /// reach an output only where one is bound to it by name.
    pub intermediate: bool,
    /// A GROUP BY without a window: its output is upserts and deletions by
    /// `key_columns`.
    pub updating: bool,
    pub emit: EmitMode,
    pub output_schema: SchemaRef,
    pub fingerprint: String,
    pub windowed: bool,
    pub window: Option<window::WindowSpec>,
    /// Output columns that identify a result row's group (the GROUP BY keys;
    /// the source's key columns a stateless stream passes through), e.g. for
    /// message keys.
    pub key_columns: Vec<String>,
    /// Output columns that identify one result row, if any (see
    /// [`plan::StreamPlan::row_key`]).
    pub row_key: Option<Vec<String>>,
    /// Output column holding a result row's event time (`window_end` of a
    /// windowed aggregate, the input's event time of a row-by-row stream);
    /// `None` where the rows have none: updating streams, EMIT CHANGES, and
    /// streams that do not project it.
    pub event_time: Option<String>,
    operator: Box<dyn StreamOperator>,
    /// The newest watermark of each input; the stream's own is their
    /// minimum, so a UNION ALL never runs ahead of its slowest input.
    input_watermarks: Vec<i64>,
}

impl RunningStream {
    pub fn metrics(&self) -> OperatorMetrics {
        self.operator.metrics()
    }

    /// The stream's watermark: the minimum of its inputs'.
    pub fn watermark(&self) -> i64 {
        self.input_watermarks
            .iter()
            .copied()
            .min()
            .unwrap_or(NO_WATERMARK)
    }
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
/// DAG in file order (a stream reads only tables and earlier streams).
///
/// Rows a stream emits go at once to the streams that read it, before any
/// watermark moves on; a watermark reaches a stream after its inputs have
/// emitted what that watermark completes. So a later stream sees its
/// input's rows exactly as if they came from a table with that watermark.
pub struct Pipeline {
    /// The catalog the SQL was planned against, with its declarations.
    catalog: Catalog,
    streams: Vec<RunningStream>,
    sources: BTreeMap<String, SourceRuntime>,
    /// Streams read by later streams, as inputs.
    derived: BTreeMap<String, SourceDef>,
    bounds: EventTimeBounds,
    /// Refused rows not yet taken by the run loop.
    rejected: Vec<Rejected>,
}

impl Pipeline {
    /// Plans `sql` against `sources` and builds its operators.
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
        let PlannedSql {
            catalog,
            streams: plans,
        } = planned;
        let mut streams: Vec<RunningStream> = Vec::new();
        let mut used = BTreeMap::new();
        let mut derived: BTreeMap<String, SourceDef> = BTreeMap::new();
        for (p, intermediate) in plans.into_iter().zip(read) {
            for input in &p.inputs {
                if derived.contains_key(&input.to_ascii_lowercase()) {
                    continue;
                }
                let def = catalog.get(input).expect("planner resolved the input");
                used.entry(input.clone()).or_insert_with(|| SourceRuntime {
                    def: def.clone(),
                    watermark: WatermarkTracker::new(
                        def.watermark_delay.unwrap_or(config.allowed_lateness),
                        config.idle_timeout,
                    ),
                    records_in: 0,
                    rejected: 0,
                });
            }
            let first = &p.inputs[0];
            let def = derived
                .get(&first.to_ascii_lowercase())
                .or_else(|| catalog.get(first))
                .expect("planner resolved the input")
                .clone();
            if intermediate && let Ok(input) = &p.as_input {
                derived.insert(p.name.to_ascii_lowercase(), input.clone());
            }
            let updating = p.kind.is_updating();
            let (operator, windowed, window): (Box<dyn StreamOperator>, bool, _) = match p.kind {
                StreamKind::Updating(u) => (
                    Box::new(updating::UpdatingAggregate::new(
                        *u,
                        Arc::clone(&p.output_schema),
                    )?),
                    false,
                    None,
                ),
                StreamKind::Stateless(s) => (
                    Box::new(stateless::FilterProject::new(
                        s,
                        Arc::clone(&p.output_schema),
                    )),
                    false,
                    None,
                ),
                StreamKind::Join(j) => (
                    join::new_operator(*j, Arc::clone(&p.output_schema))?,
                    false,
                    None,
                ),
                StreamKind::Over(o) => (
                    Box::new(over::OverOperator::new(
                        *o,
                        &def.schema,
                        Arc::clone(&p.output_schema),
                    )?),
                    false,
                    None,
                ),
                StreamKind::Windowed(w) => {
                    let spec = w.window;
                    let op: Box<dyn StreamOperator> = match spec {
                        window::WindowSpec::Session { .. } => {
                            Box::new(session::SessionAggregate::new(
                                w,
                                Arc::clone(&p.output_schema),
                                p.emit,
                            )?)
                        }
                        _ => Box::new(aggregate::WindowAggregate::new(
                            w,
                            Arc::clone(&p.output_schema),
                            p.emit,
                        )),
                    };
                    (op, true, Some(spec))
                }
            };
            streams.push(RunningStream {
                name: p.name,
                input_watermarks: vec![NO_WATERMARK; p.inputs.len()],
                inputs: p.inputs,
                intermediate,
                updating,
                emit: p.emit,
                output_schema: p.output_schema,
                fingerprint: p.fingerprint,
                windowed,
                window,
                key_columns: p.key_columns,
                row_key: p.row_key,
                event_time: p
                    .as_input
                    .as_ref()
                    .ok()
                    .filter(|d| !d.changelog)
                    .map(|d| d.event_time.clone()),
                operator,
            });
        }
        Ok(Self {
            catalog,
            streams,
            sources: used,
            derived,
            bounds: config.event_time_bounds,
            rejected: Vec::new(),
        })
    }

    /// Every table the SQL can read: the built-in ones and its own
    /// `CREATE TABLE` declarations.
    pub fn catalog(&self) -> &Catalog {
        &self.catalog
    }

    pub fn streams(&self) -> &[RunningStream] {
        &self.streams
    }

    /// Fails on the first of `names` that is no stream of this pipeline
    /// (an output bound to a stream the SQL does not define).
    pub fn check_stream_names<'a>(
        &self,
        names: impl IntoIterator<Item = &'a String>,
    ) -> Result<(), EngineError> {
        match names
            .into_iter()
            .find(|n| !self.streams.iter().any(|s| &s.name == *n))
        {
            Some(name) => Err(EngineError::UnknownStream {
                name: name.clone(),
                defined: self
                    .streams
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
        let Some(src) = self.sources.get_mut(source) else {
            return Ok(()); // no stream reads this source
        };
        if batch.num_rows() == 0 {
            return Ok(());
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
            return Ok(());
        }
        let wm = src.watermark.observe(partition, max_ts, Instant::now());
        self.feed(source, Change::Rows(&batch), out)?;
        self.advance(source, wm, out)
    }

    /// Hands a change of table or stream `input` (rows, or keys an
    /// updating stream deleted) to every stream that reads it, and what
    /// those emit to the streams that read them.
    fn feed(
        &mut self,
        input: &str,
        change: Change<'_>,
        out: &mut Vec<StreamOutput>,
    ) -> Result<(), EngineError> {
        for i in 0..self.streams.len() {
            for k in 0..self.streams[i].inputs.len() {
                if self.streams[i].inputs[k] != input {
                    continue;
                }
                let mut o = Output::default();
                let operator = &mut self.streams[i].operator;
                match change {
                    Change::Rows(rows) => operator.on_input_batch(k, rows, &mut o)?,
                    Change::Deletes(keys) => operator.on_input_deletes(k, keys, &mut o)?,
                }
                self.emit(i, o, out)?;
            }
        }
        Ok(())
    }

    /// Passes a stream's output on: to the run loop, and to the streams
    /// that read it; rows its expressions failed on, to the dead letters
    /// (also those of rows emitted at a watermark, e.g. an OVER stream's
    /// SELECT list).
    fn emit(
        &mut self,
        stream: usize,
        mut o: Output,
        out: &mut Vec<StreamOutput>,
    ) -> Result<(), EngineError> {
        let s = &self.streams[stream];
        self.rejected.extend(o.rejected.drain(..).map(|r| Rejected {
            source: s.inputs[0].clone(),
            stream: Some(s.name.clone()),
            reason: RejectReason::Evaluation,
            error: r.error,
            rows: r.rows,
        }));
        let (rows, deletes) = if self.streams[stream].intermediate {
            (o.rows.clone(), o.deletes.clone())
        } else {
            (Vec::new(), Vec::new())
        };
        collect(stream, o, out);
        let name = self.streams[stream].name.clone();
        // An updating stream's changes, in the order they were made: the
        // deletions and upserts of one step are of different keys.
        for keys in deletes {
            self.feed(&name, Change::Deletes(&keys), out)?;
        }
        for rows in rows {
            self.feed(&name, Change::Rows(&rows), out)?;
        }
        Ok(())
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
        self.advance(source, wm, out)
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
            self.advance(&source, wm, out)?;
        }
        Ok(())
    }

    /// Moves the watermark of table or stream `input` to `watermark`, and
    /// with it those of the streams that read it (each the minimum of its
    /// inputs'), each after its inputs have emitted what it completes.
    fn advance(
        &mut self,
        input: &str,
        watermark: i64,
        out: &mut Vec<StreamOutput>,
    ) -> Result<(), EngineError> {
        for i in 0..self.streams.len() {
            let s = &mut self.streams[i];
            let mut reads = false;
            for (name, wm) in s.inputs.iter().zip(s.input_watermarks.iter_mut()) {
                if name == input {
                    *wm = (*wm).max(watermark);
                    reads = true;
                }
            }
            if !reads {
                continue;
            }
            let own = s.watermark();
            let mut o = Output::default();
            s.operator
                .on_input_watermarks(&s.input_watermarks, &mut o)?;
            self.emit(i, o, out)?;
            if self.streams[i].intermediate {
                // What the stream emitted is complete up to here (an OVER
                // stream trails its input while rows wait for a step).
                let emitted = self.streams[i]
                    .operator
                    .output_watermark()
                    .map_or(own, |w| w.min(own));
                let name = self.streams[i].name.clone();
                self.advance(&name, emitted, out)?;
            }
        }
        Ok(())
    }

    /// A consistent copy of all state; processing continues unchanged.
    pub fn snapshot(&mut self) -> Result<EngineSnapshot, EngineError> {
        let mut streams = serde_json::Map::new();
        let mut states = BTreeMap::new();
        for s in &mut self.streams {
            let st = s.operator.snapshot()?;
            streams.insert(
                s.name.clone(),
                serde_json::json!({
                    "fingerprint": s.fingerprint,
                    "operator": st.meta,
                    "input_watermarks": s.input_watermarks,
                }),
            );
            if let Some(b) = st.batch {
                states.insert(s.name.clone(), b);
            }
        }
        let sources: serde_json::Map<String, serde_json::Value> = self
            .sources
            .iter()
            .map(|(n, s)| (n.clone(), serde_json::json!({ "watermark": s.watermark.watermark(), "records_in": s.records_in })))
            .collect();
        Ok(EngineSnapshot {
            meta: serde_json::json!({ "streams": streams, "sources": sources }),
            states,
        })
    }

    /// Restores a snapshot. Fails if a stream's query changed since (its
    /// fingerprint differs) or a stream of the checkpoint no longer exists.
    pub fn restore(&mut self, mut snapshot: EngineSnapshot) -> Result<(), EngineError> {
        let saved = snapshot.meta["streams"]
            .as_object()
            .cloned()
            .unwrap_or_default();
        for name in saved.keys() {
            if !self.streams.iter().any(|s| &s.name == name) {
                return Err(EngineError::IncompatibleState(format!(
                    "the checkpoint holds state of stream `{name}`, which the query no longer defines"
                )));
            }
        }
        for s in &self.streams {
            if let Some(st) = saved.get(&s.name)
                && st["fingerprint"].as_str() != Some(s.fingerprint.as_str())
            {
                return Err(EngineError::IncompatibleState(format!(
                    "stream `{}` changed since the checkpoint was taken (fingerprint {} → {})",
                    s.name,
                    st["fingerprint"].as_str().unwrap_or("?"),
                    s.fingerprint
                )));
            }
        }
        for s in &mut self.streams {
            if let Some(st) = saved.get(&s.name) {
                s.operator.restore(OperatorState {
                    meta: st["operator"].clone(),
                    batch: snapshot.states.remove(&s.name),
                })?;
                // Checkpoints before UNION ALL lack these; a stream with one
                // input gets its watermark from the source's on the next step.
                if let Some(marks) = st["input_watermarks"].as_array()
                    && marks.len() == s.input_watermarks.len()
                {
                    for (wm, saved) in s.input_watermarks.iter_mut().zip(marks) {
                        *wm = saved.as_i64().unwrap_or(NO_WATERMARK);
                    }
                }
            }
        }
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

/// What a stream passes to the streams reading it.
#[derive(Clone, Copy)]
enum Change<'a> {
    Rows(&'a RecordBatch),
    /// Keys an updating stream deleted.
    Deletes(&'a RecordBatch),
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

fn collect(stream: usize, o: Output, out: &mut Vec<StreamOutput>) {
    let batches = o
        .deletes
        .into_iter()
        .map(|rows| (rows, OutputKind::Deletes))
        .chain(o.rows.into_iter().map(|rows| (rows, OutputKind::Rows)))
        .chain(o.late.into_iter().map(|rows| (rows, OutputKind::Late)));
    out.extend(
        batches
            .filter(|(rows, _)| rows.num_rows() > 0)
            .map(|(rows, kind)| StreamOutput { stream, rows, kind }),
    );
}
