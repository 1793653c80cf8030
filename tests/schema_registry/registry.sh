#!/usr/bin/env bash
# Runs the test schema registry (server.py next to this script: an in-memory,
# Confluent-REST-compatible registry, Python standard library only) in the
# background on loopback.
#
# Usage: tests/schema_registry/registry.sh COMMAND
#   start    start it and wait until it answers (a no-op when it already runs)
#   stop     stop it (safe when nothing runs); its schemas are gone
#   restart  stop, then start (empty again)
#   status   print pid and URL; exit 1 when not running
#   env      print `export SCHEMA_REGISTRY_URL=...` (and the basic-auth user
#            info when set): eval "$(tests/schema_registry/registry.sh env)"
#
# Settings: SCHEMA_REGISTRY_PORT (default 18081), SCHEMA_REGISTRY_BASIC_AUTH
# (user:password; unset = no auth), SCHEMA_REGISTRY_STATE_DIR (pid and log
# files; default /tmp/tickflow-registry.<port>), PYTHON (default python3),
# SCHEMA_REGISTRY_POD_HOST (also listen on every address and print
# SCHEMA_REGISTRY_POD_URL with this host: the real test node's bridge
# address, which its pods reach).
set -euo pipefail

HERE="$(cd "$(dirname "$0")" && pwd)"
PORT="${SCHEMA_REGISTRY_PORT:-18081}"
AUTH="${SCHEMA_REGISTRY_BASIC_AUTH:-}"
PYTHON="${PYTHON:-python3}"
STATE_DIR="${SCHEMA_REGISTRY_STATE_DIR:-${TMPDIR:-/tmp}/tickflow-registry.$PORT}"
PID_FILE="$STATE_DIR/pid"
LOG_FILE="$STATE_DIR/server.log"
URL="http://127.0.0.1:$PORT"

die() { echo "registry.sh: $*" >&2; exit 1; }

running_pid() {
  [ -f "$PID_FILE" ] || return 1
  local pid
  pid="$(cat "$PID_FILE")"
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 1
  tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q 'schema_registry/server\.py' || return 1
  echo "$pid"
}

answers() {
  local auth=()
  [ -z "$AUTH" ] || auth=(-u "$AUTH")
  curl -fsS -o /dev/null --max-time 2 "${auth[@]}" "$URL/subjects" 2>/dev/null
}

start() {
  running_pid >/dev/null && return 0
  if (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; then
    die "port $PORT on 127.0.0.1 is already in use"
  fi
  mkdir -p "$STATE_DIR"
  local host=127.0.0.1
  [ -z "${SCHEMA_REGISTRY_POD_HOST:-}" ] || host=0.0.0.0
  local args=(--host "$host" --port "$PORT")
  # Pass the credentials through the environment, not the command line.
  SCHEMA_REGISTRY_BASIC_AUTH="$AUTH" setsid nohup "$PYTHON" "$HERE/server.py" "${args[@]}" \
    >"$LOG_FILE" 2>&1 </dev/null &
  local pid=$!
  disown "$pid" 2>/dev/null || true
  echo "$pid" >"$PID_FILE"
  local deadline=$((SECONDS + 20))
  until answers; do
    if ! kill -0 "$pid" 2>/dev/null; then
      rm -f "$PID_FILE"
      cat "$LOG_FILE" >&2
      die "the registry exited during start"
    fi
    if [ "$SECONDS" -ge "$deadline" ]; then
      kill "$pid" 2>/dev/null || true
      rm -f "$PID_FILE"
      cat "$LOG_FILE" >&2
      die "the registry did not answer on $URL within 20s"
    fi
    sleep 0.1
  done
}

stop() {
  local pid
  if pid="$(running_pid)"; then
    kill "$pid" 2>/dev/null || true
    local deadline=$((SECONDS + 10))
    while kill -0 "$pid" 2>/dev/null; do
      [ "$SECONDS" -lt "$deadline" ] || kill -9 "$pid" 2>/dev/null || true
      sleep 0.1
    done
  fi
  rm -f "$PID_FILE" "$LOG_FILE"
  rmdir "$STATE_DIR" 2>/dev/null || true
}

cmd="${1:-}"
case "$cmd" in
  start) start ;;
  stop) stop ;;
  restart) stop; start ;;
  status)
    if pid="$(running_pid)"; then echo "running pid=$pid url=$URL"; else echo "stopped"; exit 1; fi
    ;;
  env)
    echo "export SCHEMA_REGISTRY_URL=$URL"
    [ -z "${SCHEMA_REGISTRY_POD_HOST:-}" ] || echo "export SCHEMA_REGISTRY_POD_URL=http://$SCHEMA_REGISTRY_POD_HOST:$PORT"
    [ -z "$AUTH" ] || printf 'export SCHEMA_REGISTRY_BASIC_AUTH=%q\n' "$AUTH"
    ;;
  *)
    sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//' >&2
    exit 2
    ;;
esac
