#!/usr/bin/env python3
"""Checks a `helm template` rendering of charts/tickflow (used by lint.sh).

Usage: check_render.py default|options|norbac|bundled RENDERED.yaml

default: `helm template tickflow CHART -n tickflow` with the chart's values
          (also with redpanda.enabled=false, or with the stand-in Redpanda
          subchart present but off: no Redpanda object may appear).
options: `helm template tickflow CHART -n tickflow-system -f values-options.yaml
          --api-versions monitoring.coreos.com/v1/ServiceMonitor`.
norbac:  defaults plus --set rbac.create=false.
tenancy: defaults plus watchNamespaces={desk-a,desk-b}, networkPolicy.enabled
          and workerImage.allowedRepositories={registry.example.com/team/*}:
          no cluster-wide grant, the operator's rules as a Role in each
          watched namespace, a worker NetworkPolicy there, and the operator
          told both lists.
bundled: the chart with lint.sh's stand-in Redpanda subchart and
          --set redpanda.enabled=true --set redpanda.statefulset.replicas=1:
          the tickflow objects exactly as in `default`, plus the stand-in's
          Service "redpanda" and the values it was given (`enabled` included).

Asserts what the operator and its users rely on: the exact least-privilege
RBAC, the operator's environment, labels and selectors, probes, security
contexts. Needs PyYAML.
"""

import json
import sys

import yaml

# The operator's ClusterRole, exactly (order-insensitive).
CLUSTER_RULES = {
    ("tickflow.io", "streamqueries"): {"get", "list", "watch"},
    ("tickflow.io", "marketproducers"): {"get", "list", "watch"},
    ("tickflow.io", "streamqueries/status"): {"get", "patch", "update"},
    ("tickflow.io", "marketproducers/status"): {"get", "patch", "update"},
    ("", "configmaps"): {"get", "list", "watch", "create", "patch"},
    ("", "services"): {"get", "list", "watch", "create", "patch"},
    ("", "persistentvolumeclaims"): {"get", "list", "watch", "create", "patch"},
    ("apps", "deployments"): {"get", "list", "watch", "create", "patch", "delete"},
    ("", "pods"): {"get", "list", "watch"},
    ("", "events"): {"create", "patch"},
    ("events.k8s.io", "events"): {"create", "patch"},
}
LEASE_RULES = {
    ("coordination.k8s.io", "leases"): {"get", "list", "watch", "create", "update", "patch"},
}
COMMON_LABELS = {
    "helm.sh/chart",
    "app.kubernetes.io/name",
    "app.kubernetes.io/instance",
    "app.kubernetes.io/component",
    "app.kubernetes.io/version",
    "app.kubernetes.io/managed-by",
    "app.kubernetes.io/part-of",
}
CLUSTER_SCOPED = {"ClusterRole", "ClusterRoleBinding"}

failures = []


def check(cond, msg):
    if not cond:
        failures.append(msg)


def flatten_rules(rules):
    out = {}
    for r in rules:
        check(
            set(r) <= {"apiGroups", "resources", "verbs"},
            f"rule with resourceNames/nonResourceURLs or unknown keys: {r}",
        )
        for g in r["apiGroups"]:
            for res in r["resources"]:
                key = (g, res)
                check(key not in out, f"resource {key} appears in two rules")
                out[key] = set(r["verbs"])
    return out


def by_kind(docs):
    out = {}
    for d in docs:
        out.setdefault(d["kind"], []).append(d)
    return out


def one(kinds, kind):
    items = kinds.get(kind, [])
    check(len(items) == 1, f"expected one {kind}, got {len(items)}")
    return items[0] if items else {}


def env_of(container):
    env = {}
    for e in container.get("env", []):
        check(e["name"] not in env, f"duplicate env {e['name']}")
        if "value" in e:
            env[e["name"]] = e["value"]
        else:
            env[e["name"]] = ("valueFrom", e["valueFrom"])
    return env


def common_checks(docs, namespace):
    for d in docs:
        meta = d.get("metadata", {})
        name = f"{d.get('kind')}/{meta.get('name')}"
        labels = meta.get("labels") or {}
        check(COMMON_LABELS <= set(labels), f"{name}: missing labels {COMMON_LABELS - set(labels)}")
        check(labels.get("app.kubernetes.io/part-of") == "tickflow", f"{name}: part-of label")
        if d["kind"] in CLUSTER_SCOPED:
            check("namespace" not in meta, f"{name}: cluster-scoped object with a namespace")
        elif d["kind"] != "RoleBinding" or meta.get("name", "").endswith("-leader-election"):
            check(meta.get("namespace") == namespace, f"{name}: namespace {meta.get('namespace')!r}")


def deployment_checks(dep, sa, selector, port):
    spec = dep["spec"]
    check(spec["strategy"]["type"] == "RollingUpdate", "Deployment strategy must be RollingUpdate")
    check(spec["selector"]["matchLabels"] == selector, "Deployment selector")
    tmpl = spec["template"]
    for k, v in selector.items():
        check(tmpl["metadata"]["labels"].get(k) == v, f"pod label {k} must match the selector")
    pod = tmpl["spec"]
    check(pod["serviceAccountName"] == sa, f"serviceAccountName {pod['serviceAccountName']!r} != {sa!r}")
    check(pod.get("automountServiceAccountToken") is True, "automountServiceAccountToken must be true")
    psc = pod["securityContext"]
    check(psc.get("runAsNonRoot") is True and psc.get("runAsUser") == 65532, "pod securityContext")
    check(psc.get("seccompProfile", {}).get("type") == "RuntimeDefault", "pod seccompProfile")
    (c,) = pod["containers"]
    check(c["name"] == "operator", "container name must be operator")
    check(c["args"] == ["run"], "container args must be [run]")
    sc = c["securityContext"]
    check(sc.get("readOnlyRootFilesystem") is True, "readOnlyRootFilesystem")
    check(sc.get("allowPrivilegeEscalation") is False, "allowPrivilegeEscalation")
    check(sc.get("capabilities", {}).get("drop") == ["ALL"], "capabilities drop ALL")
    check(sc.get("runAsNonRoot") is True and sc.get("runAsUser") == 65532, "container runAsNonRoot/runAsUser")
    check(c["ports"] == [{"name": "http-metrics", "containerPort": port, "protocol": "TCP"}], f"ports {c['ports']}")
    check(c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http-metrics"}, "livenessProbe")
    check(c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http-metrics"}, "readinessProbe")
    env = env_of(c)
    check(env.get("POD_NAME") == ("valueFrom", {"fieldRef": {"fieldPath": "metadata.name"}}), "POD_NAME")
    check(
        env.get("POD_NAMESPACE") == ("valueFrom", {"fieldRef": {"fieldPath": "metadata.namespace"}}),
        "POD_NAMESPACE",
    )
    return c, env


def service_checks(svc, selector, port):
    check(svc["spec"]["selector"] == selector, "Service selector must equal the Deployment selector")
    check(
        svc["spec"]["ports"] == [{"name": "http-metrics", "port": port, "targetPort": "http-metrics", "protocol": "TCP"}],
        f"Service ports {svc['spec']['ports']}",
    )


def binding_subject(b, sa, ns):
    check(b["subjects"] == [{"kind": "ServiceAccount", "name": sa, "namespace": ns}], f"{b['metadata']['name']} subjects")


def check_default(docs):
    ns, sa = "tickflow", "tickflow-operator"
    kinds = by_kind(docs)
    check(
        set(kinds) == {"ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding",
                       "Deployment", "Service", "PodDisruptionBudget"},
        f"kinds {sorted(kinds)}",
    )
    common_checks(docs, ns)
    check(one(kinds, "ServiceAccount")["metadata"]["name"] == sa, "ServiceAccount name")
    cr = one(kinds, "ClusterRole")
    check(flatten_rules(cr["rules"]) == CLUSTER_RULES, f"ClusterRole rules: {flatten_rules(cr['rules'])}")
    crb = one(kinds, "ClusterRoleBinding")
    check(crb["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                             "name": cr["metadata"]["name"]}, "ClusterRoleBinding roleRef")
    binding_subject(crb, sa, ns)
    role = one(kinds, "Role")
    check(flatten_rules(role["rules"]) == LEASE_RULES, "leader-election Role rules")
    rb = one(kinds, "RoleBinding")
    check(rb["roleRef"]["kind"] == "Role" and rb["roleRef"]["name"] == role["metadata"]["name"], "RoleBinding roleRef")
    binding_subject(rb, sa, ns)

    dep = one(kinds, "Deployment")
    check(dep["metadata"]["name"] == "tickflow-operator", "Deployment name")
    check(dep["spec"]["replicas"] == 2, "replicas 2")
    selector = {"app.kubernetes.io/name": "tickflow", "app.kubernetes.io/instance": "tickflow",
                "app.kubernetes.io/component": "operator"}
    c, env = deployment_checks(dep, sa, selector, 8080)
    check(c["image"] == "ghcr.io/tickflow/tickflow-operator:0.1.0", f"image {c['image']}")
    check(c["imagePullPolicy"] == "IfNotPresent", "pullPolicy")
    check(c["resources"] == {"requests": {"cpu": "50m", "memory": "64Mi"},
                             "limits": {"cpu": "500m", "memory": "256Mi"}}, "resources")
    expected_env = {
        "TICKFLOW_OPERATOR_HTTP_ADDR": "0.0.0.0:8080",
        "TICKFLOW_WORKER_IMAGE": "ghcr.io/tickflow/tickflow-worker:0.1.0",
        "TICKFLOW_DEFAULT_KAFKA_BROKERS": "redpanda.tickflow.svc.cluster.local:9093",
        "TICKFLOW_DEFAULT_SCHEMA_REGISTRY_URL": "http://redpanda.tickflow.svc.cluster.local:8081",
        "TICKFLOW_LEADER_ELECTION": "true",
        "TICKFLOW_LEASE_NAME": "tickflow-operator",
        "TICKFLOW_LOG_FORMAT": "json",
    }
    plain = {k: v for k, v in env.items() if not isinstance(v, tuple)}
    check(plain == expected_env, f"operator env {plain}")
    check(set(env) == set(expected_env) | {"POD_NAME", "POD_NAMESPACE"}, f"env names {sorted(env)}")
    service_checks(one(kinds, "Service"), selector, 8080)
    pdb = one(kinds, "PodDisruptionBudget")
    check(pdb["spec"] == {"minAvailable": 1, "selector": {"matchLabels": selector}}, "PodDisruptionBudget spec")


def check_options(docs):
    ns, sa = "tickflow-system", "existing-sa"
    kinds = by_kind(docs)
    check(
        set(kinds) == {"ClusterRole", "RoleBinding", "Deployment", "Service", "ServiceMonitor"},
        f"kinds {sorted(kinds)} (no ServiceAccount, ClusterRoleBinding, leader-election Role or PDB expected)",
    )
    common_checks(docs, ns)
    cr = one(kinds, "ClusterRole")
    check(flatten_rules(cr["rules"]) == CLUSTER_RULES, "ClusterRole rules")
    rb = one(kinds, "RoleBinding")
    check(rb["metadata"]["namespace"] == "markets", "RoleBinding must be in watchNamespace")
    check(rb["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                            "name": cr["metadata"]["name"]}, "RoleBinding must bind the ClusterRole")
    binding_subject(rb, sa, ns)

    dep = one(kinds, "Deployment")
    check(dep["metadata"]["name"] == "tf-operator", "Deployment name with fullnameOverride")
    check(dep["spec"]["replicas"] == 1, "replicas 1")
    selector = {"app.kubernetes.io/name": "tickflow", "app.kubernetes.io/instance": "tickflow",
                "app.kubernetes.io/component": "operator"}
    c, env = deployment_checks(dep, sa, selector, 9090)
    pod = dep["spec"]["template"]
    check(pod["metadata"]["labels"].get("team") == "market-data", "podLabels")
    check(pod["metadata"].get("annotations") == {"example.com/scrape": "true"}, "podAnnotations")
    check(pod["spec"]["imagePullSecrets"] == [{"name": "regcred"}], "imagePullSecrets")
    check(pod["spec"]["nodeSelector"] == {"kubernetes.io/os": "linux"}, "nodeSelector")
    check(pod["spec"]["tolerations"][0]["key"] == "dedicated", "tolerations")
    check("podAntiAffinity" in pod["spec"]["affinity"], "affinity")
    check(c["image"] == "registry.example.com/tickflow/operator:1.2.3", f"image {c['image']}")
    check(c["imagePullPolicy"] == "Always", "pullPolicy")
    check(c["resources"] == {"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"cpu": "1", "memory": "512Mi"}},
          "resources")
    expected_env = {
        "TICKFLOW_OPERATOR_HTTP_ADDR": "0.0.0.0:9090",
        "TICKFLOW_WORKER_IMAGE": "registry.example.com/tickflow/worker:1.2.3-rc.1",
        "TICKFLOW_DEFAULT_KAFKA_BROKERS":
            "kafka-0.kafka.tickflow-system.svc:9092,kafka-1.kafka.tickflow-system.svc:9092",
        "TICKFLOW_DEFAULT_SCHEMA_REGISTRY_URL": "https://registry.example.com:8081",
        "TICKFLOW_WATCH_NAMESPACE": "markets",
        "TICKFLOW_LEADER_ELECTION": "false",
        "TICKFLOW_LEASE_NAME": "tf-lease",
        "TICKFLOW_LOG_FORMAT": "plain",
        "RUST_LOG": "info,tickflow_operator=debug",
    }
    plain = {k: v for k, v in env.items() if not isinstance(v, tuple)}
    check(plain == expected_env, f"operator env {plain}")
    service_checks(one(kinds, "Service"), selector, 9090)
    sm = one(kinds, "ServiceMonitor")
    check(sm["metadata"]["labels"].get("release") == "kube-prometheus-stack", "ServiceMonitor labels")
    check(sm["spec"]["selector"]["matchLabels"] == selector, "ServiceMonitor selector")
    check(sm["spec"]["endpoints"] == [{"port": "http-metrics", "path": "/metrics", "interval": "15s", "honorLabels": True}],
          "ServiceMonitor endpoints")


def check_norbac(docs):
    kinds = by_kind(docs)
    check(set(kinds) == {"ServiceAccount", "Deployment", "Service", "PodDisruptionBudget"},
          f"kinds with rbac.create=false: {sorted(kinds)}")


# Labels the operator puts on every worker pod (operator/src/desired.rs).
WORKER_POD_LABELS = {"app.kubernetes.io/name": "tickflow-worker",
                     "app.kubernetes.io/managed-by": "tickflow-operator"}


def check_tenancy(docs):
    watched = {"desk-a", "desk-b"}
    kinds = by_kind(docs)
    check(not CLUSTER_SCOPED & set(kinds), f"no cluster-wide grant with watchNamespaces: {sorted(kinds)}")
    roles = {r["metadata"]["namespace"]: r for r in kinds.get("Role", [])}
    for ns in watched:
        check(ns in roles and flatten_rules(roles[ns]["rules"]) == CLUSTER_RULES,
              f"the operator's rules as a Role in {ns}")
        bindings = [b for b in kinds.get("RoleBinding", []) if b["metadata"]["namespace"] == ns]
        check(len(bindings) == 1 and bindings[0]["roleRef"]["kind"] == "Role",
              f"one RoleBinding of the Role in {ns}")
        if bindings:
            binding_subject(bindings[0], "tickflow-operator", "tickflow")
    policies = {p["metadata"]["namespace"]: p for p in kinds.get("NetworkPolicy", [])}
    check(set(policies) == watched, f"worker NetworkPolicies in {sorted(policies)}")
    for ns, p in policies.items():
        spec = p["spec"]
        labels = spec["podSelector"]["matchLabels"]
        check(labels.items() <= WORKER_POD_LABELS.items() and labels,
              f"{ns}: the policy selects worker pods by the operator's labels: {labels}")
        check(set(spec["policyTypes"]) == {"Ingress", "Egress"}, f"{ns}: both directions restricted")
        ports = {port["port"] for rule in spec["ingress"] for port in rule.get("ports", [])}
        check(ports == {8080}, f"{ns}: ingress only to the worker port, not {ports}")
        egress_ports = {port["port"] for rule in spec["egress"] for port in rule.get("ports", [])}
        check(53 in egress_ports and 9092 in egress_ports, f"{ns}: DNS and Kafka egress {egress_ports}")
    dep = one(kinds, "Deployment")
    env = env_of(dep["spec"]["template"]["spec"]["containers"][0])
    check(env.get("TICKFLOW_WATCH_NAMESPACES") == "desk-a,desk-b", f"operator watches {env.get('TICKFLOW_WATCH_NAMESPACES')}")
    check(env.get("TICKFLOW_ALLOWED_IMAGE_REPOSITORIES") == "registry.example.com/team/*",
          f"allowed images {env.get('TICKFLOW_ALLOWED_IMAGE_REPOSITORIES')}")


def check_bundled(docs):
    ours = [d for d in docs if (d.get("metadata", {}).get("labels") or {}).get("app.kubernetes.io/part-of") == "tickflow"]
    theirs = [d for d in docs if d not in ours]
    check_default(ours)
    kinds = by_kind(theirs)
    check(set(kinds) == {"Service", "ConfigMap"}, f"stand-in Redpanda objects {sorted(kinds)}")
    svc = one(kinds, "Service")
    check(svc.get("metadata", {}).get("name") == "redpanda",
          f"Redpanda Service {svc.get('metadata', {}).get('name')!r}: redpanda.fullnameOverride must reach the subchart")
    check(svc.get("metadata", {}).get("namespace") == "tickflow", "Redpanda Service namespace")
    values = json.loads(one(kinds, "ConfigMap").get("data", {}).get("values.json", "{}"))
    check(values.get("enabled") is True, f"subchart values lack enabled: true: {values}")
    check(values.get("fullnameOverride") == "redpanda", f"subchart fullnameOverride {values.get('fullnameOverride')!r}")
    check(values.get("statefulset") == {"replicas": 1}, f"subchart statefulset {values.get('statefulset')!r}")


def main():
    mode, path = sys.argv[1], sys.argv[2]
    with open(path, encoding="utf-8") as f:
        docs = [d for d in yaml.safe_load_all(f) if d]
    {"default": check_default, "options": check_options, "norbac": check_norbac,
     "tenancy": check_tenancy, "bundled": check_bundled}[mode](docs)
    if failures:
        for m in failures:
            print(f"FAIL ({mode}): {m}", file=sys.stderr)
        sys.exit(1)
    print(f"ok: {mode} rendering ({len(docs)} objects)")


if __name__ == "__main__":
    main()
