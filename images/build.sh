#!/usr/bin/env bash
# Build the project's images without a Docker daemon, with buildah, into the local image
# store (CLAWDBOT_CONTAINERS_DIR, by default .cache/containers; see images/store.sh).
#
#   images/build.sh [NAME...]     build images/NAME.Dockerfile (default: operator sidecar
#                                 runtime-cpu) as clawdbot/<image>:$IMAGE_TAG; a path
#                                 (e2e/images/testkit.Dockerfile) builds a test image as
#                                 clawdbot-e2e/<name>:$IMAGE_TAG
#   images/build.sh --sizes       print the size of each built image
#   images/build.sh --export DIR  also write each image as DIR/<name>.tar (OCI archive), the
#                                 form containerd imports (the real node does)
#   images/build.sh --build-arg K=V  pass a build argument (vllm-cpu's sources)
#
# The base images are build arguments. Here they are the local Debian bases that
# images/base.sh makes from Debian's packages (no registry is reachable to pull one);
# CLAWDBOT_BASE=public keeps the Dockerfiles' defaults (python:3.11-slim-bookworm), and
# PYTHON_IMAGE / BUILD_IMAGE name any other. `buildah build --layers` caches every step, so
# a change to the source rebuilds the last two steps only.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
# shellcheck source=images/store.sh
source "$root/images/store.sh"

IMAGE_TAG="${IMAGE_TAG:-dev}"
BASE="${CLAWDBOT_BASE:-local}"
export_dir=""
names=()
extra_args=()
while (($#)); do
  case "$1" in
    --sizes)
      for name in operator sidecar runtime-cpu; do
        image="$(image_name "$name")"
        printf '%-32s %s\n' "$image:$IMAGE_TAG" "$(image_size "$image:$IMAGE_TAG")"
      done
      exit 0
      ;;
    --export) export_dir="$2"; shift 2 ;;
    --build-arg) extra_args+=(--build-arg "$2"); shift 2 ;;
    -*) echo "usage: $0 [--export DIR] [NAME...] | --sizes" >&2; exit 2 ;;
    *) names+=("$1"); shift ;;
  esac
done
((${#names[@]})) || names=(operator sidecar runtime-cpu)

log() { printf '[images] %s\n' "$*" >&2; }

command -v buildah >/dev/null || {
  echo "make images needs buildah (apt-get install buildah); Docker is not used" >&2
  exit 1
}

base_args=()
if [[ "$BASE" == local ]]; then
  "$root/images/base.sh"
  base_args=(--build-arg "PYTHON_IMAGE=${PYTHON_IMAGE:-localhost/clawdbot-base/python:3.11-bookworm}"
    --build-arg "BUILD_IMAGE=${BUILD_IMAGE:-localhost/clawdbot-base/python-build:3.11-bookworm}")
else
  [[ -n "${PYTHON_IMAGE:-}" ]] && base_args+=(--build-arg "PYTHON_IMAGE=$PYTHON_IMAGE")
  [[ -n "${BUILD_IMAGE:-}" ]] && base_args+=(--build-arg "BUILD_IMAGE=$BUILD_IMAGE")
fi

# pip in the build stage uses the host's trust store and pip configuration (a package index
# mirror, a proxy's CA), mounted read-only for the RUN steps only: nothing of it is in a layer.
mounts=()
if [[ -f /etc/ssl/certs/ca-certificates.crt ]]; then
  mounts+=(--volume /etc/ssl/certs/ca-certificates.crt:/etc/ssl/certs/ca-certificates.crt:ro)
fi
[[ -f /etc/pip.conf ]] && mounts+=(--volume /etc/pip.conf:/etc/pip.conf:ro)

total=$SECONDS
for name in "${names[@]}"; do
  if [[ "$name" == */* ]]; then
    # A test image (e2e/images/NAME.Dockerfile): clawdbot-e2e/NAME.
    dockerfile="$name"
    name="$(basename "$name" .Dockerfile)"
    image="clawdbot-e2e/$name:$IMAGE_TAG"
  else
    dockerfile="images/$name.Dockerfile"
    image="$(image_name "$name"):$IMAGE_TAG"
  fi
  [[ -f "$dockerfile" ]] || { echo "no $dockerfile" >&2; exit 2; }
  t0=$SECONDS
  log "building $image from $dockerfile"
  # --network host: the RUN steps reach the package index as the host does (no bridge to
  # set up for a build). The build log goes to a file and is shown when the build fails.
  logfile="$CONTAINERS_DIR/build-$name.log"
  if ! buildah_cmd build --layers --network host --isolation chroot \
    --ignorefile "$dockerfile.dockerignore" \
    "${base_args[@]}" "${extra_args[@]}" "${mounts[@]}" \
    -f "$dockerfile" -t "$image" . >"$logfile" 2>&1; then
    tail -n 40 "$logfile" >&2
    log "building $image failed; full log: ${logfile#"$root"/}"
    exit 1
  fi
  log "$image built in $((SECONDS - t0))s ($(image_size "$image"))"
  if [[ -n "$export_dir" ]]; then
    # Written again only when the image changed. The name inside is the one containerd
    # gives an unqualified reference (what the pods' `image:` fields say).
    mkdir -p "$export_dir"
    id="$(buildah_cmd inspect --type image --format '{{.FromImageID}}' "$image")"
    if [[ ! -f "$export_dir/$name.tar" || "$(cat "$export_dir/$name.id" 2>/dev/null)" != "$id" ]]; then
      rm -f "$export_dir/$name.tar" "$export_dir/$name.id"
      buildah_cmd push --quiet "$image" "oci-archive:$export_dir/$name.tar:docker.io/$image" >/dev/null
      printf '%s\n' "$id" >"$export_dir/$name.id"
      log "exported $image to ${export_dir#"$root"/}/$name.tar"
    fi
  fi
done
log "images built in $((SECONDS - total))s"
