#!/usr/bin/env bash
# A real Apache Kafka 4.x broker for tests: single node, KRaft (combined
# broker + controller), loopback only, built from Maven Central jars.
#
# Usage: tests/kafka/kafka.sh COMMAND
#   install          fetch the broker jars into $TICKFLOW_CACHE/kafka-<version>/libs
#                    (skipped when already there; needs java 17+ and mvn)
#   start            install, format fresh storage in a new temp dir (random
#                    cluster id, SCRAM users) and start the broker; waits until it
#                    serves requests. A no-op when it already runs.
#   stop             stop the broker and delete its data (safe when nothing runs)
#   restart [--kill] stop and start the same broker, keeping its data dir
#                    (--kill: SIGKILL instead of a clean shutdown)
#   status           print pid, run dir and listeners; exit 1 when not running
#   env              print `export ...` lines for the tests:
#                    eval "$(tests/kafka/kafka.sh env)"
#   topics ARGS...   kafka-topics (TopicCommand) against the PLAINTEXT listener,
#                    e.g. topics --create --topic t --partitions 3
#   configs ARGS...  kafka-configs (ConfigCommand), same way, e.g.
#                    configs --describe --entity-type users
#   class CLASS ARGS...  run any main class from the broker jars
#   logs [N]         print the last N (default 100) lines of the broker log
#
# Listeners (all on 127.0.0.1):
#   PLAINTEXT        ${KAFKA_PORT:-19092}
#   SASL_PLAINTEXT   ${KAFKA_SASL_PORT:-19093}  SCRAM-SHA-256, SCRAM-SHA-512, PLAIN;
#                    user ${TICKFLOW_TEST_SASL_USER:-tickflow},
#                    password ${TICKFLOW_TEST_SASL_PASSWORD:-tickflow-secret}
#   CONTROLLER       ${KAFKA_CONTROLLER_PORT:-19094}
#   POD              ${KAFKA_POD_PORT:-19095} on every address, advertised as
#                    $KAFKA_POD_HOST: only when KAFKA_POD_HOST is set (the real
#                    test node's bridge address, which its pods reach)
# Other settings: KAFKA_VERSION (default below), TICKFLOW_CACHE (default
# ~/.cache/tickflow), KAFKA_HEAP_OPTS (default -Xms256m -Xmx512m),
# KAFKA_STATE_DIR (pid file and run-dir pointer; default /tmp/tickflow-kafka.<port>),
# KAFKA_START_TIMEOUT seconds (default 90).
set -euo pipefail

KAFKA_VERSION="${KAFKA_VERSION:-4.4.0}"
SCALA_VERSION="2.13"
CACHE="${TICKFLOW_CACHE:-$HOME/.cache/tickflow}"
KAFKA_HOME="$CACHE/kafka-$KAFKA_VERSION"
LIBS="$KAFKA_HOME/libs"

KAFKA_PORT="${KAFKA_PORT:-19092}"
KAFKA_SASL_PORT="${KAFKA_SASL_PORT:-19093}"
KAFKA_CONTROLLER_PORT="${KAFKA_CONTROLLER_PORT:-19094}"
KAFKA_POD_PORT="${KAFKA_POD_PORT:-19095}"
KAFKA_POD_HOST="${KAFKA_POD_HOST:-}"
SASL_USER="${TICKFLOW_TEST_SASL_USER:-tickflow}"
SASL_PASSWORD="${TICKFLOW_TEST_SASL_PASSWORD:-tickflow-secret}"
HEAP_OPTS="${KAFKA_HEAP_OPTS:--Xms256m -Xmx512m}"
START_TIMEOUT="${KAFKA_START_TIMEOUT:-90}"
STATE_DIR="${KAFKA_STATE_DIR:-${TMPDIR:-/tmp}/tickflow-kafka.$KAFKA_PORT}"
PID_FILE="$STATE_DIR/pid"
RUNDIR_FILE="$STATE_DIR/rundir"

die() { echo "kafka.sh: $*" >&2; exit 1; }

# ---------------------------------------------------------------- install

install() {
  if [ -f "$LIBS/.complete" ]; then
    return 0
  fi
  command -v java >/dev/null || die "java not found (Kafka $KAFKA_VERSION needs Java 17+)"
  command -v mvn >/dev/null || die "mvn not found (apt-get install maven)"
  local work
  work="$(mktemp -d "${TMPDIR:-/tmp}/tickflow-kafka-install.XXXXXX")"
  cat >"$work/pom.xml" <<EOF
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>io.tickflow.tests</groupId>
  <artifactId>kafka-broker-libs</artifactId>
  <version>1</version>
  <packaging>pom</packaging>
  <dependencies>
    <!-- broker: kafka.Kafka, kafka.tools.StorageTool; brings kafka-server, -storage, -metadata, -raft, the coordinators, log4j2 -->
    <dependency><groupId>org.apache.kafka</groupId><artifactId>kafka_$SCALA_VERSION</artifactId><version>$KAFKA_VERSION</version></dependency>
    <!-- CLI tools: TopicCommand, ConfigCommand, BrokerApiVersionsCommand, console producer/consumer -->
    <dependency><groupId>org.apache.kafka</groupId><artifactId>kafka-tools</artifactId><version>$KAFKA_VERSION</version></dependency>
  </dependencies>
</project>
EOF
  local mvn=(mvn -B -q -Dmaven.repo.local="$CACHE/m2")
  rm -rf "$LIBS.tmp"
  if ! (cd "$work" && "${mvn[@]}" dependency:copy-dependencies \
      -DincludeScope=runtime -DoutputDirectory="$LIBS.tmp" >"$work/mvn.log" 2>&1); then
    cat "$work/mvn.log" >&2
    rm -rf "$work"
    die "maven could not fetch org.apache.kafka:kafka_$SCALA_VERSION:$KAFKA_VERSION"
  fi
  if [ ! -f "$LIBS.tmp/kafka_$SCALA_VERSION-$KAFKA_VERSION.jar" ]; then
    rm -rf "$work"
    die "kafka_$SCALA_VERSION-$KAFKA_VERSION.jar missing after download"
  fi
  # Kafka logs through slf4j 1.x but ships no binding: add log4j-slf4j-impl of
  # the same version as the log4j-core that Kafka depends on.
  local core log4j
  core="$(find "$LIBS.tmp" -maxdepth 1 -name 'log4j-core-*.jar' -printf '%f\n' | head -1)"
  [ -n "$core" ] || { rm -rf "$work"; die "no log4j-core among Kafka's dependencies"; }
  log4j="${core#log4j-core-}"
  log4j="${log4j%.jar}"
  if ! (cd "$work" && "${mvn[@]}" dependency:copy \
      -Dartifact="org.apache.logging.log4j:log4j-slf4j-impl:$log4j" \
      -DoutputDirectory="$LIBS.tmp" >"$work/mvn.log" 2>&1); then
    cat "$work/mvn.log" >&2
    rm -rf "$work"
    die "maven could not fetch org.apache.logging.log4j:log4j-slf4j-impl:$log4j"
  fi
  rm -rf "$work" "$LIBS"
  mv "$LIBS.tmp" "$LIBS"
  touch "$LIBS/.complete"
}

write_tools_log_config() {
  mkdir -p "$KAFKA_HOME/config"
  cat >"$KAFKA_HOME/config/tools-log4j2.properties" <<'EOF'
# CLI tools: warnings and errors to stderr only.
status = error
appender.stderr.type = Console
appender.stderr.name = STDERR
appender.stderr.target = SYSTEM_ERR
appender.stderr.layout.type = PatternLayout
appender.stderr.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = WARN
rootLogger.appenderRef.stderr.ref = STDERR
EOF
}

# Run a main class from the broker jars with the quiet tools logging.
run_class() {
  install
  [ -f "$KAFKA_HOME/config/tools-log4j2.properties" ] || write_tools_log_config
  java -Xmx256m -XX:+UseSerialGC -XX:TieredStopAtLevel=1 \
    -Dlog4j2.configurationFile="$KAFKA_HOME/config/tools-log4j2.properties" \
    -cp "$LIBS/*" "$@"
}

# The first of the given main classes that the Kafka jars contain (tools moved
# between Kafka versions, e.g. kafka.admin.ConfigCommand in 4.0/4.1). Name
# org.apache.kafka.* candidates first: kafka/x/Y.class is a suffix of them.
find_class() {
  install
  local c
  for c in "$@"; do
    if LC_ALL=C grep -qaF "${c//.//}.class" "$LIBS"/kafka*.jar; then
      echo "$c"
      return 0
    fi
  done
  die "none of $* is in the Kafka $KAFKA_VERSION jars"
}

# ---------------------------------------------------------------- state

running_pid() {
  # Prints the broker's pid when the process recorded in the state dir is alive
  # and is our broker.
  [ -f "$PID_FILE" ] || return 1
  local pid
  pid="$(cat "$PID_FILE")"
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 1
  tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q 'kafka\.Kafka' || return 1
  echo "$pid"
}

rundir() { cat "$RUNDIR_FILE" 2>/dev/null || true; }

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

random_cluster_id() {
  # A Kafka Uuid: 16 random bytes, URL-safe base64 without padding (22 chars).
  # One id in 64 starts with '-', which kafka-storage's argument parser reads
  # as an option ("--cluster-id: expected one argument"); Kafka's own
  # Uuid.randomUuid() draws again in that case, and so do we.
  local id
  while :; do
    id="$(head -c 16 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=\n')"
    [[ "$id" == -* ]] || break
  done
  printf '%s' "$id"
}

# ---------------------------------------------------------------- start / stop

write_config() {
  local dir="$1"
  mkdir -p "$dir/data" "$dir/logs"
  local listeners="PLAINTEXT://127.0.0.1:$KAFKA_PORT,SASL_PLAINTEXT://127.0.0.1:$KAFKA_SASL_PORT"
  local advertised="$listeners" protocols="PLAINTEXT:PLAINTEXT,SASL_PLAINTEXT:SASL_PLAINTEXT,CONTROLLER:PLAINTEXT"
  if [ -n "$KAFKA_POD_HOST" ]; then
    listeners+=",POD://0.0.0.0:$KAFKA_POD_PORT"
    advertised+=",POD://$KAFKA_POD_HOST:$KAFKA_POD_PORT"
    protocols+=",POD:PLAINTEXT"
  fi
  cat >"$dir/server.properties" <<EOF
# Generated by tests/kafka/kafka.sh: single-node KRaft test broker.
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$KAFKA_CONTROLLER_PORT
listeners=$listeners,CONTROLLER://127.0.0.1:$KAFKA_CONTROLLER_PORT
advertised.listeners=$advertised
listener.security.protocol.map=$protocols
inter.broker.listener.name=PLAINTEXT
controller.listener.names=CONTROLLER

sasl.enabled.mechanisms=SCRAM-SHA-256,SCRAM-SHA-512,PLAIN
listener.name.sasl_plaintext.scram-sha-256.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
listener.name.sasl_plaintext.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
listener.name.sasl_plaintext.plain.sasl.jaas.config=org.apache.kafka.common.security.plain.PlainLoginModule required user_$SASL_USER="$SASL_PASSWORD";

log.dirs=$dir/data
num.partitions=1
default.replication.factor=1
min.insync.replicas=1
auto.create.topics.enable=false
delete.topic.enable=true

# One broker: internal topics with one replica, fewer partitions for a fast start.
offsets.topic.replication.factor=1
offsets.topic.num.partitions=8
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=8
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
# After a kill -9 the restarted broker cannot register until the old session
# expires (default 9 s): keep that short for restart --kill.
broker.session.timeout.ms=4000
broker.heartbeat.interval.ms=1000

# Small footprint for a 2-core machine.
num.network.threads=2
num.io.threads=4
num.recovery.threads.per.data.dir=1
background.threads=4
log.cleaner.threads=1
log.cleaner.dedupe.buffer.size=16777216
log.segment.bytes=67108864
EOF
  cat >"$dir/log4j2.properties" <<EOF
# Broker log: everything at INFO into logs/server.log.
status = error
appender.file.type = File
appender.file.name = FILE
appender.file.fileName = $dir/logs/server.log
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.file.ref = FILE
logger.kafka.name = kafka
logger.kafka.level = INFO
logger.request.name = kafka.request.logger
logger.request.level = WARN
logger.state.name = state.change.logger
logger.state.level = WARN
EOF
}

format_storage() {
  local dir="$1"
  local out
  local storage_tool
  storage_tool="$(find_class org.apache.kafka.tools.StorageTool kafka.tools.StorageTool)"
  if ! out="$(run_class "$storage_tool" format \
      --config "$dir/server.properties" \
      --cluster-id "$(random_cluster_id)" \
      --add-scram "SCRAM-SHA-256=[name=$SASL_USER,password=$SASL_PASSWORD]" \
      --add-scram "SCRAM-SHA-512=[name=$SASL_USER,password=$SASL_PASSWORD]" 2>&1)"; then
    echo "$out" >&2
    die "formatting the storage in $dir failed"
  fi
}

check_ports_free() {
  local p
  for p in "$KAFKA_PORT" "$KAFKA_SASL_PORT" "$KAFKA_CONTROLLER_PORT" ${KAFKA_POD_HOST:+"$KAFKA_POD_PORT"}; do
    if port_open "$p"; then die "port $p on 127.0.0.1 is already in use"; fi
  done
}

launch() {
  local dir="$1"
  check_ports_free
  mkdir -p "$STATE_DIR" "$dir/logs"
  echo "$dir" >"$RUNDIR_FILE"
  # shellcheck disable=SC2086
  setsid nohup java $HEAP_OPTS -server -XX:+UseG1GC -XX:MaxGCPauseMillis=20 \
    -XX:+ExitOnOutOfMemoryError -Djava.awt.headless=true \
    -Dlog4j2.configurationFile="$dir/log4j2.properties" \
    -Dkafka.logs.dir="$dir/logs" \
    -cp "$LIBS/*" kafka.Kafka "$dir/server.properties" \
    >>"$dir/logs/stdout.log" 2>&1 </dev/null 9>&- &
  local pid=$!
  disown "$pid" 2>/dev/null || true
  echo "$pid" >"$PID_FILE"
  wait_ready "$dir" "$pid"
}

# How often the broker log says it finished starting (a restart appends).
started_count() {
  local n
  n="$(grep -c 'Kafka Server started' "$1/logs/server.log" 2>/dev/null)" || true
  echo "${n:-0}"
}

wait_ready() {
  local dir="$1" pid="$2" deadline=$((SECONDS + START_TIMEOUT))
  local started_before
  started_before="$(started_count "$dir")"
  while :; do
    if ! kill -0 "$pid" 2>/dev/null; then
      show_failure "$dir" "the broker exited during start"
    fi
    if [ "$(started_count "$dir")" -gt "$started_before" ] \
        && port_open "$KAFKA_PORT" && port_open "$KAFKA_SASL_PORT"; then
      return 0
    fi
    if [ "$SECONDS" -ge "$deadline" ]; then
      kill -9 "$pid" 2>/dev/null || true
      rm -f "$PID_FILE"
      show_failure "$dir" "the broker did not start within ${START_TIMEOUT}s"
    fi
    sleep 0.2
  done
}

show_failure() {
  local dir="$1" why="$2"
  {
    echo "kafka.sh: $why; last log lines ($dir/logs):"
    tail -n 40 "$dir/logs/server.log" 2>/dev/null || true
    tail -n 20 "$dir/logs/stdout.log" 2>/dev/null || true
  } >&2
  rm -f "$PID_FILE"
  exit 1
}

start() {
  install
  if running_pid >/dev/null; then
    return 0
  fi
  command -v java >/dev/null || die "java not found"
  remove_rundir # left over from a failed start or a broker that died
  check_ports_free
  local dir
  dir="$(mktemp -d "${TMPDIR:-/tmp}/tickflow-kafka-run.XXXXXX")"
  mkdir -p "$STATE_DIR"
  echo "$dir" >"$RUNDIR_FILE"
  write_config "$dir"
  format_storage "$dir"
  launch "$dir"
}

# Stops the broker process. $1 = TERM or KILL.
stop_process() {
  local sig="$1" pid
  pid="$(running_pid)" || { rm -f "$PID_FILE"; return 0; }
  kill "-$sig" "$pid" 2>/dev/null || true
  local deadline=$((SECONDS + 60))
  while kill -0 "$pid" 2>/dev/null; do
    if [ "$SECONDS" -ge "$deadline" ]; then
      kill -9 "$pid" 2>/dev/null || true
    fi
    sleep 0.2
  done
  rm -f "$PID_FILE"
}

remove_rundir() {
  local dir
  dir="$(rundir)"
  case "$dir" in
    "${TMPDIR:-/tmp}"/tickflow-kafka-run.*) rm -rf "$dir" ;;
  esac
  rm -f "$RUNDIR_FILE"
}

stop() {
  stop_process TERM
  remove_rundir
  rmdir "$STATE_DIR" 2>/dev/null || true
}

restart() {
  local sig=TERM
  case "${1:-}" in
    --kill) sig=KILL ;;
    "") ;;
    *) die "restart: unknown option $1" ;;
  esac
  local dir
  dir="$(rundir)"
  if [ -z "$dir" ] || [ ! -f "$dir/server.properties" ]; then
    die "restart: no broker was started (run start first)"
  fi
  stop_process "$sig"
  # The old listeners must be gone before the new broker binds them.
  local deadline=$((SECONDS + 30))
  while port_open "$KAFKA_PORT" || port_open "$KAFKA_SASL_PORT" || port_open "$KAFKA_CONTROLLER_PORT"; do
    [ "$SECONDS" -lt "$deadline" ] || die "restart: ports still in use after the old broker stopped"
    sleep 0.2
  done
  install
  launch "$dir"
}

status() {
  local pid
  if pid="$(running_pid)"; then
    echo "running pid=$pid rundir=$(rundir) version=$KAFKA_VERSION plaintext=127.0.0.1:$KAFKA_PORT sasl=127.0.0.1:$KAFKA_SASL_PORT controller=127.0.0.1:$KAFKA_CONTROLLER_PORT"
  else
    echo "stopped"
    return 1
  fi
}

print_env() {
  cat <<EOF
export KAFKA_BROKERS=127.0.0.1:$KAFKA_PORT
export KAFKA_SASL_BROKERS=127.0.0.1:$KAFKA_SASL_PORT
EOF
  [ -z "$KAFKA_POD_HOST" ] || echo "export KAFKA_POD_BROKERS=$KAFKA_POD_HOST:$KAFKA_POD_PORT"
  printf 'export TICKFLOW_TEST_SASL_USER=%q\n' "$SASL_USER"
  printf 'export TICKFLOW_TEST_SASL_PASSWORD=%q\n' "$SASL_PASSWORD"
}

# One start/stop/restart at a time per broker (e.g. two test suites at once).
lock() {
  exec 9>"$STATE_DIR.lock"
  flock 9
}

cmd="${1:-}"
[ $# -gt 0 ] && shift
case "$cmd" in
  install | start | stop | restart) lock ;;
esac
case "$cmd" in
  install) install; write_tools_log_config ;;
  start) start ;;
  stop) stop ;;
  restart) restart "$@" ;;
  status) status ;;
  env) print_env ;;
  topics)
    cls="$(find_class org.apache.kafka.tools.TopicCommand kafka.admin.TopicCommand)"
    run_class "$cls" --bootstrap-server "127.0.0.1:$KAFKA_PORT" "$@"
    ;;
  configs)
    cls="$(find_class org.apache.kafka.tools.ConfigCommand kafka.admin.ConfigCommand)"
    run_class "$cls" --bootstrap-server "127.0.0.1:$KAFKA_PORT" "$@"
    ;;
  class) [ $# -gt 0 ] || die "class: name a main class"; run_class "$@" ;;
  logs) tail -n "${1:-100}" "$(rundir)/logs/server.log" ;;
  *)
    sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//' >&2
    exit 2
    ;;
esac
