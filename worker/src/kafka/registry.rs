//! Client of a Confluent-compatible schema registry: registers subjects and
//! looks schemas up by id, both cached. Transient failures (registry down,
//! 5xx) are retried with backoff and reported; answers such as "unknown id"
//! are returned at once.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use apache_avro::Schema;

use super::config::Secret;

const CONTENT_TYPE: &str = "application/vnd.schemaregistry.v1+json";

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("schema id {0} is not known to the schema registry")]
    UnknownId(u32),
    #[error("schema registry at {url} refused {what}: {message} (error code {code})")]
    Rejected {
        url: String,
        what: String,
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
}

impl RegistryError {
    /// Worth trying again later (the registry may come back).
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Unreachable { .. })
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
}

impl RegistryConfig {
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into().trim_end_matches('/').to_string(),
            username: None,
            password: None,
            attempts: 5,
            timeout: Duration::from_secs(5),
        }
    }
}

/// A cached registry client, cheap to clone and share.
#[derive(Clone)]
pub struct RegistryClient {
    config: RegistryConfig,
    agent: ureq::Agent,
    by_id: Arc<Mutex<HashMap<u32, Arc<Schema>>>>,
    registered: Arc<Mutex<HashMap<(String, String), u32>>>,
}

impl std::fmt::Debug for RegistryClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryClient")
            .field("url", &self.config.url)
            .finish_non_exhaustive()
    }
}

impl RegistryClient {
    pub fn new(config: RegistryConfig) -> Self {
        let agent = ureq::Agent::config_builder()
            .timeout_global(Some(config.timeout))
            .http_status_as_error(false)
            .build()
            .new_agent();
        Self {
            config,
            agent,
            by_id: Arc::default(),
            registered: Arc::default(),
        }
    }

    pub fn url(&self) -> &str {
        &self.config.url
    }

    /// Registers `schema` under `subject` (idempotent) and returns its id.
    pub fn register(&self, subject: &str, schema: &Schema) -> Result<u32, RegistryError> {
        // The full schema, not the Parsing Canonical Form: that form drops
        // logical types (`timestamp-millis`), which readers need.
        let text = serde_json::to_string(schema).map_err(|e| RegistryError::Rejected {
            url: self.config.url.clone(),
            what: format!("subject {subject}"),
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
        let v = match self.request("GET", &format!("/schemas/ids/{id}"), None, "a schema id") {
            Err(RegistryError::Rejected { code: 40403, .. }) => {
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

    fn request(
        &self,
        method: &str,
        path: &str,
        body: Option<&str>,
        what: &str,
    ) -> Result<serde_json::Value, RegistryError> {
        let url = format!("{}{}", self.config.url, path);
        let mut backoff = Duration::from_millis(100);
        let mut last = String::new();
        for attempt in 1..=self.config.attempts.max(1) {
            match self.send_once(method, &url, body) {
                Ok((status, v)) if status < 300 => return Ok(v),
                Ok((status, v)) if status < 500 => {
                    return Err(RegistryError::Rejected {
                        url: self.config.url.clone(),
                        what: what.to_string(),
                        code: v["error_code"].as_i64().unwrap_or(status as i64),
                        message: v["message"].as_str().unwrap_or("").to_string(),
                    });
                }
                Ok((status, v)) => last = format!("HTTP {status}: {v}"),
                Err(e) => last = e,
            }
            if attempt < self.config.attempts {
                tracing::debug!(url = %self.config.url, attempt, "schema registry request failed, retrying: {last}");
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
        Err(RegistryError::Unreachable {
            url: self.config.url.clone(),
            attempts: self.config.attempts,
            message: last,
        })
    }

    fn send_once(
        &self,
        method: &str,
        url: &str,
        body: Option<&str>,
    ) -> Result<(u16, serde_json::Value), String> {
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
        let text = resp
            .body_mut()
            .read_to_string()
            .map_err(|e| e.to_string())?;
        let v = serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text));
        Ok((status, v))
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
