//! The demo's plain view: tables printed every few seconds (and once at the
//! end), for logs and terminals without a dashboard.

use super::view::{DemoState, OHLC_COLUMNS, header, trading_alerts};

/// Prints the current figures, bars and alerts.
pub fn print_plain(state: &DemoState<'_>) {
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
        "\nTrading alerts: {} so far, {} arbitrage opportunities open",
        state.total("alerts"),
        state.table("arbitrage", &["symbol"]).len()
    );
    for [kind, symbol, what, at] in trading_alerts(state, 6) {
        let _ = writeln!(s, "  {kind:<15} {symbol:>6} {what} at {at}");
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
    for (i, st) in state.pipeline.streams().iter().enumerate() {
        let m = state.pipeline.stream_metrics(i);
        let _ = writeln!(
            s,
            "  {:<17} rows out {:>7}  late {:>4}  open windows {:>4}",
            st.name, m.rows_out, m.late_events, m.open_windows
        );
    }
    println!("{s}");
}
