//! `tickflow-worker query`: runs a SQL file over replay files.
//!
//! Reads every input in batches of a fixed number of records, pushes them
//! through the engine, writes each stream's rows to its output file, and
//! checkpoints (engine state + input positions + committed output length) on
//! an interval and on SIGTERM. A restart restores the newest checkpoint and
//! produces exactly the output an uninterrupted run would have.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use arrow::array::{RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use serde::Serialize;

use crate::checkpoint::{Checkpoint, CheckpointStore};
use crate::engine::{EngineConfig, Pipeline, SourceDef, StreamOutput};
use crate::sink::file::FileSink;
use crate::source::BadRecord;
use crate::source::file::FileSource;

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
    pub allowed_lateness: Duration,
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
            allowed_lateness: Duration::from_secs(1),
            stop: Arc::new(AtomicBool::new(false)),
        }
    }
}

/// What a run did.
#[derive(Debug, Default, Serialize)]
pub struct QuerySummary {
    pub records_in: BTreeMap<String, u64>,
    pub rows_out: BTreeMap<String, u64>,
    pub late_events: BTreeMap<String, u64>,
    pub bad_records: u64,
    pub checkpoints_written: u64,
    pub restored_from: Option<u64>,
    /// Stopped by a signal before the end of the input.
    pub stopped: bool,
    pub elapsed_ms: u64,
}

struct Input {
    table: String,
    source: FileSource,
    done: bool,
}

/// Runs a replay to the end of its inputs (or until `stop`).
pub fn run_query(opts: &QueryOptions) -> anyhow::Result<QuerySummary> {
    let started = Instant::now();
    let sources = SourceDef::builtin();
    let config = EngineConfig {
        allowed_lateness: opts.allowed_lateness,
        idle_timeout: None,
    };
    let mut pipeline = Pipeline::new(&opts.sql, &sources, &config)
        .with_context(|| format!("in {}", opts.sql_origin))?;

    // Inputs: every table a stream reads needs one; no input may be unknown.
    let needed = pipeline.source_names();
    for (table, path) in &opts.inputs {
        if !sources.iter().any(|s| &s.name == table) {
            let known: Vec<_> = sources.iter().map(|s| s.name.as_str()).collect();
            bail!(
                "--input {table}={}: unknown source table `{table}` (known: {})",
                path.display(),
                known.join(", ")
            );
        }
    }
    for table in &needed {
        if !opts.inputs.iter().any(|(t, _)| t == table) {
            bail!("a stream reads `{table}` but no --input {table}=PATH was given");
        }
    }
    let mut inputs: Vec<Input> = Vec::new();
    for (table, path) in &opts.inputs {
        if !needed.contains(table) {
            tracing::warn!(%table, "no stream reads this input; skipping {}", path.display());
            continue;
        }
        let def = sources
            .iter()
            .find(|s| &s.name == table)
            .expect("checked above");
        let source = FileSource::open(path, Arc::clone(&def.schema), opts.batch_size)?;
        inputs.push(Input {
            table: table.clone(),
            source,
            done: false,
        });
    }
    inputs.sort_by(|a, b| a.table.cmp(&b.table));

    // Outputs: one per stream.
    let streams: Vec<(String, SchemaRef)> = pipeline
        .streams()
        .iter()
        .map(|s| (s.name.clone(), Arc::clone(&s.output_schema)))
        .collect();
    for (name, _) in opts.outputs.iter().chain(&opts.late_outputs) {
        if !streams.iter().any(|(s, _)| s == name) {
            let known: Vec<_> = streams.iter().map(|(s, _)| s.as_str()).collect();
            bail!(
                "output for unknown stream `{name}` (the SQL defines: {})",
                known.join(", ")
            );
        }
    }
    let mut output_paths = BTreeMap::new();
    for (name, _) in &streams {
        let path = match opts.outputs.iter().find(|(s, _)| s == name) {
            Some((_, p)) => p.clone(),
            None => match &opts.output_dir {
                Some(dir) => dir.join(format!("{name}.jsonl")),
                None => bail!(
                    "stream `{name}` has no output: add --output {name}=PATH or --output-dir DIR"
                ),
            },
        };
        output_paths.insert(name.clone(), path);
    }

    // Restore.
    let store = match &opts.checkpoint_dir {
        Some(dir) => Some(CheckpointStore::open(dir, opts.checkpoints_to_keep)?),
        None => None,
    };
    let mut summary = QuerySummary::default();
    let restored = match &store {
        Some(store) if !opts.start_fresh => store.latest()?,
        _ => None,
    };
    if let Some(cp) = &restored {
        tracing::info!(id = cp.id, "restoring checkpoint");
        summary.restored_from = Some(cp.id);
    }
    let mut sinks: BTreeMap<String, FileSink> = BTreeMap::new();
    for (name, schema) in &streams {
        let resume = restored.as_ref().and_then(|cp| cp.sinks.get(name));
        sinks.insert(
            name.clone(),
            FileSink::open(&output_paths[name], Arc::clone(schema), name, resume)?,
        );
    }
    let mut late_sinks: BTreeMap<String, FileSink> = BTreeMap::new();
    for (name, path) in &opts.late_outputs {
        let key = format!("late:{name}");
        let resume = restored.as_ref().and_then(|cp| cp.sinks.get(&key));
        let schema = sources.iter().find(|s| {
            pipeline
                .streams()
                .iter()
                .any(|st| &st.name == name && st.source == s.name)
        });
        let schema = Arc::clone(&schema.expect("stream has a source").schema);
        late_sinks.insert(name.clone(), FileSink::open(path, schema, name, resume)?);
    }
    let mut dead_letters = match &opts.dead_letter {
        Some(path) => {
            let resume = restored.as_ref().and_then(|cp| cp.sinks.get("dead-letter"));
            Some(FileSink::open(
                path,
                dead_letter_schema(),
                "dead_letter",
                resume,
            )?)
        }
        None => None,
    };
    if let Some(cp) = restored {
        pipeline.restore(cp.engine).map_err(|e| {
            anyhow::anyhow!(
                "{e}\nThe checkpoint in {} was taken for a different query. Start over with --start-fresh \
                 (upgradeMode: stateless), or restore the previous SQL.",
                opts.checkpoint_dir.as_ref().map(|d| d.display().to_string()).unwrap_or_default()
            )
        })?;
        for input in &mut inputs {
            if let Some(pos) = cp.sources.get(&input.table) {
                input.source.seek(pos)?;
            }
        }
    }

    let mut next_checkpoint_id = match &store {
        Some(s) => s.next_id()?,
        None => 0,
    };
    let mut last_checkpoint = Instant::now();
    let mut out: Vec<StreamOutput> = Vec::new();
    let mut bad_logged = 0u64;

    let mut checkpoint = |pipeline: &mut Pipeline,
                          inputs: &[Input],
                          sinks: &mut BTreeMap<String, FileSink>,
                          late_sinks: &mut BTreeMap<String, FileSink>,
                          dead_letters: &mut Option<FileSink>,
                          summary: &mut QuerySummary|
     -> anyhow::Result<()> {
        let Some(store) = &store else { return Ok(()) };
        // Output first: the checkpoint must never point past durable output.
        let mut sink_positions = BTreeMap::new();
        for (name, sink) in sinks.iter_mut() {
            sink_positions.insert(name.clone(), sink.commit()?);
        }
        for (name, sink) in late_sinks.iter_mut() {
            sink_positions.insert(format!("late:{name}"), sink.commit()?);
        }
        if let Some(dl) = dead_letters {
            sink_positions.insert("dead-letter".into(), dl.commit()?);
        }
        let cp = Checkpoint {
            id: next_checkpoint_id,
            created_at_ms: super::now_ms(),
            sources: inputs
                .iter()
                .map(|i| (i.table.clone(), i.source.position()))
                .collect(),
            sinks: sink_positions,
            sink_states: BTreeMap::new(),
            engine: pipeline.snapshot()?,
        };
        let info = store.write(&cp)?;
        tracing::info!(
            id = info.id,
            bytes = info.bytes,
            ms = info.duration.as_millis() as u64,
            "checkpoint written"
        );
        next_checkpoint_id += 1;
        summary.checkpoints_written += 1;
        Ok(())
    };

    loop {
        if opts.stop.load(Ordering::Relaxed) {
            tracing::info!("stop requested: taking a final checkpoint");
            summary.stopped = true;
            break;
        }
        let mut all_done = true;
        for input in inputs.iter_mut().filter(|i| !i.done) {
            all_done = false;
            match input.source.next_batch()? {
                None => {
                    input.done = true;
                    pipeline.finish_partition(&input.table, 0, &mut out)?;
                }
                Some(batch) => {
                    for bad in &batch.bad {
                        summary.bad_records += 1;
                        report_bad_record(&input.table, bad, &mut bad_logged);
                    }
                    if let Some(dl) = dead_letters.as_mut()
                        && !batch.bad.is_empty()
                    {
                        dl.write(&dead_letter_batch(&input.table, &batch.bad))?;
                    }
                    if let Some(rows) = batch.rows {
                        pipeline.push(&input.table, 0, &rows, &mut out)?;
                    }
                }
            }
            route(&pipeline, &mut out, &mut sinks, &mut late_sinks)?;
        }
        if all_done {
            break;
        }
        if store.is_some() && last_checkpoint.elapsed() >= opts.checkpoint_interval {
            checkpoint(
                &mut pipeline,
                &inputs,
                &mut sinks,
                &mut late_sinks,
                &mut dead_letters,
                &mut summary,
            )?;
            last_checkpoint = Instant::now();
        }
    }
    checkpoint(
        &mut pipeline,
        &inputs,
        &mut sinks,
        &mut late_sinks,
        &mut dead_letters,
        &mut summary,
    )?;

    for s in pipeline.streams() {
        let m = s.metrics();
        summary.rows_out.insert(s.name.clone(), m.rows_out);
        summary.late_events.insert(s.name.clone(), m.late_events);
    }
    for name in pipeline.source_names() {
        summary
            .records_in
            .insert(name.clone(), pipeline.records_in(&name));
    }
    for (_, sink) in sinks.into_iter().chain(late_sinks) {
        sink.close()?;
    }
    if let Some(dl) = dead_letters {
        dl.close()?;
    }
    if bad_logged > MAX_LOGGED_BAD_RECORDS {
        tracing::warn!(
            total = summary.bad_records,
            "{} more malformed records were not logged individually",
            bad_logged - MAX_LOGGED_BAD_RECORDS
        );
    }
    summary.elapsed_ms = started.elapsed().as_millis() as u64;
    Ok(summary)
}

const MAX_LOGGED_BAD_RECORDS: u64 = 100;

fn report_bad_record(table: &str, bad: &BadRecord, logged: &mut u64) {
    *logged += 1;
    if *logged <= MAX_LOGGED_BAD_RECORDS {
        tracing::warn!(source = table, location = %bad.location, reason = %bad.reason, "malformed record");
    }
}

fn route(
    pipeline: &Pipeline,
    out: &mut Vec<StreamOutput>,
    sinks: &mut BTreeMap<String, FileSink>,
    late_sinks: &mut BTreeMap<String, FileSink>,
) -> anyhow::Result<()> {
    for o in out.drain(..) {
        let name = &pipeline.streams()[o.stream].name;
        if o.late {
            if let Some(s) = late_sinks.get_mut(name) {
                s.write(&o.rows)?;
            }
        } else if let Some(s) = sinks.get_mut(name) {
            s.write(&o.rows)?;
        }
    }
    Ok(())
}

/// Columns of the dead-letter output.
pub fn dead_letter_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("source", DataType::Utf8, false),
        Field::new("location", DataType::Utf8, false),
        Field::new("reason", DataType::Utf8, false),
        Field::new("raw", DataType::Utf8, false),
    ]))
}

fn dead_letter_batch(source: &str, bad: &[BadRecord]) -> RecordBatch {
    let col = |f: &dyn Fn(&BadRecord) -> &str| {
        Arc::new(StringArray::from_iter_values(bad.iter().map(f))) as _
    };
    RecordBatch::try_new(
        dead_letter_schema(),
        vec![
            Arc::new(StringArray::from_iter_values(bad.iter().map(|_| source))) as _,
            col(&|b| b.location.as_str()),
            col(&|b| b.reason.as_str()),
            col(&|b| b.raw.as_str()),
        ],
    )
    .expect("dead-letter columns match the schema")
}
