# shellcheck shell=bash
# A real node for the test control plane: kubelet and kube-proxy (built from
# the same k8s.io/kubernetes module), containerd, runc and the CNI plugins
# (Debian's packages), a bridge network for pods, and the pod sandbox image
# built here. Sourced by controlplane.sh, whose helpers it uses (launch,
# wait_for, sign_cert, kc, ...); `K8S_REAL_NODE=1 controlplane.sh start`
# starts it after the control plane and `controlplane.sh stop` removes it.
#
# The node is tainted (tickflow.io/real-node=true:NoSchedule) so that pods
# keep landing on KWOK's fake node unless their namespace says otherwise:
# the PodNodeSelector and PodTolerationRestriction admission plugins read
# the namespace annotations that `controlplane.sh real-node-namespace NS`
# sets, and every pod of such a namespace goes to this node.
#
# Network: the bridge $REAL_BRIDGE with $REAL_NODE_IP/24 is the node's
# address and the pods' gateway; pods get 10.244.0.0/24 from host-local IPAM
# and are masqueraded to the outside. The API server binds all addresses and
# advertises $REAL_NODE_IP, so the in-cluster `kubernetes` Service (through
# kube-proxy's iptables rules) reaches it from pods.
#
# Storage: the local-path provisioner (kind's default) serves the
# StorageClass local-path for the real node (see node_local_path).
#
# Everything lives in the run dir (containerd's root and state, the
# kubelet's root, CNI config) and is removed by stop: processes, mounts,
# network namespaces, the bridge and its veths, kube-proxy's iptables
# chains and the pods' cgroups. `controlplane.sh real-node-check-clean`
# fails if any of them is left.

REAL_NODE_NAME="tickflow-node-0"
REAL_BRIDGE="${K8S_REAL_BRIDGE:-tkbr0}"
REAL_NODE_IP="${K8S_REAL_NODE_IP:-10.244.0.1}"
REAL_POD_SUBNET="${K8S_REAL_POD_SUBNET:-10.244.0.0/24}"
REAL_KUBELET_PORT="${K8S_KUBELET_PORT:-20250}"
REAL_KUBELET_HEALTHZ_PORT="${K8S_KUBELET_HEALTHZ_PORT:-20248}"
REAL_PROXY_METRICS_PORT="${K8S_PROXY_METRICS_PORT:-20249}"
REAL_PROXY_HEALTHZ_PORT="${K8S_PROXY_HEALTHZ_PORT:-20256}"
REAL_TAINT_KEY="tickflow.io/real-node"
PAUSE_IMAGE="registry.k8s.io/pause:3.10"
REAL_NODE_PACKAGES=(containerd runc containernetworking-plugins iptables conntrack busybox-static)
# The local-path provisioner's helper pods (mkdir/rm of a PV's directory)
# run busybox, as its own manifests do.
LOCAL_PATH_HELPER_IMAGE="tickflow.test/local-path-helper:busybox"
LOCAL_PATH_NAMESPACE="local-path-storage"
LOCAL_PATH_CLASS="local-path"
CNI_BIN_DIR=/usr/lib/cni

node_dir() { echo "$(rundir)/node"; }
node_sock() { echo "$(node_dir)/containerd/containerd.sock"; }
ctr_() { ctr --address "$(node_sock)" --namespace k8s.io "$@"; }

# ---------------------------------------------------------------- install

node_install() {
  local missing=() p
  for p in "${REAL_NODE_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  if [ "${#missing[@]}" -gt 0 ]; then
    log "installing ${missing[*]} (Debian)"
    local sudo=()
    [ "$(id -u)" = 0 ] || sudo=(sudo)
    DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null ||
      { "${sudo[@]}" apt-get update -q >/dev/null &&
        DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null; } ||
      die "could not install ${missing[*]}"
  fi
  # The sandbox image's one binary, from the Kubernetes module's source.
  if [ ! -x "$BIN/pause" ]; then
    go_env
    local src
    src="$(cd "$HERE/build" && go list -m -f '{{.Dir}}' k8s.io/kubernetes)/build/pause/linux/pause.c"
    [ -f "$src" ] || (cd "$HERE/build" && go mod download k8s.io/kubernetes)
    gcc -Os -static -Wall -Werror -DVERSION="\"$K8S_VERSION\"" -o "$BIN/pause.tmp" "$src" ||
      die "compiling $src failed"
    strip "$BIN/pause.tmp"
    mv "$BIN/pause.tmp" "$BIN/pause"
  fi
  [ -s "$BIN/pause.tar" ] || python3 "$HERE/image.py" pause "$BIN/pause" "$PAUSE_IMAGE" "$BIN/pause.tar" >/dev/null
  [ -s "$BIN/local-path-helper.tar" ] ||
    python3 "$HERE/image.py" busybox /bin/busybox "$LOCAL_PATH_HELPER_IMAGE" "$BIN/local-path-helper.tar" >/dev/null
}

# ---------------------------------------------------------------- start

node_pid() {
  local f="$STATE_DIR/node-$1.pid" pid
  [ -f "$f" ] || return 1
  pid="$(cat "$f")"
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 1
  tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF "$(node_dir)" || return 1
  echo "$pid"
}

# node_launch NAME BINARY ARGS...: pid file node-NAME.pid, log node-NAME.log.
node_launch() { launch_bin "node-$1" "${@:2}"; }

node_ready() {
  [ "$(kc get node "$REAL_NODE_NAME" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}')" = True ]
}

node_bridge() {
  ip link show "$REAL_BRIDGE" >/dev/null 2>&1 && die "bridge $REAL_BRIDGE exists already (a node that was not stopped?)"
  ip link add "$REAL_BRIDGE" type bridge
  ip addr add "$REAL_NODE_IP/24" dev "$REAL_BRIDGE"
  ip link set "$REAL_BRIDGE" up
  sysctl -qw net.ipv4.ip_forward=1
}

node_containerd() {
  local d
  d="$(node_dir)"
  mkdir -p "$d/containerd" "$d/cni/net.d"
  cat >"$d/cni/net.d/10-tickflow.conflist" <<JSON
{
  "cniVersion": "1.0.0",
  "name": "tickflow",
  "plugins": [
    {"type": "bridge", "bridge": "$REAL_BRIDGE", "isGateway": true, "ipMasq": true,
     "hairpinMode": true,
     "ipam": {"type": "host-local", "subnet": "$REAL_POD_SUBNET", "gateway": "$REAL_NODE_IP",
              "dataDir": "$d/cni/ipam", "routes": [{"dst": "0.0.0.0/0"}]}},
    {"type": "portmap", "capabilities": {"portMappings": true}},
    {"type": "loopback"}
  ]
}
JSON
  # restrict_oom_score_adj: root here lacks CAP_SYS_RESOURCE, so runc could
  # not lower a container's oom_score_adj below ours.
  cat >"$d/containerd/config.toml" <<TOML
version = 2
root = "$d/containerd/root"
state = "$d/containerd/state"
[grpc]
  address = "$(node_sock)"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$PAUSE_IMAGE"
  restrict_oom_score_adj = true
  disable_apparmor = true
  netns_mounts_under_state_dir = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
  [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
    runtime_type = "io.containerd.runc.v2"
  [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
    SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "$CNI_BIN_DIR"
    conf_dir = "$d/cni/net.d"
TOML
  node_launch containerd /usr/bin/containerd --config "$d/containerd/config.toml"
  wait_for containerd ctr_ version
  local image
  for image in pause local-path-helper; do
    ctr_ images import "$BIN/$image.tar" >/dev/null || fail_start "importing the $image image failed"
  done
}

node_certs() {
  local pki
  pki="$(rundir)/pki"
  local client=("basicConstraints=critical,CA:FALSE" "keyUsage=critical,digitalSignature,keyEncipherment" "extendedKeyUsage=clientAuth")
  # The Node authorizer knows a kubelet by this name and group.
  sign_cert "$pki" kubelet "/O=system:nodes/CN=system:node:$REAL_NODE_NAME" "${client[@]}"
  # Bound to system:node-proxier by the default RBAC policy.
  sign_cert "$pki" kube-proxy "/CN=system:kube-proxy" "${client[@]}"
  write_kubeconfig "$(rundir)/kubelet.kubeconfig" kubelet
  write_kubeconfig "$(rundir)/kube-proxy.kubeconfig" kube-proxy
  sed -i "s|https://127.0.0.1:$API_PORT|https://$REAL_NODE_IP:$API_PORT|" \
    "$(rundir)/kubelet.kubeconfig" "$(rundir)/kube-proxy.kubeconfig"
}

node_kubelet() {
  local d pki
  d="$(node_dir)"
  pki="$(rundir)/pki"
  mkdir -p "$d/kubelet"
  printf 'nameserver %s\n' "$REAL_NODE_IP" >"$d/resolv.conf"
  # Test-only choices: nothing is evicted or garbage-collected (the images
  # were imported, there is no registry to pull them again), cgroup v1 is
  # accepted (this machine has no v2), swap is not checked.
  cat >"$d/kubelet.yaml" <<YAML
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: $REAL_NODE_IP
port: $REAL_KUBELET_PORT
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: $REAL_KUBELET_HEALTHZ_PORT
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: $pki/ca.crt}
authorization: {mode: Webhook}
cgroupDriver: cgroupfs
failCgroupV1: false
failSwapOn: false
containerRuntimeEndpoint: unix://$(node_sock)
clusterDomain: cluster.local
resolvConf: $d/resolv.conf
registerWithTaints:
  - {key: $REAL_TAINT_KEY, value: "true", effect: NoSchedule}
evictionHard: {memory.available: "0%", nodefs.available: "0%", imagefs.available: "0%", nodefs.inodesFree: "0%"}
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
serializeImagePulls: false
maxPods: 30
YAML
  node_launch kubelet "$BIN/kubelet" \
    --config="$d/kubelet.yaml" \
    --kubeconfig="$(rundir)/kubelet.kubeconfig" \
    --root-dir="$d/kubelet" \
    --cert-dir="$d/kubelet/pki" \
    --hostname-override="$REAL_NODE_NAME" \
    --node-ip="$REAL_NODE_IP" \
    --node-labels="tickflow.io/node=real" \
    --v=1
}

node_kube_proxy() {
  local d
  d="$(node_dir)"
  # masqueradeAll: a pod reaching a Service backed by another pod on the
  # same bridge gets its reply through the host. The conntrack settings
  # stay as the machine has them (kube-proxy would otherwise write sysctls).
  cat >"$d/kube-proxy.yaml" <<YAML
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
mode: iptables
clusterCIDR: 10.244.0.0/16
hostnameOverride: $REAL_NODE_NAME
bindAddress: $REAL_NODE_IP
healthzBindAddress: 127.0.0.1:$REAL_PROXY_HEALTHZ_PORT
metricsBindAddress: 127.0.0.1:$REAL_PROXY_METRICS_PORT
clientConnection: {kubeconfig: $(rundir)/kube-proxy.kubeconfig}
iptables: {masqueradeAll: true}
conntrack: {maxPerCore: 0, min: 0, tcpEstablishedTimeout: 0s, tcpCloseWaitTimeout: 0s}
YAML
  node_launch kube-proxy "$BIN/kube-proxy" --config="$d/kube-proxy.yaml" --v=1
}

# Dynamic PVs on the real node: the local-path provisioner, as kind runs it
# (its ConfigMap, helper pods in its namespace, a StorageClass binding when
# the pod is scheduled), but as a process of this host like the control
# plane, with the admin kubeconfig. A PV is a directory under the run dir,
# made world-writable by the helper pod's setup script so that a non-root
# worker can write it; the helper's teardown removes it with its PVC.
# The class is not the default: KWOK's fake pods could never run a helper.
node_local_path() {
  local d
  d="$(node_dir)/local-path"
  mkdir -p "$d"
  kc apply -f - >/dev/null <<YAML || fail_start "could not create the local-path provisioner's objects"
apiVersion: v1
kind: Namespace
metadata: {name: $LOCAL_PATH_NAMESPACE}
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: local-path-provisioner-service-account, namespace: $LOCAL_PATH_NAMESPACE}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: local-path-config, namespace: $LOCAL_PATH_NAMESPACE}
data:
  config.json: |-
    {"nodePathMap": [{"node": "DEFAULT_PATH_FOR_NON_LISTED_NODES", "paths": ["$d"]}]}
  setup: |-
    #!/bin/sh
    set -eu
    mkdir -m 0777 -p "\$VOL_DIR"
  teardown: |-
    #!/bin/sh
    set -eu
    rm -rf "\$VOL_DIR"
  helperPod.yaml: |-
    apiVersion: v1
    kind: Pod
    metadata: {name: helper-pod}
    spec:
      containers:
      - {name: helper-pod, image: "$LOCAL_PATH_HELPER_IMAGE", imagePullPolicy: Never}
---
apiVersion: storage.k8s.io/v1
kind: StorageClass
metadata: {name: $LOCAL_PATH_CLASS}
provisioner: rancher.io/local-path
reclaimPolicy: Delete
volumeBindingMode: WaitForFirstConsumer
YAML
  # Its own copy of the kubeconfig: node_pid knows the node's processes by
  # a path under the node dir on their command line.
  cp "$(rundir)/admin.kubeconfig" "$(node_dir)/local-path-provisioner.kubeconfig"
  node_launch local-path-provisioner "$BIN/local-path-provisioner" start \
    --namespace "$LOCAL_PATH_NAMESPACE" --kubeconfig "$(node_dir)/local-path-provisioner.kubeconfig" \
    --helper-image "$LOCAL_PATH_HELPER_IMAGE" --provisioner-name rancher.io/local-path
}

node_probe_running() {
  [ "$(kc -n tickflow-node-probe get pods -l app=probe -o jsonpath='{.items[*].status.phase}')" = Running ]
}

node_start() {
  node_install
  log "starting the real node $REAL_NODE_NAME ($REAL_NODE_IP on $REAL_BRIDGE)"
  local t0=$SECONDS
  mkdir -p "$(node_dir)"
  node_bridge
  node_containerd
  node_certs
  node_kubelet
  node_kube_proxy
  wait_for "node $REAL_NODE_NAME Ready" node_ready
  # Probe: a pod of a real-node namespace runs there from the local image.
  real_node_namespace tickflow-node-probe >/dev/null
  kc -n tickflow-node-probe apply -f - >/dev/null <<YAML || fail_start "could not create the node probe Deployment"
apiVersion: apps/v1
kind: Deployment
metadata: {name: probe}
spec:
  selector: {matchLabels: {app: probe}}
  template:
    metadata: {labels: {app: probe}}
    spec:
      containers: [{name: pause, image: "$PAUSE_IMAGE", imagePullPolicy: Never}]
YAML
  wait_for "the node probe pod Running" node_probe_running
  node_local_path
  kc delete namespace tickflow-node-probe --wait=true --timeout=60s >/dev/null ||
    fail_start "could not delete the node probe namespace"
  log "real node ready in $((SECONDS - t0))s"
}

# node_load_images ARCHIVE...: docker-archives into the node's image store.
node_load_images() {
  node_pid containerd >/dev/null || die "the real node is not running (K8S_REAL_NODE=1 controlplane.sh start)"
  local a
  for a in "$@"; do
    ctr_ images import --no-unpack=false "$a" >/dev/null || die "importing $a failed"
  done
}

# real_node_namespace NS: creates NS (if needed) so that its pods go to the
# real node and tolerate its taint.
real_node_namespace() {
  local ns="$1"
  kc apply -f - <<YAML
apiVersion: v1
kind: Namespace
metadata:
  name: $ns
  annotations:
    scheduler.alpha.kubernetes.io/node-selector: kubernetes.io/hostname=$REAL_NODE_NAME
    scheduler.alpha.kubernetes.io/defaultTolerations: '[{"key": "$REAL_TAINT_KEY", "operator": "Exists", "effect": "NoSchedule"}]'
YAML
}

# ---------------------------------------------------------------- stop

node_kill() {
  local pid
  if pid="$(node_pid "$1")"; then
    kill -TERM "$pid" 2>/dev/null || true
    local deadline=$((SECONDS + 15))
    while kill -0 "$pid" 2>/dev/null; do
      [ "$SECONDS" -lt "$deadline" ] || kill -KILL "$pid" 2>/dev/null || true
      sleep 0.1
    done
  fi
  rm -f "$STATE_DIR/node-$1.pid"
}

# Mounts under the run dir, deepest first.
node_mounts() {
  local d="$1"
  awk -v d="$d" '$5 == d || index($5, d "/") == 1 { print $5 }' /proc/self/mountinfo | sort -r
}

# The pods' cgroups (the kubelet's cgroupfs driver puts them all under kubepods).
node_cgroups() {
  find /sys/fs/cgroup -mindepth 2 -maxdepth 2 -type d -name 'kubepods*' 2>/dev/null || true
}

node_stop() {
  local d
  d="$(node_dir)"
  [ -n "$(rundir)" ] && [ -d "$d" ] || return 0
  node_kill local-path-provisioner
  node_kill kubelet
  node_kill kube-proxy
  # Every container's processes: the shims are children of nobody we stop.
  if node_pid containerd >/dev/null; then
    local task
    for task in $(ctr_ tasks ls -q 2>/dev/null); do
      ctr_ tasks kill -s SIGKILL "$task" >/dev/null 2>&1 || true
    done
    sleep 0.5
  fi
  node_kill containerd
  pkill -KILL -f "containerd-shim-runc-v2 .*-address $(node_sock)" 2>/dev/null || true
  local cg
  for cg in $(node_cgroups); do
    # Leftover processes (none normally), then the tree depth-first.
    find "$cg" -name cgroup.procs -exec cat {} + 2>/dev/null | xargs -r kill -KILL 2>/dev/null || true
    find "$cg" -depth -type d -exec rmdir {} + 2>/dev/null || true
  done
  local m
  for m in $(node_mounts "$d"); do umount -l "$m" 2>/dev/null || true; done
  "$BIN/kube-proxy" --cleanup >/dev/null 2>&1 || true
  ip link del "$REAL_BRIDGE" 2>/dev/null || true
  node_iptables_cleanup
}

# The chains of kube-proxy, the kubelet (its canaries) and the CNI bridge
# plugin, in every table: the jumps to them first, then the chains.
node_iptables_cleanup() {
  local table chain rule
  for table in filter nat mangle; do
    { iptables -t "$table" -S 2>/dev/null | grep -E '^-A [A-Z]+ .*-j (KUBE-|CNI-)' || true; } | sed 's/^-A/-D/' |
      while read -r rule; do
        eval "iptables -t $table $rule" 2>/dev/null || true
      done
    for chain in $(iptables -t "$table" -S 2>/dev/null | awk '/^-N (KUBE-|CNI-)/ {print $2}'); do
      iptables -t "$table" -F "$chain" 2>/dev/null || true
    done
    for chain in $(iptables -t "$table" -S 2>/dev/null | awk '/^-N (KUBE-|CNI-)/ {print $2}'); do
      iptables -t "$table" -X "$chain" 2>/dev/null || true
    done
  done
}

# Exit 1 with what is left of a node (after stop), for the suite's last check.
node_check_clean() {
  local left=()
  pgrep -f "$BIN/kubelet|$BIN/kube-proxy|$BIN/local-path-provisioner|containerd-shim-runc-v2|/usr/bin/containerd --config" >/dev/null &&
    left+=("processes: $(pgrep -af "$BIN/kubelet|$BIN/kube-proxy|$BIN/local-path-provisioner|containerd-shim-runc-v2|/usr/bin/containerd --config" | head -5 | tr '\n' ';')")
  local mounts
  mounts="$(awk '$5 ~ /tickflow-k8s-run\./ { print $5 }' /proc/self/mountinfo | head -5)"
  [ -z "$mounts" ] || left+=("mounts: $(echo "$mounts" | head -5 | tr '\n' ' ')")
  ip link show "$REAL_BRIDGE" >/dev/null 2>&1 && left+=("bridge $REAL_BRIDGE")
  [ -z "$(node_cgroups)" ] || left+=("cgroups: $(node_cgroups | head -3 | tr '\n' ' ')")
  local table chains
  for table in filter nat mangle; do
    chains="$(iptables -t "$table" -S 2>/dev/null | { grep -oE '^-N (KUBE-|CNI-)\S*' || true; } | head -5 | tr '\n' ' ')"
    [ -z "$chains" ] || left+=("iptables $table chains: $chains")
  done
  if [ "${#left[@]}" -gt 0 ]; then
    printf 'left behind by the real node: %s\n' "${left[@]}" >&2
    return 1
  fi
  echo "no process, mount, bridge, cgroup or iptables chain of the real node is left"
}
