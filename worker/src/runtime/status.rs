//! What a running worker reports about itself: the `/status` document and
//! the Prometheus metrics derived from it.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

/// Life-cycle state of the worker.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WorkerState {
    #[default]
    Starting,
    Recovering,
    Running,
    /// Running, but something it depends on (e.g. the schema registry) is failing.
    Degraded,
    Stopping,
    Stopped,
    Failed,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct CheckpointStatus {
    pub id: u64,
    /// Milliseconds since the Unix epoch.
    pub time_ms: i64,
    pub bytes: u64,
    pub duration_ms: u64,
}

/// The `/status` document (the operator reads it back).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Status {
    pub state: WorkerState,
    /// Query name or producer name.
    pub name: String,
    pub records_in: BTreeMap<String, u64>,
    pub bytes_in: BTreeMap<String, u64>,
    pub records_out: BTreeMap<String, u64>,
    pub late_events: BTreeMap<String, u64>,
    /// Dead letters by reason.
    pub dead_letters: BTreeMap<String, u64>,
    /// `topic/partition` → messages behind the high watermark.
    pub lag: BTreeMap<String, i64>,
    /// Source table → watermark (ms since the epoch).
    pub watermarks: BTreeMap<String, i64>,
    pub checkpoints: u64,
    /// Restarts from the last checkpoint within this process.
    pub failovers: u32,
    pub last_checkpoint: Option<CheckpointStatus>,
    pub last_error: Option<String>,
    pub started_at_ms: i64,
}

impl Status {
    pub fn total_lag(&self) -> i64 {
        self.lag.values().sum()
    }
}

/// Shared, cheaply cloned handle the run loop updates and the HTTP endpoint reads.
#[derive(Clone, Debug, Default)]
pub struct StatusHandle(Arc<Mutex<Status>>);

impl StatusHandle {
    pub fn new(name: &str) -> Self {
        let h = Self::default();
        h.update(|s| {
            s.name = name.to_string();
            s.started_at_ms = crate::app::now_ms();
        });
        h
    }

    pub fn update(&self, f: impl FnOnce(&mut Status)) {
        f(&mut self.0.lock().expect("not poisoned"));
    }

    pub fn get(&self) -> Status {
        self.0.lock().expect("not poisoned").clone()
    }

    pub fn set_state(&self, state: WorkerState) {
        self.update(|s| s.state = state);
    }
}

/// Prometheus text exposition of a status.
pub fn render_metrics(s: &Status) -> String {
    let mut out = String::new();
    let mut family = |name: &str, kind: &str, help: &str, samples: &[(String, f64)]| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (labels, v) in samples {
            let _ = writeln!(out, "{name}{labels} {v}");
        }
    };
    let by = |label: &str, m: &BTreeMap<String, u64>| -> Vec<(String, f64)> {
        m.iter()
            .map(|(k, v)| (format!("{{{label}=\"{}\"}}", escape(k)), *v as f64))
            .collect()
    };
    family(
        "tickflow_records_in_total",
        "counter",
        "Records read, per topic or source.",
        &by("topic", &s.records_in),
    );
    family(
        "tickflow_bytes_in_total",
        "counter",
        "Value bytes read, per topic.",
        &by("topic", &s.bytes_in),
    );
    family(
        "tickflow_records_out_total",
        "counter",
        "Records written, per topic or stream.",
        &by("topic", &s.records_out),
    );
    family(
        "tickflow_late_events_total",
        "counter",
        "Events that arrived after their window closed, per stream.",
        &by("stream", &s.late_events),
    );
    family(
        "tickflow_dead_letters_total",
        "counter",
        "Malformed input records sent to the dead-letter output, per reason.",
        &by("reason", &s.dead_letters),
    );
    let lag: Vec<(String, f64)> = s
        .lag
        .iter()
        .map(|(tp, v)| {
            let (t, p) = tp.rsplit_once('/').unwrap_or((tp, ""));
            (
                format!("{{topic=\"{}\",partition=\"{}\"}}", escape(t), escape(p)),
                *v as f64,
            )
        })
        .collect();
    family(
        "tickflow_consumer_lag",
        "gauge",
        "Messages between the read position and the partition's end.",
        &lag,
    );
    let wm: Vec<(String, f64)> = s
        .watermarks
        .iter()
        .filter(|(_, v)| **v > i64::MIN && **v < i64::MAX)
        .map(|(k, v)| (format!("{{source=\"{}\"}}", escape(k)), *v as f64 / 1000.0))
        .collect();
    family(
        "tickflow_watermark_seconds",
        "gauge",
        "Event-time watermark per source (Unix seconds).",
        &wm,
    );
    family(
        "tickflow_checkpoints_total",
        "counter",
        "Checkpoints written.",
        &[(String::new(), s.checkpoints as f64)],
    );
    family(
        "tickflow_failovers_total",
        "counter",
        "Restarts from the last checkpoint within this process.",
        &[(String::new(), s.failovers as f64)],
    );
    if let Some(c) = &s.last_checkpoint {
        family(
            "tickflow_checkpoint_duration_seconds",
            "gauge",
            "Duration of the last checkpoint.",
            &[(String::new(), c.duration_ms as f64 / 1000.0)],
        );
        family(
            "tickflow_checkpoint_size_bytes",
            "gauge",
            "Size of the last checkpoint.",
            &[(String::new(), c.bytes as f64)],
        );
        family(
            "tickflow_last_checkpoint_timestamp_seconds",
            "gauge",
            "Time of the last checkpoint.",
            &[(String::new(), c.time_ms as f64 / 1000.0)],
        );
    }
    let up = matches!(s.state, WorkerState::Running | WorkerState::Degraded) as u8;
    family(
        "tickflow_up",
        "gauge",
        "1 while the worker is processing.",
        &[(String::new(), up as f64)],
    );
    out
}

fn escape(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_have_labels_and_types() {
        let mut s = Status::default();
        s.records_in.insert("market-ticks".into(), 10);
        s.dead_letters.insert("bad-magic".into(), 2);
        s.lag.insert("market-ticks/3".into(), 7);
        let text = render_metrics(&s);
        assert!(text.contains("# TYPE tickflow_records_in_total counter"));
        assert!(text.contains("tickflow_records_in_total{topic=\"market-ticks\"} 10"));
        assert!(text.contains("tickflow_dead_letters_total{reason=\"bad-magic\"} 2"));
        assert!(text.contains("tickflow_consumer_lag{topic=\"market-ticks\",partition=\"3\"} 7"));
    }
}
