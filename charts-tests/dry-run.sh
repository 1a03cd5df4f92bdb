#!/usr/bin/env bash
# Render the chart (CRDs included) with several value sets and send every manifest to a real
# API server with `kubectl apply --dry-run=server --validate=strict`: the server runs its
# defaulting, schema validation (unknown fields are errors) and admission, and persists
# nothing. This proves the manifests are valid against the API version the server runs.
#
# The target is the local control plane (`make cluster-up`; kubeconfig .run/cluster/kubeconfig)
# or whatever KUBECONFIG names. Kinds the server does not serve are skipped and listed:
# ServiceMonitor (Prometheus Operator) and Certificate/Issuer (cert-manager).
# The operator's pod template is also admitted as a Pod into a throw-away namespace that
# enforces the `restricted` Pod Security profile (created and deleted by this script).
# Pass --install-crds to really apply the chart's crds/ first (a disposable cluster only).
#
# Usage: charts-tests/dry-run.sh [--install-crds]
# Env:   KUBECONFIG, KUBECTL, HELM, DRY_RUN_NAMESPACE (an existing namespace; default "default")
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
chart=helm/clawdbot
k8s_version="${K8S_VERSION:-v1.36.3}"
bin_dir=".cache/bin/$k8s_version"
install_crds=false
[[ "${1:-}" == "--install-crds" ]] && install_crds=true

pick() { # pick NAME ENV_VALUE: the env override, the cached build, else PATH
  if [[ -n "$2" ]]; then echo "$2"
  elif [[ -x "$bin_dir/$1" ]]; then echo "$bin_dir/$1"
  elif command -v "$1" >/dev/null; then command -v "$1"
  else echo "dry-run: $1 not found (run 'make cluster-build' or put it on PATH)" >&2; exit 1
  fi
}
kubectl="$(pick kubectl "${KUBECTL:-}")"
helm="$(pick helm "${HELM:-}")"
if [[ -z "${KUBECONFIG:-}" ]]; then
  export KUBECONFIG="$root/.run/cluster/kubeconfig"
fi
namespace="${DRY_RUN_NAMESPACE:-default}"

if ! "$kubectl" get --raw /readyz >/dev/null 2>&1; then
  echo "dry-run: no API server answers with KUBECONFIG=$KUBECONFIG; start one with 'make cluster-up'" >&2
  exit 1
fi
server_version="$("$kubectl" version -o json | python3 -c 'import json,sys; print(json.load(sys.stdin)["serverVersion"]["gitVersion"])')"
echo "dry-run: API server $server_version, namespace $namespace"

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

if $install_crds; then
  echo "dry-run: applying $chart/crds/ for real (--install-crds)"
  "$kubectl" apply --server-side --force-conflicts --field-manager=clawdbot-chart-dry-run \
    -f "$chart/crds/" >/dev/null
  "$kubectl" wait --for=condition=Established --timeout=60s -f "$chart/crds/" >/dev/null
fi

# Served kinds as "apiVersion kind" lines (the last three columns of api-resources).
"$kubectl" api-resources --no-headers | awk '{print $(NF-2), $NF}' >"$work/served"

# Split the rendered documents into those the server can check and those it can't.
split_served() { # split_served RENDERED OUT
  python3 - "$1" "$2" "$work/served" <<'PY'
import sys
import yaml

rendered, out, served_file = sys.argv[1:]
served = {tuple(line.split()) for line in open(served_file) if line.strip()}
keep, skipped = [], []
for doc in yaml.safe_load_all(open(rendered)):
    if not doc:
        continue
    key = (doc["apiVersion"], doc["kind"])
    (keep if key in served else skipped).append(doc)
with open(out, "w") as f:
    yaml.safe_dump_all(keep, f, sort_keys=False)
for doc in skipped:
    print(f"  skipped {doc['kind']} {doc['metadata']['name']}: "
          f"{doc['apiVersion']} is not served by this cluster (its CRD is not installed)")
print(f"  {len(keep)} manifests to validate, {len(skipped)} skipped")
PY
}

# The operator's pods must pass the `restricted` Pod Security profile. Admission checks pods,
# not Deployments, so each rendered pod template goes in as a Pod (dry run) into a throw-away
# namespace that enforces the profile; the namespace is deleted on exit.
psa_namespace="clawdbot-chart-psa-$RANDOM$RANDOM"
cleanup() {
  "$kubectl" delete namespace "$psa_namespace" --ignore-not-found --wait=false >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT
"$kubectl" create namespace "$psa_namespace" --dry-run=client -o yaml \
  | "$kubectl" label --local -f - -o yaml \
    pod-security.kubernetes.io/enforce=restricted pod-security.kubernetes.io/enforce-version=latest \
  | "$kubectl" apply -f - >/dev/null
pods_from_templates() { # pods_from_templates RENDERED OUT
  python3 - "$1" "$2" <<'PY'
import sys
import yaml

rendered, out = sys.argv[1:]
pods = []
for doc in yaml.safe_load_all(open(rendered)):
    if doc and doc.get("kind") == "Deployment":
        template = doc["spec"]["template"]
        # The ServiceAccount does not exist in the throw-away namespace and plays no part in
        # Pod Security; leave it out so the ServiceAccount admission plugin does not object.
        template["spec"].pop("serviceAccountName", None)
        pods.append({"apiVersion": "v1", "kind": "Pod",
                     "metadata": {"name": doc["metadata"]["name"],
                                  "labels": template["metadata"].get("labels", {})},
                     "spec": template["spec"]})
with open(out, "w") as f:
    yaml.safe_dump_all(pods, f, sort_keys=False)
PY
}

failed=0
scenarios=(default charts-tests/values/all-features.yaml charts-tests/values/namespaced.yaml)
for values in "${scenarios[@]}"; do
  name="$(basename "$values" .yaml)"
  args=()
  [[ "$values" != default ]] && args=(-f "$values")
  echo "==> $name"
  "$helm" template clawdbot "$chart" --namespace "$namespace" --include-crds \
    "${args[@]}" >"$work/$name.yaml"
  split_served "$work/$name.yaml" "$work/$name.served.yaml"
  if "$kubectl" apply --dry-run=server --validate=strict -f "$work/$name.served.yaml" \
    >"$work/$name.out" 2>&1; then
    sed 's/^/  /' "$work/$name.out"
  else
    sed 's/^/  /' "$work/$name.out"
    echo "  FAILED: $name" >&2
    failed=1
  fi
  pods_from_templates "$work/$name.yaml" "$work/$name.pods.yaml"
  if "$kubectl" apply --dry-run=server -n "$psa_namespace" -f "$work/$name.pods.yaml" \
    >"$work/$name.psa" 2>&1; then
    echo "  restricted Pod Security profile: operator pod admitted"
  else
    sed 's/^/  /' "$work/$name.psa"
    echo "  FAILED: $name: the operator pod violates the restricted profile" >&2
    failed=1
  fi
done

if ((failed)); then
  echo "dry-run: some manifests were rejected by the API server" >&2
  exit 1
fi
echo "dry-run: every rendered manifest the server serves was accepted (${#scenarios[@]} value sets)"
