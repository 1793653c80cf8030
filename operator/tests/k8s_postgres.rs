//! A StreamQuery whose stream goes to a PostgreSQL table, on the real
//! control plane: the Deployment the operator makes (the binding, the
//! password as a mounted Secret file) runs as its pod would (see
//! `k8s_common::pod`) against the real broker and the test PostgreSQL
//! server, over TLS with `verify-full` against a CA from a Secret (the
//! database role is refused without TLS). A wrong password keeps the
//! worker up and the resource Degraded with the reason; fixing the Secret
//! lets it start, and the table gets exactly the rows the worker committed.

mod k8s_common;

use std::process::Command;
use std::time::Duration;

use k8s_common::*;

const PASSWORD_FILE: &str = "/etc/tickflow/postgres-password/password";
const CA_FILE: &str = "/etc/tickflow/postgres-ca/ca.crt";

fn secret_yaml(password: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Secret\nmetadata: {{name: market-db}}\nstringData: {{password: \"{password}\"}}\n"
    )
}

/// The Secret's key as the kubelet would mount it.
fn mount_secret(ns: &str, secret: &str, key: &str, file: &std::path::Path) {
    let data = kc(&[
        "get",
        "secret",
        secret,
        "-n",
        ns,
        "-o",
        &format!("jsonpath={{.data.{}}}", key.replace('.', "\\.")),
    ]);
    let out = Command::new("base64")
        .arg("-d")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin.take().unwrap().write_all(data.as_bytes())?;
            c.wait_with_output()
        })
        .unwrap();
    std::fs::write(file, out.stdout).unwrap();
}

fn psql(pg: &std::collections::BTreeMap<String, String>, sql: &str) -> String {
    let out = Command::new(&pg["TICKFLOW_TEST_PG_PSQL"])
        .args(["-d", &pg["TICKFLOW_TEST_PG_URL"], "-tAc", sql])
        .env("PGPASSWORD", &pg["TICKFLOW_TEST_PG_PASSWORD"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{sql}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn a_table_sink_waits_degraded_for_a_wrong_password_and_writes_once_it_is_fixed() {
    let brokers = server_env("tests/kafka/kafka.sh")["KAFKA_BROKERS"].clone();
    let registry = server_env("tests/schema_registry/registry.sh")["SCHEMA_REGISTRY_URL"].clone();
    let pg = server_env("tests/postgres/postgres.sh");
    let ns = create_namespace("sq-pg");
    let _op = Operator::start(OperatorOptions {
        namespace: &ns,
        leader_election: false,
        lease_name: "unused",
        identity: "postgres-test",
        extra_env: vec![],
    });
    let ticks_count = 20_000;
    let ticks = produce_ticks(&ns, &brokers, &registry, ticks_count);

    apply_ok(&ns, &secret_yaml("not-the-password"));
    let ca = std::path::Path::new(&pg["TICKFLOW_TEST_PG_TLS_DIR"]).join("ca.crt");
    kc(&[
        "create",
        "secret",
        "generic",
        "market-db-ca",
        "-n",
        &ns,
        &format!("--from-file=ca.crt={}", ca.display()),
    ]);
    // The server's certificate names `localhost`; this role needs TLS.
    let url =
        pg["TICKFLOW_TEST_PG_URL"].replacen("tickflow@127.0.0.1", "tickflow_tls@localhost", 1);
    let table = format!("bars_{}", ns.replace('-', "_"));
    let sql = std::fs::read_to_string(repo().join("sql/ohlc_5s.sql")).unwrap();
    let extra = format!(
        "  kafka: {{bootstrapServers: \"{brokers}\", schemaRegistryUrl: \"{registry}\"}}\n  sources: [{{table: market_ticks, topic: {ticks}}}]\n  sinks: [{{stream: ohlc_5s, table: {table}}}]\n  postgres:\n    url: \"{url}\"\n    passwordSecretRef: {{name: market-db, key: password}}\n    sslMode: verify-full\n    caSecretRef: {{name: market-db-ca, key: ca.crt}}\n  checkpoint: {{interval: 500ms}}\n",
    );
    apply_ok(&ns, &stream_query_yaml("bars", &sql, &extra));
    let pod_ip = pod_ip(&ns, "bars");

    // The Deployment binds the stream to the table and names the password
    // file; the password itself is nowhere in it.
    let d = get(&ns, "deployment", "bars").unwrap();
    let pod = &d["spec"]["template"]["spec"];
    let container = &pod["containers"][0];
    assert!(
        container["args"]
            .to_string()
            .contains(&format!("ohlc_5s=postgres:{table}")),
        "{}",
        container["args"]
    );
    for (name, value) in [
        ("TICKFLOW_POSTGRES_PASSWORD_FILE", PASSWORD_FILE),
        ("PGSSLMODE", "verify-full"),
        ("PGSSLROOTCERT", CA_FILE),
    ] {
        assert!(
            container["env"]
                .as_array()
                .unwrap()
                .iter()
                .any(|e| e["name"] == name && e["value"] == value),
            "{name}={value} in {}",
            container["env"]
        );
    }
    assert!(
        pod["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|v| v["secret"]["secretName"] == "market-db"),
        "{}",
        pod["volumes"]
    );
    let spec_text = d.to_string();
    assert!(!spec_text.contains("not-the-password"));
    assert!(!spec_text.contains(&pg["TICKFLOW_TEST_PG_PASSWORD"]));

    let dir = tempfile::tempdir().unwrap();
    let password_file = dir.path().join("password");
    mount_secret(&ns, "market-db", "password", &password_file);
    let ca_file = dir.path().join("ca.crt");
    mount_secret(&ns, "market-db-ca", "ca.crt", &ca_file);
    let mounts = [
        (PASSWORD_FILE, password_file.to_str().unwrap().to_string()),
        (CA_FILE, ca_file.to_str().unwrap().to_string()),
    ];
    let mut child = start_query_pod_with(&ns, "bars", &pod_ip, dir.path(), &mounts);

    // Wrong password: Degraded with the reason, the worker stays up.
    let message = wait_for("Degraded=True", Duration::from_secs(60), || {
        child.assert_running();
        let o = get(&ns, "streamquery", "bars")?;
        let c = condition(&o, "Degraded")?;
        (c["status"] == "True").then(|| c["message"].as_str().unwrap_or_default().to_string())
    });
    assert!(message.contains("password"), "{message}");
    assert!(!message.contains("not-the-password"), "{message}");
    std::thread::sleep(Duration::from_secs(4));
    child.assert_running();
    let log = child.log();
    assert_eq!(
        log.matches("check the user, the password").count(),
        1,
        "one error line while it waits: {log}"
    );
    assert!(!log.contains("not-the-password"), "{log}");

    // The Secret fixed (the kubelet refreshes the mounted file): the worker
    // connects without a restart and catches up. Windows close once every
    // partition has a watermark (or is idle past the worker's 10 s).
    apply_ok(&ns, &secret_yaml(&pg["TICKFLOW_TEST_PG_PASSWORD"]));
    mount_secret(&ns, "market-db", "password", &password_file);
    wait_for("caught up and healthy", Duration::from_secs(90), || {
        child.assert_running();
        let o = get(&ns, "streamquery", "bars")?;
        let s = &o["status"];
        let healthy = condition(&o, "Degraded")?["status"] == "False";
        (healthy
            && s["recordsIn"] == ticks_count
            && s["recordsOut"].as_u64().is_some_and(|n| n > 0)
            && s["lastCheckpoint"]["id"].as_u64().is_some_and(|id| id > 1))
        .then_some(())
    });
    let summary = child.stop().expect("the worker's summary line");

    // The table holds exactly what the worker committed, each window once.
    let committed = summary["rows_out"]["ohlc_5s"].as_u64().unwrap();
    let rows: u64 = psql(&pg, &format!("SELECT count(*) FROM {table}"))
        .parse()
        .unwrap();
    assert!(rows > 0, "summary: {summary}");
    assert_eq!(rows, committed, "rows in {table} vs the worker's summary");
    let distinct: u64 = psql(
        &pg,
        &format!("SELECT count(DISTINCT (window_start, symbol)) FROM {table}"),
    )
    .parse()
    .unwrap();
    assert_eq!(distinct, rows);
    let last_epoch: u64 = psql(
        &pg,
        &format!("SELECT epoch FROM tickflow_offsets WHERE query = '{ns}.bars'"),
    )
    .parse()
    .unwrap();
    assert!(last_epoch > 0);
}
