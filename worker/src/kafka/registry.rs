//! Client of a Confluent-compatible schema registry: registers subjects and
//! looks schemas up by id, both cached.
//!
//! What an answer means for the data (the Kafka source acts on it):
//! - a schema: cached for good;
//! - "unknown id" (404 with error code 40403): the record is bad data; the
//!   answer is cached for [`RegistryConfig::unknown_id_ttl`] so a topic full
//!   of such records costs one request per id and TTL, not one per record;
//! - anything else (registry down, 5xx, 401/403 auth, 408/429 throttling,
//!   timeouts, other 4xx such as a 404 from a wrong URL path): a problem of
//!   the registry or its configuration, never of the record, so the source
//!   rewinds and tries again later ([`RegistryError::is_data_error`] is
//!   false). 408, 429 and 5xx are retried here first, with backoff.
//!
//! `https://` URLs use rustls (ring) with the system's trust roots or a
//! given CA file; credentials are refused over plain `http://` unless
//! explicitly allowed.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use apache_avro::Schema;

use super::config::Secret;

const CONTENT_TYPE: &str = "application/vnd.schemaregistry.v1+json";

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("schema id {0} is not known to the schema registry")]
    UnknownId(u32),
    #[error("schema registry at {url} refused {what}: HTTP {status}: {message} (error code {code}){}", hint(*.status))]
    Rejected {
        url: String,
        what: String,
        status: u16,
        code: i64,
        message: String,
    },
    #[error("schema registry at {url} is unreachable after {attempts} attempts: {message}")]
    Unreachable {
        url: String,
        attempts: u32,
        message: String,
    },
    #[error("schema {id} from the registry is not valid Avro: {message}")]
    InvalidSchema { id: u32, message: String },
    #[error("schema registry settings: {0}")]
    Config(String),
}

fn hint(status: u16) -> &'static str {
    match status {
        401 => " — check the registry user and password",
        403 => " — the registry user lacks permission",
        408 | 429 => " — the registry is throttling or slow",
        _ => "",
    }
}

impl RegistryError {
    /// Worth trying again later (the registry may come back, the
    /// credentials may be fixed, throttling ends).
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Unreachable { .. } => true,
            Self::Rejected { status, .. } => matches!(status, 401 | 403 | 408 | 429 | 500..),
            Self::UnknownId(_) | Self::InvalidSchema { .. } | Self::Config(_) => false,
        }
    }

    /// The answer is about the data (the schema id), so a record carrying it
    /// is bad; everything else is the registry's (or its settings') fault
    /// and must not divert a record.
    pub fn is_data_error(&self) -> bool {
        matches!(self, Self::UnknownId(_) | Self::InvalidSchema { .. })
    }
}

/// Registry settings.
#[derive(Clone, Debug)]
pub struct RegistryConfig {
    pub url: String,
    pub username: Option<String>,
    pub password: Option<Secret>,
    /// Attempts per request before giving up with [`RegistryError::Unreachable`].
    pub attempts: u32,
    pub timeout: Duration,
    /// How long a "schema id unknown" answer is believed before the id is
    /// asked for again.
    pub unknown_id_ttl: Duration,
    /// PEM file with the CA certificate(s) an `https://` registry is
    /// verified with (else the system's trust roots).
    pub ca_file: Option<PathBuf>,
    /// Send credentials over plain `http://` (a local sidecar or a test).
    pub allow_insecure_auth: bool,
}

impl RegistryConfig {
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into().trim_end_matches('/').to_string(),
            username: None,
            password: None,
            attempts: 5,
            timeout: Duration::from_secs(5),
            unknown_id_ttl: Duration::from_secs(60),
            ca_file: None,
            allow_insecure_auth: false,
        }
    }

    fn is_https(&self) -> bool {
        self.url
            .get(..8)
            .is_some_and(|s| s.eq_ignore_ascii_case("https://"))
    }

    fn has_credentials(&self) -> bool {
        self.username.is_some() || self.password.is_some()
    }

    /// Checks the URL scheme, the credentials' transport and the CA file
    /// (read and parsed here, so a bad file fails at start-up).
    pub fn validate(&self) -> Result<(), RegistryError> {
        self.tls().map(|_| ())
    }

    /// The TLS settings for the agent (`None` for `http://`).
    fn tls(&self) -> Result<Option<ureq::tls::TlsConfig>, RegistryError> {
        use ureq::tls::{Certificate, PemItem, RootCerts, TlsConfig, TlsProvider};
        let is_http = self
            .url
            .get(..7)
            .is_some_and(|s| s.eq_ignore_ascii_case("http://"));
        if !is_http && !self.is_https() {
            return Err(RegistryError::Config(format!(
                "URL {} must start with http:// or https://",
                self.url
            )));
        }
        if is_http {
            if self.has_credentials() && !self.allow_insecure_auth {
                return Err(RegistryError::Config(format!(
                    "refusing to send the registry user and password over plain HTTP to {}: \
                     use an https:// URL, or pass --schema-registry-allow-insecure-auth \
                     if the connection is protected otherwise (loopback, sidecar, mesh)",
                    self.url
                )));
            }
            if let Some(ca) = &self.ca_file {
                return Err(RegistryError::Config(format!(
                    "a CA file ({}) was given but the URL {} is plain http://",
                    ca.display(),
                    self.url
                )));
            }
            return Ok(None);
        }
        let roots = match &self.ca_file {
            None => RootCerts::PlatformVerifier,
            Some(path) => {
                let pem = std::fs::read(path).map_err(|e| {
                    RegistryError::Config(format!("reading the CA file {}: {e}", path.display()))
                })?;
                let mut certs: Vec<Certificate<'static>> = Vec::new();
                for item in ureq::tls::parse_pem(&pem) {
                    match item {
                        Ok(PemItem::Certificate(c)) => certs.push(c),
                        Ok(_) => {}
                        Err(e) => {
                            return Err(RegistryError::Config(format!(
                                "the CA file {}: {e}",
                                path.display()
                            )));
                        }
                    }
                }
                if certs.is_empty() {
                    return Err(RegistryError::Config(format!(
                        "the CA file {} holds no PEM certificate",
                        path.display()
                    )));
                }
                RootCerts::new_with_certs(&certs)
            }
        };
        Ok(Some(
            TlsConfig::builder()
                .provider(TlsProvider::Rustls)
                .root_certs(roots)
                .unversioned_rustls_crypto_provider(Arc::new(
                    rustls::crypto::ring::default_provider(),
                ))
                .build(),
        ))
    }
}

/// A cached registry client, cheap to clone and share.
#[derive(Clone)]
pub struct RegistryClient {
    config: RegistryConfig,
    agent: ureq::Agent,
    /// Why the settings are unusable (then every request fails with it).
    invalid: Option<String>,
    by_id: Arc<Mutex<HashMap<u32, Arc<Schema>>>>,
    /// Ids the registry said it does not know, and when it said so.
    unknown: Arc<Mutex<HashMap<u32, Instant>>>,
    registered: Arc<Mutex<HashMap<(String, String), u32>>>,
    requests: Arc<std::sync::atomic::AtomicU64>,
}

impl std::fmt::Debug for RegistryClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryClient")
            .field("url", &self.config.url)
            .finish_non_exhaustive()
    }
}

impl RegistryClient {
    /// A client; settings [`RegistryConfig::validate`] refuses make every
    /// request fail with that error (use [`RegistryClient::try_new`] to
    /// fail at once).
    pub fn new(config: RegistryConfig) -> Self {
        let (tls, invalid) = match config.tls() {
            Ok(tls) => (tls, None),
            Err(e) => (None, Some(e.to_string())),
        };
        let mut builder = ureq::Agent::config_builder()
            .timeout_global(Some(config.timeout))
            .http_status_as_error(false);
        if let Some(tls) = tls {
            builder = builder.tls_config(tls);
        }
        Self {
            agent: builder.build().new_agent(),
            config,
            invalid,
            by_id: Arc::default(),
            unknown: Arc::default(),
            registered: Arc::default(),
            requests: Arc::default(),
        }
    }

    /// A client, or why its settings are unusable.
    pub fn try_new(config: RegistryConfig) -> Result<Self, RegistryError> {
        config.validate()?;
        Ok(Self::new(config))
    }

    pub fn url(&self) -> &str {
        &self.config.url
    }

    /// HTTP requests sent so far (retries included), by this client and its clones.
    pub fn requests_sent(&self) -> u64 {
        self.requests.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Registers `schema` under `subject` (idempotent) and returns its id.
    pub fn register(&self, subject: &str, schema: &Schema) -> Result<u32, RegistryError> {
        // The full schema, not the Parsing Canonical Form: that form drops
        // logical types (`timestamp-millis`), which readers need.
        let text = serde_json::to_string(schema).map_err(|e| RegistryError::Rejected {
            url: self.config.url.clone(),
            what: format!("subject {subject}"),
            status: 0,
            code: 0,
            message: format!("schema does not serialize: {e}"),
        })?;
        let key = (subject.to_string(), text.clone());
        if let Some(id) = self.registered.lock().expect("not poisoned").get(&key) {
            return Ok(*id);
        }
        let body = serde_json::json!({ "schema": text }).to_string();
        let path = format!("/subjects/{subject}/versions");
        let v = self.request("POST", &path, Some(&body), &format!("subject {subject}"))?;
        let id = v["id"].as_u64().ok_or_else(|| RegistryError::Rejected {
            url: self.config.url.clone(),
            what: format!("subject {subject}"),
            status: 200,
            code: 0,
            message: format!("answer without an id: {v}"),
        })? as u32;
        self.registered
            .lock()
            .expect("not poisoned")
            .insert(key, id);
        self.by_id
            .lock()
            .expect("not poisoned")
            .insert(id, Arc::new(schema.clone()));
        Ok(id)
    }

    /// The writer schema with this id.
    pub fn schema_by_id(&self, id: u32) -> Result<Arc<Schema>, RegistryError> {
        if let Some(s) = self.by_id.lock().expect("not poisoned").get(&id) {
            return Ok(Arc::clone(s));
        }
        {
            let mut unknown = self.unknown.lock().expect("not poisoned");
            match unknown.get(&id) {
                Some(at) if at.elapsed() < self.config.unknown_id_ttl => {
                    return Err(RegistryError::UnknownId(id));
                }
                Some(_) => {
                    unknown.remove(&id);
                }
                None => {}
            }
        }
        let v = match self.request("GET", &format!("/schemas/ids/{id}"), None, "a schema id") {
            Err(RegistryError::Rejected {
                status: 404,
                code: 40403,
                ..
            }) => {
                self.unknown
                    .lock()
                    .expect("not poisoned")
                    .insert(id, Instant::now());
                return Err(RegistryError::UnknownId(id));
            }
            other => other?,
        };
        let text = v["schema"].as_str().unwrap_or_default();
        let schema = Schema::parse_str(text).map_err(|e| RegistryError::InvalidSchema {
            id,
            message: e.to_string(),
        })?;
        let schema = Arc::new(schema);
        self.by_id
            .lock()
            .expect("not poisoned")
            .insert(id, Arc::clone(&schema));
        Ok(schema)
    }

    /// The newest schema registered under `subject` (id and schema);
    /// `None` when the subject does not exist (yet).
    pub fn latest_schema(&self, subject: &str) -> Result<Option<(u32, Schema)>, RegistryError> {
        let path = format!("/subjects/{subject}/versions/latest");
        let v = match self.request("GET", &path, None, "the latest schema of a subject") {
            // 40401: subject not found; 40402: version not found.
            Err(RegistryError::Rejected {
                status: 404,
                code: 40401 | 40402,
                ..
            }) => return Ok(None),
            other => other?,
        };
        let id = v["id"]
            .as_u64()
            .and_then(|i| u32::try_from(i).ok())
            .unwrap_or(0);
        let text = v["schema"].as_str().unwrap_or_default();
        let schema = Schema::parse_str(text).map_err(|e| RegistryError::InvalidSchema {
            id,
            message: e.to_string(),
        })?;
        Ok(Some((id, schema)))
    }

    fn request(
        &self,
        method: &str,
        path: &str,
        body: Option<&str>,
        what: &str,
    ) -> Result<serde_json::Value, RegistryError> {
        if let Some(e) = &self.invalid {
            return Err(RegistryError::Config(e.clone()));
        }
        let url = format!("{}{}", self.config.url, path);
        let mut backoff = Duration::from_millis(100);
        let mut last = String::new();
        let rejected = |status: u16, v: &serde_json::Value| RegistryError::Rejected {
            url: self.config.url.clone(),
            what: what.to_string(),
            status,
            code: v["error_code"].as_i64().unwrap_or(i64::from(status)),
            message: match &v["message"] {
                serde_json::Value::String(m) => m.clone(),
                serde_json::Value::Null => String::new(),
                other => other.to_string(),
            }
            .chars()
            .take(300)
            .collect(),
        };
        let attempts = self.config.attempts.max(1);
        for attempt in 1..=attempts {
            let mut pause = backoff;
            match self.send_once(method, &url, body) {
                Ok((status, v, _)) if status < 300 => return Ok(v),
                // Throttled or timed out on the server side: worth
                // retrying here, after what the registry asks for.
                Ok((status @ (408 | 429), v, retry_after)) => {
                    if attempt == attempts {
                        return Err(rejected(status, &v));
                    }
                    last = format!("HTTP {status}");
                    if let Some(ra) = retry_after {
                        pause = ra.min(Duration::from_secs(5));
                    }
                }
                // Any other refusal (401, 403, 404, …) is answered at once;
                // the caller decides what it means.
                Ok((status, v, _)) if status < 500 => return Err(rejected(status, &v)),
                Ok((status, v, _)) => last = format!("HTTP {status}: {v}"),
                Err(e) => last = e,
            }
            if attempt < attempts {
                tracing::debug!(url = %self.config.url, attempt, "schema registry request failed, retrying: {last}");
                std::thread::sleep(pause);
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
        Err(RegistryError::Unreachable {
            url: self.config.url.clone(),
            attempts,
            message: last,
        })
    }

    /// One request: status, JSON body and the `Retry-After` the server asked for.
    fn send_once(
        &self,
        method: &str,
        url: &str,
        body: Option<&str>,
    ) -> Result<(u16, serde_json::Value, Option<Duration>), String> {
        self.requests
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let auth = self.basic_auth();
        let result = match body {
            Some(b) => {
                let mut req = self
                    .agent
                    .post(url)
                    .header("Content-Type", CONTENT_TYPE)
                    .header("Accept", CONTENT_TYPE);
                if let Some(a) = &auth {
                    req = req.header("Authorization", a);
                }
                debug_assert_eq!(method, "POST");
                req.send(b)
            }
            None => {
                let mut req = self.agent.get(url).header("Accept", CONTENT_TYPE);
                if let Some(a) = &auth {
                    req = req.header("Authorization", a);
                }
                req.call()
            }
        };
        let mut resp = result.map_err(|e| e.to_string())?;
        let status = resp.status().as_u16();
        let retry_after = resp
            .headers()
            .get("Retry-After")
            .and_then(|h| h.to_str().ok())
            .and_then(|s| s.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let text = resp
            .body_mut()
            .read_to_string()
            .map_err(|e| e.to_string())?;
        let v = serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text));
        Ok((status, v, retry_after))
    }

    fn basic_auth(&self) -> Option<String> {
        use base64::Engine;
        let user = self.config.username.as_ref()?;
        let pass = self.config.password.as_ref().map_or("", |p| p.expose());
        let token = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"));
        Some(format!("Basic {token}"))
    }
}

/// Subject name of a topic's values (Confluent's TopicNameStrategy).
pub fn value_subject(topic: &str) -> String {
    format!("{topic}-value")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(url: &str) -> RegistryConfig {
        let mut c = RegistryConfig::new(url);
        c.username = Some("ops".into());
        c.password = Some(Secret::new("pw"));
        c
    }

    #[test]
    fn credentials_over_plain_http_are_refused_unless_allowed() {
        let err = config("http://registry:8081").validate().unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("plain HTTP"), "{msg}");
        assert!(
            msg.contains("--schema-registry-allow-insecure-auth"),
            "{msg}"
        );
        assert!(!msg.contains("pw"), "{msg}");
        let mut allowed = config("http://registry:8081");
        allowed.allow_insecure_auth = true;
        allowed.validate().unwrap();
        // Without credentials plain HTTP is fine; https with them too.
        RegistryConfig::new("http://registry:8081")
            .validate()
            .unwrap();
        config("https://registry:8081").validate().unwrap();
        config("HTTPS://registry:8081").validate().unwrap();
        // A refused client never sends anything.
        let c = RegistryClient::new(config("http://127.0.0.1:1"));
        assert!(matches!(c.schema_by_id(1), Err(RegistryError::Config(_))));
        assert_eq!(c.requests_sent(), 0);
    }

    #[test]
    fn other_schemes_and_bad_ca_files_are_refused() {
        let err = RegistryConfig::new("ftp://x").validate().unwrap_err();
        assert!(err.to_string().contains("http:// or https://"), "{err}");
        let mut c = RegistryConfig::new("http://x");
        c.ca_file = Some("/nonexistent/ca.pem".into());
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .contains("plain http://")
        );
        let mut c = RegistryConfig::new("https://x");
        c.ca_file = Some("/nonexistent/ca.pem".into());
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .contains("reading the CA file")
        );
        let dir = std::env::temp_dir().join(format!("tickflow-ca-{}", std::process::id()));
        std::fs::write(&dir, "not a certificate\n").unwrap();
        c.ca_file = Some(dir.clone());
        let err = c.validate().unwrap_err().to_string();
        std::fs::remove_file(&dir).ok();
        assert!(err.contains("no PEM certificate"), "{err}");
    }

    #[test]
    fn only_unknown_ids_and_invalid_schemas_are_about_the_data() {
        let rejected = |status| RegistryError::Rejected {
            url: "u".into(),
            what: "w".into(),
            status,
            code: i64::from(status),
            message: String::new(),
        };
        for s in [400, 401, 403, 404, 408, 429, 500] {
            assert!(!rejected(s).is_data_error(), "{s}");
        }
        for s in [401, 403, 408, 429, 500, 503] {
            assert!(rejected(s).is_transient(), "{s}");
        }
        assert!(!rejected(409).is_transient());
        assert!(RegistryError::UnknownId(1).is_data_error());
        assert!(rejected(401).to_string().contains("user and password"));
    }
}
