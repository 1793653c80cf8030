//! The PostgreSQL sink against a real PostgreSQL server
//! (tests/postgres/postgres.sh, Debian's postgresql-15): a replay into
//! tables equals the same replay into files; a kill -9 at every point of
//! the commit sequence ends with exactly the rows of an uninterrupted run;
//! bad credentials and an unreachable server fail with one clear message;
//! each libpq `sslmode` encrypts and checks the server as libpq does.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;

use postgres_common::{client, server};
use serde_json::Value;

mod postgres_common;

/// A windowed aggregate (keyed by window and symbol), an updating
/// aggregate whose HAVING keeps deleting and re-inserting keys, a global
/// updating aggregate (one row) and a row-by-row stream (appended).
const SQL: &str = "
CREATE STREAM bars AS
SELECT symbol, FIRST_VALUE(price) AS open, MAX(price) AS high, MIN(price) AS low,
       LAST_VALUE(price) AS close, SUM(volume) AS volume, COUNT(*) AS ticks
FROM market_ticks GROUP BY symbol, TUMBLE(ts, INTERVAL '5' SECOND) EMIT ON WINDOW CLOSE;

CREATE STREAM even_books AS
SELECT trader_id, symbol, COUNT(*) AS orders, SUM(quantity) AS quantity
FROM order_events GROUP BY trader_id, symbol HAVING COUNT(*) % 2 = 0;

CREATE STREAM totals AS
SELECT COUNT(*) AS ticks, MAX(price) AS high FROM market_ticks;

CREATE STREAM big_ticks AS
SELECT ts, symbol, exchange, price, volume FROM market_ticks WHERE volume > 900;
";

/// Stream → its row key in the reference files (`None`: appended rows).
const STREAMS: &[(&str, Option<&[&str]>)] = &[
    ("bars", Some(&["window_start", "symbol"])),
    ("even_books", Some(&["trader_id", "symbol"])),
    ("totals", Some(&[])),
    ("big_ticks", None),
];

fn worker() -> Command {
    Command::new(env!("CARGO_BIN_EXE_tickflow-worker"))
}

fn ok(out: Output) -> String {
    assert!(
        out.status.success(),
        "command failed: {}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Replay files of the simulator (ticks and orders), made once.
fn data() -> &'static Path {
    static DATA: OnceLock<tempfile::TempDir> = OnceLock::new();
    DATA.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        ok(worker()
            .args([
                "produce", "--count", "120000", "--seed", "5", "--jitter", "400ms",
            ])
            .args(["--format", "jsonl", "--output-dir"])
            .arg(dir.path())
            .output()
            .unwrap());
        dir
    })
    .path()
}

fn query(dir: &Path) -> Command {
    let sql = dir.join("q.sql");
    std::fs::write(&sql, SQL).unwrap();
    let mut c = worker();
    c.arg("query").arg("--sql").arg(&sql);
    for (table, file) in [
        ("market_ticks", "market-ticks"),
        ("order_events", "order-events"),
    ] {
        c.arg("--input").arg(format!(
            "{table}={}",
            data().join(format!("{file}.jsonl")).display()
        ));
    }
    c
}

/// The replay into PostgreSQL tables `<prefix>_<stream>` as query `prefix`.
fn query_into_postgres(dir: &Path, prefix: &str) -> Command {
    query_into_postgres_at(dir, prefix, &server().url)
}

/// Drops what an earlier run of the test left in the database (its
/// tables and its query's committed epoch).
fn forget(prefix: &str) {
    let mut c = client();
    for (stream, _) in STREAMS {
        c.batch_execute(&format!("DROP TABLE IF EXISTS \"{prefix}_{stream}\""))
            .unwrap();
    }
    c.batch_execute(&format!(
        "DO $$ BEGIN IF to_regclass('tickflow_offsets') IS NOT NULL THEN \
         DELETE FROM tickflow_offsets WHERE query = '{prefix}'; END IF; END $$"
    ))
    .unwrap();
}

fn query_into_postgres_at(dir: &Path, prefix: &str, url: &str) -> Command {
    let mut c = query(dir);
    for (stream, _) in STREAMS {
        c.arg("--output")
            .arg(format!("{stream}=postgres:{prefix}_{stream}"));
    }
    c.args(["--postgres-url", url, "--name", prefix])
        .env("TICKFLOW_POSTGRES_PASSWORD", &server().password)
        .arg("--checkpoint-dir")
        .arg(dir.join("checkpoints"));
    c
}

/// A row as JSON with timestamps as epoch milliseconds, so that file and
/// table rows compare as values.
fn normalize(mut row: Value) -> Value {
    for (_, v) in row.as_object_mut().unwrap().iter_mut() {
        if let Some(s) = v.as_str()
            && let Ok(t) = chrono::DateTime::parse_from_rfc3339(s)
        {
            *v = Value::from(t.timestamp_millis());
        }
    }
    row
}

/// Key → row (the last change per key; deletions remove), or for appended
/// streams a sorted list keyed by position.
fn table_of(
    key: Option<&[&str]>,
    rows: impl IntoIterator<Item = Value>,
) -> BTreeMap<String, Value> {
    let mut table = BTreeMap::new();
    let mut appended = Vec::new();
    for row in rows {
        let mut row = normalize(row);
        let deleted = row.as_object_mut().unwrap().remove("deleted") == Some(Value::Bool(true));
        match key {
            Some(key) => {
                let k = key
                    .iter()
                    .map(|c| row[c].to_string())
                    .collect::<Vec<_>>()
                    .join("|");
                match deleted {
                    true => assert!(table.remove(&k).is_some(), "deleted {k}, never written"),
                    false => {
                        table.insert(k, row);
                    }
                }
            }
            None => appended.push(row.to_string()),
        }
    }
    appended.sort();
    for (i, row) in appended.into_iter().enumerate() {
        table.insert(format!("{i:09}"), serde_json::from_str(&row).unwrap());
    }
    table
}

/// Stream → key → row.
type Tables = BTreeMap<&'static str, BTreeMap<String, Value>>;

/// The reference: the same replay into JSON-lines files.
fn reference() -> &'static Tables {
    static REFERENCE: OnceLock<(tempfile::TempDir, Tables)> = OnceLock::new();
    &REFERENCE
        .get_or_init(|| {
            let dir = tempfile::tempdir().unwrap();
            let out = dir.path().join("out");
            ok(query(dir.path())
                .arg("--output-dir")
                .arg(&out)
                .output()
                .unwrap());
            let tables = STREAMS
                .iter()
                .map(|(stream, key)| {
                    let text =
                        std::fs::read_to_string(out.join(format!("{stream}.jsonl"))).unwrap();
                    let rows = text.lines().map(|l| serde_json::from_str(l).unwrap());
                    (*stream, table_of(*key, rows))
                })
                .collect();
            (dir, tables)
        })
        .1
}

fn postgres_table(prefix: &str, stream: &str, key: Option<&[&str]>) -> BTreeMap<String, Value> {
    let rows = client()
        .query(
            &format!("SELECT to_jsonb(t)::text FROM \"{prefix}_{stream}\" t"),
            &[],
        )
        .unwrap();
    table_of(
        key,
        rows.iter()
            .map(|r| serde_json::from_str::<Value>(r.get::<_, &str>(0)).unwrap()),
    )
}

/// Every table equals the file replay's final rows: keys exactly, values
/// exactly (floats included: both sides print the shortest exact form).
fn assert_tables_match_reference(prefix: &str) {
    for (stream, key) in STREAMS {
        let got = postgres_table(prefix, stream, *key);
        let want = &reference()[stream];
        assert!(!want.is_empty(), "{stream}: the reference has rows");
        assert_eq!(got.len(), want.len(), "{prefix}_{stream}: row count");
        for (k, w) in want {
            let g = got
                .get(k)
                .unwrap_or_else(|| panic!("{prefix}_{stream}: no row {k}"));
            let obj = w.as_object().unwrap();
            for (column, value) in obj {
                let gv = &g[column];
                let same = match (gv.as_f64(), value.as_f64()) {
                    (Some(a), Some(b)) => a == b || (a - b).abs() <= 1e-12 * b.abs(),
                    _ => gv == value,
                };
                assert!(
                    same,
                    "{prefix}_{stream} row {k} column {column}: {gv} vs {value}"
                );
            }
        }
    }
}

fn committed_epoch(query: &str) -> Option<i64> {
    client()
        .query_opt(
            "SELECT epoch FROM tickflow_offsets WHERE query = $1",
            &[&query],
        )
        .unwrap()
        .map(|r| r.get(0))
}

#[test]
fn tables_equal_the_file_replay_and_a_second_run_adds_nothing() {
    let dir = tempfile::tempdir().unwrap();
    forget("diff");
    let summary = ok(query_into_postgres(dir.path(), "diff")
        .args(["--checkpoint-interval", "200ms"])
        .output()
        .unwrap());
    let summary: Value = serde_json::from_str(summary.trim()).unwrap();
    assert_tables_match_reference("diff");
    let even = reference()["even_books"].len();
    assert!(even > 10, "even_books keeps {even} keys");
    let epoch = committed_epoch("diff").expect("the epoch is recorded");
    assert!(epoch > 0, "{summary}");
    // A finished query run again restores its last checkpoint, which
    // committed: nothing is written twice. (This time the password comes
    // from a file, as a mounted Secret gives it.)
    let password_file = dir.path().join("pg-password");
    std::fs::write(&password_file, format!("{}\n", server().password)).unwrap();
    ok(query_into_postgres(dir.path(), "diff")
        .env_remove("TICKFLOW_POSTGRES_PASSWORD")
        .arg("--postgres-password-file")
        .arg(&password_file)
        .output()
        .unwrap());
    assert_tables_match_reference("diff");
}

/// One crash point of the commit sequence, hit at the 3rd checkpoint, then
/// runs to the end.
fn crash_then_finish(point: &str) {
    let prefix = format!("crash_{}", point.replace('-', "_"));
    let dir = tempfile::tempdir().unwrap();
    forget(&prefix);
    let crashed = query_into_postgres(dir.path(), &prefix)
        .args(["--checkpoint-interval", "30ms", "--batch-size", "1024"])
        .env("TICKFLOW_CRASH_AT", format!("{point}:3"))
        .stdout(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&crashed.stderr);
    assert!(
        !crashed.status.success() && stderr.contains("TICKFLOW_CRASH_AT"),
        "{point}: the run must crash there: {}\n{stderr}",
        crashed.status
    );
    let restart = query_into_postgres(dir.path(), &prefix).output().unwrap();
    let log = String::from_utf8_lossy(&restart.stderr).to_string();
    ok(restart);
    // Between the checkpoint and COMMIT the epoch exists only in the
    // checkpoint: the restart must commit it from there.
    let resent = log.contains("committed it now");
    assert_eq!(
        resent,
        ["after-checkpoint", "postgres-before-commit"].contains(&point),
        "{point}: {log}"
    );
    assert_tables_match_reference(&prefix);
}

#[test]
fn a_crash_before_the_checkpoint_is_written_loses_and_repeats_nothing() {
    crash_then_finish("before-checkpoint");
}

#[test]
fn a_crash_after_the_checkpoint_before_the_transaction_commits_it_on_restart() {
    crash_then_finish("after-checkpoint");
}

#[test]
fn a_crash_inside_the_transaction_rolls_it_back_and_the_restart_commits_it() {
    crash_then_finish("postgres-before-commit");
}

#[test]
fn a_crash_after_the_commit_writes_nothing_twice() {
    crash_then_finish("after-commit");
}

#[test]
fn bad_credentials_and_an_unreachable_server_are_one_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let wrong = query_into_postgres(dir.path(), "badpw")
        .env("TICKFLOW_POSTGRES_PASSWORD", "wrong")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&wrong.stderr);
    assert!(!wrong.status.success());
    assert!(
        stderr.contains("password authentication failed") && stderr.contains("tickflow@127.0.0.1"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("wrong"),
        "the password is never printed: {stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");

    let dir = tempfile::tempdir().unwrap();
    let unreachable = query_into_postgres_at(
        dir.path(),
        "unreachable",
        "postgres://tickflow@127.0.0.1:1/tickflow",
    )
    .output()
    .unwrap();
    let stderr = String::from_utf8_lossy(&unreachable.stderr);
    assert!(!unreachable.status.success());
    assert!(
        stderr.contains("127.0.0.1:1") && stderr.to_lowercase().contains("connection refused"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
}

/// The outcome of one replay into the server as `user`@`host` with the
/// given URL query string and extra arguments: its stderr if it failed.
fn tls_run(
    prefix: &str,
    user: &str,
    host: &str,
    query: &str,
    extra: &[&str],
) -> Result<(), String> {
    forget(prefix);
    let dir = tempfile::tempdir().unwrap();
    let url = server()
        .url
        .replacen("tickflow@127.0.0.1", &format!("{user}@{host}"), 1);
    let url = if query.is_empty() {
        url
    } else {
        format!("{url}?{query}")
    };
    let out = query_into_postgres_at(dir.path(), prefix, &url)
        .args(extra)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(!stderr.contains(&server().password), "{stderr}");
    if out.status.success() {
        assert_tables_match_reference(prefix);
        Ok(())
    } else {
        Err(stderr)
    }
}

#[test]
fn tls_modes_encrypt_and_check_the_server_as_libpq_does() {
    // `tickflow_tls` is refused without TLS; the server's certificate
    // names `localhost` (not 127.0.0.1) and is signed by `ca.crt`.
    let tls = &server().tls_dir;
    let ca = tls.join("ca.crt").display().to_string();
    let other_ca = tls.join("other-ca.crt").display().to_string();
    let ip = "127.0.0.1";

    let e = tls_run("tls_off", "tickflow_tls", ip, "sslmode=disable", &[]).unwrap_err();
    assert!(
        e.contains("no encryption") && e.contains("tickflow_tls@127.0.0.1"),
        "{e}"
    );
    // prefer (the default) and require encrypt without checking the server.
    tls_run("tls_prefer", "tickflow_tls", ip, "", &[]).unwrap();
    tls_run("tls_require", "tickflow_tls", ip, "sslmode=require", &[]).unwrap();
    // verify-ca checks the chain but not the name.
    let verify_ca = format!("sslmode=verify-ca&sslrootcert={ca}");
    tls_run("tls_ca", "tickflow_tls", ip, &verify_ca, &[]).unwrap();
    let e = tls_run(
        "tls_ca_other",
        "tickflow_tls",
        ip,
        &format!("sslmode=verify-ca&sslrootcert={other_ca}"),
        &[],
    )
    .unwrap_err();
    assert!(
        e.to_lowercase().contains("unknownissuer") || e.contains("unknown issuer"),
        "{e}"
    );
    // verify-full also checks the name.
    let verify_full = format!("sslmode=verify-full&sslrootcert={ca}");
    let e = tls_run("tls_full_ip", "tickflow_tls", ip, &verify_full, &[]).unwrap_err();
    assert!(
        e.contains("NotValidForName") || e.contains("not valid for name"),
        "{e}"
    );
    tls_run("tls_full", "tickflow_tls", "localhost", &verify_full, &[]).unwrap();
    // libpq's environment variables apply where the URL says nothing.
    let e = tls_run(
        "tls_env",
        "tickflow_tls",
        ip,
        "",
        &["--postgres-sslmode", "verify-full"],
    )
    .unwrap_err();
    assert!(e.contains("needs sslrootcert"), "{e}");
    tls_run(
        "tls_env",
        "tickflow_tls",
        "localhost",
        "",
        &[
            "--postgres-sslmode",
            "verify-full",
            "--postgres-sslrootcert",
            &ca,
        ],
    )
    .unwrap();
    // A client certificate logs `tickflow_cert` in without a password.
    let e = tls_run(
        "tls_cert_none",
        "tickflow_cert",
        "localhost",
        &verify_full,
        &[],
    )
    .unwrap_err();
    assert!(e.contains("tickflow_cert"), "{e}");
    let client = |f: &str| tls.join(f).display().to_string();
    tls_run(
        "tls_cert",
        "tickflow_cert",
        "localhost",
        &verify_full,
        &[
            "--postgres-sslcert",
            &client("client.crt"),
            "--postgres-sslkey",
            &client("client.key"),
        ],
    )
    .unwrap();
}
