//! File sinks: JSON lines (resumable from checkpoints) or Avro container files.
//!
//! [`FileOutputs`] is the run loop's [`Sink`] for file replay: one file per
//! stream, optional files for late rows, and a dead-letter file. Its
//! pre-commit flushes and fsyncs every file and checkpoints their lengths;
//! a restore cuts each file back to its checkpointed length, so the files
//! end up exactly as an uninterrupted run's.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use serde_json::json;

use crate::codec::json::JsonLinesEncoder;
use crate::codec::ocf::OcfWriter;
use crate::runner::{
    ConnectorError, DeadLetter, Positions, RestoredSink, Routes, RowKind, Sink, SinkCheckpoint,
};

#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("cannot write {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {reason}")]
    Encode { path: PathBuf, reason: String },
}

enum Writer {
    Jsonl {
        out: BufWriter<File>,
        encoder: JsonLinesEncoder,
        buf: Vec<u8>,
    },
    Avro(Box<OcfWriter<BufWriter<File>>>),
}

/// One output file of one stream.
pub struct FileSink {
    path: PathBuf,
    writer: Option<Writer>,
    rows: u64,
}

impl FileSink {
    /// Creates `path` (`.jsonl` or `.avro`), or, when `resume` holds a
    /// committed position, reopens it cut back to that position.
    pub fn open(
        path: &Path,
        schema: SchemaRef,
        stream: &str,
        resume: Option<&serde_json::Value>,
    ) -> Result<Self, SinkError> {
        let io = |source| SinkError::Io {
            path: path.to_path_buf(),
            source,
        };
        let enc = |reason: String| SinkError::Encode {
            path: path.to_path_buf(),
            reason,
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        let avro = path.extension().is_some_and(|e| e == "avro");
        let (writer, rows) = match (avro, resume) {
            (false, resume) => {
                let mut f = OpenOptions::new()
                    .create(true)
                    .write(true)
                    .truncate(false)
                    .open(path)
                    .map_err(io)?;
                let (bytes, rows) = resume
                    .map(|r| {
                        (
                            r["bytes"].as_u64().unwrap_or(0),
                            r["rows"].as_u64().unwrap_or(0),
                        )
                    })
                    .unwrap_or((0, 0));
                let len = f.metadata().map_err(io)?.len();
                if len < bytes {
                    return Err(enc(format!(
                        "the checkpoint expects {bytes} bytes of committed output but the file has {len}; it was changed outside tickflow"
                    )));
                }
                f.set_len(bytes).map_err(io)?;
                f.seek(SeekFrom::Start(bytes)).map_err(io)?;
                let w = Writer::Jsonl {
                    out: BufWriter::with_capacity(1 << 20, f),
                    encoder: JsonLinesEncoder::new(),
                    buf: Vec::new(),
                };
                (w, rows)
            }
            (true, None) => {
                let f = File::create(path).map_err(io)?;
                let avro_schema =
                    crate::codec::schema::arrow_to_avro(&schema, stream, "io.tickflow.output")
                        .map_err(|e| enc(e.to_string()))?;
                let w = OcfWriter::new(BufWriter::new(f), &avro_schema, Arc::clone(&schema))
                    .map_err(|e| enc(e.to_string()))?;
                (Writer::Avro(Box::new(w)), 0)
            }
            (true, Some(_)) => {
                return Err(enc(
                    "resuming an Avro output file from a checkpoint is not supported yet; write .jsonl output when checkpointing".into(),
                ));
            }
        };
        Ok(Self {
            path: path.to_path_buf(),
            writer: Some(writer),
            rows,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn rows_written(&self) -> u64 {
        self.rows
    }

    pub fn write(&mut self, batch: &RecordBatch) -> Result<(), SinkError> {
        let path = self.path.clone();
        match self.writer.as_mut().expect("sink open") {
            Writer::Jsonl { out, encoder, buf } => {
                buf.clear();
                encoder
                    .encode_batch(batch, buf)
                    .map_err(|e| SinkError::Encode {
                        path: path.clone(),
                        reason: e.to_string(),
                    })?;
                out.write_all(buf)
                    .map_err(|source| SinkError::Io { path, source })?;
            }
            Writer::Avro(w) => w.write_batch(batch).map_err(|e| SinkError::Encode {
                path,
                reason: e.to_string(),
            })?,
        }
        self.rows += batch.num_rows() as u64;
        Ok(())
    }

    /// Writes keys an updating stream deleted: per key one line with the key
    /// columns and `"deleted": true` (JSON lines only).
    pub fn write_deletes(
        &mut self,
        rows: &RecordBatch,
        key_columns: &[String],
    ) -> Result<(), SinkError> {
        if matches!(self.writer, Some(Writer::Avro(_))) {
            return Err(SinkError::Encode {
                path: self.path.clone(),
                reason: "an updating stream (GROUP BY without a window) deletes rows, which an Avro file cannot hold; write .jsonl".into(),
            });
        }
        let mut fields = Vec::new();
        let mut columns = Vec::new();
        for name in key_columns {
            let i = rows
                .schema()
                .index_of(name)
                .map_err(|e| SinkError::Encode {
                    path: self.path.clone(),
                    reason: e.to_string(),
                })?;
            fields.push(rows.schema().field(i).clone());
            columns.push(Arc::clone(rows.column(i)));
        }
        fields.push(Field::new("deleted", DataType::Boolean, false));
        columns.push(Arc::new(arrow::array::BooleanArray::from(
            vec![true; rows.num_rows()],
        )));
        let keys = RecordBatch::try_new(Arc::new(Schema::new(fields)), columns).map_err(|e| {
            SinkError::Encode {
                path: self.path.clone(),
                reason: e.to_string(),
            }
        })?;
        self.write(&keys)
    }

    /// Makes everything written durable; returns the position to checkpoint.
    pub fn commit(&mut self) -> Result<serde_json::Value, SinkError> {
        let io = |source| SinkError::Io {
            path: self.path.clone(),
            source,
        };
        match self.writer.as_mut().expect("sink open") {
            Writer::Jsonl { out, .. } => {
                out.flush().map_err(io)?;
                out.get_ref().sync_data().map_err(io)?;
                let bytes = out.get_ref().metadata().map_err(io)?.len();
                Ok(json!({ "bytes": bytes, "rows": self.rows }))
            }
            Writer::Avro(_) => Ok(json!({ "rows": self.rows })),
        }
    }

    /// Flushes and closes the file.
    pub fn close(mut self) -> Result<(), SinkError> {
        let path = self.path.clone();
        match self.writer.take().expect("sink open") {
            Writer::Jsonl { mut out, .. } => {
                out.flush().map_err(|source| SinkError::Io {
                    path: path.clone(),
                    source,
                })?;
                out.get_ref()
                    .sync_data()
                    .map_err(|source| SinkError::Io { path, source })
            }
            Writer::Avro(w) => {
                let mut out = w.finish().map_err(|e| SinkError::Encode {
                    path: path.clone(),
                    reason: e.to_string(),
                })?;
                out.flush().map_err(|source| SinkError::Io { path, source })
            }
        }
    }
}

/// What one output file receives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FileContent {
    /// Rows of a stream (results or late source rows).
    Stream { stream: String, kind: RowKind },
    /// Malformed input records.
    DeadLetters,
}

/// One output file of a replay.
#[derive(Clone, Debug)]
pub struct FileOutput {
    pub content: FileContent,
    pub path: PathBuf,
    /// Columns of the rows written (the stream's, the source's for late
    /// rows, [`dead_letter_schema`] for dead letters).
    pub schema: SchemaRef,
    /// The stream's key columns: what a deletion line of an updating
    /// stream holds.
    pub key_columns: Vec<String>,
}

impl FileOutput {
    /// Key of the file's position in checkpoints.
    fn key(&self) -> String {
        match &self.content {
            FileContent::Stream {
                stream,
                kind: RowKind::Results | RowKind::Deletes,
            } => stream.clone(),
            FileContent::Stream {
                stream,
                kind: RowKind::Late,
            } => format!("late:{stream}"),
            FileContent::DeadLetters => "dead-letter".into(),
        }
    }
}

/// The output files of a replay (see the module doc).
pub struct FileOutputs {
    outputs: Vec<FileOutput>,
    /// Open files, in `outputs` order (after [`Sink::start`]).
    files: Vec<FileSink>,
    /// (stream, kind) → index into `files`.
    routes: Routes,
    dead_letters: Option<usize>,
}

impl FileOutputs {
    pub fn new(outputs: Vec<FileOutput>) -> Self {
        let routes = outputs
            .iter()
            .enumerate()
            .filter_map(|(i, o)| match &o.content {
                FileContent::Stream { stream, kind } => Some(((stream.clone(), *kind), i)),
                FileContent::DeadLetters => None,
            })
            .collect();
        let dead_letters = outputs
            .iter()
            .position(|o| o.content == FileContent::DeadLetters);
        Self {
            outputs,
            files: Vec::new(),
            routes,
            dead_letters,
        }
    }
}

impl Sink for FileOutputs {
    fn name(&self) -> &str {
        "files"
    }

    fn start(
        &mut self,
        restored: Option<RestoredSink<'_>>,
        _positions: &Positions,
    ) -> Result<bool, ConnectorError> {
        let positions = restored.and_then(|r| r.position);
        for o in &self.outputs {
            let resume = positions.and_then(|p| p.get(o.key()));
            let name = match &o.content {
                FileContent::Stream { stream, .. } => stream.as_str(),
                FileContent::DeadLetters => "dead_letter",
            };
            let file = FileSink::open(&o.path, Arc::clone(&o.schema), name, resume)
                .map_err(ConnectorError::fatal)?;
            self.files.push(file);
        }
        Ok(false)
    }

    fn write(
        &mut self,
        stream: &str,
        kind: RowKind,
        rows: &RecordBatch,
    ) -> Result<(), ConnectorError> {
        if let Some(i) = self.routes.get(stream, kind) {
            let file = &mut self.files[i];
            match kind {
                RowKind::Deletes => file.write_deletes(rows, &self.outputs[i].key_columns),
                _ => file.write(rows),
            }
            .map_err(ConnectorError::fatal)?;
        }
        Ok(())
    }

    fn dead_letters(&mut self, bad: &[DeadLetter]) -> Result<(), ConnectorError> {
        if let Some(i) = self.dead_letters
            && !bad.is_empty()
        {
            self.files[i]
                .write(&dead_letter_batch(bad))
                .map_err(ConnectorError::fatal)?;
        }
        Ok(())
    }

    fn pre_commit(&mut self, _epoch: u64) -> Result<SinkCheckpoint, ConnectorError> {
        // Output first: the checkpoint must never point past durable output.
        let mut positions = serde_json::Map::new();
        for (o, f) in self.outputs.iter().zip(&mut self.files) {
            positions.insert(o.key(), f.commit().map_err(ConnectorError::fatal)?);
        }
        Ok(SinkCheckpoint {
            position: serde_json::Value::Object(positions),
            state: Vec::new(),
        })
    }

    fn commit(&mut self, _epoch: u64, _positions: &Positions) -> Result<(), ConnectorError> {
        Ok(()) // the files were durable before the checkpoint was written
    }

    fn close(&mut self) -> Result<(), ConnectorError> {
        for f in self.files.drain(..) {
            f.close().map_err(ConnectorError::fatal)?;
        }
        Ok(())
    }

    fn records_out(&self) -> BTreeMap<String, u64> {
        self.outputs
            .iter()
            .zip(&self.files)
            .map(|(o, f)| (o.path.display().to_string(), f.rows_written()))
            .collect()
    }
}

/// Columns of the dead-letter file: the source table, where the record
/// was, the reason code, the error and the record as read (lossy UTF-8).
pub fn dead_letter_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("source", DataType::Utf8, false),
        Field::new("location", DataType::Utf8, false),
        Field::new("reason", DataType::Utf8, false),
        Field::new("error", DataType::Utf8, false),
        Field::new("raw", DataType::Utf8, false),
    ]))
}

fn dead_letter_batch(bad: &[DeadLetter]) -> RecordBatch {
    let col = |f: &dyn Fn(&DeadLetter) -> String| {
        Arc::new(StringArray::from_iter_values(bad.iter().map(f))) as _
    };
    RecordBatch::try_new(
        dead_letter_schema(),
        vec![
            col(&|b| b.table.clone()),
            col(&|b| b.location.clone()),
            col(&|b| b.reason.to_string()),
            col(&|b| b.error.clone()),
            col(&|b| String::from_utf8_lossy(&b.value).into_owned()),
        ],
    )
    .expect("dead-letter columns match the schema")
}
