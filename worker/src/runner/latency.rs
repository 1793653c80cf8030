//! End-to-end latency of result rows: from a row's event time (a window's
//! end, a row-by-row stream's event time) to the commit that makes its
//! output visible. The rows of the open epoch are sampled as they are
//! routed; the epoch's commit turns the samples into histogram counts.
//!
//! Invariants: memory per stream is bounded by [`MAX_SAMPLES`] whatever
//! the epoch's size; the counts are exact up to that many rows per stream
//! and epoch, beyond it every `stride`-th row stands for `stride` rows
//! (the stride doubles each time the samples fill up, so they stay spread
//! evenly over the epoch).

use std::collections::BTreeMap;

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::{DataType, TimeUnit, TimestampMillisecondType};

use tickflow_crds::LatencyHistogram;

/// Samples kept per stream and epoch.
pub const MAX_SAMPLES: usize = 1 << 16;

/// Event times of one stream's rows in the open epoch.
#[derive(Debug)]
struct Samples {
    event_ms: Vec<i64>,
    /// Every `stride`-th row is kept; each kept row stands for `stride`.
    stride: u64,
    seen: u64,
}

impl Default for Samples {
    fn default() -> Self {
        Self {
            event_ms: Vec::new(),
            stride: 1,
            seen: 0,
        }
    }
}

impl Samples {
    fn add(&mut self, event_ms: i64) {
        if self.seen.is_multiple_of(self.stride) {
            self.event_ms.push(event_ms);
            if self.event_ms.len() == MAX_SAMPLES {
                // Keep the rows at multiples of the doubled stride.
                let mut i = 0;
                self.event_ms.retain(|_| {
                    i += 1;
                    i % 2 == 1
                });
                self.stride *= 2;
            }
        }
        self.seen += 1;
    }
}

/// The open epoch's samples, by stream.
#[derive(Debug, Default)]
pub struct EpochLatencies {
    streams: BTreeMap<String, Samples>,
}

impl EpochLatencies {
    /// Samples the event times in `column` of `rows` (a timestamp column;
    /// anything else, and NULLs, are not counted).
    pub fn add(&mut self, stream: &str, rows: &RecordBatch, column: &str) {
        let Some(times) = event_times_ms(rows, column) else {
            return;
        };
        if times.is_empty() {
            return;
        }
        let samples = self.streams.entry(stream.to_string()).or_default();
        for t in times {
            samples.add(t);
        }
    }

    /// The epoch committed at `commit_ms`: adds its rows to `histograms`
    /// and starts the next epoch empty.
    pub fn commit(&mut self, commit_ms: i64, histograms: &mut BTreeMap<String, LatencyHistogram>) {
        for (stream, samples) in std::mem::take(&mut self.streams) {
            let h = histograms.entry(stream).or_default();
            for t in samples.event_ms {
                let seconds = commit_ms.saturating_sub(t) as f64 / 1000.0;
                h.observe(seconds, samples.stride);
            }
        }
    }

    pub fn is_empty(&self) -> bool {
        self.streams.is_empty()
    }
}

/// Milliseconds since the epoch of the non-NULL values of a timestamp column.
fn event_times_ms(rows: &RecordBatch, column: &str) -> Option<Vec<i64>> {
    let array = rows.column_by_name(column)?;
    let ms = match array.data_type() {
        DataType::Timestamp(TimeUnit::Millisecond, _) => array.clone(),
        DataType::Timestamp(_, tz) => arrow::compute::cast(
            array,
            &DataType::Timestamp(TimeUnit::Millisecond, tz.clone()),
        )
        .ok()?,
        _ => return None,
    };
    let ms = ms.as_primitive::<TimestampMillisecondType>();
    Some(ms.iter().flatten().collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::TimestampMillisecondArray;
    use arrow::datatypes::{Field, Schema};
    use std::sync::Arc;

    fn batch(times: Vec<Option<i64>>) -> RecordBatch {
        let schema = Schema::new(vec![Field::new(
            "window_end",
            DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())),
            true,
        )]);
        let col = TimestampMillisecondArray::from(times).with_timezone("UTC");
        RecordBatch::try_new(Arc::new(schema), vec![Arc::new(col)]).unwrap()
    }

    #[test]
    fn rows_count_from_their_event_time_to_the_commit() {
        let mut epoch = EpochLatencies::default();
        epoch.add(
            "bars",
            &batch(vec![Some(1_000), Some(9_000), None]),
            "window_end",
        );
        let mut h = BTreeMap::new();
        epoch.commit(10_000, &mut h);
        let bars = &h["bars"];
        assert_eq!(bars.count, 2, "NULL event times are not counted");
        assert!((bars.sum_seconds - 10.0).abs() < 1e-9, "9 s + 1 s");
        // 1 s falls in the bucket bounded by 1.0, 9 s in the one bounded by 10.
        let at = |b: f64| {
            tickflow_crds::LATENCY_BUCKETS_S
                .iter()
                .position(|x| *x == b)
                .unwrap()
        };
        assert_eq!(bars.counts[at(1.0)], 1);
        assert_eq!(bars.counts[at(10.0)], 1);
        assert!(epoch.is_empty(), "the next epoch starts empty");
        epoch.commit(20_000, &mut h);
        assert_eq!(h["bars"].count, 2, "an empty epoch adds nothing");
    }

    #[test]
    fn a_huge_epoch_is_sampled_in_bounded_memory_and_still_counts_every_row() {
        let mut epoch = EpochLatencies::default();
        let rows = 3 * MAX_SAMPLES as i64 + 5;
        let times: Vec<Option<i64>> = (0..rows).map(Some).collect();
        epoch.add("ticks", &batch(times), "window_end");
        let kept = epoch.streams["ticks"].event_ms.len();
        assert!(kept < MAX_SAMPLES, "kept {kept}");
        let mut h = BTreeMap::new();
        epoch.commit(rows + 1_000_000, &mut h);
        let counted = h["ticks"].count as i64;
        let stride = 4;
        assert!(
            (counted - rows).abs() < stride,
            "{counted} rows counted for {rows}"
        );
    }

    #[test]
    fn event_times_in_the_future_count_as_no_delay() {
        let mut epoch = EpochLatencies::default();
        epoch.add("bars", &batch(vec![Some(5_000)]), "window_end");
        let mut h = BTreeMap::new();
        epoch.commit(1_000, &mut h);
        assert_eq!(h["bars"].counts[0], 1);
        assert_eq!(h["bars"].sum_seconds, 0.0);
    }
}
