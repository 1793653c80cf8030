//! The operator's Prometheus metrics, rendered by hand (a few counters and a
//! histogram do not need a metrics framework).
//!
//! `tickflow_operator_resource_phase` mirrors each resource's
//! `status.phase` as kube-state-metrics does for pods (1 for the current
//! phase, 0 for the others), so alerts see a query that has no worker to
//! report anything (invalid SQL, a pod that never starts). It is read from
//! the controllers' caches of the resources when scraped, so a deleted
//! resource is gone from it as soon as from the cache. Only the leader runs
//! controllers, so only the leader exports it; losing the Lease clears it.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tickflow_crds::Phase;

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
    /// Per kind, what a controller's cache holds: (namespace, name, phase).
    phase_sources: Mutex<Vec<(&'static str, PhaseSource)>>,
}

/// Lists the watched resources of one kind with their status phase.
pub type PhaseSource = Box<dyn Fn() -> Vec<(String, String, Phase)> + Send + Sync>;

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

    /// Adds the resources a controller watches to the phase metric.
    pub fn add_phase_source(&self, kind: &'static str, source: PhaseSource) {
        self.phase_sources.lock().unwrap().push((kind, source));
    }

    /// Whether this process holds the Lease; a follower exports no phases
    /// (the leader's would be stale copies of them).
    pub fn set_leader(&self, leader: bool) {
        self.leader.store(leader, Ordering::Relaxed);
        if !leader {
            self.phase_sources.lock().unwrap().clear();
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
        self.render_phases(&mut out);
        out
    }

    fn render_phases(&self, out: &mut String) {
        const ALL: [Phase; 5] = [
            Phase::Pending,
            Phase::Running,
            Phase::Suspended,
            Phase::Degraded,
            Phase::Failed,
        ];
        out.push_str(
            "# HELP tickflow_operator_resource_phase 1 for the phase in a resource's status, 0 for the others.\n\
             # TYPE tickflow_operator_resource_phase gauge\n",
        );
        let mut phases = BTreeMap::new();
        for (kind, source) in self.phase_sources.lock().unwrap().iter() {
            for (namespace, name, phase) in source() {
                phases.insert((*kind, namespace, name), phase);
            }
        }
        for ((kind, namespace, name), phase) in &phases {
            for p in ALL {
                let _ = writeln!(
                    out,
                    "tickflow_operator_resource_phase{{kind=\"{kind}\",namespace=\"{namespace}\",name=\"{name}\",phase=\"{}\"}} {}",
                    p.as_str(),
                    u8::from(p == *phase)
                );
            }
        }
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

    #[test]
    fn phases_are_one_hot_per_resource_and_go_with_the_cache_or_the_lease() {
        let m = Metrics::default();
        m.set_leader(true);
        let cache = std::sync::Arc::new(Mutex::new(vec![
            ("desk".to_string(), "bars".to_string(), Phase::Failed),
            ("desk".to_string(), "vwap".to_string(), Phase::Running),
        ]));
        let c = cache.clone();
        m.add_phase_source("StreamQuery", Box::new(move || c.lock().unwrap().clone()));
        m.add_phase_source(
            "MarketProducer",
            Box::new(|| vec![("desk".into(), "sim".into(), Phase::Running)]),
        );
        let text = m.render();
        let bars = |phase: &str| {
            format!(
                "tickflow_operator_resource_phase{{kind=\"StreamQuery\",namespace=\"desk\",name=\"bars\",phase=\"{phase}\"}}"
            )
        };
        assert!(text.contains(&format!("{} 1\n", bars("Failed"))), "{text}");
        assert!(text.contains(&format!("{} 0\n", bars("Running"))), "{text}");
        assert_eq!(
            text.matches("tickflow_operator_resource_phase{").count(),
            15
        );
        cache.lock().unwrap().remove(0);
        assert!(!m.render().contains("name=\"bars\""));
        assert!(m.render().contains("name=\"sim\""));
        m.set_leader(false);
        assert!(!m.render().contains("tickflow_operator_resource_phase{"));
    }
}
