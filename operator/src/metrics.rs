//! The operator's Prometheus metrics, rendered by hand (a few counters and a
//! histogram do not need a metrics framework).

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds (seconds) of the reconcile-duration histogram.
const BUCKETS: [f64; 10] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0];

#[derive(Default)]
struct Histogram {
    counts: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
}

/// Shared by the controllers and the HTTP endpoint.
#[derive(Default)]
pub struct Metrics {
    /// (kind, result) → reconciles.
    reconciles: Mutex<BTreeMap<(&'static str, &'static str), u64>>,
    durations: Mutex<BTreeMap<&'static str, Histogram>>,
    /// Server-side applies of owned objects.
    pub applies: AtomicU64,
    /// Status subresource writes.
    pub status_writes: AtomicU64,
    /// This process holds the Lease (or runs without leader election).
    pub leader: AtomicBool,
    /// The API server answered once: the process is usable.
    pub ready: AtomicBool,
    /// Entries in the controllers' per-object memory (last applies,
    /// failure counts): must fall back when objects are deleted.
    pub remembered_applies: AtomicU64,
    pub remembered_failures: AtomicU64,
}

impl Metrics {
    pub fn reconciled(&self, kind: &'static str, ok: bool, took: Duration) {
        let result = if ok { "success" } else { "error" };
        *self
            .reconciles
            .lock()
            .unwrap()
            .entry((kind, result))
            .or_default() += 1;
        let secs = took.as_secs_f64();
        let mut d = self.durations.lock().unwrap();
        let h = d.entry(kind).or_default();
        h.count += 1;
        h.sum += secs;
        for (i, b) in BUCKETS.iter().enumerate() {
            if secs <= *b {
                h.counts[i] += 1;
            }
        }
    }

    /// Reconciles so far of `kind` (both results).
    pub fn reconcile_count(&self, kind: &str) -> u64 {
        self.reconciles
            .lock()
            .unwrap()
            .iter()
            .filter(|((k, _), _)| *k == kind)
            .map(|(_, n)| n)
            .sum()
    }

    /// Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        out.push_str("# HELP tickflow_operator_reconciles_total Reconciles by kind and result.\n");
        out.push_str("# TYPE tickflow_operator_reconciles_total counter\n");
        for ((kind, result), n) in self.reconciles.lock().unwrap().iter() {
            let _ = writeln!(
                out,
                "tickflow_operator_reconciles_total{{kind=\"{kind}\",result=\"{result}\"}} {n}"
            );
        }
        out.push_str("# HELP tickflow_operator_reconcile_duration_seconds Time per reconcile.\n");
        out.push_str("# TYPE tickflow_operator_reconcile_duration_seconds histogram\n");
        for (kind, h) in self.durations.lock().unwrap().iter() {
            let name = "tickflow_operator_reconcile_duration_seconds";
            for (b, n) in BUCKETS.iter().zip(h.counts) {
                let _ = writeln!(out, "{name}_bucket{{kind=\"{kind}\",le=\"{b}\"}} {n}");
            }
            let _ = writeln!(
                out,
                "{name}_bucket{{kind=\"{kind}\",le=\"+Inf\"}} {}",
                h.count
            );
            let _ = writeln!(out, "{name}_sum{{kind=\"{kind}\"}} {}", h.sum);
            let _ = writeln!(out, "{name}_count{{kind=\"{kind}\"}} {}", h.count);
        }
        let gauge = |out: &mut String, name: &str, help: &str, kind: &str, v: u64| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}"
            );
        };
        gauge(
            &mut out,
            "tickflow_operator_applies_total",
            "Server-side applies of owned objects.",
            "counter",
            self.applies.load(Ordering::Relaxed),
        );
        gauge(
            &mut out,
            "tickflow_operator_status_writes_total",
            "Status subresource writes.",
            "counter",
            self.status_writes.load(Ordering::Relaxed),
        );
        gauge(
            &mut out,
            "tickflow_operator_leader",
            "1 while this process holds the leader Lease.",
            "gauge",
            self.leader.load(Ordering::Relaxed) as u64,
        );
        let _ = writeln!(
            out,
            "# HELP tickflow_operator_remembered_objects Objects the controllers keep per-object state for.\n\
             # TYPE tickflow_operator_remembered_objects gauge\n\
             tickflow_operator_remembered_objects{{map=\"applied\"}} {}\n\
             tickflow_operator_remembered_objects{{map=\"failures\"}} {}",
            self.remembered_applies.load(Ordering::Relaxed),
            self.remembered_failures.load(Ordering::Relaxed),
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_and_histogram() {
        let m = Metrics::default();
        m.reconciled("StreamQuery", true, Duration::from_millis(20));
        m.reconciled("StreamQuery", false, Duration::from_millis(700));
        let text = m.render();
        assert!(text.contains(
            "tickflow_operator_reconciles_total{kind=\"StreamQuery\",result=\"success\"} 1"
        ));
        assert!(text.contains(
            "tickflow_operator_reconcile_duration_seconds_bucket{kind=\"StreamQuery\",le=\"0.025\"} 1"
        ));
        assert!(text.contains(
            "tickflow_operator_reconcile_duration_seconds_bucket{kind=\"StreamQuery\",le=\"1\"} 2"
        ));
        assert_eq!(m.reconcile_count("StreamQuery"), 2);
    }
}
