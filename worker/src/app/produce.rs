//! `tickflow-worker produce`: runs the market simulator and writes its three
//! streams to files (JSON lines or Avro container files) or to Kafka topics
//! (Confluent-framed Avro registered with the schema registry, or JSON), one
//! per topic, keyed by symbol. With `--nexmark` it runs the Nexmark
//! generator instead and writes `person`, `auction` and `bid` the same way,
//! to files or to the topics `nexmark-person`, `nexmark-auction` and
//! `nexmark-bid` ([`run_nexmark`]).

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use apache_avro::Schema as AvroSchema;
use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;

use std::collections::BTreeMap;

use crate::codec::json::JsonLinesEncoder;
use crate::codec::ocf::OcfWriter;
use crate::codec::records::{KeyExtractor, RowEncoder, ValueFormat};
use crate::codec::{BuiltinAvroSchema, SourceTable};
use crate::kafka::registry::value_subject;
use crate::kafka::{KafkaConfig, RegistryClient};
use crate::simulator::nexmark::{NexmarkConfig, NexmarkGenerator, NexmarkTable};
use crate::simulator::{SimConfig, Simulator};
use crate::sink::kafka::ProducerTuning;
use crate::sink::publisher::{KafkaPublisher, PublishTopic};

/// Output file format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum FileFormat {
    Jsonl,
    Avro,
}

impl FileFormat {
    pub fn extension(self) -> &'static str {
        match self {
            Self::Jsonl => "jsonl",
            Self::Avro => "avro",
        }
    }
}

/// When a simulated run ends.
#[derive(Clone, Copy, Debug)]
pub enum RunLength {
    /// After this many market ticks.
    Ticks(u64),
    /// After this much event time.
    EventTime(Duration),
    /// Until stopped.
    Continuous,
}

/// Where produced records go.
#[derive(Clone, Debug)]
pub enum ProduceTarget {
    Files { dir: PathBuf, format: FileFormat },
    Kafka(Box<KafkaTarget>),
}

/// Kafka output settings.
#[derive(Clone, Debug)]
pub struct KafkaTarget {
    pub config: KafkaConfig,
    pub registry: Option<RegistryClient>,
    pub format: ValueFormat,
    /// Topic per table, in [`SourceTable::ALL`] order (with `--nexmark`:
    /// [`NexmarkTable::ALL`] order).
    pub topics: [String; 3],
    /// Partitions of topics the producer creates.
    pub partitions: i32,
    pub replication: i32,
    pub tuning: ProducerTuning,
}

#[derive(Clone, Debug)]
pub struct ProduceOptions {
    pub sim: SimConfig,
    pub length: RunLength,
    pub target: ProduceTarget,
    /// Pace event time against the wall clock, `speed` times faster.
    pub realtime: Option<f64>,
    pub stop: Arc<AtomicBool>,
    /// Where running counts are reported (records_out per output), if anywhere.
    pub status: Option<crate::runtime::StatusHandle>,
}

/// Counts of what was written.
#[derive(Debug, Default, serde::Serialize)]
pub struct ProduceSummary {
    pub ticks: u64,
    pub orders: u64,
    pub books: u64,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub files: Vec<PathBuf>,
    /// Messages acknowledged per topic (Kafka output).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub topics: BTreeMap<String, u64>,
}

/// The three outputs of a run.
enum Outputs {
    Files(Vec<Writer>),
    Kafka(KafkaPublisher),
}

impl Outputs {
    /// Opens one output per table of `tables` (in that order): a file named
    /// after it in the target directory, or its topic (`KafkaTarget::topics`,
    /// same order). Files written are listed in `files`.
    fn open(
        target: &ProduceTarget,
        tables: &[TableOutput; 3],
        files: &mut Vec<PathBuf>,
    ) -> anyhow::Result<Self> {
        match target {
            ProduceTarget::Files { dir, format } => {
                std::fs::create_dir_all(dir)
                    .with_context(|| format!("creating {}", dir.display()))?;
                let mut writers = Vec::new();
                for table in tables {
                    let path = dir.join(format!("{}.{}", table.file_name, format.extension()));
                    let w = Writer::create(&path, *format, table.avro, Arc::clone(&table.arrow))?;
                    writers.push(w);
                    files.push(path);
                }
                Ok(Self::Files(writers))
            }
            ProduceTarget::Kafka(k) => Ok(Self::Kafka(open_publisher(k, tables)?)),
        }
    }

    fn write(&mut self, index: usize, batch: &RecordBatch) -> anyhow::Result<()> {
        match self {
            Self::Files(w) => w[index].write(batch),
            Self::Kafka(p) => p.write(index, batch),
        }
    }

    /// Flushes every output; for Kafka, returns the messages acknowledged
    /// per topic (empty for files).
    fn close(self) -> anyhow::Result<BTreeMap<String, u64>> {
        match self {
            Self::Files(writers) => {
                for w in writers {
                    w.close()?;
                }
                Ok(BTreeMap::new())
            }
            Self::Kafka(p) => p.close(),
        }
    }
}

/// One table a run produces: the base name of its file, its schemas and
/// the columns its Kafka messages are keyed by.
struct TableOutput {
    file_name: &'static str,
    avro: &'static AvroSchema,
    arrow: SchemaRef,
    key_columns: Vec<String>,
}

impl TableOutput {
    /// The market tables, in [`SourceTable::ALL`] order.
    fn market() -> [TableOutput; 3] {
        SourceTable::ALL.map(|t| TableOutput {
            file_name: t.topic(),
            avro: t.avro_schema(),
            arrow: t.arrow_schema(),
            key_columns: t.def().key_columns.clone(),
        })
    }

    /// The Nexmark tables, in [`NexmarkTable::ALL`] order.
    fn nexmark() -> [TableOutput; 3] {
        NexmarkTable::ALL.map(|t| TableOutput {
            file_name: t.name(),
            avro: t.avro_schema(),
            arrow: t.arrow_schema(),
            key_columns: vec![t.key_column().to_string()],
        })
    }
}

/// The Kafka side of a run, shared by the market simulator and Nexmark:
/// checks the connection, creates the topics if missing, registers each
/// table's Avro schema as `<topic>-value` (Avro output) and opens the
/// idempotent producer with one encoder and key extractor per topic.
fn open_publisher(k: &KafkaTarget, tables: &[TableOutput; 3]) -> anyhow::Result<KafkaPublisher> {
    k.config.check_connection(Duration::from_secs(15))?;
    crate::kafka::admin::ensure_topics(&k.config, &k.topics, k.partitions, k.replication)?;
    let mut topics = Vec::new();
    for (table, topic) in tables.iter().zip(&k.topics) {
        let encoder = match k.format {
            ValueFormat::Json => RowEncoder::json(),
            ValueFormat::Avro => {
                let registry = k.registry.as_ref().ok_or_else(|| {
                    anyhow::anyhow!("Avro output needs a schema registry: set --schema-registry or SCHEMA_REGISTRY_URL, or use --format json")
                })?;
                let id = registry
                    .register(&value_subject(topic), table.avro)
                    .with_context(|| format!("registering the schema of {topic}"))?;
                RowEncoder::avro(Arc::clone(&table.arrow), table.avro, id)?
            }
        };
        topics.push(PublishTopic {
            topic: topic.clone(),
            encoder,
            keys: KeyExtractor::new(&table.arrow, &table.key_columns),
        });
    }
    KafkaPublisher::open(&k.config, topics, &k.tuning)
}

enum Writer {
    Jsonl(BufWriter<File>, JsonLinesEncoder, Vec<u8>),
    Avro(Box<OcfWriter<BufWriter<File>>>),
}

impl Writer {
    /// A file at `path` for rows of `arrow` (Avro container files: written
    /// with the `avro` record schema).
    fn create(
        path: &Path,
        format: FileFormat,
        avro: &AvroSchema,
        arrow: SchemaRef,
    ) -> anyhow::Result<Self> {
        let f = BufWriter::with_capacity(
            1 << 20,
            File::create(path).with_context(|| format!("creating {}", path.display()))?,
        );
        Ok(match format {
            FileFormat::Jsonl => Writer::Jsonl(f, JsonLinesEncoder::new(), Vec::new()),
            FileFormat::Avro => Writer::Avro(Box::new(OcfWriter::new(f, avro, arrow)?)),
        })
    }

    fn write(&mut self, batch: &RecordBatch) -> anyhow::Result<()> {
        if batch.num_rows() == 0 {
            return Ok(());
        }
        match self {
            Writer::Jsonl(f, enc, buf) => {
                buf.clear();
                enc.encode_batch(batch, buf)?;
                f.write_all(buf)?;
            }
            Writer::Avro(w) => w.write_batch(batch)?,
        }
        Ok(())
    }

    fn close(self) -> anyhow::Result<()> {
        match self {
            Writer::Jsonl(mut f, ..) => f.flush()?,
            Writer::Avro(w) => w.finish()?.flush()?,
        }
        Ok(())
    }
}

/// Ticks generated per simulator call.
const CHUNK: usize = 8192;

pub fn run_produce(opts: &ProduceOptions) -> anyhow::Result<ProduceSummary> {
    let mut sim = Simulator::try_new(opts.sim.clone())?;
    let mut summary = ProduceSummary::default();
    let mut outputs = Outputs::open(&opts.target, &TableOutput::market(), &mut summary.files)?;
    let start_event = opts.sim.start_time_ms;
    let wall_start = Instant::now();
    loop {
        if opts.stop.load(Ordering::Relaxed) {
            break;
        }
        let chunk = match opts.length {
            RunLength::Ticks(n) => {
                n.saturating_sub(sim.ticks_generated()).min(CHUNK as u64) as usize
            }
            RunLength::EventTime(d) => {
                if sim.event_time_ms() - start_event >= d.as_millis() as i64 {
                    0
                } else {
                    // Small chunks so the run stops close to the requested duration.
                    (opts.sim.ticks_per_second / 10.0).clamp(1.0, CHUNK as f64) as usize
                }
            }
            RunLength::Continuous => CHUNK,
        };
        if chunk == 0 {
            break;
        }
        let chunk = if opts.realtime.is_some() {
            chunk.min((opts.sim.ticks_per_second / 20.0).max(1.0) as usize)
        } else {
            chunk
        };
        let out = sim.next_batch(chunk);
        summary.ticks += out.ticks.len() as u64;
        summary.orders += out.orders.len() as u64;
        summary.books += out.books.len() as u64;
        for (i, b) in out.to_batches().iter().enumerate() {
            outputs.write(i, b)?;
        }
        report(opts, &summary);
        if let Some(speed) = opts.realtime {
            let event_elapsed = (sim.event_time_ms() - start_event).max(0) as f64 / 1000.0;
            let due = Duration::from_secs_f64(event_elapsed / speed);
            if let Some(wait) = due.checked_sub(wall_start.elapsed()) {
                std::thread::sleep(wait);
            }
        }
    }
    let rest = sim.flush();
    summary.ticks += rest.ticks.len() as u64;
    summary.orders += rest.orders.len() as u64;
    summary.books += rest.books.len() as u64;
    for (i, b) in rest.to_batches().iter().enumerate() {
        outputs.write(i, b)?;
    }
    summary.topics = outputs.close()?;
    report(opts, &summary);
    Ok(summary)
}

/// Records written so far per output (topic, or table for files).
fn report(opts: &ProduceOptions, summary: &ProduceSummary) {
    let Some(status) = &opts.status else {
        return;
    };
    let names: [String; 3] = match &opts.target {
        ProduceTarget::Kafka(k) => k.topics.clone(),
        ProduceTarget::Files { .. } => SourceTable::ALL.map(|t| t.table_name().to_string()),
    };
    let counts = [summary.ticks, summary.orders, summary.books];
    status.beat();
    status.update(|s| {
        for (name, n) in names.iter().zip(counts) {
            s.records_out.insert(name.clone(), n);
        }
    });
}

/// `produce --nexmark`: the Nexmark tables to files or Kafka topics.
#[derive(Clone, Debug)]
pub struct NexmarkProduceOptions {
    /// `events` must be set: the run ends after that many events.
    pub config: NexmarkConfig,
    /// Files `person.<ext>`, `auction.<ext>` and `bid.<ext>` in a directory,
    /// or Kafka with `topics` in [`NexmarkTable::ALL`] order (see
    /// [`NexmarkTable::topic`] for the default names).
    pub target: ProduceTarget,
    pub stop: Arc<AtomicBool>,
    /// Where running counts are reported (records_out per table or topic), if anywhere.
    pub status: Option<crate::runtime::StatusHandle>,
}

/// Counts of what a Nexmark run wrote.
#[derive(Debug, Default, serde::Serialize)]
pub struct NexmarkSummary {
    pub persons: u64,
    pub auctions: u64,
    pub bids: u64,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub files: Vec<PathBuf>,
    /// Messages acknowledged per topic (Kafka output).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub topics: BTreeMap<String, u64>,
}

/// Nexmark events generated per call.
const NEXMARK_CHUNK: usize = 16_384;

/// Generates `config.events` Nexmark events (or until `stop`) and writes
/// each table as `produce` writes the market tables, through the same
/// outputs: to its own file (JSON lines through the codec's encoder, or an
/// Avro container file with the table's `.avsc`), or to its own Kafka topic
/// (Confluent-framed Avro with the `.avsc` registered as `<topic>-value`, or
/// JSON; keyed by `id` for person and auction, by `auction` for bid;
/// idempotent producer; topics created if missing).
pub fn run_nexmark(opts: &NexmarkProduceOptions) -> anyhow::Result<NexmarkSummary> {
    anyhow::ensure!(
        opts.config.events.is_some(),
        "a Nexmark run needs a number of events (--events N)"
    );
    let mut generator = NexmarkGenerator::try_new(opts.config.clone())?;
    let mut summary = NexmarkSummary::default();
    let mut outputs = Outputs::open(&opts.target, &TableOutput::nexmark(), &mut summary.files)?;
    let names: [String; 3] = match &opts.target {
        ProduceTarget::Kafka(k) => k.topics.clone(),
        ProduceTarget::Files { .. } => NexmarkTable::ALL.map(|t| t.name().to_string()),
    };
    while generator.remaining() > 0 && !opts.stop.load(Ordering::Relaxed) {
        let out = generator.next_batch(NEXMARK_CHUNK);
        summary.persons += out.persons.len() as u64;
        summary.auctions += out.auctions.len() as u64;
        summary.bids += out.bids.len() as u64;
        for (i, b) in out.to_batches().iter().enumerate() {
            outputs.write(i, b)?;
        }
        if let Some(status) = &opts.status {
            let counts = [summary.persons, summary.auctions, summary.bids];
            status.beat();
            status.update(|s| {
                for (name, n) in names.iter().zip(counts) {
                    s.records_out.insert(name.clone(), n);
                }
            });
        }
    }
    summary.topics = outputs.close()?;
    Ok(summary)
}
