//! Connection settings shared by every Kafka client of the worker: brokers,
//! security protocol, SASL credentials and TLS files. Secrets come from the
//! environment or from files (Kubernetes Secrets mounted as volumes) and are
//! never printed.

use std::fmt;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::producer::{DeliveryResult, ProducerContext};

/// A password or other secret: shown as `***` by `Debug` and `Display`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Self(s.into())
    }

    /// Reads a secret file, dropping one trailing newline (as `kubectl create
    /// secret --from-file` keeps it).
    pub fn from_file(path: &std::path::Path) -> std::io::Result<Self> {
        let s = std::fs::read_to_string(path)?;
        Ok(Self(s.strip_suffix('\n').unwrap_or(&s).to_string()))
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

pub use tickflow_crds::kafka::{SaslMechanism, SecurityProtocol};

/// Where and how to connect.
#[derive(Clone, Debug, Default)]
pub struct KafkaConfig {
    /// Comma-separated `host:port` list.
    pub brokers: String,
    pub protocol: SecurityProtocol,
    pub sasl_mechanism: SaslMechanism,
    pub sasl_username: Option<String>,
    pub sasl_password: Option<Secret>,
    /// PEM files for TLS: CA bundle, client certificate and key.
    pub ssl_ca: Option<PathBuf>,
    pub ssl_cert: Option<PathBuf>,
    pub ssl_key: Option<PathBuf>,
    pub ssl_key_password: Option<Secret>,
}

impl KafkaConfig {
    pub fn plaintext(brokers: impl Into<String>) -> Self {
        Self {
            brokers: brokers.into(),
            ..Self::default()
        }
    }

    /// Checks the settings hang together before any client is made.
    pub fn validate(&self) -> anyhow::Result<()> {
        if self.brokers.trim().is_empty() {
            anyhow::bail!("no Kafka brokers given: set --brokers or KAFKA_BROKERS");
        }
        if self.protocol.uses_sasl() {
            if self.sasl_username.is_none() || self.sasl_password.is_none() {
                anyhow::bail!(
                    "security protocol {:?} needs a SASL username and password \
                     (--sasl-username, KAFKA_SASL_PASSWORD or --sasl-password-file)",
                    self.protocol
                );
            }
        } else if self.sasl_username.is_some() {
            anyhow::bail!(
                "a SASL username was given but the security protocol is {:?}: \
                 use --security-protocol sasl-plaintext or sasl-ssl",
                self.protocol
            );
        }
        for (what, p) in [
            ("CA", &self.ssl_ca),
            ("client certificate", &self.ssl_cert),
            ("client key", &self.ssl_key),
        ] {
            if let Some(p) = p
                && !p.is_file()
            {
                anyhow::bail!("TLS {what} file {} does not exist", p.display());
            }
        }
        Ok(())
    }

    /// librdkafka settings common to producers, consumers and admin clients.
    pub fn client_config(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.brokers)
            .set("security.protocol", self.protocol.as_librdkafka())
            .set("client.id", "tickflow-worker")
            // Fail fast and with one message instead of retrying forever
            // against an address that does not answer.
            .set("socket.connection.setup.timeout.ms", "10000")
            .set("reconnect.backoff.max.ms", "2000")
            .set_log_level(RDKafkaLogLevel::Warning);
        if self.protocol.uses_sasl() {
            c.set("sasl.mechanism", self.sasl_mechanism.as_librdkafka());
            if let Some(u) = &self.sasl_username {
                c.set("sasl.username", u);
            }
            if let Some(p) = &self.sasl_password {
                c.set("sasl.password", p.expose());
            }
        }
        if let Some(p) = &self.ssl_ca {
            c.set("ssl.ca.location", p.display().to_string());
        }
        if let Some(p) = &self.ssl_cert {
            c.set("ssl.certificate.location", p.display().to_string());
        }
        if let Some(p) = &self.ssl_key {
            c.set("ssl.key.location", p.display().to_string());
        }
        if let Some(p) = &self.ssl_key_password {
            c.set("ssl.key.password", p.expose());
        }
        c
    }

    /// Connects once and fetches cluster metadata, so a wrong password or an
    /// unreachable broker is one clear error line at start-up.
    pub fn check_connection(&self, timeout: Duration) -> anyhow::Result<()> {
        self.validate()?;
        let consumer: BaseConsumer<ClientErrors> = self
            .client_config()
            .create_with_context(ClientErrors::default())
            .map_err(|e| anyhow::anyhow!("invalid Kafka client settings: {e}"))?;
        let deadline = std::time::Instant::now() + timeout;
        loop {
            match consumer.fetch_metadata(None, Duration::from_secs(2)) {
                Ok(md) if !md.brokers().is_empty() => return Ok(()),
                Ok(_) => anyhow::bail!("Kafka at {} returned no brokers", self.brokers),
                Err(e) => {
                    // Serve queued error events so an authentication failure
                    // is reported as such, at once, rather than as a timeout.
                    let _ = consumer.poll(Duration::from_millis(100));
                    let ctx = consumer.context();
                    if ctx.auth_failed() || std::time::Instant::now() >= deadline {
                        return Err(ctx.explain(&self.brokers, &e));
                    }
                }
            }
        }
    }
}

/// Client context that keeps the most recent client-level error (auth
/// failures, unreachable brokers) so it can be reported once, plainly,
/// instead of librdkafka's stream of retry logs.
#[derive(Default)]
pub struct ClientErrors {
    last: Mutex<Option<String>>,
    delivery_failures: std::sync::atomic::AtomicU64,
}

impl ClientErrors {
    pub fn last_error(&self) -> Option<String> {
        self.last.lock().expect("not poisoned").clone()
    }

    /// The broker refused our credentials.
    pub fn auth_failed(&self) -> bool {
        self.last_error().is_some_and(|e| is_auth_error(&e))
    }

    pub fn delivery_failures(&self) -> u64 {
        self.delivery_failures
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The best one-line explanation of a failed call.
    pub fn explain(&self, brokers: &str, err: &KafkaError) -> anyhow::Error {
        match self.last_error() {
            Some(e) if is_auth_error(&e) => {
                anyhow::anyhow!("Kafka authentication failed at {brokers}: {e}")
            }
            Some(e) => anyhow::anyhow!("cannot use Kafka at {brokers}: {e} ({err})"),
            None => anyhow::anyhow!("cannot use Kafka at {brokers}: {err}"),
        }
    }
}

impl ClientContext for ClientErrors {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, log_message: &str) {
        // Warnings and worse only, at debug: errors are reported once, by the caller.
        if (level as i32) <= (RDKafkaLogLevel::Warning as i32) {
            tracing::debug!(facility = fac, "librdkafka: {log_message}");
            if is_auth_error(log_message) {
                *self.last.lock().expect("not poisoned") = Some(log_message.to_string());
            }
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        tracing::debug!(%error, "librdkafka error: {reason}");
        *self.last.lock().expect("not poisoned") = Some(reason.to_string());
    }
}

fn is_auth_error(message: &str) -> bool {
    message.contains("SASL authentication error")
        || message.contains("Authentication failed")
        || message.contains("SSL handshake failed")
}

impl ConsumerContext for ClientErrors {}

impl ProducerContext for ClientErrors {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: Self::DeliveryOpaque) {
        if let Err((e, _)) = result {
            self.delivery_failures
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            *self.last.lock().expect("not poisoned") = Some(format!("delivery failed: {e}"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_not_printed() {
        let c = KafkaConfig {
            brokers: "b:9092".into(),
            protocol: SecurityProtocol::SaslPlaintext,
            sasl_username: Some("u".into()),
            sasl_password: Some(Secret::new("hunter2")),
            ..KafkaConfig::default()
        };
        assert!(!format!("{c:?}").contains("hunter2"));
        assert_eq!(
            c.client_config().get("sasl.password"),
            Some("hunter2"),
            "the client still gets the password"
        );
    }

    #[test]
    fn sasl_without_credentials_is_refused() {
        let c = KafkaConfig {
            brokers: "b:9092".into(),
            protocol: SecurityProtocol::SaslSsl,
            ..KafkaConfig::default()
        };
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("SASL username and password"), "{e}");
    }
}
