//! Checkpoints: engine state, source positions and sink positions, written
//! atomically to a directory (a PersistentVolumeClaim in Kubernetes).
//!
//! Layout: `<dir>/chk-<id>/` holding `meta.json` and one Arrow IPC file per
//! stateful stream. A checkpoint is written into `chk-<id>.tmp/`, every file
//! fsynced, then the directory is renamed into place and the parent fsynced,
//! so a crash leaves either the whole checkpoint or none of it. The newest few
//! are kept.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use arrow::array::RecordBatch;
use arrow::ipc::reader::FileReader;
use arrow::ipc::writer::FileWriter;
use serde::{Deserialize, Serialize};

use crate::engine::EngineSnapshot;

/// Format version of `meta.json`.
const FORMAT_VERSION: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("checkpoint I/O on {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("checkpoint {path} is unreadable: {reason}")]
    Corrupt { path: PathBuf, reason: String },
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
    /// the epoch this checkpoint closes, re-sent if its commit was lost).
    pub sink_states: BTreeMap<String, RecordBatch>,
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
}

/// What a written checkpoint cost.
#[derive(Clone, Debug, Serialize)]
pub struct CheckpointInfo {
    pub id: u64,
    pub path: PathBuf,
    pub bytes: u64,
    pub duration: Duration,
    pub created_at_ms: i64,
}

/// A directory of checkpoints.
pub struct CheckpointStore {
    dir: PathBuf,
    keep: usize,
}

impl CheckpointStore {
    /// Opens (creating if needed) a checkpoint directory keeping the newest `keep`.
    pub fn open(dir: impl Into<PathBuf>, keep: usize) -> Result<Self, CheckpointError> {
        let dir = dir.into();
        fs::create_dir_all(&dir).map_err(io(&dir))?;
        // Leftovers of a write that crashed half-way.
        for entry in fs::read_dir(&dir).map_err(io(&dir))?.flatten() {
            if entry.file_name().to_string_lossy().ends_with(".tmp") {
                let _ = fs::remove_dir_all(entry.path());
            }
        }
        Ok(Self {
            dir,
            keep: keep.max(1),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
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

    /// Writes a checkpoint atomically and prunes old ones.
    pub fn write(&self, cp: &Checkpoint) -> Result<CheckpointInfo, CheckpointError> {
        let started = Instant::now();
        let final_path = self.path_of(cp.id);
        let tmp = self.dir.join(format!("chk-{:010}.tmp", cp.id));
        let _ = fs::remove_dir_all(&tmp);
        fs::create_dir_all(&tmp).map_err(io(&tmp))?;
        let mut bytes = 0;
        let mut state_files = BTreeMap::new();
        for (i, (stream, batch)) in cp.engine.states.iter().enumerate() {
            let file_name = format!("state-{i}.arrow");
            let path = tmp.join(&file_name);
            bytes += write_ipc(&path, batch)?;
            state_files.insert(stream.clone(), file_name);
        }
        let mut sink_files = BTreeMap::new();
        for (i, (sink, batch)) in cp.sink_states.iter().enumerate() {
            let file_name = format!("sink-{i}.arrow");
            bytes += write_ipc(&tmp.join(&file_name), batch)?;
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
        };
        let meta_path = tmp.join("meta.json");
        let json = serde_json::to_vec_pretty(&meta).expect("meta serializes");
        bytes += json.len() as u64;
        let mut f = File::create(&meta_path).map_err(io(&meta_path))?;
        f.write_all(&json).map_err(io(&meta_path))?;
        f.sync_all().map_err(io(&meta_path))?;
        sync_dir(&tmp)?;
        fs::rename(&tmp, &final_path).map_err(io(&final_path))?;
        sync_dir(&self.dir)?;

        let ids = self.list()?;
        if ids.len() > self.keep {
            for old in &ids[..ids.len() - self.keep] {
                let _ = fs::remove_dir_all(self.path_of(*old));
            }
        }
        Ok(CheckpointInfo {
            id: cp.id,
            path: final_path,
            bytes,
            duration: started.elapsed(),
            created_at_ms: cp.created_at_ms,
        })
    }

    /// Reads the newest checkpoint, if any.
    pub fn latest(&self) -> Result<Option<Checkpoint>, CheckpointError> {
        match self.list()?.last() {
            None => Ok(None),
            Some(&id) => self.read(id).map(Some),
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
        let meta: Meta =
            serde_json::from_slice(&text).map_err(|e| corrupt(format!("meta.json: {e}")))?;
        if meta.version != FORMAT_VERSION {
            return Err(corrupt(format!(
                "format version {} (this worker reads {FORMAT_VERSION})",
                meta.version
            )));
        }
        let read_files = |files: &BTreeMap<String, String>| {
            let mut out = BTreeMap::new();
            for (name, file) in files {
                let p = path.join(file);
                let f = File::open(&p).map_err(io(&p))?;
                let mut reader =
                    FileReader::try_new(f, None).map_err(|e| corrupt(format!("{file}: {e}")))?;
                let batch = reader
                    .next()
                    .ok_or_else(|| corrupt(format!("{file}: empty")))?
                    .map_err(|e| corrupt(format!("{file}: {e}")))?;
                out.insert(name.clone(), batch);
            }
            Ok::<_, CheckpointError>(out)
        };
        let states = read_files(&meta.state_files)?;
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

fn write_ipc(path: &Path, batch: &RecordBatch) -> Result<u64, CheckpointError> {
    let f = File::create(path).map_err(io(path))?;
    let arrow_err = |e: arrow::error::ArrowError| CheckpointError::Io {
        path: path.to_path_buf(),
        source: std::io::Error::other(e),
    };
    let mut w = FileWriter::try_new(f, &batch.schema()).map_err(arrow_err)?;
    w.write(batch).map_err(arrow_err)?;
    w.finish().map_err(arrow_err)?;
    let f = w.into_inner().map_err(arrow_err)?;
    f.sync_all().map_err(io(path))?;
    Ok(f.metadata().map_err(io(path))?.len())
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
        let store = CheckpointStore::open(dir.path(), 3).unwrap();
        assert_eq!(store.list().unwrap(), vec![1]);
        assert!(!dir.path().join("chk-0000000002.tmp").exists());
    }
}
