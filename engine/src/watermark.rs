//! Event-time watermarks.
//!
//! Per partition, the watermark is the highest event time seen minus the
//! allowed out-of-orderness. A source's watermark is the minimum over its
//! active partitions; a partition that delivered nothing for the idle timeout
//! stops holding the others back until it delivers again.

use std::time::{Duration, Instant};

/// Watermark value before any event was seen.
pub const NO_WATERMARK: i64 = i64::MIN;
/// Watermark at the end of a bounded input: every window closes.
pub const END_OF_INPUT: i64 = i64::MAX;

#[derive(Clone, Debug)]
struct Partition {
    max_event_ms: i64,
    last_active: Instant,
    finished: bool,
}

/// Tracks one source's watermark over its partitions.
#[derive(Clone, Debug)]
pub struct WatermarkTracker {
    allowed_lateness_ms: i64,
    idle_timeout: Option<Duration>,
    partitions: Vec<Partition>,
    /// Never decreases, also across restores.
    current: i64,
}

impl WatermarkTracker {
    pub fn new(allowed_lateness: Duration, idle_timeout: Option<Duration>) -> Self {
        Self {
            allowed_lateness_ms: allowed_lateness.as_millis() as i64,
            idle_timeout,
            partitions: Vec::new(),
            current: NO_WATERMARK,
        }
    }

    /// Current watermark.
    pub fn watermark(&self) -> i64 {
        self.current
    }

    /// Highest event time seen across partitions (for lag reporting).
    pub fn max_event_time(&self) -> i64 {
        self.partitions
            .iter()
            .map(|p| p.max_event_ms)
            .max()
            .unwrap_or(NO_WATERMARK)
    }

    /// The newest event time known to have been accepted, also right after
    /// a restore (when no partition has delivered yet): the watermark plus
    /// the allowed lateness is a lower bound of it.
    pub fn newest_known(&self) -> i64 {
        let from_watermark = match self.current {
            NO_WATERMARK => NO_WATERMARK,
            wm => wm.saturating_add(self.allowed_lateness_ms),
        };
        self.max_event_time().max(from_watermark)
    }

    fn partition(&mut self, idx: usize) -> &mut Partition {
        if self.partitions.len() <= idx {
            self.partitions.resize(
                idx + 1,
                Partition {
                    max_event_ms: NO_WATERMARK,
                    last_active: Instant::now(),
                    finished: false,
                },
            );
        }
        &mut self.partitions[idx]
    }

    /// Makes partitions `0..n` known, so one that has not delivered yet holds
    /// the watermark back (until it turns idle) instead of being ignored.
    pub fn declare_partitions(&mut self, n: usize) {
        if n > 0 {
            self.partition(n - 1);
        }
    }

    /// Records that `partition` delivered events up to `max_event_ms`, then
    /// recomputes the watermark. Returns the new watermark.
    pub fn observe(&mut self, partition: usize, max_event_ms: i64, now: Instant) -> i64 {
        let p = self.partition(partition);
        p.max_event_ms = p.max_event_ms.max(max_event_ms);
        p.last_active = now;
        self.recompute(now)
    }

    /// Marks a partition as exhausted (end of a bounded input).
    pub fn finish(&mut self, partition: usize, now: Instant) -> i64 {
        self.partition(partition).finished = true;
        self.recompute(now)
    }

    /// Re-evaluates idleness without new data (called on a timer).
    pub fn recompute(&mut self, now: Instant) -> i64 {
        let lateness = self.allowed_lateness_ms;
        let idle = self.idle_timeout;
        let active = |p: &&Partition| {
            !p.finished && idle.is_none_or(|t| now.duration_since(p.last_active) < t)
        };
        let candidate = if self.partitions.is_empty() {
            NO_WATERMARK
        } else if self.partitions.iter().all(|p| p.finished) {
            END_OF_INPUT
        } else {
            let active: Vec<&Partition> = self.partitions.iter().filter(active).collect();
            let parts = if active.is_empty() {
                // All idle: advance to the most recent data so windows still
                // close. A partition that never delivered has no event time
                // to hold the others at (a key spread that leaves one empty).
                self.partitions
                    .iter()
                    .filter(|p| !p.finished && p.max_event_ms != NO_WATERMARK)
                    .collect()
            } else {
                active
            };
            parts
                .iter()
                .map(|p| p.max_event_ms.saturating_sub(lateness))
                .min()
                .unwrap_or(NO_WATERMARK)
        };
        self.current = self.current.max(candidate);
        self.current
    }

    /// Restores a watermark from a checkpoint.
    pub fn restore(&mut self, watermark: i64) {
        self.current = self.current.max(watermark);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lags_max_event_time_by_allowed_lateness() {
        let now = Instant::now();
        let mut w = WatermarkTracker::new(Duration::from_secs(1), None);
        assert_eq!(w.watermark(), NO_WATERMARK);
        assert_eq!(w.observe(0, 10_000, now), 9_000);
        // An older batch never moves the watermark back.
        assert_eq!(w.observe(0, 5_000, now), 9_000);
    }

    #[test]
    fn minimum_over_partitions_until_one_goes_idle() {
        let t0 = Instant::now();
        let mut w = WatermarkTracker::new(Duration::ZERO, Some(Duration::from_secs(5)));
        w.observe(0, 1_000, t0);
        assert_eq!(w.observe(1, 9_000, t0), 1_000);
        // Partition 0 idle for 6 s: only partition 1 counts.
        let t1 = t0 + Duration::from_secs(6);
        assert_eq!(w.observe(1, 10_000, t1), 10_000);
        // Partition 0 delivers again: it cannot pull the watermark back.
        assert_eq!(w.observe(0, 2_000, t1), 10_000);
    }

    #[test]
    fn a_partition_that_never_delivers_stops_holding_back_once_all_are_idle() {
        let t0 = Instant::now();
        let mut w = WatermarkTracker::new(Duration::ZERO, Some(Duration::from_secs(5)));
        w.declare_partitions(3);
        // Partition 2 gets no key; the others deliver, then go quiet with
        // it (all data was read before partition 2 turned idle).
        w.observe(0, 4_000, t0);
        assert_eq!(w.observe(1, 7_000, t0), NO_WATERMARK);
        // All idle: the newest data counts, not the empty partition.
        assert_eq!(w.recompute(t0 + Duration::from_secs(6)), 4_000);
    }

    #[test]
    fn the_newest_event_is_known_after_a_restore() {
        let mut w = WatermarkTracker::new(Duration::from_secs(1), None);
        assert_eq!(w.newest_known(), NO_WATERMARK);
        w.restore(9_000);
        assert_eq!(w.newest_known(), 10_000);
        w.observe(0, 12_000, Instant::now());
        assert_eq!(w.newest_known(), 12_000);
    }

    #[test]
    fn end_of_input_closes_everything() {
        let now = Instant::now();
        let mut w = WatermarkTracker::new(Duration::from_secs(1), None);
        w.observe(0, 1_000, now);
        assert_eq!(w.finish(0, now), END_OF_INPUT);
    }
}
