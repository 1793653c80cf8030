//! A Kafka query into PostgreSQL through the real broker and the real
//! server: killed inside the commit sequence and restarted, its table holds
//! exactly the rows of a file replay of the same data.

mod kafka_common;
mod postgres_common;

use kafka_common::*;
use serde_json::Value;

/// The table's rows as the file sink writes them (timestamps as RFC 3339
/// with milliseconds and `Z`; DOUBLE PRECISION values as floats even when
/// whole, as PostgreSQL's JSON prints them without a fraction).
fn table_rows(table: &str) -> Vec<Value> {
    let mut client = postgres_common::client();
    let doubles: Vec<String> = client
        .query(
            "SELECT column_name::text FROM information_schema.columns \
             WHERE table_name = $1 AND data_type = 'double precision'",
            &[&table],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    client
        .query(&format!("SELECT to_jsonb(t)::text FROM \"{table}\" t"), &[])
        .unwrap()
        .iter()
        .map(|r| {
            let mut row: Value = serde_json::from_str(r.get::<_, &str>(0)).unwrap();
            for (column, v) in row.as_object_mut().unwrap().iter_mut() {
                if doubles.contains(column) {
                    *v = Value::from(v.as_f64().expect("a number"));
                } else if let Some(t) = v
                    .as_str()
                    .and_then(|s| chrono::DateTime::parse_from_rfc3339(s).ok())
                {
                    *v = Value::from(
                        t.with_timezone(&chrono::Utc)
                            .format("%Y-%m-%dT%H:%M:%S%.3fZ")
                            .to_string(),
                    );
                }
            }
            row
        })
        .collect()
}

#[test]
fn a_kafka_query_killed_inside_its_commits_leaves_exactly_the_replays_rows_in_postgres() {
    let e = env();
    let postgres_common::Server { url, password, .. } = postgres_common::server();
    let topics = Topics::new("pg-sink");
    let dir = tempfile::tempdir().unwrap();
    produce_both(&topics, 17, 20_000, "0s", dir.path());
    let replay = replay_ohlc(dir.path());
    for point in ["after-checkpoint", "postgres-before-commit"] {
        let name = unique("pg-sink");
        let table = name.replace('-', "_");
        let chk = dir.path().join(format!("chk-{point}"));
        let query = |crash: Option<&str>| {
            let mut c = worker();
            c.args(["query", "--sql"])
                .arg(repo().join("sql/ohlc_5s.sql"))
                .args(["--brokers", &e.brokers, "--schema-registry", &e.registry])
                .args(["--input", &format!("market_ticks=kafka:{}", topics.ticks)])
                .args(["--output", &format!("ohlc_5s=postgres:{table}")])
                .args(["--postgres-url", url, "--bounded", "--name", &name])
                .args(["--checkpoint-interval", "20ms", "--batch-size", "200"])
                .arg("--checkpoint-dir")
                .arg(&chk)
                .env("TICKFLOW_POSTGRES_PASSWORD", password);
            if let Some(at) = crash {
                c.env("TICKFLOW_CRASH_AT", at);
            }
            c
        };
        let crashed = query(Some(&format!("{point}:1"))).output().unwrap();
        let stderr = String::from_utf8_lossy(&crashed.stderr);
        assert!(
            !crashed.status.success() && stderr.contains("TICKFLOW_CRASH_AT"),
            "{point}: the run must crash there: {}\n{stderr}",
            crashed.status
        );
        let restart = query(None).output().unwrap();
        let log = String::from_utf8_lossy(&restart.stderr);
        assert!(restart.status.success(), "{point}: the restart: {log}");
        // The crash left epoch 1 only in the checkpoint: the restart commits it.
        assert!(log.contains("committed it now"), "{point}: {log}");
        assert_same_rows(
            &format!("ohlc_5s in PostgreSQL after a crash at {point}"),
            table_rows(&table),
            file_rows(&replay),
        );
    }
}
