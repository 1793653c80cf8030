//! Kafka source: reads the topics bound to source tables and decodes their
//! values straight into Arrow batches, per partition.
//!
//! All partitions are assigned to this worker (one worker per query) and
//! positioned from the checkpoint; offsets are committed to the consumer
//! group only inside the sink's transaction, so the group's lag is visible
//! with the usual Kafka tools. Avro values are decoded by schema id with a
//! cached registry client; a record that cannot be decoded becomes a
//! [`BadMessage`] for the dead-letter topic. When the registry is down the
//! partition is rewound to the undecoded record and retried later: nothing is
//! skipped.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use apache_avro::Schema as AvroSchema;
use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};

use crate::codec::json::JsonLinesDecoder;
use crate::codec::records::ValueFormat;
use crate::codec::{AvroDecoder, DecodeError, confluent};
use crate::kafka::{ClientErrors, KafkaConfig, RegistryClient, RegistryError};

/// One source table read from one topic.
#[derive(Clone, Debug)]
pub struct TopicBinding {
    pub table: String,
    pub topic: String,
    pub format: ValueFormat,
    /// Reader schemas: what the engine expects.
    pub arrow_schema: SchemaRef,
    pub avro_schema: AvroSchema,
}

/// Where to start a partition that has no checkpointed position.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum StartFrom {
    #[default]
    Earliest,
    Latest,
}

/// A topic-partition.
pub type TopicPartition = (String, i32);

/// Decoded rows of one partition.
pub struct PartitionBatch {
    pub table: String,
    pub partition: i32,
    pub rows: RecordBatch,
}

/// A record that could not be decoded, with what the dead-letter topic needs.
#[derive(Clone, Debug)]
pub struct BadMessage {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub timestamp_ms: Option<i64>,
    pub key: Option<Vec<u8>>,
    pub value: Vec<u8>,
    /// Stable short code (`bad-magic`, `unknown-schema-id`, `truncated`, …).
    pub reason: &'static str,
    pub error: String,
}

/// What one poll returned.
#[derive(Default)]
pub struct Polled {
    pub batches: Vec<PartitionBatch>,
    pub bad: Vec<BadMessage>,
    pub records: usize,
    /// Bytes of message values read.
    pub bytes: usize,
    /// The registry could not be reached; the affected partitions were
    /// rewound and will be read again.
    pub registry_unavailable: Option<String>,
    /// The broker connection dropped (librdkafka reconnects by itself).
    pub broker_unavailable: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum KafkaSourceError {
    #[error("topic `{0}` does not exist")]
    MissingTopic(String),
    #[error("Kafka consumer: {0}")]
    Kafka(String),
}

/// Reads the bound topics.
pub struct KafkaSource {
    consumer: BaseConsumer<ClientErrors>,
    brokers: String,
    bindings: Vec<TopicBinding>,
    registry: Option<RegistryClient>,
    /// Next offset to read per topic-partition (the checkpointed position).
    positions: BTreeMap<TopicPartition, i64>,
    /// Offset at which a bounded run stops, per topic-partition.
    end_offsets: Option<BTreeMap<TopicPartition, i64>>,
    decoders: Vec<HashMap<i32, PartitionDecoders>>,
    /// Partition count per binding.
    partition_counts: Vec<usize>,
    /// Messages and value bytes read per topic (this process).
    records_read: BTreeMap<String, u64>,
    bytes_read: BTreeMap<String, u64>,
}

impl KafkaSource {
    /// Connects, assigns every partition of the bound topics and seeks them to
    /// `positions` (or `start` where a partition has none).
    pub fn open(
        config: &KafkaConfig,
        group_id: &str,
        bindings: Vec<TopicBinding>,
        registry: Option<RegistryClient>,
        positions: &BTreeMap<TopicPartition, i64>,
        start: StartFrom,
        bounded: bool,
    ) -> anyhow::Result<Self> {
        let consumer: BaseConsumer<ClientErrors> = config
            .client_config()
            .set("group.id", group_id)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            // Only committed input: the upstream may be transactional too.
            .set("isolation.level", "read_committed")
            .set(
                "auto.offset.reset",
                match start {
                    StartFrom::Earliest => "earliest",
                    StartFrom::Latest => "latest",
                },
            )
            .set("fetch.max.bytes", "52428800")
            // librdkafka pauses fetching for 1 s by default once a partition's
            // local queue is full; at full speed that stalls the pipeline.
            .set("fetch.queue.backoff.ms", "5")
            .set("queued.max.messages.kbytes", "262144")
            .create_with_context(ClientErrors::default())
            .map_err(|e| anyhow::anyhow!("creating the Kafka consumer: {e}"))?;
        let timeout = Duration::from_secs(15);
        let mut assignment = TopicPartitionList::new();
        let mut all_positions = BTreeMap::new();
        let mut partition_counts = Vec::new();
        for b in &bindings {
            if b.format == ValueFormat::Avro && registry.is_none() {
                anyhow::bail!(
                    "topic `{}` is Avro but no schema registry was given (--schema-registry or SCHEMA_REGISTRY_URL)",
                    b.topic
                );
            }
            let md = consumer
                .fetch_metadata(Some(&b.topic), timeout)
                .map_err(|e| consumer.context().explain(&config.brokers, &e))?;
            let t = md
                .topics()
                .iter()
                .find(|t| t.name() == b.topic)
                .filter(|t| t.error().is_none() && !t.partitions().is_empty())
                .ok_or_else(|| KafkaSourceError::MissingTopic(b.topic.clone()))?;
            partition_counts.push(t.partitions().len());
            for p in t.partitions() {
                let tp = (b.topic.clone(), p.id());
                let offset = match positions.get(&tp) {
                    Some(&o) => Offset::Offset(o),
                    None => match start {
                        StartFrom::Earliest => Offset::Beginning,
                        StartFrom::Latest => Offset::End,
                    },
                };
                assignment
                    .add_partition_offset(&b.topic, p.id(), offset)
                    .map_err(|e| anyhow::anyhow!("{e}"))?;
                // Resolve a concrete position now so every checkpoint names
                // one for every partition.
                let concrete = match offset {
                    Offset::Offset(o) => o,
                    _ => {
                        let (low, high) = consumer
                            .fetch_watermarks(&b.topic, p.id(), timeout)
                            .map_err(|e| consumer.context().explain(&config.brokers, &e))?;
                        if start == StartFrom::Earliest {
                            low
                        } else {
                            high
                        }
                    }
                };
                all_positions.insert(tp, concrete);
            }
        }
        consumer
            .assign(&assignment)
            .map_err(|e| consumer.context().explain(&config.brokers, &e))?;
        let end_offsets = if bounded {
            let mut ends = BTreeMap::new();
            for (topic, partition) in all_positions.keys() {
                let (_, high) = consumer
                    .fetch_watermarks(topic, *partition, timeout)
                    .map_err(|e| consumer.context().explain(&config.brokers, &e))?;
                ends.insert((topic.clone(), *partition), high);
            }
            Some(ends)
        } else {
            None
        };
        let decoders = bindings.iter().map(|_| HashMap::new()).collect();
        Ok(Self {
            consumer,
            brokers: config.brokers.clone(),
            bindings,
            registry,
            positions: all_positions,
            end_offsets,
            decoders,
            partition_counts,
            records_read: BTreeMap::new(),
            bytes_read: BTreeMap::new(),
        })
    }

    pub fn bindings(&self) -> &[TopicBinding] {
        &self.bindings
    }

    /// Partition count of each bound table.
    pub fn partition_counts(&self) -> impl Iterator<Item = (&str, usize)> {
        self.bindings
            .iter()
            .zip(&self.partition_counts)
            .map(|(b, &n)| (b.table.as_str(), n))
    }

    /// Messages read per topic by this process.
    pub fn records_read(&self) -> &BTreeMap<String, u64> {
        &self.records_read
    }

    /// Value bytes read per topic by this process.
    pub fn bytes_read(&self) -> &BTreeMap<String, u64> {
        &self.bytes_read
    }

    pub fn positions(&self) -> &BTreeMap<TopicPartition, i64> {
        &self.positions
    }

    /// The consumer, for the sink's transactional offset commit.
    pub fn consumer(&self) -> &BaseConsumer<ClientErrors> {
        &self.consumer
    }

    /// In a bounded run: partitions that reached their end offset.
    pub fn finished_partitions(&self) -> Vec<(String, i32)> {
        let Some(ends) = &self.end_offsets else {
            return vec![];
        };
        ends.iter()
            .filter(|(tp, end)| self.positions.get(*tp).is_some_and(|p| p >= *end))
            .map(|((t, p), _)| {
                let table = self
                    .bindings
                    .iter()
                    .find(|b| &b.topic == t)
                    .map(|b| b.table.clone())
                    .unwrap_or_default();
                (table, *p)
            })
            .collect()
    }

    /// Bounded run and every partition reached its end.
    pub fn is_done(&self) -> bool {
        self.end_offsets.as_ref().is_some_and(|ends| {
            ends.iter()
                .all(|(tp, end)| self.positions.get(tp).is_some_and(|p| p >= end))
        })
    }

    /// Consumer lag per partition: high watermark minus position. Asks the
    /// broker, so call it every few seconds, not per batch.
    pub fn lag(&self) -> BTreeMap<TopicPartition, i64> {
        self.positions
            .iter()
            .filter_map(|((t, p), pos)| {
                let (_, high) = self
                    .consumer
                    .fetch_watermarks(t, *p, Duration::from_secs(1))
                    .ok()?;
                Some(((t.clone(), *p), (high - pos).max(0)))
            })
            .collect()
    }

    /// Reads up to `max_records` (or until `max_wait` passes) and decodes them.
    pub fn poll(
        &mut self,
        max_records: usize,
        max_wait: Duration,
    ) -> Result<Polled, KafkaSourceError> {
        let deadline = Instant::now() + max_wait;
        let mut polled = Polled::default();
        // Partitions rewound this round because the registry was unreachable.
        let mut blocked: Vec<TopicPartition> = Vec::new();
        while polled.records < max_records {
            let now = Instant::now();
            let wait = if polled.records == 0 {
                deadline.saturating_duration_since(now)
            } else {
                Duration::ZERO
            };
            let Some(msg) = self.consumer.poll(wait) else {
                break;
            };
            let msg = match msg {
                Ok(m) => m,
                Err(KafkaError::PartitionEOF(_)) => continue,
                Err(e) if is_transient(&e) => {
                    // librdkafka reconnects by itself; report and keep going.
                    polled.broker_unavailable = Some(e.to_string());
                    break;
                }
                Err(e) => {
                    let explained = self.consumer.context().explain(&self.brokers, &e);
                    return Err(KafkaSourceError::Kafka(explained.to_string()));
                }
            };
            let topic = msg.topic();
            let partition = msg.partition();
            let offset = msg.offset();
            if blocked.iter().any(|(t, p)| t == topic && *p == partition) {
                continue;
            }
            let tp = (topic.to_string(), partition);
            if let Some(end) = self.end_offsets.as_ref().and_then(|e| e.get(&tp))
                && offset >= *end
            {
                continue; // past the end of a bounded run
            }
            let Some(bi) = self.bindings.iter().position(|b| b.topic == topic) else {
                continue;
            };
            let value = msg.payload().unwrap_or_default();
            polled.records += 1;
            polled.bytes += value.len();
            let meta = PendingMeta {
                offset,
                timestamp_ms: msg.timestamp().to_millis(),
                key: msg.key().map(<[u8]>::to_vec),
            };
            let state = self.decoders[bi].entry(partition).or_default();
            match decode_value(
                &self.bindings[bi],
                state,
                self.registry.as_ref(),
                &meta,
                value,
            ) {
                Ok(()) => {}
                Err(DecodeFailure::Bad(reason, error)) => {
                    polled
                        .bad
                        .push(meta.into_bad(topic, partition, value.to_vec(), reason, error));
                }
                Err(DecodeFailure::RegistryDown(e)) => {
                    polled.records -= 1;
                    polled.bytes -= value.len();
                    self.consumer
                        .seek(
                            topic,
                            partition,
                            Offset::Offset(offset),
                            Duration::from_secs(5),
                        )
                        .map_err(|e| {
                            KafkaSourceError::Kafka(format!("rewinding {topic}/{partition}: {e}"))
                        })?;
                    polled.registry_unavailable = Some(e);
                    blocked.push(tp);
                    continue;
                }
            }
            *self.records_read.entry(tp.0.clone()).or_default() += 1;
            *self.bytes_read.entry(tp.0.clone()).or_default() += value.len() as u64;
            self.positions.insert(tp, offset + 1);
        }
        self.finish_batches(&mut polled);
        Ok(polled)
    }

    /// Turns what the decoders hold into batches (and JSON errors into bad messages).
    fn finish_batches(&mut self, polled: &mut Polled) {
        for (bi, parts) in self.decoders.iter_mut().enumerate() {
            let binding = &self.bindings[bi];
            for (&partition, state) in parts.iter_mut() {
                for dec in state.avro.values_mut().filter_map(|r| r.as_mut().ok()) {
                    if !dec.is_empty() {
                        polled.batches.push(PartitionBatch {
                            table: binding.table.clone(),
                            partition,
                            rows: dec.finish(),
                        });
                    }
                }
                if state.json.is_empty() {
                    continue;
                }
                let json = state.json_decoder.get_or_insert_with(|| {
                    JsonLinesDecoder::new(binding.arrow_schema.clone())
                        .expect("source schemas are JSON-decodable")
                });
                let lines: Vec<(u64, &str)> = state
                    .json
                    .iter()
                    .map(|(m, text)| (m.offset as u64, text.as_str()))
                    .collect();
                let (rows, bad_lines) = json.decode(&lines);
                for b in bad_lines {
                    let meta = state
                        .json
                        .iter()
                        .find(|(m, _)| m.offset as u64 == b.line)
                        .map(|(m, _)| m.clone())
                        .expect("bad line comes from the input");
                    polled.bad.push(meta.into_bad(
                        &binding.topic,
                        partition,
                        b.raw.into_bytes(),
                        "invalid-json",
                        b.reason,
                    ));
                }
                state.json.clear();
                if let Some(rows) = rows {
                    polled.batches.push(PartitionBatch {
                        table: binding.table.clone(),
                        partition,
                        rows,
                    });
                }
            }
        }
    }
}

/// Decodes one value into its partition's decoders.
fn decode_value(
    binding: &TopicBinding,
    state: &mut PartitionDecoders,
    registry: Option<&RegistryClient>,
    msg: &PendingMeta,
    value: &[u8],
) -> Result<(), DecodeFailure> {
    match binding.format {
        ValueFormat::Json => {
            let text = std::str::from_utf8(value)
                .map_err(|e| DecodeFailure::Bad("invalid-utf8", e.to_string()))?;
            state.json.push((msg.clone(), text.to_string()));
            Ok(())
        }
        ValueFormat::Avro => {
            let (id, body) = confluent::unframe(value).map_err(bad)?;
            let decoder = match state.avro.entry(id) {
                std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
                std::collections::hash_map::Entry::Vacant(slot) => {
                    let registry = registry.expect("checked at open");
                    let decoder = match registry.schema_by_id(id) {
                        Ok(writer) => decoder_for(&writer, &binding.avro_schema),
                        Err(RegistryError::UnknownId(_)) => {
                            return Err(bad(DecodeError::UnknownSchemaId(id)));
                        }
                        Err(e) if e.is_transient() => {
                            return Err(DecodeFailure::RegistryDown(e.to_string()));
                        }
                        Err(e) => Err(e.to_string()),
                    };
                    slot.insert(decoder)
                }
            };
            match decoder {
                Ok(dec) => dec.decode(body).map_err(bad),
                Err(e) => Err(DecodeFailure::Bad("incompatible-schema", e.clone())),
            }
        }
    }
}

/// Connection-level errors librdkafka recovers from on its own.
fn is_transient(e: &KafkaError) -> bool {
    use rdkafka::types::RDKafkaErrorCode as C;
    matches!(
        e.rdkafka_error_code(),
        Some(
            C::BrokerTransportFailure
                | C::AllBrokersDown
                | C::OperationTimedOut
                | C::RequestTimedOut
                | C::NetworkException
                | C::LeaderNotAvailable
                | C::NotLeaderForPartition
                | C::Resolve
                | C::WaitingForCoordinator
        )
    )
}

/// Offset, key and timestamp of a message, kept until its decode result is known.
#[derive(Clone, Debug)]
struct PendingMeta {
    offset: i64,
    timestamp_ms: Option<i64>,
    key: Option<Vec<u8>>,
}

impl PendingMeta {
    fn into_bad(
        self,
        topic: &str,
        partition: i32,
        value: Vec<u8>,
        reason: &'static str,
        error: String,
    ) -> BadMessage {
        BadMessage {
            topic: topic.to_string(),
            partition,
            offset: self.offset,
            timestamp_ms: self.timestamp_ms,
            key: self.key,
            value,
            reason,
            error,
        }
    }
}

#[derive(Default)]
struct PartitionDecoders {
    /// By writer schema id; `Err` when the writer schema cannot be read as the reader schema.
    avro: HashMap<u32, Result<AvroDecoder, String>>,
    json: Vec<(PendingMeta, String)>,
    json_decoder: Option<JsonLinesDecoder>,
}

enum DecodeFailure {
    Bad(&'static str, String),
    RegistryDown(String),
}

fn bad(e: DecodeError) -> DecodeFailure {
    DecodeFailure::Bad(e.reason(), e.to_string())
}

/// A decoder from `writer` to `reader`: the fast path when they are the same schema.
fn decoder_for(writer: &AvroSchema, reader: &AvroSchema) -> Result<AvroDecoder, String> {
    if writer.canonical_form() == reader.canonical_form() {
        AvroDecoder::new(reader)
    } else {
        AvroDecoder::with_writer(writer, reader)
    }
    .map_err(|e| {
        format!(
            "writer schema cannot be read as {}: {e}",
            reader_name(reader)
        )
    })
}

fn reader_name(s: &AvroSchema) -> String {
    match s {
        AvroSchema::Record(r) => r.name.fullname(None),
        _ => "the reader schema".into(),
    }
}
