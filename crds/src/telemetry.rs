//! Logging set-up shared by the worker and the operator binaries (feature
//! `telemetry`), so both write the same plain or JSON lines.

/// How log lines are written (to stderr).
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum LogFormat {
    Plain,
    Json,
}

/// Installs the global subscriber: level from `RUST_LOG` (default `info`),
/// to stderr, colours only on a terminal (not in `kubectl logs`).
pub fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Plain => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}
