#!/usr/bin/env bash
# A real node for the local control plane (e2e/cluster/cluster.sh starts it when
# CLAWDBOT_REAL_NODE=1): containerd with runc, a kubelet and kube-proxy built from source
# like the rest of the plane, CNI bridge networking from containernetworking-plugins. Its
# pods are real containers of the images `make images` builds; the kwok nodes stay beside it
# (GPU nodes, scale). Needs root (containers, network namespaces, iptables).
#
#   e2e/cluster/node.sh up       start it and register node `clawdbot-node-0` (Ready)
#   e2e/cluster/node.sh load     import the images in $CLAWDBOT_IMAGE_EXPORT_DIR into it
#   e2e/cluster/node.sh down     stop it, remove its pods' containers and network
#   e2e/cluster/node.sh check    say whether this machine can run it (exit 1 when not)
#
# The node is tainted `clawdbot.io/real-node=true:NoSchedule` and labelled
# `clawdbot.io/real-node=true`: only pods that ask for it land there.
#
# Networking, all of it on this machine: the bridge `clawdbot0` (10.244.0.1/24) holds the
# pods (10.244.0.0/24, host-local IPAM); pods get routes to each other and to Services
# (10.96.0.0/16) only, and the FORWARD chain drops anything from them to any other address,
# so nothing from a pod leaves the machine. Pods reach the API server through the
# `kubernetes` Service, whose endpoint is a forwarder on the bridge's address to the API
# server on 127.0.0.1. There is no cluster DNS: pods resolve nothing but /etc/hosts.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "$HERE/../.." && pwd)"
K8S_VERSION="${K8S_VERSION:-v1.36.3}"
BIN_DIR="${CLAWDBOT_BIN_DIR:-$REPO_ROOT/.cache/bin/$K8S_VERSION}"
STATE_DIR="${CLAWDBOT_CLUSTER_DIR:-$REPO_ROOT/.run/cluster}"
PKI="$STATE_DIR/pki"
NODE_DIR="$STATE_DIR/node"
LOGS="$STATE_DIR/logs"
PIDS="$STATE_DIR/pids"
IMAGE_EXPORT_DIR="${CLAWDBOT_IMAGE_EXPORT_DIR:-$REPO_ROOT/.cache/containers/export}"
# Unix socket paths are limited to 107 bytes: containerd's live under /run.
RUN_DIR="/run/clawdbot-node-$(printf '%s' "$STATE_DIR" | sha256sum | cut -c1-12)"
SOCK="$RUN_DIR/containerd.sock"
NODE_NAME=clawdbot-node-0
BRIDGE=clawdbot0
NODE_IP=10.244.0.1
POD_CIDR=10.244.0.0/24
SERVICE_CIDR=10.96.0.0/16
APISERVER_FORWARD_PORT=6443
PAUSE_IMAGE=localhost/clawdbot/pause:1
READY_TIMEOUT="${CLAWDBOT_CLUSTER_READY_TIMEOUT:-90}"
CNI_BIN_DIR="${CLAWDBOT_CNI_BIN_DIR:-/usr/lib/cni}"
NODE_COMPONENTS=(containerd apiserver-forward kubelet kube-proxy)
# The bridge, the pod range and the forwarder's port are fixed: one real node per machine.
# This file names the state directory of the node that holds them.
OWNER_FILE=/run/clawdbot-node.owner

log() { printf '[node] %s\n' "$*" >&2; }
die() { printf '[node] error: %s\n' "$*" >&2; exit 1; }

# executable NAME -> the binary each component runs.
executable() {
  case "$1" in
    containerd) command -v containerd ;;
    apiserver-forward) command -v socat ;;
    *) echo "$BIN_DIR/$1" ;;
  esac
}

pid_of() {
  local f="$PIDS/node-$1.pid" pid exe want
  [[ -f "$f" ]] || return 1
  pid="$(cat "$f")"
  [[ "$pid" =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null || return 1
  exe="$(readlink "/proc/$pid/exe" 2>/dev/null || true)"
  want="$(readlink -f "$(executable "$1")")"
  [[ "$exe" == "$want" || "$exe" == "$want (deleted)" ]] || return 1
  printf '%s\n' "$pid"
}

start() {
  local name="$1"; shift
  : >"$LOGS/node-$name.log"
  setsid "$(executable "$name")" "$@" >>"$LOGS/node-$name.log" 2>&1 </dev/null &
  printf '%s\n' "$!" >"$PIDS/node-$name.pid"
  log "started $name (pid $!, log ${LOGS#"$REPO_ROOT"/}/node-$name.log)"
}

stop() {
  local name="$1" pid i
  if pid="$(pid_of "$name")"; then
    kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
    for i in $(seq 1 100); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    kill -0 "$pid" 2>/dev/null && kill -KILL -- "-$pid" 2>/dev/null || true
    log "stopped $name (pid $pid)"
  fi
  rm -f "$PIDS/node-$name.pid"
}

ctr_cmd() { ctr --address "$SOCK" --namespace k8s.io "$@"; }

cmd_check() {
  local missing=() tool
  [[ $(id -u) -eq 0 ]] || { echo "the real node needs root"; return 1; }
  for tool in containerd containerd-shim-runc-v2 runc ctr socat iptables buildah; do
    command -v "$tool" >/dev/null || missing+=("$tool")
  done
  [[ -x "$CNI_BIN_DIR/bridge" && -x "$CNI_BIN_DIR/host-local" && -x "$CNI_BIN_DIR/loopback" ]] ||
    missing+=("containernetworking-plugins ($CNI_BIN_DIR)")
  for tool in kubelet kube-proxy pause; do [[ -x "$BIN_DIR/$tool" ]] || missing+=("$BIN_DIR/$tool"); done
  if ((${#missing[@]})); then
    echo "missing: ${missing[*]} (apt-get install containerd runc containernetworking-plugins socat iptables buildah; make cluster-build)"
    return 1
  fi
}

# cert NAME CN [O] [SAN]: a certificate signed by the plane's CA (cluster.sh made it).
# shellcheck source=e2e/cluster/pki.sh
source "$(dirname "${BASH_SOURCE[0]}")/pki.sh"

node_kubeconfig() {
  local file="$1" user="$2"
  cat >"$file" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: clawdbot-e2e
  cluster:
    server: https://127.0.0.1:$APISERVER_PORT
    certificate-authority: $PKI/ca.crt
users:
- name: $user
  user:
    client-certificate: $PKI/$user.crt
    client-key: $PKI/$user.key
contexts:
- name: clawdbot-e2e
  context: {cluster: clawdbot-e2e, user: $user}
current-context: clawdbot-e2e
EOF
}

# claim_network: refuse when another state's node (its containerd alive) holds the network.
claim_network() {
  local other pidfile
  if [[ -f "$OWNER_FILE" ]]; then
    other="$(cat "$OWNER_FILE")"
    pidfile="$other/pids/node-containerd.pid"
    if [[ "$other" != "$STATE_DIR" && -f "$pidfile" ]] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then
      die "another real node runs on this machine (state $other); stop it first: CLAWDBOT_CLUSTER_DIR=$other e2e/cluster/cluster.sh down"
    fi
  fi
  printf '%s\n' "$STATE_DIR" >"$OWNER_FILE"
}

setup_network() {
  if ! ip link show "$BRIDGE" >/dev/null 2>&1; then
    ip link add "$BRIDGE" type bridge
  fi
  ip addr replace "$NODE_IP/24" dev "$BRIDGE"
  ip link set "$BRIDGE" up
  sysctl -qw net.ipv4.ip_forward=1
  [[ -e /proc/sys/net/bridge/bridge-nf-call-iptables ]] && sysctl -qw net.bridge.bridge-nf-call-iptables=1
  # Nothing from a pod leaves the machine: pods reach each other, Services (DNAT'ed to pod
  # IPs before FORWARD) and the node's own addresses (INPUT), nothing else.
  iptables -C FORWARD -s "$POD_CIDR" ! -d "$POD_CIDR" -j DROP 2>/dev/null ||
    iptables -I FORWARD 1 -s "$POD_CIDR" ! -d "$POD_CIDR" -j DROP
  mkdir -p "$NODE_DIR/cni/net.d"
  cat >"$NODE_DIR/cni/net.d/10-clawdbot.conflist" <<EOF
{
  "cniVersion": "1.0.0",
  "name": "clawdbot",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "$BRIDGE",
      "isGateway": true,
      "ipMasq": false,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "ranges": [[{"subnet": "$POD_CIDR", "gateway": "$NODE_IP"}]],
        "routes": [{"dst": "$SERVICE_CIDR"}],
        "dataDir": "$NODE_DIR/cni/ipam"
      }
    },
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}
EOF
}

teardown_network() {
  # Another state's node holds the network (claim_network): leave it alone.
  if [[ -f "$OWNER_FILE" && "$(cat "$OWNER_FILE")" != "$STATE_DIR" ]]; then return 0; fi
  iptables -D FORWARD -s "$POD_CIDR" ! -d "$POD_CIDR" -j DROP 2>/dev/null || true
  # kube-proxy's own chains: flushed by its cleanup mode.
  if [[ -x "$BIN_DIR/kube-proxy" ]]; then
    "$BIN_DIR/kube-proxy" --cleanup >/dev/null 2>&1 || true
  fi
  # The kubelet's: KUBE-FIREWALL (jumped to from INPUT and OUTPUT) and its canaries.
  local ipt table chain
  for ipt in iptables ip6tables; do
    command -v "$ipt" >/dev/null || continue
    while "$ipt" -D INPUT -j KUBE-FIREWALL 2>/dev/null; do :; done
    while "$ipt" -D OUTPUT -j KUBE-FIREWALL 2>/dev/null; do :; done
    for table in filter nat mangle; do
      for chain in KUBE-FIREWALL KUBE-KUBELET-CANARY KUBE-IPTABLES-HINT; do
        "$ipt" -t "$table" -F "$chain" 2>/dev/null && "$ipt" -t "$table" -X "$chain" 2>/dev/null || true
      done
    done
  done
  ip link del "$BRIDGE" 2>/dev/null || true
  rm -rf "$NODE_DIR/cni/ipam"
  rm -f "$OWNER_FILE"
}

start_containerd() {
  mkdir -p "$RUN_DIR" "$NODE_DIR/containerd"
  cat >"$NODE_DIR/containerd/config.toml" <<EOF
version = 2
root = "$NODE_DIR/containerd/root"
state = "$RUN_DIR/state"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.zfs",
  "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing"]

[grpc]
  address = "$SOCK"

[plugins."io.containerd.internal.v1.opt"]
  path = "$NODE_DIR/containerd/opt"

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$PAUSE_IMAGE"
  enable_selinux = false
  # The kubelet asks for negative OOM scores (sandboxes -998); without CAP_SYS_RESOURCE in
  # its namespace (sandboxed machines, CI) runc can't set them: keep them at containerd's.
  restrict_oom_score_adj = true
  # The images are local (imported with ctr); nothing is pulled.
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        # cgroup v1 with a hybrid unified mount here: runc with the cgroupfs driver.
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "$CNI_BIN_DIR"
    conf_dir = "$NODE_DIR/cni/net.d"
EOF
  start containerd --config "$NODE_DIR/containerd/config.toml" --log-level warn
  local deadline=$((SECONDS + READY_TIMEOUT))
  until ctr --address "$SOCK" version >/dev/null 2>&1; do
    pid_of containerd >/dev/null || { tail -n 30 "$LOGS/node-containerd.log" >&2; die "containerd exited"; }
    ((SECONDS < deadline)) || die "containerd not answering after ${READY_TIMEOUT}s"
    sleep 0.2
  done
}

# import_pause: the sandbox image, from the static pause binary (make cluster-build).
import_pause() {
  ctr_cmd images ls -q | grep -qx "$PAUSE_IMAGE" && return 0
  local root="$REPO_ROOT"
  # shellcheck source=images/store.sh
  source "$REPO_ROOT/images/store.sh"
  local ctr tarball="$NODE_DIR/pause.tar"
  ctr="$(buildah_cmd from scratch)"
  buildah_cmd copy --quiet "$ctr" "$BIN_DIR/pause" /pause >/dev/null
  buildah_cmd config --entrypoint '["/pause"]' --user 65535:65535 "$ctr"
  buildah_cmd commit --quiet --rm "$ctr" "$PAUSE_IMAGE" >/dev/null
  rm -f "$tarball"
  buildah_cmd push --quiet "$PAUSE_IMAGE" "oci-archive:$tarball:$PAUSE_IMAGE" >/dev/null
  ctr_cmd images import "$tarball" >/dev/null
  rm -f "$tarball"
  : "$root"
}

cmd_load() {
  local tarball n=0 t0=$SECONDS
  shopt -s nullglob
  for tarball in "$IMAGE_EXPORT_DIR"/*.tar; do
    ctr_cmd images import "$tarball" >/dev/null
    n=$((n + 1))
  done
  log "imported $n images from ${IMAGE_EXPORT_DIR#"$REPO_ROOT"/} in $((SECONDS - t0))s"
}

write_kubelet_config() {
  cat >"$NODE_DIR/kubelet.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: $NODE_IP
port: $KUBELET_PORT
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: $KUBELET_HEALTHZ_PORT
tlsCertFile: $PKI/kubelet-serving.crt
tlsPrivateKeyFile: $PKI/kubelet-serving.key
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: false}
  x509: {clientCAFile: $PKI/ca.crt}
authorization: {mode: AlwaysAllow}
containerRuntimeEndpoint: unix://$SOCK
cgroupDriver: cgroupfs
# This machine has cgroup v1 (with a hybrid unified mount).
failCgroupV1: false
failSwapOn: false
# No cluster DNS: pods get a resolv.conf without nameservers (nothing resolves outside).
resolvConf: $NODE_DIR/resolv.conf
clusterDomain: cluster.local
serializeImagePulls: false
podLogsDir: $NODE_DIR/pod-logs
registerWithTaints:
- {key: clawdbot.io/real-node, value: "true", effect: NoSchedule}
evictionHard: {memory.available: "100Mi", nodefs.available: "1%", imagefs.available: "1%"}
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
maxPods: 30
podPidsLimit: 4096
EOF
  printf 'search svc.cluster.local cluster.local\noptions ndots:1\n' >"$NODE_DIR/resolv.conf"
}

write_kube_proxy_config() {
  cat >"$NODE_DIR/kube-proxy.yaml" <<EOF
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection: {kubeconfig: $STATE_DIR/kube-proxy.kubeconfig}
hostnameOverride: $NODE_NAME
mode: iptables
clusterCIDR: $POD_CIDR
# Service traffic is masqueraded to the node's address, so replies always come back through
# the node's NAT whatever the bridge's netfilter settings.
iptables: {masqueradeAll: true}
nodePortAddresses: ["$NODE_IP/32"]
bindAddress: 127.0.0.1
healthzBindAddress: 127.0.0.1:$PROXY_HEALTHZ_PORT
metricsBindAddress: 127.0.0.1:$PROXY_METRICS_PORT
# Leave the machine's conntrack table sizes alone.
conntrack: {maxPerCore: 0, min: 0, tcpEstablishedTimeout: 0s, tcpCloseWaitTimeout: 0s}
EOF
}

# The `kubernetes` Service's endpoint: the forwarder on the bridge (the plane runs with
# --endpoint-reconciler-type=none, so nothing else writes it).
write_kubernetes_endpoints() {
  "$BIN_DIR/kubectl" --kubeconfig="$STATE_DIR/kubeconfig" apply -f - >/dev/null <<EOF
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: kubernetes
  namespace: default
  labels:
    kubernetes.io/service-name: kubernetes
    endpointslice.kubernetes.io/managed-by: clawdbot-real-node
addressType: IPv4
endpoints:
- addresses: ["$NODE_IP"]
  conditions: {ready: true}
ports:
- name: https
  port: $APISERVER_FORWARD_PORT
  protocol: TCP
EOF
}

cmd_up() {
  local t0=$SECONDS problem
  problem="$(cmd_check)" || die "$problem"
  [[ -f "$STATE_DIR/ports.env" ]] || die "the control plane is not up (no $STATE_DIR/ports.env)"
  # shellcheck source=/dev/null
  source "$STATE_DIR/ports.env"
  claim_network
  cmd_down quiet
  mkdir -p "$NODE_DIR" "$LOGS" "$PIDS"
  read -r KUBELET_PORT KUBELET_HEALTHZ_PORT PROXY_HEALTHZ_PORT PROXY_METRICS_PORT <<<"$(
    python3 -c 'import socket
s=[socket.socket() for _ in range(4)]
[x.bind(("127.0.0.1",0)) for x in s]
print(" ".join(str(x.getsockname()[1]) for x in s))')"

  cert "node-$NODE_NAME" "system:node:$NODE_NAME" system:nodes
  cert kubelet-serving "system:node:$NODE_NAME" system:nodes "IP:$NODE_IP,DNS:$NODE_NAME"
  cert kube-proxy system:kube-proxy system:node-proxier
  node_kubeconfig "$STATE_DIR/kubelet.kubeconfig" "node-$NODE_NAME"
  node_kubeconfig "$STATE_DIR/kube-proxy.kubeconfig" kube-proxy

  setup_network
  start_containerd
  import_pause
  cmd_load
  start apiserver-forward "TCP-LISTEN:$APISERVER_FORWARD_PORT,bind=$NODE_IP,reuseaddr,fork" \
    "TCP:127.0.0.1:$APISERVER_PORT"
  write_kubernetes_endpoints

  write_kubelet_config
  mkdir -p "$NODE_DIR/kubelet"
  start kubelet \
    --config="$NODE_DIR/kubelet.yaml" \
    --kubeconfig="$STATE_DIR/kubelet.kubeconfig" \
    --root-dir="$NODE_DIR/kubelet" \
    --hostname-override="$NODE_NAME" \
    --node-ip="$NODE_IP" \
    --node-labels="clawdbot.io/real-node=true,type=real" \
    --v=1
  write_kube_proxy_config
  start kube-proxy --config="$NODE_DIR/kube-proxy.yaml" --v=1

  local kubectl=("$BIN_DIR/kubectl" --kubeconfig="$STATE_DIR/kubeconfig")
  local deadline=$((SECONDS + READY_TIMEOUT))
  until "${kubectl[@]}" get node "$NODE_NAME" >/dev/null 2>&1; do
    pid_of kubelet >/dev/null || { tail -n 30 "$LOGS/node-kubelet.log" >&2; die "kubelet exited"; }
    ((SECONDS < deadline)) || die "$NODE_NAME not registered after ${READY_TIMEOUT}s; see $LOGS/node-kubelet.log"
    sleep 0.5
  done
  # The node's pod range, for kube-proxy and for kubectl's views (the controller-manager
  # allocates none here).
  "${kubectl[@]}" patch node "$NODE_NAME" --type=merge \
    -p "{\"spec\":{\"podCIDR\":\"$POD_CIDR\",\"podCIDRs\":[\"$POD_CIDR\"]}}" >/dev/null
  until "${kubectl[@]}" wait --for=condition=Ready "node/$NODE_NAME" --timeout=5s >/dev/null 2>&1; do
    pid_of kubelet >/dev/null || { tail -n 30 "$LOGS/node-kubelet.log" >&2; die "kubelet exited"; }
    ((SECONDS < deadline)) || die "$NODE_NAME not Ready after ${READY_TIMEOUT}s; see $LOGS/node-kubelet.log"
  done
  log "real node $NODE_NAME Ready in $((SECONDS - t0))s (containerd $(containerd --version | awk '{print $3}'), runc, CNI bridge $BRIDGE)"
}

cmd_down() {
  local quiet="${1:-}" i
  for ((i = ${#NODE_COMPONENTS[@]} - 1; i >= 0; i--)); do
    [[ "${NODE_COMPONENTS[$i]}" == containerd ]] && continue
    stop "${NODE_COMPONENTS[$i]}"
  done
  # The pods' containers and sandboxes (their shims outlive containerd otherwise).
  if pid_of containerd >/dev/null; then
    local task
    for task in $(ctr_cmd tasks ls -q 2>/dev/null); do
      ctr_cmd tasks kill --signal SIGKILL "$task" >/dev/null 2>&1 || true
    done
    sleep 0.5
    for task in $(ctr_cmd tasks ls -q 2>/dev/null); do
      ctr_cmd tasks delete --force "$task" >/dev/null 2>&1 || true
    done
    for task in $(ctr_cmd containers ls -q 2>/dev/null); do
      ctr_cmd containers delete "$task" >/dev/null 2>&1 || true
    done
  fi
  stop containerd
  # Shims left over (containerd killed hard): each wrote its pid into its task's bundle.
  local pidfile pid
  for pidfile in "$RUN_DIR"/state/io.containerd.runtime.v2.task/*/*/shim.pid; do
    [[ -f "$pidfile" ]] || continue
    pid="$(cat "$pidfile")"
    [[ "$pid" =~ ^[0-9]+$ ]] && kill -KILL "$pid" 2>/dev/null || true
  done
  # Network namespaces of pods that were not torn down through CNI.
  local m
  for m in $(awk -v run="$RUN_DIR" -v node="$NODE_DIR" \
    'index($2, run) == 1 || index($2, node) == 1 {print $2}' /proc/mounts | sort -r); do
    umount -l "$m" 2>/dev/null || true
  done
  teardown_network
  # containerd's run directory, once nothing is mounted below it any more.
  if [[ -d "$RUN_DIR" ]] && ! awk -v run="$RUN_DIR" 'index($2, run) == 1 {found = 1} END {exit !found}' /proc/mounts; then
    rm -rf "$RUN_DIR"
  fi
  [[ -n "$quiet" ]] || log "stopped (state kept in ${NODE_DIR#"$REPO_ROOT"/})"
}

case "${1:-}" in
  up) cmd_up ;;
  down) cmd_down ;;
  load) cmd_load ;;
  check) cmd_check ;;
  *)
    echo "usage: $0 up|down|load|check" >&2
    exit 2
    ;;
esac
