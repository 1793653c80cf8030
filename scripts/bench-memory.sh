#!/usr/bin/env bash
# Peak RSS of a Kafka query catching up a backlog, per memory budget, with
# the same backlog run under a budget so large nothing bounds the buffers
# (what the worker did before --memory-budget) as the reference.
#
# Usage: scripts/bench-memory.sh [TICKS] [BUDGET...]
#   TICKS   market ticks in the backlog (default 2000000)
#   BUDGET  --memory-budget values (default: 192MiB 256MiB 512MiB)
# Needs the test broker and registry (started if missing) and GNU time.
# The query is a passthrough (`SELECT * FROM market_ticks`): its output is
# as large as its input, the worst case for the open epoch's buffers.
set -euo pipefail
cd "$(dirname "$0")/.."

ticks="${1:-2000000}"
shift || true
budgets=("${@:-192MiB 256MiB 512MiB}")
read -r -a budgets <<<"${budgets[*]}"

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/tickflow/target}"
cargo build --release -q -p tickflow-worker
W="$CARGO_TARGET_DIR/release/tickflow-worker"
tests/kafka/kafka.sh start >/dev/null
tests/schema_registry/registry.sh start >/dev/null
brokers=127.0.0.1:19092
registry=http://127.0.0.1:18081

t="bench-memory-$$"
"$W" produce --brokers "$brokers" --schema-registry "$registry" --count "$ticks" \
  --ticks-topic "$t-ticks" --orders-topic "$t-orders" --books-topic "$t-books" \
  --partitions 3 >/dev/null
backlog_bytes=$(du -sb "$(cat "${TMPDIR:-/tmp}/tickflow-kafka.19092/rundir")"/data/"$t"-ticks-* |
  awk '{s += $1} END {print s}')

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
echo "CREATE STREAM passthrough AS SELECT * FROM market_ticks;" >"$work/pass.sql"

run() { # budget → "seconds peak_kb"
  /usr/bin/time -f "%e %M" -o "$work/time" "$W" query --sql "$work/pass.sql" \
    --brokers "$brokers" --schema-registry "$registry" \
    --input "market_ticks=kafka:$t-ticks" --output "passthrough=kafka:$t-out-$1" \
    --bounded --name "$t-$1" --checkpoint-dir "$work/chk-$1" --memory-budget "$1" \
    >/dev/null 2>"$work/stderr" || { cat "$work/stderr" >&2; exit 1; }
  cat "$work/time"
}

printf 'backlog: %s ticks, %s MiB in the topic (lz4)\n' "$ticks" $((backlog_bytes >> 20))
printf '%-10s %10s %14s %8s\n' budget seconds "peak RSS MiB" "÷budget"
for b in "${budgets[@]}" 64GiB; do
  read -r secs kb <<<"$(run "$b")"
  budget_kb=$(("$(echo "$b" | sed 's/GiB/*1048576/; s/MiB/*1024/')"))
  printf '%-10s %10s %14s %8s\n' "$b" "$secs" $((kb >> 10)) \
    "$(awk -v a="$kb" -v b="$budget_kb" 'BEGIN {printf "%.2f", a / b}')"
done
echo "(64GiB: nothing bounded, the reference)"
