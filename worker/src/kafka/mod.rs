//! Kafka plumbing shared by the Kafka source, the Kafka sink and the producer:
//! connection and security settings, topic administration and the schema
//! registry client. The engine knows nothing of this module.

pub mod admin;
pub mod config;
pub mod registry;

pub use config::{ClientErrors, KafkaConfig, SaslMechanism, Secret, SecurityProtocol};
pub use registry::{RegistryClient, RegistryConfig, RegistryError};
