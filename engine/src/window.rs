//! Window assignment: pure arithmetic on event-time milliseconds.
//!
//! TUMBLE and HOP windows are built from panes (slices of `gcd(slide, size)`),
//! so an event is aggregated once into its pane, whatever the number of
//! overlapping HOP windows; a window's result merges its panes' partial states.
//! SESSION windows are per key and handled by the session operator.

use std::time::Duration;

/// The window of a windowed GROUP BY.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WindowSpec {
    /// `TUMBLE(ts, size)`: fixed, non-overlapping windows.
    Tumble { size_ms: i64 },
    /// `HOP(ts, slide, size)`: windows of `size` starting every `slide`.
    Hop { slide_ms: i64, size_ms: i64 },
    /// `SESSION(ts, gap)`: per key, closes after `gap` without events.
    Session { gap_ms: i64 },
}

impl WindowSpec {
    /// Width of the slices state is kept in (`None` for sessions).
    pub fn pane_ms(&self) -> Option<i64> {
        match *self {
            Self::Tumble { size_ms } => Some(size_ms),
            Self::Hop { slide_ms, size_ms } => Some(gcd(slide_ms, size_ms)),
            Self::Session { .. } => None,
        }
    }

    /// Start of the pane containing `ts`.
    pub fn pane_start(&self, ts: i64) -> i64 {
        let pane = self.pane_ms().expect("pane of a session window");
        ts.div_euclid(pane).saturating_mul(pane)
    }

    /// (slide, size) of the time-aligned windows.
    fn slide_size(&self) -> (i64, i64) {
        match *self {
            Self::Tumble { size_ms } => (size_ms, size_ms),
            Self::Hop { slide_ms, size_ms } => (slide_ms, size_ms),
            Self::Session { .. } => unreachable!("sessions are not time-aligned"),
        }
    }

    /// Starts of all windows containing `ts`, ascending. Computed in `i128`
    /// so no event time overflows; windows whose start or end does not fit
    /// an `i64` are left out (only possible at the ends of time, which the
    /// engine's event-time bounds keep away).
    pub fn window_starts(&self, ts: i64) -> impl Iterator<Item = i64> {
        let (slide, size) = self.slide_size();
        let (ts, slide, size) = (ts as i128, slide as i128, size as i128);
        let last = ts.div_euclid(slide) * slide;
        let first = last - ((size - 1) / slide) * slide;
        (0..)
            .map(move |k: i128| first + k * slide)
            .take_while(move |&s| s <= last)
            .filter(move |&s| s + size > ts)
            .filter(move |&s| s >= i64::MIN as i128 && s + size <= i64::MAX as i128)
            .map(|s| s as i64)
    }

    /// End of the earliest-closing window that contains `ts`: once the
    /// watermark has passed it, an event at `ts` is late. Saturates at
    /// [`i64::MAX`].
    pub fn earliest_end(&self, ts: i64) -> i64 {
        match *self {
            Self::Session { gap_ms } => ts.saturating_add(gap_ms),
            _ => {
                let (_, size) = self.slide_size();
                self.window_starts(ts).next().map_or(i64::MAX, |s| s + size)
            }
        }
    }

    /// Window size (`None` for sessions).
    pub fn size_ms(&self) -> Option<i64> {
        match *self {
            Self::Tumble { size_ms } | Self::Hop { size_ms, .. } => Some(size_ms),
            Self::Session { .. } => None,
        }
    }

    /// Windows whose end lies in `(after, up_to]` and that contain at least one
    /// of the given pane starts, ascending by start.
    pub fn windows_closing(
        &self,
        pane_starts: impl IntoIterator<Item = i64>,
        after: i64,
        up_to: i64,
    ) -> Vec<i64> {
        let (_, size) = self.slide_size();
        let mut starts: Vec<i64> = pane_starts
            .into_iter()
            .flat_map(|p| self.window_starts(p).collect::<Vec<_>>())
            .filter(|&s| s + size > after && s + size <= up_to)
            .collect();
        starts.sort_unstable();
        starts.dedup();
        starts
    }

    /// The last moment a pane is needed: the end of the last window containing it.
    pub fn pane_retire_at(&self, pane_start: i64) -> i64 {
        let (_, size) = self.slide_size();
        self.window_starts(pane_start)
            .last()
            .map_or(i64::MAX, |s| s + size)
    }

    /// Short description for status output and fingerprints.
    pub fn describe(&self) -> String {
        let d = |ms: i64| humantime::format_duration(Duration::from_millis(ms as u64)).to_string();
        match *self {
            Self::Tumble { size_ms } => format!("TUMBLE({})", d(size_ms)),
            Self::Hop { slide_ms, size_ms } => format!("HOP({}, {})", d(slide_ms), d(size_ms)),
            Self::Session { gap_ms } => format!("SESSION({})", d(gap_ms)),
        }
    }
}

fn gcd(a: i64, b: i64) -> i64 {
    if b == 0 { a } else { gcd(b, a % b) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tumble_assigns_one_window() {
        let w = WindowSpec::Tumble { size_ms: 5000 };
        assert_eq!(w.window_starts(12_345).collect::<Vec<_>>(), vec![10_000]);
        assert_eq!(w.window_starts(-1).collect::<Vec<_>>(), vec![-5000]);
        assert_eq!(w.earliest_end(10_000), 15_000);
        assert_eq!(w.pane_start(14_999), 10_000);
    }

    #[test]
    fn hop_assigns_size_over_slide_windows() {
        let w = WindowSpec::Hop {
            slide_ms: 5_000,
            size_ms: 100_000,
        };
        let starts: Vec<_> = w.window_starts(102_000).collect();
        assert_eq!(starts.len(), 20);
        assert_eq!(starts[0], 5_000);
        assert_eq!(*starts.last().unwrap(), 100_000);
        assert!(
            starts
                .iter()
                .all(|s| *s <= 102_000 && s + 100_000 > 102_000)
        );
        assert_eq!(w.pane_ms(), Some(5_000));
        assert_eq!(w.earliest_end(102_000), 105_000);
        assert_eq!(w.pane_retire_at(100_000), 200_000);
    }

    #[test]
    fn hop_with_uneven_slide_uses_gcd_panes() {
        let w = WindowSpec::Hop {
            slide_ms: 4_000,
            size_ms: 10_000,
        };
        assert_eq!(w.pane_ms(), Some(2_000));
        let starts: Vec<_> = w.window_starts(9_000).collect();
        assert_eq!(starts, vec![0, 4_000, 8_000]);
    }

    #[test]
    fn windows_closing_lists_each_window_once() {
        let w = WindowSpec::Hop {
            slide_ms: 5,
            size_ms: 10,
        };
        // panes 0 and 5 hold data; watermark moved from 0 to 15
        assert_eq!(w.windows_closing([0, 5], 0, 15), vec![-5, 0, 5]);
        assert_eq!(w.windows_closing([0, 5], 10, 15), vec![5]);
    }
}
