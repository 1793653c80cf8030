//! Shared helpers of the tests that need the real Kafka broker and the test
//! schema registry (tests/kafka/kafka.sh, tests/schema_registry/registry.sh).
//! Both are started once if they are not running yet.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaResult;
use rdkafka::message::{Headers, Message};
use rdkafka::{Offset, TopicPartitionList};

pub struct Env {
    pub brokers: String,
    pub sasl_brokers: String,
    pub sasl_user: String,
    pub sasl_password: String,
    pub registry: String,
}

pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn script_env(script: &str) -> BTreeMap<String, String> {
    let path = repo().join(script);
    let start = Command::new("bash")
        .arg(&path)
        .arg("start")
        .output()
        .expect("running the start script");
    assert!(
        start.status.success(),
        "{script} start failed:\n{}\n{}",
        String::from_utf8_lossy(&start.stdout),
        String::from_utf8_lossy(&start.stderr)
    );
    let env = Command::new("bash").arg(&path).arg("env").output().unwrap();
    String::from_utf8_lossy(&env.stdout)
        .lines()
        .filter_map(|l| l.trim().strip_prefix("export "))
        .flat_map(|l| l.split_whitespace().map(str::to_string).collect::<Vec<_>>())
        .filter_map(|kv| {
            let (k, v) = kv.split_once('=')?;
            Some((k.to_string(), v.trim_matches(['"', '\'']).to_string()))
        })
        .collect()
}

/// The broker and registry, started on first use.
pub fn env() -> &'static Env {
    static ENV: OnceLock<Env> = OnceLock::new();
    ENV.get_or_init(|| {
        let k = script_env("tests/kafka/kafka.sh");
        let r = script_env("tests/schema_registry/registry.sh");
        Env {
            brokers: k["KAFKA_BROKERS"].clone(),
            sasl_brokers: k["KAFKA_SASL_BROKERS"].clone(),
            sasl_user: k["TICKFLOW_TEST_SASL_USER"].clone(),
            sasl_password: k["TICKFLOW_TEST_SASL_PASSWORD"].clone(),
            registry: r["SCHEMA_REGISTRY_URL"].clone(),
        }
    })
}

/// A name no other test (or earlier run) uses.
pub fn unique(prefix: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
        % 1_000_000_000_000;
    format!(
        "{prefix}-{}-{nanos}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// The worker binary with the Kafka environment cleared (tests pass flags).
/// The last `lines` of the test broker's log (for failure messages).
pub fn broker_log(lines: usize) -> String {
    Command::new("bash")
        .arg(repo().join("tests/kafka/kafka.sh"))
        .args(["logs", &lines.to_string()])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_else(|e| format!("(kafka.sh logs: {e})"))
}

pub fn worker() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_tickflow-worker"));
    for v in [
        "KAFKA_BROKERS",
        "SCHEMA_REGISTRY_URL",
        "KAFKA_SASL_PASSWORD",
        "TICKFLOW_CRASH_AT",
        "TICKFLOW_STALL_AT",
        "TICKFLOW_MAX_FAILOVERS",
        "TICKFLOW_TRANSACTION_STALL_TIMEOUT",
    ] {
        c.env_remove(v);
    }
    c.env("RUST_LOG", "warn");
    c
}

/// How long a test waits for something that should take seconds: a guard
/// against hangs, not a speed target (CI may share the machine with other
/// work, and the broker is a JVM that a busy machine starves first).
pub const HANG_GUARD: Duration = Duration::from_secs(300);

/// A worker started in the background whose stdout and stderr are read as
/// they come: a test that waits on the worker (for a checkpoint, a status)
/// must never leave it blocked on a full pipe, which a busy machine's
/// warnings (slow broker, retries) can fill.
pub struct Drained {
    pub child: std::process::Child,
    stdout: std::thread::JoinHandle<Vec<u8>>,
    stderr: std::thread::JoinHandle<Vec<u8>>,
}

pub fn spawn_drained(cmd: &mut Command) -> Drained {
    use std::io::Read;
    let mut child = cmd
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("worker starts");
    let drain = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = r.read_to_end(&mut buf);
            buf
        })
    };
    let stdout = drain(Box::new(child.stdout.take().expect("piped")));
    let stderr = drain(Box::new(child.stderr.take().expect("piped")));
    Drained {
        child,
        stdout,
        stderr,
    }
}

impl Drained {
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// SIGTERM, as the kubelet stops a pod: the worker commits a final
    /// epoch and exits.
    pub fn terminate(&self) {
        let pid = self.id().to_string();
        let sent = Command::new("kill").args(["-TERM", &pid]).status();
        assert!(sent.is_ok_and(|s| s.success()), "SIGTERM to worker {pid}");
    }

    pub fn try_wait(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().expect("wait on the worker")
    }

    pub fn wait_with_output(mut self) -> Output {
        let status = self.child.wait().expect("wait on the worker");
        Output {
            status,
            stdout: self.stdout.join().expect("stdout reader"),
            stderr: self.stderr.join().expect("stderr reader"),
        }
    }

    /// Waits for a run that must succeed (as [`run_ok`]): its summary line.
    pub fn wait_ok(self) -> serde_json::Value {
        summary_of_success(&self.wait_with_output())
    }
}

pub fn run_ok(cmd: &mut Command) -> serde_json::Value {
    summary_of_success(&cmd.output().expect("worker runs"))
}

/// The summary line of a run that must have succeeded (its stderr if not).
fn summary_of_success(out: &Output) -> serde_json::Value {
    assert!(
        out.status.success(),
        "worker failed ({}):\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    last_json_line(out)
}

pub fn last_json_line(out: &Output) -> serde_json::Value {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout.lines().last().unwrap_or("null");
    serde_json::from_str(line).unwrap_or(serde_json::Value::Null)
}

/// Topic names for one simulated data set.
pub struct Topics {
    pub ticks: String,
    pub orders: String,
    pub books: String,
}

impl Topics {
    pub fn new(prefix: &str) -> Self {
        let p = unique(prefix);
        Self {
            ticks: format!("{p}-ticks"),
            orders: format!("{p}-orders"),
            books: format!("{p}-books"),
        }
    }

    pub fn produce_args(&self) -> Vec<String> {
        vec![
            "--ticks-topic".into(),
            self.ticks.clone(),
            "--orders-topic".into(),
            self.orders.clone(),
            "--books-topic".into(),
            self.books.clone(),
        ]
    }

    pub fn input_args(&self) -> Vec<String> {
        vec![
            "--input".into(),
            format!("market_ticks=kafka:{}", self.ticks),
            "--input".into(),
            format!("order_events=kafka:{}", self.orders),
            "--input".into(),
            format!("book_updates=kafka:{}", self.books),
        ]
    }
}

/// `produce` to Kafka: Avro through the registry, 3 partitions per topic.
pub fn produce_to_kafka(topics: &Topics, seed: u64, count: u64, jitter: &str) -> serde_json::Value {
    let e = env();
    run_ok(
        worker()
            .args([
                "produce",
                "--brokers",
                &e.brokers,
                "--schema-registry",
                &e.registry,
            ])
            .args(["--seed", &seed.to_string(), "--count", &count.to_string()])
            .args(["--jitter", jitter, "--partitions", "3"])
            .args(topics.produce_args()),
    )
}

/// `produce` to Kafka (as [`produce_to_kafka`]) and the same data to files.
pub fn produce_both(
    topics: &Topics,
    seed: u64,
    count: u64,
    jitter: &str,
    dir: &Path,
) -> serde_json::Value {
    let kafka = produce_to_kafka(topics, seed, count, jitter);
    run_ok(worker().args(["produce", "--output-dir"]).arg(dir).args([
        "--seed",
        &seed.to_string(),
        "--count",
        &count.to_string(),
        "--jitter",
        jitter,
    ]));
    kafka
}

/// One consumed message.
#[derive(Clone, Debug)]
pub struct Record {
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub value: Vec<u8>,
    pub headers: BTreeMap<String, String>,
}

/// Reads a whole topic from the beginning up to its current end. With
/// `read_committed`, only committed transactional records are returned.
pub fn read_topic(brokers: &str, topic: &str, read_committed: bool) -> Vec<Record> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", unique("reader"))
        .set("enable.auto.commit", "false")
        .set("fetch.queue.backoff.ms", "5")
        .set(
            "isolation.level",
            if read_committed {
                "read_committed"
            } else {
                "read_uncommitted"
            },
        )
        .create()
        .unwrap();
    // The end is the log end as a read_uncommitted client sees it: a
    // read_committed reader only gets there once every transaction in the
    // topic is resolved, so a hanging transaction fails the caller instead
    // of silently cutting the read short at the last stable offset.
    let ends = log_end_offsets(brokers, topic);
    let mut tpl = TopicPartitionList::new();
    for &p in ends.keys() {
        tpl.add_partition_offset(topic, p, Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&tpl).unwrap();
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let done = consumer
            .position()
            .unwrap()
            .elements()
            .iter()
            .all(|e| match e.offset() {
                Offset::Offset(o) => o >= ends[&e.partition()],
                _ => ends[&e.partition()] == 0,
            });
        // Only the end offsets end the read: right after a broker restart a
        // fetch can stall for seconds, and stopping early would look like
        // lost rows. (An open transaction would keep a read_committed
        // reader short of the end until the deadline: the test then fails,
        // as it should.)
        if done || Instant::now() > deadline {
            break;
        }
        if let Some(m) = consumer.poll(Duration::from_millis(200)) {
            let m = m.unwrap();
            let mut headers = BTreeMap::new();
            if let Some(h) = m.headers() {
                for i in 0..h.count() {
                    let hd = h.get(i);
                    headers.insert(
                        hd.key.to_string(),
                        String::from_utf8_lossy(hd.value.unwrap_or_default()).to_string(),
                    );
                }
            }
            out.push(Record {
                partition: m.partition(),
                offset: m.offset(),
                key: m.key().map(<[u8]>::to_vec),
                value: m.payload().unwrap_or_default().to_vec(),
                headers,
            });
        }
    }
    out
}

/// The log end offset of each partition of `topic` (past any transaction
/// marker), as a `read_uncommitted` client sees it.
pub fn log_end_offsets(brokers: &str, topic: &str) -> BTreeMap<i32, i64> {
    let client: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("isolation.level", "read_uncommitted")
        .create()
        .unwrap();
    let partitions: Vec<i32> = retry_after_restart(|| {
        let md = client.fetch_metadata(Some(topic), Duration::from_secs(10))?;
        Ok(md.topics()[0].partitions().iter().map(|p| p.id()).collect())
    });
    partitions
        .into_iter()
        .map(|p| {
            let (_, high) =
                retry_after_restart(|| client.fetch_watermarks(topic, p, Duration::from_secs(10)));
            (p, high)
        })
        .collect()
}

/// Retries a metadata or offsets query (up to [`HANG_GUARD`]): right after a
/// broker restart they fail with "not leader" until the partitions are loaded.
fn retry_after_restart<T>(mut query: impl FnMut() -> KafkaResult<T>) -> T {
    let deadline = Instant::now() + HANG_GUARD;
    loop {
        match query() {
            Ok(v) => return v,
            Err(e) if Instant::now() < deadline => {
                eprintln!("retrying after: {e}");
                std::thread::sleep(Duration::from_millis(200));
            }
            Err(e) => panic!("{e}"),
        }
    }
}

/// JSON rows of a topic written with `--output-format json`.
pub fn json_rows(records: &[Record]) -> Vec<serde_json::Value> {
    records
        .iter()
        .map(|r| serde_json::from_slice(&r.value).expect("output value is JSON"))
        .collect()
}

/// JSON rows of a JSON-lines file.
pub fn file_rows(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Sort key of a row: its non-float fields.
fn row_key(v: &serde_json::Value) -> String {
    let obj = v.as_object().expect("rows are objects");
    obj.iter()
        .filter(|(_, x)| !x.is_f64())
        .map(|(k, x)| format!("{k}={x}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// Asserts two row sets are equal: same rows, integer and string fields
/// exactly, floats to 1e-9 relative (summation order differs between a
/// partitioned Kafka read and a file replay).
pub fn assert_same_rows(
    what: &str,
    mut got: Vec<serde_json::Value>,
    mut want: Vec<serde_json::Value>,
) {
    assert_eq!(got.len(), want.len(), "{what}: row count");
    got.sort_by_key(row_key);
    want.sort_by_key(row_key);
    for (g, w) in got.iter().zip(&want) {
        let (go, wo) = (g.as_object().unwrap(), w.as_object().unwrap());
        assert_eq!(go.len(), wo.len(), "{what}: columns of {g} vs {w}");
        for (k, wv) in wo {
            let gv = &go[k];
            match (gv.as_f64(), wv.as_f64()) {
                (Some(a), Some(b)) if gv.is_f64() || wv.is_f64() => {
                    let tol = 1e-9 * a.abs().max(b.abs()).max(1.0);
                    assert!(
                        (a - b).abs() <= tol,
                        "{what}: {k}: {a} vs {b} in {g} vs {w}"
                    );
                }
                _ => assert_eq!(gv, wv, "{what}: {k} in {g} vs {w}"),
            }
        }
    }
}

/// Replays `dir/market-ticks.jsonl` through sql/ohlc_5s.sql into
/// `dir/replay.jsonl`, the reference of the Kafka runs; returns its path.
pub fn replay_ohlc(dir: &Path) -> std::path::PathBuf {
    let replay = dir.join("replay.jsonl");
    run_ok(
        worker()
            .args(["query", "--sql"])
            .arg(repo().join("sql/ohlc_5s.sql"))
            .arg("--input")
            .arg(format!(
                "market_ticks={}",
                dir.join("market-ticks.jsonl").display()
            ))
            .arg("--output")
            .arg(format!("ohlc_5s={}", replay.display())),
    );
    replay
}

/// The ohlc_5s rows committed to `topic` are those of a file replay of
/// `dir/market-ticks.jsonl`.
pub fn assert_ohlc_matches_replay(topic: &str, dir: &Path) {
    let replay = replay_ohlc(dir);
    assert_same_rows(
        "ohlc_5s",
        json_rows(&read_topic(&env().brokers, topic, true)),
        file_rows(&replay),
    );
}

/// Dead letters of a run summary, all reasons together.
pub fn dead_letter_total(summary: &serde_json::Value) -> u64 {
    summary["dead_letters"]
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_u64().unwrap())
        .sum()
}
