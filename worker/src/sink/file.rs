//! File sinks: JSON lines (resumable from checkpoints) or Avro container files.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use serde_json::json;

use crate::codec::json::JsonLinesEncoder;
use crate::codec::ocf::OcfWriter;

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
