//! API types of tickflow's custom resources: `MarketProducer` and
//! `StreamQuery` (group `tickflow.io`, version `v1alpha1`, namespaced).
//!
//! Field rules that the API server must enforce (sql xor sqlConfigMap,
//! positive intervals, valid quantities, …) are CEL rules in the schema, so a
//! bad resource is rejected at `kubectl apply` time. Rules that need the
//! worker's SQL planner are the operator's job (the `SqlValid` condition).
//!
//! Beside the resources: the worker's `/status` document ([`worker_status`]),
//! the contract the operator reads back, and the Kafka security settings
//! ([`kafka`]) both sides validate the same way.
//!
//! `tickflow-operator crdgen` prints the CRDs; `charts/tickflow/crds/` holds
//! the same YAML and a test fails when it drifts from these types.

use k8s_openapi::api::core::v1::ResourceRequirements;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, CustomResourceExt, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub mod kafka;
#[cfg(feature = "telemetry")]
pub mod telemetry;
pub mod worker_status;

pub use worker_status::{
    LATENCY_BUCKETS_S, LatencyHistogram, WorkerCheckpoint, WorkerState, WorkerStatus,
};

/// API group of every tickflow custom resource.
pub const API_GROUP: &str = "tickflow.io";
/// Served and stored API version.
pub const API_VERSION: &str = "v1alpha1";

/// The simulator's default universe: what a MarketProducer without
/// `symbols` simulates.
pub const DEFAULT_SYMBOLS: [&str; 8] = [
    "AAPL", "GOOGL", "MSFT", "AMZN", "TSLA", "NVDA", "META", "NFLX",
];

/// Condition types the operator sets.
pub mod condition {
    /// The worker runs with every replica ready (or is suspended as asked).
    pub const READY: &str = "Ready";
    /// The SQL plans with the worker's planner against the source schemas.
    pub const SQL_VALID: &str = "SqlValid";
    /// A rollout, suspension or resumption is under way.
    pub const PROGRESSING: &str = "Progressing";
    /// The worker reports an error or keeps failing.
    pub const DEGRADED: &str = "Degraded";
    /// The checkpoint PVC matches the spec (size) and its ownership
    /// (`retainOnDelete`); False says which change the API server refused.
    pub const CHECKPOINT_VOLUME: &str = "CheckpointVolume";
}

/// Lifecycle phase shown in `status.phase`.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum Phase {
    /// Accepted, workload not running yet.
    Pending,
    /// The worker is running.
    Running,
    /// Scaled to zero after the worker's final checkpoint.
    Suspended,
    /// Cannot run as specified (for example invalid SQL).
    Failed,
    /// Running, but the worker reports an error or is not ready.
    Degraded,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Pending => "Pending",
            Phase::Running => "Running",
            Phase::Suspended => "Suspended",
            Phase::Failed => "Failed",
            Phase::Degraded => "Degraded",
        }
    }
}

/// Desired run state.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum RunState {
    /// The worker runs.
    #[default]
    Running,
    /// The worker takes a final checkpoint and is scaled to zero; state and
    /// offsets stay on the PVC for resumption.
    Suspended,
}

/// Value format of a topic.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// Avro with the Confluent framing (magic byte, schema id), schemas in the registry.
    #[default]
    Avro,
    /// One JSON object per record.
    Json,
}

impl Format {
    pub fn as_str(self) -> &'static str {
        match self {
            Format::Avro => "avro",
            Format::Json => "json",
        }
    }
}

/// Reference to one key of a ConfigMap or Secret in the resource's namespace.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
pub struct KeyRef {
    /// Name of the ConfigMap or Secret.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Key inside it.
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
}

/// Kafka security protocol.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum SecurityProtocol {
    #[default]
    Plaintext,
    Ssl,
    SaslPlaintext,
    SaslSsl,
}

impl SecurityProtocol {
    pub fn as_str(self) -> &'static str {
        match self {
            SecurityProtocol::Plaintext => "plaintext",
            SecurityProtocol::Ssl => "ssl",
            SecurityProtocol::SaslPlaintext => "sasl_plaintext",
            SecurityProtocol::SaslSsl => "sasl_ssl",
        }
    }

    pub fn uses_sasl(self) -> bool {
        matches!(
            self,
            SecurityProtocol::SaslPlaintext | SecurityProtocol::SaslSsl
        )
    }
}

/// SASL mechanism.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum SaslMechanism {
    #[serde(rename = "plain")]
    Plain,
    #[default]
    #[serde(rename = "scram-sha-256")]
    ScramSha256,
    #[serde(rename = "scram-sha-512")]
    ScramSha512,
}

impl SaslMechanism {
    pub fn as_str(self) -> &'static str {
        match self {
            SaslMechanism::Plain => "plain",
            SaslMechanism::ScramSha256 => "scram-sha-256",
            SaslMechanism::ScramSha512 => "scram-sha-512",
        }
    }
}

/// Kafka security. Secrets are referenced, never inlined: the worker reads
/// them from files mounted from the Secrets.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new(
    "!(self.protocol in ['sasl_plaintext', 'sasl_ssl']) || (has(self.username) && has(self.passwordSecretRef))"
).message("SASL needs username and passwordSecretRef"))]
pub struct KafkaSecurity {
    /// plaintext, ssl, sasl_plaintext or sasl_ssl.
    #[serde(default)]
    pub protocol: SecurityProtocol,
    /// SASL mechanism: plain, scram-sha-256 or scram-sha-512.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sasl_mechanism: Option<SaslMechanism>,
    /// SASL user name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub username: Option<String>,
    /// Secret key holding the SASL password.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_secret_ref: Option<KeyRef>,
    /// Secret key holding a PEM CA bundle for TLS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_secret_ref: Option<KeyRef>,
}

/// Schema registry credentials and CA. Secrets are referenced and mounted
/// as files, as for Kafka.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.username) == has(self.passwordSecretRef)").message("username and passwordSecretRef go together"))]
pub struct RegistrySecurity {
    /// Basic-auth user name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub username: Option<String>,
    /// Secret key holding the basic-auth password.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_secret_ref: Option<KeyRef>,
    /// Secret key holding a PEM CA bundle that signs the registry's
    /// certificate (https:// only; default: the system's roots).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_secret_ref: Option<KeyRef>,
}

/// Where the Kafka cluster and schema registry are. Unset fields fall back to
/// the operator's defaults (the Helm chart's `kafka.*` values).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new(
    "!has(self.schemaRegistrySecurity) || !has(self.schemaRegistrySecurity.username) || (has(self.schemaRegistryUrl) && self.schemaRegistryUrl.startsWith('https://'))"
).message("schema registry credentials are only sent over https://: set an https:// schemaRegistryUrl beside them"))]
pub struct KafkaConnection {
    /// Comma-separated bootstrap servers, host:port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 1024),
        regex(pattern = r"^[A-Za-z0-9.-]+:[0-9]{1,5}(,[A-Za-z0-9.-]+:[0-9]{1,5})*$")
    )]
    pub bootstrap_servers: Option<String>,
    /// Confluent-compatible schema registry URL (http://… or https://…).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 2048))]
    #[x_kube(validation = Rule::new("self.startsWith('http://') || self.startsWith('https://')").message("schemaRegistryUrl must be an http:// or https:// URL"))]
    pub schema_registry_url: Option<String>,
    /// Schema registry credentials and CA.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schema_registry_security: Option<RegistrySecurity>,
    /// TLS and SASL settings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub security: Option<KafkaSecurity>,
}

/// A source table read from a topic.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
pub struct Source {
    /// Table name in the SQL: market_ticks, order_events or book_updates.
    #[schemars(length(min = 1, max = 63))]
    pub table: String,
    /// Topic to read.
    #[schemars(length(min = 1, max = 249), regex(pattern = r"^[A-Za-z0-9._-]+$"))]
    pub topic: String,
    /// Value format (default avro).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<Format>,
}

/// Where one stream's rows go: a Kafka topic or a PostgreSQL table.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[x_kube(validation = Rule::new("has(self.topic) != has(self.table)").message("set exactly one of topic and table"))]
pub struct Sink {
    /// Stream name from `CREATE STREAM <name>`.
    #[schemars(length(min = 1, max = 63))]
    pub stream: String,
    /// Topic to write (transactionally, keyed by the GROUP BY key).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 249), regex(pattern = r"^[A-Za-z0-9._-]+$"))]
    pub topic: Option<String>,
    /// PostgreSQL table to write (`table` or `schema.table`; created if
    /// missing), exactly once with the source positions in the same
    /// transaction. Needs `spec.postgres`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 127),
        regex(pattern = r"^[A-Za-z_][A-Za-z0-9_]{0,62}(\.[A-Za-z_][A-Za-z0-9_]{0,62})?$")
    )]
    pub table: Option<String>,
}

impl Sink {
    /// A sink to a Kafka topic.
    pub fn topic(stream: &str, topic: &str) -> Self {
        Self {
            stream: stream.into(),
            topic: Some(topic.into()),
            table: None,
        }
    }
}

/// The PostgreSQL (or TimescaleDB) database of `table` sinks. The password
/// never appears in the spec: it is read from a Secret mounted as a file.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.url) != has(self.urlSecretRef)").message("set exactly one of url and urlSecretRef"))]
#[x_kube(validation = Rule::new("has(self.clientCertSecretRef) == has(self.clientKeySecretRef)").message("clientCertSecretRef and clientKeySecretRef go together"))]
#[x_kube(validation = Rule::new("!has(self.sslMode) || self.sslMode != 'disable' || !(has(self.caSecretRef) || has(self.clientCertSecretRef))").message("sslMode disable takes no certificates"))]
pub struct PostgresConnection {
    /// Connection URL without a password, as libpq reads it:
    /// `postgres://USER@HOST:PORT/DB`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 2048))]
    #[x_kube(validation = Rule::new("(self.startsWith('postgres://') || self.startsWith('postgresql://')) && !self.matches('^[a-z]+://[^/@]*:[^/@]*@')").message("url must be a postgres:// URL without a password (put the password in passwordSecretRef)"))]
    pub url: Option<String>,
    /// The URL from a Secret key instead (it may hold the password, as
    /// the `uri` key of a CloudNativePG application Secret does).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url_secret_ref: Option<KeyRef>,
    /// Secret key holding the password.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_secret_ref: Option<KeyRef>,
    /// TLS as libpq's `sslmode` (default `prefer`); the URL's own
    /// `sslmode`, if any, wins.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssl_mode: Option<PostgresSslMode>,
    /// Secret key holding the PEM CA that signed the server's certificate
    /// (libpq's `sslrootcert`). Without it, verify-ca and verify-full
    /// trust the system's roots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_secret_ref: Option<KeyRef>,
    /// Secret key holding a PEM client certificate, for `cert`
    /// authentication (libpq's `sslcert`), e.g. `tls.crt` of a
    /// `kubernetes.io/tls` Secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_cert_secret_ref: Option<KeyRef>,
    /// Secret key holding its PEM private key (libpq's `sslkey`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_key_secret_ref: Option<KeyRef>,
}

/// libpq's `sslmode`: whether the connection is encrypted and how much of
/// the server's certificate is checked.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum PostgresSslMode {
    /// Never encrypted.
    Disable,
    /// Encrypted when the server offers it (as prefer).
    Allow,
    /// Encrypted when the server offers it; certificate not checked.
    Prefer,
    /// Always encrypted; certificate not checked (unless a CA is given).
    Require,
    /// Always encrypted; certificate signed by the CA.
    VerifyCa,
    /// Always encrypted; certificate signed by the CA and naming the host.
    VerifyFull,
}

impl PostgresSslMode {
    /// The libpq name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Disable => "disable",
            Self::Allow => "allow",
            Self::Prefer => "prefer",
            Self::Require => "require",
            Self::VerifyCa => "verify-ca",
            Self::VerifyFull => "verify-full",
        }
    }

    /// Whether the server's certificate is checked against a CA.
    pub fn verifies(self) -> bool {
        matches!(self, Self::VerifyCa | Self::VerifyFull)
    }

    pub const ALL: [Self; 6] = [
        Self::Disable,
        Self::Allow,
        Self::Prefer,
        Self::Require,
        Self::VerifyCa,
        Self::VerifyFull,
    ];
}

impl std::str::FromStr for PostgresSslMode {
    type Err = String;
    /// The libpq name (`verify-full`, …).
    fn from_str(s: &str) -> Result<Self, String> {
        Self::ALL
            .into_iter()
            .find(|m| m.as_str() == s)
            .ok_or_else(|| {
                format!(
                    "sslmode `{s}` is not one of {}",
                    Self::ALL.map(Self::as_str).join(", ")
                )
            })
    }
}

/// Checkpoint settings.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct CheckpointSpec {
    /// Time between checkpoints, each one also an output transaction (e.g. 10s, 500ms).
    #[serde(default = "default_checkpoint_interval")]
    #[schemars(length(max = 32))]
    #[x_kube(validation = Rule::new("self.matches('^([0-9]+(ms|s|m|h))+$') && duration(self) >= duration('100ms')").message("interval must be a duration of at least 100ms, e.g. 10s"))]
    pub interval: String,
    /// Size of the checkpoint volume (a quantity, e.g. 1Gi).
    #[serde(default = "default_storage_size")]
    #[schemars(length(max = 32))]
    #[x_kube(validation = Rule::new("isQuantity(self) && quantity(self).isGreaterThan(quantity('0'))").message("storageSize must be a positive quantity, e.g. 1Gi"))]
    pub storage_size: String,
    /// StorageClass of the checkpoint volume (default: the cluster's default class).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_class_name: Option<String>,
    /// Keep the checkpoint PVC when the StreamQuery is deleted.
    #[serde(default)]
    pub retain_on_delete: bool,
    /// Access mode of a new checkpoint PVC (see `AccessMode`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_mode: Option<AccessMode>,
}

impl Default for CheckpointSpec {
    fn default() -> Self {
        Self {
            interval: default_checkpoint_interval(),
            storage_size: default_storage_size(),
            storage_class_name: None,
            retain_on_delete: false,
            access_mode: None,
        }
    }
}

/// Access mode of a new checkpoint PVC: ReadWriteOncePod (one pod only,
/// Kubernetes >= 1.29) or ReadWriteOnce. Unset: the operator's default
/// (ReadWriteOncePod where the cluster supports it). An existing PVC keeps
/// its mode (access modes are immutable).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum AccessMode {
    /// Mountable read-write by one node.
    ReadWriteOnce,
    /// Mountable read-write by one pod (GA in Kubernetes 1.29).
    ReadWriteOncePod,
}

impl AccessMode {
    pub fn as_str(self) -> &'static str {
        match self {
            AccessMode::ReadWriteOnce => "ReadWriteOnce",
            AccessMode::ReadWriteOncePod => "ReadWriteOncePod",
        }
    }
}

fn default_checkpoint_interval() -> String {
    "10s".into()
}

fn default_storage_size() -> String {
    "1Gi".into()
}

/// What happens to state when the spec changes.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum UpgradeMode {
    /// Resume from the last checkpoint (state and offsets). A change that
    /// makes the state incompatible fails with the worker's message.
    #[default]
    LastState,
    /// Start every spec revision from empty state (restarts within one
    /// revision still resume from its own checkpoints).
    Stateless,
}

/// Where a partition without a checkpointed offset starts.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum StartFrom {
    #[default]
    Earliest,
    Latest,
}

/// What the worker does with a position outside its partition's offsets
/// (records deleted by retention before they were read, a recreated topic).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum OnOffsetOutOfRange {
    /// Continue at the oldest record still there (loses only what is gone).
    #[default]
    Earliest,
    /// Continue at the end of the partition.
    Latest,
    /// Stop the query with an error.
    Fail,
}

impl OnOffsetOutOfRange {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Earliest => "earliest",
            Self::Latest => "latest",
            Self::Fail => "fail",
        }
    }
}

/// A continuous SQL query over market-data topics, run by a worker
/// Deployment with checkpoints on a PVC and exactly-once output.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[kube(
    group = "tickflow.io",
    version = "v1alpha1",
    kind = "StreamQuery",
    namespaced,
    status = "StreamQueryStatus",
    shortname = "sq",
    category = "tickflow",
    doc = "A continuous SQL query over market-data topics, run by a worker Deployment with checkpoints on a PVC and exactly-once output.",
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(name = "SQL", type_ = "string", json_path = ".status.conditions[?(@.type==\"SqlValid\")].status"),
    printcolumn(name = "Ready", type_ = "integer", json_path = ".status.readyReplicas"),
    printcolumn(name = "In", type_ = "integer", json_path = ".status.recordsIn"),
    printcolumn(name = "Out", type_ = "integer", json_path = ".status.recordsOut"),
    printcolumn(name = "Lag", type_ = "integer", json_path = ".status.lag"),
    printcolumn(name = "Checkpoint", type_ = "date", json_path = ".status.lastCheckpoint.time"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp"),
    // `kubectl scale sq/NAME --replicas N` (and an autoscaler) set
    // spec.parallelism; only a query created with it has a scale.
    scale(
        spec_replicas_path = ".spec.parallelism",
        status_replicas_path = ".status.readyReplicas",
        label_selector_path = ".status.selector"
    ),
    validation = Rule::new("self.metadata.name.size() <= 52").message("name must be at most 52 characters (objects derived from it add suffixes)"),
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.sql) != has(self.sqlConfigMap)").message("set exactly one of sql and sqlConfigMap"))]
#[x_kube(validation = Rule::new("!has(self.sinks) || !self.sinks.exists(s, has(s.table)) || has(self.postgres)").message("sinks with a table need spec.postgres"))]
#[x_kube(validation = Rule::new("has(self.parallelism) == has(oldSelf.parallelism)").message("parallelism is set when a query is created and stays set (it decides whether the state lives on the checkpoint volume or in Kafka); create a new StreamQuery to switch"))]
#[x_kube(validation = Rule::new("!has(self.parallelism) || self.upgradeMode == 'last-state'").message("parallelism needs upgradeMode last-state (the state in Kafka has no per-revision copy)"))]
pub struct StreamQuerySpec {
    /// The query: one or more `CREATE STREAM … AS SELECT …` statements.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 262144))]
    pub sql: Option<String>,
    /// The query from a ConfigMap key instead of inline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sql_config_map: Option<KeyRef>,
    /// Source tables and their topics (default: market_ticks ← market-ticks,
    /// order_events ← order-events, book_updates ← book-updates, Avro).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["table".into()]))]
    pub sources: Vec<Source>,
    /// Output topic or PostgreSQL table per stream (default: a topic named
    /// like the stream, with `_` → `-`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["stream".into()]))]
    pub sinks: Vec<Sink>,
    /// Value format of the output topics (default avro).
    #[serde(default)]
    pub output_format: Format,
    /// Topic for input records that cannot be decoded (default: <namespace>-<name>-dead-letters).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 249), regex(pattern = r"^[A-Za-z0-9._-]+$"))]
    pub dead_letter_topic: Option<String>,
    /// Kafka and schema registry (unset fields: the operator's defaults).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kafka: Option<KafkaConnection>,
    /// The database of the sinks that name a `table`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub postgres: Option<PostgresConnection>,
    /// Checkpoint interval and volume.
    #[serde(default)]
    pub checkpoint: CheckpointSpec,
    /// last-state (resume from the last checkpoint) or stateless (each spec
    /// revision starts from empty state).
    #[serde(default)]
    pub upgrade_mode: UpgradeMode,
    /// running or suspended (final checkpoint, then zero replicas).
    #[serde(default)]
    pub state: RunState,
    /// Change to any new value to restart the worker without other changes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 63))]
    pub restart_nonce: Option<String>,
    /// Allowed out-of-orderness of event time (e.g. 1s, 0s).
    #[serde(default = "default_allowed_lateness")]
    #[schemars(length(max = 32))]
    #[x_kube(validation = Rule::new("self.matches('^([0-9]+(ms|s|m|h))+$')").message("allowedLateness must be a duration such as 1s or 500ms"))]
    pub allowed_lateness: String,
    /// Where partitions without a checkpointed offset start: earliest or latest.
    #[serde(default)]
    pub start_from: StartFrom,
    /// A position outside its partition's offsets (records deleted before
    /// they were read): earliest, latest or fail. Skipped records are
    /// counted in status.
    #[serde(default)]
    pub on_offset_out_of_range: OnOffsetOutOfRange,
    /// Worker image (default: the operator's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 512))]
    pub image: Option<String>,
    /// CPU and memory of the worker container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// Run the query on this many worker pods (1 to 64), one Deployment
    /// each; worker i reads the source partitions p with p mod parallelism
    /// == i. Setting it keeps the query's state in the compacted Kafka
    /// topic tickflow-NAME-state instead of on a checkpoint volume (no PVC;
    /// storageSize bounds each pod's scratch directory). Set at creation
    /// only; `kubectl scale` changes it, stopping every worker before the
    /// new set starts. Unset: one worker, state on the PVC.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self >= 1 && self <= 64").message("parallelism must be between 1 and 64 workers"))]
    pub parallelism: Option<i32>,
}

/// Largest `spec.parallelism` (the schema's bound).
pub const MAX_PARALLELISM: i32 = 64;

fn default_allowed_lateness() -> String {
    "1s".into()
}

/// The last checkpoint the worker completed.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct CheckpointStatus {
    /// Checkpoint (epoch) number.
    pub id: u64,
    /// When it completed (RFC 3339).
    pub time: String,
    /// Size on the volume.
    pub size_bytes: u64,
}

/// Observed state of a StreamQuery. Written by the operator only; the
/// worker's runtime figures come from its /status endpoint.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct StreamQueryStatus {
    /// Pending, Running, Suspended, Failed or Degraded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<Phase>,
    /// The metadata.generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Ready, SqlValid, Progressing and Degraded.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,
    /// Worker pods ready.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_replicas: Option<i32>,
    /// Streams the query defines, as planned.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub streams: Vec<String>,
    /// Topics the query writes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub output_topics: Vec<String>,
    /// The worker's last completed checkpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_checkpoint: Option<CheckpointStatus>,
    /// Records read, over all sources.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub records_in: Option<u64>,
    /// Records written, over all outputs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub records_out: Option<u64>,
    /// Events that arrived after their window closed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub late_events: Option<u64>,
    /// Records sent to the dead-letter topic.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dead_letters: Option<u64>,
    /// Consumer lag summed over partitions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lag: Option<i64>,
    /// The worker's last error, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// The worker's own state (starting, running, …) from its /status.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker_state: Option<String>,
    /// When the worker figures were last read (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker_reported_at: Option<String>,
    /// Label selector of the query's worker pods (queries with parallelism:
    /// what the scale subresource reports).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<String>,
    /// One entry per worker of a query with parallelism, by index; the
    /// figures above are their sums.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub workers: Vec<StreamQueryWorker>,
    /// Of a query with parallelism: how many of its workers' figures the
    /// sums above include (a worker that has not answered its /status yet,
    /// or whose pod is new, is not in them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workers_reporting: Option<i32>,
}

/// One worker of a query with parallelism: its Deployment, its pod and
/// the figures from its last /status.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct StreamQueryWorker {
    /// Worker index (it reads the partitions p with p mod parallelism == index).
    pub index: i32,
    /// Name of its Deployment.
    pub deployment: String,
    /// Name of its pod, when one exists.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
    /// The pod is ready.
    pub ready: bool,
    /// Records read, over its sources.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub records_in: Option<u64>,
    /// Records written, over its outputs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub records_out: Option<u64>,
    /// Events that arrived after their window closed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub late_events: Option<u64>,
    /// Records sent to the dead-letter topic.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dead_letters: Option<u64>,
    /// Consumer lag summed over its partitions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lag: Option<i64>,
    /// Its last completed checkpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_checkpoint: Option<CheckpointStatus>,
    /// Its own state (starting, running, ...) from its /status.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker_state: Option<String>,
    /// Its last error, if any (cut to 1 KiB).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

/// Topic names the simulator writes.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProducerTopics {
    /// Market ticks topic.
    #[serde(default = "default_ticks_topic")]
    #[schemars(length(min = 1, max = 249), regex(pattern = r"^[A-Za-z0-9._-]+$"))]
    pub market_ticks: String,
    /// Order events topic.
    #[serde(default = "default_orders_topic")]
    #[schemars(length(min = 1, max = 249), regex(pattern = r"^[A-Za-z0-9._-]+$"))]
    pub order_events: String,
    /// Book updates topic.
    #[serde(default = "default_books_topic")]
    #[schemars(length(min = 1, max = 249), regex(pattern = r"^[A-Za-z0-9._-]+$"))]
    pub book_updates: String,
}

impl Default for ProducerTopics {
    fn default() -> Self {
        Self {
            market_ticks: default_ticks_topic(),
            order_events: default_orders_topic(),
            book_updates: default_books_topic(),
        }
    }
}

fn default_ticks_topic() -> String {
    "market-ticks".into()
}
fn default_orders_topic() -> String {
    "order-events".into()
}
fn default_books_topic() -> String {
    "book-updates".into()
}

/// A market simulator writing ticks, order events and book updates to Kafka.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[kube(
    group = "tickflow.io",
    version = "v1alpha1",
    kind = "MarketProducer",
    namespaced,
    status = "MarketProducerStatus",
    shortname = "mp",
    category = "tickflow",
    doc = "A market simulator writing ticks, order events and book updates to Kafka.",
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(name = "Rate", type_ = "number", json_path = ".spec.rate"),
    printcolumn(name = "Symbols", type_ = "integer", json_path = ".status.symbols"),
    printcolumn(name = "Ready", type_ = "integer", json_path = ".status.readyReplicas"),
    printcolumn(name = "Out", type_ = "integer", json_path = ".status.recordsOut"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp"),
    validation = Rule::new("self.metadata.name.size() <= 52").message("name must be at most 52 characters (objects derived from it add suffixes)"),
)]
#[serde(rename_all = "camelCase")]
pub struct MarketProducerSpec {
    /// Kafka and schema registry (unset fields: the operator's defaults).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kafka: Option<KafkaConnection>,
    /// Symbols to simulate (default: AAPL, GOOGL, MSFT, AMZN, TSLA, NVDA, META, NFLX).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 1000), inner(regex(pattern = r"^[A-Z0-9.]{1,12}$")))]
    #[x_kube(merge_strategy = ListMerge::Set)]
    pub symbols: Vec<String>,
    /// Market ticks per second of event time, over all symbols.
    #[serde(default = "default_rate")]
    #[x_kube(validation = Rule::new("self > 0.0 && self <= 10000000.0").message("rate must be in (0, 10000000] ticks per second"))]
    pub rate: f64,
    /// Periodic volume spikes (rate ×3, size ×4 for 2 s every 20 s).
    #[serde(default)]
    pub burst: bool,
    /// Event time runs this many times faster than the wall clock.
    #[serde(default = "default_speed")]
    #[x_kube(validation = Rule::new("self > 0.0 && self <= 1000.0").message("speed must be in (0, 1000]"))]
    pub speed: f64,
    /// Simulator seed: the same seed gives the same data.
    #[serde(default = "default_seed")]
    #[schemars(range(min = 0))]
    pub seed: i64,
    /// Bounded out-of-order delivery: events arrive up to this late (e.g. 200ms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 32))]
    #[x_kube(validation = Rule::new("self.matches('^([0-9]+(ms|s|m|h))+$')").message("jitter must be a duration such as 200ms"))]
    pub jitter: Option<String>,
    /// Value format: avro (Confluent framing, schemas registered) or json.
    #[serde(default)]
    pub format: Format,
    /// Topics to write.
    #[serde(default)]
    pub topics: ProducerTopics,
    /// Partitions of topics the producer creates.
    #[serde(default = "default_partitions")]
    #[schemars(range(min = 1, max = 1000))]
    pub partitions: i32,
    /// running or suspended (zero replicas).
    #[serde(default)]
    pub state: RunState,
    /// Change to any new value to restart the producer without other changes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 63))]
    pub restart_nonce: Option<String>,
    /// Worker image (default: the operator's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 512))]
    pub image: Option<String>,
    /// CPU and memory of the producer container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
}

fn default_rate() -> f64 {
    1000.0
}
fn default_speed() -> f64 {
    1.0
}
fn default_seed() -> i64 {
    42
}
fn default_partitions() -> i32 {
    3
}

/// Observed state of a MarketProducer. Written by the operator only.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct MarketProducerStatus {
    /// Pending, Running, Suspended, Failed or Degraded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<Phase>,
    /// The metadata.generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Ready, Progressing and Degraded.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,
    /// Producer pods ready.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_replicas: Option<i32>,
    /// Number of symbols simulated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub symbols: Option<u32>,
    /// Records written, over all topics.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub records_out: Option<u64>,
    /// The producer's last error, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// The worker's own state from its /status.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker_state: Option<String>,
    /// When the worker figures were last read (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker_reported_at: Option<String>,
}

/// The CRDs as one YAML stream (what `tickflow-operator crdgen` prints).
pub fn crd_yaml() -> Vec<(String, String)> {
    [MarketProducer::crd(), StreamQuery::crd()]
        .into_iter()
        .map(|crd| {
            let name = crd.metadata.name.clone().unwrap_or_default();
            let yaml = serde_yaml::to_string(&crd).expect("CRDs serialize");
            (format!("{name}.yaml"), yaml)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_field_has_a_description() {
        fn walk(path: &str, schema: &serde_json::Value, missing: &mut Vec<String>) {
            let Some(props) = schema.get("properties").and_then(|p| p.as_object()) else {
                if let Some(items) = schema.get("items") {
                    walk(&format!("{path}[]"), items, missing);
                }
                return;
            };
            for (name, prop) in props {
                let p = format!("{path}.{name}");
                // metadata, apiVersion and kind are Kubernetes' own.
                if prop.get("description").is_none() && !matches!(name.as_str(), "metadata") {
                    missing.push(p.clone());
                }
                walk(&p, prop, missing);
            }
        }
        for crd in [MarketProducer::crd(), StreamQuery::crd()] {
            let schema = serde_json::to_value(&crd.spec.versions[0].schema).unwrap();
            let root = &schema["openAPIV3Schema"];
            let mut missing = Vec::new();
            for part in ["spec", "status"] {
                walk(part, &root["properties"][part], &mut missing);
            }
            assert!(
                missing.is_empty(),
                "{}: no description: {missing:?}",
                crd.spec.names.kind
            );
        }
    }

    #[test]
    fn chart_crds_match_the_rust_types() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../charts/tickflow/crds");
        for (file, yaml) in crd_yaml() {
            let committed = std::fs::read_to_string(dir.join(&file)).unwrap_or_default();
            assert!(
                committed == yaml,
                "charts/tickflow/crds/{file} differs from the Rust types: run \
                 `cargo run -p tickflow-operator -- crdgen --out-dir charts/tickflow/crds`"
            );
        }
    }

    #[test]
    fn crds_have_status_short_names_and_rules() {
        let sq = StreamQuery::crd();
        assert_eq!(sq.spec.group, API_GROUP);
        assert_eq!(sq.spec.versions[0].name, API_VERSION);
        assert_eq!(sq.spec.names.short_names, Some(vec!["sq".into()]));
        assert!(
            sq.spec.versions[0]
                .subresources
                .as_ref()
                .unwrap()
                .status
                .is_some()
        );
        // `kubectl scale sq/NAME` moves spec.parallelism; the status says
        // how many workers are ready and which pods are theirs.
        let scale = sq.spec.versions[0]
            .subresources
            .as_ref()
            .unwrap()
            .scale
            .clone()
            .expect("scale subresource");
        assert_eq!(scale.spec_replicas_path, ".spec.parallelism");
        assert_eq!(scale.status_replicas_path, ".status.readyReplicas");
        assert_eq!(
            scale.label_selector_path.as_deref(),
            Some(".status.selector")
        );
        let json = serde_json::to_string(&sq).unwrap();
        assert!(json.contains("has(self.sql) != has(self.sqlConfigMap)"));
        assert!(json.contains("has(self.parallelism) == has(oldSelf.parallelism)"));
        assert!(json.contains("self >= 1 && self <= 64"));
        assert_eq!(
            MarketProducer::crd().spec.names.short_names,
            Some(vec!["mp".into()])
        );
    }

    #[test]
    fn spec_defaults_fill_in_a_minimal_resource() {
        let sq: StreamQuerySpec =
            serde_json::from_str(r#"{"sql": "CREATE STREAM x AS SELECT 1"}"#).unwrap();
        assert_eq!(sq.checkpoint.interval, "10s");
        assert_eq!(sq.checkpoint.storage_size, "1Gi");
        assert_eq!(sq.upgrade_mode, UpgradeMode::LastState);
        assert_eq!(sq.state, RunState::Running);
        assert_eq!(sq.parallelism, None, "one worker, state on the PVC");
        let mp: MarketProducerSpec = serde_json::from_str("{}").unwrap();
        assert_eq!(mp.rate, 1000.0);
        assert_eq!(mp.topics.market_ticks, "market-ticks");
    }
}
