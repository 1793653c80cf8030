//! SQL deep enough to overflow a planner's stack, submitted as StreamQueries
//! (inline, within the CRD's 256 KiB, and from a ConfigMap, which has no such
//! limit) on the real control plane: each gets `SqlValid=False` with a clear
//! message, and the operator keeps running and reconciling the others.

mod k8s_common;

use std::time::Duration;

use k8s_common::*;

/// `kubectl create` (not apply: apply keeps a copy of the object in an
/// annotation, which is limited to 256 KiB).
fn create(namespace: &str, yaml: &str) {
    let out = kubectl_stdin("create", namespace, yaml);
    assert!(
        out.status.success(),
        "kubectl create: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn sql_valid_false(ns: &str, name: &str) -> String {
    let sq = wait_for(
        &format!("{name}: SqlValid=False"),
        Duration::from_secs(60),
        || {
            let o = get(ns, "streamquery", name)?;
            condition(&o, "SqlValid")
                .filter(|c| c["status"] == "False")
                .map(|c| c["message"].as_str().unwrap_or_default().to_string())
        },
    );
    assert!(
        get(ns, "deployment", name).is_none(),
        "{name}: refused SQL got a Deployment"
    );
    sq
}

#[test]
fn sql_deep_enough_to_overflow_the_planner_is_refused_and_the_operator_carries_on() {
    let ns = create_namespace("sq-deep");
    let mut op = Operator::start(OperatorOptions {
        namespace: &ns,
        leader_election: false,
        lease_name: "unused",
        identity: "solo",
        extra_env: vec![],
    });

    // 200 KB inline: 100 000 terms, within the CRD's limit.
    let chain = format!(
        "CREATE STREAM deep AS SELECT symbol, 1{} AS n FROM market_ticks;",
        "+1".repeat(100_000)
    );
    create(&ns, &stream_query_yaml("deep", &chain, ""));
    // 600 KB of parentheses from a ConfigMap.
    let parens = format!(
        "CREATE STREAM deep AS SELECT symbol, {}1{} AS n FROM market_ticks;",
        "(".repeat(300_000),
        ")".repeat(300_000)
    );
    let cm = serde_json::json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "deep-sql"},
        "data": {"query.sql": parens},
    });
    create(&ns, &cm.to_string());
    create(
        &ns,
        "apiVersion: tickflow.io/v1alpha1\nkind: StreamQuery\nmetadata:\n  name: deep-cm\nspec:\n  sqlConfigMap: {name: deep-sql, key: query.sql}\n",
    );
    apply_ok(
        &ns,
        &stream_query_yaml(
            "fine",
            "CREATE STREAM x AS SELECT symbol, price FROM market_ticks;",
            "",
        ),
    );

    for name in ["deep", "deep-cm"] {
        let message = sql_valid_false(&ns, name);
        assert!(
            message.contains("too complex to plan") && message.contains("line 1"),
            "{name}: {message}"
        );
    }
    wait_for(
        "the valid query's Deployment",
        Duration::from_secs(60),
        || get(&ns, "deployment", "fine").map(|_| ()),
    );
    assert!(
        op.child.try_wait().unwrap().is_none(),
        "the operator died: {}",
        op.log_text()
    );
    assert!(
        op.metrics().is_some(),
        "the operator still answers: {}",
        op.log_text()
    );
}
