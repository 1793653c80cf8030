//! `tickflow-worker produce`: runs the market simulator and writes its three
//! streams to files (JSON lines or Avro container files), one per topic.
//! Kafka output arrives with the Kafka issue.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use arrow::array::RecordBatch;

use crate::codec::SourceTable;
use crate::codec::json::JsonLinesEncoder;
use crate::codec::ocf::OcfWriter;
use crate::simulator::{SimConfig, Simulator};

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

#[derive(Clone, Debug)]
pub struct ProduceOptions {
    pub sim: SimConfig,
    pub length: RunLength,
    pub output_dir: PathBuf,
    pub format: FileFormat,
    /// Pace event time against the wall clock, `speed` times faster.
    pub realtime: Option<f64>,
    pub stop: Arc<AtomicBool>,
}

/// Counts of what was written.
#[derive(Debug, Default, serde::Serialize)]
pub struct ProduceSummary {
    pub ticks: u64,
    pub orders: u64,
    pub books: u64,
    pub files: Vec<PathBuf>,
}

enum Writer {
    Jsonl(BufWriter<File>, JsonLinesEncoder, Vec<u8>),
    Avro(Box<OcfWriter<BufWriter<File>>>),
}

impl Writer {
    fn open(dir: &Path, table: SourceTable, format: FileFormat) -> anyhow::Result<(Self, PathBuf)> {
        let path = dir.join(format!("{}.{}", table.topic(), format.extension()));
        let f = BufWriter::with_capacity(1 << 20, File::create(&path).with_context(|| format!("creating {}", path.display()))?);
        let w = match format {
            FileFormat::Jsonl => Writer::Jsonl(f, JsonLinesEncoder::new(), Vec::new()),
            FileFormat::Avro => Writer::Avro(Box::new(OcfWriter::new(f, table.avro_schema(), table.arrow_schema())?)),
        };
        Ok((w, path))
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
    std::fs::create_dir_all(&opts.output_dir).with_context(|| format!("creating {}", opts.output_dir.display()))?;
    let mut sim = Simulator::try_new(opts.sim.clone())?;
    let mut writers = Vec::new();
    let mut summary = ProduceSummary::default();
    for table in SourceTable::ALL {
        let (w, path) = Writer::open(&opts.output_dir, table, opts.format)?;
        writers.push(w);
        summary.files.push(path);
    }
    let start_event = opts.sim.start_time_ms;
    let wall_start = Instant::now();
    loop {
        if opts.stop.load(Ordering::Relaxed) {
            break;
        }
        let chunk = match opts.length {
            RunLength::Ticks(n) => (n - summary.ticks).min(CHUNK as u64) as usize,
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
        let chunk = if opts.realtime.is_some() { chunk.min((opts.sim.ticks_per_second / 20.0).max(1.0) as usize) } else { chunk };
        let out = sim.next_batch(chunk);
        summary.ticks += out.ticks.len() as u64;
        summary.orders += out.orders.len() as u64;
        summary.books += out.books.len() as u64;
        for (w, b) in writers.iter_mut().zip(out.to_batches()) {
            w.write(&b)?;
        }
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
    for (w, b) in writers.iter_mut().zip(rest.to_batches()) {
        w.write(&b)?;
    }
    for w in writers {
        w.close()?;
    }
    Ok(summary)
}
