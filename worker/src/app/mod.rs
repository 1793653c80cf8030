//! The worker's commands: wiring simulator, codec, sources, engine, sinks and
//! checkpoints around the run loop (`crate::runner`): `produce`, `query`
//! over files, `query` against Kafka, and `demo`.

pub mod demo;
pub mod kafka_query;
pub mod produce;
pub mod query;

use std::path::PathBuf;

use crate::engine::EngineConfig;

/// How many threads a query's key groups run on, and into how many key
/// groups a query that splits by key is divided.
#[derive(Clone, Copy, Debug)]
pub struct Parallelism {
    /// Threads (`--parallelism`); at most the number of key groups.
    pub threads: usize,
    /// Key groups at a query's first start (`--key-groups`; `None`: as
    /// many as threads); a restore keeps the checkpoint's.
    pub key_groups: Option<usize>,
}

impl Default for Parallelism {
    /// One thread, one key group: on this machine two threads do not yet
    /// beat one (docs/benchmarks.md, "Key groups on threads"), so more
    /// is asked for, not assumed.
    fn default() -> Self {
        Self {
            threads: 1,
            key_groups: None,
        }
    }
}

impl Parallelism {
    /// `config` running on these threads and key groups.
    pub fn apply(self, config: EngineConfig) -> EngineConfig {
        EngineConfig {
            parallelism: self.threads.max(1),
            key_groups: self.key_groups.map(|k| k.max(1)),
            ..config
        }
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
