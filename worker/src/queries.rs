//! The analytics queries shipped in `sql/`, embedded so the demo (and the
//! tests that compare every query with DataFusion) run anywhere.

/// The seed queries: each one window or filter over one table.
pub const BUILTIN_QUERIES: [(&str, &str); 9] = [
    ("ohlc_5s", include_str!("../../sql/ohlc_5s.sql")),
    ("ohlc_1m", include_str!("../../sql/ohlc_1m.sql")),
    ("rolling_stats", include_str!("../../sql/rolling_stats.sql")),
    (
        "volume_pressure",
        include_str!("../../sql/volume_pressure.sql"),
    ),
    (
        "volume_anomalies",
        include_str!("../../sql/volume_anomalies.sql"),
    ),
    ("large_trades", include_str!("../../sql/large_trades.sql")),
    (
        "spread_metrics",
        include_str!("../../sql/spread_metrics.sql"),
    ),
    (
        "book_imbalance",
        include_str!("../../sql/book_imbalance.sql"),
    ),
    (
        "trading_sessions",
        include_str!("../../sql/trading_sessions.sql"),
    ),
];

/// The trading jobs: DAGs of named streams, OVER windows over streams,
/// UNION ALL, updating streams (GROUP BY without a window) and an ASOF
/// join (the risk monitor).
pub const TRADING_QUERIES: [(&str, &str); 3] = [
    (
        "trading_alerts",
        include_str!("../../sql/trading_alerts.sql"),
    ),
    ("arbitrage", include_str!("../../sql/arbitrage.sql")),
    ("risk_alerts", include_str!("../../sql/risk_alerts.sql")),
];

/// Every query in `sql/` as one SQL text (what the demo runs).
pub fn builtin_sql() -> String {
    BUILTIN_QUERIES
        .iter()
        .chain(&TRADING_QUERIES)
        .map(|(_, q)| *q)
        .collect::<Vec<_>>()
        .join("\n")
}
