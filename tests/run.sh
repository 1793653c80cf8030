#!/usr/bin/env bash
# The whole test suite: formatting, lints, unit and integration tests, the
# end-to-end tests against a real Kafka broker (Apache Kafka 4.x, KRaft, from
# Maven Central) and the test schema registry, the PostgreSQL sink's tests
# against a real PostgreSQL server (Debian's postgresql-15), the Python interop tests
# (Confluent's confluent-kafka client), the Helm chart and Argo CD checks, and
# the operator's end-to-end tests on a real Kubernetes control plane (etcd,
# kube-apiserver, controllers and KWOK built from their Go modules).
# Installs what the tests need first. Build outputs, jars, Go binaries and the
# Python venv are cached outside the clone ($HOME/.cache/tickflow) so repeated
# runs are fast.
set -euo pipefail
cd "$(dirname "$0")/.."

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/tickflow/target}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

step() { printf '\n==> %s\n' "$*"; }

step "toolchain"
command -v cargo >/dev/null || { echo "cargo not found: install Rust (https://rustup.rs)"; exit 1; }
if command -v rustup >/dev/null; then
  rustup component add rustfmt clippy >/dev/null 2>&1 || true
fi
cargo --version
# The shared cache grows by a test executable per change and test; drop
# the superseded ones before they fill the disk.
tests/prune_cache.sh

# The worker's crash and stall points (TICKFLOW_CRASH_AT, TICKFLOW_STALL_AT)
# are compiled in for the tests only.
features=(--features tickflow-worker/fault-injection)

step "cargo fmt --check"
cargo fmt --all --check

step "crate boundaries (engine and operator free of librdkafka, the TUI and the worker)"
tests/crate_boundaries.sh

step "cargo clippy (all targets, warnings are errors)"
cargo clippy --release --workspace --all-targets "${features[@]}" -- -D warnings

step "CRDs, chart, manifests and Argo CD health checks"
python_bin="$(tests/python/setup.sh)"
# Nothing else builds now: let the Go build use both cores.
K8S_BUILD_PARALLEL="${K8S_BUILD_PARALLEL:-2}" tests/k8s/controlplane.sh install
# Monitoring tests: promtool and the PromQL checker from the Prometheus Go module.
MONITORING_BUILD_PARALLEL="${MONITORING_BUILD_PARALLEL:-2}" tests/monitoring/check.sh install
# Headless Chromium (Debian's) for the web view's browser test (web_view.rs).
tests/web/chromium.sh install
# tmux: the pseudo-terminal the demo's dashboard test (demo_tui.rs) drives.
if ! command -v tmux >/dev/null; then
  sudo_cmd=(); [ "$(id -u)" = 0 ] || sudo_cmd=(sudo)
  DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -q --no-install-recommends tmux >/dev/null ||
    { "${sudo_cmd[@]}" apt-get update -q >/dev/null &&
      DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -q --no-install-recommends tmux >/dev/null; }
fi
TICKFLOW_CHROMIUM="$(tests/web/chromium.sh path)"
export TICKFLOW_CHROMIUM
"$python_bin" manifests/generate.py --check
tests/helm/lint.sh
tests/argocd/run.sh

step "test servers: Kafka broker (KRaft), schema registry, PostgreSQL, Kubernetes control plane with a real node"
# The real node (kubelet, containerd) runs pods on a bridge whose host side
# is this address; the broker and the registry also listen there for them.
export K8S_REAL_NODE=1 KAFKA_POD_HOST=10.244.0.1 SCHEMA_REGISTRY_POD_HOST=10.244.0.1
cleanup() {
  tests/k8s/controlplane.sh stop >/dev/null 2>&1 || true
  tests/postgres/postgres.sh stop >/dev/null 2>&1 || true
  tests/schema_registry/registry.sh stop >/dev/null 2>&1 || true
  tests/kafka/kafka.sh stop >/dev/null 2>&1 || true
}
trap cleanup EXIT
tests/kafka/kafka.sh start
tests/schema_registry/registry.sh start
tests/postgres/postgres.sh start
tests/k8s/controlplane.sh start

step "cargo test"
cargo test --release --workspace "${features[@]}"
echo "web view screenshots (browser test): ${TICKFLOW_TEST_ARTIFACTS:-$CARGO_TARGET_DIR/tmp}/web-view/"

step "monitoring: PrometheusRule (promtool check/test rules), CRD schemas, dashboards' PromQL against real /metrics"
PYTHON="$python_bin" tests/monitoring/check.sh run

step "Python interop tests (confluent-kafka against the worker's messages)"
export TICKFLOW_WORKER_BIN="$CARGO_TARGET_DIR/release/tickflow-worker"
"$python_bin" -m pytest -q tests/python

step "the real node leaves nothing behind (processes, mounts, bridge, cgroups, iptables chains)"
tests/k8s/controlplane.sh stop
tests/k8s/controlplane.sh real-node-check-clean
