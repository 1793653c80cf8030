//! `tickflow-worker`: produce market data, run streaming SQL over it, or run
//! the whole pipeline as a demo.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use std::net::SocketAddr;

use tickflow_worker::app::{self, demo, kafka_query, produce, query};
use tickflow_worker::codec::records::ValueFormat;
use tickflow_worker::engine::SourceTable;
use tickflow_worker::kafka::{
    KafkaConfig, RegistryClient, RegistryConfig, SaslMechanism, Secret, SecurityProtocol,
};
use tickflow_worker::memory::MemoryBudget;
use tickflow_worker::runtime::telemetry::{LogFormat, init_logging};
use tickflow_worker::runtime::{StatusHandle, WorkerState, http};
use tickflow_worker::simulator::nexmark::{NexmarkConfig, NexmarkTable};
use tickflow_worker::simulator::{BurstConfig, SimConfig};
use tickflow_worker::sink::kafka::ProducerTuning;
use tickflow_worker::sink::postgres;
use tickflow_worker::source::kafka::{OnOutOfRange, StartFrom};

#[derive(Parser)]
#[command(
    name = "tickflow-worker",
    version,
    about = "Market simulator and streaming SQL worker"
)]
struct Cli {
    /// Log format.
    #[arg(
        long,
        global = true,
        env = "TICKFLOW_LOG_FORMAT",
        default_value = "plain"
    )]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

// Parsed once at start; boxing the arguments would only add noise.
#[allow(clippy::large_enum_variant)]
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
    /// Market events that make the trading alerts fire: 6 % price jumps,
    /// one symbol's volume bursts, one-sided order sweeps and venues quoting
    /// 25 bp off the others, each within the first minute
    /// (`--market-events false`: a calm market).
    #[arg(long, env = "TICKFLOW_MARKET_EVENTS", default_value_t = true, action = clap::ArgAction::Set)]
    market_events: bool,
}

impl SimArgs {
    fn config(&self) -> SimConfig {
        let mut c = SimConfig {
            seed: self.seed,
            ticks_per_second: self.rate,
            ..SimConfig::default()
        };
        if !self.symbols.is_empty() {
            c.symbols = self
                .symbols
                .iter()
                .map(|s| tickflow_worker::simulator::SymbolSpec::for_symbol(s))
                .collect();
        }
        c.max_jitter_ms = self.jitter.as_millis() as i64;
        if self.market_events {
            c.events = Some(tickflow_worker::simulator::MarketEvents::default());
        }
        if self.burst {
            c.burst = Some(BurstConfig {
                every_ms: 20_000,
                duration_ms: 2_000,
                rate_multiplier: 3.0,
                volume_multiplier: 4.0,
            });
        }
        c
    }
}

/// Kafka connection. Passwords come only from the environment or files
/// (Kubernetes Secrets), never from the command line.
#[derive(Args, Clone)]
struct KafkaArgs {
    /// Comma-separated bootstrap servers (host:port).
    #[arg(long, env = "KAFKA_BROKERS")]
    brokers: Option<String>,
    #[arg(
        long,
        env = "KAFKA_SECURITY_PROTOCOL",
        value_enum,
        default_value = "plaintext"
    )]
    security_protocol: SecurityProtocol,
    #[arg(
        long,
        env = "KAFKA_SASL_MECHANISM",
        value_enum,
        default_value = "scram-sha-256"
    )]
    sasl_mechanism: SaslMechanism,
    #[arg(long, env = "KAFKA_SASL_USERNAME")]
    sasl_username: Option<String>,
    /// File holding the SASL password (else KAFKA_SASL_PASSWORD).
    #[arg(long, env = "KAFKA_SASL_PASSWORD_FILE")]
    sasl_password_file: Option<PathBuf>,
    /// PEM CA bundle for TLS.
    #[arg(long, env = "KAFKA_SSL_CA_LOCATION")]
    ssl_ca_location: Option<PathBuf>,
    /// PEM client certificate for mutual TLS.
    #[arg(long, env = "KAFKA_SSL_CERTIFICATE_LOCATION")]
    ssl_certificate_location: Option<PathBuf>,
    /// PEM client key (its password, if any, from KAFKA_SSL_KEY_PASSWORD).
    #[arg(long, env = "KAFKA_SSL_KEY_LOCATION")]
    ssl_key_location: Option<PathBuf>,
    /// Confluent-compatible schema registry URL (https://… or http://…).
    #[arg(long, env = "SCHEMA_REGISTRY_URL")]
    schema_registry: Option<String>,
    /// Registry basic-auth user (password from SCHEMA_REGISTRY_PASSWORD or --schema-registry-password-file).
    #[arg(long, env = "SCHEMA_REGISTRY_USERNAME")]
    schema_registry_username: Option<String>,
    #[arg(long, env = "SCHEMA_REGISTRY_PASSWORD_FILE")]
    schema_registry_password_file: Option<PathBuf>,
    /// PEM CA bundle an https:// registry is verified with (default: the
    /// system's trust store).
    #[arg(long, env = "SCHEMA_REGISTRY_CA_LOCATION")]
    schema_registry_ca_location: Option<PathBuf>,
    /// Send the registry user and password over plain http:// (only when the
    /// connection is protected otherwise: loopback, a sidecar, a mesh).
    #[arg(long, env = "SCHEMA_REGISTRY_ALLOW_INSECURE_AUTH")]
    schema_registry_allow_insecure_auth: bool,
    /// Timeout of one registry request.
    #[arg(long, env = "SCHEMA_REGISTRY_TIMEOUT", value_parser = humantime::parse_duration, default_value = "5s")]
    schema_registry_timeout: Duration,
    /// How long the registry's "unknown schema id" is believed before the
    /// id is looked up again (records with it go to the dead letters).
    #[arg(long, env = "SCHEMA_REGISTRY_UNKNOWN_ID_TTL", value_parser = humantime::parse_duration, default_value = "60s")]
    schema_registry_unknown_id_ttl: Duration,
    /// Compression of produced batches: lz4, zstd, gzip, snappy or none.
    #[arg(long, env = "TICKFLOW_COMPRESSION", default_value = "lz4", value_parser = ["lz4", "zstd", "gzip", "snappy", "none"])]
    compression: String,
    /// How long the producer waits to fill a batch.
    #[arg(long, env = "TICKFLOW_LINGER", value_parser = humantime::parse_duration, default_value = "5ms")]
    linger: Duration,
    /// Maximum bytes per produced batch.
    #[arg(long, env = "TICKFLOW_BATCH_BYTES", default_value_t = 1_000_000)]
    batch_bytes: u32,
    /// Partitions of topics this worker creates.
    #[arg(long, env = "TICKFLOW_PARTITIONS", default_value_t = 3)]
    partitions: i32,
    #[arg(long, env = "TICKFLOW_REPLICATION_FACTOR", default_value_t = 1)]
    replication_factor: i32,
}

impl KafkaArgs {
    fn secret(env: &str, file: &Option<PathBuf>) -> anyhow::Result<Option<Secret>> {
        if let Some(f) = file {
            return Secret::from_file(f)
                .map(Some)
                .with_context(|| format!("reading secret file {}", f.display()));
        }
        Ok(std::env::var(env).ok().map(Secret::new))
    }

    fn config(&self) -> anyhow::Result<Option<KafkaConfig>> {
        let Some(brokers) = &self.brokers else {
            return Ok(None);
        };
        let c = KafkaConfig {
            brokers: brokers.clone(),
            protocol: self.security_protocol,
            sasl_mechanism: self.sasl_mechanism,
            sasl_username: self.sasl_username.clone(),
            sasl_password: Self::secret("KAFKA_SASL_PASSWORD", &self.sasl_password_file)?,
            ssl_ca: self.ssl_ca_location.clone(),
            ssl_cert: self.ssl_certificate_location.clone(),
            ssl_key: self.ssl_key_location.clone(),
            ssl_key_password: Self::secret("KAFKA_SSL_KEY_PASSWORD", &None)?,
        };
        c.validate()?;
        Ok(Some(c))
    }

    fn registry(&self) -> anyhow::Result<Option<RegistryClient>> {
        let Some(url) = &self.schema_registry else {
            return Ok(None);
        };
        let mut c = RegistryConfig::new(url.clone());
        c.username = self.schema_registry_username.clone();
        c.password = Self::secret(
            "SCHEMA_REGISTRY_PASSWORD",
            &self.schema_registry_password_file,
        )?;
        c.ca_file = self.schema_registry_ca_location.clone();
        c.allow_insecure_auth = self.schema_registry_allow_insecure_auth;
        c.timeout = self.schema_registry_timeout;
        c.unknown_id_ttl = self.schema_registry_unknown_id_ttl;
        Ok(Some(RegistryClient::try_new(c)?))
    }

    fn tuning(&self) -> ProducerTuning {
        ProducerTuning {
            compression: self.compression.clone(),
            linger_ms: self.linger.as_millis() as u32,
            batch_bytes: self.batch_bytes,
            ..ProducerTuning::default()
        }
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
    /// Directory for market-ticks.*, order-events.*, book-updates.* (else Kafka, with --brokers).
    #[arg(long, env = "TICKFLOW_OUTPUT_DIR")]
    output_dir: Option<PathBuf>,
    /// Files: jsonl (default) or avro (container files). Kafka: avro (default) or json.
    #[arg(long, env = "TICKFLOW_FORMAT")]
    format: Option<String>,
    #[arg(long, env = "TICKFLOW_TICKS_TOPIC", default_value = SourceTable::MarketTicks.topic())]
    ticks_topic: String,
    #[arg(long, env = "TICKFLOW_ORDERS_TOPIC", default_value = SourceTable::OrderEvents.topic())]
    orders_topic: String,
    #[arg(long, env = "TICKFLOW_BOOKS_TOPIC", default_value = SourceTable::BookUpdates.topic())]
    books_topic: String,
    #[command(flatten)]
    kafka: KafkaArgs,
    /// Serve /metrics, /healthz, /readyz and /status here (e.g. 0.0.0.0:8080).
    #[arg(long, env = "TICKFLOW_HTTP_ADDR")]
    http_addr: Option<SocketAddr>,
    /// Pace event time against the wall clock.
    #[arg(long)]
    realtime: bool,
    /// With --realtime: event time runs this many times faster than the wall clock.
    #[arg(long, default_value_t = 1.0)]
    speed: f64,
    #[command(flatten)]
    nexmark: NexmarkArgs,
}

/// `produce --nexmark`: the Nexmark benchmark's tables instead of market data.
#[derive(Args)]
struct NexmarkArgs {
    /// Generate Nexmark events (person, auction, bid) instead of market
    /// data: person.*, auction.*, bid.* in --output-dir, or with --brokers
    /// the topics <prefix>person, <prefix>auction, <prefix>bid (Avro
    /// registered as <topic>-value, or --format json; keyed by id, id and
    /// auction). The seed is --seed.
    #[arg(long, requires = "events", conflicts_with_all = ["count", "duration", "continuous", "realtime", "http_addr"])]
    nexmark: bool,
    /// With --nexmark: events over all three tables (1 person : 3 auctions : 46 bids).
    #[arg(long, requires = "nexmark")]
    events: Option<u64>,
    /// With --nexmark: events per second of event time.
    #[arg(long, requires = "nexmark", default_value_t = 10_000.0)]
    event_rate: f64,
    /// With --nexmark: event time of the first event, epoch milliseconds
    /// (default 2026-01-05T14:30:00Z).
    #[arg(long, requires = "nexmark")]
    base_time_ms: Option<i64>,
    /// With --nexmark: shuffle events within groups of this many (1: in order).
    #[arg(long, requires = "nexmark", default_value_t = 1)]
    out_of_order_group: u64,
    /// With --nexmark to Kafka: topic names are this prefix followed by
    /// person, auction and bid (the queries of benchmarks/nexmark declare
    /// nexmark-person, nexmark-auction, nexmark-bid).
    #[arg(long, requires = "nexmark", default_value = "nexmark-")]
    nexmark_topic_prefix: String,
}

#[derive(Args)]
struct QueryArgs {
    /// SQL file with CREATE STREAM statements.
    #[arg(long, env = "TICKFLOW_SQL")]
    sql: PathBuf,
    /// TABLE=PATH (.jsonl or .avro) or TABLE=kafka:TOPIC. Without any, the
    /// tables are read from their standard topics (needs --brokers).
    #[arg(long = "input", value_parser = app::parse_binding)]
    inputs: Vec<(String, PathBuf)>,
    /// STREAM=PATH (.jsonl or .avro) or STREAM=kafka:TOPIC (Kafka default:
    /// the stream name with `_` → `-`).
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
    /// Ignore existing checkpoints (needed after an incompatible query
    /// change). For a Kafka query: delete them, start a new checkpoint
    /// lineage, and start even though the consumer group holds offsets
    /// committed by the old one.
    #[arg(long)]
    start_fresh: bool,
    /// Kafka query: when the checkpoint directory holds no checkpoint, start
    /// from --start-from even if the consumer group holds offsets committed
    /// by another checkpoint directory (stateless upgrades: each revision
    /// starts empty). Without it that is refused: the checkpoints were lost.
    #[arg(long, env = "TICKFLOW_START_FRESH_IF_NO_CHECKPOINT")]
    start_fresh_if_no_checkpoint: bool,
    /// Allowed out-of-orderness of event time.
    #[arg(long, env = "TICKFLOW_ALLOWED_LATENESS", value_parser = humantime::parse_duration, default_value = "1s")]
    allowed_lateness: Duration,
    /// Earliest accepted event time (RFC 3339); earlier rows go to the dead
    /// letters (reason `event-time-too-early`).
    #[arg(long, env = "TICKFLOW_MIN_EVENT_TIME", value_parser = parse_event_time, default_value = "1970-01-01T00:00:00Z")]
    min_event_time: i64,
    /// How far an event may lie ahead of the later of the wall clock and the
    /// newest accepted event; rows further ahead go to the dead letters
    /// (reason `event-time-too-far-ahead`) instead of moving the watermark.
    #[arg(long, env = "TICKFLOW_MAX_EVENT_TIME_AHEAD", value_parser = humantime::parse_duration, default_value = "1h")]
    max_event_time_ahead: Duration,
    /// Records per batch for JSON-lines inputs (per poll for Kafka).
    #[arg(long, default_value_t = 8192)]
    batch_size: usize,
    /// Threads decoding JSON-lines input files, beside the engine's
    /// (default: the CPUs the worker may use, at most 4).
    #[arg(long)]
    decode_threads: Option<usize>,
    /// Engine threads: a query that splits by key runs its key groups on
    /// this many (default 1; two do not yet beat one on a 2-core machine,
    /// see docs/benchmarks.md). The log says when a query cannot split
    /// and runs on one.
    #[arg(long, env = "TICKFLOW_PARALLELISM", value_parser = clap::value_parser!(u16).range(1..=1024))]
    parallelism: Option<u16>,
    /// Key groups a query that splits by key is divided into at its first
    /// start (default: one per thread): the most threads it can ever use,
    /// like Flink's maximum parallelism. A restore keeps the checkpoint's
    /// number (each group's state is kept apart), so set it above
    /// --parallelism to leave room to grow.
    #[arg(long, env = "TICKFLOW_KEY_GROUPS", value_parser = clap::value_parser!(u16).range(1..=4096))]
    key_groups: Option<u16>,
    /// Kafka query: how many workers (processes, pods) run it together.
    /// Worker i reads the source partitions p with p mod N == i; the
    /// source topics must have the same number of partitions and be keyed
    /// by the query's key. More than one needs --state-store kafka.
    #[arg(long, env = "TICKFLOW_WORKERS", value_parser = clap::value_parser!(u16).range(1..=1024))]
    workers: Option<u16>,
    /// This worker's number among --workers, from 0.
    #[arg(long, env = "TICKFLOW_WORKER_INDEX")]
    worker_index: Option<u16>,
    /// Kafka query: where its state lives. `volume`: --checkpoint-dir, one
    /// worker. `kafka`: per source partition in the compacted topic
    /// tickflow-<name>-state, committed in each epoch's transaction, so any
    /// worker can take a partition over when --workers changes (default:
    /// `kafka` with --workers above 1, else `volume`).
    #[arg(long, env = "TICKFLOW_STATE_STORE", value_enum)]
    state_store: Option<StateStore>,
    #[command(flatten)]
    kafka: KafkaArgs,
    /// Query name: the consumer group and transactional id are tickflow-<name>,
    /// and its row in the PostgreSQL offsets table (default: the SQL file name).
    #[arg(long, env = "TICKFLOW_QUERY_NAME")]
    name: Option<String>,
    /// PostgreSQL (or TimescaleDB) for STREAM=postgres:TABLE outputs:
    /// postgres://USER@HOST:PORT/DB?sslmode=verify-full&sslrootcert=CA.pem
    /// or libpq key=value pairs. The password comes from TICKFLOW_POSTGRES_PASSWORD (a Secret),
    /// not from here.
    #[arg(long, env = "TICKFLOW_POSTGRES_URL")]
    postgres_url: Option<String>,
    /// File holding the PostgreSQL URL instead (a mounted Secret: such a
    /// URL may include the password, and is never printed).
    #[arg(
        long,
        env = "TICKFLOW_POSTGRES_URL_FILE",
        conflicts_with = "postgres_url"
    )]
    postgres_url_file: Option<PathBuf>,
    /// File holding the PostgreSQL password (a mounted Secret); otherwise
    /// TICKFLOW_POSTGRES_PASSWORD.
    #[arg(long, env = "TICKFLOW_POSTGRES_PASSWORD_FILE")]
    postgres_password_file: Option<PathBuf>,
    #[command(flatten)]
    postgres_tls: PostgresTlsArgs,
    #[arg(
        long,
        env = "TICKFLOW_INPUT_FORMAT",
        value_enum,
        default_value = "avro"
    )]
    input_format: ValueFormat,
    #[arg(
        long,
        env = "TICKFLOW_OUTPUT_FORMAT",
        value_enum,
        default_value = "avro"
    )]
    output_format: ValueFormat,
    /// Kafka topic for undecodable input records (default: <name>-dead-letters).
    #[arg(long, env = "TICKFLOW_DEAD_LETTER_TOPIC")]
    dead_letter_topic: Option<String>,
    /// Where a partition without a checkpointed offset starts.
    #[arg(
        long,
        env = "TICKFLOW_START_FROM",
        value_enum,
        default_value = "earliest"
    )]
    start_from: StartFrom,
    /// A position outside its partition's offsets (a checkpoint older than
    /// the topic's retention, a recreated topic): continue at the earliest
    /// record still there, at the end, or fail. Always logged and counted.
    #[arg(
        long,
        env = "TICKFLOW_ON_OFFSET_OUT_OF_RANGE",
        value_enum,
        default_value = "earliest"
    )]
    on_offset_out_of_range: OnOutOfRange,
    /// Read the topics up to their end as of start-up, then stop (a backfill).
    #[arg(long)]
    bounded: bool,
    /// Commit results this long after they are produced, once caught up.
    #[arg(long, env = "TICKFLOW_MAX_OUTPUT_DELAY", value_parser = humantime::parse_duration, default_value = "0ms")]
    max_output_delay: Duration,
    /// A partition silent this long stops holding the watermark back.
    #[arg(long, env = "TICKFLOW_IDLE_TIMEOUT", value_parser = humantime::parse_duration, default_value = "10s")]
    idle_timeout: Duration,
    /// After a Kafka failure a new client may not have (a stuck client,
    /// commits failing past their retries), restart from the last checkpoint
    /// in this process, up to this many times in a row; 0: exit instead.
    #[arg(long, env = "TICKFLOW_MAX_FAILOVERS", default_value_t = 10)]
    max_failovers: u32,
    /// A Kafka transaction commit that takes longer counts as stuck (the run
    /// then fails over).
    #[arg(long, env = "TICKFLOW_TRANSACTION_STALL_TIMEOUT", value_parser = humantime::parse_duration, default_value = "45s")]
    transaction_stall_timeout: Duration,
    /// Timeout of each call of a transaction commit; a call that times out
    /// is resumed (a few times), so this only bounds how long one try waits.
    /// The stall timeout bounds the whole commit.
    #[arg(long, env = "TICKFLOW_TRANSACTION_CALL_TIMEOUT", value_parser = humantime::parse_duration, default_value = "10s")]
    transaction_call_timeout: Duration,
    /// Serve /metrics, /healthz, /readyz, /status and the live web view
    /// (`/`: candles, alerts, pipeline) here (e.g. 0.0.0.0:8080).
    #[arg(long, env = "TICKFLOW_HTTP_ADDR")]
    http_addr: Option<SocketAddr>,
    /// Memory for the buffers that grow with a backlog (consumer prefetch,
    /// producer queue, the open epoch's output), e.g. 512MiB. Default: half
    /// the container's memory limit, or 512 MiB without one.
    #[arg(long, env = "TICKFLOW_MEMORY_BUDGET", value_parser = tickflow_worker::memory::parse_bytes)]
    memory_budget: Option<u64>,
    /// /healthz fails once the running query's loop has made no step for
    /// this long (at least twice the transaction stall timeout, the longest
    /// it legitimately waits), so a kubelet restarts a stuck worker.
    #[arg(long, env = "TICKFLOW_LIVENESS_TIMEOUT", value_parser = humantime::parse_duration, default_value = "5m")]
    liveness_timeout: Duration,
}

/// TLS to PostgreSQL where the URL says nothing, under libpq's environment
/// variables (the URL's `sslmode`, `sslrootcert`, `sslcert`, `sslkey` win).
#[derive(clap::Args, Debug, Clone)]
struct PostgresTlsArgs {
    /// disable, allow, prefer (default), require, verify-ca or verify-full.
    #[arg(long = "postgres-sslmode", env = "PGSSLMODE", value_parser = parse_ssl_mode)]
    mode: Option<postgres::tls::SslMode>,
    /// PEM file of the CA that signed the server's certificate, or
    /// `system` for the system's trust store (verify-ca, verify-full).
    #[arg(long = "postgres-sslrootcert", env = "PGSSLROOTCERT")]
    root_cert: Option<String>,
    /// Client certificate (PEM), for `cert` authentication.
    #[arg(long = "postgres-sslcert", env = "PGSSLCERT", requires = "client_key")]
    client_cert: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    #[arg(long = "postgres-sslkey", env = "PGSSLKEY", requires = "client_cert")]
    client_key: Option<PathBuf>,
}

fn parse_ssl_mode(s: &str) -> Result<postgres::tls::SslMode, String> {
    s.parse()
}

impl PostgresTlsArgs {
    fn options(&self) -> postgres::tls::TlsOptions {
        postgres::tls::TlsOptions {
            mode: self.mode,
            root_cert: self.root_cert.clone(),
            client_cert: self.client_cert.clone(),
            client_key: self.client_key.clone(),
        }
    }
}

impl QueryArgs {
    /// `--name`, or the SQL file's name.
    fn query_name(&self) -> String {
        self.name.clone().unwrap_or_else(|| {
            self.sql
                .file_stem()
                .map_or("query".into(), |s| s.to_string_lossy().replace('_', "-"))
        })
    }

    /// Where PostgreSQL outputs go, with the password from its file or the
    /// environment.
    fn postgres(&self) -> anyhow::Result<Option<postgres::PostgresConnection>> {
        let url = match (&self.postgres_url, &self.postgres_url_file) {
            (Some(url), _) => url.clone(),
            (None, Some(f)) => Secret::from_file(f)
                .with_context(|| format!("reading the PostgreSQL URL file {}", f.display()))?
                .expose()
                .trim()
                .to_string(),
            (None, None) => return Ok(None),
        };
        let password = match &self.postgres_password_file {
            // Read now to report a wrong path at once, and again at every
            // connect so that a rotated Secret takes effect.
            Some(f) => {
                Secret::from_file(f)
                    .with_context(|| format!("reading secret file {}", f.display()))?;
                Some(postgres::Password::File(f.clone()))
            }
            None => std::env::var("TICKFLOW_POSTGRES_PASSWORD")
                .ok()
                .map(postgres::Password::Value),
        };
        Ok(Some(postgres::PostgresConnection {
            url,
            password,
            tls_defaults: self.postgres_tls.options(),
        }))
    }

    /// This worker's share of the query's partitions when its state is in
    /// Kafka; `None` for a query with its state on a volume.
    fn worker_share(&self) -> anyhow::Result<Option<tickflow_worker::runner::WorkerShare>> {
        let workers = self.workers.map_or(1, usize::from);
        let store = self.state_store.unwrap_or(if workers > 1 {
            StateStore::Kafka
        } else {
            StateStore::Volume
        });
        if store == StateStore::Volume {
            if workers > 1 {
                anyhow::bail!(
                    "--workers {workers} needs --state-store kafka: a checkpoint volume belongs to one worker"
                );
            }
            return Ok(None);
        }
        let index = match (self.worker_index, workers) {
            (Some(i), _) => usize::from(i),
            (None, 1) => 0,
            (None, _) => anyhow::bail!(
                "--workers {workers} needs --worker-index (TICKFLOW_WORKER_INDEX): this worker's number, 0 to {}",
                workers - 1
            ),
        };
        tickflow_worker::runner::WorkerShare::new(index, workers)
            .map(Some)
            .ok_or_else(|| {
                anyhow::anyhow!(
                    "--worker-index {index} is not below --workers {workers} (workers are numbered from 0)"
                )
            })
    }

    fn parallelism(&self) -> tickflow_worker::app::Parallelism {
        let default = tickflow_worker::app::Parallelism::default();
        tickflow_worker::app::Parallelism {
            threads: self.parallelism.map_or(default.threads, usize::from),
            key_groups: self.key_groups.map(usize::from),
        }
    }

    fn event_time_bounds(&self) -> tickflow_worker::engine::EventTimeBounds {
        tickflow_worker::engine::EventTimeBounds {
            min_ms: self.min_event_time,
            max_ahead: self.max_event_time_ahead,
        }
    }
}

/// An RFC 3339 time as ms since the Unix epoch.
fn parse_event_time(s: &str) -> Result<i64, String> {
    chrono::DateTime::parse_from_rfc3339(s)
        .map(|t| t.timestamp_millis())
        .map_err(|e| format!("expected an RFC 3339 time such as 2026-01-05T14:30:00Z: {e}"))
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
    /// Serve the live web view (candles, alerts, pipeline) and /status,
    /// /metrics here; prints the URL. Without a value: 127.0.0.1:8080.
    #[arg(long, value_name = "ADDR", num_args = 0..=1, default_missing_value = "127.0.0.1:8080")]
    web: Option<SocketAddr>,
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    match run(cli.command) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
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

/// Where a Kafka query keeps its state (`--state-store`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum StateStore {
    Volume,
    Kafka,
}

fn run_kafka_query(a: QueryArgs, sql: String) -> anyhow::Result<()> {
    let event_time_bounds = a.event_time_bounds();
    let parallelism = a.parallelism();
    let limit = tickflow_worker::memory::container_limit();
    let budget = a
        .memory_budget
        .map_or_else(|| MemoryBudget::for_limit(limit), MemoryBudget);
    let buffers = budget.split();
    tracing::info!(
        budget_mib = budget.0 >> 20,
        container_limit_mib = limit.map(|l| l >> 20),
        pending_output_mib = buffers.pending_output_bytes >> 20,
        "memory budget for backlog buffers"
    );
    let Some(kafka) = a.kafka.config()? else {
        anyhow::bail!(
            "no inputs: give --input TABLE=PATH for a replay, or --brokers HOST:PORT (KAFKA_BROKERS) to read Kafka"
        );
    };
    let name = a.query_name();
    let postgres = a.postgres()?;
    let share = a.worker_share()?;
    let checkpoint_dir = match (share, a.checkpoint_dir) {
        (None, None) => anyhow::bail!(
            "a Kafka query needs --checkpoint-dir (TICKFLOW_CHECKPOINT_DIR): exactly-once output depends on it"
        ),
        (_, dir) => dir.unwrap_or_default(),
    };
    let topic_of = |(name, p): (String, PathBuf)| -> anyhow::Result<(String, String)> {
        let s = p.to_string_lossy();
        let topic = s
            .strip_prefix("kafka:")
            .filter(|t| !t.is_empty())
            .ok_or_else(|| anyhow::anyhow!("{name}={s}: expected kafka:TOPIC"))?;
        Ok((name, topic.to_string()))
    };
    let status = StatusHandle::new(&name);
    status.set_stall_limit(a.liveness_timeout.max(a.transaction_stall_timeout * 2));
    let web = match a.http_addr {
        Some(addr) => Some(serve_with_web(addr, &name, &status)?),
        None => None,
    };
    let opts = kafka_query::KafkaQueryOptions {
        sql_origin: a.sql.display().to_string(),
        sql,
        registry: a.kafka.registry()?,
        inputs: a
            .inputs
            .into_iter()
            .map(topic_of)
            .collect::<anyhow::Result<_>>()?,
        postgres,
        postgres_outputs: a
            .outputs
            .iter()
            .filter_map(|(s, p)| Some((s.clone(), postgres::bound_table(p)?)))
            .collect(),
        outputs: a
            .outputs
            .into_iter()
            .filter(|(_, p)| postgres::bound_table(p).is_none())
            .map(topic_of)
            .collect::<anyhow::Result<_>>()?,
        late_outputs: a
            .late_outputs
            .into_iter()
            .map(topic_of)
            .collect::<anyhow::Result<_>>()?,
        input_format: a.input_format,
        output_format: a.output_format,
        dead_letter_topic: Some(
            a.dead_letter_topic
                .unwrap_or_else(|| format!("{name}-dead-letters")),
        ),
        output_partitions: a.kafka.partitions,
        replication: a.kafka.replication_factor,
        tuning: ProducerTuning {
            stall_limit: a.transaction_stall_timeout,
            call_timeout: a.transaction_call_timeout,
            queue_kbytes: buffers.producer_queue_kbytes,
            queue_messages: buffers.producer_queue_messages,
            ..a.kafka.tuning()
        },
        buffers,
        start: a.start_from,
        on_out_of_range: a.on_offset_out_of_range,
        bounded: a.bounded,
        checkpoint_dir,
        checkpoint_interval: a.checkpoint_interval,
        max_output_delay: a.max_output_delay,
        checkpoints_to_keep: 3,
        start_fresh: a.start_fresh,
        start_fresh_if_no_checkpoint: a.start_fresh_if_no_checkpoint,
        max_failovers: a.max_failovers,
        allowed_lateness: a.allowed_lateness,
        event_time_bounds,
        idle_timeout: a.idle_timeout,
        max_batch_records: a.batch_size.max(1),
        parallelism,
        share,
        status: status.clone(),
        stop: stop_flag()?,
        kafka,
        name,
    };
    match kafka_query::run_kafka_query_with_web(&opts, web.as_ref()) {
        Ok(s) => {
            println!("{}", serde_json::to_string(&s)?);
            Ok(())
        }
        Err(e) => {
            status.update(|s| {
                s.state = WorkerState::Failed;
                s.last_error = Some(format!("{e:#}"));
            });
            Err(e.into())
        }
    }
}

/// The status endpoint and the live web view on `addr` (a running query's).
fn serve_with_web(
    addr: SocketAddr,
    name: &str,
    status: &StatusHandle,
) -> anyhow::Result<tickflow_worker::runtime::web::WebView> {
    let web = tickflow_worker::runtime::web::WebView::start(name, status.clone())?;
    let bound = http::serve_with(addr, status.clone(), Some(web.clone()))?;
    let url = tickflow_worker::runtime::web::page_url(bound);
    tracing::info!(%bound, %url, "status endpoint and web view listening");
    Ok(web)
}

/// `produce --format` for files: jsonl (default) or avro.
fn file_format(f: Option<&str>) -> anyhow::Result<produce::FileFormat> {
    Ok(match f {
        None | Some("jsonl") | Some("json") => produce::FileFormat::Jsonl,
        Some("avro") => produce::FileFormat::Avro,
        Some(f) => anyhow::bail!("--format {f}: use jsonl or avro"),
    })
}

/// `produce --format` for Kafka: avro (default) or json.
fn kafka_format(f: Option<&str>) -> anyhow::Result<ValueFormat> {
    Ok(match f {
        None | Some("avro") => ValueFormat::Avro,
        Some("json") | Some("jsonl") => ValueFormat::Json,
        Some(f) => anyhow::bail!("--format {f}: use avro or json"),
    })
}

/// Where `produce` writes: files in `output_dir`, or else the `topics`
/// (in table order) of the brokers in `kafka`.
fn produce_target(
    output_dir: Option<PathBuf>,
    format: Option<&str>,
    kafka: &KafkaArgs,
    topics: [String; 3],
) -> anyhow::Result<produce::ProduceTarget> {
    Ok(match (output_dir, kafka.config()?) {
        (Some(dir), _) => produce::ProduceTarget::Files {
            dir,
            format: file_format(format)?,
        },
        (None, Some(config)) => produce::ProduceTarget::Kafka(Box::new(produce::KafkaTarget {
            config,
            registry: kafka.registry()?,
            format: kafka_format(format)?,
            topics,
            partitions: kafka.partitions,
            replication: kafka.replication_factor,
            tuning: kafka.tuning(),
        })),
        (None, None) => anyhow::bail!(
            "say where to write: --output-dir DIR or --brokers HOST:PORT (KAFKA_BROKERS)"
        ),
    })
}

fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Produce(a) if a.nexmark.nexmark => {
            let n = &a.nexmark;
            let topics =
                NexmarkTable::ALL.map(|t| format!("{}{}", n.nexmark_topic_prefix, t.name()));
            let target = produce_target(a.output_dir, a.format.as_deref(), &a.kafka, topics)?;
            let defaults = NexmarkConfig::default();
            let opts = produce::NexmarkProduceOptions {
                config: NexmarkConfig {
                    seed: a.sim.seed,
                    events: n.events,
                    first_event_rate: n.event_rate,
                    base_time_ms: n.base_time_ms.unwrap_or(defaults.base_time_ms),
                    out_of_order_group_size: n.out_of_order_group,
                    ..defaults
                },
                target,
                stop: stop_flag()?,
                status: None,
            };
            let s = produce::run_nexmark(&opts)?;
            tracing::info!(
                persons = s.persons,
                auctions = s.auctions,
                bids = s.bids,
                "produced"
            );
            println!("{}", serde_json::to_string(&s)?);
        }
        Command::Produce(a) => {
            let length = match (a.count, a.duration, a.continuous) {
                (Some(n), _, _) => produce::RunLength::Ticks(n),
                (_, Some(d), _) => produce::RunLength::EventTime(d),
                (_, _, true) => produce::RunLength::Continuous,
                _ => anyhow::bail!("say how long to run: --count N, --duration D or --continuous"),
            };
            let topics = [a.ticks_topic, a.orders_topic, a.books_topic];
            let target = produce_target(a.output_dir, a.format.as_deref(), &a.kafka, topics)?;
            let status = StatusHandle::new("producer");
            if let Some(addr) = a.http_addr {
                let bound = http::serve(addr, status.clone())?;
                tracing::info!(%bound, "status endpoint listening");
            }
            status.set_state(WorkerState::Running);
            let opts = produce::ProduceOptions {
                sim: a.sim.config(),
                length,
                target,
                realtime: a.realtime.then_some(a.speed),
                stop: stop_flag()?,
                status: Some(status.clone()),
            };
            let s = produce::run_produce(&opts)?;
            status.set_state(WorkerState::Stopped);
            tracing::info!(
                ticks = s.ticks,
                orders = s.orders,
                books = s.books,
                "produced"
            );
            println!("{}", serde_json::to_string(&s)?);
        }
        Command::Query(a) => {
            let event_time_bounds = a.event_time_bounds();
            let parallelism = a.parallelism();
            let sql = std::fs::read_to_string(&a.sql)
                .with_context(|| format!("reading {}", a.sql.display()))?;
            let is_kafka = |p: &PathBuf| p.to_string_lossy().starts_with("kafka:");
            let kafka_inputs = a.inputs.iter().filter(|(_, p)| is_kafka(p)).count();
            if kafka_inputs > 0 && kafka_inputs < a.inputs.len() {
                anyhow::bail!("mixing Kafka and file inputs in one query is not supported");
            }
            if a.inputs.is_empty() || kafka_inputs > 0 {
                return run_kafka_query(a, sql);
            }
            if let Some((s, p)) = a.outputs.iter().find(|(_, p)| is_kafka(p)) {
                anyhow::bail!(
                    "--output {s}={}: Kafka outputs need Kafka inputs",
                    p.display()
                );
            }
            if a.workers.is_some_and(|n| n > 1) || a.state_store == Some(StateStore::Kafka) {
                anyhow::bail!(
                    "--workers and --state-store kafka split a query by Kafka partition: a replay \
                     of files runs in one process (--parallelism for its threads)"
                );
            }
            let mut opts = query::QueryOptions::new(sql, a.sql.display().to_string());
            opts.postgres = a.postgres()?;
            opts.name = a.query_name();
            opts.inputs = a.inputs;
            opts.outputs = a.outputs;
            opts.output_dir = a.output_dir;
            opts.late_outputs = a.late_outputs;
            opts.dead_letter = a.dead_letter;
            opts.checkpoint_dir = a.checkpoint_dir;
            opts.checkpoint_interval = a.checkpoint_interval;
            opts.start_fresh = a.start_fresh;
            opts.allowed_lateness = a.allowed_lateness;
            opts.event_time_bounds = event_time_bounds;
            opts.batch_size = a.batch_size;
            opts.decode_threads = a.decode_threads;
            opts.parallelism = parallelism;
            if let Some(addr) = a.http_addr {
                opts.status = StatusHandle::new(&opts.name);
                opts.web = Some(serve_with_web(addr, &opts.name, &opts.status)?);
            }
            opts.stop = stop_flag()?;
            let s = query::run_query(&opts)?;
            println!("{}", serde_json::to_string(&s)?);
        }
        Command::Demo(a) => {
            let checkpoint_dir = a.checkpoint_dir.unwrap_or_else(|| {
                std::env::temp_dir().join(format!("tickflow-demo-{}", std::process::id()))
            });
            demo::run_demo(demo::DemoOptions {
                sim: a.sim.config(),
                speed: a.speed,
                duration: a.duration,
                plain: a.plain,
                refresh: a.refresh,
                checkpoint_dir: Some(checkpoint_dir),
                checkpoint_interval: a.checkpoint_interval,
                allowed_lateness: a.allowed_lateness,
                web: a.web,
                stop: stop_flag()?,
            })?;
        }
    }
    Ok(())
}
