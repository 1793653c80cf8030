#!/usr/bin/env bash
# The crate rules of docs/architecture.md, checked on the dependency graph:
# the engine depends on DataFusion and Arrow only, and the operator on the
# CRDs and the engine, so neither builds librdkafka (C, cmake), the terminal
# UI or the worker. Fails (exit 1) naming the crate that crept in.
set -euo pipefail
cd "$(dirname "$0")/.."

forbidden=(rdkafka rdkafka-sys ratatui tickflow-worker)
status=0
for crate in tickflow-operator tickflow-engine; do
  # Every edge kind (normal, build, dev), as `cargo tree -p` shows them.
  tree="$(cargo tree --locked -p "$crate" --prefix none --format '{p}' 2>/dev/null | awk '{print $1}' | sort -u)"
  if [ -z "$tree" ]; then
    echo "cargo tree -p $crate printed nothing" >&2
    exit 1
  fi
  for bad in "${forbidden[@]}"; do
    if grep -qx "$bad" <<<"$tree"; then
      echo "crate boundary broken: $crate depends on $bad ($(cargo tree --locked -p "$crate" -i "$bad" 2>/dev/null | head -5 | tr '\n' ' '))" >&2
      status=1
    fi
  done
done
[ "$status" -eq 0 ] && echo "crate boundaries hold: tickflow-operator and tickflow-engine depend on none of ${forbidden[*]}"
exit "$status"
