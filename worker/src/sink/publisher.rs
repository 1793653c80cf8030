//! Non-transactional Kafka output for the market simulator: idempotent
//! producer, `acks=all`, one message per row keyed by symbol.

use std::collections::BTreeMap;
use std::time::Duration;

use arrow::array::RecordBatch;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::types::RDKafkaErrorCode;

use crate::codec::records::{KeyExtractor, RowEncoder};
use crate::kafka::{ClientErrors, KafkaConfig};

use super::kafka::ProducerTuning;

/// One destination topic and how its rows are encoded.
pub struct PublishTopic {
    pub topic: String,
    pub encoder: RowEncoder,
    pub keys: KeyExtractor,
}

pub struct KafkaPublisher {
    producer: BaseProducer<ClientErrors>,
    brokers: String,
    topics: Vec<PublishTopic>,
    /// Messages handed to the producer per topic.
    pub sent: BTreeMap<String, u64>,
    values: Vec<u8>,
    value_ends: Vec<usize>,
    keys: Vec<u8>,
    key_ends: Vec<usize>,
}

impl KafkaPublisher {
    pub fn open(
        config: &KafkaConfig,
        topics: Vec<PublishTopic>,
        tuning: &ProducerTuning,
    ) -> anyhow::Result<Self> {
        let producer: BaseProducer<ClientErrors> = config
            .client_config()
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("compression.type", &tuning.compression)
            .set("linger.ms", tuning.linger_ms.to_string())
            .set("batch.size", tuning.batch_bytes.to_string())
            .set("queue.buffering.max.messages", "1000000")
            .create_with_context(ClientErrors::default())
            .map_err(|e| anyhow::anyhow!("creating the Kafka producer: {e}"))?;
        Ok(Self {
            producer,
            brokers: config.brokers.clone(),
            topics,
            sent: BTreeMap::new(),
            values: Vec::new(),
            value_ends: Vec::new(),
            keys: Vec::new(),
            key_ends: Vec::new(),
        })
    }

    /// Sends every row of `batch` to topic `index`.
    pub fn write(&mut self, index: usize, batch: &RecordBatch) -> anyhow::Result<()> {
        if let Some(e) = self.failure() {
            anyhow::bail!("{e}");
        }
        self.values.clear();
        self.value_ends.clear();
        self.keys.clear();
        self.key_ends.clear();
        let t = &mut self.topics[index];
        t.encoder
            .encode(batch, &mut self.values, &mut self.value_ends)?;
        t.keys.keys(batch, &mut self.keys, &mut self.key_ends);
        let (mut vs, mut ks) = (0, 0);
        for (row, &ve) in self.value_ends.iter().enumerate() {
            let key = &self.keys[ks..self.key_ends.get(row).copied().unwrap_or(ks)];
            ks = self.key_ends.get(row).copied().unwrap_or(ks);
            let value = &self.values[vs..ve];
            vs = ve;
            loop {
                let mut record: BaseRecord<'_, [u8], [u8]> =
                    BaseRecord::to(&t.topic).payload(value);
                if !key.is_empty() {
                    record = record.key(key);
                }
                match self.producer.send(record) {
                    Ok(()) => break,
                    Err((e, _)) if e.rdkafka_error_code() == Some(RDKafkaErrorCode::QueueFull) => {
                        self.producer.poll(Duration::from_millis(20));
                    }
                    Err((e, _)) => anyhow::bail!("sending to {} at {}: {e}", t.topic, self.brokers),
                }
            }
        }
        self.producer.poll(Duration::ZERO);
        *self.sent.entry(t.topic.clone()).or_default() += self.value_ends.len() as u64;
        Ok(())
    }

    fn failure(&self) -> Option<String> {
        let ctx = self.producer.context();
        (ctx.delivery_failures() > 0).then(|| {
            format!(
                "{} messages could not be delivered to Kafka at {}: {}",
                ctx.delivery_failures(),
                self.brokers,
                ctx.last_error().unwrap_or_default()
            )
        })
    }

    /// Waits for every message to be acknowledged.
    pub fn close(self) -> anyhow::Result<BTreeMap<String, u64>> {
        self.producer
            .flush(Duration::from_secs(60))
            .map_err(|e| anyhow::anyhow!("flushing to Kafka at {}: {e}", self.brokers))?;
        if let Some(e) = self.failure() {
            anyhow::bail!("{e}");
        }
        Ok(self.sent)
    }
}
