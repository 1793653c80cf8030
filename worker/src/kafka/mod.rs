//! Kafka plumbing shared by the Kafka source, the Kafka sink and the producer:
//! connection and security settings, topic administration, the schema
//! registry client and the offsets both the source and the sink speak. The engine knows nothing of this module.

pub mod admin;
pub mod config;
pub mod offsets;
pub mod registry;
pub mod state;

pub use config::{ClientErrors, KafkaConfig, SaslMechanism, Secret, SecurityProtocol};
pub use offsets::{Offsets, TopicPartition};
pub use registry::{RegistryClient, RegistryConfig, RegistryError};
