//! Topic administration: create the topics a worker writes if they are
//! missing, and read the limits of one it writes.

use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, ResourceSpecifier, TopicReplication};
use rdkafka::types::RDKafkaErrorCode;

use super::config::{ClientErrors, KafkaConfig};

/// Creates each topic that does not exist yet with `partitions` partitions.
/// Existing topics are left as they are.
pub fn ensure_topics(
    config: &KafkaConfig,
    topics: &[String],
    partitions: i32,
    replication: i32,
) -> anyhow::Result<()> {
    ensure_topics_compacted(config, topics, &[], partitions, replication)
}

/// [`ensure_topics`], creating those of `compacted` with
/// `cleanup.policy=compact`: the topic of an updating stream, whose latest
/// record per key (or its tombstone) is the table. An existing topic is
/// left as it is.
pub fn ensure_topics_compacted(
    config: &KafkaConfig,
    topics: &[String],
    compacted: &[String],
    partitions: i32,
    replication: i32,
) -> anyhow::Result<()> {
    if topics.is_empty() {
        return Ok(());
    }
    let admin: AdminClient<ClientErrors> = config
        .client_config()
        .create_with_context(ClientErrors::default())
        .map_err(|e| anyhow::anyhow!("creating the Kafka admin client: {e}"))?;
    let new: Vec<NewTopic> = topics
        .iter()
        .map(|t| {
            let topic = NewTopic::new(t, partitions, TopicReplication::Fixed(replication));
            if compacted.contains(t) {
                topic.set("cleanup.policy", "compact")
            } else {
                topic
            }
        })
        .collect();
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    let results = futures::executor::block_on(admin.create_topics(&new, &opts))
        .map_err(|e| admin.inner().context().explain(&config.brokers, &e))?;
    for r in results {
        match r {
            Ok(t) => tracing::info!(topic = %t, partitions, "created topic"),
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((t, e)) => anyhow::bail!("creating topic {t}: {e}"),
        }
    }
    Ok(())
}

/// The largest record batch `topic` accepts (its effective
/// `max.message.bytes`, the broker's default unless the topic overrides it).
pub fn max_message_bytes(config: &KafkaConfig, topic: &str) -> anyhow::Result<usize> {
    let admin: AdminClient<ClientErrors> = config
        .client_config()
        .create_with_context(ClientErrors::default())
        .map_err(|e| anyhow::anyhow!("creating the Kafka admin client: {e}"))?;
    let opts = AdminOptions::new().request_timeout(Some(Duration::from_secs(15)));
    let results = futures::executor::block_on(
        admin.describe_configs(&[ResourceSpecifier::Topic(topic)], &opts),
    )
    .map_err(|e| admin.inner().context().explain(&config.brokers, &e))?;
    let resource = results
        .into_iter()
        .next()
        .ok_or_else(|| anyhow::anyhow!("describing topic {topic}: no answer"))?
        .map_err(|e| anyhow::anyhow!("describing topic {topic}: {e}"))?;
    resource
        .get("max.message.bytes")
        .and_then(|entry| entry.value.as_deref())
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("topic {topic} has no max.message.bytes"))
}
