#!/usr/bin/env bash
# `make demo-kind`: the demo of `make demo` on a kind cluster, with the project's own images.
#
# 1. creates the kind cluster $KIND_CLUSTER (default clawdbot-demo) from
#    e2e/cluster/kind-config.yaml, unless it exists;
# 2. builds the operator, sidecar and CPU runtime images (`make images`), bakes the project's
#    tiny ONNX model into a copy of the runtime image at /models (the `file:///models` the
#    ModelDeployment names), and loads them into the cluster;
# 3. installs the Helm chart with those images: the operator runs in its pods, the API
#    server calls its webhook and its metrics API through the chart's Services;
# 4. deploys the demo (demo/kind.py): the model, a cloud stand-in (unless
#    CLAWDBOT_DEMO_CLOUD_URL, _MODEL and _API_KEY name a real OpenAI-compatible endpoint), the
#    RoutingPolicy and a labelled app pod, then sends the same requests as `make demo`
#    through the injected sidecar (over `kubectl port-forward`).
#
# Needs Docker (a running daemon) and kind. Not run in this project's CI, which has no Docker;
# `make demo` is the demo that runs everywhere.
#
# Usage: demo/kind.sh [check|down]   (check: only the prerequisites; down: delete the cluster)
# Env:   KIND_CLUSTER, IMAGE_TAG (default dev), KIND, HELM, KUBECTL, PYTHON
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
cluster="${KIND_CLUSTER:-clawdbot-demo}"
tag="${IMAGE_TAG:-dev}"
k8s_version="${K8S_VERSION:-v1.36.3}"
state="$root/.run/demo-kind"
release=clawdbot
system_ns=clawdbot-system

die() {
  echo "demo-kind: $*" >&2
  exit 1
}
step() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }
pick() { # pick NAME OVERRIDE: the override, the cached build (make cluster-build), else PATH
  if [[ -n "$2" ]]; then
    echo "$2"
  elif [[ -x ".cache/bin/$k8s_version/$1" ]]; then
    echo "$root/.cache/bin/$k8s_version/$1"
  elif command -v "$1" >/dev/null; then
    command -v "$1"
  else
    return 1
  fi
}

# --- what it needs, checked before anything is created -------------------------------------
command -v docker >/dev/null ||
  die "needs Docker (https://docs.docker.com/engine/install/). Without Docker, 'make demo' runs the same demo on a local control plane."
docker info >/dev/null 2>&1 ||
  die "the Docker daemon does not answer ('docker info' fails): start it (or check DOCKER_HOST and your permissions), then retry. Without Docker, use 'make demo'."
kind="${KIND:-kind}"
command -v "$kind" >/dev/null ||
  die "needs kind (https://kind.sigs.k8s.io/docs/user/quick-start/#installation). Without it, use 'make demo'."

if [[ "${1:-}" == down ]]; then
  "$kind" delete cluster --name "$cluster"
  exit 0
fi

helm="$(pick helm "${HELM:-}")" || die "needs helm: run 'make cluster-build' (builds it into .cache) or install it"
kubectl="$(pick kubectl "${KUBECTL:-}")" || die "needs kubectl: run 'make cluster-build' or install it"
[[ "${1:-}" == check ]] && exit 0
python="${PYTHON:-$root/.venv/bin/python}"
[[ -x "$python" ]] || die "needs the project's virtualenv: run 'make venv' (make demo-kind does)"

mkdir -p "$state"
export KUBECONFIG="$state/kubeconfig"
started=$SECONDS

# --- the cluster ---------------------------------------------------------------------------
step "kind cluster $cluster"
if "$kind" get clusters 2>/dev/null | grep -qx "$cluster"; then
  echo "    exists; reusing it"
else
  "$kind" create cluster --name "$cluster" --config e2e/cluster/kind-config.yaml --wait 180s \
    --kubeconfig "$KUBECONFIG"
fi
"$kind" export kubeconfig --name "$cluster" --kubeconfig "$KUBECONFIG" >/dev/null

# --- the images ----------------------------------------------------------------------------
step "Building the images (tag $tag)"
make --no-print-directory images IMAGES="operator sidecar runtime-cpu" IMAGE_TAG="$tag"
# The tiny model in the runtime image at /models, as `make demo` mounts it there.
rm -rf "$state/model-image"
PYTHONPATH="$root" "$python" -c \
  'import sys; from pathlib import Path; from clawdbot_testing.models.tinylm import build_tiny_lm; build_tiny_lm(Path(sys.argv[1]))' \
  "$state/model-image/models"
cat >"$state/model-image/Dockerfile" <<EOF
FROM clawdbot/runtime-cpu:$tag
COPY models/ /models/
EOF
docker build --quiet -t "clawdbot/runtime-cpu-demo:$tag" "$state/model-image" >/dev/null
for image in operator sidecar runtime-cpu-demo; do
  "$kind" load docker-image --name "$cluster" "clawdbot/$image:$tag"
done

# --- the chart -----------------------------------------------------------------------------
step "Installing the Helm chart into $system_ns"
"$helm" upgrade --install "$release" helm/clawdbot --namespace "$system_ns" --create-namespace \
  --set "images.operator.tag=$tag" \
  --set "images.sidecar.tag=$tag" \
  --set "images.runtimes.onnx.cpu.repository=clawdbot/runtime-cpu-demo" \
  --set "images.runtimes.onnx.cpu.tag=$tag" \
  --wait --timeout 5m
"$kubectl" -n "$system_ns" rollout status "deployment/$release" --timeout=120s
"$kubectl" wait apiservice v1beta1.external.metrics.k8s.io --for=condition=Available --timeout=120s
"$kubectl" get apiservice v1beta1.external.metrics.k8s.io

# --- the demo ------------------------------------------------------------------------------
PYTHONPATH="$root" KUBECTL="$kubectl" CLAWDBOT_DEMO_IMAGE_TAG="$tag" "$python" demo/kind.py

step "Done in $((SECONDS - started))s"
echo "    export KUBECONFIG=$KUBECONFIG"
echo "    kubectl get md,rp -n demo; kubectl -n $system_ns logs deploy/$release"
echo "    Tear down: demo/kind.sh down (deletes the kind cluster $cluster)"
