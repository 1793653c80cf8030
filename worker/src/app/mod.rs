//! The worker's commands: wiring simulator, codec, sources, engine, sinks and
//! checkpoints around the run loop (`crate::runner`): `produce`, `query`
//! over files, `query` against Kafka, and `demo`.

pub mod demo;
pub mod kafka_query;
pub mod produce;
pub mod query;

use std::path::PathBuf;

use crate::engine::{EngineConfig, Partitioning, Pipeline};

/// How many threads a query's key groups run on, and into how many key
/// groups a query that splits by key is divided.
#[derive(Clone, Copy, Debug)]
pub struct Parallelism {
    /// Threads (`--parallelism`); at most the number of key groups.
    pub threads: usize,
    /// Key groups (`--key-groups`): fixed for the life of a query's checkpoints.
    pub key_groups: usize,
}

impl Default for Parallelism {
    /// The CPUs the worker may use (its cgroup's limit included), and the
    /// engine's default number of key groups.
    fn default() -> Self {
        Self {
            threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
            key_groups: crate::engine::DEFAULT_KEY_GROUPS,
        }
    }
}

impl Parallelism {
    /// `config` running on these threads and key groups.
    pub fn apply(self, config: EngineConfig) -> EngineConfig {
        EngineConfig {
            parallelism: self.threads.max(1),
            key_groups: self.key_groups.max(1),
            ..config
        }
    }
}

/// Says in the log how the query runs: split by key on threads, or as one
/// (and why), so a user asking for threads learns why a query does not
/// use them.
pub fn log_parallelism(pipeline: &Pipeline) {
    match pipeline.partitioning() {
        Partitioning::ByKey(columns) => tracing::info!(
            key_groups = pipeline.key_groups(),
            threads = pipeline.threads(),
            split_by = ?columns.keys().collect::<Vec<_>>(),
            "the query splits by key"
        ),
        Partitioning::Whole(reason) => tracing::info!(
            reason = %reason,
            "the query runs on one thread: its state does not split by key"
        ),
    }
}

/// Parses `NAME=PATH` arguments.
pub fn parse_binding(s: &str) -> Result<(String, PathBuf), String> {
    let (name, path) = s
        .split_once('=')
        .ok_or_else(|| format!("expected NAME=PATH, got `{s}`"))?;
    if name.is_empty() || path.is_empty() {
        return Err(format!("expected NAME=PATH, got `{s}`"));
    }
    Ok((name.to_string(), PathBuf::from(path)))
}
