#!/usr/bin/env bash
# The whole test suite: formatting, lints, unit and integration tests.
# Installs what the tests need first. Build outputs are cached outside the
# clone ($HOME/.cache/tickflow) so repeated runs are fast.
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

step "cargo test"
cargo test --release --workspace
