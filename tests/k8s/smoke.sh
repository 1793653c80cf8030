#!/usr/bin/env bash
# End-to-end check of the test control plane (tests/k8s/controlplane.sh):
# a CRD and an instance of it, a 2-replica Deployment that becomes 2/2 ready
# under KWOK, garbage collection through ownerReferences, a PVC bound by the
# default StorageClass, helm (version, lint, install, uninstall of a trivial
# chart), and a ServiceAccount token whose RBAC `kubectl auth can-i` checks.
#
# Usage: tests/k8s/smoke.sh [--keep]
#   Starts the control plane when it is not running and stops it again at the
#   end (--keep: leave it running). Prints "N passed, N failed"; exits 1 on a
#   failure.
# Single-quoted bash -c snippets expand their variables when they run.
# shellcheck disable=SC2016
set -euo pipefail

HERE="$(cd "$(dirname "$0")" && pwd)"
CP="$HERE/controlplane.sh"
keep=0
[ "${1:-}" = --keep ] && keep=1

started=0
work=""
cleanup() {
  [ -n "$work" ] && rm -rf "$work"
  if [ "$started" = 1 ] && [ "$keep" = 0 ]; then
    "$CP" stop
  fi
}
trap cleanup EXIT

if ! "$CP" status >/dev/null 2>&1; then
  "$CP" start
  started=1
fi
eval "$("$CP" env)"
work="$(mktemp -d "${TMPDIR:-/tmp}/tickflow-k8s-smoke.XXXXXX")"
k() { "$KUBECTL" "$@"; }
ns="smoke-$$"

passed=0
failed=0
check() {
  local name="$1" t0=$SECONDS
  shift
  if "$@" >"$work/out" 2>&1; then
    passed=$((passed + 1))
    echo "ok   $name ($((SECONDS - t0))s)"
  else
    failed=$((failed + 1))
    echo "FAIL $name ($((SECONDS - t0))s)"
    sed 's/^/     /' "$work/out" | tail -n 20
  fi
}

# poll SECONDS COMMAND... : until COMMAND succeeds
poll() {
  local deadline=$((SECONDS + $1))
  shift
  until "$@"; do
    [ "$SECONDS" -lt "$deadline" ] || return 1
    sleep 0.5
  done
}

check "readyz" bash -c '[ "$("$KUBECTL" get --raw /readyz)" = ok ]'
check "server version" bash -c '"$KUBECTL" version -o json | grep -q "\"gitVersion\": \"v1.33"'
check "namespace" k create namespace "$ns"

# --- a CRD and an instance
cat >"$work/crd.yaml" <<'YAML'
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: widgets.smoke.tickflow.io
spec:
  group: smoke.tickflow.io
  names: {kind: Widget, plural: widgets, singular: widget, shortNames: [wg]}
  scope: Namespaced
  versions:
  - name: v1alpha1
    served: true
    storage: true
    subresources: {status: {}}
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec:
            type: object
            required: [size]
            properties:
              size:
                type: integer
                minimum: 1
                description: How big.
            x-kubernetes-validations:
            - rule: self.size <= 10
              message: size must be at most 10
          status:
            type: object
            properties:
              phase: {type: string}
YAML
check "apply CRD" k apply -f "$work/crd.yaml"
check "CRD established" k wait --for=condition=Established crd/widgets.smoke.tickflow.io --timeout=60s
check "apply instance" bash -c 'printf "%s\n" "apiVersion: smoke.tickflow.io/v1alpha1" "kind: Widget" "metadata: {name: w1}" "spec: {size: 3}" | "$KUBECTL" -n "$1" apply -f -' _ "$ns"
check "CEL validation rejects size 11" bash -c 'out="$(printf "%s\n" "apiVersion: smoke.tickflow.io/v1alpha1" "kind: Widget" "metadata: {name: w2}" "spec: {size: 11}" | "$KUBECTL" -n "$1" apply -f - 2>&1)" && exit 1; echo "$out"; grep -q "size must be at most 10" <<<"$out"' _ "$ns"
check "status subresource" k -n "$ns" patch widget w1 --subresource=status --type=merge -p '{"status":{"phase":"Running"}}'
check "get by short name" bash -c '"$KUBECTL" -n "$1" get wg w1 -o jsonpath="{.status.phase}" | grep -qx Running' _ "$ns"

# --- a Deployment with 2 replicas becomes 2/2 ready on the fake node
check "create deployment" k -n "$ns" create deployment web --image=registry.k8s.io/pause:3.10 --replicas=2
check "rollout 2/2" k -n "$ns" rollout status deployment/web --timeout=90s
check "2 ready replicas" bash -c '[ "$("$KUBECTL" -n "$1" get deployment web -o jsonpath="{.status.readyReplicas}")" = 2 ]' _ "$ns"
check "pods Running on the kwok node" bash -c '[ "$("$KUBECTL" -n "$1" get pods -l app=web -o jsonpath="{range .items[*]}{.status.phase}/{.spec.nodeName} {end}")" = "Running/$2 Running/$2 " ]' _ "$ns" "$TICKFLOW_K8S_NODE"

# --- garbage collection: deleting the owner removes the owned ConfigMap.
# A built-in owner first (its kind is watched by the garbage collector from
# the start: seconds).
k -n "$ns" create configmap owner >/dev/null
owner_uid="$(k -n "$ns" get configmap owner -o jsonpath='{.metadata.uid}')"
check "configmap owned by a configmap" bash -c 'printf "%s\n" "apiVersion: v1" "kind: ConfigMap" "metadata:" "  name: owned" "  ownerReferences:" "  - {apiVersion: v1, kind: ConfigMap, name: owner, uid: $2}" | "$KUBECTL" -n "$1" apply -f -' _ "$ns" "$owner_uid"
check "delete built-in owner" k -n "$ns" delete configmap owner
owned_gone() { ! k -n "$ns" get configmap owned >/dev/null 2>&1; }
check "built-in-owned configmap garbage-collected" poll 30 owned_gone
# Then the custom resource as owner. kube-controller-manager's garbage
# collector rediscovers resource types every 30 s (hard-coded), so for a CRD
# created moments ago this takes up to ~40 s.
uid="$(k -n "$ns" get widget w1 -o jsonpath='{.metadata.uid}')"
cat >"$work/cm.yaml" <<YAML
apiVersion: v1
kind: ConfigMap
metadata:
  name: w1-config
  ownerReferences:
  - apiVersion: smoke.tickflow.io/v1alpha1
    kind: Widget
    name: w1
    uid: $uid
    controller: true
    blockOwnerDeletion: true
data: {a: b}
YAML
check "owned configmap" k -n "$ns" apply -f "$work/cm.yaml"
check "delete owner" k -n "$ns" delete widget w1 --wait=true --timeout=60s
cm_gone() { ! k -n "$ns" get configmap w1-config >/dev/null 2>&1; }
check "CR-owned configmap garbage-collected" poll 90 cm_gone

# --- a PVC is bound by the default StorageClass (hostPath provisioner)
check "create pvc" bash -c 'printf "%s\n" "apiVersion: v1" "kind: PersistentVolumeClaim" "metadata: {name: data}" "spec: {accessModes: [ReadWriteOnce], resources: {requests: {storage: 1Gi}}}" | "$KUBECTL" -n "$1" apply -f -' _ "$ns"
check "pvc Bound" k -n "$ns" wait --for=jsonpath='{.status.phase}'=Bound pvc/data --timeout=60s

# --- helm
check "helm version" bash -c '"$HELM" version --short | grep -q "^v3\."'
chart="$work/chart"
mkdir -p "$chart/templates"
cat >"$chart/Chart.yaml" <<'YAML'
apiVersion: v2
name: smoke
description: A trivial chart for the control-plane smoke test
type: application
version: 0.1.0
appVersion: "1.0"
YAML
cat >"$chart/values.yaml" <<'YAML'
replicas: 1
greeting: hello
YAML
cat >"$chart/templates/configmap.yaml" <<'YAML'
apiVersion: v1
kind: ConfigMap
metadata:
  name: {{ .Release.Name }}-config
  labels:
    app.kubernetes.io/name: {{ .Chart.Name }}
    app.kubernetes.io/instance: {{ .Release.Name }}
data:
  greeting: {{ .Values.greeting | quote }}
YAML
cat >"$chart/templates/deployment.yaml" <<'YAML'
apiVersion: apps/v1
kind: Deployment
metadata:
  name: {{ .Release.Name }}
  labels:
    app.kubernetes.io/name: {{ .Chart.Name }}
    app.kubernetes.io/instance: {{ .Release.Name }}
spec:
  replicas: {{ .Values.replicas }}
  selector:
    matchLabels:
      app.kubernetes.io/instance: {{ .Release.Name }}
  template:
    metadata:
      labels:
        app.kubernetes.io/name: {{ .Chart.Name }}
        app.kubernetes.io/instance: {{ .Release.Name }}
    spec:
      containers:
      - name: main
        image: registry.k8s.io/pause:3.10
YAML
check "helm lint" "$HELM" lint "$chart"
check "helm install --wait" "$HELM" install smoke "$chart" -n "$ns" --wait --timeout 90s --set greeting=hi
check "helm release deployed" bash -c '"$HELM" -n "$1" status smoke -o json | grep -q "\"status\":\"deployed\""' _ "$ns"
check "helm-rendered configmap" bash -c '[ "$("$KUBECTL" -n "$1" get configmap smoke-config -o jsonpath="{.data.greeting}")" = hi ]' _ "$ns"
check "helm uninstall" "$HELM" uninstall smoke -n "$ns" --wait --timeout 60s

# --- a ServiceAccount token and its RBAC
check "serviceaccount" k -n "$ns" create serviceaccount operator
check "role" k -n "$ns" create role cm-reader --verb=get,list,watch --resource=configmaps
check "rolebinding" k -n "$ns" create rolebinding operator-cm-reader --role=cm-reader --serviceaccount="$ns:operator"
SMOKE_TOKEN="$(k -n "$ns" create token operator --duration=10m)"
export SMOKE_TOKEN SMOKE_NS="$ns"
check "token issued" test -n "$SMOKE_TOKEN"
# kubectl as the ServiceAccount: only the API address, the CA and the token.
SA='"$KUBECTL" --kubeconfig=/dev/null --server="$TICKFLOW_K8S_API" --certificate-authority="$TICKFLOW_K8S_RUNDIR/pki/ca.crt" --token="$SMOKE_TOKEN"'
check "whoami is the serviceaccount" bash -c "$SA"' auth whoami -o jsonpath="{.status.userInfo.username}" | grep -qx "system:serviceaccount:$SMOKE_NS:operator"'
check "can-i list configmaps: yes" bash -c '[ "$('"$SA"' -n "$SMOKE_NS" auth can-i list configmaps)" = yes ]'
check "can-i delete configmaps: no" bash -c '[ "$('"$SA"' -n "$SMOKE_NS" auth can-i delete configmaps)" = no ]'
check "can-i list secrets: no" bash -c '[ "$('"$SA"' -n "$SMOKE_NS" auth can-i list secrets)" = no ]'
check "can-i list configmaps in default: no" bash -c '[ "$('"$SA"' -n default auth can-i list configmaps)" = no ]'
check "admin can-i --as the serviceaccount" bash -c '[ "$("$KUBECTL" -n "$1" auth can-i list configmaps --as="system:serviceaccount:$1:operator")" = yes ]' _ "$ns"
sakc="$("$CP" sa-kubeconfig "$ns" operator "$work/sa.kubeconfig" 10m)"
check "sa-kubeconfig lists configmaps" "$KUBECTL" --kubeconfig "$sakc" get configmaps
check "sa-kubeconfig is forbidden on secrets" bash -c '"$KUBECTL" --kubeconfig "$1" get secrets 2>&1 | grep -q "(Forbidden)"' _ "$sakc"

check "delete namespace" k delete namespace "$ns" --wait=true --timeout=90s

echo "$passed passed, $failed failed"
[ "$failed" = 0 ]
