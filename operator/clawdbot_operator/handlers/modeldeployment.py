"""Watch ModelDeployments and their children; every event ends in a level-based reconcile.

``on.event`` handlers (rather than create/update/resume with kopf's progress annotations)
keep the operator purely level-based and free of finalizers: children are garbage-collected
through their owner references, so deleting a ModelDeployment needs nothing from the
operator. A child changed or deleted by hand triggers its owner's reconcile, which puts it
back; the periodic resync (see ``main``) covers whatever an event missed.

With leader election (``--leader-elect``) every replica watches, but only the leader
reconciles: the others drop the events, and a replica that becomes the leader starts with a
full resync, which covers whatever it dropped.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, Final

import kopf

from clawdbot_api.v1alpha1 import GROUP, VERSION
from clawdbot_operator.builders.meta import MANAGED_BY
from clawdbot_operator.kube import KubeError
from clawdbot_operator.reconciler import Reconciler

log = logging.getLogger(__name__)

CHILDREN: Final = (
    ("apps", "v1", "deployments"),
    ("", "v1", "services"),
    ("policy", "v1", "poddisruptionbudgets"),
    ("networking.k8s.io", "v1", "networkpolicies"),
    ("autoscaling", "v2", "horizontalpodautoscalers"),
)


def owner_name(body: kopf.Body) -> str | None:
    """Name of the ModelDeployment controlling a child, if any."""
    for ref in body.get("metadata", {}).get("ownerReferences") or []:
        if ref.get("kind") == "ModelDeployment" and ref.get("apiVersion", "").startswith(GROUP):
            return str(ref["name"])
    return None


def always() -> bool:
    """Leadership without leader election: this process is the only writer."""
    return True


def register(
    registry: kopf.OperatorRegistry,
    reconciler: Reconciler,
    is_leader: Callable[[], bool] = always,
) -> None:
    """Register the handlers on ``registry`` (no import-time global state); they reconcile
    only while ``is_leader()``."""

    @kopf.on.event(GROUP, VERSION, "modeldeployments", id="modeldeployment", registry=registry)
    async def model_deployment_event(body: kopf.Body, type: str | None, **_: Any) -> None:
        if type == "DELETED" or not is_leader():
            return
        try:
            await reconciler.reconcile(dict(body))
        except KubeError as exc:  # the resync retries; say why now
            log.warning("reconcile of %s failed: %s", body.metadata.name, exc)

    async def child_event(body: kopf.Body, **_: Any) -> None:
        owner = owner_name(body)
        namespace = body.metadata.namespace
        if owner is None or namespace is None or not is_leader():
            return
        try:
            await reconciler.reconcile_named(namespace, owner)
        except KubeError as exc:
            log.warning("reconcile of %s after a child event failed: %s", owner, exc)

    for group, version, plural in CHILDREN:
        resource = (group, version, plural) if group else (version, plural)
        kopf.on.event(
            *resource,
            id=f"child-{plural}",
            labels={"app.kubernetes.io/managed-by": MANAGED_BY},
            registry=registry,
        )(child_event)
