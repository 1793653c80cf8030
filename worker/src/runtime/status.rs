//! What a running worker reports about itself: the `/status` document (its
//! type is the contract in `tickflow_crds::worker_status`) and the
//! Prometheus metrics derived from it.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::{Arc, Mutex};

pub use tickflow_crds::{
    WorkerCheckpoint as CheckpointStatus, WorkerState, WorkerStatus as Status,
};

/// Shared, cheaply cloned handle the run loop updates and the HTTP endpoint reads.
#[derive(Clone, Debug, Default)]
pub struct StatusHandle(Arc<Mutex<Status>>);

impl StatusHandle {
    pub fn new(name: &str) -> Self {
        let h = Self::default();
        h.update(|s| {
            s.name = name.to_string();
            s.started_at_ms = crate::clock::now_ms();
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
