//! File sources for replay and backtests: JSON lines or Avro container files.
//!
//! Batches are cut by record count (lines) or container block, never by time,
//! so a replay resumed from a checkpoint sees exactly the batches an
//! uninterrupted run would.

use std::fs::File;
use std::io::{BufRead, BufReader, Seek, SeekFrom};
use std::ops::Range;
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

    /// Next batch, JSON lines not decoded yet; `None` at the end.
    fn next_piece(&mut self) -> Result<Option<Piece>, SourceError> {
        Ok(match self {
            Self::Jsonl(s) => s.read_lines()?.map(Piece::Lines),
            Self::Avro(s) => s.next_batch()?.map(Piece::Decoded),
        })
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
        dead_letter(&self.table, &self.path, line, reason, error, raw)
    }

    fn next_batch(&mut self) -> Result<Option<FileBatch>, SourceError> {
        let Some(lines) = self.read_lines()? else {
            return Ok(None);
        };
        Ok(Some(lines.decode(&mut self.decoder)))
    }

    /// The next batch's lines, not decoded yet (`None` at the end).
    fn read_lines(&mut self) -> Result<Option<JsonlLines>, SourceError> {
        // One buffer for the batch's text, not a String per line: a replay
        // reads millions of lines.
        let mut text = String::with_capacity(self.batch_size * 160);
        let mut lines: Vec<(u64, Range<usize>)> = Vec::with_capacity(self.batch_size);
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
                Ok(line) => {
                    let line = line.trim_end_matches(['\n', '\r']);
                    if !line.trim().is_empty() {
                        let start = text.len();
                        text.push_str(line);
                        lines.push((self.line, start..text.len()));
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
        Ok(Some(JsonlLines {
            table: self.table.clone(),
            path: self.path.clone(),
            text,
            lines,
            bad,
        }))
    }
}

fn dead_letter(
    table: &str,
    path: &Path,
    line: u64,
    reason: &'static str,
    error: String,
    raw: Vec<u8>,
) -> DeadLetter {
    DeadLetter {
        table: table.to_string(),
        location: format!("{}:{line}", path.display()),
        reason,
        error,
        key: None,
        value: raw,
        kafka: None,
    }
}

/// One batch of a JSON-lines file, read but not decoded: decoding (most of
/// a replay's work) can then run on another thread.
struct JsonlLines {
    table: String,
    path: PathBuf,
    /// The non-blank lines, one after the other.
    text: String,
    /// (line number, where in `text`) of each non-blank line.
    lines: Vec<(u64, Range<usize>)>,
    /// Lines that are not UTF-8.
    bad: Vec<DeadLetter>,
}

impl JsonlLines {
    fn decode(mut self, decoder: &mut JsonLinesDecoder) -> FileBatch {
        let refs: Vec<(u64, &str)> = self
            .lines
            .iter()
            .map(|(n, at)| (*n, &self.text[at.clone()]))
            .collect();
        let records = self.lines.len() + self.bad.len();
        let (rows, bad_lines) = decoder.decode(&refs);
        let (table, path) = (&self.table, &self.path);
        self.bad.extend(bad_lines.into_iter().map(|b| {
            dead_letter(
                table,
                path,
                b.line,
                "invalid-json",
                b.reason,
                b.raw.into_bytes(),
            )
        }));
        self.bad.sort_by_key(|b| {
            b.location
                .rsplit(':')
                .next()
                .and_then(|n| n.parse::<u64>().ok())
        });
        FileBatch {
            rows,
            dead_letters: self.bad,
            records,
        }
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
/// [`Source`] for `tickflow-worker query` over files. Each poll hands over
/// one round: a batch of every file not yet at its end; its position is
/// every file's after that round.
///
/// Threads read ahead of the engine: one reads the files' lines in rounds
/// (in order, numbering them), `decoders` threads decode JSON lines into
/// Arrow batches (most of a replay's work) in parallel, and `poll` hands
/// the rounds over in their order. The rounds, so the batches and their
/// order, are those of reading in line; the position is that of the rounds
/// handed over, not of those read ahead: checkpoints and restores are
/// unchanged. At most about two rounds per decoder are in flight.
pub struct FileInputs {
    reading: Reading,
    decoders: usize,
    tables: Vec<String>,
    /// Every file's position after the rounds handed over.
    position: serde_json::Value,
    /// Records read per file, in the rounds handed over.
    records_in: BTreeMap<String, u64>,
    done: bool,
}

enum Reading {
    /// Until the first poll: the files, for `start` to seek.
    InLine(Rounds),
    Ahead {
        rounds: std::sync::mpsc::Receiver<(u64, Result<Round, SourceError>)>,
        /// Decoded rounds that came before their turn.
        early: BTreeMap<u64, Result<Round, SourceError>>,
        next: u64,
    },
    Stopped,
}

/// A round as read: JSON lines not decoded yet.
struct RawRound {
    pieces: Vec<(String, Option<Piece>)>,
    position: serde_json::Value,
    records_in: BTreeMap<String, u64>,
    done: bool,
}

/// One file's part of a round: `None` when it reached its end.
enum Piece {
    Lines(JsonlLines),
    Decoded(FileBatch),
}

/// What one round read, decoded.
struct Round {
    polled: Polled,
    position: serde_json::Value,
    records_in: BTreeMap<String, u64>,
    done: bool,
}

/// The files, read one round at a time.
struct Rounds {
    inputs: Vec<FileInput>,
}

struct FileInput {
    table: String,
    path: PathBuf,
    schema: SchemaRef,
    source: FileSource,
    records: u64,
    done: bool,
}

/// Threads decoding JSON lines by default: the CPUs this process may use
/// (its cgroup's limit included), at most 4.
pub fn decoder_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get().min(4))
}

impl FileInputs {
    /// Opens `(table, path)` files (checked to exist and to be readable),
    /// to be decoded by `decoders` threads (at least one).
    pub fn open(
        files: Vec<(SourceDef, PathBuf)>,
        batch_size: usize,
        decoders: usize,
    ) -> Result<Self, SourceError> {
        let mut inputs = Vec::new();
        for (def, path) in files {
            inputs.push(FileInput {
                source: FileSource::open(&path, &def, batch_size)?,
                schema: SchemaRef::clone(&def.schema),
                table: def.name,
                path,
                records: 0,
                done: false,
            });
        }
        inputs.sort_by(|a, b| a.table.cmp(&b.table));
        let rounds = Rounds { inputs };
        Ok(Self {
            decoders: decoders.max(1),
            tables: rounds.inputs.iter().map(|i| i.table.clone()).collect(),
            position: rounds.position(),
            records_in: rounds.records_in(),
            done: rounds.is_done(),
            reading: Reading::InLine(rounds),
        })
    }

    /// Starts the reader and decoder threads.
    fn read_ahead(rounds: Rounds, decoders: usize) -> Result<Reading, ConnectorError> {
        use std::sync::mpsc::sync_channel;
        use std::sync::{Arc, Mutex};
        let schemas: BTreeMap<String, SchemaRef> = rounds
            .inputs
            .iter()
            .map(|i| (i.table.clone(), SchemaRef::clone(&i.schema)))
            .collect();
        let (send_raw, raw) = sync_channel::<(u64, Result<RawRound, SourceError>)>(decoders);
        let (send_round, decoded) = sync_channel(2 * decoders);
        let raw = Arc::new(Mutex::new(raw));
        for i in 0..decoders {
            let (raw, send_round, schemas) =
                (Arc::clone(&raw), send_round.clone(), schemas.clone());
            std::thread::Builder::new()
                .name(format!("json-decoder-{i}"))
                .spawn(move || decode_rounds(&raw, &send_round, &schemas))
                .map_err(ConnectorError::fatal)?;
        }
        std::thread::Builder::new()
            .name("file-reader".into())
            .spawn(move || read_rounds(rounds, &send_raw))
            .map_err(ConnectorError::fatal)?;
        Ok(Reading::Ahead {
            rounds: decoded,
            early: BTreeMap::new(),
            next: 0,
        })
    }

    /// The next round in order (starting the threads at the first call).
    fn next_round(&mut self) -> Result<Round, ConnectorError> {
        if let Reading::InLine(_) = self.reading {
            let Reading::InLine(rounds) = std::mem::replace(&mut self.reading, Reading::Stopped)
            else {
                unreachable!()
            };
            self.reading = Self::read_ahead(rounds, self.decoders)?;
        }
        let Reading::Ahead {
            rounds,
            early,
            next,
        } = &mut self.reading
        else {
            return Err(ConnectorError::fatal(anyhow::anyhow!(
                "the file inputs stopped after an error"
            )));
        };
        let round = loop {
            if let Some(round) = early.remove(next) {
                break round;
            }
            match rounds.recv() {
                Ok((seq, round)) => {
                    early.insert(seq, round);
                }
                Err(_) => {
                    return Err(ConnectorError::fatal(anyhow::anyhow!(
                        "the file reader threads ended unexpectedly"
                    )));
                }
            }
        };
        *next += 1;
        round.map_err(|e| {
            self.reading = Reading::Stopped;
            ConnectorError::fatal(e)
        })
    }
}

/// The reader thread: rounds of lines, numbered, until the end, an error,
/// or the run dropping its end of the channels.
fn read_rounds(
    mut rounds: Rounds,
    send: &std::sync::mpsc::SyncSender<(u64, Result<RawRound, SourceError>)>,
) {
    for seq in 0.. {
        let round = rounds.next_raw_round();
        let last = round.as_ref().map_or(true, |r| r.done);
        if send.send((seq, round)).is_err() || last {
            return;
        }
    }
}

/// A decoder thread: decodes whichever round comes next.
fn decode_rounds(
    raw: &std::sync::Mutex<std::sync::mpsc::Receiver<(u64, Result<RawRound, SourceError>)>>,
    send: &std::sync::mpsc::SyncSender<(u64, Result<Round, SourceError>)>,
    schemas: &BTreeMap<String, SchemaRef>,
) {
    let mut decoders: BTreeMap<String, JsonLinesDecoder> = BTreeMap::new();
    loop {
        // Hold the lock only to take a round, not to decode it.
        let next = raw.lock().map(|r| r.recv());
        let Ok(Ok((seq, round))) = next else {
            return;
        };
        let round = round.and_then(|r| decode_round(r, &mut decoders, schemas));
        if send.send((seq, round)).is_err() {
            return;
        }
    }
}

fn decode_round(
    raw: RawRound,
    decoders: &mut BTreeMap<String, JsonLinesDecoder>,
    schemas: &BTreeMap<String, SchemaRef>,
) -> Result<Round, SourceError> {
    let mut polled = Polled::default();
    for (table, piece) in raw.pieces {
        let batch = match piece {
            None => {
                polled.finished.push((table, 0));
                continue;
            }
            Some(Piece::Decoded(batch)) => batch,
            Some(Piece::Lines(lines)) => {
                let decoder = match decoders.entry(table.clone()) {
                    std::collections::btree_map::Entry::Occupied(d) => d.into_mut(),
                    std::collections::btree_map::Entry::Vacant(v) => {
                        let schema = SchemaRef::clone(&schemas[&table]);
                        let decoder =
                            JsonLinesDecoder::new(schema).map_err(|e| SourceError::Format {
                                path: lines.path.clone(),
                                reason: e.to_string(),
                            })?;
                        v.insert(decoder)
                    }
                };
                lines.decode(decoder)
            }
        };
        polled.records += batch.records;
        polled.dead_letters.extend(batch.dead_letters);
        if let Some(rows) = batch.rows {
            polled.batches.push(TableBatch {
                table,
                partition: 0,
                rows,
            });
        }
    }
    Ok(Round {
        polled,
        position: raw.position,
        records_in: raw.records_in,
        done: raw.done,
    })
}

impl Rounds {
    /// One batch of every file not yet at its end, JSON lines not decoded.
    fn next_raw_round(&mut self) -> Result<RawRound, SourceError> {
        let mut pieces = Vec::new();
        for input in self.inputs.iter_mut().filter(|i| !i.done) {
            let piece = input.source.next_piece()?;
            match &piece {
                None => input.done = true,
                Some(Piece::Lines(l)) => input.records += (l.lines.len() + l.bad.len()) as u64,
                Some(Piece::Decoded(b)) => input.records += b.records as u64,
            }
            pieces.push((input.table.clone(), piece));
        }
        Ok(RawRound {
            pieces,
            position: self.position(),
            records_in: self.records_in(),
            done: self.is_done(),
        })
    }

    fn position(&self) -> serde_json::Value {
        serde_json::Value::Object(
            self.inputs
                .iter()
                .map(|i| (i.table.clone(), i.source.position()))
                .collect(),
        )
    }

    fn records_in(&self) -> BTreeMap<String, u64> {
        self.inputs
            .iter()
            .map(|i| (i.path.display().to_string(), i.records))
            .collect()
    }

    fn is_done(&self) -> bool {
        self.inputs.iter().all(|i| i.done)
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
        let Reading::InLine(rounds) = &mut self.reading else {
            return Err(ConnectorError::fatal(anyhow::anyhow!(
                "file inputs are started once, before they are read"
            )));
        };
        for input in &mut rounds.inputs {
            if let Some(pos) = position.get(&input.table) {
                input.source.seek(pos).map_err(ConnectorError::fatal)?;
            }
        }
        self.position = rounds.position();
        Ok(())
    }

    fn partitions(&self) -> Vec<(String, usize)> {
        self.tables.iter().map(|t| (t.clone(), 1)).collect()
    }

    fn poll(&mut self, _max_records: usize, _max_wait: Duration) -> Result<Polled, ConnectorError> {
        if self.done {
            return Ok(Polled::default());
        }
        let round = self.next_round()?;
        self.position = round.position;
        self.records_in = round.records_in;
        self.done = round.done;
        Ok(round.polled)
    }

    fn position(&self) -> serde_json::Value {
        self.position.clone()
    }

    fn is_done(&self) -> bool {
        self.done
    }

    fn figures(&self) -> SourceFigures {
        SourceFigures {
            records_in: self.records_in.clone(),
            ..SourceFigures::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Array, Int64Array};
    use std::io::Write;

    /// `n` tick lines whose volume is their line number; every 97th line
    /// is not JSON.
    fn write_ticks(path: &Path, n: u64) {
        let mut f = std::io::BufWriter::new(File::create(path).unwrap());
        for line in 1..=n {
            if line % 97 == 0 {
                writeln!(f, "{{not json").unwrap();
                continue;
            }
            writeln!(
                f,
                r#"{{"symbol":"AAPL","exchange":"NYSE","price":1.5,"bid":1.4,"ask":1.6,"bid_size":1,"ask_size":1,"volume":{line},"side":"buy","ts":"2026-01-05T14:30:00.{:03}Z"}}"#,
                line % 1000
            )
            .unwrap();
        }
    }

    /// Reading ahead on several threads hands over the rounds of reading
    /// in line: every row and dead letter in file order, the position of
    /// the rounds handed over.
    #[test]
    fn rounds_read_ahead_arrive_in_file_order_with_their_positions() {
        let dir = tempfile::tempdir().unwrap();
        let catalog = crate::engine::Catalog::builtin();
        let def = catalog.get("market_ticks").unwrap().clone();
        let (a, b) = (dir.path().join("a.jsonl"), dir.path().join("b.jsonl"));
        write_ticks(&a, 5_000);
        write_ticks(&b, 1_234);
        let mut other = def.clone();
        other.name = "other_ticks".into();
        let open = || {
            let files = vec![(def.clone(), a.clone()), (other.clone(), b.clone())];
            FileInputs::open(files, 64, 3)
        };

        // In line: the same rounds, one after the other.
        let mut in_line = open().unwrap();
        let Reading::InLine(mut rounds) = std::mem::replace(&mut in_line.reading, Reading::Stopped)
        else {
            unreachable!()
        };
        let mut decoders = BTreeMap::new();
        let schemas: BTreeMap<String, SchemaRef> = [&def, &other]
            .iter()
            .map(|d| (d.name.clone(), SchemaRef::clone(&d.schema)))
            .collect();
        let mut expected = Vec::new();
        loop {
            let raw = rounds.next_raw_round().unwrap();
            let round = decode_round(raw, &mut decoders, &schemas).unwrap();
            let done = round.done;
            expected.push(round);
            if done {
                break;
            }
        }

        let mut ahead = open().unwrap();
        ahead.start(None).unwrap();
        let mut volumes: BTreeMap<String, Vec<i64>> = BTreeMap::new();
        let mut dead_letters = Vec::new();
        for want in &expected {
            assert!(!ahead.is_done());
            let got = ahead.poll(0, Duration::ZERO).unwrap();
            assert_eq!(ahead.position(), want.position);
            assert_eq!(got.records, want.polled.records);
            assert_eq!(got.finished, want.polled.finished);
            for batch in &got.batches {
                let v = batch.rows.column_by_name("volume").unwrap();
                let v = v.as_any().downcast_ref::<Int64Array>().unwrap();
                volumes
                    .entry(batch.table.clone())
                    .or_default()
                    .extend(v.iter().flatten());
            }
            dead_letters.extend(got.dead_letters.into_iter().map(|d| d.location));
        }
        assert!(ahead.is_done());
        let lines = |n: i64| (1..=n).filter(|l| l % 97 != 0).collect::<Vec<_>>();
        assert_eq!(volumes["market_ticks"], lines(5_000));
        assert_eq!(volumes["other_ticks"], lines(1_234));
        assert_eq!(dead_letters.len(), (5_000 / 97 + 1_234 / 97) as usize);
        assert_eq!(ahead.figures().records_in[&a.display().to_string()], 5_000);
    }

    /// A restart at a round's position reads on from there, ahead as well.
    #[test]
    fn read_ahead_resumes_at_a_handed_over_position() {
        let dir = tempfile::tempdir().unwrap();
        let def = crate::engine::Catalog::builtin()
            .get("market_ticks")
            .unwrap()
            .clone();
        let a = dir.path().join("a.jsonl");
        write_ticks(&a, 3_000);
        let mut first = FileInputs::open(vec![(def.clone(), a.clone())], 100, 2).unwrap();
        for _ in 0..7 {
            first.poll(0, Duration::ZERO).unwrap();
        }
        let position = serde_json::json!({ "files": first.position() });
        drop(first);
        let mut resumed = FileInputs::open(vec![(def, a)], 100, 2).unwrap();
        resumed.start(position.get("files")).unwrap();
        let got = resumed.poll(0, Duration::ZERO).unwrap();
        let v = got.batches[0].rows.column_by_name("volume").unwrap();
        let v = v.as_any().downcast_ref::<Int64Array>().unwrap();
        // 7 rounds of 100 lines: the next line is 701.
        assert_eq!(v.value(0), 701);
        assert!(v.len() > 90 && v.null_count() == 0);
    }
}
