//! File sources for replay and backtests: JSON lines or Avro container files.
//!
//! Batches are cut by record count (lines) or container block, never by time,
//! so a replay resumed from a checkpoint sees exactly the batches an
//! uninterrupted run would.

use std::fs::File;
use std::io::{BufRead, BufReader, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use std::collections::BTreeMap;
use std::time::Duration;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use serde_json::json;

use crate::codec::json::JsonLinesDecoder;
use crate::codec::ocf::OcfReader;
use crate::engine::SourceDef;
use crate::runner::{ConnectorError, DeadLetter, Polled, Source, SourceFigures, TableBatch};

/// One read from a file.
#[derive(Debug, Default)]
pub struct FileBatch {
    pub rows: Option<RecordBatch>,
    pub dead_letters: Vec<DeadLetter>,
    /// Records read (lines or Avro records), decodable or not.
    pub records: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The cause is part of the message, not a `source()`, so that error
    /// chains do not print it twice.
    #[error("cannot read {path}: {error}")]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("{path}: {reason}")]
    Format { path: PathBuf, reason: String },
    #[error("{path}: unsupported file type (use .jsonl or .avro)")]
    UnknownType { path: PathBuf },
    #[error("{path}: checkpointed position {position} is invalid: {reason}")]
    BadPosition {
        path: PathBuf,
        position: String,
        reason: String,
    },
}

/// A replay file of one source table.
// One value per input file, so the size difference between variants costs nothing.
#[allow(clippy::large_enum_variant)]
pub enum FileSource {
    Jsonl(JsonlSource),
    Avro(AvroFileSource),
}

impl FileSource {
    /// Opens `path` for rows of table `def`, by extension.
    pub fn open(path: &Path, def: &SourceDef, batch_size: usize) -> Result<Self, SourceError> {
        match path.extension().and_then(|e| e.to_str()) {
            Some("jsonl") | Some("json") | Some("ndjson") => {
                Ok(Self::Jsonl(JsonlSource::open(path, def, batch_size)?))
            }
            Some("avro") => Ok(Self::Avro(AvroFileSource::open(path, def)?)),
            _ => Err(SourceError::UnknownType {
                path: path.to_path_buf(),
            }),
        }
    }

    /// Next batch; `None` at the end of the file.
    pub fn next_batch(&mut self) -> Result<Option<FileBatch>, SourceError> {
        match self {
            Self::Jsonl(s) => s.next_batch(),
            Self::Avro(s) => s.next_batch(),
        }
    }

    /// Position of the next batch, for checkpoints.
    pub fn position(&self) -> serde_json::Value {
        match self {
            Self::Jsonl(s) => json!({ "offset": s.offset, "line": s.line }),
            Self::Avro(s) => json!({ "offset": s.reader.position() }),
        }
    }

    /// Resumes at a checkpointed position.
    pub fn seek(&mut self, position: &serde_json::Value) -> Result<(), SourceError> {
        let bad = |path: &Path, reason: &str| SourceError::BadPosition {
            path: path.to_path_buf(),
            position: position.to_string(),
            reason: reason.to_string(),
        };
        match self {
            Self::Jsonl(s) => {
                let offset = position["offset"]
                    .as_u64()
                    .ok_or_else(|| bad(&s.path, "no offset"))?;
                let line = position["line"]
                    .as_u64()
                    .ok_or_else(|| bad(&s.path, "no line"))?;
                let len = s.reader.get_ref().metadata().map_err(|e| s.io(e))?.len();
                if offset > len {
                    return Err(bad(&s.path, &format!("the file has only {len} bytes")));
                }
                s.reader
                    .seek(SeekFrom::Start(offset))
                    .map_err(|e| s.io(e))?;
                s.offset = offset;
                s.line = line;
                Ok(())
            }
            Self::Avro(s) => {
                let offset = position["offset"]
                    .as_u64()
                    .ok_or_else(|| bad(&s.path, "no offset"))?;
                s.reader
                    .seek(offset)
                    .map_err(|e| bad(&s.path, &e.to_string()))
            }
        }
    }
}

/// JSON lines, one record per line.
pub struct JsonlSource {
    path: PathBuf,
    table: String,
    reader: BufReader<File>,
    decoder: JsonLinesDecoder,
    batch_size: usize,
    /// Byte offset of the next unread line.
    offset: u64,
    /// Number of lines read so far.
    line: u64,
    buf: Vec<u8>,
}

impl JsonlSource {
    fn open(path: &Path, def: &SourceDef, batch_size: usize) -> Result<Self, SourceError> {
        let f = File::open(path).map_err(|error| SourceError::Io {
            path: path.to_path_buf(),
            error,
        })?;
        let decoder = JsonLinesDecoder::new(SchemaRef::clone(&def.schema)).map_err(|e| {
            SourceError::Format {
                path: path.to_path_buf(),
                reason: e.to_string(),
            }
        })?;
        Ok(Self {
            path: path.to_path_buf(),
            table: def.name.clone(),
            reader: BufReader::with_capacity(1 << 20, f),
            decoder,
            batch_size: batch_size.max(1),
            offset: 0,
            line: 0,
            buf: Vec::new(),
        })
    }

    fn io(&self, error: std::io::Error) -> SourceError {
        SourceError::Io {
            path: self.path.clone(),
            error,
        }
    }

    fn dead_letter(
        &self,
        line: u64,
        reason: &'static str,
        error: String,
        raw: Vec<u8>,
    ) -> DeadLetter {
        DeadLetter {
            table: self.table.clone(),
            location: format!("{}:{line}", self.path.display()),
            reason,
            error,
            key: None,
            value: raw,
            kafka: None,
        }
    }

    fn next_batch(&mut self) -> Result<Option<FileBatch>, SourceError> {
        let mut lines: Vec<(u64, String)> = Vec::with_capacity(self.batch_size);
        let mut bad = Vec::new();
        while lines.len() < self.batch_size {
            self.buf.clear();
            let n = self
                .reader
                .read_until(b'\n', &mut self.buf)
                .map_err(|e| self.io(e))?;
            if n == 0 {
                break;
            }
            self.offset += n as u64;
            self.line += 1;
            match std::str::from_utf8(&self.buf) {
                Ok(text) => {
                    let text = text.trim_end_matches(['\n', '\r']);
                    if !text.trim().is_empty() {
                        lines.push((self.line, text.to_string()));
                    }
                }
                Err(e) => bad.push(self.dead_letter(
                    self.line,
                    "invalid-utf8",
                    format!("invalid UTF-8: {e}"),
                    self.buf.clone(),
                )),
            }
        }
        if lines.is_empty() && bad.is_empty() {
            return Ok(None);
        }
        let refs: Vec<(u64, &str)> = lines.iter().map(|(n, l)| (*n, l.as_str())).collect();
        let records = lines.len() + bad.len();
        let (rows, bad_lines) = self.decoder.decode(&refs);
        bad.extend(
            bad_lines
                .into_iter()
                .map(|b| self.dead_letter(b.line, "invalid-json", b.reason, b.raw.into_bytes())),
        );
        bad.sort_by_key(|b| {
            b.location
                .rsplit(':')
                .next()
                .and_then(|n| n.parse::<u64>().ok())
        });
        Ok(Some(FileBatch {
            rows,
            dead_letters: bad,
            records,
        }))
    }
}

/// An Avro object container file; each block is one batch.
pub struct AvroFileSource {
    path: PathBuf,
    reader: OcfReader<BufReader<File>>,
}

impl AvroFileSource {
    fn open(path: &Path, def: &SourceDef) -> Result<Self, SourceError> {
        let schema = &def.schema;
        let f = File::open(path).map_err(|error| SourceError::Io {
            path: path.to_path_buf(),
            error,
        })?;
        let fmt = |reason: String| SourceError::Format {
            path: path.to_path_buf(),
            reason,
        };
        let reader = OcfReader::open(BufReader::with_capacity(1 << 20, f))
            .map_err(|e| fmt(e.to_string()))?;
        // Resolve the file's writer schema to the table's reader schema.
        let reader = match &def.avro_schema {
            Some(text) => {
                let s = crate::codec::schema::parse_schema_text(text)
                    .map_err(|e| fmt(format!("the table's Avro schema: {e}")))?;
                reader
                    .with_reader_schema(&s)
                    .map_err(|e| fmt(e.to_string()))?
            }
            None => reader,
        };
        if reader.schema().fields() != schema.fields() {
            return Err(fmt(format!(
                "its Avro schema does not resolve to the table's columns ({:?})",
                schema.fields().iter().map(|f| f.name()).collect::<Vec<_>>()
            )));
        }
        Ok(Self {
            path: path.to_path_buf(),
            reader,
        })
    }

    fn next_batch(&mut self) -> Result<Option<FileBatch>, SourceError> {
        let at = self.reader.position();
        match self.reader.next_batch() {
            Ok(Some(rows)) => Ok(Some(FileBatch {
                records: rows.num_rows(),
                rows: Some(rows),
                dead_letters: vec![],
            })),
            Ok(None) => Ok(None),
            // A corrupt block cannot be split into records reliably: report it
            // and stop, rather than guess where the next record starts.
            Err(e) => Err(SourceError::Format {
                path: self.path.clone(),
                reason: format!("block at byte {at}: {e}"),
            }),
        }
    }
}

/// The replay files of a query, one per source table: the run loop's
/// [`Source`] for `tickflow-worker query` over files. Each poll reads one
/// batch of every file not yet at its end; its position is every file's.
pub struct FileInputs {
    inputs: Vec<FileInput>,
}

struct FileInput {
    table: String,
    path: PathBuf,
    source: FileSource,
    records: u64,
    done: bool,
}

impl FileInputs {
    /// Opens `(table, path)` files (checked to exist and to be readable).
    pub fn open(files: Vec<(SourceDef, PathBuf)>, batch_size: usize) -> Result<Self, SourceError> {
        let mut inputs = Vec::new();
        for (def, path) in files {
            inputs.push(FileInput {
                source: FileSource::open(&path, &def, batch_size)?,
                table: def.name,
                path,
                records: 0,
                done: false,
            });
        }
        inputs.sort_by(|a, b| a.table.cmp(&b.table));
        Ok(Self { inputs })
    }
}

impl Source for FileInputs {
    fn name(&self) -> &str {
        "files"
    }

    fn start(&mut self, position: Option<&serde_json::Value>) -> Result<(), ConnectorError> {
        let Some(position) = position else {
            return Ok(());
        };
        for input in &mut self.inputs {
            if let Some(pos) = position.get(&input.table) {
                input.source.seek(pos).map_err(ConnectorError::fatal)?;
            }
        }
        Ok(())
    }

    fn partitions(&self) -> Vec<(String, usize)> {
        self.inputs.iter().map(|i| (i.table.clone(), 1)).collect()
    }

    fn poll(&mut self, _max_records: usize, _max_wait: Duration) -> Result<Polled, ConnectorError> {
        let mut polled = Polled::default();
        for input in self.inputs.iter_mut().filter(|i| !i.done) {
            match input.source.next_batch().map_err(ConnectorError::fatal)? {
                None => {
                    input.done = true;
                    polled.finished.push((input.table.clone(), 0));
                }
                Some(batch) => {
                    polled.records += batch.records;
                    input.records += batch.records as u64;
                    polled.dead_letters.extend(batch.dead_letters);
                    if let Some(rows) = batch.rows {
                        polled.batches.push(TableBatch {
                            table: input.table.clone(),
                            partition: 0,
                            rows,
                        });
                    }
                }
            }
        }
        Ok(polled)
    }

    fn position(&self) -> serde_json::Value {
        serde_json::Value::Object(
            self.inputs
                .iter()
                .map(|i| (i.table.clone(), i.source.position()))
                .collect(),
        )
    }

    fn is_done(&self) -> bool {
        self.inputs.iter().all(|i| i.done)
    }

    fn figures(&self) -> SourceFigures {
        SourceFigures {
            records_in: self
                .inputs
                .iter()
                .map(|i| (i.path.display().to_string(), i.records))
                .collect::<BTreeMap<_, _>>(),
            ..SourceFigures::default()
        }
    }
}
