"""Check the chart against the operator it deploys: flags, settings and default images.

Renders the operator Deployment with each value set and feeds its container's args to the
operator's own argument parser and its environment to the operator's own config loader, so a
renamed flag or setting fails here instead of in a crash-looping pod. With the default
values, the images handed to the operator must equal the operator's built-in defaults.
With leader election on, the Lease the operator is told to use must be the one the chart's
Role lets it read and renew, and the pod must hand it its name (the Lease identity). The
objects the operator is told to write for its certificate (the Secret, the webhook
configuration's and the APIService's CA bundles) and its owner Deployment must be the ones
the chart renders, and its RBAC must allow exactly those writes (by name).

Usage: python charts-tests/contract.py HELM   (with the project's packages importable)
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from clawdbot_api.v1alpha1 import AcceleratorType, Runtime
from clawdbot_operator.config import DEFAULT_IMAGES, OperatorConfig, image_key
from clawdbot_operator.main import parse_args

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "helm" / "clawdbot"
VALUE_SETS = {
    "default": [],
    "all-features": ["-f", str(ROOT / "charts-tests" / "values" / "all-features.yaml")],
    "namespaced": ["-f", str(ROOT / "charts-tests" / "values" / "namespaced.yaml")],
}
RELEASE_NAMESPACE = "clawdbot-system"


def leader_election(name: str, helm: str, extra: list[str], container: dict[str, Any]) -> list[str]:
    """With --leader-elect: the Role covers the Lease the operator uses; POD_NAME is set."""
    try:
        args = parse_args(container["args"])
    except SystemExit:
        return []  # reported by check()
    if not args.leader_elect:
        return []
    problems = []
    fields = {
        e["name"]: e["valueFrom"]["fieldRef"]["fieldPath"]
        for e in container.get("env", [])
        if "fieldRef" in e.get("valueFrom", {})
    }
    if fields.get("POD_NAME") != "metadata.name":
        problems.append(f"{name}: POD_NAME (the Lease identity) is not the pod name")
    if args.leader_election_namespace is None and fields.get("POD_NAMESPACE") is None:
        problems.append(f"{name}: no --leader-election-namespace and no POD_NAMESPACE")
    lease_namespace = args.leader_election_namespace or RELEASE_NAMESPACE
    role = render(helm, "templates/role-leader-election.yaml", extra)
    if role is None:
        return [*problems, f"{name}: --leader-elect without the leader-election Role"]
    rules = [
        r for r in role.get("rules", [])
        if "coordination.k8s.io" in r["apiGroups"] and "leases" in r["resources"]
    ]  # fmt: skip
    named = {
        verb
        for r in rules
        if args.leader_election_name in r.get("resourceNames", [args.leader_election_name])
        for verb in r["verbs"]
    }
    if role["metadata"]["namespace"] != lease_namespace or not {"get", "update"} <= named:
        problems.append(
            f"{name}: the Role does not let the operator get and update Lease "
            f"{lease_namespace}/{args.leader_election_name}"
        )
    if not any("create" in r["verbs"] for r in rules):
        problems.append(f"{name}: the Role does not let the operator create its Lease")
    return problems


def allows(
    rules: list[dict[str, Any]], group: str, resource: str, name: str | None, verbs: set[str]
) -> bool:
    """Whether ``rules`` grant ``verbs`` on ``resource`` (named ``name``; None: any name)."""
    granted: set[str] = set()
    for rule in rules:
        if group not in rule["apiGroups"] or resource not in rule["resources"]:
            continue
        names = rule.get("resourceNames")
        if names is None or (name is not None and name in names):
            granted |= set(rule["verbs"])
    return verbs <= granted


def own_objects(name: str, helm: str, extra: list[str], container: dict[str, Any]) -> list[str]:
    """The operator's certificate and owner flags name rendered objects it may write."""
    try:
        args = parse_args(container["args"])
    except SystemExit:
        return []  # reported by check()
    env = {e["name"]: e["value"] for e in container.get("env", []) if "value" in e}
    role = render(helm, "templates/role.yaml", extra) or {"rules": []}
    cluster_role = render(helm, "templates/clusterrole-cluster.yaml", extra) or {"rules": []}
    problems = _owner_problems(name, helm, extra, args, role)
    problems += _certificate_problems(name, helm, extra, env, (role, cluster_role))
    problems += _metrics_problems(name, helm, extra, args, cluster_role)
    shared = env.get("CLAWDBOT_WEBHOOK_CERT_SECRET") or env.get("CLAWDBOT_WEBHOOK_CERT_DIR")
    if args.metrics_port and not shared:
        problems.append(f"{name}: the metrics API has no shared certificate (Secret or mount)")
    return problems


def _owner_problems(
    name: str, helm: str, extra: list[str], args: Any, role: dict[str, Any]
) -> list[str]:
    """--owner-deployment names the operator's Deployment, which its Role lets it read."""
    if not args.owner_deployment:
        return []
    problems = []
    deployment = render(helm, "templates/deployment.yaml", extra)
    if deployment["metadata"]["name"] != args.owner_deployment:
        problems.append(f"{name}: --owner-deployment is not the operator's Deployment")
    if not allows(role["rules"], "apps", "deployments", args.owner_deployment, {"get"}):
        problems.append(f"{name}: the Role does not let the operator read its Deployment")
    return problems


def _certificate_problems(
    name: str,
    helm: str,
    extra: list[str],
    env: dict[str, str],
    roles: tuple[dict[str, Any], dict[str, Any]],
) -> list[str]:
    """The serving certificate's Secret and the webhook configuration it patches (``roles``:
    the rendered Role and ClusterRole)."""
    role, cluster_role = roles
    problems = []
    secret = env.get("CLAWDBOT_WEBHOOK_CERT_SECRET")
    if secret and not (
        allows(role["rules"], "", "secrets", None, {"create"})
        and allows(role["rules"], "", "secrets", secret, {"get", "update"})
    ):
        problems.append(f"{name}: the Role does not let the operator keep Secret {secret}")
    webhooks = env.get("CLAWDBOT_WEBHOOK_CONFIGURATION")
    if webhooks and secret:
        rendered = render(helm, "templates/mutatingwebhookconfiguration.yaml", extra)
        if rendered is None or rendered["metadata"]["name"] != webhooks:
            problems.append(f"{name}: CLAWDBOT_WEBHOOK_CONFIGURATION names no rendered object")
        group = "admissionregistration.k8s.io"
        resource = "mutatingwebhookconfigurations"
        if not allows(cluster_role["rules"], group, resource, webhooks, {"get", "patch"}):
            problems.append(f"{name}: the operator may not set the caBundle of {webhooks}")
    return problems


def _metrics_problems(
    name: str, helm: str, extra: list[str], args: Any, cluster_role: dict[str, Any]
) -> list[str]:
    """--metrics-service and --metrics-api-service name the rendered Service and APIService."""
    problems = []
    if args.metrics_port:
        service = render(helm, "templates/service-metrics.yaml", extra)
        if service is None or service["metadata"]["name"] != args.metrics_service:
            problems.append(f"{name}: --metrics-service is not the metrics API's Service")
    if args.metrics_api_service:
        apiservice = render(helm, "templates/apiservice.yaml", extra)
        if apiservice is None or apiservice["metadata"]["name"] != args.metrics_api_service:
            problems.append(f"{name}: --metrics-api-service names no rendered APIService")
        elif apiservice["spec"]["service"]["name"] != args.metrics_service:
            problems.append(f"{name}: the APIService is not backed by --metrics-service")
        if not allows(cluster_role["rules"], "apiregistration.k8s.io", "apiservices",
                      args.metrics_api_service, {"get", "patch"}):  # fmt: skip
            problems.append(f"{name}: the operator may not set the APIService's caBundle")
    return problems


def render(helm: str, template: str, extra: list[str]) -> Any:
    """One template of the chart, rendered and parsed (None when it renders nothing)."""
    rendered = subprocess.run(
        [helm, "template", "clawdbot", str(CHART), "--namespace", RELEASE_NAMESPACE,
         "--show-only", template, *extra],
        check=False, capture_output=True, text=True,
    )  # fmt: skip
    if rendered.returncode != 0:
        if "could not find template" in rendered.stderr:
            return None
        raise RuntimeError(rendered.stderr)
    return yaml.safe_load(rendered.stdout)


def operator_container(helm: str, extra: list[str]) -> dict[str, Any]:
    """The operator container of the rendered Deployment."""
    deployment = render(helm, "templates/deployment.yaml", extra)
    container: dict[str, Any] = deployment["spec"]["template"]["spec"]["containers"][0]
    return container


def check(name: str, container: dict[str, Any]) -> list[str]:
    """Problems with one rendering (empty when the operator accepts it)."""
    problems = []
    try:
        parse_args(container["args"])
    except SystemExit:
        problems.append(f"{name}: the operator rejects its arguments {container['args']}")
    env = {e["name"]: e["value"] for e in container.get("env", []) if "value" in e}
    config = OperatorConfig.load(env)
    for runtime in Runtime:
        for accel in AcceleratorType:
            variable = "CLAWDBOT_" + image_key(runtime, accel).upper()
            if variable not in env:
                problems.append(f"{name}: {variable} is not set")
            elif config.image_for(runtime, accel) != env[variable]:
                problems.append(f"{name}: the operator does not read {variable}")
    if name == "default" and dict(config.images) != dict(DEFAULT_IMAGES):
        for pair, image in DEFAULT_IMAGES.items():
            if config.images.get(pair) != image:
                problems.append(
                    f"default: chart image {config.images.get(pair)!r} for "
                    f"{pair[0].value}/{pair[1].value} differs from the operator's {image!r}"
                )
    for variable, setting in (("CLAWDBOT_IMAGE_FETCH_HF", "image_fetch_hf"),
                              ("CLAWDBOT_IMAGE_FETCH_RCLONE", "image_fetch_rclone")):  # fmt: skip
        if getattr(config, setting) != env.get(variable):
            problems.append(f"{name}: the operator does not read {variable}")
    return problems


def main() -> int:
    """Check every value set; print one line per problem."""
    helm = sys.argv[1]
    problems = []
    for name, extra in VALUE_SETS.items():
        container = operator_container(helm, extra)
        problems += check(name, container)
        problems += leader_election(name, helm, extra, container)
        problems += own_objects(name, helm, extra, container)
    for problem in problems:
        print(problem)
    print(f"chart/operator contract: {len(VALUE_SETS)} value sets, {len(problems)} problem(s)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
