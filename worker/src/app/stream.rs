//! `tickflow-worker query` against Kafka: reads source topics, runs the SQL,
//! writes each stream to its topic, exactly once.
//!
//! One loop, one thread: poll → decode → engine → transactional producer. A
//! checkpoint closes an epoch: flush the epoch's output, write the checkpoint
//! (state, source offsets, the epoch's output records), then commit the Kafka
//! transaction together with the offsets tagged with the epoch. On restart the
//! newest checkpoint is restored, and if its epoch's commit is missing its
//! records are sent again. See docs/exactly-once.md.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde::Serialize;

use crate::checkpoint::{Checkpoint, CheckpointStore};
use crate::codec::SourceTable;
use crate::codec::records::{KeyExtractor, RowEncoder, ValueFormat};
use crate::codec::schema::arrow_to_avro;
use crate::engine::{EngineConfig, Pipeline, SourceDef, StreamOutput};
use crate::kafka::registry::value_subject;
use crate::kafka::{KafkaConfig, RegistryClient};
use crate::runtime::{CheckpointStatus, StatusHandle, WorkerState};
use crate::sink::kafka::{InjectedStall, KafkaSink, KafkaSinkError, OutputTopic, ProducerTuning};
use crate::source::kafka::{KafkaSource, StartFrom, TopicBinding, TopicPartition};

/// Name of the Kafka source and sink in checkpoints.
const KAFKA: &str = "kafka";

/// Options of a Kafka query run.
#[derive(Clone, Debug)]
pub struct KafkaQueryOptions {
    /// Query name: consumer group and transactional id are `tickflow-<name>`.
    pub name: String,
    pub sql: String,
    pub sql_origin: String,
    pub kafka: KafkaConfig,
    pub registry: Option<RegistryClient>,
    /// Source table → topic (default: the table's standard topic).
    pub inputs: BTreeMap<String, String>,
    pub input_format: ValueFormat,
    /// Stream → topic (default: the stream name with `_` → `-`).
    pub outputs: BTreeMap<String, String>,
    /// Stream → topic for late source rows.
    pub late_outputs: BTreeMap<String, String>,
    pub output_format: ValueFormat,
    pub dead_letter_topic: Option<String>,
    /// Partitions of output topics created by the worker.
    pub output_partitions: i32,
    pub replication: i32,
    pub tuning: ProducerTuning,
    pub start: StartFrom,
    /// Stop at the partitions' end offsets as of start-up (a backfill).
    pub bounded: bool,
    pub checkpoint_dir: PathBuf,
    pub checkpoint_interval: Duration,
    /// Commit output this soon after it is produced (bounds result latency).
    pub max_output_delay: Duration,
    pub checkpoints_to_keep: usize,
    pub start_fresh: bool,
    /// Failovers in a row (without a committed checkpoint between them)
    /// before the run gives up; 0: fail at the first error.
    pub max_failovers: u32,
    pub allowed_lateness: Duration,
    pub idle_timeout: Duration,
    pub max_batch_records: usize,
    pub status: StatusHandle,
    pub stop: Arc<AtomicBool>,
}

/// What a run did.
#[derive(Debug, Default, Serialize)]
pub struct KafkaQuerySummary {
    pub records_in: u64,
    pub rows_out: BTreeMap<String, u64>,
    pub late_events: BTreeMap<String, u64>,
    pub dead_letters: BTreeMap<String, u64>,
    pub checkpoints_written: u64,
    /// The checkpoint the last (re)start restored; the counts above are
    /// since that start.
    pub restored_from: Option<u64>,
    /// Restarts from the last checkpoint within this process.
    pub failovers: u32,
    /// The restored epoch's output had not been committed and was sent again.
    pub recovered_epoch: bool,
    pub stopped: bool,
    pub elapsed_ms: u64,
    /// From the first record read to the end (start-up excluded).
    pub processing_ms: u64,
    /// Result rows' delay from emission (the watermark passing the window
    /// end) to the commit that made them visible.
    pub commit_delay: Option<crate::sink::kafka::CommitDelays>,
}

/// Default sink topic of a stream.
pub fn default_topic(stream: &str) -> String {
    stream.replace('_', "-")
}

/// Abandoned (stuck) Kafka clients a process may hold and still fail over
/// in-process; past this it exits and leaves the restart to its supervisor,
/// so a client that never comes back cannot pile up.
const MAX_STUCK_CLIENTS: usize = 2;

/// Runs the query; on a Kafka failure a new producer may not have (a stuck
/// client, commits failing past their retries) it fails over: everything is
/// rebuilt and restored from the last checkpoint, as a restarted process
/// would, after an exponential backoff. `max_failovers` failovers in a row
/// without a committed checkpoint in between end the run with the error.
pub fn run_kafka_query(opts: &KafkaQueryOptions) -> anyhow::Result<KafkaQuerySummary> {
    let mut failovers = 0;
    let mut in_a_row = 0;
    let mut start_fresh = opts.start_fresh;
    // Where the first attempt started, when it restored nothing: a failover
    // before the first checkpoint starts there again (not at a re-resolved
    // `--start-from latest`, which would skip what arrived meanwhile).
    let mut start_positions = None;
    loop {
        let mut progress = Progress::default();
        let err = match run_attempt(
            opts,
            start_fresh,
            start_positions.as_ref(),
            &Counters::of(&opts.status),
            &mut progress,
        ) {
            Ok(mut summary) => {
                summary.failovers = failovers;
                return Ok(summary);
            }
            Err(e) => e,
        };
        if start_positions.is_none() {
            start_positions = progress.start_positions.take();
        }
        // A checkpoint on disk may hold output whose commit is in doubt:
        // from now on the run must restore, never start over.
        if progress.checkpoint_stored {
            start_fresh = false;
            start_positions = None;
        }
        if progress.checkpoint_committed {
            in_a_row = 0;
        }
        let transient = match err.downcast_ref::<KafkaSinkError>() {
            Some(e) => e.is_transient() && crate::sink::kafka::stuck_calls() <= MAX_STUCK_CLIENTS,
            // Start-up worked before: failing now (other than restoring the
            // checkpoint) means the cluster is still recovering, e.g. the
            // broker is not back yet.
            None => failovers > 0 && !progress.running && !progress.restoring,
        };
        if !transient || in_a_row >= opts.max_failovers || opts.stop.load(Ordering::Relaxed) {
            return Err(err);
        }
        in_a_row += 1;
        failovers += 1;
        let delay = Duration::from_secs(1 << (in_a_row - 1).min(5));
        tracing::warn!(
            failovers,
            "{err:#}; restarting from the last checkpoint in {delay:?}"
        );
        opts.status.update(|s| {
            s.state = WorkerState::Recovering;
            s.failovers = failovers;
            s.last_error = Some(format!("{err:#}"));
        });
        let until = Instant::now() + delay;
        while Instant::now() < until {
            if opts.stop.load(Ordering::Relaxed) {
                return Err(err.context("stop requested while waiting to fail over"));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// How far a run attempt got, for the failover decision.
#[derive(Default)]
struct Progress {
    /// Loading the checkpoint (a failure here repeats on every attempt).
    restoring: bool,
    running: bool,
    checkpoint_stored: bool,
    checkpoint_committed: bool,
    /// The source's resolved start, when nothing was restored.
    start_positions: Option<BTreeMap<TopicPartition, i64>>,
}

/// The status counters as the previous attempts left them: an attempt
/// counts from zero, and `/status` and `/metrics` add these, so counters do
/// not go back after a failover.
struct Counters {
    records_in: BTreeMap<String, u64>,
    bytes_in: BTreeMap<String, u64>,
    records_out: BTreeMap<String, u64>,
    dead_letters: BTreeMap<String, u64>,
}

impl Counters {
    fn of(status: &StatusHandle) -> Self {
        let s = status.get();
        Self {
            records_in: s.records_in,
            bytes_in: s.bytes_in,
            records_out: s.records_out,
            dead_letters: s.dead_letters,
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

fn run_attempt(
    opts: &KafkaQueryOptions,
    start_fresh: bool,
    start_positions: Option<&BTreeMap<TopicPartition, i64>>,
    counters: &Counters,
    progress: &mut Progress,
) -> anyhow::Result<KafkaQuerySummary> {
    let started = Instant::now();
    let status = &opts.status;
    opts.kafka.check_connection(Duration::from_secs(15))?;
    let sources = SourceDef::builtin();
    let config = EngineConfig {
        allowed_lateness: opts.allowed_lateness,
        idle_timeout: Some(opts.idle_timeout),
    };
    let mut pipeline = Pipeline::new(&opts.sql, &sources, &config)
        .with_context(|| format!("in {}", opts.sql_origin))?;

    // Sources.
    for table in opts.inputs.keys() {
        if SourceTable::from_table_name(table).is_none() {
            bail!(
                "--input {table}=…: unknown source table `{table}` (known: market_ticks, order_events, book_updates)"
            );
        }
    }
    let mut bindings = Vec::new();
    for table in pipeline.source_names() {
        let st = SourceTable::from_table_name(&table).expect("planner only accepts known tables");
        bindings.push(TopicBinding {
            topic: opts
                .inputs
                .get(&table)
                .cloned()
                .unwrap_or_else(|| st.topic().to_string()),
            table,
            format: opts.input_format,
            arrow_schema: st.arrow_schema(),
            avro_schema: st.avro_schema().clone(),
        });
    }

    // Outputs: one topic per stream, plus optional late-row topics.
    let streams: Vec<_> = pipeline
        .streams()
        .iter()
        .map(|s| {
            (
                s.name.clone(),
                Arc::clone(&s.output_schema),
                s.key_columns.clone(),
                s.source.clone(),
            )
        })
        .collect();
    for name in opts.outputs.keys().chain(opts.late_outputs.keys()) {
        if !streams.iter().any(|(s, ..)| s == name) {
            let known: Vec<_> = streams.iter().map(|(s, ..)| s.as_str()).collect();
            bail!(
                "output for unknown stream `{name}` (the SQL defines: {})",
                known.join(", ")
            );
        }
    }
    let mut outputs = Vec::new();
    let mut stream_output = Vec::new();
    let mut late_output = Vec::new();
    for (name, schema, keys, source) in &streams {
        let topic = opts
            .outputs
            .get(name)
            .cloned()
            .unwrap_or_else(|| default_topic(name));
        let encoder = encoder_for(opts, &topic, schema, name)?;
        stream_output.push(outputs.len());
        outputs.push(OutputTopic {
            name: name.clone(),
            keys: KeyExtractor::new(schema, keys),
            topic,
            encoder,
        });
        late_output.push(match opts.late_outputs.get(name) {
            Some(topic) => {
                let st = SourceTable::from_table_name(source).expect("known table");
                let encoder = match opts.output_format {
                    ValueFormat::Json => RowEncoder::json(),
                    ValueFormat::Avro => {
                        let reg = registry(opts)?;
                        let id = reg.register(&value_subject(topic), st.avro_schema())?;
                        RowEncoder::avro(st.arrow_schema(), st.avro_schema(), id)?
                    }
                };
                outputs.push(OutputTopic {
                    name: format!("{name} (late rows)"),
                    keys: KeyExtractor::new(&st.arrow_schema(), &["symbol".to_string()]),
                    topic: topic.clone(),
                    encoder,
                });
                Some(outputs.len() - 1)
            }
            None => None,
        });
    }
    let mut topics: Vec<String> = outputs.iter().map(|o| o.topic.clone()).collect();
    topics.extend(opts.dead_letter_topic.clone());
    crate::kafka::admin::ensure_topics(
        &opts.kafka,
        &topics,
        opts.output_partitions,
        opts.replication,
    )?;

    // Restore.
    status.set_state(WorkerState::Recovering);
    progress.restoring = true;
    let store = CheckpointStore::open(&opts.checkpoint_dir, opts.checkpoints_to_keep)?;
    let restored = if start_fresh { None } else { store.latest()? };
    let mut summary = KafkaQuerySummary::default();
    let mut positions = BTreeMap::new();
    let mut restored_epoch = None;
    let mut restored_pending = None;
    if let Some(mut cp) = restored {
        tracing::info!(id = cp.id, "restoring checkpoint");
        summary.restored_from = Some(cp.id);
        if let Some(p) = cp.sources.get(KAFKA) {
            positions = positions_from_json(p)?;
        }
        restored_epoch = Some(cp.id);
        restored_pending = cp.sink_states.remove(KAFKA);
        pipeline.restore(cp.engine).map_err(|e| {
            anyhow::anyhow!(
                "{e}\nThe checkpoint in {} was taken for a different query. Start over with --start-fresh \
                 (upgradeMode: stateless), or restore the previous SQL.",
                opts.checkpoint_dir.display()
            )
        })?;
    } else if let Some(p) = start_positions {
        positions = p.clone();
    }
    progress.restoring = false;
    let group = format!("tickflow-{}", opts.name);
    let mut source = KafkaSource::open(
        &opts.kafka,
        &group,
        bindings,
        opts.registry.clone(),
        &positions,
        opts.start,
        opts.bounded,
    )?;
    let counts: Vec<(String, usize)> = source
        .partition_counts()
        .map(|(t, n)| (t.to_string(), n))
        .collect();
    for (table, n) in counts {
        pipeline.declare_partitions(&table, n);
    }
    if summary.restored_from.is_none() {
        progress.start_positions = Some(source.positions());
    }
    let mut sink = KafkaSink::open(
        &opts.kafka,
        &group,
        outputs,
        opts.dead_letter_topic.clone(),
        &opts.tuning,
    )?;
    if let Some(epoch) = restored_epoch {
        summary.recovered_epoch = sink.recover(
            epoch,
            restored_pending.as_ref(),
            source.consumer(),
            &group,
            &source.positions(),
        )?;
        if summary.recovered_epoch {
            tracing::warn!(
                epoch,
                "the restored epoch's output was not committed: sent it again"
            );
        }
    }
    if !summary.recovered_epoch {
        // Re-commit the starting offsets (tagged with the restored epoch, or 0)
        // in an empty transaction: it changes nothing, and the coordinator
        // lookups it does are not paid for by the first window's rows.
        sink.commit(
            restored_epoch.unwrap_or(0),
            source.consumer(),
            &source.positions(),
        )?;
    }
    status.set_state(WorkerState::Running);
    progress.running = true;

    let mut next_epoch = store.next_id()?;
    let mut last_checkpoint = Instant::now();
    let mut oldest_uncommitted: Option<Instant> = None;
    let mut last_tick = Instant::now();
    let mut finished: Vec<(String, i32)> = Vec::new();
    let mut out: Vec<StreamOutput> = Vec::new();
    let mut records_out: BTreeMap<String, u64> = BTreeMap::new();
    let mut registry_backoff = Duration::from_millis(200);
    // Kafka unreachable: since when, last logged, last reported.
    let mut broker_trouble: Option<(Instant, Instant, Instant)> = None;

    let mut checkpoint = |pipeline: &mut Pipeline,
                          source: &KafkaSource,
                          sink: &mut KafkaSink,
                          summary: &mut KafkaQuerySummary|
     -> anyhow::Result<()> {
        // No flush first: the epoch's records are in the checkpoint, and the
        // commit below waits for their delivery (or fails, and they are re-sent).
        let t0 = Instant::now();
        let epoch = next_epoch;
        let cp = Checkpoint {
            id: epoch,
            created_at_ms: super::now_ms(),
            sources: BTreeMap::from([(KAFKA.to_string(), positions_to_json(&source.positions()))]),
            sinks: BTreeMap::from([(
                KAFKA.to_string(),
                serde_json::json!({ "epoch": epoch, "pending_records": sink.pending_records() }),
            )]),
            sink_states: BTreeMap::from([(KAFKA.to_string(), sink.pending_batch())]),
            engine: pipeline.snapshot()?,
        };
        let nth = summary.checkpoints_written + 1;
        crash_point("before-checkpoint", nth);
        let info = store.write(&cp)?;
        progress.checkpoint_stored = true;
        crash_point("after-checkpoint", nth);
        if let Some(stall) = stall_point(nth) {
            sink.inject_stall(stall);
        }
        sink.commit(epoch, source.consumer(), &source.positions())?;
        progress.checkpoint_committed = true;
        crash_point("after-commit", nth);
        next_epoch += 1;
        summary.checkpoints_written += 1;
        tracing::debug!(
            id = info.id,
            bytes = info.bytes,
            write_ms = info.duration.as_millis() as u64,
            total_ms = t0.elapsed().as_millis() as u64,
            "checkpoint committed"
        );
        status.update(|s| {
            s.checkpoints += 1;
            s.last_checkpoint = Some(CheckpointStatus {
                id: info.id,
                time_ms: info.created_at_ms,
                bytes: info.bytes,
                duration_ms: info.duration.as_millis() as u64,
            });
        });
        Ok(())
    };

    let mut last_status = Instant::now();
    let mut first_record: Option<Instant> = None;
    loop {
        if opts.stop.load(Ordering::Relaxed) {
            tracing::info!("stop requested: taking a final checkpoint");
            summary.stopped = true;
            status.set_state(WorkerState::Stopping);
            break;
        }
        let polled = source.poll(opts.max_batch_records, Duration::from_millis(100))?;
        if polled.records > 0 {
            first_record.get_or_insert_with(Instant::now);
        }
        for bad in &polled.bad {
            sink.dead_letter(bad)?;
            *summary
                .dead_letters
                .entry(bad.reason.to_string())
                .or_default() += 1;
            tracing::warn!(topic = %bad.topic, partition = bad.partition, offset = bad.offset, reason = bad.reason, "malformed record: {}", bad.error);
        }
        if !polled.bad.is_empty() {
            oldest_uncommitted.get_or_insert_with(Instant::now);
        }
        summary.records_in += polled.records as u64;
        for b in &polled.batches {
            pipeline.push(&b.table, b.partition as usize, &b.rows, &mut out)?;
        }
        for (table, partition) in source.finished_partitions() {
            if !finished.contains(&(table.clone(), partition)) {
                pipeline.finish_partition(&table, partition as usize, &mut out)?;
                finished.push((table, partition));
            }
        }
        if last_tick.elapsed() >= Duration::from_millis(500) {
            pipeline.tick(&mut out)?;
            last_tick = Instant::now();
        }
        if !out.is_empty() {
            oldest_uncommitted.get_or_insert_with(Instant::now);
        }
        for o in out.drain(..) {
            let target = if o.late {
                late_output[o.stream]
            } else {
                Some(stream_output[o.stream])
            };
            if let Some(idx) = target {
                *records_out
                    .entry(sink.outputs()[idx].topic.clone())
                    .or_default() += o.rows.num_rows() as u64;
                sink.write(idx, &o.rows)?;
            }
        }
        if let Some(e) = &polled.broker_unavailable {
            // One line when the trouble starts, then one every 10 s: an
            // outage polls this every 200 ms.
            let now = Instant::now();
            match &mut broker_trouble {
                None => {
                    tracing::warn!("Kafka connection problem, librdkafka is reconnecting: {e}");
                    broker_trouble = Some((now, now, now));
                }
                Some((since, logged, seen)) => {
                    *seen = now;
                    if logged.elapsed() >= Duration::from_secs(10) {
                        tracing::warn!(
                            "Kafka still unreachable after {:.0?}, reconnecting: {e}",
                            since.elapsed()
                        );
                        *logged = now;
                    }
                }
            }
            status.update(|s| {
                s.state = WorkerState::Degraded;
                s.last_error = Some(e.clone());
            });
            std::thread::sleep(Duration::from_millis(200));
        } else if let Some((since, _, seen)) = broker_trouble
            && (polled.records > 0 || seen.elapsed() >= Duration::from_secs(10))
        {
            // Records, or 10 s without an error (librdkafka does not repeat
            // an error every poll), mean the connection is back.
            tracing::info!("Kafka reachable again after {:.1?}", since.elapsed());
            broker_trouble = None;
        }
        if broker_trouble.is_none() && registry_backoff == Duration::from_millis(200) {
            status.update(|s| {
                if s.state == WorkerState::Degraded {
                    s.state = WorkerState::Running;
                }
            });
        }
        match &polled.registry_unavailable {
            Some(e) => {
                status.update(|s| {
                    s.state = WorkerState::Degraded;
                    s.last_error = Some(e.clone());
                });
                tracing::warn!(
                    "schema registry unavailable, retrying in {registry_backoff:?}: {e}"
                );
                std::thread::sleep(registry_backoff);
                registry_backoff = (registry_backoff * 2).min(Duration::from_secs(10));
            }
            None => {
                if registry_backoff > Duration::from_millis(200) {
                    registry_backoff = Duration::from_millis(200);
                    status.update(|s| s.state = WorkerState::Running);
                }
            }
        }
        let done = source.is_done();
        // Caught up with the input: commit results promptly (latency). With
        // a backlog, commit on the checkpoint interval instead (throughput).
        let caught_up = polled.records < opts.max_batch_records;
        let output_due =
            caught_up && oldest_uncommitted.is_some_and(|t| t.elapsed() >= opts.max_output_delay);
        if done || output_due || last_checkpoint.elapsed() >= opts.checkpoint_interval {
            checkpoint(&mut pipeline, &source, &mut sink, &mut summary)?;
            last_checkpoint = Instant::now();
            oldest_uncommitted = None;
        }
        if last_status.elapsed() >= Duration::from_secs(2) || done {
            publish_status(status, counters, &pipeline, &source, &records_out, &summary);
            last_status = Instant::now();
        }
        if done {
            break;
        }
    }
    if !source.is_done() {
        checkpoint(&mut pipeline, &source, &mut sink, &mut summary)?;
    }
    for s in pipeline.streams() {
        let m = s.metrics();
        summary.rows_out.insert(s.name.clone(), m.rows_out);
        summary.late_events.insert(s.name.clone(), m.late_events);
    }
    publish_status(status, counters, &pipeline, &source, &records_out, &summary);
    status.set_state(WorkerState::Stopped);
    summary.elapsed_ms = started.elapsed().as_millis() as u64;
    summary.processing_ms = first_record.map_or(0, |t| t.elapsed().as_millis() as u64);
    summary.commit_delay = sink.commit_delays();
    Ok(summary)
}

/// Fault injection for the exactly-once tests: `TICKFLOW_CRASH_AT=POINT:N`
/// aborts the process (like `kill -9`) at POINT of this process's N-th
/// checkpoint, so the dangerous moments are hit deterministically.
fn crash_point(point: &str, nth: u64) {
    static SPEC: std::sync::OnceLock<Option<(String, u64)>> = std::sync::OnceLock::new();
    let spec = SPEC.get_or_init(|| {
        let v = std::env::var("TICKFLOW_CRASH_AT").ok()?;
        let (p, n) = v.split_once(':')?;
        Some((p.to_string(), n.parse().ok()?))
    });
    if let Some((p, n)) = spec
        && p == point
        && *n == nth
    {
        eprintln!("TICKFLOW_CRASH_AT: aborting at {point} of checkpoint {nth}");
        std::process::abort();
    }
}

/// Fault injection for the failover tests: `TICKFLOW_STALL_AT=POINT:N`
/// makes the commit of this process's N-th checkpoint hang, once: POINT
/// `commit` before it reaches the broker, `after-commit` once it is done;
/// `commit-timeout` makes its commit call time out instead.
fn stall_point(nth: u64) -> Option<InjectedStall> {
    static FIRED: AtomicBool = AtomicBool::new(false);
    let at = std::env::var("TICKFLOW_STALL_AT").ok()?;
    let (point, n) = at.split_once(':')?;
    let stall = match point {
        "commit" => InjectedStall::BeforeCommit,
        "after-commit" => InjectedStall::AfterCommit,
        "commit-timeout" => InjectedStall::CommitTimesOut,
        _ => return None,
    };
    (n.parse::<u64>().ok()? == nth && !FIRED.swap(true, Ordering::Relaxed)).then_some(stall)
}

fn registry(opts: &KafkaQueryOptions) -> anyhow::Result<&RegistryClient> {
    opts.registry
        .as_ref()
        .ok_or_else(|| anyhow::anyhow!("Avro output needs a schema registry (--schema-registry or SCHEMA_REGISTRY_URL), or use --output-format json"))
}

fn encoder_for(
    opts: &KafkaQueryOptions,
    topic: &str,
    schema: &arrow::datatypes::SchemaRef,
    stream: &str,
) -> anyhow::Result<RowEncoder> {
    Ok(match opts.output_format {
        ValueFormat::Json => RowEncoder::json(),
        ValueFormat::Avro => {
            let avro = arrow_to_avro(schema, stream, "io.tickflow.streams")
                .with_context(|| format!("deriving the Avro schema of stream `{stream}`"))?;
            let id = registry(opts)?
                .register(&value_subject(topic), &avro)
                .with_context(|| format!("registering the schema of stream `{stream}`"))?;
            RowEncoder::avro(Arc::clone(schema), &avro, id)?
        }
    })
}

fn publish_status(
    status: &StatusHandle,
    base: &Counters,
    pipeline: &Pipeline,
    source: &KafkaSource,
    records_out: &BTreeMap<String, u64>,
    summary: &KafkaQuerySummary,
) {
    let lag = source.lag();
    status.update(|s| {
        s.records_in = plus(&base.records_in, &source.records_read());
        s.bytes_in = plus(&base.bytes_in, &source.bytes_read());
        s.records_out = plus(&base.records_out, records_out);
        s.dead_letters = plus(&base.dead_letters, &summary.dead_letters);
        s.lag = lag
            .iter()
            .map(|((t, p), l)| (format!("{t}/{p}"), *l))
            .collect();
        s.watermarks = pipeline
            .source_names()
            .into_iter()
            .filter_map(|n| Some((n.clone(), pipeline.watermark(&n)?)))
            .collect();
        s.late_events = pipeline
            .streams()
            .iter()
            .map(|st| (st.name.clone(), st.metrics().late_events))
            .collect();
    });
}

fn positions_to_json(p: &BTreeMap<TopicPartition, i64>) -> serde_json::Value {
    serde_json::Value::Object(
        p.iter()
            .map(|((t, part), o)| (format!("{t}/{part}"), serde_json::json!(o)))
            .collect(),
    )
}

fn positions_from_json(v: &serde_json::Value) -> anyhow::Result<BTreeMap<TopicPartition, i64>> {
    let obj = v
        .as_object()
        .context("checkpointed Kafka positions are not an object")?;
    let mut out = BTreeMap::new();
    for (k, o) in obj {
        let (t, p) = k
            .rsplit_once('/')
            .context("position key is not topic/partition")?;
        out.insert(
            (t.to_string(), p.parse().context("partition number")?),
            o.as_i64().context("offset is not an integer")?,
        );
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_round_trip_with_slashes_in_topic_names() {
        let p = BTreeMap::from([(("a/b".to_string(), 3), 42i64), (("t".to_string(), 0), 0)]);
        assert_eq!(positions_from_json(&positions_to_json(&p)).unwrap(), p);
        assert_eq!(default_topic("ohlc_5s"), "ohlc-5s");
    }
}
