//! The analytics queries shipped in `sql/`, embedded so the demo (and the
//! tests that compare every query with DataFusion) run anywhere.

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

/// All built-in queries as one SQL text.
pub fn builtin_sql() -> String {
    BUILTIN_QUERIES
        .iter()
        .map(|(_, q)| *q)
        .collect::<Vec<_>>()
        .join("\n")
}
