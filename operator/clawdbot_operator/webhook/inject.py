"""Sidecar injection: whether a pod gets the routing sidecar, and the pod it becomes.

Both are pure functions of their inputs, so the whole policy is unit-tested without a
cluster (golden files in tests/unit/operator/webhook/testdata). The admission server only
decodes the AdmissionReview, calls these, and encodes a JSONPatch.

Opt-in is by label ``clawdbot.io/inject: enabled`` on the pod or its namespace; a pod label
``clawdbot.io/inject: disabled`` opts a pod out of an enabled namespace. The annotation
``clawdbot.io/routing-policy`` names the RoutingPolicy (otherwise the operator resolves it
by the policies' pod selectors).
"""

from __future__ import annotations

import copy
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

INJECT_LABEL = "clawdbot.io/inject"
POLICY_ANNOTATION = "clawdbot.io/routing-policy"
INJECTED_ANNOTATION = "clawdbot.io/injected"
SIDECAR_NAME = "clawdbot-sidecar"
TOKEN_VOLUME = "clawdbot-token"
TOKEN_DIR = "/var/run/secrets/clawdbot"
# The audience the operator's discovery stream checks through TokenReview.
TOKEN_AUDIENCE = "clawdbot"
TOKEN_EXPIRATION_S = 3600
# Where an injected sidecar may write its audit log when the policy's audit sink is a file
# (the root filesystem is read-only): an emptyDir, so the file lives as long as the pod.
AUDIT_VOLUME = "clawdbot-audit"
AUDIT_DIR = "/var/log/clawdbot"
AUDIT_VOLUME_LIMIT = "256Mi"
# Namespaces whose pods are never touched, whatever their labels say.
PROTECTED_NAMESPACES = frozenset({"kube-system", "kube-public", "kube-node-lease"})

Manifest = dict[str, Any]


class Outcome(StrEnum):
    """Why a pod was or wasn't injected; the label of the webhook's outcome metric."""

    INJECTED = "injected"
    NOT_OPTED_IN = "not-opted-in"
    OPTED_OUT = "opted-out"
    ALREADY_INJECTED = "already-injected"
    HOST_NETWORK = "host-network"
    PROTECTED_NAMESPACE = "protected-namespace"
    NOT_WATCHED = "not-watched"


@dataclass(frozen=True)
class SidecarSettings:
    """How the injected sidecar looks; from the operator's config (the chart's values)."""

    image: str = "clawdbot/sidecar:0.1.0"
    image_pull_policy: str = "IfNotPresent"
    http_port: int = 8088
    grpc_port: int = 8089
    probe_port: int = 8087
    """Where the sidecar answers the kubelet's probes (its API stays on the pod's loopback)."""
    discovery_address: str = "clawdbot-discovery.clawdbot-system.svc:9443"
    """host:port of the operator's discovery stream."""
    discovery_ca: str = ""
    """PEM of the CA that signed the stream's certificate; empty: a plaintext stream."""
    cpu_request: str = "50m"
    memory_request: str = "64Mi"
    memory_limit: str = "256Mi"
    run_as_user: int = 65532


def decide(
    pod: Mapping[str, Any],
    namespace: str,
    namespace_labels: Mapping[str, str],
    operator_namespace: str,
    watched: Collection[str] | None = None,
) -> Outcome:
    """Whether to inject the sidecar into ``pod`` (see the module docstring). ``watched``:
    the namespaces the operator watches (None: all); elsewhere no RoutingPolicy is resolved,
    so an injected sidecar would never get a policy, and the pod is left alone."""
    meta = pod.get("metadata") or {}
    labels = meta.get("labels") or {}
    annotations = meta.get("annotations") or {}
    spec = pod.get("spec") or {}
    if namespace in PROTECTED_NAMESPACES or namespace == operator_namespace:
        return Outcome.PROTECTED_NAMESPACE
    if watched is not None and namespace not in watched:
        return Outcome.NOT_WATCHED
    if labels.get(INJECT_LABEL) == "disabled":
        return Outcome.OPTED_OUT
    if labels.get(INJECT_LABEL) != "enabled" and namespace_labels.get(INJECT_LABEL) != "enabled":
        return Outcome.NOT_OPTED_IN
    containers = [*(spec.get("initContainers") or []), *(spec.get("containers") or [])]
    if INJECTED_ANNOTATION in annotations or any(c.get("name") == SIDECAR_NAME for c in containers):
        return Outcome.ALREADY_INJECTED
    if spec.get("hostNetwork"):
        # The sidecar's loopback ports would be the node's: collisions and exposure.
        return Outcome.HOST_NETWORK
    return Outcome.INJECTED


def _field_env(name: str, path: str) -> Manifest:
    return {"name": name, "valueFrom": {"fieldRef": {"fieldPath": path}}}


def _ready() -> Manifest:
    return {"path": "/readyz", "port": "probe"}


def sidecar_container(settings: SidecarSettings, policy: str | None) -> Manifest:
    """The sidecar as a native sidecar (an init container that keeps running)."""
    env = [
        _field_env("POD_NAME", "metadata.name"),
        _field_env("POD_NAMESPACE", "metadata.namespace"),
        # The probe port listens on the pod's IP alone, where the kubelet's probes arrive.
        _field_env("POD_IP", "status.podIP"),
        {"name": "CLAWDBOT_DISCOVERY_ADDRESS", "value": settings.discovery_address},
        {"name": "CLAWDBOT_DISCOVERY_TOKEN_FILE", "value": f"{TOKEN_DIR}/token"},
    ]
    if settings.discovery_ca:
        env.append({"name": "CLAWDBOT_DISCOVERY_CA", "value": settings.discovery_ca})
    if policy:
        env.append({"name": "CLAWDBOT_ROUTING_POLICY", "value": policy})
    return {
        "name": SIDECAR_NAME,
        "image": settings.image,
        "imagePullPolicy": settings.image_pull_policy,
        "restartPolicy": "Always",
        "args": [
            "serve",
            "--host=127.0.0.1",
            f"--port={settings.http_port}",
            f"--grpc-port={settings.grpc_port}",
            f"--probe-port={settings.probe_port}",
            "--probe-host=$(POD_IP)",
            "--discovery=$(CLAWDBOT_DISCOVERY_ADDRESS)",
        ],
        "env": env,
        "ports": [
            {"name": "http", "containerPort": settings.http_port, "protocol": "TCP"},
            {"name": "grpc", "containerPort": settings.grpc_port, "protocol": "TCP"},
            {"name": "probe", "containerPort": settings.probe_port, "protocol": "TCP"},
        ],
        # The app starts only after the sidecar is ready: its first request already routes.
        "startupProbe": {"httpGet": _ready(), "periodSeconds": 1, "failureThreshold": 60},
        "readinessProbe": {"httpGet": _ready(), "periodSeconds": 5},
        "livenessProbe": {
            "httpGet": {"path": "/healthz", "port": "probe"},
            "periodSeconds": 10,
            "failureThreshold": 3,
        },
        "resources": {
            "requests": {"cpu": settings.cpu_request, "memory": settings.memory_request},
            "limits": {"memory": settings.memory_limit},
        },
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": settings.run_as_user,
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "volumeMounts": [
            {"name": TOKEN_VOLUME, "mountPath": TOKEN_DIR, "readOnly": True},
            {"name": AUDIT_VOLUME, "mountPath": AUDIT_DIR},
        ],
    }


def _token_volume() -> Manifest:
    return {
        "name": TOKEN_VOLUME,
        "projected": {
            "sources": [
                {
                    "serviceAccountToken": {
                        "audience": TOKEN_AUDIENCE,
                        "expirationSeconds": TOKEN_EXPIRATION_S,
                        "path": "token",
                    }
                }
            ]
        },
    }


def _app_env(container: Manifest, settings: SidecarSettings) -> None:
    """Point the app's OpenAI and Anthropic SDKs (and gRPC clients) at the sidecar.

    OPENAI_BASE_URL and ANTHROPIC_BASE_URL are replaced: routing through the sidecar is what
    the pod opted into (the Anthropic SDK appends /v1/messages itself). The API keys are
    only set when absent (SDKs refuse to start without one; the sidecar ignores them and
    holds the real cloud key itself).
    """
    replaced = ("OPENAI_BASE_URL", "ANTHROPIC_BASE_URL")
    env = [e for e in container.get("env") or [] if e.get("name") not in replaced]
    names = {e.get("name") for e in env}
    base = f"http://127.0.0.1:{settings.http_port}"
    env.append({"name": "OPENAI_BASE_URL", "value": f"{base}/v1"})
    env.append({"name": "ANTHROPIC_BASE_URL", "value": base})
    for key in ("OPENAI_API_KEY", "ANTHROPIC_API_KEY"):
        if key not in names:
            env.append({"name": key, "value": "routed-by-clawdbot"})
    if "CLAWDBOT_GRPC_ADDRESS" not in names:
        env.append({"name": "CLAWDBOT_GRPC_ADDRESS", "value": f"127.0.0.1:{settings.grpc_port}"})
    container["env"] = env


def inject(pod: Mapping[str, Any], settings: SidecarSettings) -> Manifest:
    """A copy of ``pod`` with the sidecar, its token and audit volumes and the app env."""
    out: Manifest = copy.deepcopy(dict(pod))
    meta = out.setdefault("metadata", {})
    annotations = meta.get("annotations") or {}
    meta["annotations"] = {**annotations, INJECTED_ANNOTATION: settings.image}
    spec = out.setdefault("spec", {})
    policy = annotations.get(POLICY_ANNOTATION)
    # First init container: others (migrations, warm-ups) may already call the model.
    spec["initContainers"] = [
        sidecar_container(settings, policy),
        *(spec.get("initContainers") or []),
    ]
    audit_volume = {"name": AUDIT_VOLUME, "emptyDir": {"sizeLimit": AUDIT_VOLUME_LIMIT}}
    spec["volumes"] = [*(spec.get("volumes") or []), _token_volume(), audit_volume]
    for container in spec.get("containers") or []:
        _app_env(container, settings)
    return out


def json_patch(original: Mapping[str, Any], mutated: Mapping[str, Any]) -> list[Manifest]:
    """An RFC 6902 patch from the admitted pod to the injected one (whole-field replaces)."""
    ops: list[Manifest] = []
    for section in ("metadata", "spec"):
        before, after = original.get(section) or {}, mutated.get(section) or {}
        for key in sorted(after):
            if before.get(key) == after[key]:
                continue
            op = "replace" if key in before else "add"
            ops.append({"op": op, "path": f"/{section}/{_escape(key)}", "value": after[key]})
        for key in sorted(set(before) - set(after)):
            ops.append({"op": "remove", "path": f"/{section}/{_escape(key)}"})
    return ops


def _escape(key: str) -> str:
    return key.replace("~", "~0").replace("/", "~1")
