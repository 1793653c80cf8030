#!/usr/bin/env bash
# The whole test suite: formatting, lints, unit and integration tests, the
# end-to-end tests against a real Kafka broker (Apache Kafka 4.x, KRaft, from
# Maven Central) and the test schema registry, and the Python interop tests
# (Confluent's confluent-kafka client). Installs what the tests need first.
# Build outputs, jars and the Python venv are cached outside the clone
# ($HOME/.cache/tickflow) so repeated runs are fast.
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

step "cargo fmt --check"
cargo fmt --all --check

step "cargo clippy (all targets, warnings are errors)"
cargo clippy --release --workspace --all-targets -- -D warnings

step "test servers: Kafka broker (KRaft) and schema registry"
python_bin="$(tests/python/setup.sh)"
cleanup() {
  tests/schema_registry/registry.sh stop >/dev/null 2>&1 || true
  tests/kafka/kafka.sh stop >/dev/null 2>&1 || true
}
trap cleanup EXIT
tests/kafka/kafka.sh start
tests/schema_registry/registry.sh start

step "cargo test"
cargo test --release --workspace

step "Python interop tests (confluent-kafka against the worker's messages)"
export TICKFLOW_WORKER_BIN="$CARGO_TARGET_DIR/release/tickflow-worker"
"$python_bin" -m pytest -q tests/python
