#!/usr/bin/env bash
# A local Kubernetes control plane made of real processes, for the e2e suite:
# etcd, kube-apiserver, kube-controller-manager, kube-scheduler, and kwok acting as the
# kubelet of a few fake GPU/CPU nodes. Everything listens on 127.0.0.1 only. With
# CLAWDBOT_REAL_NODE=1 a real node joins them (e2e/cluster/node.sh: containerd, runc, a
# kubelet, kube-proxy, a CNI bridge), whose pods are containers of the project's images.
#
#   e2e/cluster/cluster.sh up       start it (no-op when already running)
#   e2e/cluster/cluster.sh down     stop every process it started and check none is left
#   e2e/cluster/cluster.sh status   say what runs, where the kubeconfig is, the nodes
#   e2e/cluster/cluster.sh env      print `export KUBECONFIG=...; export PATH=...` lines
#
# State (certificates, kubeconfig, etcd data, logs, pids) lives in $CLAWDBOT_CLUSTER_DIR,
# by default .run/cluster in the repository. Binaries come from e2e/cluster/build.sh.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "$HERE/../.." && pwd)"

K8S_VERSION="${K8S_VERSION:-v1.36.3}"
BIN_DIR="${CLAWDBOT_BIN_DIR:-$REPO_ROOT/.cache/bin/$K8S_VERSION}"
STATE_DIR="${CLAWDBOT_CLUSTER_DIR:-$REPO_ROOT/.run/cluster}"
PKI="$STATE_DIR/pki"
LOGS="$STATE_DIR/logs"
PIDS="$STATE_DIR/pids"
KUBECONFIG_FILE="$STATE_DIR/kubeconfig"
PORTS_FILE="$STATE_DIR/ports.env"
HOST=127.0.0.1
# How long `up` waits for each component before giving up (seconds).
READY_TIMEOUT="${CLAWDBOT_CLUSTER_READY_TIMEOUT:-90}"
# Start order; `down` stops them in reverse.
COMPONENTS=(etcd kube-apiserver kube-controller-manager kube-scheduler kwok)

log() { printf '[cluster] %s\n' "$*" >&2; }
die() { printf '[cluster] error: %s\n' "$*" >&2; exit 1; }

# ---------------------------------------------------------------------------------------
# processes

# pid_of NAME -> the recorded pid, when that process is alive and is still ours (the pid
# was not recycled by an unrelated process: its executable lives in BIN_DIR).
pid_of() {
  local f="$PIDS/$1.pid" pid exe
  [[ -f "$f" ]] || return 1
  pid="$(cat "$f")"
  [[ "$pid" =~ ^[0-9]+$ ]] || return 1
  kill -0 "$pid" 2>/dev/null || return 1
  exe="$(readlink "/proc/$pid/exe" 2>/dev/null || true)"
  # The kernel reports the resolved path: BIN_DIR may lie behind a symbolic link.
  local real; real="$(cd "$BIN_DIR" 2>/dev/null && pwd -P || printf '%s' "$BIN_DIR")"
  [[ "$exe" == "$real/$1" || "$exe" == "$real/$1 (deleted)" ]] || return 1
  printf '%s\n' "$pid"
}

# group_members PGID -> pids of live processes in that process group.
group_members() {
  local pgid="$1" stat rest
  for stat in /proc/[0-9]*/stat; do
    # Field 5 is the pgid; the command name (field 2) may hold spaces, so cut after ')'.
    # read, not $(cat ...): no process per entry, so a scan takes milliseconds, not seconds.
    { read -r rest <"$stat"; } 2>/dev/null || continue
    rest="${rest##*) }"
    read -r _state _ppid pg _ <<<"$rest"
    if [[ "$pg" == "$pgid" ]]; then
      stat="${stat#/proc/}"; printf '%s\n' "${stat%/stat}"
    fi
  done
}

# start NAME ARGS...: run BIN_DIR/NAME in its own session (so its pid is its process group
# id and `down` can signal the whole group), log to LOGS/NAME.log, record the pid.
start() {
  local name="$1"; shift
  local bin="$BIN_DIR/$name"
  [[ -x "$bin" ]] || die "$bin is missing; run 'make cluster-build' first"
  setsid "$bin" "$@" >>"$LOGS/$name.log" 2>&1 </dev/null &
  printf '%s\n' "$!" >"$PIDS/$name.pid"
  log "started $name (pid $!, log ${LOGS#"$REPO_ROOT"/}/$name.log)"
}

# stop NAME: TERM its process group, then KILL what is left after a grace period.
stop() {
  local name="$1" f="$PIDS/$1.pid" pid
  [[ -f "$f" ]] || return 0
  pid="$(cat "$f")"
  if pid="$(pid_of "$name")"; then
    kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
    local i
    for i in $(seq 1 50); do
      [[ -z "$(group_members "$pid")" ]] && break
      sleep 0.1
    done
    if [[ -n "$(group_members "$pid")" ]]; then
      log "$name (pid $pid) ignored SIGTERM for 5s; sending SIGKILL"
      kill -KILL -- "-$pid" 2>/dev/null || true
      sleep 0.2
    fi
    log "stopped $name (pid $pid)"
  else
    # The leader died (killed mid-test?), but children in its group may remain.
    if [[ "$pid" =~ ^[0-9]+$ && -n "$(group_members "$pid")" ]]; then
      log "$name leader is gone; killing what is left of its process group $pid"
      kill -KILL -- "-$pid" 2>/dev/null || true
      sleep 0.2
    fi
  fi
  rm -f "$f"
}

# wait_http NAME URL [CURL_ARGS...]: poll URL until it answers 200 "ok", or fail with the log.
wait_http() {
  local name="$1" url="$2"; shift 2
  local deadline=$((SECONDS + READY_TIMEOUT))
  until [[ "$(curl -s --max-time 2 "$@" "$url" 2>/dev/null || true)" == "ok" ]]; do
    if ! pid_of "$name" >/dev/null; then
      tail -n 30 "$LOGS/$name.log" >&2 || true
      die "$name exited during startup; full log: $LOGS/$name.log"
    fi
    if ((SECONDS > deadline)); then
      tail -n 30 "$LOGS/$name.log" >&2 || true
      die "$name not ready after ${READY_TIMEOUT}s at $url; full log: $LOGS/$name.log"
    fi
    sleep 0.3
  done
}

# free_ports N -> N distinct free TCP ports on 127.0.0.1 (the kernel picks them).
free_ports() {
  python3 - "$1" <<'EOF'
import socket, sys
socks = []
for _ in range(int(sys.argv[1])):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    socks.append(s)
print(" ".join(str(s.getsockname()[1]) for s in socks))
EOF
}

# ---------------------------------------------------------------------------------------
# certificates (kept across restarts: regenerated only when missing)

# cert NAME CN [O] [SAN] [CA]: see pki.sh.
# shellcheck source=e2e/cluster/pki.sh
source "$(dirname "${BASH_SOURCE[0]}")/pki.sh"

make_ca() {
  local name="$1" cn="$2"
  [[ -f "$PKI/$name.crt" ]] && return 0
  openssl req -x509 -new -newkey rsa:2048 -nodes -keyout "$PKI/$name.key" -days 3650 -sha256 \
    -subj "/CN=$cn" -addext "basicConstraints=critical,CA:TRUE" \
    -addext "keyUsage=critical,keyCertSign,cRLSign,digitalSignature" \
    -out "$PKI/$name.crt" 2>/dev/null
}

make_pki() {
  mkdir -p "$PKI"
  chmod 700 "$PKI"
  if [[ -f "$PKI/admin.crt" ]]; then return 0; fi
  log "generating certificates in ${PKI#"$REPO_ROOT"/}"
  make_ca ca clawdbot-e2e-ca
  make_ca front-proxy-ca clawdbot-e2e-front-proxy-ca
  cert apiserver kube-apiserver "" \
    "IP:127.0.0.1,IP:10.96.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local"
  cert admin kubernetes-admin system:masters
  cert kube-controller-manager system:kube-controller-manager
  cert kube-scheduler system:kube-scheduler
  # The kwok "kubelet" updates node and pod status of many nodes; admin keeps it simple.
  cert kwok kwok-controller system:masters
  cert apiserver-kubelet-client kube-apiserver-kubelet-client system:masters
  cert front-proxy-client front-proxy-client "" "" front-proxy-ca
  if [[ ! -f "$PKI/sa.key" ]]; then
    openssl genrsa -out "$PKI/sa.key" 2048 2>/dev/null
    openssl rsa -in "$PKI/sa.key" -pubout -out "$PKI/sa.pub" 2>/dev/null
  fi
}

# kubeconfig FILE USER: a kubeconfig for the API server using PKI/USER.{crt,key}.
kubeconfig() {
  local file="$1" user="$2"
  cat >"$file" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: clawdbot-e2e
  cluster:
    server: https://$HOST:$APISERVER_PORT
    certificate-authority: $PKI/ca.crt
users:
- name: $user
  user:
    client-certificate: $PKI/$user.crt
    client-key: $PKI/$user.key
contexts:
- name: clawdbot-e2e
  context:
    cluster: clawdbot-e2e
    user: $user
current-context: clawdbot-e2e
EOF
}

# ---------------------------------------------------------------------------------------
# commands

# start_apiserver: kube-apiserver on $APISERVER_PORT against etcd on $ETCD_PORT, waited for
# until ready (cmd_up, and cmd_restart_apiserver with the same ports and state).
start_apiserver() {
  # The aggregation layer (front-proxy flags) without --enable-aggregator-routing: routing to
  # endpoints would need a Service's Endpoints, which refuse loopback addresses, and refuses
  # ExternalName Services. Without it the aggregator dials an ExternalName Service's host, so
  # an APIService backed by `externalName: localhost` reaches a process on 127.0.0.1 (the
  # operator's external metrics API in e2e/tests/test_autoscaling.py). A ClusterIP Service
  # is dialled at its ClusterIP, which only kube-proxy serves: with the real node, not without.
  start kube-apiserver \
    --etcd-servers="http://$HOST:$ETCD_PORT" \
    --bind-address=$HOST \
    --advertise-address=$HOST \
    --secure-port="$APISERVER_PORT" \
    --tls-cert-file="$PKI/apiserver.crt" \
    --tls-private-key-file="$PKI/apiserver.key" \
    --client-ca-file="$PKI/ca.crt" \
    --kubelet-client-certificate="$PKI/apiserver-kubelet-client.crt" \
    --kubelet-client-key="$PKI/apiserver-kubelet-client.key" \
    --kubelet-preferred-address-types=InternalIP \
    --service-account-key-file="$PKI/sa.pub" \
    --service-account-signing-key-file="$PKI/sa.key" \
    --service-account-issuer="https://kubernetes.default.svc.cluster.local" \
    --service-cluster-ip-range=10.96.0.0/16 \
    --authorization-mode=Node,RBAC \
    --allow-privileged=true \
    --endpoint-reconciler-type=none \
    --requestheader-client-ca-file="$PKI/front-proxy-ca.crt" \
    --requestheader-allowed-names=front-proxy-client \
    --requestheader-username-headers=X-Remote-User \
    --requestheader-group-headers=X-Remote-Group \
    --requestheader-extra-headers-prefix=X-Remote-Extra- \
    --proxy-client-cert-file="$PKI/front-proxy-client.crt" \
    --proxy-client-key-file="$PKI/front-proxy-client.key" \
    --profiling=false \
    --v=1
  wait_http kube-apiserver "https://$HOST:$APISERVER_PORT/readyz" \
    --cacert "$PKI/ca.crt" --cert "$PKI/admin.crt" --key "$PKI/admin.key"
}

running_components() {
  local n c
  n=0
  for c in "${COMPONENTS[@]}"; do pid_of "$c" >/dev/null && n=$((n + 1)); done
  echo "$n"
}

cmd_up() {
  local t0=$SECONDS
  local missing=() c
  for c in "${COMPONENTS[@]}" kubectl; do [[ -x "$BIN_DIR/$c" ]] || missing+=("$c"); done
  if ((${#missing[@]})); then
    die "missing binaries in $BIN_DIR: ${missing[*]}; run 'make cluster-build' (or e2e/cluster/build.sh) first"
  fi

  local up; up="$(running_components)"
  if ((up == ${#COMPONENTS[@]})) && [[ -f "$PORTS_FILE" ]]; then
    # shellcheck source=/dev/null
    source "$PORTS_FILE"
    if [[ "$(curl -s --max-time 3 --cacert "$PKI/ca.crt" --cert "$PKI/admin.crt" --key "$PKI/admin.key" \
      "https://$HOST:$APISERVER_PORT/readyz" || true)" == "ok" ]]; then
      log "already running (API server https://$HOST:$APISERVER_PORT, kubeconfig ${KUBECONFIG_FILE#"$REPO_ROOT"/})"
      return 0
    fi
  fi
  if ((up > 0)); then
    log "found a partly running cluster ($up of ${#COMPONENTS[@]} components); restarting it"
  fi
  cmd_down quiet

  mkdir -p "$LOGS" "$PIDS"
  make_pki

  read -r ETCD_PORT ETCD_PEER_PORT APISERVER_PORT KCM_PORT SCHED_PORT KWOK_METRICS_PORT <<<"$(free_ports 6)"
  cat >"$PORTS_FILE" <<EOF
ETCD_PORT=$ETCD_PORT
ETCD_PEER_PORT=$ETCD_PEER_PORT
APISERVER_PORT=$APISERVER_PORT
KCM_PORT=$KCM_PORT
SCHED_PORT=$SCHED_PORT
KWOK_METRICS_PORT=$KWOK_METRICS_PORT
EOF
  kubeconfig "$KUBECONFIG_FILE" admin
  kubeconfig "$STATE_DIR/kube-controller-manager.kubeconfig" kube-controller-manager
  kubeconfig "$STATE_DIR/kube-scheduler.kubeconfig" kube-scheduler
  kubeconfig "$STATE_DIR/kwok.kubeconfig" kwok

  # A fresh etcd each start: every run begins from an empty cluster.
  rm -rf "$STATE_DIR/etcd"
  : >"$LOGS/etcd.log"
  start etcd \
    --name=clawdbot-e2e \
    --data-dir="$STATE_DIR/etcd" \
    --listen-client-urls="http://$HOST:$ETCD_PORT" \
    --advertise-client-urls="http://$HOST:$ETCD_PORT" \
    --listen-peer-urls="http://$HOST:$ETCD_PEER_PORT" \
    --initial-advertise-peer-urls="http://$HOST:$ETCD_PEER_PORT" \
    --initial-cluster="clawdbot-e2e=http://$HOST:$ETCD_PEER_PORT" \
    --listen-metrics-urls="" \
    --unsafe-no-fsync=true \
    --log-level=warn
  local deadline=$((SECONDS + READY_TIMEOUT))
  until curl -sf --max-time 2 "http://$HOST:$ETCD_PORT/health" | grep -q '"health":"true"'; do
    pid_of etcd >/dev/null || { tail -n 30 "$LOGS/etcd.log" >&2; die "etcd exited; log: $LOGS/etcd.log"; }
    ((SECONDS < deadline)) || die "etcd not healthy after ${READY_TIMEOUT}s; log: $LOGS/etcd.log"
    sleep 0.2
  done

  : >"$LOGS/kube-apiserver.log"
  start_apiserver
  log "kube-apiserver ready at https://$HOST:$APISERVER_PORT"

  : >"$LOGS/kube-controller-manager.log"
  start kube-controller-manager \
    --kubeconfig="$STATE_DIR/kube-controller-manager.kubeconfig" \
    --authentication-kubeconfig="$STATE_DIR/kube-controller-manager.kubeconfig" \
    --authorization-kubeconfig="$STATE_DIR/kube-controller-manager.kubeconfig" \
    --bind-address=$HOST \
    --secure-port="$KCM_PORT" \
    --controllers='*' \
    --horizontal-pod-autoscaler-sync-period=5s \
    --service-account-private-key-file="$PKI/sa.key" \
    --root-ca-file="$PKI/ca.crt" \
    --use-service-account-credentials=true \
    --cluster-signing-cert-file="$PKI/ca.crt" \
    --cluster-signing-key-file="$PKI/ca.key" \
    --leader-elect=false \
    --profiling=false \
    --v=1

  : >"$LOGS/kube-scheduler.log"
  start kube-scheduler \
    --kubeconfig="$STATE_DIR/kube-scheduler.kubeconfig" \
    --authentication-kubeconfig="$STATE_DIR/kube-scheduler.kubeconfig" \
    --authorization-kubeconfig="$STATE_DIR/kube-scheduler.kubeconfig" \
    --bind-address=$HOST \
    --secure-port="$SCHED_PORT" \
    --leader-elect=false \
    --profiling=false \
    --v=1

  : >"$LOGS/kwok.log"
  # Only nodes annotated kwok.x-k8s.io/node=fake are kwok's; pod IPs come from each node's
  # spec.podCIDR (127.x.0.0/24, see nodes.yaml), so they are loopback addresses.
  start kwok \
    --kubeconfig="$STATE_DIR/kwok.kubeconfig" \
    --config="$HERE/kwok-stages.yaml" \
    --manage-all-nodes=false \
    --manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake \
    --node-ip=$HOST \
    --cidr=127.254.0.0/16 \
    --node-lease-duration-seconds=40

  # The secure ports answer /healthz without authentication (always-allowed paths).
  wait_http kube-controller-manager "https://$HOST:$KCM_PORT/healthz" -k
  wait_http kube-scheduler "https://$HOST:$SCHED_PORT/healthz" -k

  local kubectl=("$BIN_DIR/kubectl" --kubeconfig="$KUBECONFIG_FILE")
  "${kubectl[@]}" apply -f "$HERE/nodes.yaml" >/dev/null
  log "waiting for the fake nodes to become Ready (kwok)"
  deadline=$((SECONDS + READY_TIMEOUT))
  until "${kubectl[@]}" wait --for=condition=Ready node --all --timeout=5s >/dev/null 2>&1; do
    pid_of kwok >/dev/null || { tail -n 30 "$LOGS/kwok.log" >&2; die "kwok exited; log: $LOGS/kwok.log"; }
    ((SECONDS < deadline)) || die "nodes not Ready after ${READY_TIMEOUT}s; see $LOGS/kwok.log"
  done
  # Pods can't be created before the namespace's default ServiceAccount exists.
  deadline=$((SECONDS + READY_TIMEOUT))
  until "${kubectl[@]}" -n default get serviceaccount default >/dev/null 2>&1; do
    ((SECONDS < deadline)) || die "no default ServiceAccount after ${READY_TIMEOUT}s; see $LOGS/kube-controller-manager.log"
    sleep 0.3
  done
  # The real node (containerd, kubelet, kube-proxy: e2e/cluster/node.sh) beside kwok's.
  if [[ "${CLAWDBOT_REAL_NODE:-0}" == 1 ]]; then
    "$HERE/node.sh" up
  fi
  "${kubectl[@]}" get nodes -L clawdbot.io/accelerator >&2
  log "cluster up in $((SECONDS - t0))s; use it with: export KUBECONFIG=${KUBECONFIG_FILE#"$REPO_ROOT"/}"
}

cmd_down() {
  local quiet="${1:-}"
  local c i left=() pid
  # The real node first, while the API server still answers its kubelet's last calls.
  if [[ -d "$STATE_DIR/node" ]]; then
    "$HERE/node.sh" down
  fi
  for ((i = ${#COMPONENTS[@]} - 1; i >= 0; i--)); do stop "${COMPONENTS[$i]}"; done
  # Verify: no process of any recorded group, and nothing from BIN_DIR that we recorded.
  for c in "${COMPONENTS[@]}"; do
    if pid="$(pid_of "$c")"; then left+=("$c:$pid"); fi
  done
  if ((${#left[@]})); then
    die "still running after stop: ${left[*]}; kill them by pid and run 'make cluster-down' again"
  fi
  [[ -n "$quiet" ]] || log "stopped; no control plane process left (state kept in ${STATE_DIR#"$REPO_ROOT"/})"
}

# The API server alone, stopped (SIGTERM, as a rolling control-plane upgrade does) and started
# again on the same port, certificates and etcd: what clients see when it restarts.
cmd_restart_apiserver() {
  [[ -f "$PORTS_FILE" ]] || die "no cluster state in ${STATE_DIR#"$REPO_ROOT"/}; run 'make cluster-up'"
  # shellcheck source=/dev/null
  source "$PORTS_FILE"
  pid_of kube-apiserver >/dev/null || die "kube-apiserver is not running"
  local t0=$SECONDS
  stop kube-apiserver
  start_apiserver
  log "kube-apiserver restarted in $((SECONDS - t0))s"
}

cmd_status() {
  local c pid rc=0
  for c in "${COMPONENTS[@]}"; do
    if pid="$(pid_of "$c")"; then
      printf '  %-24s running (pid %s)\n' "$c" "$pid"
    else
      printf '  %-24s not running\n' "$c"
      rc=1
    fi
  done
  if ((rc == 0)); then
    echo "kubeconfig: ${KUBECONFIG_FILE#"$REPO_ROOT"/}"
    "$BIN_DIR/kubectl" --kubeconfig="$KUBECONFIG_FILE" get nodes -L clawdbot.io/accelerator || rc=1
  else
    echo "cluster is not (fully) running: run 'make cluster-up'"
  fi
  return $rc
}

cmd_env() {
  echo "export KUBECONFIG=$KUBECONFIG_FILE"
  echo "export PATH=$BIN_DIR:\$PATH"
}

case "${1:-}" in
  up) cmd_up ;;
  down) cmd_down ;;
  status) cmd_status ;;
  env) cmd_env ;;
  restart-apiserver) cmd_restart_apiserver ;;
  *)
    echo "usage: $0 up|down|status|env|restart-apiserver" >&2
    exit 2
    ;;
esac
