#!/usr/bin/env bash
# Regenerates the Python modules of one .proto next to it; `--check` fails on drift.
#
#   hack/protoc.sh ROOT PROTO [--check]
#
# ROOT is the import root (api/, runtime/ or sidecar/), PROTO the file below it, so the
# generated `_pb2_grpc` module imports its messages as a package (`clawdbot_x.protocol...`).
# protoc's output is not written for mypy --strict: the .pyi and _pb2_grpc modules are marked
# `# mypy: ignore-errors` so the checker uses their types without reporting on them.
set -euo pipefail

root="$1" proto="$2" mode="${3:-}"
python="${PYTHON:-python3}"
dir="$(dirname "${proto}")" stem="$(basename "${proto}" .proto)"
generated=("${stem}_pb2.py" "${stem}_pb2.pyi" "${stem}_pb2_grpc.py")

generate() {
  local out="$1" name
  "${python}" -m grpc_tools.protoc --proto_path="${root}" --python_out="${out}" \
    --pyi_out="${out}" --grpc_python_out="${out}" "${root}/${proto}"
  for name in "${stem}_pb2.pyi" "${stem}_pb2_grpc.py"; do
    sed -i '1i # mypy: ignore-errors' "${out}/${dir}/${name}"
  done
}

if [[ "${mode}" == "--check" ]]; then
  scratch="$(mktemp -d)"
  trap 'rm -rf "${scratch}"' EXIT
  generate "${scratch}"
  status=0
  for name in "${generated[@]}"; do
    if ! cmp -s "${scratch}/${dir}/${name}" "${root}/${dir}/${name}"; then
      echo "drift: ${root}/${dir}/${name} differs from what ${proto} generates; run make protos" >&2
      status=1
    fi
  done
  exit "${status}"
fi

generate "${root}"
echo "regenerated ${generated[*]} in ${root}/${dir}"
