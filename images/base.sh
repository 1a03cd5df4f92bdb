#!/usr/bin/env bash
# The local base images, made from Debian's packages (no registry is needed to pull a base):
#
#   clawdbot-base/python-build:3.11-bookworm   Debian 12's essential set, python3 (3.11),
#                                              python3-venv and binutils: the build stage
#   clawdbot-base/python:3.11-bookworm         the same root filesystem pruned to what a
#                                              Python program needs at run time: the final
#                                              stage (no perl, pip wheels, docs, gconv...)
#
# Both are made once with mmdebstrap and imported into the image store that images/build.sh
# uses (CLAWDBOT_CONTAINERS_DIR, by default .cache/containers); `make clean-images` drops
# them. Elsewhere the Dockerfiles' default base, python:3.11-slim-bookworm, is used instead.
#
#   images/base.sh            make whatever is missing
#   images/base.sh --force    make both again
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=images/store.sh
source "$root/images/store.sh"

SUITE="${CLAWDBOT_BASE_SUITE:-bookworm}"
BUILD_BASE="clawdbot-base/python-build:3.11-$SUITE"
RUN_BASE="clawdbot-base/python:3.11-$SUITE"
# The numeric user of every image (USER 65532:65532), named so that tools that look the
# user up (getpass, ssh-less git, ...) find one.
NONROOT_UID=65532

log() { printf '[base] %s\n' "$*" >&2; }

if [[ "${1:-}" != "--force" ]] && have_image "$BUILD_BASE" && have_image "$RUN_BASE"; then
  log "$BUILD_BASE and $RUN_BASE present"
  exit 0
fi
command -v mmdebstrap >/dev/null || {
  echo "images/base.sh needs mmdebstrap (apt-get install mmdebstrap)" >&2
  exit 1
}

t0=$SECONDS
work="$CONTAINERS_DIR/base-work"
rm -rf "$work" && mkdir -p "$work"
trap 'rm -rf "$work"' EXIT

log "making the $SUITE root filesystem with mmdebstrap (Debian's packages)"
# merged-usr without the usrmerge package (which would pull in perl); no docs or locales.
mmdebstrap --quiet --variant=essential \
  --include=python3,python3-venv,ca-certificates,netbase,binutils \
  --hook-dir=/usr/share/mmdebstrap/hooks/merged-usr \
  --dpkgopt='path-exclude=/usr/share/man/*' \
  --dpkgopt='path-exclude=/usr/share/info/*' \
  --dpkgopt='path-exclude=/usr/share/locale/*' \
  --dpkgopt='path-exclude=/usr/share/doc/*' \
  --dpkgopt='path-include=/usr/share/doc/*/copyright' \
  "$SUITE" "$work/rootfs" >&2

rootfs="$work/rootfs"
printf 'nonroot:x:%s:%s:nonroot:/nonexistent:/usr/sbin/nologin\n' "$NONROOT_UID" "$NONROOT_UID" >>"$rootfs/etc/passwd"
printf 'nonroot:x:%s:\n' "$NONROOT_UID" >>"$rootfs/etc/group"
tar -C "$rootfs" --numeric-owner -cf "$work/build.tar" .

# The run-time base: what the final stages need is python3 and the shared libraries the
# wheels link to (libstdc++, libgcc_s, libssl...). Removed: the build tools, perl (only
# dpkg's maintainer scripts use it, and nothing installs packages into these images),
# ensurepip's wheels, the Python modules that only develop or convert code, iconv's gconv
# modules (Python has its own codecs).
rm -rf "$rootfs"/usr/bin/{perl,perl5*} "$rootfs"/usr/lib/x86_64-linux-gnu/perl* "$rootfs"/usr/share/perl* \
  "$rootfs"/usr/share/python-wheels "$rootfs"/usr/lib/x86_64-linux-gnu/gconv \
  "$rootfs"/usr/lib/python3.11/{lib2to3,pydoc_data,ensurepip,idlelib,turtledemo} \
  "$rootfs"/var/cache/debconf/*-old "$rootfs"/var/lib/apt/lists/*
# binutils and its libraries (the build stage strips the wheels' shared objects with it).
(cd "$rootfs" && chroot . dpkg-query -L binutils binutils-common binutils-x86-64-linux-gnu \
  libbinutils libctf0 libctf-nobfd0 libgprofng0 libjansson4 libsframe0 2>/dev/null |
  while read -r f; do [[ -f "./$f" || -L "./$f" ]] && rm -f "./$f"; done) || true
tar -C "$rootfs" --numeric-owner -cf "$work/run.tar" .

import_rootfs() {
  local name="$1" tarball="$2" ctr
  ctr="$(buildah_cmd from scratch)"
  buildah_cmd add --quiet "$ctr" "$tarball" / >/dev/null
  buildah_cmd config --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    --env LANG=C.UTF-8 --cmd /usr/bin/python3 \
    --label org.opencontainers.image.description="Debian $SUITE with python3, made with mmdebstrap" \
    "$ctr"
  buildah_cmd commit --quiet --rm "$ctr" "$name" >/dev/null
  log "imported $name ($(image_size "$name"))"
}
import_rootfs "$BUILD_BASE" "$work/build.tar"
import_rootfs "$RUN_BASE" "$work/run.tar"
log "base images made in $((SECONDS - t0))s"
