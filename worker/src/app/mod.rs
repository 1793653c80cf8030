//! The worker's commands: wiring simulator, codec, sources, engine, sinks and
//! checkpoints around the run loop (`crate::runner`): `produce`, `query`
//! over files, `query` against Kafka, and `demo`.

pub mod demo;
pub mod kafka_query;
pub mod produce;
pub mod query;

use std::path::PathBuf;

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
