#!/usr/bin/env bash
# A real Kubernetes control plane for tests, on loopback only: etcd,
# kube-apiserver, kube-controller-manager and kube-scheduler built from the
# k8s.io/kubernetes Go module, KWOK for a fake node (so pods are scheduled and
# turn Running without a kubelet or containers), and helm built from its Go
# module. kubectl comes from the machine (kubectl / kubectl.1.33).
#
# Usage: tests/k8s/controlplane.sh COMMAND
#   install      build the binaries into $TICKFLOW_CACHE/k8s-<version>/bin
#                (skips those already there; needs Go and the Go module proxy)
#   start        install, then in a fresh temp run dir generate certs and keys,
#                start etcd, kube-apiserver, kube-controller-manager,
#                kube-scheduler and kwok, register the fake node, a default
#                StorageClass, and wait until /readyz is ok and a probe
#                Deployment's pod is Running (then delete it). A no-op when
#                the control plane already runs.
#   stop         kill every process and remove the run dir (safe when stopped)
#   status       print pids, run dir and endpoints; exit 1 when not running
#   env          print `export ...` lines for the tests:
#                eval "$(tests/k8s/controlplane.sh env)"
#   kubeconfig   print the path of the admin kubeconfig
#   sa-kubeconfig NAMESPACE SERVICEACCOUNT [FILE] [DURATION]
#                write a kubeconfig that authenticates as that ServiceAccount
#                (token from `kubectl create token`, default 1h) and print its
#                path; run a process with it to get exactly that SA's RBAC
#   logs [COMPONENT] [N]
#                last N (default 60) log lines of etcd, kube-apiserver,
#                kube-controller-manager, kube-scheduler or kwok (default: all)
#   real-node-namespace NS
#                create NS so that its pods run on the real node
#   real-node-check-clean
#                exit 1 if a real node left a process, mount, bridge, cgroup
#                or iptables chain behind (run after stop)
#   load-image ARCHIVE...
#                import docker-archive images into the real node's containerd
#                (what `kind load image-archive` does for a kind node)
#
# With K8S_REAL_NODE=1, start also starts a real node (tests/k8s/node.sh:
# kubelet, kube-proxy, containerd, a pod bridge, the local-path provisioner
# with StorageClass local-path; root only) after the fake
# one, and the API server listens on every address so that pods reach it.
#
# Ports (all on 127.0.0.1): kube-apiserver ${K8S_API_PORT:-16443} (https),
# etcd ${K8S_ETCD_PORT:-12379} (+1 peer), kube-controller-manager
# ${K8S_KCM_PORT:-20257}, kube-scheduler ${K8S_SCHED_PORT:-20259}, kwok
# ${K8S_KWOK_PORT:-20247}.
# Other settings: TICKFLOW_CACHE (default ~/.cache/tickflow), K8S_STATE_DIR
# (pid files and run-dir pointer; default /tmp/tickflow-k8s.<api port>),
# K8S_START_TIMEOUT seconds for each start step (default 120),
# K8S_POD_CIDR (fake pod IPs; default 127.1.0.1/16, loopback),
# K8S_BUILD_PARALLEL (go build -p and GOMAXPROCS, default 1), K8S_BUILD_NICE
# (default 19), K8S_KEEP_GOCACHE=1 (keep the Go build cache after install), KUBECTL (default: kubectl.1.33 from PATH or beside the kubectl
# on PATH, else kubectl). See tests/k8s/README.md.
set -euo pipefail

HERE="$(cd "$(dirname "$0")" && pwd)"

# Versions. The Kubernetes ones must match tests/k8s/build/go.mod (there:
# k8s.io/kubernetes v1.N.M and every staging module replaced by v0.N.M; etcd is
# the version that Kubernetes release pins). kwok and helm are built with their
# own go.mod (`go install pkg@version`) and use the same k8s.io v0.33 libraries.
K8S_VERSION="v1.33.13"
ETCD_VERSION="v3.5.21"
KWOK_VERSION="v0.7.0"
HELM_VERSION="v3.18.6"
# The real node's dynamic PVs: kind's default provisioner.
LOCAL_PATH_VERSION="v0.0.30"

CACHE="${TICKFLOW_CACHE:-$HOME/.cache/tickflow}"
K8S_HOME="$CACHE/k8s-$K8S_VERSION"
BIN="$K8S_HOME/bin"

API_PORT="${K8S_API_PORT:-16443}"
ETCD_PORT="${K8S_ETCD_PORT:-12379}"
ETCD_PEER_PORT="$((ETCD_PORT + 1))"
KCM_PORT="${K8S_KCM_PORT:-20257}"
SCHED_PORT="${K8S_SCHED_PORT:-20259}"
KWOK_PORT="${K8S_KWOK_PORT:-20247}"
START_TIMEOUT="${K8S_START_TIMEOUT:-120}"
STATE_DIR="${K8S_STATE_DIR:-${TMPDIR:-/tmp}/tickflow-k8s.$API_PORT}"
RUNDIR_FILE="$STATE_DIR/rundir"
COMPONENTS=(etcd kube-apiserver kube-controller-manager kube-scheduler kwok)
NODE_NAME="kwok-node-0"

die() { echo "controlplane.sh: $*" >&2; exit 1; }
log() { echo "controlplane.sh: $*" >&2; }

# shellcheck source=tests/k8s/node.sh
. "$HERE/node.sh"

# kubectl of the same minor as the cluster: kubectl.1.33 on PATH or beside the
# kubectl that PATH finds (the Google Cloud SDK keeps kubectl.1.NN there and
# its `kubectl` is a dispatcher), else plain kubectl (1.32 is within skew).
kubectl_bin() {
  local minor="${K8S_VERSION#v}" k
  minor="${minor%.*}"
  if [ -n "${KUBECTL:-}" ]; then
    echo "$KUBECTL"
  elif command -v "kubectl.$minor" >/dev/null; then
    command -v "kubectl.$minor"
  elif k="$(command -v kubectl)"; then
    k="$(readlink -f "$k")"
    if [ -x "$(dirname "$k")/kubectl.$minor" ]; then
      echo "$(dirname "$k")/kubectl.$minor"
    else
      echo "$k"
    fi
  else
    die "kubectl not found"
  fi
}

# ---------------------------------------------------------------- install

go_env() {
  # Everything the go command writes goes under the cache, never into the
  # clone; builds are niced and serial so they do not disturb other work.
  export GOPATH="$CACHE/go"
  export GOMODCACHE="$CACHE/go/pkg/mod"
  export GOCACHE="$K8S_HOME/go-build"
  export GOTOOLCHAIN=local
  export GOMAXPROCS="${K8S_BUILD_PARALLEL:-1}"
  export GOFLAGS="-p=${K8S_BUILD_PARALLEL:-1} -buildvcs=false -mod=readonly -trimpath"
  export CGO_ENABLED=0
  export GOWORK=off
}

# build NAME CMD... : runs CMD (which writes $BIN/NAME.tmp) unless $BIN/NAME
# exists, then moves the result in place and records the build time.
build() {
  local name="$1"
  shift
  [ -x "$BIN/$name" ] && return 0
  mkdir -p "$BIN"
  rm -f "$BIN/$name.tmp"
  log "building $name (cold: several minutes on 2 cores)"
  local t0=$SECONDS
  if ! nice -n "${K8S_BUILD_NICE:-19}" "$@" >"$K8S_HOME/build-$name.log" 2>&1; then
    cat "$K8S_HOME/build-$name.log" >&2
    rm -f "$BIN/$name.tmp"
    die "building $name failed (log: $K8S_HOME/build-$name.log)"
  fi
  [ -x "$BIN/$name.tmp" ] || die "building $name produced no binary"
  mv "$BIN/$name.tmp" "$BIN/$name"
  printf '%s\t%ss\t%s\n' "$name" "$((SECONDS - t0))" "$(date -u +%FT%TZ)" >>"$K8S_HOME/build-times.tsv"
  log "built $name in $((SECONDS - t0))s"
}

install() {
  local have=1 b
  for b in etcd kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy kwok helm local-path-provisioner; do
    [ -x "$BIN/$b" ] || have=0
  done
  [ "$have" = 1 ] && return 0
  command -v go >/dev/null || die "go not found (the control plane is built from Go modules)"
  go_env
  mkdir -p "$K8S_HOME"
  local gitv="$K8S_VERSION" major minor
  major="${K8S_VERSION#v}"; major="${major%%.*}"
  minor="${K8S_VERSION#v*.}"; minor="${minor%%.*}"
  local k8s_ld="-s -w"
  local pkg
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    k8s_ld+=" -X $pkg.gitVersion=$gitv -X $pkg.gitMajor=$major -X $pkg.gitMinor=$minor"
    k8s_ld+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
  done
  # The wrapper module (tests/k8s/build) is only read: go.sum is complete and
  # -mod=readonly keeps the go command from writing to it.
  local mod="$HERE/build"
  if ! grep -q "k8s.io/kubernetes $K8S_VERSION\$" "$mod/go.mod" \
      || ! grep -q "go.etcd.io/etcd/server/v3 $ETCD_VERSION\$" "$mod/go.mod"; then
    die "tests/k8s/build/go.mod does not require k8s.io/kubernetes $K8S_VERSION and etcd $ETCD_VERSION"
  fi
  # The build commands are single-quoted on purpose: bash -c gets its values as $1...
  # shellcheck disable=SC2016
  build etcd bash -c 'cd "$1" && go build -ldflags "-s -w" -o "$2" go.etcd.io/etcd/server/v3' _ "$mod" "$BIN/etcd.tmp"
  local c
  # shellcheck disable=SC2016
  # kubelet and kube-proxy: for the real node (tests/k8s/node.sh).
  for c in kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy; do
    build "$c" bash -c 'cd "$1" && go build -ldflags "$2" -o "$3" "k8s.io/kubernetes/cmd/$4"' _ "$mod" "$k8s_ld" "$BIN/$c.tmp" "$c"
  done
  # kwok and helm: their own published go.mod and go.sum (no replace
  # directives), built in an empty temp dir.
  local tmp
  tmp="$(mktemp -d "${TMPDIR:-/tmp}/tickflow-k8s-build.XXXXXX")"
  # shellcheck disable=SC2016
  build kwok bash -c 'cd "$1" && GOFLAGS="${GOFLAGS/-mod=readonly/}" GOBIN="$1" go install -ldflags "-s -w -X sigs.k8s.io/kwok/pkg/consts.Version=${2#v}" "sigs.k8s.io/kwok/cmd/kwok@$2" && mv "$1/kwok" "$3"' _ "$tmp" "$KWOK_VERSION" "$BIN/kwok.tmp"
  local helm_ld="-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION -X helm.sh/helm/v3/internal/version.metadata= -X helm.sh/helm/v3/internal/version.gitTreeState=clean"
  helm_ld+=" -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMajor=$major -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMinor=$minor"
  helm_ld+=" -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMajor=$major -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMinor=$minor"
  # shellcheck disable=SC2016
  build helm bash -c 'cd "$1" && GOFLAGS="${GOFLAGS/-mod=readonly/}" GOBIN="$1" go install -ldflags "$2" "helm.sh/helm/v3/cmd/helm@$3" && mv "$1/helm" "$4"' _ "$tmp" "$helm_ld" "$HELM_VERSION" "$BIN/helm.tmp"
  # The local-path provisioner (rancher/local-path-provisioner, what kind
  # installs as its default StorageClass): PVs of the real node.
  # shellcheck disable=SC2016
  build local-path-provisioner bash -c 'cd "$1" && GOFLAGS="${GOFLAGS/-mod=readonly/}" GOBIN="$1" go install -ldflags "-s -w -X main.VERSION=$2" "github.com/rancher/local-path-provisioner@$2" && mv "$1/local-path-provisioner" "$3"' _ "$tmp" "$LOCAL_PATH_VERSION" "$BIN/local-path-provisioner.tmp"
  rm -rf "$tmp"
  # All binaries are there: the 4 GB of compiled packages are of no further
  # use (the module cache, 1.2 GB, stays for a version change).
  [ "${K8S_KEEP_GOCACHE:-0}" = 1 ] || rm -rf "$GOCACHE"
}


# ---------------------------------------------------------------- state

rundir() { cat "$RUNDIR_FILE" 2>/dev/null || true; }

pid_file() { echo "$STATE_DIR/$1.pid"; }

# Prints the pid of component $1 when the recorded process is alive and is
# our binary (guards against a reused pid).
running_pid() {
  local f pid
  f="$(pid_file "$1")"
  [ -f "$f" ] || return 1
  pid="$(cat "$f")"
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 1
  tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF "$BIN/$1 " || return 1
  echo "$pid"
}

all_running() {
  local c
  for c in "${COMPONENTS[@]}"; do running_pid "$c" >/dev/null || return 1; done
}

any_running() {
  local c
  for c in "${COMPONENTS[@]}"; do running_pid "$c" >/dev/null && return 0; done
  return 1
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# kubectl as admin; its discovery and HTTP cache lives in the run dir, not in
# ~/.kube/cache (a fresh cluster on the same port must not see stale CRDs).
kc() {
  KUBECACHEDIR="$(rundir)/kube-cache" "$(kubectl_bin)" --kubeconfig "$(rundir)/admin.kubeconfig" "$@"
}

# ---------------------------------------------------------------- certs

# EC P-256 keys: generated instantly, accepted by every component (and ES256
# for service-account tokens).
gen_key() { openssl ecparam -name prime256v1 -genkey -noout -out "$1" 2>/dev/null; }

# sign_cert DIR NAME SUBJECT EXTENSIONS... (signed by DIR/ca, or by
# DIR/front-proxy-ca for NAME front-proxy-client)
sign_cert() {
  local dir="$1" name="$2" subj="$3" ca=ca
  shift 3
  [ "$name" = front-proxy-client ] && ca=front-proxy-ca
  gen_key "$dir/$name.key"
  printf '%s\n' "[ext]" "$@" >"$dir/$name.ext"
  openssl req -new -key "$dir/$name.key" -subj "$subj" -out "$dir/$name.csr" 2>/dev/null
  openssl x509 -req -in "$dir/$name.csr" -CA "$dir/$ca.crt" -CAkey "$dir/$ca.key" \
    -set_serial "0x$(openssl rand -hex 12)" -days 30 -sha256 \
    -extfile "$dir/$name.ext" -extensions ext -out "$dir/$name.crt" 2>/dev/null
  rm -f "$dir/$name.csr" "$dir/$name.ext"
}

gen_certs() {
  local d="$1/pki"
  mkdir -p "$d"
  gen_key "$d/ca.key"
  openssl req -x509 -new -key "$d/ca.key" -subj "/CN=tickflow-test-ca" -days 30 -sha256 \
    -addext "basicConstraints=critical,CA:TRUE" \
    -addext "keyUsage=critical,keyCertSign,cRLSign,digitalSignature" \
    -out "$d/ca.crt" 2>/dev/null
  local client=("basicConstraints=critical,CA:FALSE" "keyUsage=critical,digitalSignature,keyEncipherment" "extendedKeyUsage=clientAuth")
  sign_cert "$d" apiserver "/CN=kube-apiserver" \
    "basicConstraints=critical,CA:FALSE" "keyUsage=critical,digitalSignature,keyEncipherment" \
    "extendedKeyUsage=serverAuth" \
    "subjectAltName=IP:127.0.0.1,IP:10.96.0.1,IP:$REAL_NODE_IP,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local"
  # system:masters: full access, bypasses RBAC (the admin of the test cluster).
  sign_cert "$d" admin "/O=system:masters/CN=tickflow-admin" "${client[@]}"
  sign_cert "$d" kwok "/O=system:masters/CN=kwok" "${client[@]}"
  # The API server's client certificate towards kubelets (logs, exec).
  sign_cert "$d" apiserver-kubelet-client "/O=system:masters/CN=kube-apiserver-kubelet-client" "${client[@]}"
  # The users that the default RBAC bootstrap policy grants these roles.
  sign_cert "$d" kube-controller-manager "/CN=system:kube-controller-manager" "${client[@]}"
  sign_cert "$d" kube-scheduler "/CN=system:kube-scheduler" "${client[@]}"
  # Front proxy (aggregation layer): its own CA, trusted for request headers.
  gen_key "$d/front-proxy-ca.key"
  openssl req -x509 -new -key "$d/front-proxy-ca.key" -subj "/CN=tickflow-test-front-proxy-ca" -days 30 -sha256 \
    -addext "basicConstraints=critical,CA:TRUE" \
    -addext "keyUsage=critical,keyCertSign,cRLSign,digitalSignature" \
    -out "$d/front-proxy-ca.crt" 2>/dev/null
  sign_cert "$d" front-proxy-client "/CN=front-proxy-client" "${client[@]}"
  # Service-account token signing key pair.
  gen_key "$d/sa.key"
  openssl ec -in "$d/sa.key" -pubout -out "$d/sa.pub" 2>/dev/null
  chmod 600 "$d"/*.key
}

b64() { base64 -w0 <"$1"; }

# write_kubeconfig FILE USER (client cert/key pki/USER.crt/.key, embedded)
write_kubeconfig() {
  local file="$1" user="$2" d
  d="$(dirname "$file")/pki"
  cat >"$file" <<YAML
apiVersion: v1
kind: Config
clusters:
- name: tickflow-test
  cluster:
    server: https://127.0.0.1:$API_PORT
    certificate-authority-data: $(b64 "$d/ca.crt")
users:
- name: $user
  user:
    client-certificate-data: $(b64 "$d/$user.crt")
    client-key-data: $(b64 "$d/$user.key")
contexts:
- name: tickflow-test
  context:
    cluster: tickflow-test
    user: $user
current-context: tickflow-test
YAML
  chmod 600 "$file"
}

# ---------------------------------------------------------------- start / stop

# launch NAME ARGS... : start $BIN/NAME in its own session, log to logs/NAME.log
launch() { launch_bin "$1" "$BIN/$1" "${@:2}"; }

# launch_bin NAME BINARY ARGS... : the same for any binary; pid file and log
# are named NAME.
launch_bin() {
  local name="$1" bin="$2" dir
  shift 2
  dir="$(rundir)"
  setsid nohup "$bin" "$@" >>"$dir/logs/$name.log" 2>&1 </dev/null 9>&- &
  local pid=$!
  disown "$pid" 2>/dev/null || true
  echo "$pid" >"$(pid_file "$name")"
}

fail_start() {
  local dir c
  dir="$(rundir)"
  {
    echo "controlplane.sh: start failed: $*"
    for c in "${COMPONENTS[@]}"; do
      if [ -s "$dir/logs/$c.log" ]; then
        echo "---- $c (last lines of $dir/logs/$c.log)"
        tail -n 15 "$dir/logs/$c.log"
      fi
    done
  } >&2
  # K8S_KEEP_ON_FAILURE=1 leaves everything running for a look (then stop).
  [ "${K8S_KEEP_ON_FAILURE:-0}" = 1 ] || stop
  exit 1
}

# wait_for WHAT COMMAND... : polls COMMAND until it succeeds; fails the start
# when it does not within K8S_START_TIMEOUT seconds or when a component died.
wait_for() {
  local what="$1" secs="$START_TIMEOUT" c
  shift
  local deadline=$((SECONDS + secs))
  until "$@" >/dev/null 2>&1; do
    for c in "${COMPONENTS[@]}"; do
      # Only whether the process lives: right after `launch` it may not have
      # exec'd the binary yet, so running_pid's command-line check would
      # take a component that is still starting for a dead one.
      if [ -f "$(pid_file "$c")" ] && ! kill -0 "$(cat "$(pid_file "$c")")" 2>/dev/null; then
        fail_start "$c exited while waiting for $what"
      fi
    done
    [ "$SECONDS" -lt "$deadline" ] || fail_start "timed out after ${secs}s waiting for $what"
    sleep 0.3
  done
}

etcd_healthy() { curl -fsS "http://127.0.0.1:$ETCD_PORT/health" | grep -q '"health":"true"'; }
api_ready() { [ "$(kc get --raw /readyz 2>/dev/null)" = ok ]; }
healthz_ok() { [ "$(curl -ksS "https://127.0.0.1:$1/healthz")" = ok ]; }
node_ready() {
  [ "$(kc get node "$NODE_NAME" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}')" = True ]
}
default_sa() { kc -n default get serviceaccount default; }
probe_running() {
  local phases
  phases="$(kc -n default get pods -l app=tickflow-probe -o jsonpath='{.items[*].status.phase}')"
  [ "$phases" = Running ]
}

probe_gone() { [ -z "$(kc -n default get pods -l app=tickflow-probe -o name)" ]; }

check_ports_free() {
  local p
  for p in "$API_PORT" "$ETCD_PORT" "$ETCD_PEER_PORT" "$KCM_PORT" "$SCHED_PORT" "$KWOK_PORT"; do
    if port_open "$p"; then die "port $p on 127.0.0.1 is already in use"; fi
  done
}

start() {
  install
  if all_running; then
    return 0
  fi
  # A partial control plane, or pid files of components that died without
  # `stop` (a killed session): clear both, or wait_for would take a stale
  # pid file for a component that exited during this start.
  stop
  command -v openssl >/dev/null || die "openssl not found"
  command -v curl >/dev/null || die "curl not found"
  kubectl_bin >/dev/null
  remove_rundir
  check_ports_free
  local t0=$SECONDS dir
  dir="$(mktemp -d "${TMPDIR:-/tmp}/tickflow-k8s-run.XXXXXX")"
  mkdir -p "$STATE_DIR" "$dir/logs"
  echo "$dir" >"$RUNDIR_FILE"
  gen_certs "$dir"
  local u
  for u in admin kwok kube-controller-manager kube-scheduler; do
    write_kubeconfig "$dir/$u.kubeconfig" "$u"
  done
  local pki="$dir/pki"

  launch etcd --name tickflow --data-dir "$dir/etcd" \
    --listen-client-urls "http://127.0.0.1:$ETCD_PORT" \
    --advertise-client-urls "http://127.0.0.1:$ETCD_PORT" \
    --listen-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
    --initial-advertise-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
    --initial-cluster "tickflow=http://127.0.0.1:$ETCD_PEER_PORT" \
    --unsafe-no-fsync --quota-backend-bytes=2147483648 --log-level=warn
  wait_for etcd etcd_healthy

  # Without a real node the default `kubernetes` Service gets no Endpoints
  # (a loopback address cannot be one): nothing runs in a pod. With one,
  # it points at the node's bridge address, which pods reach.
  local bind=(--bind-address=127.0.0.1 --advertise-address=127.0.0.1 --endpoint-reconciler-type=none)
  [ "${K8S_REAL_NODE:-0}" = 1 ] &&
    bind=(--bind-address=0.0.0.0 --advertise-address="$REAL_NODE_IP" --endpoint-reconciler-type=lease)
  launch kube-apiserver \
    --etcd-servers="http://127.0.0.1:$ETCD_PORT" \
    "${bind[@]}" --secure-port="$API_PORT" \
    --kubelet-client-certificate="$pki/apiserver-kubelet-client.crt" \
    --kubelet-client-key="$pki/apiserver-kubelet-client.key" \
    --kubelet-preferred-address-types=InternalIP \
    --tls-cert-file="$pki/apiserver.crt" --tls-private-key-file="$pki/apiserver.key" \
    --client-ca-file="$pki/ca.crt" \
    --requestheader-client-ca-file="$pki/front-proxy-ca.crt" \
    --requestheader-allowed-names=front-proxy-client \
    --requestheader-username-headers=X-Remote-User \
    --requestheader-group-headers=X-Remote-Group \
    --requestheader-extra-headers-prefix=X-Remote-Extra- \
    --proxy-client-cert-file="$pki/front-proxy-client.crt" \
    --proxy-client-key-file="$pki/front-proxy-client.key" \
    --service-account-issuer=https://kubernetes.default.svc.cluster.local \
    --service-account-key-file="$pki/sa.pub" \
    --service-account-signing-key-file="$pki/sa.key" \
    --service-cluster-ip-range=10.96.0.0/16 \
    --authorization-mode=Node,RBAC \
    --enable-admission-plugins=NodeRestriction,PodNodeSelector,PodTolerationRestriction \
    --allow-privileged=true \
    --profiling=false \
    --v=1
  wait_for kube-apiserver/readyz api_ready

  launch kube-controller-manager \
    --kubeconfig="$dir/kube-controller-manager.kubeconfig" \
    --authentication-kubeconfig="$dir/kube-controller-manager.kubeconfig" \
    --authorization-kubeconfig="$dir/kube-controller-manager.kubeconfig" \
    --bind-address=127.0.0.1 --secure-port="$KCM_PORT" --cert-dir="$dir/kcm-certs" \
    --controllers='*' \
    --use-service-account-credentials=true \
    --service-account-private-key-file="$pki/sa.key" \
    --root-ca-file="$pki/ca.crt" \
    --cluster-signing-cert-file="$pki/ca.crt" --cluster-signing-key-file="$pki/ca.key" \
    --enable-hostpath-provisioner=true \
    --flex-volume-plugin-dir="$dir/flexvolume" \
    --leader-elect=false \
    --profiling=false \
    --v=1
  launch kube-scheduler \
    --kubeconfig="$dir/kube-scheduler.kubeconfig" \
    --authentication-kubeconfig="$dir/kube-scheduler.kubeconfig" \
    --authorization-kubeconfig="$dir/kube-scheduler.kubeconfig" \
    --bind-address=127.0.0.1 --secure-port="$SCHED_PORT" --cert-dir="$dir/scheduler-certs" \
    --leader-elect=false \
    --profiling=false \
    --v=1
  # kwok plays the kubelet of every node annotated kwok.x-k8s.io/node=fake:
  # heartbeats and leases, pods Running/Ready right after they are bound,
  # and it finishes their deletion. Node and pod IPs are loopback addresses
  # (K8S_POD_CIDR), so a test that connects to a pod IP stays on this machine.
  cat >"$dir/kwok.yaml" <<YAML
apiVersion: config.kwok.x-k8s.io/v1alpha1
kind: KwokConfiguration
options:
  cidr: ${K8S_POD_CIDR:-127.1.0.1/16}
  nodeIP: 127.0.0.1
  nodePort: $KWOK_PORT
  manageAllNodes: false
  manageNodesWithAnnotationSelector: kwok.x-k8s.io/node=fake
  nodeLeaseDurationSeconds: 40
YAML
  launch kwok --config="$dir/kwok.yaml" \
    --kubeconfig="$dir/kwok.kubeconfig" \
    --server-address="127.0.0.1:$KWOK_PORT"

  kc apply -f - >/dev/null <<YAML || fail_start "could not create the fake node"
apiVersion: v1
kind: Node
metadata:
  name: $NODE_NAME
  annotations:
    kwok.x-k8s.io/node: fake
    node.alpha.kubernetes.io/ttl: "0"
  labels:
    kubernetes.io/arch: amd64
    kubernetes.io/os: linux
    kubernetes.io/hostname: $NODE_NAME
    type: kwok
status:
  allocatable: {cpu: "32", memory: 256Gi, pods: "110", ephemeral-storage: 1Ti}
  capacity: {cpu: "32", memory: 256Gi, pods: "110", ephemeral-storage: 1Ti}
  nodeInfo:
    architecture: amd64
    operatingSystem: linux
    kubeletVersion: fake
    kubeProxyVersion: fake
---
# Default StorageClass: kube-controller-manager's hostPath provisioner (test
# only) binds PVCs at once; PVs are empty dirs under /tmp/hostpath_pv that are
# removed with the PV (and by stop). Named like kind's default class.
apiVersion: storage.k8s.io/v1
kind: StorageClass
metadata:
  name: standard
  annotations:
    storageclass.kubernetes.io/is-default-class: "true"
provisioner: kubernetes.io/host-path
reclaimPolicy: Delete
volumeBindingMode: Immediate
YAML

  wait_for kube-controller-manager/healthz healthz_ok "$KCM_PORT"
  wait_for kube-scheduler/healthz healthz_ok "$SCHED_PORT"
  wait_for "node $NODE_NAME Ready" node_ready
  wait_for "the default ServiceAccount" default_sa

  # Probe: a Deployment's pod is scheduled onto the fake node and Running.
  kc -n default create deployment tickflow-probe --image=registry.k8s.io/pause:3.10 >/dev/null \
    || fail_start "could not create the probe Deployment"
  wait_for "the probe pod Running" probe_running
  kc -n default delete deployment tickflow-probe --cascade=foreground --wait=true --timeout=60s >/dev/null \
    || fail_start "could not delete the probe Deployment"
  wait_for "the probe pod deleted" probe_gone
  log "control plane $K8S_VERSION ready in $((SECONDS - t0))s (run dir $dir)"
  if [ "${K8S_REAL_NODE:-0}" = 1 ]; then
    node_start
  fi
}

# The hostPath provisioner's PV dirs of this cluster (it deletes a dir with
# its PV; those whose PV still exists would outlive the cluster).
remove_hostpath_dirs() {
  api_ready || return 0
  local p
  for p in $(kc get pv -o jsonpath='{range .items[*]}{.spec.hostPath.path}{"\n"}{end}' 2>/dev/null); do
    case "$p" in
      /tmp/hostpath_pv/*) rm -rf -- "$p" ;;
    esac
  done
  rmdir /tmp/hostpath_pv 2>/dev/null || true
}

# stop_components NAME... : SIGTERM to all of them at once, SIGKILL to those
# still alive after 20 s; returns when all are gone.
stop_components() {
  local name pid pids=()
  for name in "$@"; do
    if pid="$(running_pid "$name")"; then
      kill -TERM "$pid" 2>/dev/null || true
      pids+=("$pid")
    fi
  done
  local deadline=$((SECONDS + 20))
  for pid in "${pids[@]}"; do
    while kill -0 "$pid" 2>/dev/null; do
      if [ "$SECONDS" -ge "$deadline" ]; then
        kill -KILL "$pid" 2>/dev/null || true
      fi
      sleep 0.1
    done
  done
  for name in "$@"; do rm -f "$(pid_file "$name")"; done
}

remove_rundir() {
  local dir
  dir="$(rundir)"
  case "$dir" in
    "${TMPDIR:-/tmp}"/tickflow-k8s-run.*) rm -rf "$dir" ;;
  esac
  rm -f "$RUNDIR_FILE"
}

stop() {
  node_stop
  [ -n "$(rundir)" ] && running_pid kube-apiserver >/dev/null && remove_hostpath_dirs
  # etcd last, so that the apiserver shuts down cleanly.
  stop_components kwok kube-scheduler kube-controller-manager kube-apiserver
  stop_components etcd
  remove_rundir
  rmdir "$STATE_DIR" 2>/dev/null || true
}

status() {
  local c pid rc=0
  for c in "${COMPONENTS[@]}"; do
    if pid="$(running_pid "$c")"; then
      echo "$c running pid=$pid"
    else
      echo "$c stopped"
      rc=1
    fi
  done
  if [ "$rc" = 0 ]; then
    echo "version=$K8S_VERSION rundir=$(rundir) apiserver=https://127.0.0.1:$API_PORT kubeconfig=$(rundir)/admin.kubeconfig"
  fi
  return "$rc"
}

require_running() {
  all_running || die "the control plane is not running (tests/k8s/controlplane.sh start)"
}

print_env() {
  require_running
  local dir
  dir="$(rundir)"
  printf 'export KUBECONFIG=%q\n' "$dir/admin.kubeconfig"
  printf 'export KUBECTL=%q\n' "$(kubectl_bin)"
  printf 'export KUBECACHEDIR=%q\n' "$dir/kube-cache"
  printf 'export HELM=%q\n' "$BIN/helm"
  # helm keeps its config, cache and repositories in the run dir.
  printf 'export HELM_CONFIG_HOME=%q\n' "$dir/helm/config"
  printf 'export HELM_CACHE_HOME=%q\n' "$dir/helm/cache"
  printf 'export HELM_DATA_HOME=%q\n' "$dir/helm/data"
  printf 'export TICKFLOW_K8S_BIN=%q\n' "$BIN"
  printf 'export TICKFLOW_K8S_RUNDIR=%q\n' "$dir"
  printf 'export TICKFLOW_K8S_API=%q\n' "https://127.0.0.1:$API_PORT"
  printf 'export TICKFLOW_K8S_NODE=%q\n' "$NODE_NAME"
  if node_pid kubelet >/dev/null; then
    printf 'export TICKFLOW_K8S_REAL_NODE=%q\n' "$REAL_NODE_NAME"
    printf 'export TICKFLOW_K8S_REAL_NODE_IP=%q\n' "$REAL_NODE_IP"
  fi
}

# sa-kubeconfig NAMESPACE SA [FILE] [DURATION]
sa_kubeconfig() {
  [ $# -ge 2 ] || die "sa-kubeconfig: NAMESPACE SERVICEACCOUNT [FILE] [DURATION]"
  require_running
  local ns="$1" sa="$2" dir
  dir="$(rundir)"
  local file="${3:-$dir/sa-$ns-$sa.kubeconfig}" duration="${4:-1h}" token
  token="$(kc -n "$ns" create token "$sa" --duration="$duration")" \
    || die "sa-kubeconfig: no token for serviceaccount $ns/$sa"
  (umask 077 && cat >"$file" <<YAML
apiVersion: v1
kind: Config
clusters:
- name: tickflow-test
  cluster:
    server: https://127.0.0.1:$API_PORT
    certificate-authority-data: $(b64 "$dir/pki/ca.crt")
users:
- name: $ns-$sa
  user:
    token: $token
contexts:
- name: tickflow-test
  context:
    cluster: tickflow-test
    user: $ns-$sa
    namespace: $ns
current-context: tickflow-test
YAML
  )
  echo "$file"
}

show_logs() {
  local dir c
  dir="$(rundir)"
  [ -n "$dir" ] || die "no run dir"
  if [ -n "${1:-}" ]; then
    tail -n "${2:-60}" "$dir/logs/$1.log"
  else
    for c in "${COMPONENTS[@]}"; do
      echo "---- $c"
      tail -n "${2:-60}" "$dir/logs/$c.log" 2>/dev/null || true
    done
  fi
}

# One install/start/stop at a time per control plane.
lock() {
  mkdir -p "$(dirname "$STATE_DIR")"
  exec 9>"$STATE_DIR.lock"
  flock 9
}

cmd="${1:-}"
[ $# -gt 0 ] && shift
case "$cmd" in
  install | start | stop) lock ;;
esac
case "$cmd" in
  install) install ;;
  start) start ;;
  stop) stop ;;
  status) status ;;
  env) print_env ;;
  kubeconfig) require_running; echo "$(rundir)/admin.kubeconfig" ;;
  sa-kubeconfig) sa_kubeconfig "$@" ;;
  logs) show_logs "$@" ;;
  real-node-namespace) require_running; real_node_namespace "${1:?namespace}" ;;
  real-node-check-clean) node_check_clean ;;
  load-image) require_running; node_load_images "$@" ;;
  *)
    sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//' >&2
    exit 2
    ;;
esac
