//! The operator on a real control plane: helm-installed RBAC, objects and
//! status from `kubectl apply`, SQL validation, field rules, rollouts,
//! suspend/resume, garbage collection, and leader election.

mod k8s_common;

use std::time::Duration;

use k8s_common::*;
use serde_json::Value;

fn owned_by(obj: &Value, kind: &str, name: &str) -> bool {
    obj["metadata"]["ownerReferences"]
        .as_array()
        .is_some_and(|o| {
            o.iter()
                .any(|r| r["kind"] == kind && r["name"] == name && r["controller"] == true)
        })
}

fn query_operator(ns: &str) -> Operator {
    Operator::start(OperatorOptions {
        namespace: ns,
        leader_election: false,
        lease_name: "unused",
        identity: "solo",
        extra_env: vec![],
    })
}

/// Waits until the resource's status describes its current generation and
/// `check` holds; returns the resource.
fn wait_status(
    ns: &str,
    kind: &str,
    name: &str,
    what: &str,
    check: impl Fn(&Value) -> bool,
) -> Value {
    wait_for(what, Duration::from_secs(30), || {
        let o = get(ns, kind, name)?;
        let synced = o["status"]["observedGeneration"] == o["metadata"]["generation"];
        (synced && check(&o)).then_some(o)
    })
}

#[test]
fn the_operator_service_account_has_what_it_needs_and_no_more() {
    cluster();
    let sa = "system:serviceaccount:tickflow:tickflow-operator";
    let can = |verb: &str, what: &str, ns: &str| {
        let mut args = vec!["auth", "can-i", verb, "-n", ns, "--as", sa];
        match what.split_once('/') {
            Some((resource, sub)) => args.extend([resource, "--subresource", sub]),
            None => args.push(what),
        }
        kubectl(&args).stdout.starts_with(b"yes")
    };
    for (verb, what) in [
        ("watch", "streamqueries.tickflow.io"),
        ("patch", "streamqueries.tickflow.io/status"),
        ("patch", "marketproducers.tickflow.io/status"),
        ("create", "deployments.apps"),
        ("patch", "deployments.apps"),
        // Worker Deployments beyond a query's new parallelism.
        ("delete", "deployments.apps"),
        ("patch", "persistentvolumeclaims"),
        ("patch", "configmaps"),
        ("patch", "services"),
        ("list", "pods"),
        ("create", "events"),
        // kube-runtime's event recorder uses the events.k8s.io API.
        ("create", "events.events.k8s.io"),
        ("patch", "events.events.k8s.io"),
    ] {
        assert!(
            can(verb, what, "default"),
            "the operator needs to {verb} {what}"
        );
    }
    for (verb, what) in [
        ("get", "secrets"),
        ("delete", "persistentvolumeclaims"),
        // A rescale patches the Deployment itself, not its scale.
        ("patch", "deployments.apps/scale"),
        ("patch", "streamqueries.tickflow.io/scale"),
        ("create", "pods"),
        ("update", "streamqueries.tickflow.io"),
        ("delete", "streamqueries.tickflow.io"),
        ("create", "clusterroles.rbac.authorization.k8s.io"),
        ("create", "leases.coordination.k8s.io"),
    ] {
        assert!(
            !can(verb, what, "default"),
            "the operator must not {verb} {what}"
        );
    }
    // Leases only in its own namespace.
    assert!(can("update", "leases.coordination.k8s.io", "tickflow"));
    // The chart's operator Deployment runs two replicas (KWOK marks them Running).
    let d = get("tickflow", "deployment", "tickflow-operator").expect("chart Deployment");
    assert_eq!(d["spec"]["replicas"], 2);
    assert_eq!(d["status"]["readyReplicas"], 2);
}

#[test]
fn stream_query_lifecycle_from_the_example_manifest() {
    let ns = create_namespace("sq-life");
    let op = query_operator(&ns);
    let manifest = std::fs::read_to_string(repo().join("manifests/streamquery.yaml")).unwrap();
    let start = std::time::Instant::now();
    apply_ok(&ns, &manifest);
    let name = "ohlc-5s";

    // Objects with owner references, within seconds.
    let objects = [
        ("configmap", "ohlc-5s-sql"),
        ("persistentvolumeclaim", "ohlc-5s-checkpoints"),
        ("deployment", name),
        ("service", name),
    ];
    for (kind, obj) in objects {
        let o = wait_for(&format!("{kind}/{obj}"), Duration::from_secs(10), || {
            get(&ns, kind, obj)
        });
        assert!(
            owned_by(&o, "StreamQuery", name),
            "{kind}/{obj} is not owned: {o}"
        );
    }
    let sq = wait_status(&ns, "streamquery", name, "phase Running", |o| {
        o["status"]["phase"] == "Running"
    });
    println!("applied → Running in {:?}", start.elapsed());
    assert_eq!(condition(&sq, "Ready").unwrap()["status"], "True");
    assert_eq!(condition(&sq, "SqlValid").unwrap()["status"], "True");
    assert_eq!(sq["status"]["readyReplicas"], 1);
    assert_eq!(sq["status"]["outputTopics"], serde_json::json!(["ohlc-5s"]));
    let pods = kc(&[
        "get",
        "pods",
        "-n",
        &ns,
        "-l",
        "tickflow.io/instance=ohlc-5s",
        "-o",
        "jsonpath={.items[*].status.phase}",
    ]);
    assert_eq!(pods, "Running");

    // The pod is hardened and the SQL in the ConfigMap is the manifest's.
    let d = get(&ns, "deployment", name).unwrap();
    let pod = &d["spec"]["template"]["spec"];
    let sc = &pod["containers"][0]["securityContext"];
    assert_eq!(sc["readOnlyRootFilesystem"], true);
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    assert_eq!(sc["capabilities"]["drop"], serde_json::json!(["ALL"]));
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(
        pod["securityContext"]["seccompProfile"]["type"],
        "RuntimeDefault"
    );
    let cm = get(&ns, "configmap", "ohlc-5s-sql").unwrap();
    let sql = std::fs::read_to_string(repo().join("sql/ohlc_5s.sql")).unwrap();
    assert_eq!(cm["data"]["query.sql"], sql);

    // `kubectl get streamqueries` reads like a dashboard.
    let table = kc(&["get", "streamqueries", "-n", &ns]);
    let mut lines = table.lines();
    let header: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(
        header,
        [
            "NAME",
            "PHASE",
            "SQL",
            "READY",
            "IN",
            "OUT",
            "LAG",
            "CHECKPOINT",
            "AGE"
        ]
    );
    let row: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(&row[..4], ["ohlc-5s", "Running", "True", "1"], "{table}");

    // A spec change rolls the Deployment (new pod template, Recreate).
    let hash = |d: &Value| {
        d["spec"]["template"]["metadata"]["annotations"]["tickflow.io/spec-hash"].clone()
    };
    let before = hash(&d);
    kc(&[
        "patch",
        "streamquery",
        name,
        "-n",
        &ns,
        "--type",
        "merge",
        "-p",
        r#"{"spec":{"checkpoint":{"interval":"5s"}}}"#,
    ]);
    let rolled = wait_for("the Deployment to roll", Duration::from_secs(20), || {
        let d = get(&ns, "deployment", name)?;
        (hash(&d) != before
            && d["status"]["updatedReplicas"] == 1
            && d["status"]["readyReplicas"] == 1)
            .then_some(d)
    });
    let env = rolled["spec"]["template"]["spec"]["containers"][0]["env"]
        .as_array()
        .unwrap()
        .clone();
    assert!(
        env.iter()
            .any(|e| e["name"] == "TICKFLOW_CHECKPOINT_INTERVAL" && e["value"] == "5s")
    );
    wait_status(&ns, "streamquery", name, "Running after the change", |o| {
        o["status"]["phase"] == "Running"
    });

    // restartNonce alone restarts.
    let before = hash(&rolled);
    kc(&[
        "patch",
        "streamquery",
        name,
        "-n",
        &ns,
        "--type",
        "merge",
        "-p",
        r#"{"spec":{"restartNonce":"1"}}"#,
    ]);
    wait_for(
        "a restart from restartNonce",
        Duration::from_secs(20),
        || {
            let d = get(&ns, "deployment", name)?;
            (hash(&d) != before).then_some(())
        },
    );

    // Suspend: zero replicas, phase Suspended; resume: back to one.
    kc(&[
        "patch",
        "streamquery",
        name,
        "-n",
        &ns,
        "--type",
        "merge",
        "-p",
        r#"{"spec":{"state":"suspended"}}"#,
    ]);
    let s = wait_status(&ns, "streamquery", name, "phase Suspended", |o| {
        o["status"]["phase"] == "Suspended"
    });
    assert_eq!(get(&ns, "deployment", name).unwrap()["spec"]["replicas"], 0);
    assert_eq!(s["status"]["readyReplicas"], 0);
    assert_eq!(
        kc(&[
            "get",
            "pods",
            "-n",
            &ns,
            "-l",
            "tickflow.io/instance=ohlc-5s",
            "-o",
            "name"
        ]),
        ""
    );
    kc(&[
        "patch",
        "streamquery",
        name,
        "-n",
        &ns,
        "--type",
        "merge",
        "-p",
        r#"{"spec":{"state":"running"}}"#,
    ]);
    wait_status(
        &ns,
        "streamquery",
        name,
        "phase Running after resume",
        |o| o["status"]["phase"] == "Running" && o["status"]["readyReplicas"] == 1,
    );

    // Events on transitions.
    let events = kc(&[
        "get",
        "events",
        "-n",
        &ns,
        "--field-selector",
        "involvedObject.kind=StreamQuery",
        "-o",
        "jsonpath={.items[*].reason}",
    ]);
    for reason in ["Pending", "Running", "Suspended"] {
        assert!(
            events.split_whitespace().any(|r| r == reason),
            "no {reason} event in {events}"
        );
    }

    // Keep the PVC on delete when asked: GC removes the rest.
    kc(&[
        "patch",
        "streamquery",
        name,
        "-n",
        &ns,
        "--type",
        "merge",
        "-p",
        r#"{"spec":{"checkpoint":{"retainOnDelete":true}}}"#,
    ]);
    wait_for("the PVC to lose its owner", Duration::from_secs(20), || {
        let pvc = get(&ns, "persistentvolumeclaim", "ohlc-5s-checkpoints")?;
        (!owned_by(&pvc, "StreamQuery", name)).then_some(())
    });
    kc(&["delete", "streamquery", name, "-n", &ns, "--wait=false"]);
    // kube-controller-manager rediscovers new CRD owner kinds every 30 s.
    for (kind, obj) in [
        ("deployment", name),
        ("service", name),
        ("configmap", "ohlc-5s-sql"),
    ] {
        wait_for(
            &format!("{kind}/{obj} to be garbage-collected"),
            Duration::from_secs(90),
            || get(&ns, kind, obj).is_none().then_some(()),
        );
    }
    assert!(
        get(&ns, "persistentvolumeclaim", "ohlc-5s-checkpoints").is_some(),
        "the retained PVC was deleted"
    );
    assert!(!op.log_text().contains("ERROR"), "{}", op.log_text());
}

#[test]
fn deleting_a_query_also_deletes_its_pvc_by_default() {
    let ns = create_namespace("sq-gc");
    let _op = query_operator(&ns);
    apply_ok(
        &ns,
        &stream_query_yaml(
            "trades",
            "CREATE STREAM big AS SELECT symbol, price FROM market_ticks WHERE volume > 1000;",
            "",
        ),
    );
    wait_status(&ns, "streamquery", "trades", "Running", |o| {
        o["status"]["phase"] == "Running"
    });
    let pvc = get(&ns, "persistentvolumeclaim", "trades-checkpoints").unwrap();
    assert!(owned_by(&pvc, "StreamQuery", "trades"));
    kc(&["delete", "streamquery", "trades", "-n", &ns, "--wait=false"]);
    for (kind, obj) in [
        ("deployment", "trades"),
        ("persistentvolumeclaim", "trades-checkpoints"),
    ] {
        wait_for(
            &format!("{kind}/{obj} to be garbage-collected"),
            Duration::from_secs(90),
            || get(&ns, kind, obj).is_none().then_some(()),
        );
    }
}

#[test]
fn invalid_sql_gets_no_deployment_and_field_rules_are_enforced_at_apply() {
    let ns = create_namespace("sq-invalid");
    let _op = query_operator(&ns);
    apply_ok(
        &ns,
        &stream_query_yaml(
            "bad",
            "CREATE STREAM x AS\nSELECT symbol, nosuch\nFROM market_ticks;",
            "",
        ),
    );
    let sq = wait_status(&ns, "streamquery", "bad", "SqlValid=False", |o| {
        condition(o, "SqlValid").is_some_and(|c| c["status"] == "False")
    });
    let message = condition(&sq, "SqlValid").unwrap()["message"]
        .as_str()
        .unwrap()
        .to_string();
    // The planner's own message, with where the error is.
    assert!(
        message.contains("nosuch") && message.contains("stream `x`"),
        "{message}"
    );
    assert_eq!(sq["status"]["phase"], "Failed");
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        get(&ns, "deployment", "bad").is_none(),
        "an invalid query got a Deployment"
    );
    assert!(get(&ns, "configmap", "bad-sql").is_none());
    let events = kc(&[
        "get",
        "events",
        "-n",
        &ns,
        "-o",
        "jsonpath={.items[*].reason}",
    ]);
    assert!(events.contains("InvalidSql"), "{events}");

    // Fixing the SQL creates the workload.
    apply_ok(
        &ns,
        &stream_query_yaml(
            "bad",
            "CREATE STREAM x AS\nSELECT symbol, price\nFROM market_ticks;",
            "",
        ),
    );
    wait_status(&ns, "streamquery", "bad", "SqlValid=True", |o| {
        condition(o, "SqlValid").is_some_and(|c| c["status"] == "True")
            && o["status"]["phase"] == "Running"
    });

    // Field rules: the API server rejects these, nothing is stored.
    let cases = [
        (
            "both sql and sqlConfigMap",
            "  sqlConfigMap: {name: q, key: query.sql}\n",
            "set exactly one of sql and sqlConfigMap",
        ),
        (
            "zero interval",
            "  checkpoint: {interval: 0s}\n",
            "interval must be a duration of at least 100ms",
        ),
        (
            "bad quantity",
            "  checkpoint: {storageSize: lots}\n",
            "storageSize must be a positive quantity",
        ),
        (
            "bad state",
            "  state: paused\n",
            "Unsupported value: \"paused\"",
        ),
        (
            "SASL without secret",
            "  kafka: {security: {protocol: sasl_ssl, username: u}}\n",
            "SASL needs username and passwordSecretRef",
        ),
        (
            "registry credentials over plain http",
            "  kafka:\n    schemaRegistryUrl: http://registry:8081\n    schemaRegistrySecurity: {username: u, passwordSecretRef: {name: s, key: k}}\n",
            "schema registry credentials are only sent over https://",
        ),
        (
            "registry user without a password",
            "  kafka: {schemaRegistrySecurity: {username: u}}\n",
            "username and passwordSecretRef go together",
        ),
        (
            "registry URL of another scheme",
            "  kafka: {schemaRegistryUrl: \"ftp://registry\"}\n",
            "schemaRegistryUrl must be an http:// or https:// URL",
        ),
        (
            "unknown out-of-range policy",
            "  onOffsetOutOfRange: rewind\n",
            "Unsupported value: \"rewind\"",
        ),
        (
            "a sink with both a topic and a table",
            "  sinks: [{stream: out, topic: t, table: t}]\n  postgres: {url: \"postgres://u@db/d\"}\n",
            "set exactly one of topic and table",
        ),
        (
            "a table sink without a database",
            "  sinks: [{stream: out, table: t}]\n",
            "sinks with a table need spec.postgres",
        ),
        (
            "a PostgreSQL URL with a password",
            "  postgres: {url: \"postgres://u:hunter2@db/d\"}\n",
            "url must be a postgres:// URL without a password",
        ),
        (
            "an sslmode libpq does not know",
            "  postgres: {url: \"postgres://u@db/d\", sslMode: verify}\n",
            "Unsupported value: \"verify\"",
        ),
        (
            "a client certificate without its key",
            "  postgres: {url: \"postgres://u@db/d\", clientCertSecretRef: {name: c, key: tls.crt}}\n",
            "clientCertSecretRef and clientKeySecretRef go together",
        ),
        (
            "certificates with sslMode disable",
            "  postgres: {url: \"postgres://u@db/d\", sslMode: disable, caSecretRef: {name: c, key: ca.crt}}\n",
            "sslMode disable takes no certificates",
        ),
    ];
    for (what, extra, expected) in cases {
        let out = apply(
            &ns,
            &stream_query_yaml(
                "rejected",
                "CREATE STREAM y AS SELECT symbol FROM market_ticks;",
                extra,
            ),
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{what}: accepted");
        assert!(stderr.contains(expected), "{what}: {stderr}");
    }
    assert!(get(&ns, "streamquery", "rejected").is_none());
    let out = apply(
        &ns,
        "apiVersion: tickflow.io/v1alpha1\nkind: MarketProducer\nmetadata: {name: m}\nspec: {rate: -5}\n",
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("rate must be in (0, 10000000]"));
}

#[test]
fn sql_from_a_config_map() {
    let ns = create_namespace("sq-cm");
    let _op = query_operator(&ns);
    let yaml = "apiVersion: tickflow.io/v1alpha1\nkind: StreamQuery\nmetadata: {name: from-cm}\nspec:\n  sqlConfigMap: {name: queries, key: spread.sql}\n";
    apply_ok(&ns, yaml);
    let sq = wait_status(
        &ns,
        "streamquery",
        "from-cm",
        "SqlValid=False (no ConfigMap yet)",
        |o| condition(o, "SqlValid").is_some_and(|c| c["status"] == "False"),
    );
    assert!(
        condition(&sq, "SqlValid").unwrap()["message"]
            .as_str()
            .unwrap()
            .contains("ConfigMap queries not found")
    );
    let sql = std::fs::read_to_string(repo().join("sql/spread_metrics.sql")).unwrap();
    let cm = serde_json::json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "queries"}, "data": {"spread.sql": sql}});
    apply_ok(&ns, &cm.to_string());
    let sq = wait_for(
        "the query to pick up the ConfigMap",
        Duration::from_secs(40),
        || {
            let o = get(&ns, "streamquery", "from-cm")?;
            (o["status"]["phase"] == "Running").then_some(o)
        },
    );
    assert_eq!(
        sq["status"]["streams"],
        serde_json::json!(["spread_metrics"])
    );
    assert_eq!(
        get(&ns, "configmap", "from-cm-sql").unwrap()["data"]["query.sql"],
        sql
    );
}

#[test]
fn market_producer_from_the_example_manifest() {
    let ns = create_namespace("mp");
    let _op = query_operator(&ns);
    let manifest = std::fs::read_to_string(repo().join("manifests/marketproducer.yaml")).unwrap();
    apply_ok(&ns, &manifest);
    let name = "market-sim";
    let mp = wait_status(&ns, "marketproducer", name, "phase Running", |o| {
        o["status"]["phase"] == "Running"
    });
    assert_eq!(mp["status"]["readyReplicas"], 1);
    assert_eq!(mp["status"]["symbols"], 8);
    for kind in ["deployment", "service"] {
        assert!(owned_by(
            &get(&ns, kind, name).unwrap(),
            "MarketProducer",
            name
        ));
    }
    let d = get(&ns, "deployment", name).unwrap();
    let args: Vec<String> =
        serde_json::from_value(d["spec"]["template"]["spec"]["containers"][0]["args"].clone())
            .unwrap();
    assert_eq!(args[0], "produce");
    assert!(
        args.windows(2).any(|w| w[0] == "--rate" && w[1] == "1000"),
        "{args:?}"
    );
    let table = kc(&["get", "marketproducers", "-n", &ns]);
    let mut lines = table.lines();
    let header: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(
        header,
        ["NAME", "PHASE", "RATE", "SYMBOLS", "READY", "OUT", "AGE"]
    );
    let row: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(
        &row[..5],
        ["market-sim", "Running", "1000", "8", "1"],
        "{table}"
    );
    // Short names work.
    assert!(kc(&["get", "mp", "-n", &ns, "-o", "name"]).contains("market-sim"));
}

#[test]
fn two_operators_one_leader_and_a_clean_handover() {
    let ns = create_namespace("leader");
    let lease = format!("tickflow-e2e-{ns}");
    let start = |id: &str| {
        Operator::start(OperatorOptions {
            namespace: &ns,
            leader_election: true,
            lease_name: &lease,
            identity: id,
            extra_env: vec![],
        })
    };
    let mut a = start("op-a");
    wait_for("op-a to lead", Duration::from_secs(20), || {
        (a.metric("tickflow_operator_leader") == 1.0).then_some(())
    });
    let b = start("op-b");
    apply_ok(
        &ns,
        &stream_query_yaml(
            "first",
            "CREATE STREAM s AS SELECT symbol FROM market_ticks;",
            "",
        ),
    );
    wait_status(&ns, "streamquery", "first", "first Running", |o| {
        o["status"]["phase"] == "Running"
    });
    // The standby does nothing while the leader works.
    assert_eq!(b.metric("tickflow_operator_leader"), 0.0);
    assert_eq!(b.metric("tickflow_operator_reconciles_total"), 0.0);
    assert!(a.metric("tickflow_operator_reconciles_total") > 0.0);
    // Only the leader exports the resources' phases (no duplicate series
    // for alerts to add up).
    assert_eq!(b.metric("tickflow_operator_resource_phase{"), 0.0);
    let holder = kc(&[
        "get",
        "lease",
        &lease,
        "-n",
        "tickflow",
        "-o",
        "jsonpath={.spec.holderIdentity}",
    ]);
    assert_eq!(holder, "op-a");
    let first_generation =
        get(&ns, "deployment", "first").unwrap()["metadata"]["generation"].clone();

    // The leader dies without releasing the Lease; work arriving meanwhile is
    // picked up by the new leader once the Lease expires.
    a.child.kill().unwrap();
    a.child.wait().unwrap();
    let killed = std::time::Instant::now();
    apply_ok(
        &ns,
        &stream_query_yaml(
            "second",
            "CREATE STREAM s AS SELECT symbol FROM market_ticks;",
            "",
        ),
    );
    wait_status(
        &ns,
        "streamquery",
        "second",
        "second Running under op-b",
        |o| o["status"]["phase"] == "Running",
    );
    println!(
        "handover: second query Running {:?} after the leader died",
        killed.elapsed()
    );
    assert_eq!(b.metric("tickflow_operator_leader"), 1.0);
    let phase = |op: &Operator, name: &str| {
        op.metric(&format!(
            "tickflow_operator_resource_phase{{kind=\"StreamQuery\",namespace=\"{ns}\",name=\"{name}\",phase=\"Running\"}}"
        ))
    };
    wait_for(
        "op-b to export both phases",
        Duration::from_secs(10),
        || (phase(&b, "first") == 1.0 && phase(&b, "second") == 1.0).then_some(()),
    );
    assert_eq!(
        kc(&[
            "get",
            "lease",
            &lease,
            "-n",
            "tickflow",
            "-o",
            "jsonpath={.spec.holderIdentity}"
        ]),
        "op-b"
    );
    // No duplicate work: the first query's Deployment was not rolled again.
    assert_eq!(
        get(&ns, "deployment", "first").unwrap()["metadata"]["generation"],
        first_generation
    );
    assert_eq!(
        kc(&["get", "deployments", "-n", &ns, "-o", "name"])
            .lines()
            .count(),
        2
    );

    // A graceful stop finishes in-flight reconciles and releases the Lease.
    let c = start("op-c");
    sigterm(&b);
    let mut b = b;
    let exit = b.child.wait().unwrap();
    assert!(exit.success(), "op-b on SIGTERM: {exit}\n{}", b.log_text());
    assert!(
        b.log_text().contains("released the leader Lease"),
        "{}",
        b.log_text()
    );
    // The standby polls the Lease; it takes over within one lease duration (6 s).
    wait_for(
        "op-c to lead after op-b released",
        Duration::from_secs(10),
        || (c.metric("tickflow_operator_leader") == 1.0).then_some(()),
    );
    assert_eq!(
        kc(&[
            "get",
            "lease",
            &lease,
            "-n",
            "tickflow",
            "-o",
            "jsonpath={.spec.holderIdentity}"
        ]),
        "op-c"
    );
}

fn sigterm(op: &Operator) {
    let out = std::process::Command::new("kill")
        .args(["-TERM", &op.child.id().to_string()])
        .output()
        .unwrap();
    assert!(out.status.success());
}
