//! The checkpoint directory against the consumer group, on the real broker:
//! the situations where a restart used to write output twice or skip it
//! (docs/exactly-once.md, "Restart"). Each is either handled with the output
//! still exactly that of an uninterrupted run, or refused with a clear error
//! and nothing written.
//!
//! - two workers on one checkpoint directory: the second is refused by the
//!   directory lock;
//! - a checkpoint older than what the group committed (a copy of the
//!   directory, as an evicted pod's replacement saw it): refused;
//! - a stale directory of another lineage (a reverted stateless revision):
//!   refused; older `rev-*` directories are removed once a newer revision
//!   has checkpointed;
//! - no checkpoint while the group holds offsets (a lost volume): refused;
//!   `--start-fresh` starts over; a crash before the first checkpoint still
//!   restarts by itself;
//! - a corrupt newest checkpoint: the previous one is restored when that is
//!   exactly-once (its successor never committed), refused when not;
//! - a full disk (a small tmpfs): the oldest checkpoint is pruned, the epoch
//!   is put off while nothing fits, and the run carries on;
//! - a malformed record larger than the producer's `message.max.bytes`
//!   reaches the dead-letter topic, truncated, with headers.

mod kafka_common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use kafka_common::*;
use rdkafka::ClientConfig;
use rdkafka::admin::{
    AdminClient, AdminOptions, AlterConfig, NewTopic, ResourceSpecifier, TopicReplication,
};
use rdkafka::client::DefaultClientContext;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};

const STREAMS: [&str; 2] = ["ohlc_5s", "large_trades"];

struct Data {
    topics: Topics,
    sql: PathBuf,
    dir: tempfile::TempDir,
}

fn data(prefix: &str, seed: u64, ticks: u64) -> Data {
    let topics = Topics::new(prefix);
    let dir = tempfile::tempdir().unwrap();
    let summary = produce_to_kafka(&topics, seed, ticks, "0s");
    assert_eq!(summary["ticks"], ticks);
    let sql = dir.path().join("q.sql");
    let text: String = STREAMS
        .iter()
        .map(|s| std::fs::read_to_string(repo().join(format!("sql/{s}.sql"))).unwrap())
        .collect::<Vec<_>>()
        .join("\n");
    std::fs::write(&sql, text).unwrap();
    Data { topics, sql, dir }
}

/// The query `name` writing its streams to `<out>-<stream>`.
fn query(d: &Data, name: &str, out: &str, chk: &Path) -> Command {
    let e = env();
    let mut c = worker();
    c.args(["query", "--sql"])
        .arg(&d.sql)
        .args(["--brokers", &e.brokers, "--schema-registry", &e.registry])
        .args(["--input", &format!("market_ticks=kafka:{}", d.topics.ticks)])
        .args(["--output-format", "json", "--name", name])
        .args(["--checkpoint-interval", "10ms", "--batch-size", "1000"])
        .arg("--checkpoint-dir")
        .arg(chk);
    for s in STREAMS {
        c.args(["--output", &format!("{s}=kafka:{out}-{s}")]);
    }
    c
}

fn bounded(d: &Data, name: &str, out: &str, chk: &Path) -> Command {
    let mut c = query(d, name, out, chk);
    c.arg("--bounded");
    c
}

type Rows = BTreeMap<&'static str, Vec<serde_json::Value>>;

/// What `read_committed` readers see of the output `<out>-<stream>`.
fn output(out: &str) -> Rows {
    STREAMS
        .iter()
        .map(|s| {
            let records = read_topic(&env().brokers, &format!("{out}-{s}"), true);
            (*s, json_rows(&records))
        })
        .collect()
}

/// The output of one uninterrupted run.
fn reference(d: &Data) -> Rows {
    let name = unique("ref");
    run_ok(&mut bounded(d, &name, &name, &d.dir.path().join(&name)));
    let rows = output(&name);
    for s in STREAMS {
        assert!(!rows[s].is_empty(), "{s}: the reference has rows");
    }
    rows
}

fn assert_output(what: &str, out: &str, want: &Rows) {
    let got = output(out);
    for s in STREAMS {
        assert_same_rows(&format!("{what}: {s}"), got[s].clone(), want[s].clone());
    }
}

/// A run that must fail; its stderr.
fn refused(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "the run was not refused:\n{stderr}");
    stderr
}

fn checkpoints(dir: &Path) -> Vec<u64> {
    let mut ids: Vec<u64> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(Result::ok)
                .filter_map(|e| {
                    let name = e.file_name().to_string_lossy().to_string();
                    name.strip_prefix("chk-")?.parse().ok()
                })
                .collect()
        })
        .unwrap_or_default();
    ids.sort_unstable();
    ids
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap().flatten() {
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), target).unwrap();
        }
    }
}

fn sigterm(child: &std::process::Child) {
    assert!(
        Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap()
            .success()
    );
}

fn wait_for(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn stderr_of(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A second worker on a checkpoint directory in use (an evicted pod's
/// replacement while the old pod takes its final checkpoint on the same
/// ReadWriteOnce volume) is refused by the lock; once the first is gone it
/// takes over, and the output is exactly that of one run.
#[test]
fn a_second_worker_on_a_checkpoint_directory_in_use_is_refused() {
    let d = data("lock", 11, 100_000);
    let want = reference(&d);
    let name = unique("lock-q");
    let chk = d.dir.path().join("chk");
    let mut first = query(&d, &name, &name, &chk)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for(
        "the first worker's checkpoint",
        Duration::from_secs(60),
        || !checkpoints(&chk).is_empty(),
    );
    let stderr = refused(&mut bounded(&d, &name, &name, &chk));
    assert!(
        stderr.contains("is in use by another worker")
            && stderr.contains(&format!("pid {}", first.id())),
        "{stderr}"
    );
    sigterm(&first);
    assert!(first.wait().unwrap().success());
    let summary = run_ok(&mut bounded(&d, &name, &name, &chk));
    assert!(summary["restored_from"].is_u64(), "{summary}");
    assert_output("two workers, one directory", &name, &want);
}

/// A checkpoint older than what the group committed, from the same
/// directory's history (the directory as an evicted pod's replacement saw
/// it while the old pod committed on): restoring it would write the later
/// epochs again, so it is refused, and nothing is written.
#[test]
fn a_checkpoint_behind_the_committed_epoch_is_refused() {
    let d = data("behind", 12, 100_000);
    let want = reference(&d);
    let name = unique("behind-q");
    let chk = d.dir.path().join("chk");
    let stale = d.dir.path().join("stale");
    let out = bounded(&d, &name, &name, &chk)
        .env("TICKFLOW_CRASH_AT", "after-commit:2")
        .output()
        .unwrap();
    assert!(!out.status.success(), "crash point reached");
    copy_dir(&chk, &stale);
    std::fs::remove_file(stale.join(".lock")).unwrap();
    run_ok(&mut bounded(&d, &name, &name, &chk));
    assert_output("the full run", &name, &want);

    let stderr = refused(&mut bounded(&d, &name, &name, &stale));
    assert!(
        stderr.contains("after the restored checkpoint 2")
            && stderr.contains("would write it again"),
        "{stderr}"
    );
    assert_output("after the refused restart", &name, &want);
}

/// Stateless upgrades: each spec revision has its own `rev-*` directory. A
/// new revision starts empty only when told to; once it has checkpointed
/// the older revision's directory is gone, and a stale copy of it (as a
/// reverted spec would find if it were still there) is refused. No refused
/// run writes anything.
#[test]
fn a_stale_revision_directory_is_refused_and_older_revisions_are_removed() {
    let d = data("rev", 13, 60_000);
    let want = reference(&d);
    let name = unique("rev-q");
    let root = d.dir.path().join("checkpoints");
    let rev_a = root.join("rev-a");
    let rev_b = root.join("rev-b");
    run_ok(&mut bounded(&d, &name, &name, &rev_a));
    assert_output("revision a", &name, &want);
    let stale = d.dir.path().join("stale-copy-of-rev-a");
    copy_dir(&rev_a, &stale);
    std::fs::remove_file(stale.join(".lock")).unwrap();

    // Revision b, output to other topics: an empty directory while the
    // group holds revision a's offsets is refused...
    let out_b = format!("{name}-b");
    let stderr = refused(&mut bounded(&d, &name, &out_b, &rev_b));
    assert!(
        stderr.contains("holds no checkpoint") && stderr.contains("--start-fresh"),
        "{stderr}"
    );
    // ...unless it is a stateless upgrade, which starts from --start-from.
    run_ok(bounded(&d, &name, &out_b, &rev_b).arg("--start-fresh-if-no-checkpoint"));
    assert_output("revision b", &out_b, &want);
    assert!(!rev_a.exists(), "the older revision was removed");
    assert!(!checkpoints(&rev_b).is_empty());

    // Revision a's stale checkpoints against revision b's commits.
    let stderr = refused(&mut bounded(&d, &name, &name, &stale));
    assert!(
        stderr.contains("not by this checkpoint directory") && stderr.contains("stale"),
        "{stderr}"
    );
    assert_output("revision a after the refusal", &name, &want);
    assert_output("revision b after the refusal", &out_b, &want);
}

/// No checkpoint while the group holds offsets of an epoch (a lost volume,
/// the resource re-created under the same name): refused, as re-reading
/// from --start-from would write the output again; --start-fresh starts
/// over on purpose. A crash before the first checkpoint is no such case:
/// the restart goes ahead by itself.
#[test]
fn a_missing_checkpoint_is_refused_while_the_group_holds_offsets_and_start_fresh_works() {
    let d = data("lost", 14, 60_000);
    let want = reference(&d);
    let name = unique("lost-q");
    let chk = d.dir.path().join("chk");
    let out = bounded(&d, &name, &name, &chk)
        .env("TICKFLOW_CRASH_AT", "before-checkpoint:1")
        .output()
        .unwrap();
    assert!(!out.status.success(), "crash point reached");
    assert!(checkpoints(&chk).is_empty());
    let summary = run_ok(&mut bounded(&d, &name, &name, &chk));
    assert!(summary["restored_from"].is_null(), "{summary}");
    assert_output("after a crash before the first checkpoint", &name, &want);

    // The volume is lost.
    std::fs::remove_dir_all(&chk).unwrap();
    let stderr = refused(&mut bounded(&d, &name, &name, &chk));
    assert!(
        stderr.contains(&format!("consumer group tickflow-{name}"))
            && stderr.contains("holds no checkpoint")
            && stderr.contains("--start-fresh"),
        "{stderr}"
    );
    assert_output("after the refusal", &name, &want);

    // Starting over on purpose re-reads from --start-from (here: the
    // earliest offsets), into other topics to compare.
    let out2 = format!("{name}-fresh");
    let summary = run_ok(bounded(&d, &name, &out2, &chk).arg("--start-fresh"));
    assert!(summary["restored_from"].is_null(), "{summary}");
    assert_output("started fresh", &out2, &want);
    // And the fresh start is a history of its own: a restart resumes it.
    let summary = run_ok(&mut bounded(&d, &name, &out2, &chk));
    assert!(summary["restored_from"].is_u64(), "{summary}");
    assert_output("started fresh, restarted", &out2, &want);
}

/// Flips a byte in the middle of every Arrow file of checkpoint `id`.
fn corrupt(chk: &Path, id: u64) {
    let dir = chk.join(format!("chk-{id:010}"));
    let mut n = 0;
    for e in std::fs::read_dir(&dir).unwrap().flatten() {
        if e.file_name().to_string_lossy().ends_with(".arrow") {
            let mut bytes = std::fs::read(e.path()).unwrap();
            let mid = bytes.len() / 2;
            bytes[mid] ^= 0x5a;
            std::fs::write(e.path(), bytes).unwrap();
            n += 1;
        }
    }
    assert!(n > 0, "checkpoint {id} has Arrow files");
}

/// The newest checkpoint does not read back. Its epoch never committed
/// (crash between checkpoint and commit): the previous checkpoint is
/// restored with a warning, and the output is exactly once. Its epoch did
/// commit: restoring the previous one would write that epoch again, so the
/// worker refuses, naming both, and writes nothing.
#[test]
fn a_corrupt_newest_checkpoint_falls_back_when_exactly_once_and_is_refused_otherwise() {
    let d = data("corrupt", 15, 100_000);
    let want = reference(&d);

    let name = unique("corrupt-uncommitted");
    let chk = d.dir.path().join(&name);
    let out = bounded(&d, &name, &name, &chk)
        .env("TICKFLOW_CRASH_AT", "after-checkpoint:3")
        .output()
        .unwrap();
    assert!(!out.status.success(), "crash point reached");
    let newest = *checkpoints(&chk).last().unwrap();
    corrupt(&chk, newest);
    let out = bounded(&d, &name, &name, &chk).output().unwrap();
    let stderr = stderr_of(&out);
    assert!(out.status.success(), "{stderr}");
    let summary = last_json_line(&out);
    assert_eq!(summary["restored_from"], newest - 1, "{summary}");
    assert_eq!(summary["skipped_checkpoints"], serde_json::json!([newest]));
    assert!(
        stderr.contains(&format!("checkpoint {newest} is unreadable"))
            && stderr.contains("checksum mismatch"),
        "{stderr}"
    );
    assert!(
        chk.join(format!("chk-{newest:010}.unreadable")).exists(),
        "set aside"
    );
    assert_output("fallback to the previous checkpoint", &name, &want);

    let name = unique("corrupt-committed");
    let chk = d.dir.path().join(&name);
    let out = bounded(&d, &name, &name, &chk)
        .env("TICKFLOW_CRASH_AT", "after-commit:3")
        .output()
        .unwrap();
    assert!(!out.status.success(), "crash point reached");
    let before = output(&name);
    let newest = *checkpoints(&chk).last().unwrap();
    corrupt(&chk, newest);
    let stderr = refused(&mut bounded(&d, &name, &name, &chk));
    assert!(
        stderr.contains(&format!("after the restored checkpoint {}", newest - 1))
            && stderr.contains("did not read back"),
        "{stderr}"
    );
    let after = output(&name);
    for s in STREAMS {
        assert_same_rows(
            &format!("{s} after the refusal"),
            after[s].clone(),
            before[s].clone(),
        );
    }
}

struct Tmpfs(PathBuf);

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

/// Checkpoints on a small tmpfs that is filled up mid-run: the worker
/// prunes the oldest checkpoint and tries again, and while nothing fits it
/// keeps the epoch open (reported, not fatal); once there is room it
/// checkpoints and commits, and the output is exactly once.
#[test]
fn a_full_disk_prunes_old_checkpoints_and_puts_the_epoch_off_instead_of_failing() {
    let d = data("diskfull", 16, 300_000);
    let want = reference(&d);
    let mount = d.dir.path().join("small");
    std::fs::create_dir_all(&mount).unwrap();
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=8m", "tmpfs"])
        .arg(&mount)
        .output();
    match mounted {
        Ok(o) if o.status.success() => {}
        Ok(o) => {
            eprintln!(
                "SKIPPED: cannot mount a tmpfs here (needs root): {}",
                String::from_utf8_lossy(&o.stderr).trim()
            );
            return;
        }
        Err(e) => {
            eprintln!("SKIPPED: cannot run mount: {e}");
            return;
        }
    }
    let _umount = Tmpfs(mount.clone());
    let name = unique("diskfull-q");
    let chk = mount.join("chk");
    let log = d.dir.path().join("worker.log");
    // Unbounded: stopped with SIGTERM below.
    let mut first = query(&d, &name, &name, &chk)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    wait_for("two checkpoints", Duration::from_secs(60), || {
        checkpoints(&chk).len() >= 2
    });
    // Fill the disk to the last byte, and take back whatever pruning frees,
    // until nothing fits and the worker puts an epoch off.
    let filler = mount.join("filler");
    let mut f = std::fs::File::create(&filler).unwrap();
    let fill = |f: &mut std::fs::File| {
        use std::io::Write;
        for size in [64 * 1024, 1024, 1] {
            let block = vec![0u8; size];
            while f.write_all(&block).is_ok() {}
        }
    };
    let log_has = |what: &str| std::fs::read_to_string(&log).is_ok_and(|l| l.contains(what));
    wait_for(
        "the worker to put an epoch off",
        Duration::from_secs(60),
        || {
            fill(&mut f);
            log_has("the epoch stays open")
        },
    );
    assert!(
        log_has("disk full writing a checkpoint: pruned the oldest checkpoint"),
        "{}",
        std::fs::read_to_string(&log).unwrap()
    );
    assert!(first.try_wait().unwrap().is_none(), "still running");
    assert_eq!(checkpoints(&chk).len(), 1, "the newest checkpoint is kept");
    drop(f);
    std::fs::remove_file(&filler).unwrap();
    let after = checkpoints(&chk).last().copied();
    wait_for(
        "a checkpoint once the disk has room again",
        Duration::from_secs(60),
        || checkpoints(&chk).last().copied() > after,
    );
    sigterm(&first);
    let status = first.wait().unwrap();
    assert!(
        status.success(),
        "{}",
        std::fs::read_to_string(&log).unwrap()
    );
    // The rest of the input (if any), bounded, from the checkpoint.
    let summary = run_ok(&mut bounded(&d, &name, &name, &chk));
    assert!(summary["restored_from"].is_u64(), "{summary}");
    assert_output("through a full disk", &name, &want);
}

/// A malformed record larger than librdkafka's default `message.max.bytes`
/// (1,000,000) used to fail the dead-letter send with MsgSizeTooLarge,
/// which is fatal. It reaches the dead-letter topic truncated, with the
/// reason, source topic, partition, offset and original size in headers.
#[test]
fn a_dead_letter_larger_than_the_producer_limit_arrives_truncated_with_headers() {
    let e = env();
    let d = data("bigdlq", 18, 5_000);
    // Let the input topic take a 3 MB record.
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", &e.brokers)
        .create()
        .unwrap();
    let alter = AlterConfig::new(ResourceSpecifier::Topic(&d.topics.ticks))
        .set("max.message.bytes", "8000000");
    let results =
        futures::executor::block_on(admin.alter_configs(&[alter], &AdminOptions::new())).unwrap();
    for r in results {
        r.unwrap();
    }
    let big: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8 | 0x80).collect();
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", &e.brokers)
        .set("message.max.bytes", "8000000")
        .create()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        producer
            .send(BaseRecord::to(&d.topics.ticks).key("AAPL").payload(&big))
            .map_err(|(e, _)| e)
            .unwrap();
        producer.flush(Duration::from_secs(30)).unwrap();
        // The topic config takes a moment to reach the broker's log.
        if read_topic(&e.brokers, &d.topics.ticks, false)
            .iter()
            .any(|r| r.value.len() == big.len())
        {
            break;
        }
        assert!(Instant::now() < deadline, "the big record was not accepted");
        std::thread::sleep(Duration::from_millis(500));
    }
    let name = unique("bigdlq-q");
    let summary = run_ok(&mut bounded(&d, &name, &name, &d.dir.path().join("chk")));
    let letters = read_topic(&e.brokers, &format!("{name}-dead-letters"), true);
    assert!(!letters.is_empty(), "{summary}");
    for l in &letters {
        assert_eq!(l.value.len(), 256 * 1024);
        assert_eq!(l.value[..], big[..256 * 1024]);
        assert_eq!(l.headers["tickflow.dead-letter.truncated"], "value");
        assert_eq!(
            l.headers["tickflow.source.value.size"],
            big.len().to_string()
        );
        assert_eq!(l.headers["tickflow.source.topic"], d.topics.ticks);
        assert!(
            l.headers["tickflow.source.partition"]
                .parse::<i32>()
                .is_ok()
        );
        assert!(l.headers["tickflow.source.offset"].parse::<i64>().is_ok());
        assert!(!l.headers["tickflow.error.reason"].is_empty());
    }
    assert_eq!(
        dead_letter_total(&summary),
        letters.len() as u64,
        "{summary}"
    );

    // A dead-letter topic that takes less than the usual cut (50 kB): the
    // dead letter is cut to fit it, instead of failing every transaction.
    let small = unique("bigdlq-small");
    let dlq = format!("{small}-dead-letters");
    let new_topic =
        NewTopic::new(&dlq, 1, TopicReplication::Fixed(1)).set("max.message.bytes", "50000");
    for r in futures::executor::block_on(admin.create_topics(&[new_topic], &AdminOptions::new()))
        .unwrap()
    {
        r.unwrap();
    }
    let summary = run_ok(&mut bounded(
        &d,
        &small,
        &small,
        &d.dir.path().join("chk-small"),
    ));
    let letters = read_topic(&e.brokers, &dlq, true);
    assert!(!letters.is_empty(), "{summary}");
    for l in &letters {
        assert!(
            l.value.len() > 25_000 && l.value.len() < 50_000,
            "{}",
            l.value.len()
        );
        assert_eq!(l.value[..], big[..l.value.len()]);
        assert_eq!(l.headers["tickflow.dead-letter.truncated"], "value");
    }
}
