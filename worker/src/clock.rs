//! Wall-clock and event-time helpers shared along the data path.

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
