#!/usr/bin/env bash
# tests/helm/lint.sh - static checks of charts/tickflow with the real helm
# binary (no cluster needed). Exits non-zero on the first failure.
#
#  1. The chart as committed declares an optional dependency on the official
#     Redpanda chart, which cannot be downloaded here (no internet). Helm then
#     reports it: `helm lint` passes with one warning ("chart directory is
#     missing these dependencies: redpanda"), `helm lint --strict` fails on
#     that warning, and `helm template`/`helm install` refuse to run ("found in
#     Chart.yaml, but missing in charts/ directory: redpanda"). This script
#     asserts exactly that, and nothing else, for the real chart.
#  2. Everything else runs on a copy without the dependency
#     (tests/helm/chart-without-redpanda.sh): `helm lint --strict` with the
#     default values and with tests/helm/values-options.yaml, `helm template`
#     of both checked object by object (tests/helm/check_render.py: exact RBAC,
#     operator env, labels, probes, security contexts), NOTES.txt rendered, and
#     values that values.schema.json (or the chart's own checks) must reject.
#  3. The real Chart.yaml with a local stand-in for the Redpanda chart (same
#     name and version, a values schema open at the top level like the pinned
#     5.9.x chart's): `redpanda.enabled=true` (the dependency's condition)
#     includes it and its schema accepts the `enabled` key it is passed; off by
#     default. A closed-schema stand-in (like the chart since 25.1) shows why
#     the pin matters: it rejects `enabled`.
#
# Helm: $HELM, else the one tests/k8s/controlplane.sh install builds, else helm
# from PATH. Python 3 with PyYAML: $PYTHON, else the project's test venv
# (tests/python/setup.sh creates it and prints its python; PyYAML is in
# tests/python/requirements.txt).
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cache="${TICKFLOW_CACHE:-$HOME/.cache/tickflow}"
chart_src="$repo/charts/tickflow"
here="$repo/tests/helm"

if [[ -z "${HELM:-}" ]]; then
  if [[ -x "$cache/k8s-v1.33.13/bin/helm" ]]; then
    HELM="$cache/k8s-v1.33.13/bin/helm"
  elif command -v helm >/dev/null; then
    HELM="$(command -v helm)"
  else
    echo "lint.sh: no helm (run tests/k8s/controlplane.sh install, or set HELM)" >&2
    exit 1
  fi
fi
if [[ -z "${PYTHON:-}" ]]; then
  PYTHON="$("$repo/tests/python/setup.sh" | tail -n 1)" \
    || { echo "lint.sh: tests/python/setup.sh failed (or set PYTHON to a python3 with PyYAML)" >&2; exit 1; }
fi
if ! "$PYTHON" -c 'import yaml' 2>/dev/null; then
  echo "lint.sh: $PYTHON has no PyYAML (re-run tests/python/setup.sh, or set PYTHON)" >&2
  exit 1
fi

work="$(mktemp -d "${TMPDIR:-/tmp}/tickflow-helm-lint.XXXXXX")"
trap 'rm -rf "$work"' EXIT
# Keep helm's config, cache and plugins out of $HOME.
export HELM_CONFIG_HOME="$work/helm/config" HELM_CACHE_HOME="$work/helm/cache" HELM_DATA_HOME="$work/helm/data"

step() { printf '==> %s\n' "$*"; }
fail() { printf 'FAIL: %s\n' "$*" >&2; exit 1; }

# expect_fail DESCRIPTION PATTERN helm-args...: helm must fail and its output
# must match the (grep -E) pattern.
expect_fail() {
  local what="$1" pattern="$2" out
  shift 2
  if out="$("$HELM" "$@" 2>&1)"; then
    fail "$what: helm $* succeeded, expected a failure"
  fi
  if ! grep -Eq -- "$pattern" <<<"$out"; then
    printf '%s\n' "$out" >&2
    fail "$what: error does not match /$pattern/"
  fi
  printf '    rejected (%s): %s\n' "$what" "$(grep -Em1 -- "$pattern" <<<"$out")"
}

"$HELM" version --short

# 1. The committed chart ------------------------------------------------------
if compgen -G "$chart_src/charts/redpanda-*.tgz" >/dev/null; then
  step "helm lint --strict charts/tickflow (Redpanda dependency downloaded)"
  "$HELM" lint --strict "$chart_src"
else
  step "helm lint charts/tickflow: only the missing Redpanda dependency may be reported"
  out="$("$HELM" lint "$chart_src" 2>&1)" || { printf '%s\n' "$out" >&2; fail "helm lint charts/tickflow"; }
  printf '%s\n' "$out"
  grep -q 'chart directory is missing these dependencies: redpanda' <<<"$out" \
    || fail "expected helm lint to warn about the missing redpanda dependency"
  if grep -E '^\[(WARNING|ERROR)\]' <<<"$out" | grep -v 'missing these dependencies: redpanda$'; then
    fail "helm lint charts/tickflow reports more than the missing dependency"
  fi
  step "helm template charts/tickflow without charts/redpanda-*.tgz must refuse to render"
  expect_fail "undownloaded dependency" 'found in Chart\.yaml, but missing in charts/ directory: redpanda' \
    template tickflow "$chart_src" -n tickflow
fi

# 2. The chart without the dependency -------------------------------------------
chart="$("$here/chart-without-redpanda.sh" "$work/nodep/tickflow")"
step "copy without the Redpanda dependency: $chart"

step "helm lint --strict (default values)"
"$HELM" lint --strict "$chart" -n tickflow
step "helm lint --strict (tests/helm/values-options.yaml)"
"$HELM" lint --strict "$chart" -n tickflow-system -f "$here/values-options.yaml"

step "helm template (default values)"
"$HELM" template tickflow "$chart" -n tickflow >"$work/default.yaml"
"$PYTHON" "$here/check_render.py" default "$work/default.yaml"

step "helm template (values-options.yaml, ServiceMonitor API available)"
"$HELM" template tickflow "$chart" -n tickflow-system -f "$here/values-options.yaml" \
  --api-versions monitoring.coreos.com/v1/ServiceMonitor >"$work/options.yaml"
"$PYTHON" "$here/check_render.py" options "$work/options.yaml"

step "helm template (watchNamespaces, networkPolicy, allowed worker images)"
"$HELM" template tickflow "$chart" -n tickflow --set 'watchNamespaces={desk-a,desk-b}' \
  --set networkPolicy.enabled=true \
  --set 'workerImage.allowedRepositories={registry.example.com/team/*}' >"$work/tenancy.yaml"
"$PYTHON" "$here/check_render.py" tenancy "$work/tenancy.yaml"

step "helm template (rbac.create=false)"
"$HELM" template tickflow "$chart" -n tickflow --set rbac.create=false >"$work/norbac.yaml"
"$PYTHON" "$here/check_render.py" norbac "$work/norbac.yaml"

step "helm template: no ServiceMonitor when the cluster lacks its API"
"$HELM" template tickflow "$chart" -n tickflow --set metrics.serviceMonitor.enabled=true >"$work/nosm.yaml"
if grep -q '^kind: ServiceMonitor' "$work/nosm.yaml"; then fail "ServiceMonitor rendered without the API"; fi

step "helm template: empty kafka defaults fall back to the in-cluster Redpanda"
"$HELM" template tickflow "$chart" -n data --set kafka.bootstrapServers= --set kafka.schemaRegistryUrl= >"$work/empty.yaml"
grep -q '"redpanda.data.svc.cluster.local:9093"' "$work/empty.yaml" || fail "bootstrap servers fallback"
grep -q '"http://redpanda.data.svc.cluster.local:8081"' "$work/empty.yaml" || fail "schema registry fallback"

step "helm template: redpanda.enabled (false or true) passes the chart's schema and changes no tickflow object"
for v in false true; do
  "$HELM" template tickflow "$chart" -n tickflow --set redpanda.enabled=$v >"$work/rp-$v.yaml"
  "$PYTHON" "$here/check_render.py" default "$work/rp-$v.yaml"
done

# NOTES.txt is not printed by `helm template`, and `helm install --dry-run`
# needs a cluster: render it through tpl in a scratch template of the copy.
step "NOTES.txt renders (default values; ServiceMonitor without its API)"
mkdir -p "$chart/notes-check"
cp "$chart/templates/NOTES.txt" "$chart/notes-check/NOTES.txt"
cat >"$chart/templates/zz-notes-check.yaml" <<'EOF'
apiVersion: v1
kind: ConfigMap
metadata:
  name: notes-check
data:
  notes: {{ tpl (.Files.Get "notes-check/NOTES.txt") . | toJson }}
EOF
"$HELM" template tickflow "$chart" -n tickflow --show-only templates/zz-notes-check.yaml >"$work/notes.yaml"
"$PYTHON" - "$work/notes.yaml" <<'EOF'
import sys, yaml
notes = yaml.safe_load(open(sys.argv[1]))["data"]["notes"]
for want in ("kubectl -n tickflow rollout status deployment/tickflow-operator",
             "kubectl apply -f manifests/streamquery.yaml",
             "kubectl get marketproducers,streamqueries",
             "WARNING: the bundled Redpanda is off (redpanda.enabled=false)"):
    assert want in notes, f"NOTES.txt lacks {want!r}:\n{notes}"
print("ok: NOTES.txt (defaults)")
EOF
"$HELM" template tickflow "$chart" -n tickflow --show-only templates/zz-notes-check.yaml \
  --set redpanda.enabled=true >"$work/notes-rp.yaml"
"$PYTHON" - "$work/notes-rp.yaml" <<'EOF'
import sys, yaml
notes = yaml.safe_load(open(sys.argv[1]))["data"]["notes"]
assert "bundled Redpanda is off" not in notes, notes
print("ok: NOTES.txt (redpanda.enabled=true: no warning)")
EOF
"$HELM" template tickflow "$chart" -n tickflow --show-only templates/zz-notes-check.yaml \
  --set kafka.bootstrapServers=kafka:9092 --set kafka.schemaRegistryUrl=http://registry:8081 \
  --set metrics.serviceMonitor.enabled=true >"$work/notes2.yaml"
"$PYTHON" - "$work/notes2.yaml" <<'EOF'
import sys, yaml
notes = yaml.safe_load(open(sys.argv[1]))["data"]["notes"]
assert "bundled Redpanda is off" not in notes, notes
assert "no ServiceMonitor was created" in notes, notes
print("ok: NOTES.txt (external Kafka, ServiceMonitor without its API)")
EOF
rm -rf "$chart/notes-check" "$chart/templates/zz-notes-check.yaml"

step "values the chart must reject"
t=(template tickflow "$chart" -n tickflow)
expect_fail "replicaCount 0" "replicaCount.*minimum|minimum.*replicaCount" "${t[@]}" --set replicaCount=0
expect_fail "replicaCount not an integer" "replicaCount" "${t[@]}" --set-string replicaCount=two
expect_fail "metrics.port out of range" "metrics/port" "${t[@]}" --set metrics.port=70000
expect_fail "metrics.port 0" "metrics/port" "${t[@]}" --set metrics.port=0
expect_fail "logFormat" "logFormat" "${t[@]}" --set logFormat=xml
expect_fail "pullPolicy" "image/pullPolicy" "${t[@]}" --set image.pullPolicy=Sometimes
expect_fail "unknown top-level value" "additional properties 'replicas' not allowed" "${t[@]}" --set replicas=3
expect_fail "unknown nested value" "additional properties 'port' not allowed" "${t[@]}" --set kafka.port=9092
expect_fail "watchNamespace not a DNS label" "watchNamespace" "${t[@]}" --set watchNamespace=Not_A_Namespace
expect_fail "schema registry URL without scheme" "schemaRegistryUrl" "${t[@]}" --set kafka.schemaRegistryUrl=registry:8081
expect_fail "bootstrap servers without port" "bootstrapServers" "${t[@]}" --set kafka.bootstrapServers=kafka
expect_fail "serviceMonitor interval" "interval" "${t[@]}" --set metrics.serviceMonitor.interval=often
expect_fail "replicas without leader election" "needs leaderElection.enabled=true" \
  "${t[@]}" --set replicaCount=2 --set leaderElection.enabled=false
expect_fail "redpanda.enabled not a boolean" "redpanda/enabled" "${t[@]}" --set-string redpanda.enabled=yes
expect_fail "redpanda.enabled as the string \"true\"" "redpanda/enabled" "${t[@]}" --set-string redpanda.enabled=true
expect_fail "tags (no longer used: the switch is redpanda.enabled)" "additional properties 'tags' not allowed" \
  "${t[@]}" --set tags.redpanda=true

# 3. The real Chart.yaml with a stand-in Redpanda chart ----------------------------
# Not the Redpanda chart (it cannot be downloaded here): a stub with the same
# name and version whose values schema is open at the top level like the
# pinned 5.9.x chart's (typed properties, no `enabled` among them, but no
# additionalProperties: false either). It renders a Service named like the
# real chart's and a ConfigMap holding the values it received.
step "real Chart.yaml + stand-in charts/redpanda (values schema open at the top level, like 5.9.x)"
stub="$work/stub/tickflow"
mkdir -p "$stub"
tar -C "$chart_src" --exclude='./charts' --exclude='./Chart.lock' -cf - . | tar -C "$stub" -xf -
mkdir -p "$stub/charts/redpanda/templates"
rp_version="$(awk '/^dependencies:/{d=1} d && $1=="version:"{print $2; exit}' "$chart_src/Chart.yaml")"
rp_condition="$(awk '/^dependencies:/{d=1} d && $1=="condition:"{print $2; exit}' "$chart_src/Chart.yaml")"
[[ "$rp_condition" == "redpanda.enabled" ]] \
  || fail "charts/tickflow/Chart.yaml: the redpanda dependency must have condition: redpanda.enabled (found ${rp_condition:-none})"
if awk '/^dependencies:/{d=1} d' "$chart_src/Chart.yaml" | grep -Eq '^[[:space:]]+tags:'; then
  fail "charts/tickflow/Chart.yaml: the redpanda dependency still has tags"
fi
cat >"$stub/charts/redpanda/Chart.yaml" <<EOF
apiVersion: v2
name: redpanda
version: $rp_version
description: test stand-in for the official Redpanda chart (tests/helm/lint.sh)
EOF
cat >"$stub/charts/redpanda/values.yaml" <<'EOF'
fullnameOverride: ""
statefulset:
  replicas: 3
EOF
cat >"$stub/charts/redpanda/values.schema.json" <<'EOF'
{
  "$schema": "https://json-schema.org/draft/2020-12/schema",
  "type": "object",
  "properties": {
    "global": {"type": "object"},
    "fullnameOverride": {"type": "string"},
    "statefulset": {"type": "object", "properties": {"replicas": {"type": "integer"}}}
  }
}
EOF
cat >"$stub/charts/redpanda/templates/service.yaml" <<'EOF'
apiVersion: v1
kind: Service
metadata:
  name: {{ .Values.fullnameOverride | default .Release.Name }}
  namespace: {{ .Release.Namespace }}
spec:
  ports:
    - name: kafka
      port: 9093
---
apiVersion: v1
kind: ConfigMap
metadata:
  name: {{ .Values.fullnameOverride | default .Release.Name }}-stand-in-values
  namespace: {{ .Release.Namespace }}
data:
  values.json: {{ toJson .Values | quote }}
EOF
"$HELM" lint --strict "$stub" -n tickflow
"$HELM" lint --strict "$stub" -n tickflow --set redpanda.enabled=true
"$HELM" template tickflow "$stub" -n tickflow >"$work/stub-default.yaml"
"$PYTHON" "$here/check_render.py" default "$work/stub-default.yaml"
"$HELM" template tickflow "$stub" -n tickflow --set redpanda.enabled=false >"$work/stub-off.yaml"
"$PYTHON" "$here/check_render.py" default "$work/stub-off.yaml"
echo "    redpanda.enabled unset or false: no Redpanda object"
"$HELM" template tickflow "$stub" -n tickflow --set redpanda.enabled=true \
  --set redpanda.statefulset.replicas=1 >"$work/stub-on.yaml"
"$PYTHON" "$here/check_render.py" bundled "$work/stub-on.yaml"
echo "    redpanda.enabled=true renders the subchart as \"redpanda\"; its open schema accepts \`enabled\`"
expect_fail "a redpanda.* value the subchart's schema rejects" "statefulset/replicas" \
  template tickflow "$stub" -n tickflow --set redpanda.enabled=true --set-string redpanda.statefulset.replicas=one

step "why 5.9.x: a stand-in with a closed values schema (the Redpanda chart since 25.1) rejects \`enabled\`"
"$PYTHON" - "$stub/charts/redpanda/values.schema.json" <<'EOF'
import json, sys
schema = json.load(open(sys.argv[1]))
schema["additionalProperties"] = False
json.dump(schema, open(sys.argv[1], "w"), indent=2)
EOF
"$HELM" template tickflow "$stub" -n tickflow >/dev/null
expect_fail "closed subchart schema with redpanda.enabled=true" "additional properties 'enabled' not allowed" \
  template tickflow "$stub" -n tickflow --set redpanda.enabled=true

step "the pinned Redpanda chart version ($rp_version) is the one the docs and values use"
for f in charts/tickflow/templates/NOTES.txt charts/redpanda-kind-values.yaml docs/kubernetes.md; do
  grep -q -- "--version $rp_version\|pinned to $rp_version" "$repo/$f" || fail "$f does not mention Redpanda chart version $rp_version"
  if grep -o -- '--version [0-9][0-9.]*' "$repo/$f" | grep -v -- "--version $rp_version$"; then
    fail "$f mentions another Redpanda chart version"
  fi
done
grep -q "targetRevision: $rp_version\$" "$repo/manifests/argocd/redpanda.yaml" \
  || fail "manifests/argocd/redpanda.yaml does not pin Redpanda chart version $rp_version"
if grep -rn 'tags\.redpanda' "$repo/charts" "$repo/docs" "$repo/scripts" "$repo/manifests"; then
  fail "stale references to tags.redpanda (the switch is redpanda.enabled)"
fi

step "all helm checks passed"
