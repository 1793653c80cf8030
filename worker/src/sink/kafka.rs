//! Transactional Kafka sink: every output row, late row and dead letter of a
//! checkpoint epoch goes out in one Kafka transaction, which commits together
//! with the source offsets (tagged with the epoch) right after the epoch's
//! checkpoint is on disk. The epoch's records are also kept in the checkpoint,
//! so a crash between "checkpoint written" and "transaction committed" is
//! repaired on restart by sending them again. See docs/exactly-once.md.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use arrow::array::RecordBatch;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerGroupMetadata};
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Offset, TopicPartitionList};

use crate::checkpoint::partitioned::StateRecord;
use crate::codec::records::{KeyExtractor, RowEncoder};
use crate::kafka::offsets::offsets_from_json;
use crate::kafka::{ClientErrors, KafkaConfig, Offsets};
use crate::runner::faults::{self, InjectedStall};
use crate::runner::{
    CommitDelays, ConnectorError, DeadLetter, Positions, RestoredSink, Routes, RowKind, Sink,
    SinkCheckpoint,
};
use crate::sink::epochs::{Committed, Recovery, recovery};
use crate::sink::pending::{Pending, PendingRecord};

pub use crate::sink::epochs::FreshStart;

/// Name of the Kafka source whose positions this sink commits.
const KAFKA_SOURCE: &str = "kafka";

/// Tries of a commit before the worker gives up (and restarts from its checkpoint).
const COMMIT_ATTEMPTS: u32 = 8;

/// Delay samples kept for [`KafkaSink::commit_delays`].
const MAX_DELAY_SAMPLES: usize = 100_000;

/// Prefix of the offset-commit metadata that names the committed epoch:
/// `tickflow-epoch=<N>;lineage=<id>` (older workers wrote no lineage).
const EPOCH_TAG: &str = "tickflow-epoch=";
const LINEAGE_TAG: &str = ";lineage=";

/// A dead letter's value, key and error message are cut (original sizes
/// and a truncated marker go into headers) so that it always fits the
/// producer's `message.max.bytes` (1,000,000 by default) and the topic's
/// `max.message.bytes`: a record too large for either is fatal to the
/// transaction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct DeadLetterCaps {
    value: usize,
    key: usize,
    message: usize,
}

/// Room a dead letter needs besides value, key and message: its other
/// headers (reason, source topic, location, sizes) and record framing.
const DEAD_LETTER_FRAMING: usize = 4 * 1024;

impl DeadLetterCaps {
    const DEFAULT: Self = Self {
        value: 256 * 1024,
        key: 16 * 1024,
        message: 4 * 1024,
    };

    /// The cuts for a dead-letter topic whose records may take at most
    /// `max_message_bytes`: the defaults where they fit, else shares of what
    /// the topic takes. A topic too small for any dead letter is an error.
    fn for_topic_limit(topic: &str, max_message_bytes: usize) -> Result<Self, String> {
        let d = Self::DEFAULT;
        let room = max_message_bytes.saturating_sub(DEAD_LETTER_FRAMING);
        if room >= d.value + d.key + d.message {
            return Ok(d);
        }
        if room < 4 * 1024 {
            return Err(format!(
                "dead-letter topic {topic} takes records of at most {max_message_bytes} bytes \
                 (max.message.bytes): too small for a dead letter and its headers; raise it \
                 to at least {} bytes",
                4 * 1024 + DEAD_LETTER_FRAMING
            ));
        }
        let message = (room / 8).min(d.message);
        let key = (room / 8).min(d.key);
        Ok(Self {
            value: room - message - key,
            key,
            message,
        })
    }
}

const TIMEOUT: Duration = Duration::from_secs(30);

/// Transactional calls abandoned as stuck whose thread has not returned yet
/// (each holds a whole Kafka client), process-wide.
static STUCK_CALLS: AtomicUsize = AtomicUsize::new(0);

/// How many abandoned (stuck) Kafka clients this process still holds.
pub fn stuck_calls() -> usize {
    STUCK_CALLS.load(Ordering::Relaxed)
}

/// One output: a stream (or its late rows) written to a topic.
pub struct OutputTopic {
    /// The stream whose rows go here, and which of them.
    pub stream: String,
    pub kind: RowKind,
    /// For messages (`ohlc_5s`, `ohlc_5s (late rows)`).
    pub name: String,
    pub topic: String,
    pub encoder: RowEncoder,
    pub keys: KeyExtractor,
}

/// Output settings of the producer.
#[derive(Clone, Debug)]
pub struct ProducerTuning {
    pub compression: String,
    pub linger_ms: u32,
    pub batch_bytes: u32,
    /// Timeout of each call in a commit: a slow one returns a retriable
    /// error and is resumed (up to `COMMIT_ATTEMPTS` tries), well before the
    /// stall limit.
    pub call_timeout: Duration,
    /// How long a transactional call may take before the producer counts as
    /// stuck (see [`KafkaSink::transactional_call`]). Above twice the call
    /// timeout: what a try's two calls take at most when they keep their
    /// timeouts.
    pub stall_limit: Duration,
    /// `queue.buffering.max.kbytes`: the producer's send queue (a share of
    /// the memory budget, `crate::memory`), in payload...
    pub queue_kbytes: u64,
    /// ...and `queue.buffering.max.messages`.
    pub queue_messages: u64,
}

fn default_buffers() -> crate::memory::BufferSizes {
    crate::memory::MemoryBudget(crate::memory::DEFAULT_BUDGET).split()
}

impl Default for ProducerTuning {
    fn default() -> Self {
        Self {
            compression: "lz4".into(),
            linger_ms: 5,
            batch_bytes: 1_000_000,
            call_timeout: Duration::from_secs(10),
            stall_limit: Duration::from_secs(45),
            queue_kbytes: default_buffers().producer_queue_kbytes,
            queue_messages: default_buffers().producer_queue_messages,
        }
    }
}

pub struct KafkaSink {
    /// Shared with the thread of a transactional call (see
    /// [`KafkaSink::transactional_call`]).
    producer: Arc<BaseProducer<ClientErrors>>,
    config: KafkaConfig,
    outputs: Vec<OutputTopic>,
    /// (stream, kind) → index into `outputs`.
    routes: Routes,
    dead_letter_topic: Option<String>,
    dead_letter_caps: DeadLetterCaps,
    /// Consumer group the source offsets are committed to.
    group_id: String,
    /// A consumer of that group that never reads: it supplies the group
    /// metadata a transactional offset commit needs (the source's consumer
    /// only assigns partitions, so its metadata is the same).
    group: BaseConsumer<ClientErrors>,
    /// Records written per topic (this process).
    records_out: BTreeMap<String, u64>,
    pending: Pending,
    /// Records sent in committed transactions (this process).
    pub records_committed: u64,
    /// When each result batch of the open transaction was written (rows).
    emitted: Vec<(Instant, usize)>,
    /// Milliseconds from a result row's emission (its window closing) to its
    /// commit, per row; the most recent [`MAX_DELAY_SAMPLES`].
    delays_ms: Vec<f64>,
    scratch: Scratch,
    call_timeout: Duration,
    stall_limit: Duration,
    /// The checkpoint directory's lineage, tagged on every offset commit.
    lineage: String,
}

/// Reused encode buffers: values, value ends, keys, key ends.
type Scratch = (Vec<u8>, Vec<usize>, Vec<u8>, Vec<usize>);

#[derive(Debug, thiserror::Error)]
pub enum KafkaSinkError {
    /// A Kafka failure a new producer may not have (broker gone, retries
    /// used up): the run can fail over to its last checkpoint.
    #[error("{0}")]
    Kafka(String),
    /// A transactional call did not return in time: the producer is stuck
    /// and is abandoned.
    #[error("{0}")]
    Stalled(String),
    /// The group's committed offsets and the restored checkpoint disagree
    /// in a way no restart repairs (docs/exactly-once.md): starting would
    /// write output twice or lose it.
    #[error("{0}")]
    Refused(String),
    /// Failing over would not help: a fatal producer error (above all,
    /// fenced by a newer instance with the same transactional id, which a
    /// failover would fight), a record the broker refuses, or checkpointed
    /// output that does not parse.
    #[error("{0}")]
    Fatal(String),
    #[error("encoding output `{name}`: {message}")]
    Encode { name: String, message: String },
}

impl KafkaSinkError {
    /// Whether restarting from the last checkpoint with a new producer can help.
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Kafka(_) | Self::Stalled(_))
    }
}

impl KafkaSink {
    /// Creates the transactional producer. `init_transactions` fences any
    /// older producer with the same id and aborts its open transaction. The
    /// transactional id is also the consumer group the offsets go to.
    pub fn open(
        config: &KafkaConfig,
        transactional_id: &str,
        group_id: &str,
        outputs: Vec<OutputTopic>,
        dead_letter_topic: Option<String>,
        tuning: &ProducerTuning,
        lineage: &str,
    ) -> anyhow::Result<Self> {
        // The broker checks a topic's max.message.bytes against a whole
        // batch: one batch may not exceed what the dead-letter topic takes.
        let dead_letter_limit = dead_letter_topic
            .as_deref()
            .and_then(|t| dead_letter_limit(config, t));
        let dead_letter_caps = match (&dead_letter_topic, dead_letter_limit) {
            (Some(t), Some(limit)) => {
                DeadLetterCaps::for_topic_limit(t, limit).map_err(anyhow::Error::msg)?
            }
            _ => DeadLetterCaps::DEFAULT,
        };
        let batch_bytes = dead_letter_limit.map_or(tuning.batch_bytes as usize, |limit| {
            (tuning.batch_bytes as usize).min(limit - DEAD_LETTER_FRAMING)
        });
        let producer: BaseProducer<ClientErrors> = config
            .client_config()
            .set("transactional.id", transactional_id)
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("compression.type", &tuning.compression)
            .set("linger.ms", tuning.linger_ms.to_string())
            .set("batch.size", batch_bytes.to_string())
            .set("transaction.timeout.ms", "120000")
            // Right after a commit the broker answers CONCURRENT_TRANSACTIONS
            // until its markers are written; retrying after the default
            // 100 ms would add that to every window's latency.
            .set("retry.backoff.ms", "5")
            .set("retry.backoff.max.ms", "100")
            // librdkafka's default queue is 1 GiB: sized from the budget.
            .set(
                "queue.buffering.max.messages",
                tuning.queue_messages.to_string(),
            )
            .set(
                "queue.buffering.max.kbytes",
                tuning.queue_kbytes.to_string(),
            )
            .create_with_context(ClientErrors::default())
            .map_err(|e| anyhow::anyhow!("creating the Kafka producer: {e}"))?;
        producer
            .init_transactions(TIMEOUT)
            .map_err(|e| producer.context().explain(&config.brokers, &e))?;
        // Learn the output partitions' leaders now, not with the first
        // window's rows (a freshly created topic takes a moment to appear).
        let mut topics: Vec<&str> = outputs.iter().map(|o| o.topic.as_str()).collect();
        topics.extend(dead_letter_topic.as_deref());
        topics.sort_unstable();
        topics.dedup();
        for t in topics {
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                let ready = producer
                    .client()
                    .fetch_metadata(Some(t), Duration::from_secs(5))
                    .is_ok_and(|md| {
                        md.topics().iter().any(|mt| {
                            mt.error().is_none()
                                && !mt.partitions().is_empty()
                                && mt.partitions().iter().all(|p| p.leader() >= 0)
                        })
                    });
                if ready {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        producer
            .begin_transaction()
            .map_err(|e| anyhow::anyhow!("beginning a Kafka transaction: {e}"))?;
        let group: BaseConsumer<ClientErrors> = config
            .client_config()
            .set("group.id", group_id)
            .set("enable.auto.commit", "false")
            .create_with_context(ClientErrors::default())
            .map_err(|e| anyhow::anyhow!("creating the Kafka consumer for group metadata: {e}"))?;
        let routes = outputs
            .iter()
            .enumerate()
            .map(|(i, o)| ((o.stream.clone(), o.kind), i))
            .collect();
        Ok(Self {
            producer: Arc::new(producer),
            config: config.clone(),
            outputs,
            routes,
            dead_letter_topic,
            dead_letter_caps,
            group_id: group_id.to_string(),
            group,
            records_out: BTreeMap::new(),
            pending: Pending::default(),
            records_committed: 0,
            emitted: Vec::new(),
            delays_ms: Vec::new(),
            scratch: Default::default(),
            call_timeout: tuning.call_timeout,
            stall_limit: tuning.stall_limit,
            lineage: lineage.to_string(),
        })
    }

    /// Records sent in the open transaction.
    /// Bytes of the open transaction's records (kept until its commit).
    pub fn pending_bytes(&self) -> u64 {
        self.pending.bytes()
    }

    pub fn pending_records(&self) -> usize {
        self.pending.len()
    }

    /// Sends every row of `batch` to output `index`.
    pub fn write(&mut self, index: usize, batch: &RecordBatch) -> Result<(), KafkaSinkError> {
        self.emitted.push((Instant::now(), batch.num_rows()));
        *self
            .records_out
            .entry(self.outputs[index].topic.clone())
            .or_default() += batch.num_rows() as u64;
        let mut scratch = std::mem::take(&mut self.scratch);
        let result = self.write_with(index, batch, &mut scratch);
        self.scratch = scratch;
        result
    }

    /// Writes one tombstone (the key, no value) per row: keys an updating
    /// stream deleted, so a compacted topic of its changes is its table.
    pub fn write_tombstones(
        &mut self,
        index: usize,
        batch: &RecordBatch,
    ) -> Result<(), KafkaSinkError> {
        self.emitted.push((Instant::now(), batch.num_rows()));
        *self
            .records_out
            .entry(self.outputs[index].topic.clone())
            .or_default() += batch.num_rows() as u64;
        let (mut keys, mut key_ends) = (Vec::new(), Vec::new());
        let out = &mut self.outputs[index];
        out.keys.keys(batch, &mut keys, &mut key_ends);
        let mut start = 0;
        for &end in &key_ends {
            let record = PendingRecord {
                topic: &out.topic,
                key: Some(&keys[start..end]),
                value: None,
                headers: None,
            };
            start = end;
            self.pending.push(record);
            send(&self.producer, record, &self.config.brokers)?;
        }
        Ok(())
    }

    fn write_with(
        &mut self,
        index: usize,
        batch: &RecordBatch,
        (values, value_ends, keys, key_ends): &mut Scratch,
    ) -> Result<(), KafkaSinkError> {
        values.clear();
        value_ends.clear();
        keys.clear();
        key_ends.clear();
        let out = &mut self.outputs[index];
        out.encoder
            .encode(batch, values, value_ends)
            .map_err(|e| KafkaSinkError::Encode {
                name: out.name.clone(),
                message: e.to_string(),
            })?;
        let keyed = !out.keys.is_empty();
        if keyed {
            out.keys.keys(batch, keys, key_ends);
        }
        let (mut vs, mut ks) = (0, 0);
        for (row, &ve) in value_ends.iter().enumerate() {
            let key = keyed.then(|| {
                let k = &keys[ks..key_ends[row]];
                ks = key_ends[row];
                k
            });
            let record = PendingRecord {
                topic: &out.topic,
                key,
                value: Some(&values[vs..ve]),
                headers: None,
            };
            vs = ve;
            self.pending.push(record);
            send(&self.producer, record, &self.config.brokers)?;
        }
        Ok(())
    }

    /// Sends a malformed input record to the dead-letter topic, with headers
    /// giving the reason and where it came from.
    pub fn dead_letter(&mut self, bad: &DeadLetter) -> Result<(), KafkaSinkError> {
        let Some(topic) = &self.dead_letter_topic else {
            return Ok(());
        };
        let caps = self.dead_letter_caps;
        let (value, value_cut) = cap(&bad.value, caps.value);
        let key = bad.key.as_ref().map(|k| cap(k, caps.key));
        let key_cut = key.as_ref().is_some_and(|(_, cut)| *cut);
        let mut message = bad.error.clone();
        if message.len() > caps.message {
            let mut end = caps.message;
            while !message.is_char_boundary(end) {
                end -= 1;
            }
            message.truncate(end);
            message.push('…');
        }
        let mut headers = serde_json::json!({
            "tickflow.error.reason": bad.reason,
            "tickflow.error.message": message,
            "tickflow.source.table": bad.table,
            "tickflow.source.location": bad.location,
            "tickflow.source.value.size": bad.value.len().to_string(),
        });
        if let Some(k) = &bad.key {
            headers["tickflow.source.key.size"] = k.len().to_string().into();
        }
        let cut: Vec<&str> = [(key_cut, "key"), (value_cut, "value")]
            .into_iter()
            .filter_map(|(c, what)| c.then_some(what))
            .collect();
        if !cut.is_empty() {
            headers["tickflow.dead-letter.truncated"] = cut.join(",").into();
        }
        if let Some(k) = &bad.kafka {
            headers["tickflow.source.topic"] = k.topic.clone().into();
            headers["tickflow.source.partition"] = k.partition.to_string().into();
            headers["tickflow.source.offset"] = k.offset.to_string().into();
            headers["tickflow.source.timestamp"] = k
                .timestamp_ms
                .map(|t| t.to_string())
                .unwrap_or_default()
                .into();
        }
        let headers = headers.to_string();
        let record = PendingRecord {
            topic,
            key: key.as_ref().map(|(k, _)| &k[..]),
            value: Some(&value),
            headers: Some(&headers),
        };
        self.pending.push(record);
        send(&self.producer, record, &self.config.brokers)
    }

    /// Sends state records to `topic` in the open transaction (and keeps
    /// them with its records, to send again if the commit must be retried).
    pub fn stage_state(
        &mut self,
        topic: &str,
        records: &[StateRecord],
    ) -> Result<(), KafkaSinkError> {
        for r in records {
            let record = PendingRecord {
                topic,
                key: Some(r.key.as_bytes()),
                value: Some(&r.value),
                headers: None,
            };
            self.pending.push(record);
            send(&self.producer, record, &self.config.brokers)?;
        }
        Ok(())
    }

    /// Waits until every record of the open transaction is acknowledged.
    pub fn flush(&mut self) -> Result<(), KafkaSinkError> {
        self.wait_delivered();
        self.producer
            .flush(TIMEOUT)
            .map_err(|e| KafkaSinkError::Kafka(format!("flushing output: {e}")))?;
        if let Some(e) = self
            .producer
            .context()
            .last_error()
            .filter(|_| self.producer.context().delivery_failures() > 0)
        {
            return Err(KafkaSinkError::Kafka(e));
        }
        Ok(())
    }

    /// The open transaction's records, for the checkpoint (shared, not
    /// copied).
    pub fn pending_chunks(&mut self) -> Vec<RecordBatch> {
        self.pending.chunks()
    }

    /// Commits the open transaction together with the source `positions`
    /// tagged with `epoch`, then opens the next one.
    pub fn commit_offsets(
        &mut self,
        epoch: u64,
        positions: &Offsets,
    ) -> Result<(), KafkaSinkError> {
        let offsets = tagged_offsets(positions, epoch, &self.lineage)?;
        // Broker restarts and leader moves surface here as retriable or
        // abortable errors. Retriable: try again. Abortable: abort, send the
        // epoch's records again (they are all in `pending`) and retry. Fatal
        // (e.g. fenced by a newer instance): give up. Out of attempts, or
        // stalled: the caller fails over to the checkpoint with a new producer.
        //
        // A call that timed out is resumed by calling it again, and only it:
        // once the offsets are in the transaction, a retry calls only
        // commit_transaction (librdkafka refuses any other call meanwhile).
        let mut attempt = 0;
        let mut offsets_added = false;
        loop {
            attempt += 1;
            self.wait_delivered();
            let group = self.group.group_metadata().ok_or_else(|| {
                KafkaSinkError::Fatal("the consumer has no group metadata".into())
            })?;
            let (added, result) = self.send_offsets_and_commit(&offsets, group, offsets_added)?;
            offsets_added = added;
            let err = match result {
                Ok(()) => break,
                Err(e) => e,
            };
            let KafkaError::Transaction(txn) = &err else {
                return Err(KafkaSinkError::Kafka(format!(
                    "committing the transaction: {err}"
                )));
            };
            if txn.is_fatal() {
                return Err(KafkaSinkError::Fatal(format!(
                    "committing the transaction: {err}"
                )));
            }
            if attempt >= COMMIT_ATTEMPTS {
                return Err(KafkaSinkError::Kafka(format!(
                    "committing the transaction: {err} (gave up after {attempt} attempts)"
                )));
            }
            tracing::warn!(
                attempt,
                "committing the transaction failed, retrying: {err}"
            );
            std::thread::sleep(Duration::from_millis(500 * attempt as u64));
            if txn.txn_requires_abort() {
                self.resend_in_new_transaction()?;
                offsets_added = false;
            }
        }
        self.records_committed += self.pending.len() as u64;
        self.pending = Pending::default();
        let now = Instant::now();
        for (t, rows) in self.emitted.drain(..) {
            let ms = now.duration_since(t).as_secs_f64() * 1000.0;
            // Only the most recent samples are kept: never grow past them.
            self.delays_ms
                .extend(std::iter::repeat_n(ms, rows.min(MAX_DELAY_SAMPLES)));
        }
        if self.delays_ms.len() > MAX_DELAY_SAMPLES {
            let excess = self.delays_ms.len() - MAX_DELAY_SAMPLES;
            self.delays_ms.drain(..excess);
        }
        self.producer
            .begin_transaction()
            .map_err(|e| KafkaSinkError::Kafka(format!("beginning a transaction: {e}")))?;
        Ok(())
    }

    /// Adds the offsets to the open transaction (unless `offsets_added`)
    /// and commits it (see [`Self::transactional_call`]). Returns whether
    /// the offsets are in the transaction now, and how the commit went.
    fn send_offsets_and_commit(
        &mut self,
        offsets: &TopicPartitionList,
        group: ConsumerGroupMetadata,
        offsets_added: bool,
    ) -> Result<(bool, Result<(), KafkaError>), KafkaSinkError> {
        let offsets = offsets.clone();
        let stall = faults::take_stall();
        let timeout = self.call_timeout;
        let hang = || loop {
            std::thread::park();
        };
        self.transactional_call("committing the transaction", move |producer| {
            if stall == Some(InjectedStall::BeforeCommit) {
                hang();
            }
            let t0 = Instant::now();
            if !offsets_added
                && let Err(e) = producer.send_offsets_to_transaction(&offsets, &group, timeout)
            {
                if stall == Some(InjectedStall::CommitTimesOut) {
                    faults::arm_again(InjectedStall::CommitTimesOut);
                }
                return (false, Err(e));
            }
            let t1 = Instant::now();
            let result = if stall == Some(InjectedStall::CommitTimesOut) {
                producer.commit_transaction(Duration::ZERO)
            } else {
                producer.commit_transaction(timeout)
            };
            tracing::debug!(
                offsets_ms = (t1 - t0).as_secs_f64() * 1e3,
                commit_ms = t1.elapsed().as_secs_f64() * 1e3,
                ok = result.is_ok(),
                "commit call returned"
            );
            if stall == Some(InjectedStall::AfterCommit) && result.is_ok() {
                hang();
            }
            if stall == Some(InjectedStall::CommitTimesOut) && result.is_ok() {
                // The commit won the race against no time at all (a loaded
                // machine): the timeout has not been acted out yet.
                faults::arm_again(InjectedStall::CommitTimesOut);
            }
            (true, result)
        })
    }

    /// Runs a blocking transactional call on a thread of its own, serving
    /// delivery reports meanwhile, and waits at most the stall limit.
    ///
    /// - Commit and abort wait for every outstanding record's delivery
    ///   report, and with the event API rust-rdkafka uses a report only
    ///   arrives when someone polls: a call made without polling waits out
    ///   its whole timeout ("the event queue must be polled").
    /// - librdkafka can block in `send_offsets_to_transaction` forever,
    ///   ignoring its timeout, when the group coordinator's broker left the
    ///   metadata for a moment, as it does while a broker restarts
    ///   (librdkafka#5456, #5511). A call past the limit is left running (it
    ///   holds the producer, which must not be destroyed under it) and the
    ///   sink reports [`KafkaSinkError::Stalled`].
    fn transactional_call<T: Send + 'static>(
        &self,
        what: &str,
        call: impl FnOnce(&BaseProducer<ClientErrors>) -> T + Send + 'static,
    ) -> Result<T, KafkaSinkError> {
        const RUNNING: u8 = 0;
        const RETURNED: u8 = 1;
        const ABANDONED: u8 = 2;
        let state = Arc::new(AtomicU8::new(RUNNING));
        let producer = Arc::clone(&self.producer);
        let (tx, rx) = mpsc::sync_channel(1);
        let call_state = Arc::clone(&state);
        std::thread::Builder::new()
            .name("kafka-txn".into())
            .spawn(move || {
                let result = call(&producer);
                if call_state.swap(RETURNED, Ordering::AcqRel) == ABANDONED {
                    STUCK_CALLS.fetch_sub(1, Ordering::Relaxed);
                }
                let _ = tx.send(result);
            })
            .map_err(|e| KafkaSinkError::Kafka(format!("{what}: starting a thread: {e}")))?;
        let deadline = Instant::now() + self.stall_limit;
        loop {
            match rx.recv_timeout(Duration::from_millis(1)) {
                Ok(result) => return Ok(result),
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    return Err(KafkaSinkError::Kafka(format!(
                        "{what}: the Kafka client call panicked"
                    )));
                }
                Err(mpsc::RecvTimeoutError::Timeout) if Instant::now() >= deadline => {
                    STUCK_CALLS.fetch_add(1, Ordering::Relaxed);
                    if state
                        .compare_exchange(RUNNING, ABANDONED, Ordering::AcqRel, Ordering::Acquire)
                        .is_err()
                    {
                        // It returned just now after all.
                        STUCK_CALLS.fetch_sub(1, Ordering::Relaxed);
                        continue;
                    }
                    return Err(KafkaSinkError::Stalled(format!(
                        "{what}: the Kafka client did not return within {:?}; abandoning this producer",
                        self.stall_limit
                    )));
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    self.producer.poll(Duration::ZERO);
                }
            }
        }
    }

    /// Serves delivery reports until nothing is in flight (or the timeout).
    /// rdkafka's own flush sleeps in 100 ms steps, which would add up to
    /// 100 ms to every commit; this polls at 1 ms.
    fn wait_delivered(&self) {
        let deadline = Instant::now() + TIMEOUT;
        while self.producer.in_flight_count() > 0 && Instant::now() < deadline {
            self.producer.poll(Duration::from_millis(1));
        }
    }

    /// Aborts the open transaction and sends its records again in a new one.
    fn resend_in_new_transaction(&mut self) -> Result<(), KafkaSinkError> {
        self.transactional_call("aborting the transaction", |producer| {
            producer.abort_transaction(TIMEOUT)
        })?
        .map_err(|e| KafkaSinkError::Kafka(format!("aborting the transaction: {e}")))?;
        self.producer
            .begin_transaction()
            .map_err(|e| KafkaSinkError::Kafka(format!("beginning a transaction: {e}")))?;
        for r in self.pending.records() {
            send(&self.producer, r, &self.config.brokers)?;
        }
        self.producer
            .flush(TIMEOUT)
            .map_err(|e| KafkaSinkError::Kafka(format!("flushing output: {e}")))
    }

    /// Brings the output in line with the restored checkpoint `restored`
    /// (`None`: nothing restored), judged by the epoch and lineage the
    /// group's offsets were last committed with (see [`recovery`]). If the
    /// restored epoch's transaction never committed, sends its records
    /// (`pending`) again and commits them with its offsets. Returns whether
    /// it had to.
    pub fn recover(
        &mut self,
        restored: Option<u64>,
        pending: Vec<RecordBatch>,
        positions: &Offsets,
        fresh_start_allowed: FreshStart,
    ) -> Result<bool, KafkaSinkError> {
        let committed = committed_epoch(&self.config, &self.group_id, positions)?;
        let what = recovery(
            restored,
            committed.as_ref(),
            &self.lineage,
            fresh_start_allowed,
        )
        .map_err(|why| {
            KafkaSinkError::Refused(format!("consumer group {}: {why}", self.group_id))
        })?;
        if let (None, Some(c)) = (restored, &committed)
            && c.epoch > 0
        {
            tracing::warn!(
                group = %self.group_id,
                "starting fresh although the group's offsets were committed by {}: the input \
                 is read again from --start-from",
                c.describe()
            );
        }
        let Some(epoch) = restored.filter(|_| what == Recovery::Resend) else {
            return Ok(false);
        };
        self.pending = Pending::from_checkpoint(pending).map_err(|e| {
            KafkaSinkError::Fatal(format!("checkpointed output has an unexpected layout: {e}"))
        })?;
        for r in self.pending.records() {
            send(&self.producer, r, &self.config.brokers)?;
        }
        self.flush()?;
        self.commit_offsets(epoch, positions)?;
        Ok(true)
    }

    /// Emission-to-commit delay of result rows: (rows, p50, p99, max) in ms.
    pub fn commit_delays(&self) -> Option<CommitDelays> {
        if self.delays_ms.is_empty() {
            return None;
        }
        let mut d = self.delays_ms.clone();
        d.sort_by(f64::total_cmp);
        let q = |p: f64| d[((d.len() - 1) as f64 * p).round() as usize];
        Some(CommitDelays {
            rows: d.len(),
            p50_ms: q(0.5),
            p99_ms: q(0.99),
            max_ms: d[d.len() - 1],
        })
    }
}

fn kafka_offsets(positions: &Positions) -> Result<Offsets, ConnectorError> {
    // Without the source's offsets the transaction would commit no epoch
    // tag, and every restart would send the restored epoch again.
    let p = positions.get(KAFKA_SOURCE).ok_or_else(|| {
        ConnectorError::fatal(anyhow::anyhow!(
            "the Kafka sink commits the offsets of the `{KAFKA_SOURCE}` source, and this run has none"
        ))
    })?;
    offsets_from_json(p).map_err(ConnectorError::fatal)
}

impl From<KafkaSinkError> for ConnectorError {
    fn from(e: KafkaSinkError) -> Self {
        if e.is_transient() {
            ConnectorError::transient(e)
        } else {
            ConnectorError::fatal(e)
        }
    }
}

/// The transactional output of a query as the run loop's [`Sink`]. The
/// producer is created on [`Sink::start`], after the checkpoint is loaded:
/// `init_transactions` fences an older instance only once this one is sure
/// to run, and the committed epoch is read after that (docs/exactly-once.md).
pub struct KafkaOutput {
    config: KafkaConfig,
    transactional_id: String,
    outputs: Option<Vec<OutputTopic>>,
    dead_letter_topic: Option<String>,
    tuning: ProducerTuning,
    lineage: String,
    fresh_start_allowed: FreshStart,
    /// Topic the query's state goes to with each epoch (a query on several
    /// workers); its restore does not depend on this sink then.
    state_topic: Option<String>,
    /// Consumer group of the source offsets, when it is not the
    /// transactional id (several workers, each with its own id).
    group_id: Option<String>,
    sink: Option<KafkaSink>,
}

impl KafkaOutput {
    /// Writes `outputs` (and dead letters) in transactions of
    /// `transactional_id`, which is also the consumer group the source
    /// offsets are committed to, tagged with the checkpoint directory's
    /// `lineage`. With `fresh_start_allowed`, a run that restored nothing
    /// starts even though the group holds offsets of another history
    /// (`--start-fresh`); otherwise that is refused.
    pub fn new(
        config: KafkaConfig,
        transactional_id: String,
        outputs: Vec<OutputTopic>,
        dead_letter_topic: Option<String>,
        tuning: ProducerTuning,
        lineage: String,
        fresh_start_allowed: FreshStart,
    ) -> Self {
        Self {
            config,
            transactional_id,
            outputs: Some(outputs),
            dead_letter_topic,
            tuning,
            lineage,
            fresh_start_allowed,
            state_topic: None,
            group_id: None,
            sink: None,
        }
    }

    /// Commits the source offsets to `group` (default: the transactional id).
    pub fn with_group(mut self, group: String) -> Self {
        self.group_id = Some(group);
        self
    }

    /// Keeps the query's state in `topic`, written in each epoch's
    /// transaction (`crate::runner::shared`): output and state commit
    /// together, so a start has nothing to repair and skips the recovery
    /// from the checkpoint directory.
    pub fn with_state_topic(mut self, topic: Option<String>) -> Self {
        self.state_topic = topic;
        self
    }

    fn sink(&mut self) -> &mut KafkaSink {
        self.sink.as_mut().expect("started")
    }
}

impl Sink for KafkaOutput {
    fn name(&self) -> &str {
        "kafka"
    }

    fn start(
        &mut self,
        restored: Option<RestoredSink<'_>>,
        positions: &Positions,
    ) -> Result<bool, ConnectorError> {
        let group = self.group_id.as_deref().unwrap_or(&self.transactional_id);
        let sink = KafkaSink::open(
            &self.config,
            &self.transactional_id,
            group,
            self.outputs.take().expect("started once"),
            self.dead_letter_topic.clone(),
            &self.tuning,
            &self.lineage,
        )
        .map_err(ConnectorError::setup)?;
        let sink = self.sink.insert(sink);
        if self.state_topic.is_some() {
            // init_transactions (in open) aborted whatever this worker left
            // open; what committed holds output and state together.
            return Ok(false);
        }
        let offsets = kafka_offsets(positions)?;
        let epoch = restored.as_ref().map_or(0, |r| r.epoch);
        let state = restored.map(|r| r.state).unwrap_or_default();
        if sink.recover(
            (epoch > 0).then_some(epoch),
            state,
            &offsets,
            self.fresh_start_allowed,
        )? {
            tracing::warn!(
                epoch,
                "the restored epoch's output was not committed: sent it again"
            );
            return Ok(true);
        }
        // Re-commit the starting offsets (tagged with the restored epoch, or
        // 0) in an empty transaction: it changes nothing, and the
        // coordinator lookups it does are not paid for by the first window's
        // rows.
        sink.commit_offsets(epoch, &offsets)?;
        Ok(false)
    }

    fn write(
        &mut self,
        stream: &str,
        kind: RowKind,
        rows: &RecordBatch,
    ) -> Result<(), ConnectorError> {
        let sink = self.sink();
        if let Some(i) = sink.routes.get(stream, kind) {
            match kind {
                RowKind::Deletes => sink.write_tombstones(i, rows)?,
                _ => sink.write(i, rows)?,
            }
        }
        Ok(())
    }

    fn dead_letters(&mut self, bad: &[DeadLetter]) -> Result<(), ConnectorError> {
        let sink = self.sink();
        for b in bad {
            sink.dead_letter(b)?;
        }
        Ok(())
    }

    fn pre_commit(&mut self, epoch: u64) -> Result<SinkCheckpoint, ConnectorError> {
        // No flush: the epoch's records are in the checkpoint, and the
        // commit waits for their delivery (or fails, and they are re-sent).
        let sink = self.sink();
        Ok(SinkCheckpoint {
            position: serde_json::json!({ "epoch": epoch, "pending_records": sink.pending_records() }),
            state: sink.pending_chunks(),
        })
    }

    fn commit(&mut self, epoch: u64, positions: &Positions) -> Result<(), ConnectorError> {
        let offsets = kafka_offsets(positions)?;
        Ok(self.sink().commit_offsets(epoch, &offsets)?)
    }

    fn stage_state(&mut self, records: &[StateRecord]) -> Result<bool, ConnectorError> {
        let Some(topic) = self.state_topic.clone() else {
            return Ok(false);
        };
        self.sink().stage_state(&topic, records)?;
        Ok(true)
    }

    fn records_out(&self) -> BTreeMap<String, u64> {
        self.sink
            .as_ref()
            .map(|s| s.records_out.clone())
            .unwrap_or_default()
    }

    fn commit_delays(&self) -> Option<CommitDelays> {
        self.sink.as_ref().and_then(KafkaSink::commit_delays)
    }

    fn pending_bytes(&self) -> u64 {
        self.sink.as_ref().map_or(0, KafkaSink::pending_bytes)
    }
}

fn send(
    producer: &BaseProducer<ClientErrors>,
    r: PendingRecord<'_>,
    brokers: &str,
) -> Result<(), KafkaSinkError> {
    let headers = r.headers.map(|json| {
        let map: BTreeMap<String, String> = serde_json::from_str(json).unwrap_or_default();
        map.iter().fold(OwnedHeaders::new(), |h, (k, v)| {
            h.insert(Header {
                key: k,
                value: Some(v.as_bytes()),
            })
        })
    });
    loop {
        let mut record: BaseRecord<'_, [u8], [u8]> = BaseRecord::to(r.topic);
        if let Some(v) = r.value {
            record = record.payload(v);
        }
        if let Some(k) = r.key {
            record = record.key(k);
        }
        if let Some(h) = &headers {
            record = record.headers(h.clone());
        }
        match producer.send(record) {
            Ok(()) => return Ok(()),
            Err((e, _)) if e.rdkafka_error_code() == Some(RDKafkaErrorCode::QueueFull) => {
                producer.poll(Duration::from_millis(50));
            }
            Err((e, _)) => {
                let message = format!("sending to {} at {brokers}: {e}", r.topic);
                // A record too large is refused again after any failover.
                return Err(
                    if e.rdkafka_error_code() == Some(RDKafkaErrorCode::MessageSizeTooLarge) {
                        KafkaSinkError::Fatal(message)
                    } else {
                        KafkaSinkError::Kafka(message)
                    },
                );
            }
        }
    }
}

/// `topic`'s `max.message.bytes`. If it cannot be read (no DescribeConfigs
/// permission), `None`: the defaults, which fit the broker's own default.
fn dead_letter_limit(config: &KafkaConfig, topic: &str) -> Option<usize> {
    crate::kafka::admin::max_message_bytes(config, topic)
        .inspect_err(|e| {
            tracing::warn!(
                "could not read the limits of dead-letter topic {topic} ({e:#}); assuming \
                 the broker's default max.message.bytes"
            )
        })
        .ok()
}

fn tagged_offsets(
    positions: &Offsets,
    epoch: u64,
    lineage: &str,
) -> Result<TopicPartitionList, KafkaSinkError> {
    let mut tpl = TopicPartitionList::new();
    for ((topic, partition), offset) in positions {
        let mut e = tpl.add_partition(topic, *partition);
        e.set_offset(Offset::Offset(*offset))
            .map_err(|e| KafkaSinkError::Fatal(e.to_string()))?;
        e.set_metadata(format!("{EPOCH_TAG}{epoch}{LINEAGE_TAG}{lineage}"));
    }
    Ok(tpl)
}

/// The first `max` bytes of `bytes`, and whether that cut anything.
fn cap(bytes: &[u8], max: usize) -> (Vec<u8>, bool) {
    (bytes[..bytes.len().min(max)].to_vec(), bytes.len() > max)
}

/// The epoch tag of a committed offset's metadata, if it has one.
fn parse_epoch_tag(metadata: &str) -> Option<Committed> {
    let rest = metadata.strip_prefix(EPOCH_TAG)?;
    let (epoch, lineage) = match rest.split_once(LINEAGE_TAG) {
        Some((e, l)) => (e, Some(l.to_string())),
        None => (rest, None),
    };
    Some(Committed {
        epoch: epoch.parse().ok()?,
        lineage,
    })
}

/// The epoch of the offsets last committed for these partitions, if any.
///
/// Called after `init_transactions`, which completes or aborts any earlier
/// transaction of this transactional id, so no offsets of ours can still be
/// pending. The read therefore does not ask for stable offsets (librdkafka
/// asks for them only under `read_committed`): a pending offset commit that
/// is not ours to finish, such as one left behind by a zombie request after
/// a broker restart, would make that read fail until it times out.
///
/// Every commit carries the positions of all partitions read, in one
/// transaction, so their tags agree; a partition without a tag (added to
/// the topic since) is passed over. Taking the highest epoch is then the
/// same as taking any.
fn committed_epoch(
    config: &KafkaConfig,
    group_id: &str,
    positions: &Offsets,
) -> Result<Option<Committed>, KafkaSinkError> {
    let consumer: BaseConsumer<ClientErrors> = config
        .client_config()
        .set("group.id", group_id)
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_uncommitted")
        .create_with_context(ClientErrors::default())
        .map_err(|e| KafkaSinkError::Kafka(format!("creating a Kafka consumer: {e}")))?;
    let mut tpl = TopicPartitionList::new();
    for (topic, partition) in positions.keys() {
        tpl.add_partition(topic, *partition);
    }
    let committed = consumer.committed_offsets(tpl, TIMEOUT).map_err(|e| {
        let e = consumer.context().explain(&config.brokers, &e);
        KafkaSinkError::Kafka(format!(
            "reading the offsets committed to consumer group {group_id}: {e}"
        ))
    })?;
    let mut last: Option<Committed> = None;
    for e in committed.elements() {
        if let Err(err) = e.error() {
            return Err(KafkaSinkError::Kafka(format!(
                "reading the offset committed to consumer group {group_id} for {} [{}]: {err}",
                e.topic(),
                e.partition()
            )));
        }
        if let Some(tag) = parse_epoch_tag(e.metadata())
            && last.as_ref().is_none_or(|l| tag.epoch > l.epoch)
        {
            last = Some(tag);
        }
    }
    Ok(last)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_epoch_tag_carries_the_lineage_and_old_tags_still_parse() {
        let tpl = tagged_offsets(&Offsets::from([(("t".into(), 0), 5)]), 7, "abc").unwrap();
        let md = tpl.elements()[0].metadata().to_string();
        assert_eq!(
            parse_epoch_tag(&md),
            Some(Committed {
                epoch: 7,
                lineage: Some("abc".into())
            })
        );
        assert_eq!(
            parse_epoch_tag("tickflow-epoch=3"),
            Some(Committed {
                epoch: 3,
                lineage: None
            })
        );
        assert_eq!(parse_epoch_tag("something else"), None);
    }

    #[test]
    fn dead_letter_values_keys_and_messages_are_capped_to_fit_the_topic() {
        let d = DeadLetterCaps::DEFAULT;
        let (v, cut) = cap(&vec![7u8; d.value + 1], d.value);
        assert!(cut);
        assert_eq!(v.len(), d.value);
        let (v, cut) = cap(b"small", d.value);
        assert!(!cut);
        assert_eq!(v, b"small");
        let total = |c: DeadLetterCaps| c.value + c.key + c.message + DEAD_LETTER_FRAMING;
        // Within librdkafka's default 1 MB and the broker's default topic limit.
        assert!(total(d) < 1_000_000);
        assert_eq!(DeadLetterCaps::for_topic_limit("t", 1_048_588), Ok(d));
        // A topic that takes less: everything is cut to fit it.
        for limit in [300_000, 64_000, 9_000] {
            let c = DeadLetterCaps::for_topic_limit("t", limit).unwrap();
            assert!(total(c) <= limit, "{limit}: {c:?}");
            let room = limit - DEAD_LETTER_FRAMING;
            assert!(
                c.value >= room / 2,
                "{limit}: most of the room for the value"
            );
        }
        let err = DeadLetterCaps::for_topic_limit("dlq", 2_000).unwrap_err();
        assert!(
            err.contains("dlq") && err.contains("max.message.bytes"),
            "{err}"
        );
    }
}
