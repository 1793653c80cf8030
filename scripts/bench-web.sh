#!/usr/bin/env bash
# The web view's cost: CPU time of the demo worker with 10 pages open on its
# live view (10 Server-Sent Events clients reading /events) against none, in
# the same run, alternating phases so drift in the demo's own load shows.
#
# Usage: scripts/bench-web.sh [PHASE_SECONDS] [ROUNDS] [SPEED]
#   PHASE_SECONDS  length of each phase (default 30)
#   ROUNDS         none/10-pages pairs (default 2)
#   SPEED          the demo's event-time speed-up (default 10: ~33 k records/s)
# CPU is utime + stime of the worker process from /proc/PID/stat, over each
# phase's wall time; beside it, the same for the web view's own threads
# (web-publish, web-sse per page, and status-http, which serves the pages'
# files), from /proc/PID/task/*/stat: the demo's own load grows as it runs,
# so the whole process's CPU drifts between phases, and the threads' share
# says what the view costs without that drift. A page is `curl -N` on /events (what the worker does for
# a browser tab: the snapshot, then every update); the browsers' own CPU is
# theirs, not the worker's, and would crowd the worker on two cores.
set -euo pipefail
cd "$(dirname "$0")/.."

phase="${1:-30}"
rounds="${2:-2}"
speed="${3:-10}"
pages=10

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/tickflow/target}"
# The CI feature shape (the build tests/run.sh keeps warm).
cargo build --release -q --workspace --features tickflow-worker/fault-injection
W="$CARGO_TARGET_DIR/release/tickflow-worker"
work="$(mktemp -d)"
demo_pid=""
clients=()
cleanup() {
  [ "${#clients[@]}" -eq 0 ] || kill "${clients[@]}" 2>/dev/null || true
  if [ -n "$demo_pid" ]; then kill "$demo_pid" 2>/dev/null || true; wait "$demo_pid" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

total=$(( (2 * rounds) * phase + 30 ))
"$W" demo --plain --refresh 1h --speed "$speed" --duration "${total}s" \
  --checkpoint-dir "$work/chk" --web 127.0.0.1:0 >"$work/out" 2>"$work/err" &
demo_pid=$!
for _ in $(seq 100); do grep -q '^web view: ' "$work/out" && break; sleep 0.1; done
url="$(sed -n 's/^web view: //p' "$work/out")"
[ -n "$url" ] || { cat "$work/err" >&2; echo "the demo printed no URL" >&2; exit 1; }
sleep 10 # warm-up: the pages' history fills, the JIT-free worker settles

hz=$(getconf CLK_TCK)
cpu_ticks() { awk '{print $14 + $15}' "/proc/$demo_pid/stat"; }
web_ticks() {
  local t sum=0 n
  for t in /proc/"$demo_pid"/task/*; do
    case "$(cat "$t/comm" 2>/dev/null)" in
      web-*|status-http) n=$(awk '{print $14 + $15}' "$t/stat" 2>/dev/null || echo 0); sum=$((sum + n)) ;;
    esac
  done
  echo "$sum"
}
records_in() {
  curl -s "${url}status" | python3 -c 'import json,sys; print(sum(json.load(sys.stdin)["records_in"].values()))'
}

page_bytes() { { cat "$work"/page-*.bytes 2>/dev/null || true; } | wc -c; }

measure() { # label → one table row
  local label=$1 t0 t1 c0 c1 w0 w1 r0 r1 b0 b1
  r0=$(records_in); b0=$(page_bytes); w0=$(web_ticks); c0=$(cpu_ticks); t0=$(date +%s.%N)
  sleep "$phase"
  r1=$(records_in); b1=$(page_bytes); w1=$(web_ticks); c1=$(cpu_ticks); t1=$(date +%s.%N)
  local bytes=$((b1 - b0))
  python3 - "$label" "$t0" "$t1" "$c0" "$c1" "$w0" "$w1" "$hz" "$r0" "$r1" "$bytes" <<'PY'
import sys
label, t0, t1, c0, c1, w0, w1, hz, r0, r1, b = sys.argv[1:]
wall = float(t1) - float(t0)
cpu = (int(c1) - int(c0)) / int(hz)
web = (int(w1) - int(w0)) / int(hz)
print(f"| {label} | {wall:.1f} | {cpu:.2f} | {100 * cpu / wall:.1f} % | {100 * web / wall:.2f} % "
      f"| {(int(r1) - int(r0)) / wall / 1000:.1f} k | {int(b) / wall / 1024:.1f} |")
PY
}

echo "| phase | wall s | worker CPU s | worker CPU | web view threads' CPU | records/s in | KiB/s to pages |"
echo "| --- | --- | --- | --- | --- | --- | --- |"
for r in $(seq "$rounds"); do
  rm -f "$work"/page-*.bytes
  measure "no page ($r)"
  for i in $(seq "$pages"); do
    curl -s -N "${url}events" >"$work/page-$i.bytes" &
    clients+=($!)
  done
  sleep 2 # snapshots sent: the phase counts the updates only
  measure "$pages pages ($r)"
  kill "${clients[@]}" 2>/dev/null || true
  wait "${clients[@]}" 2>/dev/null || true
  clients=()
  sleep 2
done
