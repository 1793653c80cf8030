//! What the demo's views show, read from the running pipeline and the
//! memory sink: header figures, the latest bar per symbol, the newest
//! alerts, the open arbitrage opportunities. Both views (terminal and plain) read only this.

use std::collections::{BTreeMap, HashMap};
use std::time::Instant;

use arrow::array::{Array, RecordBatch};
use arrow::util::display::array_value_to_string;

use crate::checkpoint::CheckpointInfo;
use crate::clock::format_event_time;
use crate::engine::Pipeline;
use crate::runner::RowKind;
use crate::sink::memory::MemorySink;

/// Live state the views read, borrowed from the run for one frame.
pub struct DemoState<'a> {
    pub pipeline: &'a Pipeline,
    pub results: &'a BTreeMap<String, MemorySink>,
    pub started: Instant,
    pub events_in: u64,
    pub last_checkpoint: Option<&'a CheckpointInfo>,
    pub checkpoints: u64,
    /// Input rate over the last second.
    pub rate: f64,
    /// Malformed records sent to the dead letters.
    pub dead_letters: u64,
}

impl DemoState<'_> {
    /// Latest row of `stream` per value of `key`, newest first by window.
    pub fn latest_by(&self, stream: &str, key: &str) -> Vec<BTreeMap<String, String>> {
        let mut seen: HashMap<String, BTreeMap<String, String>> = HashMap::new();
        if let Some(sink) = self.results.get(stream) {
            for batch in sink.batches().rev() {
                for row in (0..batch.num_rows()).rev() {
                    let r = row_map(batch, row);
                    if let Some(k) = r.get(key)
                        && !seen.contains_key(k)
                    {
                        seen.insert(k.clone(), r);
                    }
                }
            }
        }
        let mut rows: Vec<_> = seen.into_values().collect();
        rows.sort_by(|a, b| a.get(key).cmp(&b.get(key)));
        rows
    }

    /// The newest `n` rows of `stream`, newest first.
    pub fn newest(&self, stream: &str, n: usize) -> Vec<BTreeMap<String, String>> {
        let mut out = Vec::new();
        if let Some(sink) = self.results.get(stream) {
            'outer: for batch in sink.batches().rev() {
                for row in (0..batch.num_rows()).rev() {
                    out.push(row_map(batch, row));
                    if out.len() >= n {
                        break 'outer;
                    }
                }
            }
        }
        out
    }

    /// The current rows of updating stream `stream` (keyed by `keys`): its
    /// retained changes applied in order, sorted by key.
    pub fn table(&self, stream: &str, keys: &[&str]) -> Vec<BTreeMap<String, String>> {
        let mut table: BTreeMap<Vec<String>, BTreeMap<String, String>> = BTreeMap::new();
        if let Some(sink) = self.results.get(stream) {
            for (kind, batch) in sink.changes() {
                for row in 0..batch.num_rows() {
                    let r = row_map(batch, row);
                    let key: Vec<String> = keys
                        .iter()
                        .map(|k| r.get(*k).cloned().unwrap_or_default())
                        .collect();
                    match kind {
                        RowKind::Deletes => {
                            table.remove(&key);
                        }
                        _ => {
                            table.insert(key, r);
                        }
                    }
                }
            }
        }
        table.into_values().collect()
    }

    /// The symbols with a 5 s bar so far, sorted.
    pub fn symbols(&self) -> Vec<String> {
        self.latest_by("ohlc_5s", "symbol")
            .into_iter()
            .filter_map(|r| r.get("symbol").cloned())
            .collect()
    }

    /// The newest `n` rows of `stream` for `symbol`, newest first.
    pub fn newest_of(&self, stream: &str, symbol: &str, n: usize) -> Vec<BTreeMap<String, String>> {
        self.newest(stream, ROWS_SCANNED)
            .into_iter()
            .filter(|r| r.get("symbol").map(String::as_str) == Some(symbol))
            .take(n)
            .collect()
    }

    pub fn total(&self, stream: &str) -> u64 {
        self.results.get(stream).map_or(0, |s| s.total_rows())
    }
}

/// How far back [`DemoState::newest_of`] looks (the sinks keep 4096 rows).
const ROWS_SCANNED: usize = 4096;

fn row_map(batch: &RecordBatch, row: usize) -> BTreeMap<String, String> {
    batch
        .schema()
        .fields()
        .iter()
        .zip(batch.columns())
        .map(|(f, c)| (f.name().clone(), cell(c.as_ref(), row)))
        .collect()
}

fn cell(array: &dyn Array, row: usize) -> String {
    if array.is_null(row) {
        return "-".into();
    }
    let s = array_value_to_string(array, row).unwrap_or_default();
    match array.data_type() {
        arrow::datatypes::DataType::Float64 => {
            s.parse::<f64>().map(|v| format!("{v:.2}")).unwrap_or(s)
        }
        arrow::datatypes::DataType::Timestamp(..) => s.get(11..19).unwrap_or(&s).to_string(),
        _ => s,
    }
}

/// Header figures shared by both views.
pub fn header(state: &DemoState<'_>) -> Vec<(String, String)> {
    let wm = state.pipeline.watermark("market_ticks").unwrap_or(i64::MIN);
    let max = state
        .pipeline
        .max_event_time("market_ticks")
        .unwrap_or(i64::MIN);
    let lag = if wm > i64::MIN && max > i64::MIN {
        format!("{} ms", max - wm)
    } else {
        "-".into()
    };
    let cp = match &state.last_checkpoint {
        Some(c) => format!(
            "#{} {} B in {} ms ({} total)",
            c.id,
            c.bytes,
            c.duration.as_millis(),
            state.checkpoints
        ),
        None => "none yet".into(),
    };
    vec![
        (
            "uptime".into(),
            format!("{:.0} s", state.started.elapsed().as_secs_f64()),
        ),
        (
            "events in".into(),
            format!("{} ({:.0}/s)", state.events_in, state.rate),
        ),
        ("event time".into(), format_event_time(max)),
        (
            "watermark".into(),
            format!("{} (lag {lag})", format_event_time(wm)),
        ),
        ("checkpoint".into(), cp),
    ]
}

/// Columns of the OHLC view.
pub const OHLC_COLUMNS: [&str; 9] = [
    "symbol",
    "window_end",
    "open",
    "high",
    "low",
    "close",
    "vwap",
    "volume",
    "tick_count",
];

/// One line per open arbitrage opportunity, then the `n` newest alerts of
/// the market (`alerts`: price moves, volume spikes, one-sided order flow)
/// and of risk (`risk_alerts`: position and daily loss limits), merged by
/// event time: (kind, symbol or trader, what, event time).
pub fn trading_alerts(state: &DemoState<'_>, n: usize) -> Vec<[String; 4]> {
    let mut lines = Vec::new();
    for r in state.table("arbitrage", &["symbol"]) {
        lines.push([
            "ARBITRAGE".to_string(),
            r["symbol"].clone(),
            format!(
                "buy {} sell {}: {} bp on {} venues",
                r["best_ask"], r["best_bid"], r["edge_bps"], r["exchanges"]
            ),
            r["as_of"].clone(),
        ]);
    }
    let mut alerts = Vec::new();
    for r in state.newest("alerts", n) {
        let what = match r["alert"].as_str() {
            "price_move" => format!("{} % in 10 s", r["value"]),
            "volume_spike" => format!("{}x the 20 s average volume", r["value"]),
            _ => format!("{} % of new order quantity on one side", r["value"]),
        };
        alerts.push([
            r["alert"].to_uppercase(),
            r["symbol"].clone(),
            what,
            r["ts"].clone(),
        ]);
    }
    for r in state.newest("risk_alerts", n) {
        let (who, what) = match r["alert"].as_str() {
            "POSITION_LIMIT_EXCEEDED" => (
                format!("{} {}", r["trader_id"], r["symbol"]),
                format!("exposure {} beyond {}", r["value"], r["threshold"]),
            ),
            _ => (
                r["trader_id"].clone(),
                format!("day P&L {} below {}", r["value"], r["threshold"]),
            ),
        };
        alerts.push([r["alert"].clone(), who, what, r["ts"].clone()]);
    }
    // Newest first (event times are RFC 3339 text of one width).
    alerts.sort_by(|a, b| b[3].cmp(&a[3]));
    alerts.truncate(n);
    lines.extend(alerts);
    lines
}
