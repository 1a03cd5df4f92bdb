"""Pure functions behind the discovery stream: which policy a pod gets, which endpoints.

Kept free of I/O so the resolution rules are tested on plain dicts:

* a pod's policy is the one its ``clawdbot.io/routing-policy`` annotation names (in its
  namespace), else the policy whose ``podSelector`` matches its labels; when several match,
  the alphabetically first wins (and the operator reports the overlap on the policies);
* a policy's endpoints are the ready pods of the ModelDeployments in ``localModels``, each
  at ``http://<pod IP>:<http port>/v1``; a pod counts only when a ReplicaSet controls it
  that the ModelDeployment's own Deployment controls (controller owner references, matched
  by UID, see :class:`Ownership`). A label is a claim anyone who can create a pod may make;
  sidecars send these endpoints unredacted prompts.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from clawdbot_api.v1alpha1 import LabelSelector, RoutingPolicySpec
from clawdbot_operator.builders.meta import (
    HTTP_PORT,
    LABEL_MODEL_DEPLOYMENT,
    LABEL_REVISION,
    controller_uid,
)
from clawdbot_operator.webhook.inject import POLICY_ANNOTATION

Manifest = Mapping[str, Any]


@dataclass(frozen=True)
class EndpointInfo:
    url: str
    model: str
    model_deployment: str
    revision: int


@dataclass(frozen=True)
class Resolved:
    """What one pod's sidecar should hold."""

    policy_name: str
    policy: RoutingPolicySpec | None
    endpoints: tuple[EndpointInfo, ...]
    held: bool = False
    """The pod's policy has no valid spec to serve: send nothing, the sidecar keeps what it
    has (its last good config, or none yet)."""

    @property
    def version(self) -> str:
        """A digest of the content: equal versions mean nothing to resend."""
        data = {
            "name": self.policy_name,
            "policy": self.policy.model_dump(mode="json", by_alias=True) if self.policy else None,
            "endpoints": [e.__dict__ for e in self.endpoints],
        }
        raw = json.dumps(data, sort_keys=True).encode()
        return hashlib.sha256(raw).hexdigest()[:16]


@dataclass
class Ownership:
    """Who controls what in one namespace, by UID, as the watches saw it."""

    model_deployments: dict[str, str] = field(default_factory=dict)
    """ModelDeployment name -> its UID."""
    deployments: dict[str, str] = field(default_factory=dict)
    """Deployment UID -> the UID of the ModelDeployment that controls it."""
    replica_sets: dict[str, str] = field(default_factory=dict)
    """ReplicaSet UID -> the UID of the Deployment that controls it."""


def model_deployment_of(pod: Manifest, ownership: Ownership) -> str | None:
    """The ModelDeployment a pod serves: the one its label names, when that ModelDeployment
    controls the Deployment that controls the ReplicaSet that controls the pod; else None."""
    name = ((pod.get("metadata") or {}).get("labels") or {}).get(LABEL_MODEL_DEPLOYMENT)
    md_uid = ownership.model_deployments.get(name or "")
    if md_uid is None:
        return None
    deployment = ownership.replica_sets.get(controller_uid(pod, "ReplicaSet") or "")
    if deployment is None or ownership.deployments.get(deployment) != md_uid:
        return None
    return name


def selector_matches(selector: Mapping[str, Any], labels: Mapping[str, str]) -> bool:
    """Kubernetes LabelSelector semantics (matchLabels and matchExpressions)."""
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr["key"], expr["operator"], expr.get("values") or []
        present = key in labels
        if op == "In" and (not present or labels[key] not in values):
            return False
        if op == "NotIn" and present and labels[key] in values:
            return False
        if op == "Exists" and not present:
            return False
        if op == "DoesNotExist" and present:
            return False
    return True


def policy_for_pod(
    pod: Manifest,
    policies: Mapping[str, RoutingPolicySpec],
    held: Mapping[str, LabelSelector | None] | None = None,
) -> tuple[str, RoutingPolicySpec | None] | None:
    """The (name, spec) of the pod's policy among its namespace's ``policies``, or None.

    ``held``: policies with no valid spec to serve (name -> their pod selector, None when
    even that is unreadable); a pod they would apply to resolves to (name, None): its sidecar
    keeps what it has rather than be served another policy.
    """
    held = held or {}
    meta = pod.get("metadata") or {}
    named = (meta.get("annotations") or {}).get(POLICY_ANNOTATION)
    if named:
        spec = policies.get(named)
        if spec is not None:
            return named, spec
        return (named, None) if named in held else None
    labels = meta.get("labels") or {}
    for name in sorted({*policies, *held}):
        if name in policies:
            selector = policies[name].pod_selector
        elif (selector_or_none := held[name]) is not None:
            selector = selector_or_none
        else:
            continue
        as_dict = selector.model_dump(by_alias=True, exclude_none=True)
        if as_dict and selector_matches(as_dict, labels):
            return name, policies.get(name)
    return None


def pod_ready(pod: Manifest) -> bool:
    """Ready, with an IP, and not being deleted: a pod that may take traffic."""
    status = pod.get("status") or {}
    if not status.get("podIP") or (pod.get("metadata") or {}).get("deletionTimestamp"):
        return False
    conditions = status.get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


def http_port(pod: Manifest) -> int:
    """The port named http of the pod's containers (the model server's), else the default."""
    for container in (pod.get("spec") or {}).get("containers") or []:
        for port in container.get("ports") or []:
            if port.get("name") == "http":
                return int(port["containerPort"])
    return HTTP_PORT


def endpoints_for(
    policy: RoutingPolicySpec,
    model_pods: Iterable[Manifest],
    served_names: Mapping[str, str],
    ownership: Ownership,
) -> tuple[EndpointInfo, ...]:
    """Ready endpoints of the policy's local models; ``served_names``: MD name -> model name;
    ``ownership``: whose pods are whose (see :func:`model_deployment_of`)."""
    wanted = {m.name for m in policy.local_models}
    found: list[EndpointInfo] = []
    for pod in model_pods:
        labels = (pod.get("metadata") or {}).get("labels") or {}
        md = model_deployment_of(pod, ownership)
        if md is None or md not in wanted or not pod_ready(pod):
            continue
        revision = labels.get(LABEL_REVISION, "0")
        found.append(
            EndpointInfo(
                url=f"http://{pod['status']['podIP']}:{http_port(pod)}/v1",
                model=served_names.get(md, md),
                model_deployment=md,
                revision=int(revision) if revision.isdigit() else 0,
            )
        )
    return tuple(sorted(found, key=lambda e: e.url))


def resolve(
    pod: Manifest,
    policies: Mapping[str, RoutingPolicySpec],
    model_pods: Iterable[Manifest],
    served_names: Mapping[str, str],
    ownership: Ownership,
    *,
    held: Mapping[str, LabelSelector | None] | None = None,
) -> Resolved:
    """Everything the pod's sidecar should hold now."""
    found = policy_for_pod(pod, policies, held)
    if found is None:
        return Resolved("", None, ())
    name, spec = found
    if spec is None:
        return Resolved(name, None, (), held=True)
    return Resolved(name, spec, endpoints_for(spec, model_pods, served_names, ownership))
