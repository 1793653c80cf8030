//! `tickflow-worker`: produce market data, run streaming SQL over it, or run
//! the whole pipeline as a demo.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand, ValueEnum};
use tickflow_worker::app::{self, demo, produce, query};
use tickflow_worker::simulator::{BurstConfig, SimConfig};

#[derive(Parser)]
#[command(name = "tickflow-worker", version, about = "Market simulator and streaming SQL worker")]
struct Cli {
    /// Log format.
    #[arg(long, global = true, env = "TICKFLOW_LOG_FORMAT", default_value = "plain")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Plain,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run the market simulator and write its streams to files.
    Produce(ProduceArgs),
    /// Run a SQL file over replay files (backtesting).
    Query(QueryArgs),
    /// Simulator → every query in sql/ → live view, in one process.
    Demo(DemoArgs),
}

#[derive(Args, Clone)]
struct SimArgs {
    /// Simulator seed: the same seed gives the same data.
    #[arg(long, env = "TICKFLOW_SEED", default_value_t = 42)]
    seed: u64,
    /// Market ticks per second of event time, over all symbols.
    #[arg(long, env = "TICKFLOW_RATE", default_value_t = 1000.0)]
    rate: f64,
    /// Comma-separated symbols (default: AAPL,GOOGL,MSFT,AMZN,TSLA,NVDA,META,NFLX).
    #[arg(long, env = "TICKFLOW_SYMBOLS", value_delimiter = ',')]
    symbols: Vec<String>,
    /// Bounded out-of-order delivery: events arrive up to this late.
    #[arg(long, env = "TICKFLOW_JITTER", value_parser = humantime::parse_duration, default_value = "0s")]
    jitter: Duration,
    /// Periodic volume spikes: rate ×3 and trade size ×4 for 2 s every 20 s.
    #[arg(long, env = "TICKFLOW_BURST")]
    burst: bool,
}

impl SimArgs {
    fn config(&self) -> SimConfig {
        let mut c = SimConfig { seed: self.seed, ticks_per_second: self.rate, ..SimConfig::default() };
        if !self.symbols.is_empty() {
            c.symbols = self.symbols.iter().map(|s| tickflow_worker::simulator::SymbolSpec::for_symbol(s)).collect();
        }
        c.max_jitter_ms = self.jitter.as_millis() as i64;
        if self.burst {
            c.burst = Some(BurstConfig { every_ms: 20_000, duration_ms: 2_000, rate_multiplier: 3.0, volume_multiplier: 4.0 });
        }
        c
    }
}

#[derive(Args)]
struct ProduceArgs {
    #[command(flatten)]
    sim: SimArgs,
    /// Stop after this many market ticks.
    #[arg(long, conflicts_with_all = ["duration", "continuous"])]
    count: Option<u64>,
    /// Stop after this much event time (e.g. 10m).
    #[arg(long, value_parser = humantime::parse_duration, conflicts_with = "continuous")]
    duration: Option<Duration>,
    /// Run until SIGTERM.
    #[arg(long)]
    continuous: bool,
    /// Directory for market-ticks.*, order-events.*, book-updates.*.
    #[arg(long, env = "TICKFLOW_OUTPUT_DIR")]
    output_dir: PathBuf,
    #[arg(long, value_enum, default_value = "jsonl")]
    format: produce::FileFormat,
    /// Pace event time against the wall clock.
    #[arg(long)]
    realtime: bool,
    /// With --realtime: event time runs this many times faster than the wall clock.
    #[arg(long, default_value_t = 1.0)]
    speed: f64,
}

#[derive(Args)]
struct QueryArgs {
    /// SQL file with CREATE STREAM statements.
    #[arg(long, env = "TICKFLOW_SQL")]
    sql: PathBuf,
    /// TABLE=PATH (.jsonl or .avro), e.g. market_ticks=data/market-ticks.jsonl.
    #[arg(long = "input", value_parser = app::parse_binding, required = true)]
    inputs: Vec<(String, PathBuf)>,
    /// STREAM=PATH (.jsonl or .avro).
    #[arg(long = "output", value_parser = app::parse_binding)]
    outputs: Vec<(String, PathBuf)>,
    /// Directory for streams without --output (<dir>/<stream>.jsonl).
    #[arg(long)]
    output_dir: Option<PathBuf>,
    /// STREAM=PATH for source rows that arrived after their window closed.
    #[arg(long = "late-output", value_parser = app::parse_binding)]
    late_outputs: Vec<(String, PathBuf)>,
    /// JSON-lines file for malformed input records and the reason.
    #[arg(long)]
    dead_letter: Option<PathBuf>,
    #[arg(long, env = "TICKFLOW_CHECKPOINT_DIR")]
    checkpoint_dir: Option<PathBuf>,
    #[arg(long, env = "TICKFLOW_CHECKPOINT_INTERVAL", value_parser = humantime::parse_duration, default_value = "10s")]
    checkpoint_interval: Duration,
    /// Ignore existing checkpoints (needed after an incompatible query change).
    #[arg(long)]
    start_fresh: bool,
    /// Allowed out-of-orderness of event time.
    #[arg(long, env = "TICKFLOW_ALLOWED_LATENESS", value_parser = humantime::parse_duration, default_value = "1s")]
    allowed_lateness: Duration,
    /// Records per batch for JSON-lines inputs.
    #[arg(long, default_value_t = 8192)]
    batch_size: usize,
}

#[derive(Args)]
struct DemoArgs {
    #[command(flatten)]
    sim: SimArgs,
    /// Stop after this long (wall clock), e.g. 30s.
    #[arg(long, value_parser = humantime::parse_duration)]
    duration: Option<Duration>,
    /// Event time runs this many times faster than the wall clock.
    #[arg(long, default_value_t = 1.0)]
    speed: f64,
    /// Plain periodic tables even on a terminal.
    #[arg(long)]
    plain: bool,
    /// Plain-mode print interval.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "5s")]
    refresh: Duration,
    /// Checkpoint directory (default: a temporary one).
    #[arg(long)]
    checkpoint_dir: Option<PathBuf>,
    #[arg(long, value_parser = humantime::parse_duration, default_value = "5s")]
    checkpoint_interval: Duration,
    #[arg(long, value_parser = humantime::parse_duration, default_value = "1s")]
    allowed_lateness: Duration,
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    init_tracing(cli.log_format);
    match run(cli.command) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match format {
        LogFormat::Plain => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// SIGTERM and SIGINT set the returned flag; the commands stop cleanly.
fn stop_flag() -> anyhow::Result<Arc<AtomicBool>> {
    let flag = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(sig, Arc::clone(&flag)).context("installing signal handler")?;
    }
    Ok(flag)
}

fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Produce(a) => {
            let length = match (a.count, a.duration, a.continuous) {
                (Some(n), _, _) => produce::RunLength::Ticks(n),
                (_, Some(d), _) => produce::RunLength::EventTime(d),
                (_, _, true) => produce::RunLength::Continuous,
                _ => anyhow::bail!("say how long to run: --count N, --duration D or --continuous"),
            };
            let opts = produce::ProduceOptions {
                sim: a.sim.config(),
                length,
                output_dir: a.output_dir,
                format: a.format,
                realtime: a.realtime.then_some(a.speed),
                stop: stop_flag()?,
            };
            let s = produce::run_produce(&opts)?;
            tracing::info!(ticks = s.ticks, orders = s.orders, books = s.books, "produced");
            println!("{}", serde_json::to_string(&s)?);
        }
        Command::Query(a) => {
            let sql = std::fs::read_to_string(&a.sql).with_context(|| format!("reading {}", a.sql.display()))?;
            let mut opts = query::QueryOptions::new(sql, a.sql.display().to_string());
            opts.inputs = a.inputs;
            opts.outputs = a.outputs;
            opts.output_dir = a.output_dir;
            opts.late_outputs = a.late_outputs;
            opts.dead_letter = a.dead_letter;
            opts.checkpoint_dir = a.checkpoint_dir;
            opts.checkpoint_interval = a.checkpoint_interval;
            opts.start_fresh = a.start_fresh;
            opts.allowed_lateness = a.allowed_lateness;
            opts.batch_size = a.batch_size;
            opts.stop = stop_flag()?;
            let s = query::run_query(&opts)?;
            println!("{}", serde_json::to_string(&s)?);
        }
        Command::Demo(a) => {
            let checkpoint_dir = a
                .checkpoint_dir
                .unwrap_or_else(|| std::env::temp_dir().join(format!("tickflow-demo-{}", std::process::id())));
            demo::run_demo(demo::DemoOptions {
                sim: a.sim.config(),
                speed: a.speed,
                duration: a.duration,
                plain: a.plain,
                refresh: a.refresh,
                checkpoint_dir: Some(checkpoint_dir),
                checkpoint_interval: a.checkpoint_interval,
                allowed_lateness: a.allowed_lateness,
                stop: stop_flag()?,
            })?;
        }
    }
    Ok(())
}
