//! Checkpoints: engine state, source positions and sink positions, written
//! atomically to a directory (a PersistentVolumeClaim in Kubernetes).
//!
//! Layout: `<dir>/chk-<id>/` holding `meta.json` (the manifest, with a
//! SHA-256 of every other file), `meta.sha256` (the manifest's own) and one
//! Arrow IPC file per stateful stream and per sink with bulk state. A
//! checkpoint is written into `chk-<id>.tmp/`, every file fsynced, then the
//! directory is renamed into place and the parent fsynced, so a crash leaves
//! either the whole checkpoint or none of it. The newest few are kept.
//!
//! The directory belongs to one worker at a time: [`CheckpointStore::open`]
//! takes an exclusive lock on `<dir>/.lock` (flock) and holds it until the
//! store is dropped. `<dir>/lineage` names the directory's history; a sink
//! tags what it commits with it, so a worker can tell its own commits from
//! those of another directory (docs/exactly-once.md).
//!
//! A checkpoint that does not read back (checksum mismatch, truncated file)
//! is skipped with a warning and renamed `chk-<id>.unreadable`; the previous
//! one is restored. A write that fills the disk prunes the oldest checkpoint
//! and tries again.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use arrow::array::RecordBatch;
use arrow::datatypes::Schema;
use arrow::error::ArrowError;
use arrow::ipc::reader::FileReader;
use arrow::ipc::writer::FileWriter;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::engine::EngineSnapshot;

pub mod partitioned;

/// Format version of `meta.json`.
const FORMAT_VERSION: u32 = 1;
/// The manifest's checksum file.
const META_SUM: &str = "meta.sha256";
const LOCK_FILE: &str = ".lock";
const LINEAGE_FILE: &str = "lineage";
/// Suffix of a checkpoint set aside because it did not read back.
const UNREADABLE: &str = ".unreadable";

#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("checkpoint I/O on {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("checkpoint {path} is unreadable: {reason}")]
    Corrupt { path: PathBuf, reason: String },
    #[error(
        "checkpoint {path} has format version {found}; this worker reads version {FORMAT_VERSION} \
         (it was written by another tickflow release: run that release, or start over with \
         --start-fresh)"
    )]
    Format { path: PathBuf, found: u32 },
    #[error(
        "checkpoint directory {dir} is in use by another worker ({holder}): two workers on one \
         checkpoint directory would restore and commit the same epochs twice. Stop the other \
         worker first (an evicted pod may still be writing its final checkpoint)"
    )]
    Locked { dir: PathBuf, holder: String },
    #[error(
        "disk full writing checkpoint {id} in {dir}, with no older checkpoint left to prune: {source}"
    )]
    DiskFull {
        dir: PathBuf,
        id: u64,
        source: std::io::Error,
    },
}

impl CheckpointError {
    /// Whether the error is the disk (or quota) being full.
    pub fn is_disk_full(&self) -> bool {
        match self {
            Self::Io { source, .. } => is_no_space(source),
            Self::DiskFull { .. } => true,
            _ => false,
        }
    }
}

fn is_no_space(e: &std::io::Error) -> bool {
    if matches!(
        e.kind(),
        std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded
    ) {
        return true;
    }
    // An Arrow error wrapping the I/O error.
    e.get_ref()
        .and_then(|inner| inner.downcast_ref::<ArrowError>())
        .is_some_and(|a| matches!(a, ArrowError::IoError(_, io) if is_no_space(io)))
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> CheckpointError + '_ {
    move |source| CheckpointError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Everything a worker needs to resume.
pub struct Checkpoint {
    pub id: u64,
    /// Milliseconds since the Unix epoch.
    pub created_at_ms: i64,
    /// Source name → position (format owned by the source).
    pub sources: BTreeMap<String, serde_json::Value>,
    /// Sink name → position (format owned by the sink).
    pub sinks: BTreeMap<String, serde_json::Value>,
    /// Bulk sink state per sink name (e.g. a transactional sink's output of
    /// the epoch this checkpoint closes, re-sent if its commit was lost),
    /// in chunks: written one at a time, so the write never copies it whole.
    pub sink_states: BTreeMap<String, Vec<RecordBatch>>,
    pub engine: EngineSnapshot,
}

#[derive(Serialize, Deserialize)]
struct Meta {
    version: u32,
    id: u64,
    created_at_ms: i64,
    sources: BTreeMap<String, serde_json::Value>,
    sinks: BTreeMap<String, serde_json::Value>,
    engine: serde_json::Value,
    /// Stream name → state file name.
    state_files: BTreeMap<String, String>,
    /// Sink name → state file name.
    #[serde(default)]
    sink_files: BTreeMap<String, String>,
    /// The directory's lineage when the checkpoint was written.
    #[serde(default)]
    lineage: Option<String>,
    /// File name → SHA-256 (hex) of its contents. Empty in checkpoints of
    /// older workers, which are read unchecked.
    #[serde(default)]
    checksums: BTreeMap<String, String>,
}

/// What a written checkpoint cost.
#[derive(Clone, Debug, Serialize)]
pub struct CheckpointInfo {
    pub id: u64,
    pub path: PathBuf,
    pub bytes: u64,
    pub duration: Duration,
    pub created_at_ms: i64,
    /// Checkpoints deleted because the disk was full, before this one fit.
    pub pruned_for_space: Vec<u64>,
}

/// A newer checkpoint that did not read back, skipped on restore.
#[derive(Clone, Debug, Serialize)]
pub struct Skipped {
    pub id: u64,
    pub reason: String,
}

/// A directory of checkpoints, locked for this process while the store lives.
pub struct CheckpointStore {
    dir: PathBuf,
    keep: usize,
    lineage: String,
    /// Holds the directory's exclusive lock.
    _lock: File,
    /// Older `rev-*` siblings were removed (once, after the first write).
    revisions_cleaned: AtomicBool,
}

impl CheckpointStore {
    /// Opens (creating if needed) a checkpoint directory keeping the newest
    /// `keep`. Fails with [`CheckpointError::Locked`] while another store
    /// (of this or another process) has it open.
    pub fn open(dir: impl Into<PathBuf>, keep: usize) -> Result<Self, CheckpointError> {
        let dir = dir.into();
        fs::create_dir_all(&dir).map_err(io(&dir))?;
        let lock = lock_dir(&dir)?.ok_or_else(|| CheckpointError::Locked {
            holder: lock_holder(&dir),
            dir: dir.clone(),
        })?;
        // Leftovers of a write that crashed half-way; only now, under the
        // lock, can none of them be another worker's write in progress.
        for entry in fs::read_dir(&dir).map_err(io(&dir))?.flatten() {
            if entry.file_name().to_string_lossy().ends_with(".tmp") {
                let _ = fs::remove_dir_all(entry.path());
                let _ = fs::remove_file(entry.path());
            }
        }
        let lineage_path = dir.join(LINEAGE_FILE);
        let lineage = match fs::read_to_string(&lineage_path) {
            Ok(s) if !s.trim().is_empty() => s.trim().to_string(),
            _ => write_lineage(&dir)?,
        };
        Ok(Self {
            dir,
            keep: keep.max(1),
            lineage,
            _lock: lock,
            revisions_cleaned: AtomicBool::new(false),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The id of this directory's history: new with the directory and with
    /// every [`Self::start_over`].
    pub fn lineage(&self) -> &str {
        &self.lineage
    }

    /// A fresh start: deletes every checkpoint and begins a new lineage, so
    /// nothing the old history committed is mistaken for this one's.
    pub fn start_over(&mut self) -> Result<usize, CheckpointError> {
        let mut removed = 0;
        for entry in fs::read_dir(&self.dir).map_err(io(&self.dir))?.flatten() {
            if entry.file_name().to_string_lossy().starts_with("chk-") {
                fs::remove_dir_all(entry.path()).map_err(io(&entry.path()))?;
                removed += 1;
            }
        }
        self.lineage = write_lineage(&self.dir)?;
        Ok(removed)
    }

    /// Ids of complete checkpoints, ascending.
    pub fn list(&self) -> Result<Vec<u64>, CheckpointError> {
        let mut ids: Vec<u64> = fs::read_dir(&self.dir)
            .map_err(io(&self.dir))?
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().to_string_lossy().to_string();
                name.strip_prefix("chk-")?.parse().ok()
            })
            .collect();
        ids.sort_unstable();
        Ok(ids)
    }

    fn path_of(&self, id: u64) -> PathBuf {
        self.dir.join(format!("chk-{id:010}"))
    }

    /// Id the next checkpoint gets.
    pub fn next_id(&self) -> Result<u64, CheckpointError> {
        Ok(self.list()?.last().map_or(1, |l| l + 1))
    }

    /// Writes a checkpoint atomically and prunes old ones. A full disk
    /// prunes the oldest checkpoint (never the newest) and tries again.
    pub fn write(&self, cp: &Checkpoint) -> Result<CheckpointInfo, CheckpointError> {
        let started = Instant::now();
        let tmp = self.dir.join(format!("chk-{:010}.tmp", cp.id));
        let mut pruned_for_space = Vec::new();
        let bytes = loop {
            match self.write_once(cp, &tmp) {
                Ok(bytes) => break bytes,
                Err(e) => {
                    let _ = fs::remove_dir_all(&tmp);
                    if !e.is_disk_full() {
                        return Err(e);
                    }
                    let Some(victim) = self.space_victim()? else {
                        let CheckpointError::Io { source, .. } = e else {
                            return Err(e);
                        };
                        return Err(CheckpointError::DiskFull {
                            dir: self.dir.clone(),
                            id: cp.id,
                            source,
                        });
                    };
                    tracing::warn!(
                        id = cp.id,
                        pruned = %victim.display(),
                        "disk full writing a checkpoint: pruned the oldest checkpoint, trying again ({e})"
                    );
                    fs::remove_dir_all(&victim).map_err(io(&victim))?;
                    if let Some(id) = victim
                        .file_name()
                        .and_then(|n| n.to_str()?.strip_prefix("chk-")?.parse().ok())
                    {
                        pruned_for_space.push(id);
                    }
                }
            }
        };
        let ids = self.list()?;
        if ids.len() > self.keep {
            for old in &ids[..ids.len() - self.keep] {
                let _ = fs::remove_dir_all(self.path_of(*old));
            }
        }
        if !self.revisions_cleaned.swap(true, Ordering::Relaxed) {
            self.remove_older_revisions();
        }
        Ok(CheckpointInfo {
            id: cp.id,
            path: self.path_of(cp.id),
            bytes,
            duration: started.elapsed(),
            created_at_ms: cp.created_at_ms,
            pruned_for_space,
        })
    }

    /// What to delete to make room: a set-aside unreadable checkpoint, else
    /// the oldest complete one while a newer one remains.
    fn space_victim(&self) -> Result<Option<PathBuf>, CheckpointError> {
        let unreadable = fs::read_dir(&self.dir)
            .map_err(io(&self.dir))?
            .flatten()
            .find(|e| e.file_name().to_string_lossy().ends_with(UNREADABLE));
        if let Some(e) = unreadable {
            return Ok(Some(e.path()));
        }
        let ids = self.list()?;
        Ok((ids.len() > 1).then(|| self.path_of(ids[0])))
    }

    fn write_once(&self, cp: &Checkpoint, tmp: &Path) -> Result<u64, CheckpointError> {
        let final_path = self.path_of(cp.id);
        let _ = fs::remove_dir_all(tmp);
        fs::create_dir_all(tmp).map_err(io(tmp))?;
        let mut bytes = 0;
        let mut checksums = BTreeMap::new();
        let mut state_files = BTreeMap::new();
        for (i, (stream, batch)) in cp.engine.states.iter().enumerate() {
            let file_name = format!("state-{i}.arrow");
            let (n, sum) = write_ipc(&tmp.join(&file_name), &batch.schema(), [batch])?;
            bytes += n;
            checksums.insert(file_name.clone(), sum);
            state_files.insert(stream.clone(), file_name);
        }
        let mut sink_files = BTreeMap::new();
        for (i, (sink, chunks)) in cp.sink_states.iter().enumerate() {
            let Some(first) = chunks.first() else {
                continue;
            };
            let file_name = format!("sink-{i}.arrow");
            let (n, sum) = write_ipc(&tmp.join(&file_name), &first.schema(), chunks)?;
            bytes += n;
            checksums.insert(file_name.clone(), sum);
            sink_files.insert(sink.clone(), file_name);
        }
        let meta = Meta {
            version: FORMAT_VERSION,
            id: cp.id,
            created_at_ms: cp.created_at_ms,
            sources: cp.sources.clone(),
            sinks: cp.sinks.clone(),
            engine: cp.engine.meta.clone(),
            state_files,
            sink_files,
            lineage: Some(self.lineage.clone()),
            checksums,
        };
        let json = serde_json::to_vec_pretty(&meta).expect("meta serializes");
        bytes += json.len() as u64;
        write_synced(&tmp.join("meta.json"), &json)?;
        write_synced(&tmp.join(META_SUM), sha256_hex(&json).as_bytes())?;
        sync_dir(tmp)?;
        fs::rename(tmp, &final_path).map_err(io(&final_path))?;
        sync_dir(&self.dir)?;
        Ok(bytes)
    }

    /// In a `rev-*` directory (the operator's stateless upgrade mode, one
    /// directory per spec revision): the other revisions' directories are
    /// stale once this one has checkpointed, and restoring one after a spec
    /// is reverted would resume a history the output has moved past. Each is
    /// removed unless a worker still holds its lock.
    fn remove_older_revisions(&self) {
        let (Some(name), Some(parent)) = (
            self.dir.file_name().map(|n| n.to_string_lossy()),
            self.dir.parent(),
        ) else {
            return;
        };
        if !name.starts_with("rev-") {
            return;
        }
        let Ok(entries) = fs::read_dir(parent) else {
            return;
        };
        for e in entries.flatten() {
            let other = e.file_name().to_string_lossy().to_string();
            if other == name || !other.starts_with("rev-") || !e.path().is_dir() {
                continue;
            }
            match lock_dir(&e.path()) {
                Ok(Some(_held)) => match fs::remove_dir_all(e.path()) {
                    Ok(()) => tracing::info!(
                        removed = %e.path().display(),
                        "removed the checkpoints of an older revision"
                    ),
                    Err(err) => tracing::warn!(
                        "could not remove the older revision {}: {err}",
                        e.path().display()
                    ),
                },
                Ok(None) => tracing::info!(
                    "left the older revision {} alone: a worker still holds it",
                    e.path().display()
                ),
                Err(err) => tracing::warn!("could not lock {}: {err}", e.path().display()),
            }
        }
    }

    /// Reads the newest checkpoint, if any (no fallback).
    pub fn latest(&self) -> Result<Option<Checkpoint>, CheckpointError> {
        match self.list()?.last() {
            None => Ok(None),
            Some(&id) => self.read(id).map(Some),
        }
    }

    /// Reads the newest checkpoint that reads back, newest first. Newer ones
    /// that do not (checksum mismatch, truncated or missing file) are logged
    /// as warnings, renamed `chk-<id>.unreadable` (so the next checkpoint can
    /// take the id) and returned as skipped. When none reads back, the
    /// newest one's error.
    pub fn latest_readable(&self) -> Result<(Option<Checkpoint>, Vec<Skipped>), CheckpointError> {
        let ids = self.list()?;
        let mut skipped = Vec::new();
        let mut first_error = None;
        for &id in ids.iter().rev() {
            match self.read(id) {
                Ok(cp) => {
                    for s in &skipped {
                        self.set_aside(s);
                    }
                    return Ok((Some(cp), skipped));
                }
                // Only damage is skipped: an I/O error may pass, and a good
                // checkpoint set aside would be lost to the next restart.
                Err(e @ CheckpointError::Corrupt { .. }) => {
                    tracing::warn!(
                        id,
                        "checkpoint {id} is unreadable, trying the previous one: {e}"
                    );
                    skipped.push(Skipped {
                        id,
                        reason: e.to_string(),
                    });
                    first_error.get_or_insert(e);
                }
                Err(e) => return Err(e),
            }
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok((None, skipped)),
        }
    }

    fn set_aside(&self, s: &Skipped) {
        let from = self.path_of(s.id);
        let mut to = PathBuf::from(format!("{}{UNREADABLE}", from.display()));
        let mut n = 1;
        while to.exists() {
            to = PathBuf::from(format!("{}{UNREADABLE}.{n}", from.display()));
            n += 1;
        }
        match fs::rename(&from, &to) {
            Ok(()) => tracing::warn!(
                id = s.id,
                "set aside unreadable checkpoint {} as {}",
                from.display(),
                to.display()
            ),
            Err(e) => tracing::warn!("could not set aside {}: {e}", from.display()),
        }
    }

    pub fn read(&self, id: u64) -> Result<Checkpoint, CheckpointError> {
        let path = self.path_of(id);
        let corrupt = |reason: String| CheckpointError::Corrupt {
            path: path.clone(),
            reason,
        };
        let meta_path = path.join("meta.json");
        let text = fs::read(&meta_path).map_err(io(&meta_path))?;
        let sum_path = path.join(META_SUM);
        let meta_sum = match fs::read_to_string(&sum_path) {
            Ok(s) => Some(s.trim().to_string()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(io(&sum_path)(e)),
        };
        if let Some(want) = &meta_sum
            && *want != sha256_hex(&text)
        {
            return Err(corrupt("meta.json: checksum mismatch".into()));
        }
        let meta: Meta =
            serde_json::from_slice(&text).map_err(|e| corrupt(format!("meta.json: {e}")))?;
        if meta.version != FORMAT_VERSION {
            // Not corrupt: written by another release (a rollback). Never
            // skipped over, which would set a good checkpoint aside.
            return Err(CheckpointError::Format {
                path: path.clone(),
                found: meta.version,
            });
        }
        if meta_sum.is_none() && !meta.checksums.is_empty() {
            return Err(corrupt(format!("{META_SUM} is missing")));
        }
        let read_files = |files: &BTreeMap<String, String>| {
            let mut out = BTreeMap::new();
            for (name, file) in files {
                let p = path.join(file);
                let bytes = fs::read(&p).map_err(io(&p))?;
                match meta.checksums.get(file) {
                    Some(want) if *want != sha256_hex(&bytes) => {
                        return Err(corrupt(format!("{file}: checksum mismatch")));
                    }
                    None if !meta.checksums.is_empty() => {
                        return Err(corrupt(format!("{file}: no checksum in the manifest")));
                    }
                    _ => {}
                }
                let reader = FileReader::try_new(std::io::Cursor::new(bytes), None)
                    .map_err(|e| corrupt(format!("{file}: {e}")))?;
                let batches = reader
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| corrupt(format!("{file}: {e}")))?;
                if batches.is_empty() {
                    return Err(corrupt(format!("{file}: empty")));
                }
                out.insert(name.clone(), batches);
            }
            Ok::<_, CheckpointError>(out)
        };
        // An engine state is one batch.
        let mut states = BTreeMap::new();
        for (stream, mut batches) in read_files(&meta.state_files)? {
            if batches.len() != 1 {
                let file = &meta.state_files[&stream];
                return Err(corrupt(format!("{file}: {} batches, not 1", batches.len())));
            }
            states.insert(stream, batches.remove(0));
        }
        let sink_states = read_files(&meta.sink_files)?;
        Ok(Checkpoint {
            id: meta.id,
            created_at_ms: meta.created_at_ms,
            sources: meta.sources,
            sinks: meta.sinks,
            sink_states,
            engine: EngineSnapshot {
                meta: meta.engine,
                states,
            },
        })
    }
}

/// Takes the exclusive lock of `dir` (`None`: someone else holds it) and
/// notes who holds it, for the other side's error message.
fn lock_dir(dir: &Path) -> Result<Option<File>, CheckpointError> {
    let path = dir.join(LOCK_FILE);
    let mut f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(io(&path))?;
    match f.try_lock() {
        Ok(()) => {}
        Err(fs::TryLockError::WouldBlock) => return Ok(None),
        Err(fs::TryLockError::Error(e)) => return Err(io(&path)(e)),
    }
    let host = fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_default();
    let holder = format!("pid {} on {host}", std::process::id());
    // Best effort: the lock is what counts, the text is for messages.
    let _ = f
        .set_len(0)
        .and_then(|()| f.seek(SeekFrom::Start(0)))
        .and_then(|_| f.write_all(holder.as_bytes()));
    Ok(Some(f))
}

fn lock_holder(dir: &Path) -> String {
    let mut s = String::new();
    let _ = File::open(dir.join(LOCK_FILE)).and_then(|mut f| f.read_to_string(&mut s));
    if s.trim().is_empty() {
        "holder unknown".into()
    } else {
        format!("held by {}", s.trim())
    }
}

/// Writes a new lineage id for `dir` (atomically) and returns it.
fn write_lineage(dir: &Path) -> Result<String, CheckpointError> {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    let seed = format!(
        "{nanos}/{}/{}/{:?}",
        std::process::id(),
        dir.display(),
        Instant::now()
    );
    let lineage = sha256_hex(seed.as_bytes())[..16].to_string();
    let tmp = dir.join(format!("{LINEAGE_FILE}.tmp"));
    write_synced(&tmp, lineage.as_bytes())?;
    let path = dir.join(LINEAGE_FILE);
    fs::rename(&tmp, &path).map_err(io(&path))?;
    sync_dir(dir)?;
    Ok(lineage)
}

fn write_synced(path: &Path, bytes: &[u8]) -> Result<(), CheckpointError> {
    let mut f = File::create(path).map_err(io(path))?;
    f.write_all(bytes).map_err(io(path))?;
    f.sync_all().map_err(io(path))
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A writer that hashes what passes through it.
struct Hashing<W> {
    inner: W,
    hasher: Sha256,
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Writes `batches` as an Arrow IPC file, fsynced; its size and SHA-256.
/// Each batch is encoded (copied) on its own, so the transient copy is one
/// batch, not the file.
fn write_ipc<'a>(
    path: &Path,
    schema: &Schema,
    batches: impl IntoIterator<Item = &'a RecordBatch>,
) -> Result<(u64, String), CheckpointError> {
    let f = File::create(path).map_err(io(path))?;
    let arrow_err = |e: ArrowError| CheckpointError::Io {
        path: path.to_path_buf(),
        source: match e {
            ArrowError::IoError(_, io) => io,
            e => std::io::Error::other(e),
        },
    };
    let hashing = Hashing {
        inner: f,
        hasher: Sha256::new(),
    };
    let mut w = FileWriter::try_new(hashing, schema).map_err(arrow_err)?;
    for batch in batches {
        w.write(batch).map_err(arrow_err)?;
    }
    w.finish().map_err(arrow_err)?;
    let Hashing { inner: f, hasher } = w.into_inner().map_err(arrow_err)?;
    f.sync_all().map_err(io(path))?;
    let sum = hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    Ok((f.metadata().map_err(io(path))?.len(), sum))
}

fn sync_dir(dir: &Path) -> Result<(), CheckpointError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(io(dir))
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::Int64Array;
    use std::sync::Arc;

    fn cp(id: u64) -> Checkpoint {
        let batch =
            RecordBatch::try_from_iter([("x", Arc::new(Int64Array::from(vec![1, 2, 3])) as _)])
                .unwrap();
        Checkpoint {
            id,
            created_at_ms: 1,
            sources: BTreeMap::from([("market_ticks".into(), serde_json::json!({"offset": 42}))]),
            sinks: BTreeMap::new(),
            sink_states: BTreeMap::new(),
            engine: EngineSnapshot {
                meta: serde_json::json!({"streams": {}}),
                states: BTreeMap::from([("s".into(), batch)]),
            },
        }
    }

    #[test]
    fn round_trip_and_retention() {
        let dir = tempfile::tempdir().unwrap();
        let store = CheckpointStore::open(dir.path(), 2).unwrap();
        assert!(store.latest().unwrap().is_none());
        for id in 1..=3 {
            store.write(&cp(id)).unwrap();
        }
        assert_eq!(store.list().unwrap(), vec![2, 3]);
        let back = store.latest().unwrap().unwrap();
        assert_eq!(back.id, 3);
        assert_eq!(back.sources["market_ticks"]["offset"], 42);
        assert_eq!(back.engine.states["s"].num_rows(), 3);
    }

    #[test]
    fn half_written_checkpoints_are_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let store = CheckpointStore::open(dir.path(), 3).unwrap();
        store.write(&cp(1)).unwrap();
        fs::create_dir_all(dir.path().join("chk-0000000002.tmp")).unwrap();
        drop(store);
        let store = CheckpointStore::open(dir.path(), 3).unwrap();
        assert_eq!(store.list().unwrap(), vec![1]);
        assert!(!dir.path().join("chk-0000000002.tmp").exists());
    }

    #[test]
    fn a_second_store_on_the_directory_is_refused_and_leaves_its_temp_files_alone() {
        let dir = tempfile::tempdir().unwrap();
        let first = CheckpointStore::open(dir.path(), 3).unwrap();
        // The first worker's write in progress.
        let tmp = dir.path().join("chk-0000000001.tmp");
        fs::create_dir_all(&tmp).unwrap();
        let err = CheckpointStore::open(dir.path(), 3).err().expect("refused");
        assert!(matches!(err, CheckpointError::Locked { .. }), "{err}");
        let msg = err.to_string();
        assert!(
            msg.contains("in use by another worker")
                && msg.contains(&std::process::id().to_string()),
            "{msg}"
        );
        assert!(tmp.exists(), "the holder's write in progress is left alone");
        drop(first);
        let again = CheckpointStore::open(dir.path(), 3).unwrap();
        assert!(!tmp.exists());
        assert_eq!(again.lineage().len(), 16);
    }

    #[test]
    fn the_lineage_survives_reopening_and_changes_with_a_fresh_start() {
        let dir = tempfile::tempdir().unwrap();
        let store = CheckpointStore::open(dir.path(), 3).unwrap();
        let lineage = store.lineage().to_string();
        store.write(&cp(1)).unwrap();
        drop(store);
        let mut store = CheckpointStore::open(dir.path(), 3).unwrap();
        assert_eq!(store.lineage(), lineage);
        assert_eq!(store.start_over().unwrap(), 1);
        assert_ne!(store.lineage(), lineage);
        assert!(store.list().unwrap().is_empty());
        drop(store);
        let other = tempfile::tempdir().unwrap();
        assert_ne!(
            CheckpointStore::open(other.path(), 3).unwrap().lineage(),
            lineage
        );
    }

    #[test]
    fn a_corrupt_newest_checkpoint_falls_back_to_the_previous_one_and_is_set_aside() {
        let dir = tempfile::tempdir().unwrap();
        let store = CheckpointStore::open(dir.path(), 3).unwrap();
        for id in 1..=3 {
            store.write(&cp(id)).unwrap();
        }
        // One flipped byte in the state file of checkpoint 3: Arrow may well
        // still read it; the checksum must not.
        let state = dir.path().join("chk-0000000003/state-0.arrow");
        let mut bytes = fs::read(&state).unwrap();
        let n = bytes.len();
        bytes[n / 2] ^= 0x01;
        fs::write(&state, bytes).unwrap();
        let (back, skipped) = store.latest_readable().unwrap();
        assert_eq!(back.unwrap().id, 2);
        assert_eq!(skipped.len(), 1);
        assert_eq!(skipped[0].id, 3);
        assert!(
            skipped[0].reason.contains("checksum mismatch"),
            "{}",
            skipped[0].reason
        );
        assert_eq!(store.list().unwrap(), vec![1, 2]);
        assert!(dir.path().join("chk-0000000003.unreadable").exists());
        assert_eq!(
            store.next_id().unwrap(),
            3,
            "the next checkpoint takes the id"
        );
        store.write(&cp(3)).unwrap();

        // A corrupt manifest, and a manifest whose checksum file is gone.
        fs::write(
            dir.path().join("chk-0000000003/meta.json"),
            b"{\"version\": 1",
        )
        .unwrap();
        fs::remove_file(dir.path().join("chk-0000000002").join(META_SUM)).unwrap();
        let (back, skipped) = store.latest_readable().unwrap();
        assert_eq!(back.unwrap().id, 1);
        assert_eq!(skipped.iter().map(|s| s.id).collect::<Vec<_>>(), vec![3, 2]);
        assert!(store.latest().is_ok_and(|c| c.unwrap().id == 1));

        // Nothing readable: the newest one's error.
        fs::write(dir.path().join("chk-0000000001/state-0.arrow"), b"junk").unwrap();
        assert!(store.latest_readable().is_err());
    }

    #[test]
    fn a_checkpoint_of_another_release_is_an_error_and_is_never_set_aside() {
        let dir = tempfile::tempdir().unwrap();
        let store = CheckpointStore::open(dir.path(), 3).unwrap();
        for id in 1..=2 {
            store.write(&cp(id)).unwrap();
        }
        // A rollback: checkpoint 2 was written by a release with format 2,
        // intact (its checksum matches).
        let chk = dir.path().join("chk-0000000002");
        let meta = fs::read_to_string(chk.join("meta.json")).unwrap();
        let newer = meta.replacen("\"version\": 1", "\"version\": 2", 1);
        assert_ne!(meta, newer, "the manifest names its version");
        fs::write(chk.join("meta.json"), &newer).unwrap();
        fs::write(chk.join(META_SUM), sha256_hex(newer.as_bytes())).unwrap();
        let Err(e) = store.latest_readable() else {
            panic!("a checkpoint of another release was read")
        };
        assert!(matches!(e, CheckpointError::Format { found: 2, .. }), "{e}");
        assert_eq!(store.list().unwrap(), vec![1, 2], "nothing set aside");
    }

    #[test]
    fn a_newer_revision_removes_older_unlocked_revisions_once_it_has_checkpointed() {
        let root = tempfile::tempdir().unwrap();
        let old = CheckpointStore::open(root.path().join("rev-old"), 3).unwrap();
        old.write(&cp(1)).unwrap();
        let busy = CheckpointStore::open(root.path().join("rev-busy"), 3).unwrap();
        drop(old);
        fs::create_dir_all(root.path().join("other")).unwrap();
        let new = CheckpointStore::open(root.path().join("rev-new"), 3).unwrap();
        assert!(
            root.path().join("rev-old").exists(),
            "not before a checkpoint"
        );
        new.write(&cp(1)).unwrap();
        assert!(!root.path().join("rev-old").exists());
        assert!(
            root.path().join("rev-busy").exists(),
            "a locked revision stays"
        );
        assert!(root.path().join("other").exists());
        assert!(root.path().join("rev-new/chk-0000000001").exists());
        drop(busy);
    }
}
