//! Nexmark through the real broker: `produce --nexmark` to Kafka (Avro in
//! the Confluent wire format, the `.avsc` registered as `<topic>-value`)
//! gives the records of `produce --nexmark --output-dir` with the same seed,
//! keyed by id / auction, and the queries of `benchmarks/nexmark` with
//! `'format' = 'avro'` read from those topics (`--bounded`) give every row
//! the same queries give over the files.

mod kafka_common;

use std::collections::HashMap;
use std::path::Path;

use kafka_common::*;
use tickflow_worker::codec::json::JsonLinesEncoder;
use tickflow_worker::codec::{AvroDecoder, confluent};
use tickflow_worker::kafka::{RegistryClient, RegistryConfig};
use tickflow_worker::simulator::nexmark::NexmarkTable;

const SEED: u64 = 17;
const EVENTS: u64 = 50_000;
/// Events per second of event time: 50 000 events span 50 s, five
/// 10-second windows for q7 and q8.
const RATE: u64 = 1_000;

fn nexmark_args() -> Vec<String> {
    [
        "produce",
        "--nexmark",
        "--events",
        &EVENTS.to_string(),
        "--event-rate",
        &RATE.to_string(),
        "--seed",
        &SEED.to_string(),
    ]
    .map(str::to_string)
    .to_vec()
}

/// The JSON rows of a Confluent-framed Avro topic of `table`, decoded with
/// the writer schema from the registry; checks each message's key.
fn decoded_rows(
    registry: &RegistryClient,
    table: NexmarkTable,
    records: &[Record],
) -> Vec<serde_json::Value> {
    records
        .iter()
        .map(|r| {
            let (id, body) = confluent::unframe(&r.value).unwrap();
            let writer = registry.schema_by_id(id).unwrap();
            let mut dec = AvroDecoder::with_writer(&writer, table.avro_schema()).unwrap();
            dec.decode(body).unwrap();
            let mut line = Vec::new();
            JsonLinesEncoder::new()
                .encode_batch(&dec.finish(), &mut line)
                .unwrap();
            let row: serde_json::Value = serde_json::from_slice(&line).unwrap();
            let key = row[table.key_column()].as_i64().unwrap().to_string();
            assert_eq!(
                r.key.as_deref(),
                Some(key.as_bytes()),
                "{}: keyed by {}",
                table.name(),
                table.key_column()
            );
            row
        })
        .collect()
}

/// `benchmarks/nexmark/{query}.sql` over the files in `dir` (JSON lines)
/// and, with `'format' = 'avro'`, over the topics; returns both row sets
/// of the stream `query`.
fn query_both(
    query: &str,
    tables: &[NexmarkTable],
    topics: &HashMap<NexmarkTable, String>,
    dir: &Path,
) -> (Vec<serde_json::Value>, Vec<serde_json::Value>) {
    let e = env();
    let sql_path = repo().join(format!("benchmarks/nexmark/{query}.sql"));
    let sql = std::fs::read_to_string(&sql_path).unwrap();
    assert!(sql.contains("'format' = 'json'"));
    let avro_sql = dir.join(format!("{query}-avro.sql"));
    std::fs::write(
        &avro_sql,
        sql.replace("'format' = 'json'", "'format' = 'avro'"),
    )
    .unwrap();

    let file_out = dir.join(format!("{query}.jsonl"));
    let mut files = worker();
    files.args(["query", "--sql"]).arg(&sql_path);
    for t in tables {
        files.arg("--input").arg(format!(
            "{}={}",
            t.name(),
            dir.join(format!("{}.jsonl", t.name())).display()
        ));
    }
    files
        .arg("--output")
        .arg(format!("{query}={}", file_out.display()));
    let file_summary = run_ok(&mut files);

    let name = unique(&format!("nexmark-{query}"));
    let out_topic = format!("{name}-out");
    let mut kafka = worker();
    kafka.args(["query", "--sql"]).arg(&avro_sql).args([
        "--brokers",
        &e.brokers,
        "--schema-registry",
        &e.registry,
    ]);
    for t in tables {
        kafka.args(["--input", &format!("{}=kafka:{}", t.name(), topics[t])]);
    }
    kafka
        .args(["--output", &format!("{query}=kafka:{out_topic}")])
        .args(["--output-format", "json", "--bounded", "--name", &name])
        .arg("--checkpoint-dir")
        .arg(dir.join(&name));
    let kafka_summary = run_ok(&mut kafka);
    assert_eq!(
        kafka_summary["records_in"], file_summary["records_in"],
        "{query}: every record of the tables read"
    );
    assert_eq!(
        dead_letter_total(&kafka_summary),
        0,
        "{query}: {kafka_summary}"
    );
    assert_eq!(kafka_summary["late_events"], file_summary["late_events"]);
    (
        json_rows(&read_topic(&e.brokers, &out_topic, true)),
        file_rows(&file_out),
    )
}

#[test]
fn nexmark_to_kafka_in_avro_gives_the_file_rows_and_the_queries_the_file_results() {
    let e = env();
    let prefix = format!("{}-", unique("nexmark"));
    let dir = tempfile::tempdir().unwrap();

    // The same events to Kafka (Avro, 3 partitions) and to JSON-lines files.
    let summary = run_ok(
        worker()
            .args(nexmark_args())
            .args(["--brokers", &e.brokers, "--schema-registry", &e.registry])
            .args(["--partitions", "3", "--nexmark-topic-prefix", &prefix]),
    );
    run_ok(
        worker()
            .args(nexmark_args())
            .arg("--output-dir")
            .arg(dir.path()),
    );
    let topics: HashMap<NexmarkTable, String> = NexmarkTable::ALL
        .into_iter()
        .map(|t| (t, format!("{prefix}{}", t.name())))
        .collect();
    assert_eq!(
        summary["persons"].as_u64().unwrap()
            + summary["auctions"].as_u64().unwrap()
            + summary["bids"].as_u64().unwrap(),
        EVENTS
    );

    // Each topic: its schema registered as `<topic>-value` is the table's
    // .avsc, and its records are the file's rows, keyed.
    let registry = RegistryClient::new(RegistryConfig::new(e.registry.clone()));
    for table in NexmarkTable::ALL {
        let topic = &topics[&table];
        let (_, registered) = registry
            .latest_schema(&format!("{topic}-value"))
            .unwrap()
            .expect("the subject is registered");
        assert_eq!(
            registered.canonical_form(),
            table.avro_schema().canonical_form(),
            "{topic}-value is schemas/nexmark_{}.avsc",
            table.name()
        );
        // The logical type (dropped by the canonical form) is registered too.
        assert_eq!(
            serde_json::to_value(&registered).unwrap(),
            serde_json::to_value(table.avro_schema()).unwrap()
        );
        let records = read_topic(&e.brokers, topic, true);
        assert_eq!(
            records.len() as u64,
            summary["topics"][topic].as_u64().unwrap(),
            "{topic}: every record once"
        );
        assert_same_rows(
            topic,
            decoded_rows(&registry, table, &records),
            file_rows(&dir.path().join(format!("{}.jsonl", table.name()))),
        );
    }

    // The queries: every row equal to the file run's.
    for (query, tables, min_rows) in [
        ("q0", &[NexmarkTable::Bid][..], 40_000),
        // A join without time bounds: an updating stream, exactly once.
        ("q3", &[NexmarkTable::Auction, NexmarkTable::Person][..], 5),
        ("q7", &[NexmarkTable::Bid][..], 5),
        ("q8", &[NexmarkTable::Person, NexmarkTable::Auction][..], 5),
    ] {
        let (kafka, files) = query_both(query, tables, &topics, dir.path());
        assert!(
            files.len() >= min_rows,
            "{query}: {} rows over the files",
            files.len()
        );
        assert_same_rows(query, kafka, files);
    }
}
