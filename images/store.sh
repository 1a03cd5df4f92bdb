# Sourced by images/base.sh, images/build.sh and the real node: where the image store is and
# how buildah is called on it. The store (layers, the base images, the build cache) lives in
# CLAWDBOT_CONTAINERS_DIR, by default the repository's .cache/containers, apart from the
# machine's own /var/lib/containers; `make clean-images` deletes it.
# shellcheck shell=bash

CONTAINERS_DIR="${CLAWDBOT_CONTAINERS_DIR:-$root/.cache/containers}"
STORE_ROOT="$CONTAINERS_DIR/storage"
STORE_RUNROOT="$CONTAINERS_DIR/run"
mkdir -p "$STORE_ROOT" "$STORE_RUNROOT"

# buildah_cmd ARGS...: buildah on this store. Rootful (the builds run as root here and in
# CI), overlay layers, the host's network for RUN steps (pip reaches the package index).
buildah_cmd() {
  buildah --root "$STORE_ROOT" --runroot "$STORE_RUNROOT" --storage-driver overlay "$@"
}

# have_image NAME -> success when the store holds NAME.
have_image() {
  buildah_cmd inspect --type image "$1" >/dev/null 2>&1
}

# image_size NAME -> its size on disk, e.g. "92 MB" (the uncompressed layers).
image_size() {
  buildah_cmd images --format '{{.Size}}' "$1" 2>/dev/null | head -n 1
}

# image_name DOCKERFILE_NAME -> the image's name, as the chart's values name it.
image_name() {
  case "$1" in
    runtime-cpu) echo clawdbot/runtime-onnx ;;
    runtime-cuda) echo clawdbot/runtime-onnx-cuda ;;
    runtime-rocm) echo clawdbot/runtime-onnx-rocm ;;
    *) echo "clawdbot/$1" ;;
  esac
}
