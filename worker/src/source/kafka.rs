//! Kafka source: reads the topics bound to source tables and decodes their
//! values straight into Arrow batches, per partition.
//!
//! The worker assigns itself the bound topics' partitions (no group
//! rebalancing): all of them, or, as one of several workers of a query
//! (a [`WorkerShare`]), only its share, the partitions `p` with
//! `p mod N == i`. They are positioned from the checkpoint or the
//! partitions' restored state; offsets are committed to the consumer
//! group only inside the sink's transaction, so the group's lag is visible
//! with the usual Kafka tools. Avro values are decoded by schema id with a
//! cached registry client; a record that cannot be decoded becomes a
//! [`DeadLetter`] for the dead-letter topic. When the registry is down the
//! partition is rewound to the undecoded record and retried later: nothing is
//! skipped. Only the registry's "unknown id" (and a schema that is not valid
//! Avro) make a record bad; a refusal (401/403), throttling (408/429), a
//! timeout or any other answer is the registry's trouble and rewinds too.
//!
//! Every record read becomes a row, a dead letter, or, for a tombstone (a
//! null value: a delete marker of a compacted topic, which an append-only
//! table has no row for), a count in [`Polled::skipped`]. An empty value
//! (zero bytes, or only white space in JSON) is a dead letter
//! (`empty-value`). A position outside its partition's range (retention
//! deleted the records, the topic was recreated) is moved by the
//! [`OnOutOfRange`] policy, logged and counted; librdkafka never resets one
//! by itself (`auto.offset.reset=error`).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use apache_avro::Schema as AvroSchema;
use arrow::datatypes::SchemaRef;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};

use crate::codec::json::JsonLinesDecoder;
use crate::codec::records::ValueFormat;
use crate::codec::{AvroDecoder, DecodeError, confluent};
use crate::kafka::offsets::{offsets_from_json, offsets_to_json};
use crate::kafka::{
    ClientErrors, KafkaConfig, Offsets, RegistryClient, RegistryError, TopicPartition,
};
use crate::memory::{BufferSizes, MemoryBudget};
use crate::runner::shared::WorkerShare;
use crate::runner::source::OffsetReset;
use crate::runner::{
    ConnectorError, DeadLetter, KafkaOrigin, Polled, Source, SourceFigures, TableBatch, Trouble,
};

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

/// What to do with a position (checkpointed, or reached while reading)
/// that is outside its partition's offsets: records not yet read were
/// deleted by retention, or the topic was recreated.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum OnOutOfRange {
    /// Continue at the oldest record still there (loses only what is gone).
    #[default]
    Earliest,
    /// Continue at the end of the partition (skips what is still there too).
    Latest,
    /// Stop the query with an error.
    Fail,
}

impl OnOutOfRange {
    fn name(self) -> &'static str {
        match self {
            Self::Earliest => "earliest",
            Self::Latest => "latest",
            Self::Fail => "fail",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum KafkaSourceError {
    #[error("topic `{0}` does not exist")]
    MissingTopic(String),
    #[error("Kafka consumer: {0}")]
    Kafka(String),
    /// The broker cannot answer yet (restarting, electing leaders): new
    /// clients after a failover may succeed.
    #[error("Kafka consumer: {0}")]
    Unavailable(String),
    #[error(
        "{partition}: offset {position} is out of range (the partition holds {low}..{high}): \
         records not read yet were deleted by retention, or the topic was recreated; \
         --on-offset-out-of-range earliest|latest chooses where to continue"
    )]
    OutOfRange {
        partition: String,
        position: i64,
        low: i64,
        high: i64,
    },
}

/// Reads the bound topics.
pub struct KafkaSource {
    consumer: BaseConsumer<ClientErrors>,
    brokers: String,
    bindings: Vec<TopicBinding>,
    registry: Option<RegistryClient>,
    /// Per binding, indexed like `bindings`: positions, counters, decoders.
    state: Vec<BindingState>,
    /// A bounded run stops at the end offsets taken at start-up.
    bounded: bool,
    on_out_of_range: OnOutOfRange,
    /// Resets made at open, reported with the first poll.
    pending_resets: Vec<OffsetReset>,
    /// Records skipped on purpose, by reason (this process).
    skipped: BTreeMap<&'static str, u64>,
    /// Out-of-range resets per `topic/partition` (this process).
    resets: BTreeMap<String, u64>,
}

/// Hot-path state of one bound topic, kept free of per-message allocation.
#[derive(Default)]
struct BindingState {
    /// Next offset to read per partition (the checkpointed position).
    positions: PerPartition<i64>,
    /// Offset at which a bounded run stops, per partition.
    end_offsets: PerPartition<i64>,
    decoders: PerPartition<PartitionDecoders>,
    partitions: usize,
    /// Messages and value bytes read (this process).
    records: u64,
    bytes: u64,
}

/// Values per partition number (Kafka partitions are dense, 0..n), without
/// hashing on the per-message path.
struct PerPartition<T>(Vec<Option<T>>);

impl<T> Default for PerPartition<T> {
    fn default() -> Self {
        Self(Vec::new())
    }
}

impl<T> PerPartition<T> {
    fn get(&self, partition: &i32) -> Option<&T> {
        self.0.get(usize::try_from(*partition).ok()?)?.as_ref()
    }

    fn slot(&mut self, partition: i32) -> &mut Option<T> {
        let i = usize::try_from(partition).expect("Kafka partitions are non-negative");
        if self.0.len() <= i {
            self.0.resize_with(i + 1, || None);
        }
        &mut self.0[i]
    }

    fn insert(&mut self, partition: i32, value: T) {
        *self.slot(partition) = Some(value);
    }

    fn get_or_default(&mut self, partition: i32) -> &mut T
    where
        T: Default,
    {
        self.slot(partition).get_or_insert_with(T::default)
    }

    fn keys(&self) -> impl Iterator<Item = i32> + '_ {
        self.iter().map(|(p, _)| p)
    }

    fn iter(&self) -> impl Iterator<Item = (i32, &T)> {
        self.0
            .iter()
            .enumerate()
            .filter_map(|(i, v)| Some((i as i32, v.as_ref()?)))
    }

    fn iter_mut(&mut self) -> impl Iterator<Item = (i32, &mut T)> {
        self.0
            .iter_mut()
            .enumerate()
            .filter_map(|(i, v)| Some((i as i32, v.as_mut()?)))
    }
}

impl BindingState {
    fn done(&self, partition: i32) -> bool {
        self.end_offsets
            .get(&partition)
            .is_some_and(|end| self.positions.get(&partition).is_some_and(|p| p >= end))
    }
}

impl KafkaSource {
    /// Connects, assigns every partition of the bound topics (with a
    /// `share`, only this worker's) and seeks them to `positions` (or
    /// `start` where a partition has none; `on_out_of_range` where one is
    /// outside its partition).
    #[allow(clippy::too_many_arguments)]
    pub fn open(
        config: &KafkaConfig,
        group_id: &str,
        bindings: Vec<TopicBinding>,
        registry: Option<RegistryClient>,
        positions: &Offsets,
        start: StartFrom,
        on_out_of_range: OnOutOfRange,
        bounded: bool,
        buffers: &BufferSizes,
        share: Option<WorkerShare>,
    ) -> anyhow::Result<Self> {
        let consumer: BaseConsumer<ClientErrors> = config
            .client_config()
            .set("group.id", group_id)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            // Only committed input: the upstream may be transactional too.
            .set("isolation.level", "read_committed")
            // Never move a position silently: an out-of-range fetch comes
            // back as an error and `on_out_of_range` decides.
            .set("auto.offset.reset", "error")
            // Prefetch sized from the memory budget (crate::memory).
            .set("fetch.max.bytes", buffers.fetch_max_bytes.to_string())
            .set(
                "max.partition.fetch.bytes",
                buffers.fetch_max_bytes.to_string(),
            )
            // Only bounds what this consumer sends; librdkafka refuses a
            // fetch.max.bytes below it.
            .set(
                "message.max.bytes",
                buffers.fetch_max_bytes.min(1_000_000).to_string(),
            )
            .set(
                "queued.max.messages.kbytes",
                buffers.consumer_queue_kbytes.to_string(),
            )
            .set(
                "queued.min.messages",
                buffers.consumer_queue_messages.to_string(),
            )
            // librdkafka pauses fetching for 1 s by default once a partition's
            // local queue is full; at full speed that stalls the pipeline.
            .set("fetch.queue.backoff.ms", "5")
            .create_with_context(ClientErrors::default())
            .map_err(|e| anyhow::anyhow!("creating the Kafka consumer: {e}"))?;
        let timeout = Duration::from_secs(15);
        let mut assignment = TopicPartitionList::new();
        let mut all_positions = BTreeMap::new();
        let mut partition_counts = Vec::new();
        let mut pending_resets = Vec::new();
        for b in &bindings {
            if b.format == ValueFormat::Avro && registry.is_none() {
                anyhow::bail!(
                    "topic `{}` is Avro but no schema registry was given (--schema-registry or SCHEMA_REGISTRY_URL)",
                    b.topic
                );
            }
            let md = retry_while_unavailable(|| consumer.fetch_metadata(Some(&b.topic), timeout))
                .map_err(|e| consumer.context().explain(&config.brokers, &e))?;
            let t = md
                .topics()
                .iter()
                .find(|t| t.name() == b.topic)
                .filter(|t| t.error().is_none() && !t.partitions().is_empty())
                .ok_or_else(|| KafkaSourceError::MissingTopic(b.topic.clone()))?;
            partition_counts.push(t.partitions().len());
            let owned = |p: &&rdkafka::metadata::MetadataPartition| {
                share.is_none_or(|s| usize::try_from(p.id()).is_ok_and(|id| s.owns(id)))
            };
            for p in t.partitions().iter().filter(owned) {
                let tp = (b.topic.clone(), p.id());
                let offset = match positions.get(&tp) {
                    Some(&o) => {
                        let (low, high) = retry_while_unavailable(|| {
                            consumer.fetch_watermarks(&b.topic, p.id(), timeout)
                        })
                        .map_err(|e| consumer.context().explain(&config.brokers, &e))?;
                        match out_of_range(&b.topic, p.id(), o, low, high, on_out_of_range)? {
                            Some(reset) => {
                                let to = reset.to;
                                pending_resets.push(reset);
                                Offset::Offset(to)
                            }
                            None => Offset::Offset(o),
                        }
                    }
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
                        let (low, high) = retry_while_unavailable(|| {
                            consumer.fetch_watermarks(&b.topic, p.id(), timeout)
                        })
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
        let mut state: Vec<BindingState> = partition_counts
            .iter()
            .map(|&partitions| BindingState {
                partitions,
                ..BindingState::default()
            })
            .collect();
        for ((topic, partition), offset) in all_positions {
            let bi = bindings
                .iter()
                .position(|b| b.topic == topic)
                .expect("bound topic");
            state[bi].positions.insert(partition, offset);
            if bounded {
                let (_, high) = consumer
                    .fetch_watermarks(&topic, partition, timeout)
                    .map_err(|e| consumer.context().explain(&config.brokers, &e))?;
                state[bi].end_offsets.insert(partition, high);
            }
        }
        let resets = pending_resets
            .iter()
            .map(|r| (r.partition.clone(), 1))
            .collect();
        Ok(Self {
            consumer,
            brokers: config.brokers.clone(),
            bindings,
            registry,
            state,
            bounded,
            on_out_of_range,
            pending_resets,
            skipped: BTreeMap::new(),
            resets,
        })
    }

    pub fn bindings(&self) -> &[TopicBinding] {
        &self.bindings
    }

    /// Partition count of each bound table.
    pub fn partition_counts(&self) -> impl Iterator<Item = (&str, usize)> {
        self.bindings
            .iter()
            .zip(&self.state)
            .map(|(b, st)| (b.table.as_str(), st.partitions))
    }

    /// Messages read per topic by this process.
    pub fn records_read(&self) -> BTreeMap<String, u64> {
        self.per_topic(|st| st.records)
    }

    /// Value bytes read per topic by this process.
    pub fn bytes_read(&self) -> BTreeMap<String, u64> {
        self.per_topic(|st| st.bytes)
    }

    fn per_topic(&self, f: impl Fn(&BindingState) -> u64) -> BTreeMap<String, u64> {
        self.bindings
            .iter()
            .zip(&self.state)
            .map(|(b, st)| (b.topic.clone(), f(st)))
            .collect()
    }

    /// Next offset to read per topic-partition: the position a checkpoint keeps.
    pub fn positions(&self) -> Offsets {
        self.bindings
            .iter()
            .zip(&self.state)
            .flat_map(|(b, st)| st.positions.iter().map(|(p, o)| ((b.topic.clone(), p), *o)))
            .collect()
    }

    /// In a bounded run: partitions that reached their end offset, as (table, partition).
    pub fn finished_partitions(&self) -> Vec<(String, i32)> {
        self.bindings
            .iter()
            .zip(&self.state)
            .flat_map(|(b, st)| {
                st.end_offsets
                    .keys()
                    .filter(|p| st.done(*p))
                    .map(|p| (b.table.clone(), p))
            })
            .collect()
    }

    /// Bounded run and every partition reached its end.
    pub fn is_done(&self) -> bool {
        self.bounded
            && self
                .state
                .iter()
                .all(|st| st.end_offsets.keys().all(|p| st.done(p)))
    }

    /// Consumer lag per partition: high watermark minus position, from the
    /// high watermarks librdkafka caches from fetch responses (asking the
    /// broker each time would stall the pipeline).
    pub fn lag(&self) -> BTreeMap<TopicPartition, i64> {
        self.positions()
            .into_iter()
            .filter_map(|((t, p), pos)| {
                let high = cached_high_watermark(&self.consumer, &t, p)?;
                Some(((t, p), (high - pos).max(0)))
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
        let mut polled = Polled {
            offset_resets: std::mem::take(&mut self.pending_resets),
            ..Polled::default()
        };
        while polled.records < max_records {
            let now = Instant::now();
            let wait = if polled.records == 0 {
                deadline.saturating_duration_since(now)
            } else {
                Duration::ZERO
            };
            let Some(msg) = self.consumer.poll(wait) else {
                self.step_over_control_records();
                break;
            };
            let msg = match msg {
                Ok(m) => m,
                Err(KafkaError::PartitionEOF(_)) => continue,
                Err(e) if is_out_of_range(&e) => {
                    // The error does not say which partition: check them all.
                    self.reset_out_of_range(&mut polled)?;
                    continue;
                }
                Err(e) if is_transient(&e) => {
                    // librdkafka reconnects by itself; report and keep going.
                    polled.trouble = Some(Trouble::Broker(e.to_string()));
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
            let Some(bi) = self.bindings.iter().position(|b| b.topic == topic) else {
                continue;
            };
            let st = &mut self.state[bi];
            if st
                .end_offsets
                .get(&partition)
                .is_some_and(|end| offset >= *end)
            {
                continue; // past the end of a bounded run
            }
            let Some(value) = msg.payload() else {
                // A tombstone: nothing to make a row of (see the module doc).
                *polled.skipped.entry("tombstone").or_default() += 1;
                *self.skipped.entry("tombstone").or_default() += 1;
                polled.records += 1;
                st.records += 1;
                st.positions.insert(partition, offset + 1);
                continue;
            };
            let binding = &self.bindings[bi];
            // Key and timestamp are copied only where they may be needed later.
            let meta = || PendingMeta {
                offset,
                timestamp_ms: msg.timestamp().to_millis(),
                key: msg.key().map(<[u8]>::to_vec),
            };
            let decoders = st.decoders.get_or_default(partition);
            match decode_value(binding, decoders, self.registry.as_ref(), meta, value) {
                Ok(()) => {}
                Err(DecodeFailure::Bad(reason, error)) => {
                    polled.dead_letters.push(meta().into_dead_letter(
                        binding,
                        partition,
                        value.to_vec(),
                        reason,
                        error,
                    ));
                }
                Err(DecodeFailure::RegistryDown(e)) => {
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
                    polled.trouble = Some(Trouble::Registry(e));
                    // End the round here: messages of this partition that
                    // arrive after the seek are the re-read ones and must
                    // not be skipped.
                    break;
                }
            }
            polled.records += 1;
            st.records += 1;
            st.bytes += value.len() as u64;
            st.positions.insert(partition, offset + 1);
        }
        self.finish_batches(&mut polled);
        Ok(polled)
    }

    /// Moves positions past the transaction markers librdkafka read but
    /// never delivers: after the last record of a transaction comes its
    /// commit marker, so without this a partition written with transactions
    /// would stay one short of its end (a bounded run would never finish,
    /// the lag would stay at 1). Called only once the consumer's queue is
    /// empty, when its position counts nothing that was not handed over.
    fn step_over_control_records(&mut self) {
        let Ok(list) = self.consumer.position() else {
            return;
        };
        for e in list.elements() {
            let Offset::Offset(pos) = e.offset() else {
                continue;
            };
            let Some(bi) = self.bindings.iter().position(|b| b.topic == e.topic()) else {
                continue;
            };
            let st = &mut self.state[bi];
            let p = e.partition();
            let pos = st.end_offsets.get(&p).map_or(pos, |end| pos.min(*end));
            if st.positions.get(&p).is_some_and(|current| pos > *current) {
                st.positions.insert(p, pos);
            }
        }
    }

    /// After an out-of-range error: moves every position outside its
    /// partition's offsets by the policy (or fails).
    fn reset_out_of_range(&mut self, polled: &mut Polled) -> Result<(), KafkaSourceError> {
        let timeout = Duration::from_secs(10);
        let before = polled.offset_resets.len();
        for (b, st) in self.bindings.iter().zip(self.state.iter_mut()) {
            let parts: Vec<(i32, i64)> = st.positions.iter().map(|(p, o)| (p, *o)).collect();
            for (p, pos) in parts {
                // Right after a broker restart the range is not known yet (or
                // a position briefly looks out of range): ask until two
                // answers a moment apart agree before moving anything.
                let watermarks = || -> Result<(i64, i64), KafkaSourceError> {
                    retry_while_unavailable(|| self.consumer.fetch_watermarks(&b.topic, p, timeout))
                        .map_err(|e| {
                            let explained = self
                                .consumer
                                .context()
                                .explain(&self.brokers, &e)
                                .to_string();
                            if is_transient(&e) {
                                KafkaSourceError::Unavailable(explained)
                            } else {
                                KafkaSourceError::Kafka(explained)
                            }
                        })
                };
                let (low, high) = watermarks()?;
                if (low..=high).contains(&pos) {
                    continue;
                }
                std::thread::sleep(Duration::from_secs(1));
                let (low, high) = watermarks()?;
                let Some(reset) = out_of_range(&b.topic, p, pos, low, high, self.on_out_of_range)?
                else {
                    continue;
                };
                self.consumer
                    .seek(&b.topic, p, Offset::Offset(reset.to), timeout)
                    .map_err(|e| {
                        KafkaSourceError::Kafka(format!("seeking {}/{p}: {e}", b.topic))
                    })?;
                st.positions.insert(p, reset.to);
                *self.resets.entry(reset.partition.clone()).or_default() += 1;
                polled.offset_resets.push(reset);
            }
        }
        if polled.offset_resets.len() == before {
            tracing::warn!(
                "Kafka reported an out-of-range offset, but every position is in range now"
            );
        }
        Ok(())
    }

    /// Records skipped on purpose, by reason (this process).
    pub fn skipped(&self) -> BTreeMap<String, u64> {
        self.skipped
            .iter()
            .map(|(r, n)| (r.to_string(), *n))
            .collect()
    }

    /// Out-of-range resets per `topic/partition` (this process).
    pub fn offset_resets(&self) -> &BTreeMap<String, u64> {
        &self.resets
    }

    /// Turns what the decoders hold into batches (and JSON errors into bad messages).
    fn finish_batches(&mut self, polled: &mut Polled) {
        for (bi, st) in self.state.iter_mut().enumerate() {
            let binding = &self.bindings[bi];
            for (partition, state) in st.decoders.iter_mut() {
                for dec in state.avro.iter_mut().filter_map(|(_, r)| r.as_mut().ok()) {
                    if !dec.is_empty() {
                        polled.batches.push(TableBatch {
                            table: binding.table.clone(),
                            partition: partition as usize,
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
                    polled.dead_letters.push(meta.into_dead_letter(
                        binding,
                        partition,
                        b.raw.into_bytes(),
                        "invalid-json",
                        b.reason,
                    ));
                }
                state.json.clear();
                if let Some(rows) = rows {
                    polled.batches.push(TableBatch {
                        table: binding.table.clone(),
                        partition: partition as usize,
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
    meta: impl FnOnce() -> PendingMeta,
    value: &[u8],
) -> Result<(), DecodeFailure> {
    match binding.format {
        ValueFormat::Json => {
            let text = std::str::from_utf8(value)
                .map_err(|e| DecodeFailure::Bad("invalid-utf8", e.to_string()))?;
            if text.trim().is_empty() {
                return Err(empty_value());
            }
            state.json.push((meta(), text.to_string()));
            Ok(())
        }
        ValueFormat::Avro => {
            if value.is_empty() {
                return Err(empty_value());
            }
            let (id, body) = confluent::unframe(value).map_err(bad)?;
            let index = match state.avro.iter().position(|(i, _)| *i == id) {
                Some(index) => index,
                None => {
                    let registry = registry.expect("checked at open");
                    let decoder = match registry.schema_by_id(id) {
                        Ok(writer) => decoder_for(&writer, &binding.avro_schema),
                        // Not cached here: the client remembers unknown ids
                        // for a while, and a schema registered later is used.
                        Err(RegistryError::UnknownId(_)) => {
                            return Err(bad(DecodeError::UnknownSchemaId(id)));
                        }
                        // About the schema itself: every record with it is bad.
                        Err(e @ RegistryError::InvalidSchema { .. }) => Err(e.to_string()),
                        // Down, refusing, throttling, misconfigured: not the
                        // record's fault; read it again later.
                        Err(e) => return Err(DecodeFailure::RegistryDown(e.to_string())),
                    };
                    state.avro.push((id, decoder));
                    state.avro.len() - 1
                }
            };
            match &mut state.avro[index].1 {
                Ok(dec) => dec.decode(body).map_err(bad),
                Err(e) => Err(DecodeFailure::Bad("incompatible-schema", e.clone())),
            }
        }
    }
}

/// The partition's high watermark as of the last fetch response, if known.
fn cached_high_watermark(
    consumer: &BaseConsumer<ClientErrors>,
    topic: &str,
    partition: i32,
) -> Option<i64> {
    let topic = std::ffi::CString::new(topic).ok()?;
    let (mut low, mut high) = (-1i64, -1i64);
    // SAFETY: the client pointer is valid while `consumer` lives, `topic` is
    // a NUL-terminated string, and librdkafka only writes the two integers.
    let err = unsafe {
        rdkafka_sys::rd_kafka_get_watermark_offsets(
            consumer.client().native_ptr(),
            topic.as_ptr(),
            partition,
            &mut low,
            &mut high,
        )
    };
    (err == rdkafka_sys::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR && high >= 0)
        .then_some(high)
}

/// A fetch position outside the partition (with `auto.offset.reset=error`).
fn is_out_of_range(e: &KafkaError) -> bool {
    use rdkafka::types::RDKafkaErrorCode as C;
    matches!(
        e.rdkafka_error_code(),
        Some(C::AutoOffsetReset | C::OffsetOutOfRange)
    )
}

/// Where `position` of `topic/partition` moves when it is outside
/// `low..=high` (`None`: it is inside), logged; an error for `Fail`.
fn out_of_range(
    topic: &str,
    partition: i32,
    position: i64,
    low: i64,
    high: i64,
    policy: OnOutOfRange,
) -> Result<Option<OffsetReset>, KafkaSourceError> {
    if (low..=high).contains(&position) {
        return Ok(None);
    }
    let name = format!("{topic}/{partition}");
    let to = match policy {
        OnOutOfRange::Earliest => low,
        OnOutOfRange::Latest => high,
        OnOutOfRange::Fail => {
            tracing::error!(
                "{name}: offset {position} is out of range ({low}..{high}); stopping (--on-offset-out-of-range fail)"
            );
            return Err(KafkaSourceError::OutOfRange {
                partition: name,
                position,
                low,
                high,
            });
        }
    };
    let skipped = u64::try_from(to - position).unwrap_or(0);
    tracing::warn!(
        "{name}: offset {position} is out of range (the partition holds {low}..{high}: \
         retention deleted unread records, or the topic was recreated); continuing at {to} \
         (--on-offset-out-of-range {}), {skipped} records skipped",
        policy.name()
    );
    Ok(Some(OffsetReset {
        partition: name,
        from: position,
        to,
        skipped,
    }))
}

/// Connection-level errors librdkafka recovers from on its own.
/// Calls `f` until it succeeds or fails with a non-transient error, for up
/// to 30 s (a restarting broker elects its partitions' leaders first).
fn retry_while_unavailable<T>(
    mut f: impl FnMut() -> Result<T, KafkaError>,
) -> Result<T, KafkaError> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match f() {
            Err(e) if is_transient(&e) && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(500));
            }
            other => return other,
        }
    }
}

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
    fn into_dead_letter(
        self,
        binding: &TopicBinding,
        partition: i32,
        value: Vec<u8>,
        reason: &'static str,
        error: String,
    ) -> DeadLetter {
        DeadLetter {
            table: binding.table.clone(),
            location: format!("{}/{partition}@{}", binding.topic, self.offset),
            reason,
            error,
            key: self.key,
            value,
            kafka: Some(KafkaOrigin {
                topic: binding.topic.clone(),
                partition,
                offset: self.offset,
                timestamp_ms: self.timestamp_ms,
            }),
        }
    }
}

#[derive(Default)]
struct PartitionDecoders {
    /// By writer schema id (usually one); `Err` when the writer schema cannot
    /// be read as the reader schema.
    avro: Vec<(u32, Result<AvroDecoder, String>)>,
    json: Vec<(PendingMeta, String)>,
    json_decoder: Option<JsonLinesDecoder>,
}

enum DecodeFailure {
    Bad(&'static str, String),
    RegistryDown(String),
}

fn empty_value() -> DecodeFailure {
    DecodeFailure::Bad(
        "empty-value",
        "the record's value is empty (a tombstone would have a null value)".into(),
    )
}

fn bad(e: DecodeError) -> DecodeFailure {
    DecodeFailure::Bad(e.reason(), e.to_string())
}

/// A decoder from `writer` to `reader`: the fast path when they are the same schema.
pub(crate) fn decoder_for(writer: &AvroSchema, reader: &AvroSchema) -> Result<AvroDecoder, String> {
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

/// The Kafka topics of a query as the run loop's [`Source`]: connects on
/// [`Source::start`] at the checkpointed offsets (or `start` where there are
/// none). Its position is the next offset of every partition.
pub struct KafkaInput {
    config: KafkaConfig,
    group: String,
    bindings: Vec<TopicBinding>,
    registry: Option<RegistryClient>,
    start: StartFrom,
    on_out_of_range: OnOutOfRange,
    bounded: bool,
    buffers: BufferSizes,
    share: Option<WorkerShare>,
    source: Option<KafkaSource>,
}

impl KafkaInput {
    /// Reads `bindings` as consumer group `group` (offsets are committed to
    /// it by the Kafka sink only).
    pub fn new(
        config: KafkaConfig,
        group: String,
        bindings: Vec<TopicBinding>,
        registry: Option<RegistryClient>,
        start: StartFrom,
        on_out_of_range: OnOutOfRange,
        bounded: bool,
    ) -> Self {
        Self {
            config,
            group,
            bindings,
            registry,
            start,
            on_out_of_range,
            bounded,
            buffers: MemoryBudget(crate::memory::DEFAULT_BUDGET).split(),
            share: None,
            source: None,
        }
    }

    /// Reads only the partitions `share` owns (a query on several workers).
    pub fn with_share(mut self, share: Option<WorkerShare>) -> Self {
        self.share = share;
        self
    }

    /// Sizes the consumer's prefetch from a memory budget's split (default:
    /// [`crate::memory::DEFAULT_BUDGET`]).
    pub fn with_buffers(mut self, buffers: BufferSizes) -> Self {
        self.buffers = buffers;
        self
    }

    fn source(&self) -> &KafkaSource {
        self.source.as_ref().expect("started")
    }
}

impl Source for KafkaInput {
    fn name(&self) -> &str {
        "kafka"
    }

    fn start(&mut self, position: Option<&serde_json::Value>) -> Result<(), ConnectorError> {
        let offsets = match position {
            Some(p) => offsets_from_json(p).map_err(ConnectorError::fatal)?,
            None => Offsets::new(),
        };
        self.source = Some(
            KafkaSource::open(
                &self.config,
                &self.group,
                self.bindings.clone(),
                self.registry.clone(),
                &offsets,
                self.start,
                self.on_out_of_range,
                self.bounded,
                &self.buffers,
                self.share,
            )
            .map_err(ConnectorError::setup)?,
        );
        Ok(())
    }

    fn partitions(&self) -> Vec<(String, usize)> {
        self.source()
            .partition_counts()
            .map(|(t, n)| (t.to_string(), n))
            .collect()
    }

    fn poll(&mut self, max_records: usize, max_wait: Duration) -> Result<Polled, ConnectorError> {
        let source = self.source.as_mut().expect("started");
        let mut polled = source.poll(max_records, max_wait).map_err(|e| match e {
            KafkaSourceError::Unavailable(_) => ConnectorError::transient(e),
            e => ConnectorError::fatal(e),
        })?;
        polled.finished = source
            .finished_partitions()
            .into_iter()
            .map(|(t, p)| (t, p as usize))
            .collect();
        Ok(polled)
    }

    fn position(&self) -> serde_json::Value {
        offsets_to_json(&self.source().positions())
    }

    fn is_done(&self) -> bool {
        self.source.as_ref().is_some_and(KafkaSource::is_done)
    }

    fn figures(&self) -> SourceFigures {
        let s = self.source();
        SourceFigures {
            records_in: s.records_read(),
            bytes_in: s.bytes_read(),
            lag: s
                .lag()
                .into_iter()
                .map(|((t, p), l)| (format!("{t}/{p}"), l))
                .collect(),
            skipped: s.skipped(),
            offset_resets: s.offset_resets().clone(),
        }
    }
}
