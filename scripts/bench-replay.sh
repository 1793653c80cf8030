#!/usr/bin/env bash
# A replay from a file: `tickflow-worker query` running sql/ohlc_5s.sql over
# simulator ticks in JSON lines, with its default decoder threads and with
# one, next to DuckDB computing the same OHLC over the same file (the
# reference the parallelism issue measured against).
#
# Usage: scripts/bench-replay.sh [TICKS] [RUNS]
#   TICKS  market ticks in the file (default 2000000, out of order by up to
#          500 ms, seed 11; generated once under ~/.cache/tickflow)
#   RUNS   runs of each, interleaved (default 3); the best wall time counts
# Needs GNU time; installs DuckDB's Python package into a venv under
# ~/.cache/tickflow the first time (PyPI).
set -euo pipefail
cd "$(dirname "$0")/.."

ticks="${1:-2000000}"
runs="${2:-3}"
cache="$HOME/.cache/tickflow"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$cache/target}"
cargo build --release -q -p tickflow-worker
W="$CARGO_TARGET_DIR/release/tickflow-worker"

venv="$cache/bench-venv"
if ! "$venv/bin/python" -c 'import duckdb' 2>/dev/null; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q duckdb
fi

data="$cache/bench-replay/$ticks"
file="$data/market-ticks.jsonl"
if [ ! -s "$file" ]; then
  rm -rf "$data"
  "$W" produce --count "$ticks" --seed 11 --jitter 500ms --format jsonl \
    --output-dir "$data" >/dev/null 2>&1
fi
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT

duck_sql="SELECT count(*) FROM (
  SELECT symbol, time_bucket(INTERVAL 5 SECOND, ts::TIMESTAMP) AS window_start,
         arg_min(price, ts) AS open, max(price) AS high, min(price) AS low,
         arg_max(price, ts) AS close, sum(volume) AS volume,
         sum(price * volume) / sum(volume) AS vwap, count(*) AS tick_count
  FROM read_json('$file', format = 'newline_delimited') GROUP BY ALL)"

# Prints "wall user sys peak_kib" of one run of "$@".
timed() {
  /usr/bin/time -f '%e %U %S %M' -o "$out/time" "$@" >"$out/stdout" 2>"$out/stderr" || {
    cat "$out/stderr" >&2
    exit 1
  }
  cat "$out/time"
}

declare -A best rows
for _ in $(seq "$runs"); do
  for name in tickflow tickflow-1-decoder duckdb; do
    case "$name" in
      tickflow) r=$(timed "$W" query --sql sql/ohlc_5s.sql \
          --input "market_ticks=$file" --output-dir "$out/a") ;;
      tickflow-1-decoder) r=$(timed "$W" query --sql sql/ohlc_5s.sql --decode-threads 1 \
          --input "market_ticks=$file" --output-dir "$out/b") ;;
      duckdb) r=$(timed "$venv/bin/python" -c "import duckdb, sys; print(duckdb.sql(sys.argv[1]).fetchall()[0][0])" "$duck_sql") ;;
    esac
    wall=${r%% *}
    if [ -z "${best[$name]:-}" ] || awk "BEGIN{exit !($wall < ${best[$name]%% *})}"; then
      best[$name]="$r"
    fi
  done
done
rows[tickflow]=$(wc -l <"$out/a/ohlc_5s.jsonl")
rows[tickflow-1-decoder]=$(wc -l <"$out/b/ohlc_5s.jsonl")
rows[duckdb]=$(cat "$out/stdout")

echo "ohlc_5s over $ticks ticks (JSON lines, $(du -h "$file" | cut -f1)), best of $runs, $(nproc) CPUs"
printf '%-20s %8s %8s %8s %10s %8s\n' run wall_s user_s sys_s peak_MiB windows
for name in tickflow tickflow-1-decoder duckdb; do
  read -r wall user sys kib <<<"${best[$name]}"
  printf '%-20s %8s %8s %8s %10d %8s\n' "$name" "$wall" "$user" "$sys" $((kib / 1024)) "${rows[$name]}"
done
