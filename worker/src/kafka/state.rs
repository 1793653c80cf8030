//! The state topic of a query on several workers
//! (`tickflow-<query>-state`): one compacted partition holding the latest
//! state of every source partition (`crate::checkpoint::partitioned`),
//! written by the Kafka sink inside each epoch's transaction and read here
//! when a worker starts.
//!
//! A worker reads the topic only once no transaction on it is open: the
//! last stable offset (what `read_committed` readers may see) must equal
//! the log end. Otherwise a state committed after a dead worker's open
//! transaction would stay invisible, and restoring the older one would
//! write that output again. The worker's own open transaction was already
//! aborted by `init_transactions` when its producer started.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};

use super::{ClientErrors, KafkaConfig};

const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a just-created topic may stay invisible in metadata.
const CREATION_SETTLES: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum StateTopicError {
    #[error("state topic {topic}: {message}")]
    Kafka { topic: String, message: String },
    #[error(
        "state topic {topic} has a transaction open since offset {stable} (log end {end}) after \
         {waited:?}: a worker of this query died in the middle of an epoch and has not been \
         restarted. Its transaction is aborted when it restarts, or by the broker after the \
         producer's transaction.timeout.ms; until then the partitions' newest state cannot be read"
    )]
    OpenTransaction {
        topic: String,
        stable: i64,
        end: i64,
        waited: Duration,
    },
}

/// A query's state topic.
#[derive(Clone, Debug)]
pub struct StateTopic {
    config: KafkaConfig,
    topic: String,
}

impl StateTopic {
    pub fn new(config: KafkaConfig, query: &str) -> Self {
        Self {
            config,
            topic: format!("tickflow-{query}-state"),
        }
    }

    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// Creates the topic (one compacted partition) if it is missing, and
    /// refuses one that has several partitions (states would go to
    /// partitions that are never read).
    pub fn ensure(&self, replication: i32) -> anyhow::Result<()> {
        let topics = [self.topic.clone()];
        super::admin::ensure_topics_compacted(&self.config, &topics, &topics, 1, replication)?;
        let client = self
            .consumer("read_uncommitted")
            .map_err(anyhow::Error::msg)?;
        // A topic another worker of this query has just created may show no
        // partitions (or an error) in metadata until every broker knows it.
        let deadline = Instant::now() + CREATION_SETTLES;
        let partitions = loop {
            let partitions = self.partition_count(&client)?;
            if partitions != 0 || Instant::now() >= deadline {
                break partitions;
            }
            std::thread::sleep(Duration::from_millis(200));
        };
        if partitions != 1 {
            anyhow::bail!(
                "state topic {} has {partitions} partitions; it must have exactly one (delete it \
                 and let the worker create it, compacted, with one partition)",
                self.topic
            );
        }
        Ok(())
    }

    /// The topic's partitions as metadata shows them now (0: not visible yet).
    fn partition_count(&self, client: &BaseConsumer<ClientErrors>) -> anyhow::Result<usize> {
        let md = client
            .fetch_metadata(Some(&self.topic), CALL_TIMEOUT)
            .map_err(|e| client.context().explain(&self.config.brokers, &e))?;
        Ok(md
            .topics()
            .iter()
            .find(|t| t.name() == self.topic && t.error().is_none())
            .map_or(0, |t| t.partitions().len()))
    }

    /// The latest value of every key (`None`: a tombstone), once no
    /// transaction on the topic is open, waiting at most `wait` for that.
    pub fn read_latest(
        &self,
        wait: Duration,
    ) -> Result<BTreeMap<String, Option<Vec<u8>>>, StateTopicError> {
        let kafka = |message: String| StateTopicError::Kafka {
            topic: self.topic.clone(),
            message,
        };
        let committed = self.consumer("read_committed").map_err(kafka)?;
        let uncommitted = self.consumer("read_uncommitted").map_err(kafka)?;
        let started = Instant::now();
        // ListOffsets answers with the isolation level of the asking client:
        // the last stable offset for a read_committed one, the log end else.
        // Only transactions open now matter (a dead worker's); those that
        // live workers open later write partitions this worker does not own.
        let (_, end) = watermarks(&uncommitted, &self.topic).map_err(kafka)?;
        let (low, stable) = loop {
            let (low, stable) = watermarks(&committed, &self.topic).map_err(kafka)?;
            if stable >= end {
                break (low, stable);
            }
            if started.elapsed() >= wait {
                return Err(StateTopicError::OpenTransaction {
                    topic: self.topic.clone(),
                    stable,
                    end,
                    waited: started.elapsed(),
                });
            }
            tracing::warn!(
                topic = %self.topic,
                stable,
                end,
                "waiting for an open transaction on the state topic to end"
            );
            std::thread::sleep(Duration::from_millis(500));
        };
        let mut latest = BTreeMap::new();
        if stable <= low {
            return Ok(latest);
        }
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(&self.topic, 0, Offset::Beginning)
            .map_err(|e| kafka(e.to_string()))?;
        committed
            .assign(&tpl)
            .map_err(|e| kafka(format!("assigning: {e}")))?;
        let deadline = Instant::now() + wait.max(Duration::from_secs(30));
        loop {
            match committed.poll(Duration::from_millis(200)) {
                Some(Ok(msg)) => {
                    if let Some(key) = msg.key() {
                        let key = String::from_utf8_lossy(key).into_owned();
                        latest.insert(key, msg.payload().map(<[u8]>::to_vec));
                    }
                    if msg.offset() + 1 >= stable {
                        return Ok(latest);
                    }
                }
                Some(Err(KafkaError::PartitionEOF(_))) => return Ok(latest),
                Some(Err(e)) => {
                    return Err(kafka(format!(
                        "reading: {}",
                        committed.context().explain(&self.config.brokers, &e)
                    )));
                }
                None => {}
            }
            if Instant::now() >= deadline {
                return Err(kafka(format!(
                    "reading up to offset {stable} took longer than {:?}",
                    deadline - started
                )));
            }
        }
    }

    fn consumer(&self, isolation: &str) -> Result<BaseConsumer<ClientErrors>, String> {
        self.config
            .client_config()
            .set("group.id", format!("{}-reader", self.topic))
            .set("enable.auto.commit", "false")
            .set("enable.partition.eof", "true")
            .set("isolation.level", isolation)
            .create_with_context(ClientErrors::default())
            .map_err(|e| format!("creating a consumer: {e}"))
    }
}

fn watermarks(consumer: &BaseConsumer<ClientErrors>, topic: &str) -> Result<(i64, i64), String> {
    consumer
        .fetch_watermarks(topic, 0, CALL_TIMEOUT)
        .map_err(|e| format!("reading its offsets: {e}"))
}
