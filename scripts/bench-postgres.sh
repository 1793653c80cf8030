#!/usr/bin/env bash
# Rows per second into PostgreSQL, exactly-once: `tickflow-worker query`
# replaying simulator ticks through a row-by-row stream into a table
# (checkpoints every second, one transaction per epoch), next to psql's
# `\copy` of the same rows into an empty table of the same shape, and the
# same replay into a JSON-lines file (what the replay costs without the
# database). All against the test server of tests/postgres/postgres.sh.
#
# Usage: scripts/bench-postgres.sh [TICKS] [RUNS]
#   TICKS  market ticks (default 1000000, seed 11; generated once under
#          ~/.cache/tickflow)
#   RUNS   runs of each, interleaved (default 3); the best wall time counts
set -euo pipefail
cd "$(dirname "$0")/.."

ticks="${1:-1000000}"
runs="${2:-3}"
cache="$HOME/.cache/tickflow"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$cache/target}"
# The worker the test suite built (any release build will do); built when missing.
W="${TICKFLOW_WORKER_BIN:-$CARGO_TARGET_DIR/release/tickflow-worker}"
[ -x "$W" ] || cargo build --release -q -p tickflow-worker

tests/postgres/postgres.sh start
eval "$(tests/postgres/postgres.sh env)"
export TICKFLOW_POSTGRES_PASSWORD="$TICKFLOW_TEST_PG_PASSWORD"
psql_() { PGPASSWORD="$TICKFLOW_TEST_PG_PASSWORD" "$TICKFLOW_TEST_PG_PSQL" "$TICKFLOW_TEST_PG_URL" -qAtX -v ON_ERROR_STOP=1 "$@"; }

data="$cache/bench-replay/$ticks"
file="$data/market-ticks.jsonl"
if [ ! -s "$file" ]; then
  rm -rf "$data"
  "$W" produce --count "$ticks" --seed 11 --jitter 500ms --format jsonl \
    --output-dir "$data" >/dev/null 2>&1
fi
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT
cat >"$out/q.sql" <<'SQL'
CREATE STREAM bench_ticks AS
SELECT ts, symbol, exchange, price, volume, bid, ask FROM market_ticks;
SQL

now() { date +%s.%N; }
declare -A best
record() { # name seconds
  if [ -z "${best[$1]:-}" ] || awk "BEGIN{exit !($2 < ${best[$1]})}"; then best[$1]="$2"; fi
}

for _ in $(seq "$runs"); do
  psql_ -c "DROP TABLE IF EXISTS bench_ticks; DELETE FROM tickflow_offsets WHERE query = 'bench'" 2>/dev/null || true
  rm -rf "$out/chk" "$out/files"
  t0=$(now)
  "$W" query --sql "$out/q.sql" --input "market_ticks=$file" --name bench \
    --output bench_ticks=postgres:bench_ticks --postgres-url "$TICKFLOW_TEST_PG_URL" \
    --checkpoint-dir "$out/chk" --checkpoint-interval 1s >/dev/null 2>"$out/err" || { cat "$out/err" >&2; exit 1; }
  record tickflow-postgres "$(awk "BEGIN{print $(now) - $t0}")"
  rows=$(psql_ -c "SELECT count(*) FROM bench_ticks")

  # The same rows, as psql would load them: text COPY into an empty table.
  [ -s "$out/rows.csv" ] || psql_ -c "\\copy bench_ticks TO '$out/rows.csv' CSV"
  psql_ -c "DROP TABLE IF EXISTS bench_copy; CREATE TABLE bench_copy (LIKE bench_ticks)"
  t0=$(now)
  psql_ -c "\\copy bench_copy FROM '$out/rows.csv' CSV"
  record psql-copy "$(awk "BEGIN{print $(now) - $t0}")"

  t0=$(now)
  "$W" query --sql "$out/q.sql" --input "market_ticks=$file" --output-dir "$out/files" >/dev/null 2>&1
  record tickflow-file "$(awk "BEGIN{print $(now) - $t0}")"
done
copied=$(psql_ -c "SELECT count(*) FROM bench_copy")
[ "$rows" = "$ticks" ] && [ "$copied" = "$ticks" ] || { echo "row counts: tickflow $rows, psql $copied, expected $ticks" >&2; exit 1; }

echo "$ticks ticks (7 columns) into PostgreSQL 15 on loopback, best of $runs, $(nproc) CPUs"
printf '%-20s %8s %12s\n' run wall_s rows_per_s
for name in tickflow-postgres psql-copy tickflow-file; do
  printf '%-20s %8.2f %12.0f\n' "$name" "${best[$name]}" "$(awk "BEGIN{print $ticks / ${best[$name]}}")"
done
