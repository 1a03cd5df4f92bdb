#!/usr/bin/env bash
# Fail when the chart's CRDs drifted from the generated ones in crds/ (`make crds`).
# Every crds/*.yaml must be in helm/clawdbot/crds/ byte for byte, and the chart must carry
# no clawdbot.io CRD that crds/ lacks.
#
# Usage: helm/check-crds.sh [--fix]   (--fix copies crds/ into the chart instead)
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
src="$root/crds"
dst="$root/helm/clawdbot/crds"
fix=false
[[ "${1:-}" == "--fix" ]] && fix=true

shopt -s nullglob
generated=("$src"/*.yaml)
if ((${#generated[@]} == 0)); then
  echo "check-crds: no CRDs in crds/; run 'make crds' first" >&2
  exit 1
fi

drift=0
for f in "${generated[@]}"; do
  name="$(basename "$f")"
  if $fix; then
    cp "$f" "$dst/$name"
  elif [[ ! -f "$dst/$name" ]]; then
    echo "check-crds: helm/clawdbot/crds/$name is missing (generated in crds/$name)" >&2
    drift=1
  elif ! diff -u --label "crds/$name" --label "helm/clawdbot/crds/$name" "$f" "$dst/$name"; then
    drift=1
  fi
done
for f in "$dst"/clawdbot.io_*.yaml; do
  name="$(basename "$f")"
  if [[ ! -f "$src/$name" ]]; then
    if $fix; then
      rm "$f"
    else
      echo "check-crds: helm/clawdbot/crds/$name has no generated counterpart in crds/" >&2
      drift=1
    fi
  fi
done

if ((drift)); then
  echo "check-crds: the chart's CRDs differ from crds/; run 'helm/check-crds.sh --fix'" >&2
  exit 1
fi
$fix && echo "check-crds: copied ${#generated[@]} CRD(s) into helm/clawdbot/crds/" || \
  echo "check-crds: ${#generated[@]} CRD(s) in helm/clawdbot/crds/ match crds/"
