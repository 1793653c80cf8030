#!/usr/bin/env bash
# Peak RSS of a Kafka query catching up a backlog, per memory budget, with
# the same backlog run under a budget so large nothing bounds the buffers
# (what the worker did before --memory-budget) as the reference.
#
# Usage: scripts/bench-memory.sh [TICKS] [BUDGET...]
#   TICKS   market ticks in the backlog (default 32000000: with the order
#           events and book updates they come with, 94 M records and about
#           2.2 GB in the topics, eleven times the smallest budget)
#   BUDGET  --memory-budget values (default: 192MiB 512MiB)
# Needs the test broker and registry (started if missing), GNU time, and
# about 2 × the backlog in free disk. Takes about 15 minutes at the default.
# For ten times the 512 MiB budget, about 75000000 ticks (40 minutes).
# The query passes all three streams through (`SELECT *`): its output is as
# large as its input, the worst case for the open epoch's buffers.
set -euo pipefail
cd "$(dirname "$0")/.."

ticks="${1:-32000000}"
shift || true
budgets=("${@:-192MiB 512MiB}")
read -r -a budgets <<<"${budgets[*]}"

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/tickflow/target}"
cargo build --release -q -p tickflow-worker
W="$CARGO_TARGET_DIR/release/tickflow-worker"
tests/kafka/kafka.sh start >/dev/null
tests/schema_registry/registry.sh start >/dev/null
brokers=127.0.0.1:19092
registry=http://127.0.0.1:18081

work="$(mktemp -d)"
t="bench-memory-$$"
# The topics take about 2 × the backlog on disk per run: delete them.
drop_topics() { tests/kafka/kafka.sh topics --delete --topic "$1" >/dev/null 2>&1 || true; }
trap 'drop_topics "$t-.*"; rm -rf "$work"' EXIT
"$W" produce --brokers "$brokers" --schema-registry "$registry" --count "$ticks" \
  --ticks-topic "$t-ticks" --orders-topic "$t-orders" --books-topic "$t-books" \
  --partitions 3 2>&1 >/dev/null | tee "$work/produce.log" | grep -v INFO >&2 || true
records=$(grep -o 'produced ticks=[0-9]* orders=[0-9]* books=[0-9]*' "$work/produce.log" |
  grep -o '[0-9]*' | awk '{s += $1} END {printf "%d", s}')
[ -n "$records" ] || { echo "the simulator did not say what it produced" >&2; exit 1; }
# The record batches as stored (lz4), not the preallocated index files.
backlog_bytes=$(find "$(cat "${TMPDIR:-/tmp}/tickflow-kafka.19092/rundir")"/data/ \
  -path "*/$t-[tob]*-[0-9]*/*.log" -printf '%s\n' | awk '{s += $1} END {printf "%d", s}')
cat >"$work/pass.sql" <<'SQL'
CREATE STREAM ticks_out AS SELECT * FROM market_ticks;
CREATE STREAM orders_out AS SELECT * FROM order_events;
CREATE STREAM books_out AS SELECT * FROM book_updates;
SQL

run() { # budget → "seconds peak_kb"
  /usr/bin/time -f "%e %M" -o "$work/time" "$W" query --sql "$work/pass.sql" \
    --brokers "$brokers" --schema-registry "$registry" \
    --input "market_ticks=kafka:$t-ticks" --input "order_events=kafka:$t-orders" \
    --input "book_updates=kafka:$t-books" --output "ticks_out=kafka:$t-out-$1-ticks" \
    --output "orders_out=kafka:$t-out-$1-orders" --output "books_out=kafka:$t-out-$1-books" \
    --bounded --name "$t-$1" --checkpoint-dir "$work/chk-$1" --memory-budget "$1" \
    >"$work/summary" 2>"$work/stderr" || { cat "$work/stderr" >&2; exit 1; }
  # Every record in, every record out: a bounded budget loses nothing.
  local n
  n=$(grep -o '"records_in":[0-9]*' "$work/summary" | cut -d: -f2)
  [ "$n" = "$records" ] || { echo "read $n records of $records" >&2; exit 1; }
  drop_topics "$t-out-$1-.*"
  cat "$work/time"
}

printf 'backlog: %s ticks, %s records, %s MiB in the topics (lz4)\n' "$ticks" "$records" \
  $((backlog_bytes >> 20))
printf '%-10s %10s %14s %14s %16s\n' budget seconds "peak RSS MiB" "RSS÷budget" "backlog÷budget"
for b in "${budgets[@]}" 64GiB; do
  read -r secs kb <<<"$(run "$b")"
  budget_kb=$(("$(echo "$b" | sed 's/GiB/*1048576/; s/MiB/*1024/')"))
  printf '%-10s %10s %14s %14s %16s\n' "$b" "$secs" $((kb >> 10)) \
    "$(awk -v a="$kb" -v b="$budget_kb" 'BEGIN {printf "%.2f", a / b}')" \
    "$(awk -v a="$backlog_bytes" -v b="$budget_kb" 'BEGIN {printf "%.1f", a / 1024 / b}')"
done
echo "(64GiB: nothing bounded, the reference)"
