//! Nexmark through a real broker: the queries of `benchmarks/nexmark` (with
//! `'format' = 'avro'`) reading the Nexmark topics from the beginning to
//! their end (`--bounded`), next to a consume-only baseline over the same
//! topics in the same run.
//!
//! The events are produced once (`produce --nexmark` to Kafka, Avro in the
//! Confluent wire format, 3 partitions per topic, lz4). Each query runs in
//! this process through `run_kafka_query`, as `tickflow-worker query` does:
//! Avro decoded by schema id, one engine thread, Avro output registered with
//! the registry, transactional (exactly-once) output with its final
//! checkpoint and commit. The baseline is a librdkafka consumer
//! (`read_committed`, same fetch settings) that only receives every message
//! of the topics the query reads.
//!
//! Events: the messages of the tables the query reads (q0–q2, q5, q7: bid;
//! q3: auction + person; q4: auction + bid; q8: person + auction), not all events of the stream as
//! the Nexmark convention counts them; both sides count the same messages.
//!
//! Needs the test broker and registry: `tests/kafka/kafka.sh start` and
//! `tests/schema_registry/registry.sh start` (started here if not running).
//! Run: `cargo bench -p tickflow-worker --bench nexmark_kafka`
//! (`TICKFLOW_BENCH_EVENTS` changes the 2 M events,
//! `TICKFLOW_BENCH_QUERIES=q0,q7` runs some queries only).

#[path = "../tests/kafka_common/mod.rs"]
mod kafka_common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use kafka_common::{env, unique};
use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use tickflow_worker::app::kafka_query::{KafkaQueryOptions, run_kafka_query};
use tickflow_worker::app::produce::{self, KafkaTarget, NexmarkProduceOptions, ProduceTarget};
use tickflow_worker::codec::records::ValueFormat;
use tickflow_worker::kafka::{KafkaConfig, RegistryClient, RegistryConfig};
use tickflow_worker::runtime::StatusHandle;
use tickflow_worker::simulator::nexmark::{NexmarkConfig, NexmarkTable};
use tickflow_worker::sink::kafka::ProducerTuning;
use tickflow_worker::source::kafka::StartFrom;

const EVENTS: u64 = 2_000_000;
const PARTITIONS: i32 = 3;

/// The queries and the tables each reads.
const QUERIES: [(&str, &[NexmarkTable]); 8] = [
    ("q0", &[NexmarkTable::Bid]),
    ("q1", &[NexmarkTable::Bid]),
    ("q2", &[NexmarkTable::Bid]),
    ("q3", &[NexmarkTable::Auction, NexmarkTable::Person]),
    ("q4", &[NexmarkTable::Auction, NexmarkTable::Bid]),
    ("q5", &[NexmarkTable::Bid]),
    ("q7", &[NexmarkTable::Bid]),
    ("q8", &[NexmarkTable::Person, NexmarkTable::Auction]),
];

fn topic(prefix: &str, table: NexmarkTable) -> String {
    format!("{prefix}{}", table.name())
}

/// `events` Nexmark events (default configuration: 10 000 events/s of event
/// time, in order) to `<prefix>person`, `<prefix>auction`, `<prefix>bid`.
fn produce(prefix: &str, events: u64) -> BTreeMap<String, u64> {
    let e = env();
    let opts = NexmarkProduceOptions {
        config: NexmarkConfig {
            seed: 8,
            events: Some(events),
            ..NexmarkConfig::default()
        },
        target: ProduceTarget::Kafka(Box::new(KafkaTarget {
            config: KafkaConfig::plaintext(&e.brokers),
            registry: Some(RegistryClient::new(RegistryConfig::new(&e.registry))),
            format: ValueFormat::Avro,
            topics: NexmarkTable::ALL.map(|t| topic(prefix, t)),
            partitions: PARTITIONS,
            replication: 1,
            tuning: ProducerTuning::default(),
        })),
        stop: Arc::new(AtomicBool::new(false)),
        status: None,
    };
    produce::run_nexmark(&opts).expect("produce").topics
}

/// Reads every message of `topics`; returns (messages, seconds from the
/// first message to the last).
fn consume_only(topics: &[String], expected: u64) -> (u64, f64) {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &env().brokers)
        .set("group.id", unique("bench-consume"))
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .set("fetch.queue.backoff.ms", "5")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    for t in topics {
        for p in 0..PARTITIONS {
            tpl.add_partition_offset(t, p, Offset::Beginning).unwrap();
        }
    }
    consumer.assign(&tpl).unwrap();
    let (mut n, mut bytes, mut first) = (0u64, 0usize, None);
    while n < expected {
        match consumer.poll(Duration::from_secs(5)) {
            Some(m) => {
                let m = m.unwrap();
                first.get_or_insert_with(Instant::now);
                bytes += m.payload().map_or(0, <[u8]>::len);
                n += 1;
            }
            None => break,
        }
    }
    std::hint::black_box(bytes);
    (n, first.map_or(0.0, |t| t.elapsed().as_secs_f64()))
}

fn query_options(
    query: &str,
    tables: &[NexmarkTable],
    prefix: &str,
) -> (KafkaQueryOptions, tempfile::TempDir) {
    let e = env();
    let dir = tempfile::tempdir().unwrap();
    let name = unique(&format!("bench-nexmark-{query}"));
    let path = format!("benchmarks/nexmark/{query}.sql");
    let sql = std::fs::read_to_string(kafka_common::repo().join(&path)).unwrap();
    let opts = KafkaQueryOptions {
        sql: sql.replace("'format' = 'json'", "'format' = 'avro'"),
        sql_origin: path,
        kafka: KafkaConfig::plaintext(&e.brokers),
        registry: Some(RegistryClient::new(RegistryConfig::new(&e.registry))),
        inputs: tables
            .iter()
            .map(|&t| (t.name().to_string(), topic(prefix, t)))
            .collect(),
        input_format: ValueFormat::Avro,
        outputs: BTreeMap::from([(query.to_string(), format!("{name}-out"))]),
        late_outputs: BTreeMap::new(),
        postgres_outputs: BTreeMap::new(),
        postgres: None,
        output_format: ValueFormat::Avro,
        dead_letter_topic: Some(format!("{name}-dlq")),
        output_partitions: PARTITIONS,
        replication: 1,
        tuning: ProducerTuning::default(),
        start: StartFrom::Earliest,
        on_out_of_range: Default::default(),
        bounded: true,
        checkpoint_dir: dir.path().to_path_buf(),
        checkpoint_interval: Duration::from_secs(10),
        max_output_delay: Duration::ZERO,
        checkpoints_to_keep: 3,
        start_fresh: false,
        start_fresh_if_no_checkpoint: false,
        max_failovers: 0,
        allowed_lateness: Duration::from_secs(1),
        event_time_bounds: Default::default(),
        idle_timeout: Duration::from_secs(1),
        max_batch_records: 8192,
        parallelism: tickflow_worker::app::Parallelism::default(),
        share: None,
        buffers: tickflow_worker::memory::MemoryBudget(tickflow_worker::memory::DEFAULT_BUDGET)
            .split(),
        status: StatusHandle::new(&name),
        stop: Arc::new(AtomicBool::new(false)),
        name,
    };
    (opts, dir)
}

fn main() {
    let events: u64 = std::env::var("TICKFLOW_BENCH_EVENTS")
        .ok()
        .map_or(EVENTS, |v| v.parse().expect("TICKFLOW_BENCH_EVENTS"));
    let only: Option<Vec<String>> = std::env::var("TICKFLOW_BENCH_QUERIES")
        .ok()
        .map(|v| v.split(',').map(str::to_string).collect());

    let prefix = format!("{}-", unique("bench-nexmark"));
    let t = Instant::now();
    let produced = produce(&prefix, events);
    println!(
        "produced {events} Nexmark events to Kafka (Avro, {PARTITIONS} partitions) in {:.1} s: {produced:?}",
        t.elapsed().as_secs_f64()
    );

    let mut rows = Vec::new();
    for (query, tables) in QUERIES {
        if only.as_ref().is_some_and(|o| !o.iter().any(|q| q == query)) {
            continue;
        }
        let topics: Vec<String> = tables.iter().map(|&t| topic(&prefix, t)).collect();
        let expected: u64 = topics.iter().map(|t| produced[t]).sum();
        let (n, secs) = consume_only(&topics, expected);
        assert_eq!(n, expected, "{query}: consume-only read every message");
        let (opts, _dir) = query_options(query, tables, &prefix);
        let s = run_kafka_query(&opts).unwrap_or_else(|e| panic!("{query}: {e:#}"));
        assert_eq!(s.records_in, expected, "{query}: read every message");
        assert_eq!(s.bad_records, 0, "{query}");
        let q = expected as f64 / (s.processing_ms.max(1) as f64 / 1000.0);
        let b = n as f64 / secs;
        let out = s.rows_out.get(query).copied().unwrap_or_default();
        let names: Vec<&str> = tables.iter().map(|t| t.name()).collect();
        rows.push((query, names.join("+"), expected, q, b, out));
    }

    println!(
        "\nNexmark through the broker (Avro in and out, exactly-once, --bounded, one engine thread) vs consume-only"
    );
    println!("events = messages of the tables the query reads (not all Nexmark events)");
    println!(
        "{:<6} {:<15} {:>10} {:>20} {:>22} {:>7} {:>10}",
        "query",
        "tables",
        "events",
        "tickflow events/s",
        "consume-only events/s",
        "ratio",
        "rows out"
    );
    for (query, tables, n, q, b, out) in &rows {
        println!(
            "{query:<6} {tables:<15} {n:>10} {q:>20.0} {b:>22.0} {:>6.0}% {out:>10}",
            q / b * 100.0
        );
    }
}
