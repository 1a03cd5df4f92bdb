#!/usr/bin/env bash
# Lint the chart and run its helm-unittest suites (charts-tests/*_test.yaml).
#
# Tools, built once and cached under .cache/ (never rebuilt when present):
# - helm: .cache/bin/<K8S_VERSION>/helm from `make cluster-build`, else helm on PATH, else
#   built here with `go install helm.sh/helm/v3/cmd/helm@<HELM_VERSION>`;
# - helm-unittest: built from charts-tests/tools (a Go module pinning its version and
#   checksums: helm-unittest's own go.mod has a replace directive, so `go install pkg@v`
#   refuses it) into .cache/bin/tools, and registered as the helm plugin `unittest` in
#   .cache/helm-plugins (HELM_PLUGINS points there; the user's plugins are untouched).
#
# Also checks the chart against the operator (charts-tests/contract.py) when the project's
# virtualenv exists (PYTHON, default .venv/bin/python).
#
# Usage: charts-tests/run.sh [lint|unit|all] [extra helm-unittest flags, e.g. -q]
#        (default: all = lint, then the unit tests)
set -euo pipefail

mode=all
case "${1:-}" in
  lint | unit | all) mode="$1"; shift ;;
esac

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
chart=helm/clawdbot
k8s_version="${K8S_VERSION:-v1.36.3}"
helm_version="${HELM_VERSION:-v3.22.0}"
tools_dir="$root/.cache/bin/tools"
plugins_dir="$root/.cache/helm-plugins"
unittest_version="$(awk '$1 == "require" && $2 == "github.com/helm-unittest/helm-unittest" {print $3}' \
  charts-tests/tools/go.mod)"

# --- helm ---------------------------------------------------------------------------------
if [[ -n "${HELM:-}" ]]; then
  helm="$HELM"
elif [[ -x ".cache/bin/$k8s_version/helm" ]]; then
  helm="$root/.cache/bin/$k8s_version/helm"
elif [[ -x "$tools_dir/helm" ]]; then
  helm="$tools_dir/helm"
elif command -v helm >/dev/null; then
  helm="$(command -v helm)"
else
  echo "==> building helm $helm_version into .cache/bin/tools (once)"
  GOBIN="$tools_dir" go install "helm.sh/helm/v3/cmd/helm@$helm_version"
  helm="$tools_dir/helm"
fi

if [[ "$mode" != unit ]]; then
  echo "==> helm lint ($("$helm" version --short))"
  "$helm" lint --strict "$chart"
  "$helm" lint --strict "$chart" -f charts-tests/values/all-features.yaml
  "$helm" lint --strict "$chart" -f charts-tests/values/namespaced.yaml
fi
[[ "$mode" == lint ]] && exit 0

# --- helm-unittest ------------------------------------------------------------------------
unittest_bin="$tools_dir/helm-unittest-$unittest_version"
if [[ ! -x "$unittest_bin" ]]; then
  echo "==> building helm-unittest $unittest_version into .cache/bin/tools (once)"
  mkdir -p "$tools_dir"
  (cd charts-tests/tools && go build -trimpath -o "$unittest_bin" \
    github.com/helm-unittest/helm-unittest/cmd/helm-unittest)
fi
plugin_dir="$plugins_dir/helm-unittest"
if [[ ! -f "$plugin_dir/plugin.yaml" ]] || ! grep -q "version: \"$unittest_version\"" "$plugin_dir/plugin.yaml"; then
  mkdir -p "$plugin_dir"
  cat >"$plugin_dir/plugin.yaml" <<EOF
name: "unittest"
version: "$unittest_version"
usage: "unittest for helm charts"
description: "helm-unittest, built from source by charts-tests/run.sh"
ignoreFlags: false
command: "\$HELM_PLUGIN_DIR/untt"
EOF
fi
ln -sf "$unittest_bin" "$plugin_dir/untt"
export HELM_PLUGINS="$plugins_dir"

# --- chart/operator contract --------------------------------------------------------------
# The rendered flags and settings must be what the operator's own parser and config accept.
python="${PYTHON:-$root/.venv/bin/python}"
if [[ -x "$python" ]] && "$python" -c 'import clawdbot_operator' 2>/dev/null; then
  echo "==> chart/operator contract"
  "$python" charts-tests/contract.py "$helm"
else
  echo "==> chart/operator contract: skipped (no project virtualenv; run 'make venv')"
fi

# --- unit tests ---------------------------------------------------------------------------
echo "==> helm unittest"
# Suites live outside the chart (so they are not packaged); paths are relative to the chart.
out="$(mktemp)"
trap 'rm -f "$out"' EXIT
status=0
"$helm" unittest --color=false --strict -f '../../charts-tests/*_test.yaml' "$@" "$chart" \
  | tee "$out" || status=$?
# One plain summary line ("N passed, N failed") that CI log readers understand.
summary="$(grep -E '^Tests:' "$out" | tail -1)"
passed="$( (grep -oE '[0-9]+ passed' <<<"$summary" || true) | awk '{s += $1} END {print s + 0}')"
failed="$( (grep -oE '[0-9]+ (failed|errored)' <<<"$summary" || true) | awk '{s += $1} END {print s + 0}')"
echo "chart-tests: ${passed:-0} passed, ${failed:-0} failed"
if ((status)) || [[ -z "$summary" ]]; then
  exit 1
fi
