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
mod workers;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use crate::checkpoint::CheckpointStore;
use crate::codec::records::ValueFormat;
use crate::engine::{Catalog, EngineConfig, EventTimeBounds, Pipeline};
use crate::kafka::state::StateTopic;
use crate::kafka::{KafkaConfig, RegistryClient};
use crate::memory::BufferSizes;
use crate::runner::Sink;
use crate::runner::failover::{AttemptStart, FailoverPolicy, run_with_failover};
use crate::runner::{Progress, RunError, RunOptions, RunSummary, Runner, SharedState, WorkerShare};
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
    /// This worker's share of the source partitions, with the query's state
    /// in its Kafka state topic (`crate::runner::shared`); `None`: one
    /// worker, state in `checkpoint_dir`.
    pub share: Option<WorkerShare>,
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
    let mut pipeline = Pipeline::new(&opts.sql, &catalog, &config).map_err(|e| {
        RunError::Setup(anyhow::Error::new(e).context(format!("in {}", opts.sql_origin)))
    })?;
    let bindings = setup::bindings(opts, &pipeline).map_err(RunError::Setup)?;
    let partitions = match opts.share {
        Some(share) => {
            let n = workers::source_partitions(&opts.kafka, &pipeline, &bindings, share)
                .map_err(RunError::Setup)?;
            pipeline
                .group_by_partition(n, &share.owned(n))
                .map_err(|e| RunError::Setup(e.into()))?;
            Some(n)
        }
        None => None,
    };
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
    if opts.share.is_some() && opts.start_fresh_if_no_checkpoint {
        // Each stateless revision would start empty, but the state topic
        // is the query's, not a revision's.
        return Err(RunError::Setup(anyhow::anyhow!(
            "--start-fresh-if-no-checkpoint (upgradeMode: stateless) needs a checkpoint volume; \
             a query with its state in Kafka restores it on every start (upgradeMode: last-state)"
        )));
    }
    if let (Some(_), false) = (opts.share, tables.is_empty()) {
        return Err(RunError::Setup(anyhow::anyhow!(
            "PostgreSQL outputs keep their epochs with a checkpoint volume: a query with its state \
             in Kafka (--workers, --state-store kafka) writes Kafka outputs only"
        )));
    }
    let mut store = match opts.share {
        Some(_) => None,
        // The directory's lock first: a second worker stops here.
        None => Some(CheckpointStore::open(
            &opts.checkpoint_dir,
            opts.checkpoints_to_keep,
        )?),
    };
    if start.start_fresh
        && let Some(store) = store.as_mut()
    {
        let removed = store.start_over()?;
        tracing::warn!(
            removed,
            lineage = store.lineage(),
            "starting fresh: checkpoints deleted, new lineage"
        );
    }
    let lineage = match (&store, opts.share) {
        (Some(store), _) => store.lineage().to_string(),
        (None, Some(share)) => format!("{} run {}", share.label(), run_id()),
        (None, None) => unreachable!("a run without a share has a store"),
    };
    let state_topic = match opts.share {
        Some(share) => {
            let topic = StateTopic::new(opts.kafka.clone(), &opts.name);
            topic.ensure(opts.replication).map_err(RunError::Setup)?;
            tracing::info!(
                worker = %share.label(),
                state_topic = topic.topic(),
                "one worker of several: state per source partition in the state topic"
            );
            Some(topic)
        }
        None => None,
    };
    let transactional_id = match opts.share {
        // Each worker its own: fencing a restarted worker must not fence the others.
        Some(share) => format!("{group}-w{}", share.index),
        None => group.clone(),
    };
    let fresh_start = if start.start_fresh {
        FreshStart::Always
    } else if opts.start_fresh_if_no_checkpoint {
        FreshStart::IfAnotherLineage
    } else {
        FreshStart::Never
    };
    let mut sinks: Vec<Box<dyn Sink>> = vec![Box::new(
        KafkaOutput::new(
            opts.kafka.clone(),
            transactional_id,
            outputs,
            opts.dead_letter_topic.clone(),
            opts.tuning.clone(),
            lineage.clone(),
            fresh_start,
        )
        .with_group(group.clone())
        .with_state_topic(state_topic.as_ref().map(|t| t.topic().to_string())),
    )];
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
            lineage.clone(),
            fresh_start,
        )));
    }
    let source_topics: Vec<String> = bindings.iter().map(|b| b.topic.clone()).collect();
    let source = KafkaInput::new(
        opts.kafka.clone(),
        group.clone(),
        bindings,
        opts.registry.clone(),
        opts.start,
        opts.on_out_of_range,
        opts.bounded,
    )
    .with_buffers(opts.buffers)
    .with_share(opts.share);
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
    let mut runner = Runner::new(pipeline, vec![Box::new(source)], sinks, store, run_opts);
    if let (Some(share), Some(partitions), Some(topic)) = (opts.share, partitions, state_topic) {
        runner = runner.with_shared_state(SharedState {
            share,
            partitions,
            store: Box::new(workers::KafkaPartitionStore {
                topic,
                config: opts.kafka.clone(),
                group,
                source_topics,
            }),
            writer: lineage,
        });
    }
    runner.run(progress, None)
}

/// A random-enough id of one run, to tell its state writes from others'.
fn run_id() -> String {
    use sha2::{Digest, Sha256};
    let seed = format!(
        "{:?}/{}/{:?}",
        std::time::SystemTime::now(),
        std::process::id(),
        std::time::Instant::now()
    );
    Sha256::digest(seed.as_bytes())
        .iter()
        .take(6)
        .map(|b| format!("{b:02x}"))
        .collect()
}
