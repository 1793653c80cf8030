//! The operator's hardening on a real control plane: the image allow-list,
//! PVC ownership applied apart from a refused resize, ConfigMap SQL edits
//! picked up at once, and per-object memory released on delete.

mod k8s_common;

use std::time::{Duration, Instant};

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

fn operator(ns: &str, extra_env: Vec<(&'static str, String)>) -> Operator {
    Operator::start(OperatorOptions {
        namespace: ns,
        leader_election: false,
        lease_name: "unused",
        identity: "solo",
        extra_env,
    })
}

fn merge_patch(ns: &str, kind: &str, name: &str, patch: &str) {
    kc(&[
        "patch", kind, name, "-n", ns, "--type", "merge", "-p", patch,
    ]);
}

fn wait_obj(
    ns: &str,
    kind: &str,
    name: &str,
    what: &str,
    timeout: Duration,
    check: impl Fn(&Value) -> bool,
) -> Value {
    wait_for(what, timeout, || {
        let o = get(ns, kind, name)?;
        check(&o).then_some(o)
    })
}

const SQL: &str = "CREATE STREAM s AS SELECT symbol, price FROM market_ticks;";

#[test]
fn an_image_outside_the_allow_list_gets_a_condition_and_no_deployment() {
    let ns = create_namespace("hard-image");
    // The test operator's worker image is tickflow-worker:e2e: by default only
    // the repository tickflow-worker is allowed.
    let op = operator(&ns, vec![]);
    apply_ok(
        &ns,
        &stream_query_yaml("evil", SQL, "  image: evil.example.com/miner:latest\n"),
    );
    apply_ok(
        &ns,
        "apiVersion: tickflow.io/v1alpha1\nkind: MarketProducer\nmetadata: {name: evil-sim}\nspec: {image: 'tickflow-worker-evil:1'}\n",
    );
    for (kind, name) in [("streamquery", "evil"), ("marketproducer", "evil-sim")] {
        let o = wait_obj(
            &ns,
            kind,
            name,
            &format!("{kind}/{name} Degraded=ImageNotAllowed"),
            Duration::from_secs(20),
            |o| {
                condition(o, "Degraded")
                    .is_some_and(|c| c["status"] == "True" && c["reason"] == "ImageNotAllowed")
            },
        );
        assert_eq!(o["status"]["phase"], "Failed", "{o}");
        assert_eq!(condition(&o, "Ready").unwrap()["status"], "False");
        let message = condition(&o, "Degraded").unwrap()["message"]
            .as_str()
            .unwrap()
            .to_string();
        assert!(message.contains("not allowed"), "{message}");
    }
    std::thread::sleep(Duration::from_secs(2));
    for (kind, name) in [
        ("deployment", "evil"),
        ("deployment", "evil-sim"),
        ("configmap", "evil-sql"),
        ("persistentvolumeclaim", "evil-checkpoints"),
        ("service", "evil"),
    ] {
        assert!(
            get(&ns, kind, name).is_none(),
            "{kind}/{name} was created for a refused image"
        );
    }
    let events = kc(&[
        "get",
        "events",
        "-n",
        &ns,
        "-o",
        "jsonpath={.items[*].reason}",
    ]);
    assert!(events.contains("ImageNotAllowed"), "{events}");

    // Another tag of the allowed repository runs.
    merge_patch(
        &ns,
        "streamquery",
        "evil",
        r#"{"spec":{"image":"tickflow-worker:other-tag"}}"#,
    );
    let d = wait_for(
        "the Deployment of an allowed image",
        Duration::from_secs(20),
        || get(&ns, "deployment", "evil"),
    );
    assert_eq!(
        d["spec"]["template"]["spec"]["containers"][0]["image"],
        "tickflow-worker:other-tag"
    );
    // Moving a running query to a refused image leaves its Deployment alone.
    merge_patch(
        &ns,
        "streamquery",
        "evil",
        r#"{"spec":{"image":"evil.example.com/miner:2"}}"#,
    );
    wait_obj(
        &ns,
        "streamquery",
        "evil",
        "ImageNotAllowed again",
        Duration::from_secs(20),
        |o| {
            o["status"]["observedGeneration"] == o["metadata"]["generation"]
                && condition(o, "Degraded").is_some_and(|c| c["reason"] == "ImageNotAllowed")
        },
    );
    assert_eq!(
        get(&ns, "deployment", "evil").unwrap()["spec"]["template"]["spec"]["containers"][0]["image"],
        "tickflow-worker:other-tag"
    );
    assert!(!op.log_text().contains("ERROR"), "{}", op.log_text());
}

#[test]
fn a_refused_pvc_resize_does_not_keep_a_retained_pvc_owned() {
    let ns = create_namespace("hard-pvc");
    let _op = operator(&ns, vec![]);
    let name = "keep";
    let pvc = "keep-checkpoints";
    apply_ok(&ns, &stream_query_yaml(name, SQL, ""));
    let first = wait_obj(
        &ns,
        "persistentvolumeclaim",
        pvc,
        "the PVC bound",
        Duration::from_secs(30),
        |o| o["status"]["phase"] == "Bound",
    );
    assert!(owned_by(&first, "StreamQuery", name));
    wait_obj(
        &ns,
        "streamquery",
        name,
        "Running",
        Duration::from_secs(30),
        |o| o["status"]["phase"] == "Running",
    );
    // One edit: a resize the API server refuses (the StorageClass cannot
    // expand volumes) and retainOnDelete.
    merge_patch(
        &ns,
        "streamquery",
        name,
        r#"{"spec":{"checkpoint":{"storageSize":"2Gi","retainOnDelete":true}}}"#,
    );
    wait_obj(
        &ns,
        "persistentvolumeclaim",
        pvc,
        "the PVC to lose its owner despite the refused resize",
        Duration::from_secs(20),
        |o| !owned_by(o, "StreamQuery", name),
    );
    let sq = wait_obj(
        &ns,
        "streamquery",
        name,
        "CheckpointVolume=False",
        Duration::from_secs(20),
        |o| {
            o["status"]["observedGeneration"] == o["metadata"]["generation"]
                && condition(o, "CheckpointVolume").is_some_and(|c| c["status"] == "False")
        },
    );
    let c = condition(&sq, "CheckpointVolume").unwrap();
    assert_eq!(c["reason"], "PvcChangeRefused", "{c}");
    assert!(
        c["message"]
            .as_str()
            .unwrap()
            .contains("retainOnDelete is in effect"),
        "{c}"
    );
    // The query keeps running on its volume.
    assert_eq!(sq["status"]["phase"], "Running", "{sq}");
    assert_eq!(
        get(&ns, "persistentvolumeclaim", pvc).unwrap()["spec"]["resources"]["requests"]["storage"],
        "1Gi"
    );

    // Deleting the query keeps the checkpoints.
    kc(&["delete", "streamquery", name, "-n", &ns, "--wait=false"]);
    // kube-controller-manager rediscovers new CRD owner kinds every 30 s.
    wait_for(
        "the Deployment to be garbage-collected",
        Duration::from_secs(90),
        || get(&ns, "deployment", name).is_none().then_some(()),
    );
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        get(&ns, "persistentvolumeclaim", pvc).is_some(),
        "the retained PVC was deleted with its StreamQuery"
    );
}

#[test]
fn a_config_map_sql_edit_is_picked_up_before_the_periodic_requeue() {
    let ns = create_namespace("hard-cm");
    // Running queries are otherwise looked at again only every 5 minutes.
    let _op = operator(&ns, vec![("TICKFLOW_STATUS_REFRESH", "300s".into())]);
    let cm = |sql: &str| {
        serde_json::json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "queries"}, "data": {"q.sql": sql}})
        .to_string()
    };
    apply_ok(
        &ns,
        &cm("CREATE STREAM first_s AS SELECT symbol FROM market_ticks;"),
    );
    apply_ok(
        &ns,
        "apiVersion: tickflow.io/v1alpha1\nkind: StreamQuery\nmetadata: {name: from-cm}\nspec:\n  sqlConfigMap: {name: queries, key: q.sql}\n",
    );
    wait_obj(
        &ns,
        "streamquery",
        "from-cm",
        "Running with first_s",
        Duration::from_secs(30),
        |o| {
            o["status"]["phase"] == "Running"
                && o["status"]["streams"] == serde_json::json!(["first_s"])
        },
    );
    // Let the reconciles of the start settle.
    std::thread::sleep(Duration::from_secs(3));
    let edited = "CREATE STREAM second_s AS SELECT symbol, price FROM market_ticks;";
    let t0 = Instant::now();
    apply_ok(&ns, &cm(edited));
    wait_obj(
        &ns,
        "streamquery",
        "from-cm",
        "the edited SQL in the status",
        Duration::from_secs(15),
        |o| o["status"]["streams"] == serde_json::json!(["second_s"]),
    );
    wait_obj(
        &ns,
        "configmap",
        "from-cm-sql",
        "the edited SQL in the worker's ConfigMap",
        Duration::from_secs(5),
        |o| o["data"]["query.sql"] == edited,
    );
    println!("ConfigMap edit → StreamQuery updated in {:?}", t0.elapsed());

    // An edit that breaks the SQL shows at once too.
    let t0 = Instant::now();
    apply_ok(
        &ns,
        &cm("CREATE STREAM broken AS SELECT nosuch FROM market_ticks;"),
    );
    wait_obj(
        &ns,
        "streamquery",
        "from-cm",
        "SqlValid=False after the edit",
        Duration::from_secs(15),
        |o| condition(o, "SqlValid").is_some_and(|c| c["status"] == "False"),
    );
    println!("ConfigMap edit → SqlValid=False in {:?}", t0.elapsed());
}

#[test]
fn deleted_resources_are_forgotten_by_the_operator() {
    let ns = create_namespace("hard-forget");
    let op = operator(&ns, vec![]);
    let names = ["f1", "f2", "f3"];
    for n in names {
        apply_ok(&ns, &stream_query_yaml(n, SQL, ""));
    }
    // One the operator refuses: no worker, so only the operator's metric
    // tells an alert about it.
    apply_ok(
        &ns,
        &stream_query_yaml(
            "fbad",
            "CREATE STREAM x AS SELECT nosuch FROM market_ticks;",
            "",
        ),
    );
    apply_ok(
        &ns,
        "apiVersion: tickflow.io/v1alpha1\nkind: MarketProducer\nmetadata: {name: fsim}\nspec: {}\n",
    );
    for n in names {
        wait_obj(
            &ns,
            "streamquery",
            n,
            &format!("{n} Running"),
            Duration::from_secs(30),
            |o| o["status"]["phase"] == "Running",
        );
    }
    let remembered = || op.metric("tickflow_operator_remembered_objects");
    let before = wait_for(
        "the operator to remember 4 objects",
        Duration::from_secs(20),
        || {
            let n = remembered();
            (n >= 4.0).then_some(n)
        },
    );
    let phase = |name: &str, phase: &str| {
        op.metric(&format!(
            "tickflow_operator_resource_phase{{kind=\"StreamQuery\",namespace=\"{ns}\",name=\"{name}\",phase=\"{phase}\"}}"
        ))
    };
    wait_for(
        "the refused query's phase metric",
        Duration::from_secs(20),
        || (phase("fbad", "Failed") == 1.0).then_some(()),
    );
    assert_eq!(phase("fbad", "Running"), 0.0);
    assert_eq!(phase("f1", "Running"), 1.0);
    assert_eq!(phase("f1", "Failed"), 0.0);
    for n in names.into_iter().chain(["fbad"]) {
        kc(&["delete", "streamquery", n, "-n", &ns, "--wait=false"]);
    }
    kc(&[
        "delete",
        "marketproducer",
        "fsim",
        "-n",
        &ns,
        "--wait=false",
    ]);
    wait_for(
        &format!("the operator's memory to shrink from {before} to 0"),
        Duration::from_secs(20),
        || (remembered() == 0.0).then_some(()),
    );
    wait_for(
        "the deleted resources' phases gone",
        Duration::from_secs(20),
        || {
            let text = op.metrics().unwrap_or_default();
            (!text.contains(&format!("namespace=\"{ns}\""))).then_some(())
        },
    );
}

#[test]
fn watch_namespaces_limits_the_operator_to_those_namespaces() {
    let a = create_namespace("hard-ns-a");
    let b = create_namespace("hard-ns-b");
    let other = create_namespace("hard-ns-other");
    // TICKFLOW_WATCH_NAMESPACE (set by the helper to `a`) and the list
    // together: a and b.
    let _op = operator(&a, vec![("TICKFLOW_WATCH_NAMESPACES", format!("{b},{a}"))]);
    for ns in [&a, &b, &other] {
        apply_ok(ns, &stream_query_yaml("q", SQL, ""));
    }
    for ns in [&a, &b] {
        wait_obj(
            ns,
            "streamquery",
            "q",
            &format!("q in {ns} Running"),
            Duration::from_secs(30),
            |o| o["status"]["phase"] == "Running",
        );
    }
    std::thread::sleep(Duration::from_secs(2));
    let o = get(&other, "streamquery", "q").unwrap();
    assert!(o["status"].is_null(), "a namespace not watched: {o}");
    assert!(get(&other, "deployment", "q").is_none());
}
