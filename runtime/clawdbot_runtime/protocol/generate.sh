#!/usr/bin/env bash
# Regenerates the Python stubs for grpc_predict_v2.proto next to it.
#
# The proto is compiled from the `runtime/` root so the generated `_pb2_grpc` module imports
# its messages as `clawdbot_runtime.protocol.grpc_predict_v2_pb2` (a package import) rather
# than a bare top-level module. `--check` regenerates into a scratch folder and fails when the
# committed files differ, which is what CI runs to catch drift.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
runtime_root="$(cd "${here}/../.." && pwd)"
python="${PYTHON:-python3}"
proto="clawdbot_runtime/protocol/grpc_predict_v2.proto"
generated=(grpc_predict_v2_pb2.py grpc_predict_v2_pb2.pyi grpc_predict_v2_pb2_grpc.py)

generate() {
  local out="$1"
  "${python}" -m grpc_tools.protoc \
    --proto_path="${runtime_root}" \
    --python_out="${out}" \
    --pyi_out="${out}" \
    --grpc_python_out="${out}" \
    "${runtime_root}/${proto}"
  # protoc's output is not written for mypy --strict (untyped stub functions, bare Mapping);
  # mark it so the type checker uses its types without reporting on code nobody edits.
  local name
  for name in grpc_predict_v2_pb2.pyi grpc_predict_v2_pb2_grpc.py; do
    sed -i '1i # mypy: ignore-errors' "${out}/clawdbot_runtime/protocol/${name}"
  done
}

if [[ "${1:-}" == "--check" ]]; then
  scratch="$(mktemp -d)"
  trap 'rm -rf "${scratch}"' EXIT
  generate "${scratch}"
  status=0
  for name in "${generated[@]}"; do
    if ! cmp -s "${scratch}/clawdbot_runtime/protocol/${name}" "${here}/${name}"; then
      echo "drift: ${name} differs from what ${proto} generates; run $0" >&2
      status=1
    fi
  done
  exit "${status}"
fi

generate "${runtime_root}"
echo "regenerated ${generated[*]}"
