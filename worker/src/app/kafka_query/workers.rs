//! A Kafka query on several workers: the checks that make splitting it by
//! source partition correct, and the query's state topic as the run
//! loop's partition store (`crate::runner::shared`).
//!
//! Splitting by partition is correct only when each partition holds whole
//! keys of the query: every source table's Kafka key must be the column the
//! query splits it by (the producer keys records by the table's key
//! columns), and every source topic must have the same number of partitions
//! (so that partition `p` of each holds the same keys). Anything else is
//! refused with the reason, before a record is read.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::bail;
use rdkafka::TopicPartitionList;
use rdkafka::consumer::{BaseConsumer, Consumer};

use crate::checkpoint::partitioned::{self, PartitionState};
use crate::engine::Pipeline;
use crate::kafka::state::{StateTopic, StateTopicError};
use crate::kafka::{ClientErrors, KafkaConfig};
use crate::runner::{ConnectorError, PartitionStore, WorkerShare};
use crate::source::kafka::TopicBinding;

/// How long a start waits for a dead worker's open transaction on the
/// state topic to end before it fails (and is retried).
const OPEN_TRANSACTION_WAIT: Duration = Duration::from_secs(150);

/// The number of partitions every source topic has, after checking that
/// the query can run on `share.workers` workers split by them.
pub(super) fn source_partitions(
    config: &KafkaConfig,
    pipeline: &Pipeline,
    bindings: &[TopicBinding],
    share: WorkerShare,
) -> anyhow::Result<usize> {
    let tables = bindings
        .iter()
        .map(|b| pipeline.source(&b.table).expect("bound from the pipeline"));
    if let Some(why) = pipeline.partitioning().refuses_split_by_partition(tables) {
        bail!(
            "this query cannot run on several workers or keep its state in Kafka: {why}. Run it \
             on one worker with --state-store volume"
        );
    }
    let counts = partition_counts(config, bindings)?;
    let mut distinct: Vec<usize> = counts.values().copied().collect();
    distinct.dedup();
    let [partitions] = distinct[..] else {
        bail!(
            "the source topics have different numbers of partitions ({}): a query on several \
             workers needs them co-partitioned (the same number, keyed alike)",
            counts
                .iter()
                .map(|(t, n)| format!("{t}: {n}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
    };
    if share.workers > partitions {
        bail!(
            "{} workers for {partitions} source partitions: each worker owns at least one \
             partition, so at most {partitions} workers can run this query",
            share.workers
        );
    }
    Ok(partitions)
}

fn partition_counts(
    config: &KafkaConfig,
    bindings: &[TopicBinding],
) -> anyhow::Result<BTreeMap<String, usize>> {
    let consumer: BaseConsumer<ClientErrors> = config
        .client_config()
        .create_with_context(ClientErrors::default())
        .map_err(|e| anyhow::anyhow!("creating a Kafka client: {e}"))?;
    let mut counts = BTreeMap::new();
    for b in bindings {
        let md = consumer
            .fetch_metadata(Some(&b.topic), Duration::from_secs(15))
            .map_err(|e| consumer.context().explain(&config.brokers, &e))?;
        let n = md
            .topics()
            .iter()
            .find(|t| t.name() == b.topic && t.error().is_none())
            .map_or(0, |t| t.partitions().len());
        if n == 0 {
            bail!("topic `{}` does not exist", b.topic);
        }
        counts.insert(b.topic.clone(), n);
    }
    Ok(counts)
}

/// The query's state topic, read on start.
pub(super) struct KafkaPartitionStore {
    pub topic: StateTopic,
    pub config: KafkaConfig,
    /// The consumer group the source offsets are committed to.
    pub group: String,
    pub source_topics: Vec<String>,
}

impl PartitionStore for KafkaPartitionStore {
    fn load(
        &mut self,
        partitions: &[usize],
    ) -> Result<BTreeMap<usize, PartitionState>, ConnectorError> {
        let latest = self
            .topic
            .read_latest(OPEN_TRANSACTION_WAIT)
            .map_err(|e| match e {
                StateTopicError::OpenTransaction { .. } => ConnectorError::transient(e),
                StateTopicError::Kafka { .. } => ConnectorError::transient(e),
            })?;
        let states =
            partitioned::decode_latest(&latest, partitions).map_err(ConnectorError::fatal)?;
        if states.is_empty() {
            self.refuse_if_read_before(partitions)?;
        }
        Ok(states)
    }
}

impl KafkaPartitionStore {
    /// No state, yet the group holds offsets for these partitions: the
    /// query ran before (with its state on a volume, or its state topic was
    /// deleted). Reading from --start-from again would write its output
    /// twice, so that takes --start-fresh.
    fn refuse_if_read_before(&self, partitions: &[usize]) -> Result<(), ConnectorError> {
        let consumer: BaseConsumer<ClientErrors> = self
            .config
            .client_config()
            .set("group.id", &self.group)
            .set("enable.auto.commit", "false")
            .create_with_context(ClientErrors::default())
            .map_err(|e| {
                ConnectorError::transient(anyhow::anyhow!("creating a Kafka consumer: {e}"))
            })?;
        let mut tpl = TopicPartitionList::new();
        for t in &self.source_topics {
            for &p in partitions {
                tpl.add_partition(t, p as i32);
            }
        }
        let committed = consumer
            .committed_offsets(tpl, Duration::from_secs(15))
            .map_err(|e| {
                ConnectorError::transient(consumer.context().explain(&self.config.brokers, &e))
            })?;
        let read: Vec<String> = committed
            .elements()
            .iter()
            .filter(|e| e.offset().to_raw().is_some_and(|o| o >= 0))
            .map(|e| format!("{}/{}", e.topic(), e.partition()))
            .collect();
        if read.is_empty() {
            return Ok(());
        }
        Err(ConnectorError::fatal(anyhow::anyhow!(
            "consumer group {} holds committed offsets for {} but state topic {} has no state for \
             them: this query ran before with its state elsewhere (on a checkpoint volume, with \
             one worker) or its state topic was deleted. Starting from --start-from would write \
             its output again; --start-fresh does that on purpose",
            self.group,
            read.join(", "),
            self.topic.topic()
        )))
    }
}
