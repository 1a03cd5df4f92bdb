#!/usr/bin/env bash
# Build the local control plane's binaries from the Go module proxy, once, into a cache.
#
#   e2e/cluster/build.sh            build whatever is missing, skip what is cached
#   e2e/cluster/build.sh --list     print the cache directory and what it holds
#
# Why from source: no Docker here (so no kind images), and the Debian/PyPI etcd is too old
# for the API server's consistent reads. Everything is pinned below; a binary is rebuilt only
# when its pinned version changes (each binary has a `.<name>.version` stamp next to it).
set -euo pipefail

# Pinned versions; the main Makefile may override them through the environment.
K8S_VERSION="${K8S_VERSION:-v1.36.3}"
ETCD_VERSION="${ETCD_VERSION:-v3.6.16}"
KWOK_VERSION="${KWOK_VERSION:-v0.8.0}"
HELM_VERSION="${HELM_VERSION:-v3.22.0}"

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
# The cache is the repository's .cache/ (ignored by git, owned by the Makefile).
BIN_DIR="${CLAWDBOT_BIN_DIR:-$REPO_ROOT/.cache/bin/$K8S_VERSION}"
# Throwaway wrapper modules, deleted after each build.
WORK_DIR="${CLAWDBOT_BUILD_DIR:-$REPO_ROOT/.cache/build}"

export GOFLAGS="${GOFLAGS:--buildvcs=false}"
export CGO_ENABLED="${CGO_ENABLED:-0}"
GO="${GO:-go}"
if ! command -v "$GO" >/dev/null 2>&1; then
  if [[ -x /usr/local/go/bin/go ]]; then GO=/usr/local/go/bin/go; else
    echo "error: no Go toolchain found; install Go >= 1.25 (https://go.dev/dl/) or set GO=/path/to/go" >&2
    exit 1
  fi
fi

log() { printf '[cluster-build] %s\n' "$*" >&2; }
die() { printf '[cluster-build] error: %s\n' "$*" >&2; exit 1; }

# cached NAME VERSION -> success when BIN_DIR/NAME exists and was built for VERSION.
cached() {
  [[ -x "$BIN_DIR/$1" && -f "$BIN_DIR/.$1.version" && "$(cat "$BIN_DIR/.$1.version")" == "$2" ]]
}

# install_built SRC_DIR VERSION NAME... : move freshly built binaries into the cache atomically,
# so an interrupted build never leaves a binary that looks cached.
install_built() {
  local src="$1" version="$2"; shift 2
  local name
  for name in "$@"; do
    [[ -x "$src/$name" ]] || die "build produced no $name in $src"
    mv -f "$src/$name" "$BIN_DIR/$name"
    printf '%s\n' "$version" >"$BIN_DIR/.$name.version"
  done
}

# quiet_tidy DIR: resolve the wrapper module's dependencies; the (long) download list goes to
# a log that is shown only when resolution fails.
quiet_tidy() {
  if ! (cd "$1" && "$GO" mod tidy >"$1/tidy.log" 2>&1); then
    tail -n 40 "$1/tidy.log" >&2
    die "resolving modules in $1 failed (is the Go module proxy reachable? GOPROXY=$("$GO" env GOPROXY))"
  fi
}

TOTAL=10
step=0
started_all=$SECONDS

build_etcd() {
  step=$((step + 1))
  if cached etcd "$ETCD_VERSION"; then log "etcd $ETCD_VERSION cached ($step/$TOTAL)"; return; fi
  log "building etcd $ETCD_VERSION ($step/$TOTAL)..."
  local t0=$SECONDS mod="$WORK_DIR/etcd-$ETCD_VERSION"
  rm -rf "$mod" && mkdir -p "$mod/out"
  # etcd's server module has `replace` directives, so `go install ...@version` refuses it;
  # a wrapper module that just requires it builds the same main package.
  cat >"$mod/go.mod" <<EOF
module clawdbot.local/etcdbuild

go 1.25

require go.etcd.io/etcd/server/v3 $ETCD_VERSION
EOF
  cat >"$mod/tools.go" <<'EOF'
//go:build tools

package tools

import _ "go.etcd.io/etcd/server/v3"
EOF
  quiet_tidy "$mod"
  (cd "$mod" && "$GO" build -trimpath -ldflags="-s -w" -o out/etcd go.etcd.io/etcd/server/v3)
  install_built "$mod/out" "$ETCD_VERSION" etcd
  rm -rf "$mod"
  log "etcd done in $((SECONDS - t0))s"
}

# build_kubernetes NAME...: binaries of k8s.io/kubernetes/cmd/NAME (kubectl: k8s.io/kubectl).
build_kubernetes() {
  local names=("$@")
  local missing=() name
  for name in "${names[@]}"; do
    cached "$name" "$K8S_VERSION" || missing+=("$name")
  done
  local first=$((step + 1)) last=$((step + ${#names[@]}))
  step=$last
  if [[ ${#missing[@]} -eq 0 ]]; then log "kubernetes $K8S_VERSION binaries cached ($first-$last/$TOTAL)"; return; fi
  log "building ${missing[*]} $K8S_VERSION ($first-$last/$TOTAL); a cold build takes a few minutes (about 3-4 on 2 cores, plus module downloads)..."
  local t0=$SECONDS mod="$WORK_DIR/kubernetes-$K8S_VERSION"
  rm -rf "$mod" && mkdir -p "$mod/out"
  local minor="${K8S_VERSION#v1.}"; minor="${minor%%.*}"
  local staging_version="v0.${K8S_VERSION#v1.}"

  # k8s.io/kubernetes replaces its staging modules (k8s.io/api, k8s.io/client-go, ...) with
  # local directories and requires them at v0.0.0, so it can't be `go install`ed. A wrapper
  # module requires it and replaces every staging module with its published v0.X.Y tag.
  cat >"$mod/go.mod" <<EOF
module clawdbot.local/k8sbuild

go 1.25

require k8s.io/kubernetes $K8S_VERSION
EOF
  local upstream_mod
  upstream_mod="$(cd "$mod" && "$GO" mod download -json "k8s.io/kubernetes@$K8S_VERSION" | sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",$/\1/p')"
  [[ -f "$upstream_mod" ]] || die "could not download k8s.io/kubernetes@$K8S_VERSION from the module proxy"
  local staging
  staging="$(sed -n 's#^[[:space:]]*\(k8s\.io/[a-z0-9-]*\) => \./staging/.*#\1#p' "$upstream_mod" | sort -u)"
  [[ -n "$staging" ]] || die "found no staging replaces in k8s.io/kubernetes@$K8S_VERSION go.mod"
  {
    echo
    echo "replace ("
    local m
    for m in $staging; do echo "	$m => $m $staging_version"; done
    echo ")"
  } >>"$mod/go.mod"
  {
    printf '//go:build tools\n\npackage tools\n\nimport (\n'
    for name in "${missing[@]}"; do
      if [[ "$name" == kubectl ]]; then
        printf '\t_ "k8s.io/kubectl/pkg/cmd"\n'
      else
        printf '\t_ "k8s.io/kubernetes/cmd/%s"\n' "$name"
      fi
    done
    printf ')\n'
  } >"$mod/tools.go"
  quiet_tidy "$mod"

  # Without these, /version says v0.0.0-master and kubectl warns about version skew.
  local date; date="$(date -u +%Y-%m-%dT%H:%M:%SZ)"
  local ld="-s -w" pkg
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ld+=" -X $pkg.gitVersion=$K8S_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
    ld+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=$date"
  done
  local pkgs=()
  for name in "${missing[@]}"; do pkgs+=("k8s.io/kubernetes/cmd/$name"); done
  # One `go build` for all of them: they share most packages, so each is compiled once.
  (cd "$mod" && "$GO" build -trimpath -ldflags="$ld" -o out/ "${pkgs[@]}")
  install_built "$mod/out" "$K8S_VERSION" "${missing[@]}"
  rm -rf "$mod"
  log "kubernetes binaries done in $((SECONDS - t0))s"
}

# go_install NAME MODULE_PATH VERSION [LDFLAGS]: for modules without replace directives.
go_install() {
  local name="$1" pkg="$2" version="$3" extra_ld="${4:-}"
  step=$((step + 1))
  if cached "$name" "$version"; then log "$name $version cached ($step/$TOTAL)"; return; fi
  log "building $name $version ($step/$TOTAL)..."
  local t0=$SECONDS out="$WORK_DIR/$name-$version"
  rm -rf "$out" && mkdir -p "$out"
  GOBIN="$out" "$GO" install -trimpath -ldflags="-s -w $extra_ld" "$pkg@$version"
  install_built "$out" "$version" "$name"
  rm -rf "$out"
  log "$name done in $((SECONDS - t0))s"
}

# The real node's sandbox ("pause") process, from e2e/cluster/pause (no registry to pull the
# usual pause image from): a static binary that node.sh wraps into a local image.
build_pause() {
  step=$((step + 1))
  local version
  version="$(sha256sum "$REPO_ROOT/e2e/cluster/pause/main.go" | cut -c1-16)"
  if cached pause "$version"; then log "pause $version cached ($step/$TOTAL)"; return; fi
  log "building pause ($step/$TOTAL)..."
  local out="$WORK_DIR/pause"
  rm -rf "$out" && mkdir -p "$out"
  cp "$REPO_ROOT/e2e/cluster/pause/main.go" "$out/"
  printf 'module clawdbot.local/pause\n\ngo 1.25\n' >"$out/go.mod"
  (cd "$out" && "$GO" build -trimpath -ldflags="-s -w" -o pause .)
  install_built "$out" "$version" pause
  rm -rf "$out"
}

if [[ "${1:-}" == "--list" ]]; then
  echo "$BIN_DIR"
  ls -la "$BIN_DIR" 2>/dev/null || echo "(empty: run make cluster-build)"
  exit 0
fi

mkdir -p "$BIN_DIR" "$WORK_DIR"
log "binaries go to $BIN_DIR (override with CLAWDBOT_BIN_DIR)"
build_etcd
build_kubernetes kube-apiserver kube-controller-manager kube-scheduler kubectl
# The real node's kubelet and kube-proxy (e2e/cluster/node.sh), built apart so that the
# control plane's binaries stay cached when these are added or rebuilt.
build_kubernetes kubelet kube-proxy
go_install kwok sigs.k8s.io/kwok/cmd/kwok "$KWOK_VERSION" "-X sigs.k8s.io/kwok/pkg/consts.Version=${KWOK_VERSION#v} -X sigs.k8s.io/kwok/pkg/consts.KubeVersion=$K8S_VERSION"
go_install helm helm.sh/helm/v3/cmd/helm "$HELM_VERSION" "-X helm.sh/helm/v3/internal/version.version=$HELM_VERSION"
build_pause
log "all binaries ready in $BIN_DIR ($((SECONDS - started_all))s)"
