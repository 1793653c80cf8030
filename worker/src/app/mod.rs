//! The worker's commands, wiring simulator, codec, sources, engine, sinks and
//! checkpoints together: `produce`, `query` (file replay) and `demo`.

pub mod demo;
mod demo_tui;
pub mod produce;
pub mod query;
pub mod stream;

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

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// An event time (epoch ms) as RFC 3339, or a marker for the extremes.
pub fn format_event_time(ms: i64) -> String {
    match ms {
        i64::MIN => "-".into(),
        i64::MAX => "end of input".into(),
        ms => chrono::DateTime::from_timestamp_millis(ms)
            .map(|t| t.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string())
            .unwrap_or_else(|| ms.to_string()),
    }
}
