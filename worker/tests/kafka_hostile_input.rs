//! Hostile input and a hostile schema registry, through the real Kafka
//! broker: the query keeps running, every good record becomes a row, every
//! bad one a dead letter with its reason, tombstones are counted, and
//! nothing is dropped or diverted without a word.
//!
//! The tests that need a misbehaving registry run their own instance of
//! tests/schema_registry/server.py (`--test-faults`, a free port), never the
//! shared one.

mod kafka_common;

use std::collections::BTreeMap;
use std::io::BufRead;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use kafka_common::*;
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions};
use rdkafka::client::DefaultClientContext;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};
use tickflow_worker::codec::records::ValueFormat;
use tickflow_worker::codec::{BuiltinAvroSchema, SourceTable, confluent};
use tickflow_worker::kafka::{KafkaConfig, RegistryClient, RegistryConfig, Secret};
use tickflow_worker::runner::Source;
use tickflow_worker::source::kafka::{KafkaInput, OnOutOfRange, StartFrom, TopicBinding};

/// A registry of our own (server.py on a free port), stopped on drop.
struct Registry {
    child: Child,
    url: String,
}

impl Registry {
    fn start(extra: &[&str]) -> Self {
        let mut child = Command::new("python3")
            .arg(repo().join("tests/schema_registry/server.py"))
            .args(["--port", "0", "--test-faults"])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("python3 runs the test registry");
        let mut url = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut url)
            .unwrap();
        Self {
            child,
            url: url.trim().to_string(),
        }
    }

    /// Sends a control request (`--test-faults` endpoints) with curl-free
    /// plain HTTP.
    fn control(&self, method: &str, path: &str, body: &str) -> serde_json::Value {
        use std::io::{Read, Write};
        let addr = self.url.trim_start_matches("http://");
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        write!(
            s,
            "{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        let mut text = String::new();
        s.read_to_string(&mut text).unwrap();
        let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
        serde_json::from_str(body).unwrap_or(serde_json::Value::Null)
    }

    fn faults(&self, faults: serde_json::Value) {
        self.control("PUT", "/__test__/faults", &faults.to_string());
    }

    fn requests(&self, path: &str) -> u64 {
        self.control("GET", "/__test__/requests", "")[path]
            .as_u64()
            .unwrap_or(0)
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn producer() -> BaseProducer {
    ClientConfig::new()
        .set("bootstrap.servers", &env().brokers)
        .create()
        .unwrap()
}

/// Appends records to partition `partition` of `topic`; `None` values are
/// tombstones.
fn send(topic: &str, partition: i32, values: &[Option<Vec<u8>>]) {
    let p = producer();
    for v in values {
        let mut r: BaseRecord<'_, str, [u8]> =
            BaseRecord::to(topic).key("AAPL").partition(partition);
        if let Some(v) = v {
            r = r.payload(v.as_slice());
        }
        p.send(r).map_err(|(e, _)| e).unwrap();
    }
    p.flush(Duration::from_secs(10)).unwrap();
}

fn reasons(letters: &[Record]) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for l in letters {
        *out.entry(l.headers["tickflow.error.reason"].clone())
            .or_default() += 1;
    }
    out
}

/// Item 5: refusals (401, 403), throttling (429, 408), a timeout and a 404
/// that is not "unknown id" used to be cached as a broken decoder for the
/// schema id, diverting every later good record to the dead letters; now
/// they rewind and are retried. Unknown ids are dead letters, looked up once
/// per TTL, not once per record. Avro tombstones are skipped, empty values
/// are dead letters.
#[test]
fn registry_refusals_and_throttling_divert_no_good_record_and_unknown_ids_are_asked_once() {
    let e = env();
    let registry = Registry::start(&[]);
    let topics = Topics::new("hostile-reg");
    let dir = tempfile::tempdir().unwrap();
    let count = 3_000u64;
    run_ok(
        worker()
            .args(["produce", "--brokers", &e.brokers])
            .args(["--schema-registry", &registry.url])
            .args(["--seed", "21", "--count", &count.to_string()])
            .args(["--jitter", "0s", "--partitions", "3"])
            .args(topics.produce_args()),
    );
    run_ok(
        worker()
            .args(["produce", "--output-dir"])
            .arg(dir.path())
            .args(["--seed", "21", "--count", &count.to_string()])
            .args(["--jitter", "0s"]),
    );
    let good = read_topic(&e.brokers, &topics.ticks, false);
    let (tick_id, body) = confluent::unframe(&good[0].value).unwrap();
    let mut unknown_id = Vec::new();
    confluent::frame(987_654, body, &mut unknown_id);
    // Spread over the partitions: each asks the registry for the id.
    for p in 0..3 {
        send(
            &topics.ticks,
            p,
            &[
                Some(unknown_id.clone()),
                None,
                Some(Vec::new()),
                Some(unknown_id.clone()),
            ],
        );
    }
    let (unknown, tombstones, empty) = (6u64, 3u64, 3u64);

    // The lookups of the good records' schema meet these first, in this
    // order (a partition may start with an unknown-id record: its lookup
    // is left alone so it can be counted).
    let path = format!("/schemas/ids/{tick_id}");
    registry.faults(serde_json::json!([
        {"path": path, "count": 1, "status": 401},
        {"path": path, "count": 1, "status": 403},
        {"path": path, "count": 1, "status": 404, "error_code": 404,
         "message": "HTTP 404 Not Found (a proxy in front of the registry)"},
        {"path": path, "count": 2, "status": 429, "retry_after": 0},
        {"path": path, "count": 1, "delay": 2.5},
        {"path": path, "count": 1, "status": 408},
    ]));
    let name = unique("hostile-reg-q");
    let out = worker()
        .args(["query", "--sql"])
        .arg(repo().join("sql/ohlc_5s.sql"))
        .args(["--brokers", &e.brokers, "--schema-registry", &registry.url])
        .args(["--schema-registry-timeout", "1s"])
        .args(["--input", &format!("market_ticks=kafka:{}", topics.ticks)])
        .args(["--output", &format!("ohlc_5s=kafka:{name}-out")])
        .args(["--output-format", "json", "--bounded", "--name", &name])
        .arg("--checkpoint-dir")
        .arg(dir.path().join("chk"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    // The trouble was reported, each kind once at least.
    for what in ["HTTP 401", "HTTP 403", "HTTP 404"] {
        assert!(stderr.contains(what), "{what} reported: {stderr}");
    }
    let summary = last_json_line(&out);
    assert_eq!(
        summary["records_in"],
        count + unknown + tombstones + empty,
        "{summary}"
    );
    assert_eq!(
        summary["rows_in"]["market_ticks"], count,
        "every good record is a row: {summary}"
    );
    let dlq = read_topic(&e.brokers, &format!("{name}-dead-letters"), true);
    assert_eq!(
        reasons(&dlq),
        BTreeMap::from([
            ("empty-value".to_string(), empty as usize),
            ("unknown-schema-id".to_string(), unknown as usize),
        ]),
        "only the bad records, with their reasons"
    );
    assert_eq!(dead_letter_total(&summary), unknown + empty, "{summary}");
    // One lookup of the unknown id for the whole run (negative cache),
    // not one per record.
    // Every fault was met: 3 refusals, then one lookup retried through
    // 429, 429, a timeout and 408 to its answer.
    assert_eq!(registry.requests(&path), 8);
    assert_eq!(
        registry.requests("/schemas/ids/987654"),
        1,
        "{}\n{stderr}",
        registry.control("GET", "/__test__/requests", "")
    );
    assert_ohlc_matches_replay(&format!("{name}-out"), dir.path());
}

/// The market_ticks table bound to `topic` as JSON.
fn json_ticks_binding(topic: &str) -> TopicBinding {
    let def = SourceTable::MarketTicks.def();
    TopicBinding {
        table: "market_ticks".into(),
        topic: topic.into(),
        format: ValueFormat::Json,
        arrow_schema: def.schema.clone(),
        avro_schema: SourceTable::MarketTicks.avro_schema().clone(),
    }
}

/// Everything a bounded [`KafkaInput`] gives until it is done.
#[derive(Default, Debug)]
struct Drained {
    records: usize,
    rows: usize,
    dead_letters: BTreeMap<&'static str, usize>,
    skipped: BTreeMap<&'static str, u64>,
    resets: Vec<tickflow_worker::runner::source::OffsetReset>,
}

fn drain(input: &mut KafkaInput) -> Drained {
    let mut d = Drained::default();
    let deadline = Instant::now() + Duration::from_secs(60);
    // At least one poll: it reports what happened at start.
    let mut first = true;
    while first || !input.is_done() {
        first = false;
        assert!(Instant::now() < deadline, "not done: {d:?}");
        let p = input.poll(1000, Duration::from_millis(200)).unwrap();
        assert!(p.trouble.is_none(), "{:?}", p.trouble);
        d.records += p.records;
        d.rows += p.batches.iter().map(|b| b.rows.num_rows()).sum::<usize>();
        for l in &p.dead_letters {
            *d.dead_letters.entry(l.reason).or_default() += 1;
        }
        for (r, n) in p.skipped {
            *d.skipped.entry(r).or_default() += n;
        }
        d.resets.extend(p.offset_resets);
    }
    d
}

fn create_topic(topic: &str, partitions: i32) {
    tickflow_worker::kafka::admin::ensure_topics(
        &KafkaConfig::plaintext(&env().brokers),
        &[topic.to_string()],
        partitions,
        1,
    )
    .unwrap();
}

/// Item 6: in a JSON topic, empty and white-space values were dropped
/// without a trace and tombstones vanished; now empty values are dead
/// letters (`empty-value`) and tombstones are counted (`skipped`), so
/// records = rows + dead letters + skipped.
#[test]
fn json_tombstones_are_counted_and_empty_values_are_dead_letters() {
    let e = env();
    let dir = tempfile::tempdir().unwrap();
    run_ok(
        worker()
            .args(["produce", "--output-dir"])
            .arg(dir.path())
            .args(["--seed", "5", "--count", "300", "--jitter", "0s"]),
    );
    let lines: Vec<String> = std::fs::read_to_string(dir.path().join("market-ticks.jsonl"))
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    let topic = unique("hostile-json");
    create_topic(&topic, 1);
    let mut values: Vec<Option<Vec<u8>>> = Vec::new();
    for (i, l) in lines.iter().enumerate() {
        values.push(Some(l.clone().into_bytes()));
        match i % 100 {
            10 => values.push(None),
            20 => values.push(Some(Vec::new())),
            30 => values.push(Some(b"  \n".to_vec())),
            40 => values.push(Some(b"{\"symbol\": ".to_vec())),
            _ => {}
        }
    }
    send(&topic, 0, &values);
    let n = lines.len();
    let blocks = n.div_ceil(100);

    // The source itself: every record accounted for.
    let mut input = KafkaInput::new(
        KafkaConfig::plaintext(&e.brokers),
        unique("hostile-json-g"),
        vec![json_ticks_binding(&topic)],
        None,
        StartFrom::Earliest,
        OnOutOfRange::Fail,
        true,
    );
    input.start(None).unwrap();
    let d = drain(&mut input);
    assert_eq!(d.records, values.len());
    assert_eq!(d.rows, n, "{d:?}");
    assert_eq!(
        d.dead_letters,
        BTreeMap::from([("empty-value", 2 * blocks), ("invalid-json", blocks)])
    );
    assert_eq!(d.skipped, BTreeMap::from([("tombstone", blocks as u64)]));
    assert_eq!(d.records, d.rows + 3 * blocks + blocks);
    let figures = input.figures();
    assert_eq!(figures.skipped["tombstone"], blocks as u64);
    assert_eq!(figures.records_in[&topic], values.len() as u64);

    // And a query over it: rows of the good lines, the bad ones in the
    // dead-letter topic with their reasons.
    let name = unique("hostile-json-q");
    let summary = run_ok(
        worker()
            .args(["query", "--sql"])
            .arg(repo().join("sql/ohlc_5s.sql"))
            .args(["--brokers", &e.brokers, "--input-format", "json"])
            .args(["--input", &format!("market_ticks=kafka:{topic}")])
            .args(["--output", &format!("ohlc_5s=kafka:{name}-out")])
            .args(["--output-format", "json", "--bounded", "--name", &name])
            .arg("--checkpoint-dir")
            .arg(dir.path().join("chk")),
    );
    assert_eq!(summary["records_in"], values.len() as u64);
    assert_eq!(summary["rows_in"]["market_ticks"], n as u64);
    assert_eq!(
        summary["skipped"]["tombstone"], blocks as u64,
        "tombstones are counted in the run summary"
    );
    let dlq = read_topic(&e.brokers, &format!("{name}-dead-letters"), true);
    assert_eq!(
        reasons(&dlq),
        BTreeMap::from([
            ("empty-value".to_string(), 2 * blocks),
            ("invalid-json".to_string(), blocks),
        ])
    );
    assert_eq!(dead_letter_total(&summary), 3 * blocks as u64);
    assert_ohlc_matches_replay(&format!("{name}-out"), dir.path());
}

/// Deletes the records of `topic/0` before `offset` (what retention does).
fn delete_before(topic: &str, offset: i64) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", &env().brokers)
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, 0, Offset::Offset(offset))
        .unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let result = rt
        .block_on(admin.delete_records(&tpl, &AdminOptions::new()))
        .unwrap();
    for e in result.elements() {
        assert!(e.error().is_ok(), "{e:?}");
    }
}

/// Item 6: a checkpointed offset that retention deleted used to jump to
/// the end of the topic without a word under `--start-from latest`; now the
/// policy decides (earliest / latest / fail), and the move is reported.
#[test]
fn an_out_of_range_checkpoint_follows_the_policy_and_is_reported() {
    let e = env();
    let dir = tempfile::tempdir().unwrap();
    run_ok(
        worker()
            .args(["produce", "--output-dir"])
            .arg(dir.path())
            .args(["--seed", "8", "--count", "100", "--jitter", "0s"]),
    );
    let lines: Vec<Option<Vec<u8>>> =
        std::fs::read_to_string(dir.path().join("market-ticks.jsonl"))
            .unwrap()
            .lines()
            .take(100)
            .map(|l| Some(l.as_bytes().to_vec()))
            .collect();
    assert_eq!(lines.len(), 100);
    let topic = unique("hostile-oor");
    create_topic(&topic, 1);
    send(&topic, 0, &lines);
    delete_before(&topic, 60);
    let checkpoint = serde_json::json!({ format!("{topic}/0"): 10 });
    let input = |policy| {
        KafkaInput::new(
            KafkaConfig::plaintext(&e.brokers),
            unique("hostile-oor-g"),
            vec![json_ticks_binding(&topic)],
            None,
            // The start matters only for partitions without a position.
            StartFrom::Latest,
            policy,
            true,
        )
    };

    let mut earliest = input(OnOutOfRange::Earliest);
    earliest.start(Some(&checkpoint)).unwrap();
    assert_eq!(earliest.position()[format!("{topic}/0")], 60);
    let d = drain(&mut earliest);
    assert_eq!((d.records, d.rows), (40, 40), "what is left is read");
    assert_eq!(d.resets.len(), 1);
    let r = &d.resets[0];
    assert_eq!((r.from, r.to, r.skipped), (10, 60, 50));
    assert_eq!(r.partition, format!("{topic}/0"));
    assert_eq!(earliest.figures().offset_resets[&format!("{topic}/0")], 1);

    let mut latest = input(OnOutOfRange::Latest);
    latest.start(Some(&checkpoint)).unwrap();
    assert_eq!(latest.position()[format!("{topic}/0")], 100);
    let d = drain(&mut latest);
    assert_eq!(d.records, 0);
    assert_eq!(
        d.resets
            .iter()
            .map(|r| (r.from, r.to, r.skipped))
            .collect::<Vec<_>>(),
        [(10, 100, 90)]
    );

    let mut fail = input(OnOutOfRange::Fail);
    let err = fail.start(Some(&checkpoint)).unwrap_err().to_string();
    assert!(
        err.contains("out of range") && err.contains("60..100"),
        "{err}"
    );

    // An in-range checkpoint is not touched.
    let mut ok = input(OnOutOfRange::Fail);
    ok.start(Some(&serde_json::json!({ format!("{topic}/0"): 70 })))
        .unwrap();
    let d = drain(&mut ok);
    assert_eq!((d.records, d.resets.len()), (30, 0));

    // The command line: `fail` stops the query with the reason.
    let name = unique("hostile-oor-q");
    let chk = dir.path().join("chk");
    let first = worker()
        .args(["query", "--sql"])
        .arg(repo().join("sql/ohlc_5s.sql"))
        .args(["--brokers", &e.brokers, "--input-format", "json"])
        .args(["--input", &format!("market_ticks=kafka:{topic}")])
        .args(["--output", &format!("ohlc_5s=kafka:{name}-out")])
        .args(["--output-format", "json", "--bounded", "--name", &name])
        .arg("--checkpoint-dir")
        .arg(&chk)
        .output()
        .unwrap();
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    // More records, then retention takes some the checkpoint has not read.
    send(&topic, 0, &lines[..20]);
    delete_before(&topic, 110);
    let again = worker()
        .args(["query", "--sql"])
        .arg(repo().join("sql/ohlc_5s.sql"))
        .args(["--brokers", &e.brokers, "--input-format", "json"])
        .args(["--input", &format!("market_ticks=kafka:{topic}")])
        .args(["--output", &format!("ohlc_5s=kafka:{name}-out")])
        .args(["--output-format", "json", "--bounded", "--name", &name])
        .args(["--on-offset-out-of-range", "fail", "--max-failovers", "0"])
        .arg("--checkpoint-dir")
        .arg(&chk)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&again.stderr);
    assert!(!again.status.success(), "{stderr}");
    assert!(
        stderr.contains("offset 100 is out of range") && stderr.contains("110..120"),
        "{stderr}"
    );
}

/// Test CA and a server certificate for 127.0.0.1 signed by it (openssl CLI).
fn test_certificates(dir: &Path) {
    let run = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("the openssl command line tool");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
    ];
    let mut ca = vec!["req", "-x509"];
    ca.extend(ec);
    ca.extend([
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=tickflow-test-ca",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign",
    ]);
    run(&ca);
    let mut csr = vec!["req"];
    csr.extend(ec);
    csr.extend([
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=127.0.0.1",
    ]);
    run(&csr);
    std::fs::write(
        dir.join("ext"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    run(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.pem",
        "-days",
        "2",
        "-extfile",
        "ext",
    ]);
}

/// Item 13: the registry client speaks HTTPS (rustls) verified with a given
/// CA, sends credentials over it, refuses a server it cannot verify, and
/// refuses to send credentials over plain HTTP unless told to.
#[test]
fn an_https_registry_is_verified_and_credentials_are_refused_over_plain_http() {
    let e = env();
    let certs = tempfile::tempdir().unwrap();
    test_certificates(certs.path());
    let cert = certs.path().join("server.pem");
    let key = certs.path().join("server.key");
    let tls = Registry::start(&[
        "--basic-auth",
        "ops:s3cret",
        "--tls-cert",
        cert.to_str().unwrap(),
        "--tls-key",
        key.to_str().unwrap(),
    ]);
    assert!(tls.url.starts_with("https://"), "{}", tls.url);
    let ca = certs.path().join("ca.pem");
    let client = |ca: Option<&Path>| {
        let mut c = RegistryConfig::new(tls.url.clone());
        c.username = Some("ops".into());
        c.password = Some(Secret::new("s3cret"));
        c.ca_file = ca.map(Path::to_path_buf);
        c.attempts = 1;
        RegistryClient::try_new(c).unwrap()
    };
    let schema = SourceTable::MarketTicks.avro_schema();
    let id = client(Some(&ca)).register("tls-value", schema).unwrap();
    assert_eq!(
        serde_json::to_value(&*client(Some(&ca)).schema_by_id(id).unwrap()).unwrap(),
        serde_json::to_value(schema).unwrap()
    );
    // The system's trust store does not know the test CA.
    let refused = client(None).schema_by_id(id).unwrap_err().to_string();
    assert!(refused.to_lowercase().contains("certificate"), "{refused}");

    // The worker end to end: produce through the HTTPS registry.
    let topics = Topics::new("hostile-tls");
    let produce = |registry: &str, extra: &[&str]| {
        worker()
            .args(["produce", "--brokers", &e.brokers, "--count", "200"])
            .args(["--schema-registry", registry])
            .args(["--schema-registry-username", "ops"])
            .env("SCHEMA_REGISTRY_PASSWORD", "s3cret")
            .args(extra)
            .args(topics.produce_args())
            .output()
            .unwrap()
    };
    let ok = produce(
        &tls.url,
        &["--schema-registry-ca-location", ca.to_str().unwrap()],
    );
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert_eq!(last_json_line(&ok)["ticks"], 200);

    // Credentials over plain HTTP: refused before anything is sent.
    let plain = Registry::start(&["--basic-auth", "ops:s3cret"]);
    let out = produce(&plain.url, &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("plain HTTP") && stderr.contains("--schema-registry-allow-insecure-auth"),
        "{stderr}"
    );
    assert!(!stderr.contains("s3cret"), "{stderr}");
    assert!(stderr.lines().count() <= 3, "one clear error: {stderr}");
    let total: u64 = plain
        .control("GET", "/__test__/requests", "")
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_u64().unwrap())
        .sum();
    assert_eq!(total, 0, "nothing reached the registry");
    // Allowed explicitly, it works.
    let allowed = produce(&plain.url, &["--schema-registry-allow-insecure-auth"]);
    assert!(
        allowed.status.success(),
        "{}",
        String::from_utf8_lossy(&allowed.stderr)
    );
}
