//! `tickflow-worker query` over files: runs a SQL file over replay files.
//!
//! Wiring around the run loop: the inputs are [`FileInputs`] (batches of a
//! fixed number of records, so a resumed run sees the batches an
//! uninterrupted one would), the outputs [`FileOutputs`] (one file per
//! stream, late rows, dead letters). The [`Runner`] checkpoints (engine
//! state + input positions + committed output lengths) on an interval and on
//! SIGTERM; a restart restores the newest checkpoint and produces exactly
//! the output an uninterrupted run would have.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use anyhow::bail;

use crate::checkpoint::CheckpointStore;
use crate::engine::{Catalog, EngineConfig, EventTimeBounds, Pipeline};
use crate::runner::Sink;
use crate::runner::{Progress, RowKind, RunError, RunOptions, RunSummary, Runner};
use crate::runtime::StatusHandle;
use crate::runtime::web::WebView;
use crate::sink::epochs::FreshStart;
use crate::sink::file::{FileContent, FileOutput, FileOutputs, dead_letter_schema};
use crate::sink::postgres::{self, PostgresConnection, PostgresOutput, PostgresTarget};
use crate::sink::web::WebTee;
use crate::source::file::FileInputs;

/// Options of a replay run.
#[derive(Clone, Debug)]
pub struct QueryOptions {
    /// The SQL text and where it came from (for messages).
    pub sql: String,
    pub sql_origin: String,
    /// Source table → replay file.
    pub inputs: Vec<(String, PathBuf)>,
    /// Stream → output file.
    pub outputs: Vec<(String, PathBuf)>,
    /// Output file for streams without an explicit one: `<dir>/<stream>.jsonl`.
    pub output_dir: Option<PathBuf>,
    /// Stream → file for late source rows (otherwise late rows are counted only).
    pub late_outputs: Vec<(String, PathBuf)>,
    /// Malformed input records, as JSON lines with their reason.
    pub dead_letter: Option<PathBuf>,
    pub checkpoint_dir: Option<PathBuf>,
    pub checkpoint_interval: Duration,
    pub checkpoints_to_keep: usize,
    /// Ignore existing checkpoints (e.g. after an incompatible query change).
    pub start_fresh: bool,
    /// Records per batch (JSON lines); Avro files batch by container block.
    pub batch_size: usize,
    /// Threads decoding JSON lines (`None`: the CPUs the worker may use,
    /// at most 4).
    pub decode_threads: Option<usize>,
    /// Engine threads and key groups.
    pub parallelism: super::Parallelism,
    pub allowed_lateness: Duration,
    pub event_time_bounds: EventTimeBounds,
    /// Where `STREAM=postgres:TABLE` outputs go.
    pub postgres: Option<PostgresConnection>,
    /// The query's name (its row in the PostgreSQL offsets table).
    pub name: String,
    /// What the run reports (`/status`, `/metrics`, the web view).
    pub status: StatusHandle,
    /// The live web view, shown the results as they are written.
    pub web: Option<WebView>,
    /// Set by SIGTERM: take a final checkpoint and stop.
    pub stop: Arc<AtomicBool>,
}

impl QueryOptions {
    pub fn new(sql: String, sql_origin: String) -> Self {
        Self {
            sql,
            sql_origin,
            inputs: vec![],
            outputs: vec![],
            output_dir: None,
            late_outputs: vec![],
            dead_letter: None,
            checkpoint_dir: None,
            checkpoint_interval: Duration::from_secs(10),
            checkpoints_to_keep: 3,
            start_fresh: false,
            batch_size: 8192,
            decode_threads: None,
            parallelism: super::Parallelism::default(),
            allowed_lateness: Duration::from_secs(1),
            event_time_bounds: EventTimeBounds::default(),
            postgres: None,
            name: "query".into(),
            status: StatusHandle::new("replay"),
            web: None,
            stop: Arc::new(AtomicBool::new(false)),
        }
    }
}

/// Runs a replay to the end of its inputs (or until `stop`).
pub fn run_query(opts: &QueryOptions) -> Result<RunSummary, RunError> {
    let catalog = Catalog::builtin();
    let config = opts.parallelism.apply(EngineConfig {
        allowed_lateness: opts.allowed_lateness,
        idle_timeout: None,
        event_time_bounds: opts.event_time_bounds,
        ..EngineConfig::default()
    });
    let pipeline = Pipeline::new(&opts.sql, &catalog, &config).map_err(|e| {
        RunError::Setup(anyhow::Error::new(e).context(format!("in {}", opts.sql_origin)))
    })?;
    let inputs = inputs(opts, &pipeline).map_err(RunError::Setup)?;
    let outputs = outputs(opts, &pipeline).map_err(RunError::Setup)?;
    let tables = postgres_targets(opts, &pipeline).map_err(RunError::Setup)?;
    let mut store = match &opts.checkpoint_dir {
        Some(dir) => Some(CheckpointStore::open(dir, opts.checkpoints_to_keep)?),
        None => None,
    };
    let mut sinks: Vec<Box<dyn Sink>> = vec![Box::new(FileOutputs::new(outputs))];
    if !tables.is_empty() {
        let (Some(connection), Some(store)) = (&opts.postgres, &mut store) else {
            return Err(RunError::Setup(anyhow::anyhow!(
                "PostgreSQL outputs need --postgres-url (TICKFLOW_POSTGRES_URL) and --checkpoint-dir: exactly-once output depends on both"
            )));
        };
        if opts.start_fresh {
            store.start_over()?;
        }
        sinks.push(Box::new(PostgresOutput::new(
            connection.clone(),
            opts.name.clone(),
            tables,
            store.lineage().to_string(),
            FreshStart::from(opts.start_fresh),
        )));
    }
    if let Some(web) = &opts.web {
        web.configure(pipeline.streams());
    }
    WebTee::wrap_first(&mut sinks, opts.web.as_ref());
    let mut run_opts = RunOptions::new(Arc::clone(&opts.stop), opts.status.clone());
    run_opts.checkpoint_interval = opts.checkpoint_interval;
    run_opts.start_fresh = opts.start_fresh;
    run_opts.max_batch_records = opts.batch_size;
    let mut runner = Runner::new(pipeline, vec![Box::new(inputs)], sinks, store, run_opts);
    runner.run(&mut Progress::default(), None)
}

/// Every table a stream reads needs an `--input`; no input may be unknown
/// (built-in tables and the SQL's own `CREATE TABLE`s are known).
fn inputs(opts: &QueryOptions, pipeline: &Pipeline) -> anyhow::Result<FileInputs> {
    let catalog = pipeline.catalog();
    for (table, path) in &opts.inputs {
        if catalog.get(table).is_none() {
            bail!(
                "--input {table}={}: unknown source table `{table}` (known: {})",
                path.display(),
                catalog.names().join(", ")
            );
        }
    }
    let needed = pipeline.source_names();
    for table in &needed {
        if !opts.inputs.iter().any(|(t, _)| t == table) {
            bail!("a stream reads `{table}` but no --input {table}=PATH was given");
        }
    }
    let mut files = Vec::new();
    for (table, path) in &opts.inputs {
        match pipeline.source(table) {
            Some(def) => files.push((def.clone(), path.clone())),
            None => {
                tracing::warn!(%table, "no stream reads this input; skipping {}", path.display())
            }
        }
    }
    let decoders = opts
        .decode_threads
        .unwrap_or_else(crate::source::file::decoder_threads);
    Ok(FileInputs::open(files, opts.batch_size, decoders)?)
}

/// The `STREAM=postgres:TABLE` outputs.
fn postgres_targets(
    opts: &QueryOptions,
    pipeline: &Pipeline,
) -> anyhow::Result<Vec<PostgresTarget>> {
    let bindings: Vec<(String, String)> = opts
        .outputs
        .iter()
        .filter_map(|(stream, p)| Some((stream.clone(), postgres::bound_table(p)?)))
        .collect();
    postgres::targets(pipeline, bindings.iter().map(|(s, t)| (s, t))).map_err(anyhow::Error::msg)
}

/// One output file per stream, plus late-row and dead-letter files.
fn outputs(opts: &QueryOptions, pipeline: &Pipeline) -> anyhow::Result<Vec<FileOutput>> {
    pipeline.check_stream_names(
        opts.outputs
            .iter()
            .chain(&opts.late_outputs)
            .map(|(n, _)| n),
    )?;
    let streams = pipeline.streams();
    let mut outputs = Vec::new();
    for s in streams {
        let path = match opts.outputs.iter().find(|(n, _)| n == &s.name) {
            Some((_, p)) if postgres::bound_table(p).is_some() => continue,
            Some((_, p)) => p.clone(),
            // A stream other streams read gets a file only where bound.
            None if s.intermediate => continue,
            None => match &opts.output_dir {
                Some(dir) => dir.join(format!("{}.jsonl", s.name)),
                None => bail!(
                    "stream `{0}` has no output: add --output {0}=PATH or --output-dir DIR",
                    s.name
                ),
            },
        };
        outputs.push(FileOutput {
            content: FileContent::Stream {
                stream: s.name.clone(),
                kind: RowKind::Results,
            },
            path,
            schema: Arc::clone(&s.output_schema),
            key_columns: s.key_columns.clone(),
        });
    }
    for (name, path) in &opts.late_outputs {
        let stream = streams
            .iter()
            .find(|s| &s.name == name)
            .expect("checked above");
        let def = pipeline.input_def(stream);
        outputs.push(FileOutput {
            content: FileContent::Stream {
                stream: name.clone(),
                kind: RowKind::Late,
            },
            path: path.clone(),
            schema: Arc::clone(&def.schema),
            key_columns: def.key_columns.clone(),
        });
    }
    if let Some(path) = &opts.dead_letter {
        outputs.push(FileOutput {
            content: FileContent::DeadLetters,
            path: path.clone(),
            schema: dead_letter_schema(),
            key_columns: Vec::new(),
        });
    }
    Ok(outputs)
}
