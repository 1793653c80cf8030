#!/usr/bin/env bash
# The chart's monitoring (charts/tickflow: monitoring.podMonitor,
# monitoring.prometheusRule, monitoring.dashboards) checked with real tools:
#  1. promtool (built from github.com/prometheus/prometheus) checks the
#     PrometheusRule's rules as `helm template` renders them and runs their
#     unit tests (tests/monitoring/rules.test.yaml); values change the rules
#     as documented (thresholds, disabled alerts, namespaces, dashboard label
#     and data source uid).
#  2. The rendered PodMonitor, PrometheusRule, ServiceMonitor and dashboard
#     ConfigMaps are validated by the test control plane's kube-apiserver
#     (`kubectl apply --dry-run=server`) against the prometheus-operator CRDs
#     from the github.com/prometheus-operator/prometheus-operator module; a
#     broken PodMonitor must be refused, to show the schemas are enforced.
#  3. The market view's SQL (tests/monitoring/market_sql.py) runs against the
#     tables the PostgreSQL sink writes from replays of sql/ohlc_5s.sql,
#     trading_alerts.sql and risk_alerts.sql, and returns rows with the
#     columns each panel reads.
#  4. Every PromQL expression of the dashboards and rules parses with the same
#     Prometheus module's parser and names only metrics and labels that real
#     processes export: a producer and a Kafka query (sql/ohlc_5s.sql,
#     checkpointing, fed a record that is not Avro and a tombstone) of the
#     release tickflow-worker and a tickflow-operator holding its Lease and
#     reconciling a StreamQuery and a MarketProducer are started and their
#     /metrics scraped (tests/monitoring/build/promqlcheck).
#  5. The PodMonitor's selector and relabelling, applied by Prometheus'
#     relabel code to the pods the operator created (KWOK), select both
#     workers and give their series namespace, pod, component and query or
#     producer.
#
# Usage: tests/monitoring/check.sh [install|run]
#   install  build promtool and promqlcheck into $TICKFLOW_CACHE/monitoring-<version>/bin
#            and fetch the prometheus-operator module (CRDs); skips what is there
#   run      (default) install, then all the checks. Needs the Kafka broker,
#            the schema registry, PostgreSQL and the control plane running
#            (tests/kafka/kafka.sh, tests/schema_registry/registry.sh,
#            tests/postgres/postgres.sh, tests/k8s/controlplane.sh start) and
#            the release binaries in
#            $CARGO_TARGET_DIR/release (cargo build --release).
# Settings: TICKFLOW_CACHE (default ~/.cache/tickflow), MONITORING_BUILD_PARALLEL
# (go build -p and GOMAXPROCS, default 1), MONITORING_SCRAPE_TIMEOUT seconds
# (default 120), PYTHON (python3 with PyYAML; default: tests/python/setup.sh's).
set -euo pipefail

HERE="$(cd "$(dirname "$0")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
# Versions: the prometheus one must match build/go.mod. The proxy serves
# prometheus-operator v0.85.0 as a whole module (its CRDs are in example/).
PROMETHEUS_VERSION="v0.316.0"
PROMETHEUS_OPERATOR_VERSION="v0.85.0"
CACHE="${TICKFLOW_CACHE:-$HOME/.cache/tickflow}"
MON_HOME="$CACHE/monitoring-$PROMETHEUS_VERSION"
BIN="$MON_HOME/bin"
CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$CACHE/target}"

die() { echo "check.sh: FAIL: $*" >&2; exit 1; }
log() { echo "check.sh: $*" >&2; }
step() { printf '==> %s\n' "$*"; }

go_env() {
  export GOPATH="$CACHE/go"
  export GOMODCACHE="$CACHE/go/pkg/mod"
  export GOCACHE="$MON_HOME/go-build"
  export GOTOOLCHAIN=local
  export GOMAXPROCS="${MONITORING_BUILD_PARALLEL:-1}"
  export GOFLAGS="-p=${MONITORING_BUILD_PARALLEL:-1} -buildvcs=false -mod=readonly -trimpath"
  export CGO_ENABLED=0
  export GOWORK=off
}

crd_dir() {
  echo "$CACHE/go/pkg/mod/github.com/prometheus-operator/prometheus-operator@$PROMETHEUS_OPERATOR_VERSION/example/prometheus-operator-crd"
}

install() {
  if [ -x "$BIN/promtool" ] && [ -x "$BIN/promqlcheck" ] && [ -f "$(crd_dir)/monitoring.coreos.com_podmonitors.yaml" ] \
      && [ "$(cat "$BIN/.source" 2>/dev/null)" = "$(source_hash)" ]; then
    return 0
  fi
  command -v go >/dev/null || die "go not found (promtool is built from its Go module)"
  go_env
  grep -q "github.com/prometheus/prometheus $PROMETHEUS_VERSION\$" "$HERE/build/go.mod" \
    || die "tests/monitoring/build/go.mod does not require github.com/prometheus/prometheus $PROMETHEUS_VERSION"
  mkdir -p "$BIN"
  local t0=$SECONDS
  if [ ! -x "$BIN/promtool" ]; then
    log "building promtool $PROMETHEUS_VERSION (cold: a few minutes on 2 cores)"
    # remove_all_sd: without the service-discovery plugins (cloud SDKs), which
    # promtool's rule checks and tests do not use; the build is much smaller.
    (cd "$HERE/build" && nice -n 19 go build -tags remove_all_sd -ldflags "-s -w" -o "$BIN/promtool.tmp" \
      github.com/prometheus/prometheus/cmd/promtool) >"$MON_HOME/build-promtool.log" 2>&1 \
      || { cat "$MON_HOME/build-promtool.log" >&2; die "building promtool failed"; }
    mv "$BIN/promtool.tmp" "$BIN/promtool"
    printf 'promtool\t%ss\t%s\n' "$((SECONDS - t0))" "$(date -u +%FT%TZ)" >>"$MON_HOME/build-times.tsv"
    log "built promtool in $((SECONDS - t0))s"
  fi
  t0=$SECONDS
  (cd "$HERE/build" && nice -n 19 go build -ldflags "-s -w" -o "$BIN/promqlcheck.tmp" ./promqlcheck) \
    >"$MON_HOME/build-promqlcheck.log" 2>&1 \
    || { cat "$MON_HOME/build-promqlcheck.log" >&2; die "building promqlcheck failed"; }
  mv "$BIN/promqlcheck.tmp" "$BIN/promqlcheck"
  source_hash >"$BIN/.source"
  log "built promqlcheck in $((SECONDS - t0))s"
  # Outside any module (its go.sum is not needed: the proxy's checksum database vouches for it).
  (cd "$MON_HOME" && GOFLAGS= go mod download "github.com/prometheus-operator/prometheus-operator@$PROMETHEUS_OPERATOR_VERSION") \
    || die "downloading github.com/prometheus-operator/prometheus-operator@$PROMETHEUS_OPERATOR_VERSION"
  [ -f "$(crd_dir)/monitoring.coreos.com_podmonitors.yaml" ] || die "no CRDs in $(crd_dir)"
  # The compiled packages are of no further use once the binaries are there.
  rm -rf "$GOCACHE"
}

# promqlcheck is rebuilt when its source or the module changes.
source_hash() {
  cat "$HERE/build/go.mod" "$HERE/build/go.sum" "$HERE"/build/promqlcheck/*.go | sha256sum | cut -d' ' -f1
}

# ---------------------------------------------------------------- run

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

pids=()
pg_tables=()
work=""
# alive PID: the process runs (an exited child stays a zombie until waited for).
alive() {
  local st
  st="$(ps -o stat= -p "$1" 2>/dev/null)" || return 1
  [[ -n "$st" && "$st" != Z* ]]
}

cleanup_run() {
  local p i
  for p in "${pids[@]}"; do
    kill "$p" 2>/dev/null || true
  done
  for p in "${pids[@]}"; do
    for i in $(seq 50); do alive "$p" || break; sleep 0.2; done
    kill -9 "$p" 2>/dev/null || true
    wait "$p" 2>/dev/null || true
  done
  if [ -n "${KUBECONFIG:-}" ] && [ -n "${KUBECTL:-}" ]; then
    "$KUBECTL" delete -n tickflow-mon-op streamquery ohlc-5s --ignore-not-found --wait=false >/dev/null 2>&1 || true
    "$KUBECTL" delete namespace tickflow-mon-a tickflow-mon-b tickflow-mon-op --ignore-not-found --wait=false >/dev/null 2>&1 || true
    "$KUBECTL" delete -f "$(crd_dir)/monitoring.coreos.com_podmonitors.yaml" \
      -f "$(crd_dir)/monitoring.coreos.com_prometheusrules.yaml" \
      -f "$(crd_dir)/monitoring.coreos.com_servicemonitors.yaml" --ignore-not-found --wait=false >/dev/null 2>&1 || true
  fi
  local t
  for t in "${pg_tables[@]}"; do
    PGPASSWORD="$TICKFLOW_TEST_PG_PASSWORD" "$TICKFLOW_TEST_PG_PSQL" "$TICKFLOW_TEST_PG_URL" -X -q \
      -c "DROP TABLE IF EXISTS $t" >/dev/null 2>&1 || true
  done
  [ -n "$work" ] && rm -rf "$work"
}

run() {
  install
  if [ -z "${PYTHON:-}" ]; then
    PYTHON="$("$REPO/tests/python/setup.sh" | tail -n 1)"
  fi
  local worker="$CARGO_TARGET_DIR/release/tickflow-worker" operator="$CARGO_TARGET_DIR/release/tickflow-operator"
  [ -x "$worker" ] && [ -x "$operator" ] || die "no release binaries in $CARGO_TARGET_DIR/release (cargo build --release)"
  "$REPO/tests/k8s/controlplane.sh" status >/dev/null || die "the test control plane is not running (tests/k8s/controlplane.sh start)"
  "$REPO/tests/kafka/kafka.sh" status >/dev/null || die "the Kafka broker is not running (tests/kafka/kafka.sh start)"
  "$REPO/tests/schema_registry/registry.sh" status >/dev/null || die "the schema registry is not running"
  eval "$("$REPO/tests/k8s/controlplane.sh" env)"
  eval "$("$REPO/tests/kafka/kafka.sh" env)"
  eval "$("$REPO/tests/schema_registry/registry.sh" env)"
  "$REPO/tests/postgres/postgres.sh" status >/dev/null || die "PostgreSQL is not running (tests/postgres/postgres.sh start)"
  eval "$("$REPO/tests/postgres/postgres.sh" env)"

  work="$(mktemp -d "${TMPDIR:-/tmp}/tickflow-monitoring.XXXXXX")"
  trap cleanup_run EXIT
  local out="$work/out"
  mkdir -p "$out"
  echo "promtool and promqlcheck from github.com/prometheus/prometheus $PROMETHEUS_VERSION ($BIN)"

  # -------------------------------------------------------------- render
  local chart
  chart="$("$REPO/tests/helm/chart-without-redpanda.sh" "$work/chart/tickflow")"
  local apis=(--api-versions monitoring.coreos.com/v1/ServiceMonitor --api-versions monitoring.coreos.com/v1/PodMonitor
              --api-versions monitoring.coreos.com/v1/PrometheusRule)
  local on=(--set metrics.serviceMonitor.enabled=true --set monitoring.podMonitor.enabled=true
            --set monitoring.prometheusRule.enabled=true --set monitoring.dashboards.enabled=true)
  step "helm template: monitoring off by default, on by values"
  "$HELM" template tickflow "$chart" -n tickflow "${apis[@]}" >"$out/default.yaml"
  if grep -Eq '^kind: (PodMonitor|PrometheusRule|ServiceMonitor)$|grafana_dashboard' "$out/default.yaml"; then
    die "monitoring objects rendered with the default values"
  fi
  "$HELM" template tickflow "$chart" -n tickflow "${apis[@]}" "${on[@]}" >"$out/on.yaml"
  "$HELM" template tickflow "$chart" -n tickflow "${on[@]}" >"$out/noapi.yaml"
  "$HELM" template tickflow "$chart" -n tickflow "${apis[@]}" "${on[@]}" \
    --set 'watchNamespaces={tickflow-mon-a,tickflow-mon-b}' \
    --set 'monitoring.prometheusRule.disabled={TickflowProducerStopped,TickflowOperatorNotLeading}' \
    --set monitoring.prometheusRule.checkpointStale.checkpointIntervalSeconds=60 \
    --set monitoring.prometheusRule.alertLabels.team=market-data \
    --set monitoring.dashboards.label=tickflow_dashboards --set monitoring.dashboards.labelValue=yes \
    --set monitoring.dashboards.namespace=tickflow-mon-op \
    --set monitoring.dashboards.postgresDatasourceUid=pg-desk-a >"$out/options.yaml"
  "$PYTHON" - "$out" "$REPO/charts/tickflow/dashboards" <<'EOF'
import json, os, sys, yaml
out, dash_dir = sys.argv[1], sys.argv[2]
def objs(name):
    return [d for d in yaml.safe_load_all(open(os.path.join(out, name))) if d]
def kinds(docs, kind):
    return [d for d in docs if d["kind"] == kind]
on, noapi, opt = objs("on.yaml"), objs("noapi.yaml"), objs("options.yaml")
files = sorted(f for f in os.listdir(dash_dir) if f.endswith(".json"))
assert len(files) == 3, files
# Each file a dashboard Grafana can import: its own uid and title, panels
# with distinct ids and a place on the grid, every variable a panel uses defined.
uids = set()
for f in files:
    d = json.load(open(os.path.join(dash_dir, f)))
    assert d["uid"] == f[:-len(".json")] and d["uid"] not in uids and d["title"] and d["schemaVersion"] >= 36, f
    uids.add(d["uid"])
    ids = [p["id"] for p in d["panels"]]
    assert len(ids) == len(set(ids)) and all("gridPos" in p and p["type"] for p in d["panels"]), f
    names = {v["name"] for v in d["templating"]["list"]}
    import re
    used = set(re.findall(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)", json.dumps(d["panels"]) + json.dumps(d["templating"])))
    builtin = {"__rate_interval", "__interval", "__range", "__timeFilter", "__timeGroupAlias", "__all"}
    assert used - names - builtin == set(), (f, used - names - builtin)

# The rules as promtool reads them.
[rule] = kinds(on, "PrometheusRule")
assert rule["metadata"]["namespace"] == "tickflow"
yaml.safe_dump({"groups": rule["spec"]["groups"]}, open(os.path.join(out, "rules.yaml"), "w"), sort_keys=False)
alerts = [r["alert"] for g in rule["spec"]["groups"] for r in g["rules"]]
assert sorted(alerts) == sorted(["TickflowConsumerLagGrowing", "TickflowCheckpointStale", "TickflowDeadLetters",
    "TickflowQueryDegraded", "TickflowQueryFailed", "TickflowQueryNotStarting", "TickflowProducerStopped",
    "TickflowOperatorNotLeading"]), alerts

# One PodMonitor selecting worker pods in every namespace (the operator watches all).
[pm] = kinds(on, "PodMonitor")
assert pm["metadata"]["namespace"] == "tickflow" and pm["spec"]["namespaceSelector"] == {"any": True}, pm
sel = pm["spec"]["selector"]["matchLabels"]
assert sel == {"app.kubernetes.io/name": "tickflow-worker", "app.kubernetes.io/managed-by": "tickflow-operator"}, sel
ep = pm["spec"]["podMetricsEndpoints"][0]
assert ep["port"] == "http" and ep["path"] == "/metrics", ep
targets = {r["targetLabel"] for r in ep["relabelings"]}
assert targets == {"namespace", "pod", "component", "query", "producer"}, targets
json.dump(sorted(targets), open(os.path.join(out, "target-labels.json"), "w"))
yaml.safe_dump(pm, open(os.path.join(out, "podmonitor.yaml"), "w"), sort_keys=False)
[sm] = kinds(on, "ServiceMonitor")
# The operator's phase series name the resource's namespace; it must stay `namespace`.
assert sm["spec"]["endpoints"][0].get("honorLabels") is True, sm

# Dashboards: one ConfigMap per file, sidecar label, the JSON unchanged but the data source uid.
cms = [c for c in kinds(on, "ConfigMap") if c["metadata"].get("labels", {}).get("grafana_dashboard") == "1"]
assert sorted(k for c in cms for k in c["data"]) == files, cms
for c in cms:
    for k, v in c["data"].items():
        assert json.loads(v) == json.load(open(os.path.join(dash_dir, k))), k

# Without the prometheus-operator APIs: no PodMonitor/PrometheusRule/ServiceMonitor, dashboards still.
assert not [d for d in noapi if d["kind"] in ("PodMonitor", "PrometheusRule", "ServiceMonitor")]
assert len([c for c in kinds(noapi, "ConfigMap") if "grafana_dashboard" in c["metadata"].get("labels", {})]) == 3

# Values: a PodMonitor per watched namespace, disabled alerts gone, the
# checkpoint threshold 3x the interval, extra alert labels, dashboard label,
# namespace and data source uid.
pms = kinds(opt, "PodMonitor")
assert sorted((p["metadata"]["namespace"], tuple(p["spec"]["namespaceSelector"]["matchNames"])) for p in pms) == \
    [("tickflow-mon-a", ("tickflow-mon-a",)), ("tickflow-mon-b", ("tickflow-mon-b",))], pms
[rule2] = kinds(opt, "PrometheusRule")
rules2 = {r["alert"]: r for g in rule2["spec"]["groups"] for r in g["rules"]}
assert "TickflowProducerStopped" not in rules2 and "TickflowOperatorNotLeading" not in rules2, list(rules2)
assert [g["name"] for g in rule2["spec"]["groups"]] == ["tickflow.workers"]
assert "> 180\n" in rules2["TickflowCheckpointStale"]["expr"], rules2["TickflowCheckpointStale"]["expr"]
assert all(r["labels"]["team"] == "market-data" and r["labels"]["severity"] for r in rules2.values())
cms2 = [c for c in kinds(opt, "ConfigMap") if c["metadata"].get("labels", {}).get("tickflow_dashboards") == "yes"]
assert len(cms2) == 3 and all(c["metadata"]["namespace"] == "tickflow-mon-op" for c in cms2), cms2
market = [json.loads(v) for c in cms2 for k, v in c["data"].items() if k == "tickflow-market.json"][0]
uids = {t["datasource"]["uid"] for p in market["panels"] for t in p["targets"]}
assert uids == {"pg-desk-a"}, uids
yaml.safe_dump_all([d for d in on if d["kind"] in ("PodMonitor", "PrometheusRule", "ServiceMonitor")] + cms + pms + cms2,
                   open(os.path.join(out, "monitoring-objects.yaml"), "w"), sort_keys=False)
print("ok: rendering (defaults off; PodMonitor, PrometheusRule, ServiceMonitor, 3 dashboard ConfigMaps; values honoured)")
EOF

  step "values.schema.json refuses bad monitoring values"
  local bad_values=(
    "monitoring.podMonitor.interval=often|monitoring/podMonitor/interval"
    "monitoring.prometheusRule.lagGrowing.for=10 minutes|lagGrowing/for"
    "monitoring.prometheusRule.disabled={TickflowNoSuchAlert}|disabled/0"
    "monitoring.prometheusRule.checkpointStale.checkpointIntervalSeconds=0|checkpointIntervalSeconds"
    "monitoring.dashboards.postgresDatasourceUid=a b|postgresDatasourceUid"
    "monitoring.grafana=true|additional properties 'grafana' not allowed"
  )
  local bv err
  for bv in "${bad_values[@]}"; do
    if err="$("$HELM" template tickflow "$chart" -n tickflow --set "${bv%%|*}" 2>&1)"; then
      die "helm template accepted --set ${bv%%|*}"
    fi
    grep -q -- "${bv#*|}" <<<"$err" || { echo "$err" >&2; die "--set ${bv%%|*}: error does not mention ${bv#*|}"; }
  done
  echo "    refused: ${#bad_values[@]} bad values"

  # -------------------------------------------------------------- promtool
  step "promtool check rules (the PrometheusRule as rendered)"
  "$BIN/promtool" check rules "$out/rules.yaml"
  step "promtool test rules (tests/monitoring/rules.test.yaml)"
  cp "$HERE/rules.test.yaml" "$out/rules.test.yaml"
  "$BIN/promtool" test rules "$out/rules.test.yaml"

  # -------------------------------------------------------------- CRD schemas
  step "prometheus-operator $PROMETHEUS_OPERATOR_VERSION CRDs on the test control plane; kubectl apply --dry-run=server"
  local crd
  for crd in podmonitors prometheusrules servicemonitors; do
    "$KUBECTL" apply --server-side -f "$(crd_dir)/monitoring.coreos.com_$crd.yaml" >/dev/null
    "$KUBECTL" wait --for condition=established --timeout=60s "crd/$crd.monitoring.coreos.com" >/dev/null
  done
  local ns
  for ns in tickflow tickflow-mon-a tickflow-mon-b tickflow-mon-op; do
    # A previous run's namespace may still be terminating.
    if [ "$("$KUBECTL" get namespace "$ns" -o jsonpath='{.status.phase}' 2>/dev/null)" = Terminating ]; then
      "$KUBECTL" wait --for=delete "namespace/$ns" --timeout=180s >/dev/null
    fi
    "$KUBECTL" get namespace "$ns" >/dev/null 2>&1 || "$KUBECTL" create namespace "$ns" >/dev/null
  done
  "$KUBECTL" apply --dry-run=server -f "$out/monitoring-objects.yaml"
  # The validation is real: a relabelling action prometheus-operator does not
  # know and a rule without expr are refused.
  "$PYTHON" - "$out" <<'EOF'
import os, sys, yaml
out = sys.argv[1]
docs = [d for d in yaml.safe_load_all(open(os.path.join(out, "monitoring-objects.yaml"))) if d]
pm = next(d for d in docs if d["kind"] == "PodMonitor")
pm["spec"]["podMetricsEndpoints"][0]["relabelings"][0]["action"] = "rewrite"
yaml.safe_dump(pm, open(os.path.join(out, "bad-podmonitor.yaml"), "w"))
pr = next(d for d in docs if d["kind"] == "PrometheusRule")
del pr["spec"]["groups"][0]["rules"][0]["expr"]
yaml.safe_dump(pr, open(os.path.join(out, "bad-rule.yaml"), "w"))
EOF
  local bad
  for bad in bad-podmonitor bad-rule; do
    if err="$("$KUBECTL" apply --dry-run=server -f "$out/$bad.yaml" 2>&1)"; then
      die "the API server accepted $bad.yaml: the CRD schemas are not enforced"
    fi
    echo "    refused as expected ($bad): $(head -c 200 <<<"$err")"
  done

  # -------------------------------------------------------------- market view SQL
  step "the market view's SQL against the tables the PostgreSQL sink writes (5 minutes of simulated market data)"
  local tid="mon_$$_$RANDOM"
  pg_tables=("${tid}_ohlc_5s" "${tid}_alerts" "${tid}_risk_alerts")
  "$worker" produce --duration 5m --output-dir "$work/data" --format jsonl >/dev/null 2>"$work/produce-files.log" \
    || { cat "$work/produce-files.log" >&2; die "produce to files"; }
  local ins=(--input "market_ticks=$work/data/market-ticks.jsonl" --input "order_events=$work/data/order-events.jsonl")
  local spec sqlfile stream
  for spec in ohlc_5s:ohlc_5s trading_alerts:alerts risk_alerts:risk_alerts; do
    sqlfile="${spec%%:*}"; stream="${spec#*:}"
    TICKFLOW_POSTGRES_PASSWORD="$TICKFLOW_TEST_PG_PASSWORD" "$worker" query --sql "$REPO/sql/$sqlfile.sql" "${ins[@]}" \
      --name "$tid-$sqlfile" --output "$stream=postgres:${tid}_$stream" --postgres-url "$TICKFLOW_TEST_PG_URL" \
      --checkpoint-dir "$work/pg-checkpoints/$sqlfile" >/dev/null 2>"$work/replay-$sqlfile.log" \
      || { cat "$work/replay-$sqlfile.log" >&2; die "replay of sql/$sqlfile.sql into PostgreSQL"; }
  done
  PGPASSWORD="$TICKFLOW_TEST_PG_PASSWORD" "$PYTHON" "$HERE/market_sql.py" "$REPO/charts/tickflow/dashboards/tickflow-market.json" \
    "$TICKFLOW_TEST_PG_PSQL" "$TICKFLOW_TEST_PG_URL" "${pg_tables[@]}"

  # -------------------------------------------------------------- scrape real processes
  step "scrape /metrics of a producer, a Kafka query and the operator"
  local id="mon-$$-$RANDOM" p_port q_port o_port
  p_port="$(free_port)"; q_port="$(free_port)"; o_port="$(free_port)"
  local topics=(--ticks-topic "$id-ticks" --orders-topic "$id-orders" --books-topic "$id-books")
  RUST_LOG=warn "$worker" produce --brokers "$KAFKA_BROKERS" --schema-registry "$SCHEMA_REGISTRY_URL" \
    --continuous --realtime --speed 20 "${topics[@]}" --http-addr "127.0.0.1:$p_port" \
    >"$work/producer.log" 2>&1 &
  pids+=($!)
  RUST_LOG=warn "$worker" query --sql "$REPO/sql/ohlc_5s.sql" --name "$id" \
    --brokers "$KAFKA_BROKERS" --schema-registry "$SCHEMA_REGISTRY_URL" \
    --input "market_ticks=kafka:$id-ticks" --output "ohlc_5s=kafka:$id-ohlc" --output-format json \
    --checkpoint-dir "$work/checkpoints" --checkpoint-interval 500ms --http-addr "127.0.0.1:$q_port" \
    >"$work/query.log" 2>&1 &
  pids+=($!)
  env -i PATH="$PATH" KUBECONFIG="$KUBECONFIG" TICKFLOW_OPERATOR_HTTP_ADDR="127.0.0.1:$o_port" \
    TICKFLOW_WATCH_NAMESPACE=tickflow-mon-op TICKFLOW_LEADER_ELECTION=true TICKFLOW_LEASE_NAME="$id" \
    POD_NAMESPACE=tickflow-mon-op POD_NAME="$id-operator" TICKFLOW_WORKER_IMAGE=tickflow-worker:monitoring \
    RUST_LOG=warn "$operator" run >"$work/operator.log" 2>&1 &
  pids+=($!)

  # Something for every labelled family: a record that is not Avro (a dead
  # letter, reason=...) and a tombstone (a skipped record) in the query's
  # input; a StreamQuery for the operator to reconcile (kind=, result=).
  "$PYTHON" - "$KAFKA_BROKERS" "$id-ticks" <<'EOF'
import sys
from confluent_kafka import Producer
p = Producer({"bootstrap.servers": sys.argv[1]})
p.produce(sys.argv[2], key=b"NOT-AVRO", value=b"this is not an Avro record")
p.produce(sys.argv[2], key=b"TOMBSTONE", value=None)
assert p.flush(30) == 0, "records not delivered"
EOF
  "$KUBECTL" apply --server-side -f "$REPO/charts/tickflow/crds/" >/dev/null
  "$KUBECTL" wait --for condition=established --timeout=60s crd/streamqueries.tickflow.io >/dev/null
  "$KUBECTL" apply -n tickflow-mon-op -f "$REPO/manifests/streamquery.yaml" -f "$REPO/manifests/marketproducer.yaml" >/dev/null

  local dashboards=() f
  for f in "$REPO"/charts/tickflow/dashboards/*.json; do dashboards+=(-dashboard "$f"); done
  local deadline=$((SECONDS + ${MONITORING_SCRAPE_TIMEOUT:-120})) rc=1 target_labels
  target_labels="$("$PYTHON" -c 'import json,sys; print(",".join(json.load(open(sys.argv[1])) + ["job", "instance"]))' "$out/target-labels.json")"
  while :; do
    for p in "${pids[@]}"; do
      alive "$p" || { tail -n 20 "$work"/*.log >&2; die "a scraped process exited"; }
    done
    for f in producer:$p_port query:$q_port operator:$o_port; do
      curl -fsS "http://127.0.0.1:${f#*:}/metrics" >"$out/${f%%:*}.prom" 2>"$out/${f%%:*}.curl" || true
    done
    # Only once the query has checkpointed and written output and the
    # operator leads: the families that appear late are there then.
    if grep -q '^tickflow_last_checkpoint_timestamp_seconds ' "$out/query.prom" \
        && grep -Eq '^tickflow_records_out_total\{.*\} [1-9]' "$out/query.prom" \
        && grep -Eq '^tickflow_dead_letters_total\{.*\} [1-9]' "$out/query.prom" \
        && grep -q '^tickflow_operator_leader 1$' "$out/operator.prom" \
        && grep -q '^tickflow_operator_reconciles_total{kind="StreamQuery"' "$out/operator.prom"; then
      rc=0
      "$BIN/promqlcheck" -exports "$out/producer.prom,$out/query.prom,$out/operator.prom" \
        -target-labels "$target_labels" -rules "$out/rules.yaml" "${dashboards[@]}" >"$out/promqlcheck.txt" || rc=$?
      [ "$rc" = 0 ] && break
      [ "$rc" = 1 ] || { cat "$out/promqlcheck.txt"; die "promqlcheck: parse errors"; }
    fi
    if [ "$SECONDS" -ge "$deadline" ]; then
      [ -s "$out/promqlcheck.txt" ] && cat "$out/promqlcheck.txt"
      for f in producer query operator; do
        echo "---- $f: /metrics $(cat "$out/$f.curl"), families:" >&2
        grep -h '^# TYPE' "$out/$f.prom" >&2 || true
      done
      tail -n 20 "$work"/*.log >&2
      die "after ${MONITORING_SCRAPE_TIMEOUT:-120}s: dashboards or rules name metrics or labels the processes do not export (or the query never checkpointed / the operator never led)"
    fi
    sleep 2
  done
  cat "$out/promqlcheck.txt"

  step "the PodMonitor's selector and relabelling over the worker pods the operator created"
  # Prometheus' relabel code over the target labels its Kubernetes service
  # discovery derives from these pods (KWOK runs them without containers).
  deadline=$((SECONDS + 60))
  until [ "$("$KUBECTL" get pods -n tickflow-mon-op -l app.kubernetes.io/name=tickflow-worker -o name | wc -l)" = 2 ]; do
    [ "$SECONDS" -lt "$deadline" ] || { "$KUBECTL" get all -n tickflow-mon-op >&2; die "no worker pods for the StreamQuery and the MarketProducer"; }
    sleep 1
  done
  "$KUBECTL" get pods -n tickflow-mon-op -o json >"$out/pods.json"
  "$BIN/promqlcheck" -relabel-podmonitor "$out/podmonitor.yaml" -pods "$out/pods.json" >"$out/relabelled.json"
  "$PYTHON" - "$out/relabelled.json" <<'EOF'
import json, sys
got = json.load(open(sys.argv[1]))
want = {"stream-query": ("query", "ohlc-5s"), "market-producer": ("producer", "market-sim")}
seen = set()
for r in got:
    assert r["selected"] and r["has_port"] and r["kept"], r
    labels = r["labels"]
    component = labels.get("component")
    key, name = want[component]
    assert labels == {"namespace": "tickflow-mon-op", "pod": r["pod"].split("/")[1], "component": component, key: name}, r
    print(f"    {r['pod']}: {labels}")
    seen.add(component)
assert seen == set(want), seen
EOF
  step "monitoring checks passed"
}

case "${1:-run}" in
  install) install ;;
  run) run ;;
  *) sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//' >&2; exit 2 ;;
esac
