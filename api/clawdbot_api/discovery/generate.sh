#!/usr/bin/env bash
# Regenerates the Python modules of discovery.proto next to it; `--check` fails on drift.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
api_root="$(cd "${here}/../.." && pwd)"
python="${PYTHON:-python3}"
proto="clawdbot_api/discovery/discovery.proto"
generated=(discovery_pb2.py discovery_pb2.pyi discovery_pb2_grpc.py)

generate() {
  local out="$1"
  "${python}" -m grpc_tools.protoc --proto_path="${api_root}" --python_out="${out}" \
    --pyi_out="${out}" --grpc_python_out="${out}" "${api_root}/${proto}"
  # protoc's output is not written for mypy --strict; use its types, don't report on it.
  local name
  for name in discovery_pb2.pyi discovery_pb2_grpc.py; do
    sed -i '1i # mypy: ignore-errors' "${out}/clawdbot_api/discovery/${name}"
  done
}

if [[ "${1:-}" == "--check" ]]; then
  scratch="$(mktemp -d)"
  trap 'rm -rf "${scratch}"' EXIT
  generate "${scratch}"
  status=0
  for name in "${generated[@]}"; do
    if ! cmp -s "${scratch}/clawdbot_api/discovery/${name}" "${here}/${name}"; then
      echo "drift: ${name} differs from what ${proto} generates; run $0" >&2
      status=1
    fi
  done
  exit "${status}"
fi

generate "${api_root}"
echo "regenerated ${generated[*]}"
