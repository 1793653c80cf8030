//! `tickflow-worker query` against Kafka: reads source topics, runs the SQL,
//! writes each stream to its topic, exactly once.
//!
//! Wiring around the run loop: [`setup`] binds tables to topics and streams
//! to output topics (encoders, registry subjects, topic creation); the
//! [`Runner`] does restore → poll → engine → transactional sink → checkpoint
//! → commit (docs/exactly-once.md); [`run_with_failover`] rebuilds
//! everything from the last checkpoint when the Kafka client gets stuck or
//! commits keep failing.

mod setup;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use crate::checkpoint::CheckpointStore;
use crate::codec::records::ValueFormat;
use crate::engine::{Catalog, EngineConfig, EventTimeBounds, Pipeline};
use crate::kafka::{KafkaConfig, RegistryClient};
use crate::memory::BufferSizes;
use crate::runner::Sink;
use crate::runner::failover::{AttemptStart, FailoverPolicy, run_with_failover};
use crate::runner::{Progress, RunError, RunOptions, RunSummary, Runner};
use crate::runtime::StatusHandle;
use crate::runtime::web::WebView;
use crate::sink::kafka::{FreshStart, KafkaOutput, ProducerTuning};
use crate::sink::postgres::{self, PostgresConnection, PostgresOutput};
use crate::sink::web::WebTee;
use crate::source::kafka::{KafkaInput, OnOutOfRange, StartFrom};

/// Options of a Kafka query run.
#[derive(Clone, Debug)]
pub struct KafkaQueryOptions {
    /// Query name: consumer group and transactional id are `tickflow-<name>`.
    pub name: String,
    pub sql: String,
    pub sql_origin: String,
    pub kafka: KafkaConfig,
    pub registry: Option<RegistryClient>,
    /// Source table → topic (default: the table's topic in the catalog).
    pub inputs: BTreeMap<String, String>,
    pub input_format: ValueFormat,
    /// Stream → topic (default: the stream name with `_` → `-`).
    pub outputs: BTreeMap<String, String>,
    /// Stream → PostgreSQL table (`STREAM=postgres:TABLE`); such a stream
    /// writes no topic unless bound to one as well.
    pub postgres_outputs: BTreeMap<String, String>,
    pub postgres: Option<PostgresConnection>,
    /// Stream → topic for late source rows.
    pub late_outputs: BTreeMap<String, String>,
    pub output_format: ValueFormat,
    pub dead_letter_topic: Option<String>,
    /// Partitions of output topics created by the worker.
    pub output_partitions: i32,
    pub replication: i32,
    pub tuning: ProducerTuning,
    pub start: StartFrom,
    /// What to do with a position outside its partition's offsets.
    pub on_out_of_range: OnOutOfRange,
    /// Stop at the partitions' end offsets as of start-up (a backfill).
    pub bounded: bool,
    pub checkpoint_dir: PathBuf,
    pub checkpoint_interval: Duration,
    /// Commit output this soon after it is produced (bounds result latency).
    pub max_output_delay: Duration,
    pub checkpoints_to_keep: usize,
    /// Delete the checkpoints and start a new lineage; also start when the
    /// group holds offsets committed by another history.
    pub start_fresh: bool,
    /// Start from `start` when the directory holds no checkpoint, even if
    /// the group holds offsets of another history (the operator's stateless
    /// upgrade mode: each revision starts empty). Without it that is
    /// refused (docs/exactly-once.md).
    pub start_fresh_if_no_checkpoint: bool,
    /// Failovers in a row (without a committed checkpoint between them)
    /// before the run gives up; 0: fail at the first error.
    pub max_failovers: u32,
    pub allowed_lateness: Duration,
    pub event_time_bounds: EventTimeBounds,
    pub idle_timeout: Duration,
    pub max_batch_records: usize,
    /// Engine threads and key groups.
    pub parallelism: crate::app::Parallelism,
    /// Consumer prefetch, producer queue and the epoch's pending output, all
    /// from one memory budget (`crate::memory`).
    pub buffers: BufferSizes,
    pub status: StatusHandle,
    pub stop: Arc<AtomicBool>,
}

/// Abandoned (stuck) Kafka clients a process may hold and still fail over
/// in-process; past this it exits and leaves the restart to its supervisor,
/// so a client that never comes back cannot pile up.
const MAX_STUCK_CLIENTS: usize = 2;

/// Runs the query, failing over to the last checkpoint in-process when a
/// new Kafka client may help (see [`run_with_failover`]).
pub fn run_kafka_query(opts: &KafkaQueryOptions) -> Result<RunSummary, RunError> {
    run_kafka_query_with_web(opts, None)
}

/// [`run_kafka_query`], with the results also shown in a live web view.
pub fn run_kafka_query_with_web(
    opts: &KafkaQueryOptions,
    web: Option<&WebView>,
) -> Result<RunSummary, RunError> {
    let clients_left = || crate::sink::kafka::stuck_calls() <= MAX_STUCK_CLIENTS;
    let policy = FailoverPolicy {
        max_failovers: opts.max_failovers,
        clients_left: &clients_left,
        stop: &opts.stop,
        status: &opts.status,
    };
    run_with_failover(&policy, opts.start_fresh, |start, progress| {
        run_attempt(opts, web, start, progress)
    })
}

/// One attempt: everything built anew, as a restarted process would.
fn run_attempt(
    opts: &KafkaQueryOptions,
    web: Option<&WebView>,
    start: &AttemptStart,
    progress: &mut Progress,
) -> Result<RunSummary, RunError> {
    opts.kafka
        .check_connection(Duration::from_secs(15))
        .map_err(RunError::Setup)?;
    let catalog = Catalog::builtin();
    let config = opts.parallelism.apply(EngineConfig {
        allowed_lateness: opts.allowed_lateness,
        // A bounded run reads every partition to its end and finishes each
        // there: a partition the consumer has not fetched for a while still
        // has rows, and excluding it as idle would make them late.
        idle_timeout: (!opts.bounded).then_some(opts.idle_timeout),
        event_time_bounds: opts.event_time_bounds,
        ..EngineConfig::default()
    });
    let pipeline = Pipeline::new(&opts.sql, &catalog, &config).map_err(|e| {
        RunError::Setup(anyhow::Error::new(e).context(format!("in {}", opts.sql_origin)))
    })?;
    let bindings = setup::bindings(opts, &pipeline).map_err(RunError::Setup)?;
    setup::check_declared_avro_tables(opts, &pipeline, &bindings).map_err(RunError::Setup)?;
    let outputs = setup::outputs(opts, &pipeline).map_err(RunError::Setup)?;
    let tables = postgres::targets(&pipeline, &opts.postgres_outputs)
        .map_err(|e| RunError::Setup(anyhow::Error::msg(e)))?;
    if let (false, Some(connection)) = (tables.is_empty(), &opts.postgres)
        && !postgres::wait_until_reachable(connection, &opts.status, &opts.stop)
    {
        return Err(RunError::Setup(anyhow::anyhow!(
            "stop requested while waiting for PostgreSQL"
        )));
    }
    let group = format!("tickflow-{}", opts.name);
    // The directory's lock first: a second worker stops here.
    let mut store = CheckpointStore::open(&opts.checkpoint_dir, opts.checkpoints_to_keep)?;
    if start.start_fresh {
        let removed = store.start_over()?;
        tracing::warn!(
            removed,
            lineage = store.lineage(),
            "starting fresh: checkpoints deleted, new lineage"
        );
    }
    let fresh_start = if start.start_fresh {
        FreshStart::Always
    } else if opts.start_fresh_if_no_checkpoint {
        FreshStart::IfAnotherLineage
    } else {
        FreshStart::Never
    };
    let mut sinks: Vec<Box<dyn Sink>> = vec![Box::new(KafkaOutput::new(
        opts.kafka.clone(),
        group.clone(),
        outputs,
        opts.dead_letter_topic.clone(),
        opts.tuning.clone(),
        store.lineage().to_string(),
        fresh_start,
    ))];
    if !tables.is_empty() {
        let connection = opts.postgres.clone().ok_or_else(|| {
            RunError::Setup(anyhow::anyhow!(
                "PostgreSQL outputs need --postgres-url (TICKFLOW_POSTGRES_URL)"
            ))
        })?;
        sinks.push(Box::new(PostgresOutput::new(
            connection,
            opts.name.clone(),
            tables,
            store.lineage().to_string(),
            fresh_start,
        )));
    }
    let source = KafkaInput::new(
        opts.kafka.clone(),
        group,
        bindings,
        opts.registry.clone(),
        opts.start,
        opts.on_out_of_range,
        opts.bounded,
    )
    .with_buffers(opts.buffers);
    if let Some(web) = web {
        web.configure(pipeline.streams());
    }
    WebTee::wrap_first(&mut sinks, web);
    let mut run_opts = RunOptions::new(Arc::clone(&opts.stop), opts.status.clone());
    run_opts.max_pending_bytes = opts.buffers.pending_output_bytes;
    run_opts.checkpoint_interval = opts.checkpoint_interval;
    run_opts.max_output_delay = Some(opts.max_output_delay);
    run_opts.max_batch_records = opts.max_batch_records;
    run_opts.start_fresh = start.start_fresh;
    run_opts.start_positions = start.start_positions.clone();
    let mut runner = Runner::new(
        pipeline,
        vec![Box::new(source)],
        sinks,
        Some(store),
        run_opts,
    );
    runner.run(progress, None)
}
