//! What the web view shows, as data: which streams are charts and which
//! are alerts, their recent rows in bounded ring buffers, and the JSON
//! messages the page receives (a snapshot for a page that just opened, then
//! updates). Pure: no threads, no sockets, no clocks (times come in as
//! arguments), so every rule here is unit-tested.
//!
//! Invariants: memory is bounded by `RING_CANDLES` / `RING_ALERTS` rows per
//! stream (each text cell cut to `MAX_TEXT` characters); a row is converted
//! to JSON once, however many pages watch; the messages are compact JSON
//! (no raw newline, so one SSE `data:` line each).

use std::collections::{BTreeMap, HashMap, VecDeque};

use arrow::array::{Array, ArrayRef, AsArray, RecordBatch};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Float64Type, Int64Type, TimeUnit};
use arrow::util::display::array_value_to_string;
use serde_json::{Value, json};

use crate::engine::RunningStream;
use crate::engine::window::WindowSpec;
use crate::runtime::Status;

/// Candle rows kept per OHLC stream (8 symbols: 512 bars each).
pub const RING_CANDLES: usize = 4096;
/// Alert rows kept per alert stream.
pub const RING_ALERTS: usize = 200;
/// Characters kept of a text cell (a symbol, an alert's detail).
pub const MAX_TEXT: usize = 200;

/// What the page does with a stream's rows.
#[derive(Clone, Debug, PartialEq)]
pub enum Role {
    /// OHLC bars: a candlestick chart per symbol.
    Candles {
        /// Column naming the chart (`symbol`, or the first key column).
        symbol: Option<String>,
        /// Length of a bar (the TUMBLE window).
        frame_ms: i64,
    },
    /// Rows of the alerts table.
    Alerts {
        /// Column with the row's event time.
        time: Option<String>,
    },
}

impl Role {
    /// Rows of this role kept for a page opened late.
    pub fn ring(&self) -> usize {
        match self {
            Role::Candles { .. } => RING_CANDLES,
            Role::Alerts { .. } => RING_ALERTS,
        }
    }
}

/// The role of a stream, if the page shows it: a TUMBLE stream with
/// `open`, `high`, `low` and `close` is a chart; a stream no other stream
/// reads whose name says `alert` or which has an `alert` column is an alert
/// stream (an intermediate one, e.g. `price_alerts` under the `alerts`
/// union, would show every alert twice). Hidden streams (`__`) are skipped.
pub fn role_of(stream: &RunningStream) -> Option<Role> {
    if stream.name.contains("__") {
        return None;
    }
    let schema = &stream.output_schema;
    let has = |c: &str| schema.column_with_name(c).is_some();
    if let Some(WindowSpec::Tumble { size_ms }) = stream.window
        && ["open", "high", "low", "close", "window_start"]
            .iter()
            .all(|c| has(c))
    {
        let symbol = if has("symbol") {
            Some("symbol".to_string())
        } else {
            stream
                .key_columns
                .iter()
                .find(|k| !k.starts_with("window_"))
                .cloned()
        };
        return Some(Role::Candles {
            symbol,
            frame_ms: size_ms,
        });
    }
    let alert_like = stream.name.to_lowercase().contains("alert") || has("alert");
    (alert_like && !stream.intermediate && !stream.updating).then(|| Role::Alerts {
        time: stream.event_time.clone(),
    })
}

/// One row as column → JSON value: numbers (decimals included) as numbers,
/// timestamps and dates as epoch milliseconds, text cut to `MAX_TEXT`.
pub fn rows_json(batch: &RecordBatch, from_row: usize) -> Vec<BTreeMap<String, Value>> {
    let schema = batch.schema();
    let columns: Vec<(String, Vec<Value>)> = schema
        .fields()
        .iter()
        .zip(batch.columns())
        .map(|(f, c)| {
            let sliced = c.slice(from_row, c.len() - from_row);
            (f.name().clone(), column_json(&sliced))
        })
        .collect();
    (0..batch.num_rows() - from_row)
        .map(|i| {
            columns
                .iter()
                .map(|(name, values)| (name.clone(), values[i].clone()))
                .collect()
        })
        .collect()
}

/// A column's values as JSON (see [`rows_json`]); a type it cannot read
/// becomes its display text, never an error.
fn column_json(array: &ArrayRef) -> Vec<Value> {
    let n = array.len();
    let as_text = || {
        (0..n)
            .map(|i| match array.is_null(i) {
                true => Value::Null,
                false => Value::String(cut(&array_value_to_string(array, i).unwrap_or_default())),
            })
            .collect()
    };
    match array.data_type() {
        DataType::Boolean => {
            let b = array.as_boolean();
            values(array, |i| Value::Bool(b.value(i)))
        }
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => as_text(),
        DataType::Timestamp(..) | DataType::Date32 | DataType::Date64 => {
            let ms = DataType::Timestamp(TimeUnit::Millisecond, None);
            match cast(array, &ms).and_then(|a| cast(&a, &DataType::Int64)) {
                Ok(a) => {
                    let a = a.as_primitive::<Int64Type>();
                    values(array, |i| Value::from(a.value(i)))
                }
                Err(_) => as_text(),
            }
        }
        t if t.is_numeric() => match cast(array, &DataType::Float64) {
            // A non-finite float has no JSON number: null.
            Ok(a) => {
                let a = a.as_primitive::<Float64Type>();
                values(array, |i| Value::from(a.value(i)))
            }
            Err(_) => as_text(),
        },
        _ => as_text(),
    }
}

/// `value(i)` for each valid row of `array`, null for the others.
fn values(array: &ArrayRef, value: impl Fn(usize) -> Value) -> Vec<Value> {
    (0..array.len())
        .map(|i| {
            if array.is_valid(i) {
                value(i)
            } else {
                Value::Null
            }
        })
        .collect()
}

/// `s` cut to `MAX_TEXT` characters (on a character boundary).
fn cut(s: &str) -> String {
    match s.char_indices().nth(MAX_TEXT) {
        Some((at, _)) => format!("{}…", &s[..at]),
        None => s.to_string(),
    }
}

/// A bar as the page draws it: `[symbol, start ms, open, high, low, close, volume]`.
fn candle(row: &BTreeMap<String, Value>, symbol: &Option<String>) -> Option<Value> {
    let num = |c: &str| row.get(c).and_then(Value::as_f64);
    let name = match symbol.as_ref().and_then(|c| row.get(c)) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Null) | None => "all".to_string(),
        Some(other) => other.to_string(),
    };
    let start = row.get("window_start").and_then(Value::as_i64)?;
    Some(json!([
        name,
        start,
        num("open")?,
        num("high")?,
        num("low")?,
        num("close")?,
        num("volume")
    ]))
}

/// An alert as the page lists it: stream, event time, symbol, alert name,
/// value, and the other columns as `name=value` text.
fn alert(stream: &str, row: &BTreeMap<String, Value>, time: &Option<String>) -> Value {
    let shown = ["symbol", "alert", "value"];
    let details: Vec<String> = row
        .iter()
        .filter(|(k, _)| !shown.contains(&k.as_str()) && Some(*k) != time.as_ref())
        .map(|(k, v)| match v {
            Value::String(s) => format!("{k}={s}"),
            Value::Number(n) => match n.as_f64() {
                Some(f) if f.fract() != 0.0 => format!("{k}={f:.2}"),
                _ => format!("{k}={n}"),
            },
            other => format!("{k}={other}"),
        })
        .collect();
    json!({
        "stream": stream,
        "t": time.as_ref().and_then(|c| row.get(c)).cloned().unwrap_or(Value::Null),
        "symbol": row.get("symbol").cloned().unwrap_or(Value::Null),
        "alert": row.get("alert").cloned().unwrap_or_else(|| Value::String(stream.to_string())),
        "value": row.get("value").cloned().unwrap_or(Value::Null),
        "details": details.join(", "),
    })
}

/// A stream's recent rows, already shaped for the page.
#[derive(Debug)]
struct Ring {
    role: Role,
    rows: VecDeque<Value>,
    total: u64,
}

impl Ring {
    fn push(&mut self, row: Value) {
        if self.rows.len() == self.role.ring() {
            self.rows.pop_front();
        }
        self.rows.push_back(row);
        self.total += 1;
    }
}

/// Rows that arrived since the last update, per stream (what the page gets).
#[derive(Debug, Default)]
pub struct Delta {
    candles: BTreeMap<String, Vec<Value>>,
    alerts: Vec<Value>,
}

impl Delta {
    pub fn is_empty(&self) -> bool {
        self.candles.is_empty() && self.alerts.is_empty()
    }
}

/// The shown streams and their rings.
#[derive(Debug, Default)]
pub struct Feed {
    rings: BTreeMap<String, Ring>,
}

impl Feed {
    /// The roles of a pipeline's streams (rows already kept for a stream
    /// of the same role stay: a failover plans the same query again).
    pub fn configure(&mut self, roles: &HashMap<String, Role>) {
        self.rings
            .retain(|name, ring| roles.get(name) == Some(&ring.role));
        for (name, role) in roles {
            self.rings.entry(name.clone()).or_insert_with(|| Ring {
                role: role.clone(),
                rows: VecDeque::new(),
                total: 0,
            });
        }
    }

    /// Takes a stream's new rows into its ring and into `delta`. Rows
    /// beyond the ring's size would be pushed out at once, so only the
    /// newest that fit are converted.
    pub fn ingest(&mut self, stream: &str, batch: &RecordBatch, delta: &mut Delta) {
        let Some(ring) = self.rings.get_mut(stream) else {
            return;
        };
        let skip = batch.num_rows().saturating_sub(ring.role.ring());
        ring.total += skip as u64;
        for row in rows_json(batch, skip) {
            let shaped = match &ring.role {
                Role::Candles { symbol, .. } => match candle(&row, symbol) {
                    Some(c) => c,
                    None => continue,
                },
                Role::Alerts { time } => alert(stream, &row, time),
            };
            match ring.role {
                Role::Candles { .. } => delta
                    .candles
                    .entry(stream.to_string())
                    .or_default()
                    .push(shaped.clone()),
                Role::Alerts { .. } => delta.alerts.push(shaped.clone()),
            }
            ring.push(shaped);
        }
    }

    /// The streams shown: charts with their bar length, alert streams.
    fn layout(&self) -> Value {
        let charts: Vec<Value> = self
            .rings
            .iter()
            .filter_map(|(name, r)| match r.role {
                Role::Candles { frame_ms, .. } => {
                    Some(json!({ "stream": name, "frame_ms": frame_ms, "bars": r.total }))
                }
                Role::Alerts { .. } => None,
            })
            .collect();
        let alerts: Vec<Value> = self
            .rings
            .iter()
            .filter(|(_, r)| matches!(r.role, Role::Alerts { .. }))
            .map(|(name, r)| json!({ "stream": name, "rows": r.total }))
            .collect();
        json!({ "charts": charts, "alert_streams": alerts })
    }

    /// Everything kept, for a page that just opened.
    pub fn snapshot(&self, name: &str, pipeline: &Value) -> String {
        let mut delta = Delta::default();
        for (stream, ring) in &self.rings {
            match ring.role {
                Role::Candles { .. } => {
                    delta
                        .candles
                        .insert(stream.clone(), ring.rows.iter().cloned().collect());
                }
                Role::Alerts { .. } => delta.alerts.extend(ring.rows.iter().cloned()),
            }
        }
        self.message(name, &delta, pipeline, true)
    }

    /// An update (or, with `reset`, a snapshot) message.
    pub fn message(&self, name: &str, delta: &Delta, pipeline: &Value, reset: bool) -> String {
        let msg = json!({
            "reset": reset,
            "name": name,
            "layout": self.layout(),
            "candles": delta.candles,
            "alerts": delta.alerts,
            "pipeline": pipeline,
        });
        msg.to_string()
    }
}

/// Records per second from successive status samples: the status is
/// refreshed every couple of seconds, so the rate is taken between the
/// samples where the count changed.
#[derive(Debug, Default)]
pub struct Rate {
    last: Option<(i64, u64)>,
    per_s: f64,
}

/// A count that stays the same this long means a rate of zero.
const RATE_IDLE_MS: i64 = 5_000;

impl Rate {
    pub fn observe(&mut self, now_ms: i64, total: u64) -> f64 {
        match self.last {
            Some((t, n)) if total != n && now_ms > t => {
                self.per_s = total.saturating_sub(n) as f64 * 1000.0 / (now_ms - t) as f64;
                self.last = Some((now_ms, total));
            }
            Some((t, n)) if total == n => {
                if now_ms - t > RATE_IDLE_MS {
                    self.per_s = 0.0;
                }
            }
            Some(_) => {}
            None => self.last = Some((now_ms, total)),
        }
        self.per_s
    }
}

/// The pipeline panel's figures from the worker's status at `now_ms`.
pub fn pipeline_panel(s: &Status, rate: &mut Rate, now_ms: i64) -> Value {
    let records_in: u64 = s.records_in.values().sum();
    let watermark = s
        .watermarks
        .values()
        .copied()
        .filter(|w| *w > i64::MIN && *w < i64::MAX)
        .min();
    let checkpoint = s.last_checkpoint.as_ref().map(|c| {
        json!({ "id": c.id, "time_ms": c.time_ms, "duration_ms": c.duration_ms, "bytes": c.bytes })
    });
    json!({
        "state": format!("{:?}", s.state),
        "records_in": records_in,
        "records_per_s": rate.observe(now_ms, records_in).round(),
        "records_out": s.records_out.values().sum::<u64>(),
        "watermark_ms": watermark,
        "watermark_delay_ms": watermark.and_then(|w| watermark_delay(w, now_ms)),
        "lag": s.total_lag(),
        "checkpoints": s.checkpoints,
        "last_checkpoint": checkpoint,
        "dead_letters": s.dead_letters.values().sum::<u64>(),
        "late_events": s.late_events.values().sum::<u64>(),
        "failovers": s.failovers,
        "now_ms": now_ms,
    })
}

/// How far the watermark is behind the wall clock, when event time is
/// wall-clock time at all: a replay of old data or the simulator's own
/// calendar is days away from now, where the difference says nothing.
fn watermark_delay(watermark: i64, now_ms: i64) -> Option<i64> {
    const DAY_MS: i64 = 86_400_000;
    let delay = now_ms.saturating_sub(watermark);
    (-60_000..DAY_MS).contains(&delay).then_some(delay.max(0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    use arrow::array::{Float64Array, StringArray, TimestampMillisecondArray};
    use arrow::datatypes::{Field, Schema};

    use crate::engine::{Catalog, EngineConfig, Pipeline};

    fn roles(sql: &str) -> HashMap<String, Role> {
        let p = Pipeline::new(sql, &Catalog::builtin(), &EngineConfig::default()).unwrap();
        p.streams()
            .iter()
            .filter_map(|s| Some((s.name.clone(), role_of(s)?)))
            .collect()
    }

    #[test]
    fn demo_streams_get_their_roles() {
        let r = roles(&crate::queries::builtin_sql());
        let charts: Vec<_> = r
            .iter()
            .filter(|(_, r)| matches!(r, Role::Candles { .. }))
            .map(|(n, _)| n.as_str())
            .collect();
        assert_eq!(charts.len(), 2, "{charts:?}");
        assert!(charts.contains(&"ohlc_5s") && charts.contains(&"ohlc_1m"));
        assert_eq!(
            r["ohlc_5s"],
            Role::Candles {
                symbol: Some("symbol".into()),
                frame_ms: 5_000,
            }
        );
        assert!(matches!(
            r["ohlc_1m"],
            Role::Candles {
                frame_ms: 60_000,
                ..
            }
        ));
        // The unions are shown, not the intermediate streams under them.
        assert!(matches!(r["alerts"], Role::Alerts { .. }));
        assert!(matches!(r["risk_alerts"], Role::Alerts { .. }));
        assert!(!r.contains_key("price_alerts"));
        assert!(!r.contains_key("daily_loss_alerts"));
        assert!(!r.contains_key("large_trades"));
    }

    fn bars(symbols: &[&str], start_ms: i64) -> RecordBatch {
        let n = symbols.len();
        let schema = Arc::new(Schema::new(vec![
            Field::new("symbol", DataType::Utf8, false),
            Field::new("open", DataType::Float64, true),
            Field::new("high", DataType::Float64, true),
            Field::new("low", DataType::Float64, true),
            Field::new("close", DataType::Float64, true),
            Field::new(
                "window_start",
                DataType::Timestamp(TimeUnit::Millisecond, None),
                false,
            ),
        ]));
        let f = |v: f64| Arc::new(Float64Array::from(vec![v; n])) as ArrayRef;
        RecordBatch::try_new(
            schema,
            vec![
                Arc::new(StringArray::from(symbols.to_vec())),
                f(1.0),
                f(2.0),
                f(0.5),
                f(f64::NAN),
                Arc::new(TimestampMillisecondArray::from(vec![start_ms; n])),
            ],
        )
        .unwrap()
    }

    fn chart_feed() -> Feed {
        let mut feed = Feed::default();
        let roles = HashMap::from([(
            "ohlc".to_string(),
            Role::Candles {
                symbol: Some("symbol".into()),
                frame_ms: 5_000,
            },
        )]);
        feed.configure(&roles);
        feed
    }

    #[test]
    fn candles_are_shaped_and_a_bar_without_a_price_is_skipped() {
        let mut feed = chart_feed();
        let mut delta = Delta::default();
        // close is NaN: no JSON number, so the bar cannot be drawn.
        feed.ingest("ohlc", &bars(&["AAPL"], 5_000), &mut delta);
        assert!(delta.is_empty());
        let schema = bars(&["AAPL"], 0).schema();
        let mut cols = bars(&["AAPL", "<b>x</b>"], 5_000).columns().to_vec();
        cols[4] = Arc::new(Float64Array::from(vec![1.5, 1.5]));
        let batch = RecordBatch::try_new(schema, cols).unwrap();
        feed.ingest("ohlc", &batch, &mut delta);
        assert_eq!(
            delta.candles["ohlc"][1],
            json!(["<b>x</b>", 5000, 1.0, 2.0, 0.5, 1.5, null])
        );
        feed.ingest("not_shown", &batch, &mut delta);
        assert_eq!(delta.candles.len(), 1);
    }

    #[test]
    fn rings_keep_the_newest_rows_only() {
        let mut feed = chart_feed();
        let symbols: Vec<String> = (0..RING_CANDLES + 10).map(|i| format!("S{i}")).collect();
        let refs: Vec<&str> = symbols.iter().map(String::as_str).collect();
        let schema = bars(&["x"], 0).schema();
        let mut cols = bars(&refs, 0).columns().to_vec();
        cols[4] = Arc::new(Float64Array::from(vec![1.0; refs.len()]));
        let batch = RecordBatch::try_new(schema, cols).unwrap();
        let mut delta = Delta::default();
        feed.ingest("ohlc", &batch, &mut delta);
        feed.ingest("ohlc", &batch.slice(0, 3), &mut delta);
        let ring = &feed.rings["ohlc"];
        assert_eq!(ring.rows.len(), RING_CANDLES);
        assert_eq!(ring.total, (RING_CANDLES + 13) as u64);
        assert_eq!(ring.rows.back().unwrap()[0], "S2");
        let snap: Value = serde_json::from_str(&feed.snapshot("q", &json!({}))).unwrap();
        assert_eq!(snap["reset"], true);
        assert_eq!(
            snap["candles"]["ohlc"].as_array().unwrap().len(),
            RING_CANDLES
        );
        assert_eq!(
            snap["layout"]["charts"][0]["bars"],
            RING_CANDLES as u64 + 13
        );
    }

    #[test]
    fn alerts_keep_their_text_as_data_and_long_text_is_cut() {
        let long = "é".repeat(MAX_TEXT + 50);
        let schema = Arc::new(Schema::new(vec![
            Field::new("symbol", DataType::Utf8, true),
            Field::new(
                "ts",
                DataType::Timestamp(TimeUnit::Millisecond, None),
                false,
            ),
            Field::new("alert", DataType::Utf8, false),
            Field::new("value", DataType::Float64, true),
            Field::new("note", DataType::Utf8, true),
        ]));
        let batch = RecordBatch::try_new(
            schema,
            vec![
                Arc::new(StringArray::from(vec![Some("<script>x</script>"), None])),
                Arc::new(TimestampMillisecondArray::from(vec![1_000, 2_000])),
                Arc::new(StringArray::from(vec!["price_move", "a\nb"])),
                Arc::new(Float64Array::from(vec![5.25, 1.0])),
                Arc::new(StringArray::from(vec![long.as_str(), "n"])),
            ],
        )
        .unwrap();
        let mut feed = Feed::default();
        feed.configure(&HashMap::from([(
            "alerts".to_string(),
            Role::Alerts {
                time: Some("ts".into()),
            },
        )]));
        let mut delta = Delta::default();
        feed.ingest("alerts", &batch, &mut delta);
        let a = &delta.alerts[0];
        assert_eq!(a["symbol"], "<script>x</script>");
        assert_eq!(a["t"], 1000);
        assert_eq!(a["value"], 5.25);
        let details = a["details"].as_str().unwrap();
        assert_eq!(details.chars().count(), "note=".len() + MAX_TEXT + 1);
        assert_eq!(delta.alerts[1]["symbol"], Value::Null);
        // One message is one line (an SSE data line).
        let msg = feed.message("q", &delta, &json!({}), false);
        assert!(!msg.contains('\n'), "{msg}");
    }

    #[test]
    fn rate_is_taken_between_changed_samples_and_falls_to_zero() {
        let mut r = Rate::default();
        assert_eq!(r.observe(0, 0), 0.0);
        assert_eq!(r.observe(250, 0), 0.0);
        assert_eq!(r.observe(2_000, 1_000), 500.0);
        // The status was not refreshed yet: keep the last rate.
        assert_eq!(r.observe(2_250, 1_000), 500.0);
        assert_eq!(r.observe(4_000, 3_000), 1000.0);
        assert_eq!(r.observe(9_500, 3_000), 0.0);
    }

    #[test]
    fn panel_reads_the_status() {
        let mut s = Status::default();
        s.records_in.insert("market_ticks".into(), 10);
        s.records_in.insert("order_events".into(), 5);
        s.watermarks.insert("market_ticks".into(), 9_000);
        s.watermarks.insert("book_updates".into(), i64::MIN);
        s.dead_letters.insert("bad-json".into(), 2);
        s.lag.insert("t/0".into(), 7);
        let p = pipeline_panel(&s, &mut Rate::default(), 10_000);
        assert_eq!(p["records_in"], 15);
        assert_eq!(p["watermark_delay_ms"], 1_000);
        assert_eq!(p["dead_letters"], 2);
        assert_eq!(p["lag"], 7);
        assert_eq!(p["last_checkpoint"], Value::Null);
        // Event time of another day (a replay): no delay to speak of.
        s.watermarks.insert("market_ticks".into(), 9_000);
        let p = pipeline_panel(&s, &mut Rate::default(), 9_000 + 2 * 86_400_000);
        assert_eq!(p["watermark_ms"], 9_000);
        assert_eq!(p["watermark_delay_ms"], Value::Null);
    }
}
