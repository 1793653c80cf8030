#!/usr/bin/env bash
# scripts/kind-up.sh - tickflow on a local kind cluster, end to end:
#
#   1. kind cluster "tickflow" from kind-config.yaml (reused if it exists)
#   2. operator and worker images built from this checkout, loaded into kind
#   3. Redpanda (official chart, pinned version) in namespace "redpanda",
#      sized by charts/redpanda-kind-values.yaml
#   4. the tickflow chart (CRDs, operator, RBAC) in namespace "tickflow",
#      pointed at that Redpanda
#   5. the example MarketProducer and StreamQuery (manifests/) applied
#
# Re-running it upgrades everything in place (rebuilds the images, re-applies
# the CRDs, `helm upgrade --install`). Documented step by step in
# docs/kubernetes.md. Not run in CI (no Docker daemon or kind there).
#
# Settings (environment):
#   IMAGE_TAG             tag of both images (default: dev)
#   OPERATOR_IMAGE        operator image repository (default: ghcr.io/tickflow/tickflow-operator)
#   WORKER_IMAGE          worker image repository (default: ghcr.io/tickflow/tickflow-worker)
#   KIND_CLUSTER_NAME     kind cluster name (default: tickflow, as in kind-config.yaml)
#   KIND_NODE_IMAGE       e.g. kindest/node:v1.33.1 (default: kind's default node image)
#   REDPANDA_CHART_VERSION  (default: the version pinned in charts/tickflow/Chart.yaml)
#   PIPELINES_NAMESPACE   namespace of the example resources (default: default)
#   SKIP_BUILD=1          do not build the images (they must exist locally)
#   SKIP_EXAMPLES=1       do not apply the example resources
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"

IMAGE_TAG="${IMAGE_TAG:-dev}"
OPERATOR_IMAGE="${OPERATOR_IMAGE:-ghcr.io/tickflow/tickflow-operator}"
WORKER_IMAGE="${WORKER_IMAGE:-ghcr.io/tickflow/tickflow-worker}"
CLUSTER="${KIND_CLUSTER_NAME:-tickflow}"
PIPELINES_NAMESPACE="${PIPELINES_NAMESPACE:-default}"
REDPANDA_NAMESPACE=redpanda
TICKFLOW_NAMESPACE=tickflow
pinned="$(awk '/^dependencies:/{d=1} d && $1=="version:"{print $2; exit}' charts/tickflow/Chart.yaml)"
REDPANDA_CHART_VERSION="${REDPANDA_CHART_VERSION:-$pinned}"
CONTEXT="kind-$CLUSTER"

step() { printf '\n==> %s\n' "$*"; }
die() { printf 'kind-up.sh: %s\n' "$*" >&2; exit 1; }

# Prerequisites ----------------------------------------------------------------
missing=0
need() {
  if ! command -v "$1" >/dev/null 2>&1; then
    printf 'kind-up.sh: %s is not installed (%s)\n' "$1" "$2" >&2
    missing=1
  fi
}
need docker "https://docs.docker.com/engine/install/"
need kind "https://kind.sigs.k8s.io/docs/user/quick-start/#installation"
need kubectl "https://kubernetes.io/docs/tasks/tools/"
need helm "https://helm.sh/docs/intro/install/ (3.10 or newer)"
[[ $missing == 0 ]] || exit 1
docker info >/dev/null 2>&1 || die "cannot reach the Docker daemon (is it running? are you in the docker group?)"

kc() { kubectl --context "$CONTEXT" "$@"; }
hm() { helm --kube-context "$CONTEXT" "$@"; }

# 1. Cluster ---------------------------------------------------------------------
step "kind cluster $CLUSTER"
if kind get clusters 2>/dev/null | grep -qx "$CLUSTER"; then
  echo "reusing the existing cluster $CLUSTER"
else
  args=(create cluster --config kind-config.yaml --name "$CLUSTER" --wait 120s)
  [[ -n "${KIND_NODE_IMAGE:-}" ]] && args+=(--image "$KIND_NODE_IMAGE")
  kind "${args[@]}"
fi
kc cluster-info >/dev/null

# 2. Images ----------------------------------------------------------------------
if [[ "${SKIP_BUILD:-0}" != 1 ]]; then
  step "building $OPERATOR_IMAGE:$IMAGE_TAG and $WORKER_IMAGE:$IMAGE_TAG (the first build takes a while)"
  DOCKER_BUILDKIT=1 docker build -f operator/Dockerfile -t "$OPERATOR_IMAGE:$IMAGE_TAG" .
  DOCKER_BUILDKIT=1 docker build -f worker/Dockerfile -t "$WORKER_IMAGE:$IMAGE_TAG" .
fi
step "loading the images into kind"
kind load docker-image --name "$CLUSTER" "$OPERATOR_IMAGE:$IMAGE_TAG" "$WORKER_IMAGE:$IMAGE_TAG"

# 3. Redpanda --------------------------------------------------------------------
step "Redpanda (chart redpanda/redpanda $REDPANDA_CHART_VERSION) in namespace $REDPANDA_NAMESPACE"
helm repo add redpanda https://charts.redpanda.com --force-update >/dev/null
helm repo update redpanda >/dev/null
hm upgrade --install redpanda redpanda/redpanda --version "$REDPANDA_CHART_VERSION" \
  --namespace "$REDPANDA_NAMESPACE" --create-namespace \
  -f charts/redpanda-kind-values.yaml \
  --wait --timeout 15m
kc -n "$REDPANDA_NAMESPACE" rollout status statefulset/redpanda --timeout 10m

# 4. tickflow ----------------------------------------------------------------------
step "tickflow chart in namespace $TICKFLOW_NAMESPACE"
# The chart declares the (optional, here disabled) Redpanda dependency; Helm
# wants it in charts/tickflow/charts/ before it installs anything.
helm dependency build charts/tickflow
# `helm upgrade` never updates CRDs: apply them first (idempotent).
if compgen -G "charts/tickflow/crds/*.yaml" >/dev/null; then
  kc apply --server-side --force-conflicts -f charts/tickflow/crds/
else
  die "charts/tickflow/crds/ has no CRD YAML (generate it with the operator: see docs/kubernetes.md)"
fi
hm upgrade --install tickflow charts/tickflow \
  --namespace "$TICKFLOW_NAMESPACE" --create-namespace \
  --set kafka.bootstrapServers="redpanda.$REDPANDA_NAMESPACE.svc.cluster.local:9093" \
  --set kafka.schemaRegistryUrl="http://redpanda.$REDPANDA_NAMESPACE.svc.cluster.local:8081" \
  --set image.repository="$OPERATOR_IMAGE" --set image.tag="$IMAGE_TAG" \
  --set workerImage.repository="$WORKER_IMAGE" --set workerImage.tag="$IMAGE_TAG" \
  --wait --timeout 5m
kc -n "$TICKFLOW_NAMESPACE" rollout status deployment/tickflow-operator --timeout 5m

# 5. Examples ----------------------------------------------------------------------
# CI runs this step (and 2 and 4) on its test cluster's real node instead of
# kind: operator/tests/k8s_real_query.rs (docs/kubernetes.md, "What CI runs
# in place of kind", says where that cluster differs).
if [[ "${SKIP_EXAMPLES:-0}" != 1 ]]; then
  step "example MarketProducer and StreamQuery in namespace $PIPELINES_NAMESPACE"
  kc create namespace "$PIPELINES_NAMESPACE" --dry-run=client -o yaml | kc apply -f - >/dev/null
  kc -n "$PIPELINES_NAMESPACE" apply -f manifests/marketproducer.yaml -f manifests/streamquery.yaml
  if ! kc -n "$PIPELINES_NAMESPACE" wait --for=condition=Ready streamquery/ohlc-5s --timeout 5m; then
    echo "ohlc-5s is not Ready yet; see: kubectl -n $PIPELINES_NAMESPACE describe streamquery ohlc-5s" >&2
  fi
  kc -n "$PIPELINES_NAMESPACE" get marketproducers,streamqueries
fi

cat <<EOF

tickflow is up (kubectl context $CONTEXT).

  kubectl -n $PIPELINES_NAMESPACE get marketproducers,streamqueries
  kubectl -n $TICKFLOW_NAMESPACE logs deployment/tickflow-operator
  kubectl -n $REDPANDA_NAMESPACE exec redpanda-0 -c redpanda -- rpk topic list
  kubectl -n $REDPANDA_NAMESPACE exec redpanda-0 -c redpanda -- \\
    rpk topic consume ohlc-5s --num 5 --use-schema-registry=value

Remove everything: kind delete cluster --name $CLUSTER
EOF
