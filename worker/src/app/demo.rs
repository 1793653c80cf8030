//! `tickflow-worker demo`: the whole pipeline in one process, no broker.
//!
//! The simulator produces market data in real time (times `speed`), every
//! query of `sql/` runs over it, and the results are shown live: a ratatui
//! dashboard on a terminal, plain periodic tables otherwise.

use std::collections::{BTreeMap, HashMap};
use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use arrow::array::{Array, RecordBatch};
use arrow::util::display::array_value_to_string;

use crate::checkpoint::{Checkpoint, CheckpointInfo, CheckpointStore};
use crate::codec::SourceTable;
use crate::engine::{EngineConfig, Pipeline, SourceDef, StreamOutput};
use crate::simulator::{SimConfig, Simulator};
use crate::sink::memory::MemorySink;

/// The analytics queries shipped in `sql/`, embedded so the demo runs anywhere.
pub const BUILTIN_QUERIES: [(&str, &str); 9] = [
    ("ohlc_5s", include_str!("../../../sql/ohlc_5s.sql")),
    ("ohlc_1m", include_str!("../../../sql/ohlc_1m.sql")),
    (
        "rolling_stats",
        include_str!("../../../sql/rolling_stats.sql"),
    ),
    (
        "volume_pressure",
        include_str!("../../../sql/volume_pressure.sql"),
    ),
    (
        "volume_anomalies",
        include_str!("../../../sql/volume_anomalies.sql"),
    ),
    (
        "large_trades",
        include_str!("../../../sql/large_trades.sql"),
    ),
    (
        "spread_metrics",
        include_str!("../../../sql/spread_metrics.sql"),
    ),
    (
        "book_imbalance",
        include_str!("../../../sql/book_imbalance.sql"),
    ),
    (
        "trading_sessions",
        include_str!("../../../sql/trading_sessions.sql"),
    ),
];

/// All built-in queries as one SQL text.
pub fn builtin_sql() -> String {
    BUILTIN_QUERIES
        .iter()
        .map(|(_, q)| *q)
        .collect::<Vec<_>>()
        .join("\n")
}

#[derive(Clone, Debug)]
pub struct DemoOptions {
    pub sim: SimConfig,
    /// Event-time speed-up over the wall clock.
    pub speed: f64,
    pub duration: Option<Duration>,
    /// Force plain output even on a terminal.
    pub plain: bool,
    /// Plain-mode print interval.
    pub refresh: Duration,
    pub checkpoint_dir: Option<PathBuf>,
    pub checkpoint_interval: Duration,
    pub allowed_lateness: Duration,
    pub stop: Arc<AtomicBool>,
}

/// Live state the views read.
pub struct DemoState {
    pub pipeline: Pipeline,
    pub results: BTreeMap<String, MemorySink>,
    pub started: Instant,
    pub events_in: u64,
    pub last_checkpoint: Option<CheckpointInfo>,
    pub checkpoints: u64,
    /// Input rate over the last refresh interval.
    pub rate: f64,
}

impl DemoState {
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

    pub fn total(&self, stream: &str) -> u64 {
        self.results.get(stream).map_or(0, |s| s.total_rows())
    }
}

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

/// Runs the demo until `duration`, `q` or Ctrl-C.
pub fn run_demo(opts: DemoOptions) -> anyhow::Result<()> {
    let sources = SourceDef::builtin();
    let config = EngineConfig {
        allowed_lateness: opts.allowed_lateness,
        idle_timeout: None,
    };
    let pipeline = Pipeline::new(&builtin_sql(), &sources, &config)?;
    let results = pipeline
        .streams()
        .iter()
        .map(|s| (s.name.clone(), MemorySink::new(4096)))
        .collect();
    let mut state = DemoState {
        pipeline,
        results,
        started: Instant::now(),
        events_in: 0,
        last_checkpoint: None,
        checkpoints: 0,
        rate: 0.0,
    };
    let store = match &opts.checkpoint_dir {
        Some(dir) => Some(CheckpointStore::open(dir, 3)?),
        None => None,
    };
    let tui = !opts.plain && std::io::stdout().is_terminal();
    let mut view = if tui {
        View::Tui(super::demo_tui::Tui::start()?)
    } else {
        View::Plain
    };
    let result = drive(&opts, &mut state, store.as_ref(), &mut view);
    if let View::Tui(t) = view {
        t.stop();
    }
    result?;
    print_plain(&state);
    Ok(())
}

enum View {
    Plain,
    Tui(super::demo_tui::Tui),
}

fn drive(
    opts: &DemoOptions,
    state: &mut DemoState,
    store: Option<&CheckpointStore>,
    view: &mut View,
) -> anyhow::Result<()> {
    let mut sim = Simulator::try_new(opts.sim.clone())?;
    let start_event = opts.sim.start_time_ms;
    let step = Duration::from_millis(100);
    let mut out: Vec<StreamOutput> = Vec::new();
    let mut last_print = Instant::now();
    let mut last_checkpoint = Instant::now();
    let mut rate_window = (Instant::now(), 0u64);
    loop {
        if opts.stop.load(Ordering::Relaxed)
            || opts.duration.is_some_and(|d| state.started.elapsed() >= d)
        {
            break;
        }
        // Generate the events that are due by now, in event time.
        let due_event =
            start_event + (state.started.elapsed().as_secs_f64() * opts.speed * 1000.0) as i64;
        while sim.event_time_ms() < due_event {
            let n = ((due_event - sim.event_time_ms()) as f64 / 1000.0 * opts.sim.ticks_per_second)
                .clamp(1.0, 8192.0);
            let generated = sim.next_batch(n as usize);
            for (table, batch) in SourceTable::ALL.iter().zip(generated.to_batches()) {
                state.events_in += batch.num_rows() as u64;
                state
                    .pipeline
                    .push(table.table_name(), 0, &batch, &mut out)?;
            }
        }
        for o in out.drain(..) {
            if !o.late {
                let name = state.pipeline.streams()[o.stream].name.clone();
                state
                    .results
                    .get_mut(&name)
                    .expect("sink per stream")
                    .write(o.rows);
            }
        }
        if rate_window.0.elapsed() >= Duration::from_secs(1) {
            state.rate =
                (state.events_in - rate_window.1) as f64 / rate_window.0.elapsed().as_secs_f64();
            rate_window = (Instant::now(), state.events_in);
        }
        if let Some(store) = store
            && last_checkpoint.elapsed() >= opts.checkpoint_interval
        {
            let cp = Checkpoint {
                id: store.next_id()?,
                created_at_ms: super::now_ms(),
                sources: BTreeMap::from([(
                    "simulator".to_string(),
                    serde_json::json!({ "ticks": sim.ticks_generated(), "seed": opts.sim.seed }),
                )]),
                sinks: BTreeMap::new(),
                sink_states: BTreeMap::new(),
                engine: state.pipeline.snapshot()?,
            };
            state.last_checkpoint = Some(store.write(&cp)?);
            state.checkpoints += 1;
            last_checkpoint = Instant::now();
        }
        match view {
            View::Tui(t) => {
                if t.draw_and_poll(state, step)? {
                    break;
                }
            }
            View::Plain => {
                if last_print.elapsed() >= opts.refresh {
                    print_plain(state);
                    last_print = Instant::now();
                }
                std::thread::sleep(step);
            }
        }
    }
    Ok(())
}

/// Header figures shared by both views.
pub fn header(state: &DemoState) -> Vec<(String, String)> {
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
        ("event time".into(), super::format_event_time(max)),
        (
            "watermark".into(),
            format!("{} (lag {lag})", super::format_event_time(wm)),
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

fn print_plain(state: &DemoState) {
    use std::fmt::Write;
    let mut s = String::new();
    let _ = writeln!(s, "\n=== tickflow demo ===");
    for (k, v) in header(state) {
        let _ = writeln!(s, "{k:>11}: {v}");
    }
    for (title, stream) in [
        ("OHLC 5s (latest closed bar per symbol)", "ohlc_5s"),
        ("OHLC 1m", "ohlc_1m"),
    ] {
        let rows = state.latest_by(stream, "symbol");
        let _ = writeln!(s, "\n{title}: {} bars so far", state.total(stream));
        if !rows.is_empty() {
            let _ = writeln!(
                s,
                "{}",
                OHLC_COLUMNS
                    .iter()
                    .map(|c| format!(" {c:>10}"))
                    .collect::<String>()
            );
            for r in rows {
                let line: String = OHLC_COLUMNS
                    .iter()
                    .map(|c| format!(" {:>10}", r.get(*c).map_or("", |v| v)))
                    .collect();
                let _ = writeln!(s, "{line}");
            }
        }
    }
    let _ = writeln!(
        s,
        "\nAlerts: {} large trades, {} volume anomalies",
        state.total("large_trades"),
        state.total("volume_anomalies")
    );
    for r in state.newest("large_trades", 5) {
        let _ = writeln!(
            s,
            "  LARGE TRADE {:>6} {:>5} {:>6} @ {:>8} at {}",
            r["symbol"], r["side"], r["volume"], r["price"], r["ts"]
        );
    }
    for r in state.newest("volume_anomalies", 3) {
        let _ = writeln!(
            s,
            "  VOLUME SPIKE {:>6} total {:>7} max {:>6} in window ending {}",
            r["symbol"], r["total_volume"], r["max_volume"], r["window_end"]
        );
    }
    let _ = writeln!(s, "\nStreams:");
    for st in state.pipeline.streams() {
        let m = st.metrics();
        let _ = writeln!(
            s,
            "  {:<17} rows out {:>7}  late {:>4}  open windows {:>4}",
            st.name, m.rows_out, m.late_events, m.open_windows
        );
    }
    println!("{s}");
}
