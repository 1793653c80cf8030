//! What a running worker reports about itself: the `/status` document (its
//! type is the contract in `tickflow_crds::worker_status`) and the
//! Prometheus metrics derived from it.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub use tickflow_crds::{
    LATENCY_BUCKETS_S, LatencyHistogram, WorkerCheckpoint as CheckpointStatus, WorkerState,
    WorkerStatus as Status,
};

/// Shared, cheaply cloned handle the run loop updates and the HTTP endpoint reads.
#[derive(Clone, Debug, Default)]
pub struct StatusHandle {
    status: Arc<Mutex<Status>>,
    heartbeat: Arc<Heartbeat>,
}

/// When the run loop last made a step, for `/healthz`: a loop stuck in a
/// call that never returns leaves the state `Running`, so liveness has to
/// look at progress, not only at the state.
#[derive(Debug)]
struct Heartbeat {
    origin: Instant,
    last_beat_ms: AtomicU64,
    /// A running loop silent this long is reported stalled.
    stall_limit_ms: AtomicU64,
}

impl Default for Heartbeat {
    fn default() -> Self {
        Self {
            origin: Instant::now(),
            last_beat_ms: AtomicU64::new(0),
            stall_limit_ms: AtomicU64::new(DEFAULT_STALL_LIMIT.as_millis() as u64),
        }
    }
}

/// Default of [`StatusHandle::set_stall_limit`].
pub const DEFAULT_STALL_LIMIT: Duration = Duration::from_secs(300);

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
        f(&mut self.status.lock().expect("not poisoned"));
    }

    pub fn get(&self) -> Status {
        self.status.lock().expect("not poisoned").clone()
    }

    pub fn set_state(&self, state: WorkerState) {
        self.beat();
        self.update(|s| s.state = state);
    }

    /// The run loop made a step.
    pub fn beat(&self) {
        let ms = self.heartbeat.origin.elapsed().as_millis() as u64;
        self.heartbeat.last_beat_ms.store(ms, Ordering::Relaxed);
    }

    /// How long a running loop may go without a step before `/healthz`
    /// fails (longer than any call the loop legitimately waits for).
    pub fn set_stall_limit(&self, limit: Duration) {
        self.heartbeat
            .stall_limit_ms
            .store(limit.as_millis() as u64, Ordering::Relaxed);
    }

    /// `Some(silence)` when the loop is running but has made no step for
    /// longer than the stall limit.
    pub fn stalled(&self) -> Option<Duration> {
        let h = &self.heartbeat;
        let silent = (h.origin.elapsed().as_millis() as u64)
            .saturating_sub(h.last_beat_ms.load(Ordering::Relaxed));
        let running = matches!(
            self.get().state,
            WorkerState::Running | WorkerState::Degraded
        );
        (running && silent > h.stall_limit_ms.load(Ordering::Relaxed))
            .then(|| Duration::from_millis(silent))
    }

    pub fn stall_limit(&self) -> Duration {
        Duration::from_millis(self.heartbeat.stall_limit_ms.load(Ordering::Relaxed))
    }
}

/// Prometheus text exposition of a status.
pub fn render_metrics(s: &Status) -> String {
    let mut out = String::new();
    let by = |label: &str, m: &BTreeMap<String, u64>| -> Vec<(String, f64)> {
        m.iter()
            .map(|(k, v)| (format!("{{{label}=\"{}\"}}", escape(k)), *v as f64))
            .collect()
    };
    family(
        &mut out,
        "tickflow_records_in_total",
        "counter",
        "Records read, per topic or source.",
        &by("topic", &s.records_in),
    );
    family(
        &mut out,
        "tickflow_bytes_in_total",
        "counter",
        "Value bytes read, per topic.",
        &by("topic", &s.bytes_in),
    );
    family(
        &mut out,
        "tickflow_records_out_total",
        "counter",
        "Records written, per topic or stream.",
        &by("topic", &s.records_out),
    );
    family(
        &mut out,
        "tickflow_late_events_total",
        "counter",
        "Events that arrived after their window closed, per stream.",
        &by("stream", &s.late_events),
    );
    family(
        &mut out,
        "tickflow_dead_letters_total",
        "counter",
        "Malformed input records sent to the dead-letter output, per reason.",
        &by("reason", &s.dead_letters),
    );
    family(
        &mut out,
        "tickflow_skipped_records_total",
        "counter",
        "Records read that are on purpose neither rows nor dead letters (tombstones), per reason.",
        &by("reason", &s.skipped),
    );
    family(
        &mut out,
        "tickflow_offset_resets_total",
        "counter",
        "Out-of-range positions moved by the out-of-range policy, per topic/partition.",
        &by("partition", &s.offset_resets),
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
        &mut out,
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
        &mut out,
        "tickflow_watermark_seconds",
        "gauge",
        "Event-time watermark per source (Unix seconds).",
        &wm,
    );
    family(
        &mut out,
        "tickflow_checkpoints_total",
        "counter",
        "Checkpoints written.",
        &[(String::new(), s.checkpoints as f64)],
    );
    family(
        &mut out,
        "tickflow_failovers_total",
        "counter",
        "Restarts from the last checkpoint within this process.",
        &[(String::new(), s.failovers as f64)],
    );
    if let Some(c) = &s.last_checkpoint {
        family(
            &mut out,
            "tickflow_checkpoint_duration_seconds",
            "gauge",
            "Duration of the last checkpoint.",
            &[(String::new(), c.duration_ms as f64 / 1000.0)],
        );
        family(
            &mut out,
            "tickflow_checkpoint_size_bytes",
            "gauge",
            "Size of the last checkpoint.",
            &[(String::new(), c.bytes as f64)],
        );
        family(
            &mut out,
            "tickflow_last_checkpoint_timestamp_seconds",
            "gauge",
            "Time of the last checkpoint.",
            &[(String::new(), c.time_ms as f64 / 1000.0)],
        );
    }
    render_latency(&mut out, &s.end_to_end_latency);
    let states: Vec<(String, f64)> = ALL_STATES
        .iter()
        .map(|st| {
            let name = format!("{st:?}").to_lowercase();
            (
                format!("{{state=\"{name}\"}}"),
                (*st == s.state) as u8 as f64,
            )
        })
        .collect();
    family(
        &mut out,
        "tickflow_worker_state",
        "gauge",
        "1 for the state the worker is in, 0 for the others.",
        &states,
    );
    let up = matches!(s.state, WorkerState::Running | WorkerState::Degraded) as u8;
    family(
        &mut out,
        "tickflow_up",
        "gauge",
        "1 while the worker is processing.",
        &[(String::new(), up as f64)],
    );
    out
}

/// One metric family: its help, type and samples (`labels` is `{…}` or empty).
fn family(out: &mut String, name: &str, kind: &str, help: &str, samples: &[(String, f64)]) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
    for (labels, v) in samples {
        let _ = writeln!(out, "{name}{labels} {v}");
    }
}

const ALL_STATES: [WorkerState; 7] = [
    WorkerState::Starting,
    WorkerState::Recovering,
    WorkerState::Running,
    WorkerState::Degraded,
    WorkerState::Stopping,
    WorkerState::Stopped,
    WorkerState::Failed,
];

/// `tickflow_end_to_end_latency_seconds`, a histogram per output stream
/// (cumulative buckets, as Prometheus expects).
fn render_latency(out: &mut String, by_stream: &BTreeMap<String, LatencyHistogram>) {
    let name = "tickflow_end_to_end_latency_seconds";
    let _ = writeln!(
        out,
        "# HELP {name} Seconds from a result row's event time to its output being committed, per stream.\n# TYPE {name} histogram"
    );
    for (stream, h) in by_stream {
        let stream = escape(stream);
        let mut cumulative = 0;
        for (i, bound) in LATENCY_BUCKETS_S.iter().enumerate() {
            cumulative += h.counts.get(i).copied().unwrap_or(0);
            let _ = writeln!(
                out,
                "{name}_bucket{{stream=\"{stream}\",le=\"{bound}\"}} {cumulative}"
            );
        }
        let _ = writeln!(
            out,
            "{name}_bucket{{stream=\"{stream}\",le=\"+Inf\"}} {}\n{name}_sum{{stream=\"{stream}\"}} {}\n{name}_count{{stream=\"{stream}\"}} {}",
            h.count, h.sum_seconds, h.count
        );
    }
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
        assert!(text.contains("# TYPE tickflow_skipped_records_total counter"));
        assert!(text.contains("tickflow_consumer_lag{topic=\"market-ticks\",partition=\"3\"} 7"));
        assert!(text.contains("tickflow_worker_state{state=\"starting\"} 1"));
        assert!(text.contains("tickflow_worker_state{state=\"running\"} 0"));
    }

    #[test]
    fn latency_buckets_are_cumulative_and_end_in_the_count() {
        let mut s = Status::default();
        let h = s.end_to_end_latency.entry("ohlc_5s".into()).or_default();
        h.observe(0.2, 3);
        h.observe(7.0, 1);
        h.observe(5000.0, 1);
        let text = render_metrics(&s);
        let series = "tickflow_end_to_end_latency_seconds";
        assert!(text.contains(&format!("# TYPE {series} histogram")));
        assert!(text.contains(&format!(
            "{series}_bucket{{stream=\"ohlc_5s\",le=\"0.1\"}} 0"
        )));
        assert!(text.contains(&format!(
            "{series}_bucket{{stream=\"ohlc_5s\",le=\"0.25\"}} 3"
        )));
        assert!(text.contains(&format!(
            "{series}_bucket{{stream=\"ohlc_5s\",le=\"10\"}} 4"
        )));
        assert!(text.contains(&format!(
            "{series}_bucket{{stream=\"ohlc_5s\",le=\"900\"}} 4"
        )));
        assert!(text.contains(&format!(
            "{series}_bucket{{stream=\"ohlc_5s\",le=\"+Inf\"}} 5"
        )));
        assert!(text.contains(&format!("{series}_count{{stream=\"ohlc_5s\"}} 5")));
    }
}
