#!/usr/bin/env bash
# A real PostgreSQL server for tests (Debian's postgresql-15), in a temp data
# directory, on loopback only, with password (SCRAM) authentication.
#
# Usage: tests/postgres/postgres.sh COMMAND
#   install  apt-get install postgresql-15 when its binaries are missing
#   start    install, initdb a fresh cluster, start it and wait until it
#            accepts connections (a no-op when it already runs)
#   stop     stop it and delete its data (safe when nothing runs)
#   status   print pid, data dir and URL; exit 1 when not running
#   env      print `export ...` lines for the tests:
#            eval "$(tests/postgres/postgres.sh env)"
#   psql ARGS...  psql as the test user against the test database
#
# The test user is ${TICKFLOW_TEST_PG_USER:-tickflow} with password
# ${TICKFLOW_TEST_PG_PASSWORD:-tickflow-secret}, owner of database `tickflow`.
# TLS is on, with a test CA made by openssl in $STATE_DIR/tls (ca.crt,
# other-ca.crt that signed nothing the server has, client.crt/client.key);
# the server's certificate names only `localhost`, not 127.0.0.1. Two more
# roles that act as the test user: `tickflow_tls` (same password) is refused
# without TLS, and `tickflow_cert` logs in only with the client certificate.
# Settings: PG_PORT (default 25432), PG_STATE_DIR (default
# /tmp/tickflow-postgres.<port>), PG_BIN (default /usr/lib/postgresql/15/bin).
# The TimescaleDB extension is not packaged for Debian here, so hypertables
# are not tested (see the README).
set -euo pipefail

PORT="${PG_PORT:-25432}"
PG_BIN="${PG_BIN:-/usr/lib/postgresql/15/bin}"
STATE_DIR="${PG_STATE_DIR:-${TMPDIR:-/tmp}/tickflow-postgres.$PORT}"
DATA="$STATE_DIR/data"
LOG_FILE="$STATE_DIR/server.log"
USER_NAME="${TICKFLOW_TEST_PG_USER:-tickflow}"
PASSWORD="${TICKFLOW_TEST_PG_PASSWORD:-tickflow-secret}"
DB=tickflow
URL="postgres://$USER_NAME@127.0.0.1:$PORT/$DB"

die() { echo "postgres.sh: $*" >&2; exit 1; }

as_owner() {
  # initdb and postgres refuse to run as root; the cluster belongs to
  # `postgres` (the Debian package's user) when we are root.
  if [ "$(id -u)" = 0 ]; then
    runuser -u postgres -- "$@"
  else
    "$@"
  fi
}

install() {
  [ -x "$PG_BIN/postgres" ] && return 0
  command -v apt-get >/dev/null || die "$PG_BIN/postgres missing and no apt-get to install postgresql-15"
  local sudo=()
  [ "$(id -u)" = 0 ] || sudo=(sudo)
  "${sudo[@]}" apt-get install -y -q postgresql-15 >/dev/null ||
    { "${sudo[@]}" apt-get update -q >/dev/null && "${sudo[@]}" apt-get install -y -q postgresql-15 >/dev/null; } ||
    die "could not install postgresql-15"
}

# A CA, a server certificate for `localhost`, a client certificate for
# `tickflow_cert`, and a second CA; in $1.
make_certificates() {
  local dir="$1"
  command -v openssl >/dev/null || die "openssl is missing (Debian: apt-get install openssl)"
  mkdir -p "$dir"
  (
    cd "$dir"
    local quiet=(-batch)
    for ca in ca other-ca; do
      openssl req "${quiet[@]}" -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
        -keyout "$ca.key" -out "$ca.crt" -days 30 -subj "/CN=tickflow test $ca" \
        -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign 2>/dev/null
    done
    sign() { # name subject extensions
      openssl req "${quiet[@]}" -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
        -keyout "$1.key" -out "$1.csr" -subj "$2" 2>/dev/null
      printf '%s\n' "$3" >"$1.ext"
      openssl x509 -req -in "$1.csr" -CA ca.crt -CAkey ca.key -CAcreateserial \
        -days 30 -out "$1.crt" -extfile "$1.ext" 2>/dev/null
    }
    sign server "/CN=localhost" "subjectAltName=DNS:localhost
extendedKeyUsage=serverAuth"
    sign client "/CN=tickflow_cert" "extendedKeyUsage=clientAuth"
    rm -f ./*.csr ./*.ext ./*.srl ca.key other-ca.key
    chmod 600 server.key client.key
  ) || die "making the test certificates failed"
  [ "$(id -u)" != 0 ] || chown postgres "$dir/server.key" "$dir/server.crt"
}

running_pid() {
  [ -f "$DATA/postmaster.pid" ] || return 1
  local pid
  pid="$(head -1 "$DATA/postmaster.pid")"
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 1
  echo "$pid"
}

start() {
  running_pid >/dev/null && return 0
  install
  if (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; then
    die "port $PORT on 127.0.0.1 is already in use"
  fi
  rm -rf "$STATE_DIR"
  mkdir -p "$STATE_DIR"
  [ "$(id -u)" != 0 ] || chown postgres "$STATE_DIR"
  local pwfile="$STATE_DIR/pw"
  printf '%s\n' "$PASSWORD" >"$pwfile"
  [ "$(id -u)" != 0 ] || chown postgres "$pwfile"
  as_owner "$PG_BIN/initdb" -D "$DATA" -U postgres --auth-local=trust --auth-host=scram-sha-256 \
    --pwfile="$pwfile" -E UTF8 --locale=C.UTF-8 >"$STATE_DIR/initdb.log" 2>&1 ||
    { cat "$STATE_DIR/initdb.log" >&2; die "initdb failed"; }
  rm -f "$pwfile"
  make_certificates "$STATE_DIR/tls"
  # Checked in order: the TLS-only role never without TLS, the certificate
  # role only with a certificate; initdb's lines follow.
  local hba="$DATA/pg_hba.conf"
  { printf '%s\n' \
      "hostnossl all tickflow_tls all reject" \
      "hostssl all tickflow_cert all cert" \
      "host all tickflow_cert all reject"
    cat "$hba"; } >"$hba.new" && mv "$hba.new" "$hba"
  [ "$(id -u)" != 0 ] || chown postgres "$hba"
  # Fast and disposable: no fsync (tests kill the worker, not the server).
  as_owner "$PG_BIN/pg_ctl" -D "$DATA" -l "$LOG_FILE" -w -t 60 start -o \
    "-c listen_addresses=127.0.0.1 -p $PORT -k $STATE_DIR -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200 -c ssl=on -c ssl_cert_file=$STATE_DIR/tls/server.crt -c ssl_key_file=$STATE_DIR/tls/server.key -c ssl_ca_file=$STATE_DIR/tls/ca.crt" \
    >/dev/null || { cat "$LOG_FILE" >&2; die "the server did not start"; }
  as_owner "$PG_BIN/psql" -h "$STATE_DIR" -p "$PORT" -U postgres -d postgres -qAt -v ON_ERROR_STOP=1 <<SQL >/dev/null
CREATE ROLE "$USER_NAME" LOGIN PASSWORD '$PASSWORD';
CREATE DATABASE $DB OWNER "$USER_NAME";
CREATE ROLE tickflow_tls LOGIN PASSWORD '$PASSWORD' IN ROLE "$USER_NAME";
CREATE ROLE tickflow_cert LOGIN IN ROLE "$USER_NAME";
-- They act as the test user once logged in, so what they create is its.
ALTER ROLE tickflow_tls SET role = '$USER_NAME';
ALTER ROLE tickflow_cert SET role = '$USER_NAME';
SQL
}

stop() {
  if running_pid >/dev/null; then
    as_owner "$PG_BIN/pg_ctl" -D "$DATA" -m immediate -w stop >/dev/null 2>&1 || true
  fi
  rm -rf "$STATE_DIR"
}

cmd="${1:-}"
case "$cmd" in
  install) install ;;
  start) start ;;
  stop) stop ;;
  status)
    if pid="$(running_pid)"; then echo "running pid=$pid data=$DATA url=$URL"; else echo "stopped"; exit 1; fi
    ;;
  env)
    echo "export TICKFLOW_TEST_PG_URL=$URL"
    printf 'export TICKFLOW_TEST_PG_PASSWORD=%q\n' "$PASSWORD"
    echo "export TICKFLOW_TEST_PG_PSQL=$PG_BIN/psql"
    echo "export TICKFLOW_TEST_PG_TLS_DIR=$STATE_DIR/tls"
    ;;
  psql)
    shift
    PGPASSWORD="$PASSWORD" "$PG_BIN/psql" -h 127.0.0.1 -p "$PORT" -U "$USER_NAME" -d "$DB" "$@"
    ;;
  *)
    sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//' >&2
    exit 2
    ;;
esac
