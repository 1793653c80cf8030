//! One StreamQuery on several worker pods, on the real control plane (KWOK
//! pods: scheduled, Running, Ready and deleted, no containers): `kubectl
//! scale` moves `spec.parallelism` through the scale subresource; the
//! operator stops the whole old set before any worker of the new set
//! exists, which is checked on watches of every change the API server made
//! to the query's Deployments and pods; the status has one entry per worker.
//! The API server refuses parallelism outside 1..=64 and a switch of an
//! existing query between one worker (state on its PVC) and several (state
//! in Kafka).
//!
//! What this does not show: that workers split partitions or move state
//! (no worker runs here; the worker's own tests do that).

mod k8s_common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use k8s_common::*;
use serde_json::Value;

const SQL: &str = "CREATE STREAM s AS SELECT symbol, price FROM market_ticks;";
/// Hang guard for a rescale (stop, wait for the pods, start the new set).
const RESCALE: Duration = Duration::from_secs(120);

fn operator(ns: &str) -> Operator {
    Operator::start(OperatorOptions {
        namespace: ns,
        leader_election: false,
        lease_name: "unused",
        identity: "solo",
        extra_env: vec![],
    })
}

fn owned_by(obj: &Value, kind: &str, name: &str) -> bool {
    obj["metadata"]["ownerReferences"]
        .as_array()
        .is_some_and(|o| {
            o.iter()
                .any(|r| r["kind"] == kind && r["name"] == name && r["controller"] == true)
        })
}

/// The env of a pod spec's first container.
fn env_of(pod_spec: &Value) -> BTreeMap<String, String> {
    pod_spec["containers"][0]["env"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| {
            Some((
                e["name"].as_str()?.to_string(),
                e["value"].as_str().unwrap_or_default().to_string(),
            ))
        })
        .collect()
}

/// The number of workers a pod spec was started for (-1: none said).
fn workers_of(pod_spec: &Value) -> i64 {
    env_of(pod_spec)
        .get("TICKFLOW_WORKERS")
        .and_then(|n| n.parse().ok())
        .unwrap_or(-1)
}

/// `kubectl get KIND --watch --output-watch-events -o json` in the
/// background, into a file: every change to the selected objects, in the
/// order the API server made them (the first events list what exists).
struct Watch {
    child: Child,
    out: PathBuf,
}

impl Watch {
    /// Watches `kind` in `ns`, only objects matching `selector` if given.
    fn start(ns: &str, kind: &str, selector: Option<&str>) -> Self {
        let c = cluster();
        let out = std::env::temp_dir().join(format!("tickflow-watch-{ns}-{kind}.json"));
        let mut args = vec!["get", kind, "-n", ns];
        if let Some(s) = selector {
            args.extend(["-l", s]);
        }
        args.extend(["--watch", "--output-watch-events", "-o", "json"]);
        let child = Command::new(&c.vars["KUBECTL"])
            .envs(&c.vars)
            .args(&args)
            .stdout(std::fs::File::create(&out).unwrap())
            .stderr(Stdio::null())
            .spawn()
            .expect("kubectl get --watch");
        Watch { child, out }
    }

    /// The events written so far (a last one cut short is left out).
    fn events(&self) -> Vec<Value> {
        let text = std::fs::read_to_string(&self.out).unwrap_or_default();
        serde_json::Deserializer::from_str(&text)
            .into_iter::<Value>()
            .map_while(Result::ok)
            .filter(|e| e["object"]["metadata"]["name"].is_string())
            .collect()
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if !std::thread::panicking() {
            let _ = std::fs::remove_file(&self.out);
        }
    }
}

/// Replays watch events, keeping per object the worker set it may run
/// (`set_of`: None when it can run nothing, e.g. a Deployment at zero).
/// Returns every moment at which two sets could run at once, and every set
/// that was seen.
fn overlaps(
    events: &[Value],
    set_of: impl Fn(&Value) -> Option<i64>,
) -> (Vec<String>, BTreeSet<i64>) {
    let mut state: BTreeMap<String, i64> = BTreeMap::new();
    let mut bad = Vec::new();
    let mut seen = BTreeSet::new();
    for e in events {
        let obj = &e["object"];
        let name = obj["metadata"]["name"].as_str().unwrap().to_string();
        match (e["type"].as_str(), set_of(obj)) {
            (Some("DELETED"), _) | (_, None) => {
                state.remove(&name);
            }
            (_, Some(n)) => {
                state.insert(name.clone(), n);
            }
        }
        let sets: BTreeSet<i64> = state.values().copied().collect();
        seen.extend(sets.iter().copied());
        if sets.len() > 1 {
            bad.push(format!("after {} {name}: {state:?}", e["type"]));
        }
    }
    (bad, seen)
}

/// A Deployment runs its set while it asks for pods.
fn deployment_set(d: &Value) -> Option<i64> {
    (d["spec"]["replicas"].as_i64().unwrap_or(1) > 0)
        .then(|| workers_of(&d["spec"]["template"]["spec"]))
}

/// A pod runs its set while it exists, terminating included (its final
/// checkpoint).
fn pod_set(p: &Value) -> Option<i64> {
    Some(workers_of(&p["spec"]))
}

/// Names of the query's Deployments.
fn deployment_names(ns: &str, query: &str) -> Vec<String> {
    kc(&[
        "get",
        "deployments",
        "-n",
        ns,
        "-l",
        &format!("tickflow.io/instance={query}"),
        "-o",
        "jsonpath={.items[*].metadata.name}",
    ])
    .split_whitespace()
    .map(str::to_string)
    .collect()
}

/// Waits until the query runs `n` ready workers as its status says: the
/// current generation, phase Running, n entries each with a ready pod.
fn wait_for_workers(ns: &str, query: &str, n: usize) -> Value {
    wait_for_or_explain(
        &format!("{query} Running on {n} ready workers"),
        RESCALE,
        || {
            let o = get(ns, "streamquery", query)?;
            let st = &o["status"];
            let workers = st["workers"].as_array()?;
            (o["status"]["observedGeneration"] == o["metadata"]["generation"]
                && st["phase"] == "Running"
                && st["readyReplicas"] == n as i64
                && workers.len() == n
                && workers
                    .iter()
                    .all(|w| w["ready"] == true && w["pod"].is_string()))
            .then_some(o)
        },
        || {
            format!(
                "{}\n{}",
                kc(&["get", "streamquery", query, "-n", ns, "-o", "yaml"]),
                kc(&["get", "deployments,pods", "-n", ns, "-o", "wide"])
            )
        },
    )
}

/// The worker Deployments are `<query>-w0..n`, each told its index, the
/// number of workers and that its state is in Kafka, and owned by the query.
fn assert_worker_set(ns: &str, query: &str, n: usize) {
    let mut names = deployment_names(ns, query);
    names.sort();
    let want: Vec<String> = (0..n).map(|i| format!("{query}-w{i}")).collect();
    assert_eq!(names, want);
    for (i, name) in want.iter().enumerate() {
        let d = get(ns, "deployment", name).unwrap();
        assert!(owned_by(&d, "StreamQuery", query), "{name} is not owned");
        assert_eq!(
            d["metadata"]["labels"]["tickflow.io/worker-index"],
            i.to_string()
        );
        let env = env_of(&d["spec"]["template"]["spec"]);
        assert_eq!(env["TICKFLOW_WORKERS"], n.to_string(), "{name}");
        assert_eq!(env["TICKFLOW_WORKER_INDEX"], i.to_string(), "{name}");
        assert_eq!(env["TICKFLOW_STATE_STORE"], "kafka", "{name}");
        assert_eq!(d["spec"]["replicas"], 1, "{name}");
    }
}

fn scale(ns: &str, query: &str, n: usize) {
    kc(&[
        "scale",
        &format!("sq/{query}"),
        "-n",
        ns,
        "--replicas",
        &n.to_string(),
    ]);
}

#[test]
fn kubectl_scale_stops_the_old_set_before_the_new_one_starts() {
    let ns = create_namespace("sq-par");
    let op = operator(&ns);
    let q = "par";
    apply_ok(&ns, &stream_query_yaml(q, SQL, "  parallelism: 1\n"));

    // One worker, state in Kafka: its Deployment and Service, no PVC.
    let sq = wait_for_workers(&ns, q, 1);
    assert_worker_set(&ns, q, 1);
    let selector = "app.kubernetes.io/component=stream-query,tickflow.io/instance=par";
    assert_eq!(sq["status"]["selector"], selector);
    assert_eq!(sq["status"]["workers"][0]["deployment"], "par-w0");
    // KWOK pods run no worker: none answers its /status, so the sums
    // (absent) cover no worker, and the status says so.
    assert_eq!(sq["status"]["workersReporting"], 0);
    assert!(sq["status"]["recordsIn"].is_null(), "{sq}");
    assert!(owned_by(&get(&ns, "service", q).unwrap(), "StreamQuery", q));
    assert!(get(&ns, "configmap", "par-sql").is_some());
    assert!(
        get(&ns, "persistentvolumeclaim", "par-checkpoints").is_none(),
        "a query with parallelism has no checkpoint PVC"
    );
    let w0 = get(&ns, "deployment", "par-w0").unwrap();
    let pod = &w0["spec"]["template"]["spec"];
    assert!(
        pod["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|v| v["name"] == "checkpoints" && v["emptyDir"].is_object()),
        "{pod}"
    );

    let instance = format!("tickflow.io/instance={q}");
    let deployments = Watch::start(&ns, "deployments", Some(instance.as_str()));
    let pods = Watch::start(&ns, "pods", Some(instance.as_str()));
    let queries = Watch::start(&ns, "streamqueries", None);
    // The watches have listed what exists before anything changes.
    wait_for("the watches to start", Duration::from_secs(20), || {
        [&deployments, &pods, &queries]
            .iter()
            .all(|w| !w.events().is_empty())
            .then_some(())
    });

    // 1 → 3 through the scale subresource.
    scale(&ns, q, 3);
    assert_eq!(
        kc(&[
            "get",
            "sq",
            q,
            "-n",
            &ns,
            "-o",
            "jsonpath={.spec.parallelism}"
        ]),
        "3"
    );
    wait_for_workers(&ns, q, 3);
    assert_worker_set(&ns, q, 3);
    let scale_view: Value = serde_json::from_str(&kc(&[
        "get",
        "sq",
        q,
        "-n",
        &ns,
        "--subresource",
        "scale",
        "-o",
        "json",
    ]))
    .unwrap();
    assert_eq!(scale_view["spec"]["replicas"], 3);
    assert_eq!(scale_view["status"]["replicas"], 3);
    assert_eq!(scale_view["status"]["selector"], selector);

    // The old Deployment was at zero before any Deployment of the new set
    // appeared, and its pod was gone before any new pod existed.
    let d_events = deployments.events();
    let first_new = d_events
        .iter()
        .position(|e| workers_of(&e["object"]["spec"]["template"]["spec"]) == 3)
        .expect("a Deployment of the new set");
    assert!(
        d_events[..first_new].iter().any(|e| {
            e["object"]["metadata"]["name"] == "par-w0"
                && workers_of(&e["object"]["spec"]["template"]["spec"]) == 1
                && e["object"]["spec"]["replicas"] == 0
        }),
        "par-w0 (of 1) was not scaled to zero before the new set"
    );
    // The status said so meanwhile.
    let rescaling = queries.events().into_iter().find_map(|e| {
        let c = condition(&e["object"], "Progressing")?.clone();
        (c["reason"] == "Rescaling").then_some((e["object"]["status"]["phase"].clone(), c))
    });
    let (phase, progressing) = rescaling.expect("a status with Progressing=Rescaling");
    assert_eq!(phase, "Pending", "no worker runs while the set changes");
    assert!(
        progressing["message"]
            .as_str()
            .unwrap()
            .starts_with("Rescaling from 1 to 3 workers"),
        "{progressing}"
    );

    // 3 → 2: worker 2's Deployment goes, 0 and 1 are told 2 workers.
    scale(&ns, q, 2);
    wait_for("par-w2 to be deleted", RESCALE, || {
        get(&ns, "deployment", "par-w2").is_none().then_some(())
    });
    wait_for_workers(&ns, q, 2);
    assert_worker_set(&ns, q, 2);
    assert_eq!(
        kc(&[
            "get",
            "sq",
            q,
            "-n",
            &ns,
            "-o",
            "jsonpath={.spec.parallelism}"
        ]),
        "2"
    );

    // Never two sets at once, over both rescales; and the check was not
    // vacuous: pods of all three sets were seen.
    let (bad, seen) = overlaps(&deployments.events(), deployment_set);
    assert!(bad.is_empty(), "Deployments of two sets at once: {bad:#?}");
    let (bad, seen_pods) = overlaps(&pods.events(), pod_set);
    assert!(bad.is_empty(), "pods of two sets at once: {bad:#?}");
    assert_eq!(seen, BTreeSet::from([1, 2, 3]));
    assert_eq!(seen_pods, BTreeSet::from([1, 2, 3]));
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
    for reason in ["Rescaling", "Rescaled"] {
        assert!(
            events.split_whitespace().any(|r| r == reason),
            "no {reason} event in {events}"
        );
    }

    // Suspend: every worker at zero, no pod left.
    kc(&[
        "patch",
        "sq",
        q,
        "-n",
        &ns,
        "--type",
        "merge",
        "-p",
        r#"{"spec":{"state":"suspended"}}"#,
    ]);
    wait_for("phase Suspended", RESCALE, || {
        let o = get(&ns, "streamquery", q)?;
        (o["status"]["observedGeneration"] == o["metadata"]["generation"]
            && o["status"]["phase"] == "Suspended")
            .then_some(())
    });
    for name in ["par-w0", "par-w1"] {
        assert_eq!(get(&ns, "deployment", name).unwrap()["spec"]["replicas"], 0);
    }
    assert_eq!(
        kc(&["get", "pods", "-n", &ns, "-l", &instance, "-o", "name"]),
        ""
    );
    assert!(!op.log_text().contains("ERROR"), "{}", op.log_text());
}

/// A Deployment with a worker's labels that someone else made.
fn foreign_deployment(name: &str, query: &str, index: usize) -> String {
    format!(
        "apiVersion: apps/v1
kind: Deployment
metadata:
  name: {name}
  labels:
    app.kubernetes.io/component: stream-query
    tickflow.io/instance: {query}
    tickflow.io/worker-index: \"{index}\"
spec:
  replicas: 0
  selector:
    matchLabels: {{app: foreign}}
  template:
    metadata:
      labels: {{app: foreign}}
    spec:
      containers: [{{name: other, image: example.com/not-tickflow:1}}]
"
    )
}

#[test]
fn deployments_the_query_does_not_control_are_never_taken_over_scaled_or_deleted() {
    let ns = create_namespace("sq-par-foreign");
    let op = operator(&ns);
    let q = "own";
    // Someone else's Deployments with the labels of this query's workers:
    // one named like worker 1, one like no worker of any set used here.
    apply_ok(&ns, &foreign_deployment("own-w1", q, 1));
    apply_ok(&ns, &foreign_deployment("own-w7", q, 7));
    apply_ok(&ns, &stream_query_yaml(q, SQL, "  parallelism: 2\n"));

    // Worker 1's name is taken: the query is refused and nothing applied.
    let refused = wait_for("the NameTaken condition", RESCALE, || {
        let o = get(&ns, "streamquery", q)?;
        let c = condition(&o, "Degraded")?.clone();
        (c["reason"] == "NameTaken").then_some((o, c))
    });
    assert_eq!(refused.0["status"]["phase"], "Failed");
    assert!(
        refused.1["message"]
            .as_str()
            .unwrap()
            .starts_with("Deployment own-w1 exists and is not controlled by this StreamQuery"),
        "{}",
        refused.1
    );
    assert!(get(&ns, "deployment", "own-w0").is_none(), "applied anyway");
    let w1 = get(&ns, "deployment", "own-w1").unwrap();
    assert!(!owned_by(&w1, "StreamQuery", q), "taken over: {w1}");
    assert_eq!(
        w1["spec"]["template"]["spec"]["containers"][0]["image"],
        "example.com/not-tickflow:1"
    );

    // Once its owner removes it, the query starts (the refusal is retried).
    kc(&["delete", "deployment", "own-w1", "-n", &ns]);
    wait_for_workers(&ns, q, 2);

    // 2 → 1 deletes the query's own worker 1, not the foreign own-w7,
    // though it carries the same labels and no worker slot.
    scale(&ns, q, 1);
    wait_for("own-w1 to be deleted", RESCALE, || {
        get(&ns, "deployment", "own-w1").is_none().then_some(())
    });
    wait_for_workers(&ns, q, 1);
    let w7 = get(&ns, "deployment", "own-w7").expect("the foreign own-w7 was deleted");
    assert!(w7["metadata"]["ownerReferences"].is_null(), "{w7}");
    assert_eq!(w7["spec"]["replicas"], 0);
    assert!(!op.log_text().contains("ERROR"), "{}", op.log_text());
}

#[test]
fn parallelism_outside_its_bounds_or_switched_later_is_refused() {
    let ns = create_namespace("sq-par-rules");
    for (what, extra, expected) in [
        (
            "zero workers",
            "  parallelism: 0\n",
            "parallelism must be between 1 and 64 workers",
        ),
        (
            "65 workers",
            "  parallelism: 65\n",
            "parallelism must be between 1 and 64 workers",
        ),
        (
            "a stateless upgrade",
            "  parallelism: 2\n  upgradeMode: stateless\n",
            "parallelism needs upgradeMode last-state",
        ),
    ] {
        let out = apply(&ns, &stream_query_yaml("refused", SQL, extra));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{what}: accepted");
        assert!(stderr.contains(expected), "{what}: {stderr}");
    }
    assert!(get(&ns, "streamquery", "refused").is_none());

    // The scale subresource goes through the same rules.
    apply_ok(&ns, &stream_query_yaml("par", SQL, "  parallelism: 2\n"));
    let out = kubectl(&["scale", "sq/par", "-n", &ns, "--replicas", "65"]);
    assert!(!out.status.success(), "scaled to 65");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("parallelism must be between 1 and 64 workers"),
        "{stderr}"
    );

    // Where the state lives is decided at creation: neither way later.
    let switch = "parallelism is set when a query is created and stays set";
    let out = kubectl(&[
        "patch",
        "sq",
        "par",
        "-n",
        &ns,
        "--type",
        "merge",
        "-p",
        r#"{"spec":{"parallelism":null}}"#,
    ]);
    assert!(String::from_utf8_lossy(&out.stderr).contains(switch));
    apply_ok(&ns, &stream_query_yaml("classic", SQL, ""));
    let out = kubectl(&[
        "patch",
        "sq",
        "classic",
        "-n",
        &ns,
        "--type",
        "merge",
        "-p",
        r#"{"spec":{"parallelism":2}}"#,
    ]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(switch),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !kubectl(&["scale", "sq/classic", "-n", &ns, "--replicas", "2"])
            .status
            .success(),
        "a classic query was scaled"
    );
    assert_eq!(
        kc(&[
            "get",
            "sq",
            "classic",
            "-n",
            &ns,
            "-o",
            "jsonpath={.spec.parallelism}"
        ]),
        ""
    );
}
