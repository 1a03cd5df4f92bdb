"""The ModelDeployment controller: watch ModelDeployments and their children; every event,
and a periodic resync, ends in one level-based reconcile (``reconciler``).

``on.event`` handlers (rather than create/update/resume with kopf's progress annotations)
keep the operator purely level-based and free of finalizers: children are garbage-collected
through their owner references, so deleting a ModelDeployment needs nothing from the
operator. A child changed or deleted by hand triggers its owner's reconcile, which puts it
back; the periodic resync covers whatever an event missed (progress deadlines, crash-loop
checks and load-report health need time to pass, not an event).

The resync is one loop over a LIST, not a ``@kopf.timer``: kopf puts a finalizer on every
object that has a timer (to stop it on deletion), so deleting a ModelDeployment would wait
for a running operator, and an uninstalled operator would strand them all. Nor is it fed by
a ``@kopf.index``: indexes reach only kopf's own handlers, and a LIST every
``resync_seconds`` costs one request per namespace.

With leader election every replica watches, but only the leader reconciles: the others
drop the events, and a replica that becomes the leader starts with a full resync, which
covers whatever it dropped.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Final, Protocol

import kopf

from clawdbot_api.v1alpha1 import API_VERSION, GROUP, VERSION
from clawdbot_operator.builders.meta import MANAGED_BY
from clawdbot_operator.kube import KubeError, Obj
from clawdbot_operator.leader import LeaderElector
from clawdbot_operator.reconciler import Reconciler

log = logging.getLogger(__name__)

CHILDREN: Final = (
    ("apps", "v1", "deployments"),
    ("", "v1", "services"),
    ("policy", "v1", "poddisruptionbudgets"),
    ("networking.k8s.io", "v1", "networkpolicies"),
    ("autoscaling", "v2", "horizontalpodautoscalers"),
)


class Lister(Protocol):
    async def list(
        self, api_version: str, kind: str, namespace: str | None, label_selector: str = ""
    ) -> list[Obj]:
        """Objects of a kind in a namespace (every namespace for None)."""
        ...


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


async def resync_all(
    reconciler: Reconciler,
    kube: Lister,
    namespaces: Sequence[str],
    is_leader: Callable[[], bool] = always,
) -> None:
    """Reconcile every ModelDeployment once (stopping early when leadership is lost)."""
    scopes: list[str | None] = [*namespaces] if namespaces else [None]
    for ns in scopes:
        try:
            items = await kube.list(API_VERSION, "ModelDeployment", ns)
        except KubeError as exc:
            log.warning("resync: could not list ModelDeployments: %s", exc)
            continue
        for item in items:
            if not is_leader():
                return
            try:
                await reconciler.reconcile(item)
            except KubeError as exc:
                log.warning("resync of %s failed: %s", item["metadata"]["name"], exc)


async def resync(
    reconciler: Reconciler,
    kube: Lister,
    namespaces: Sequence[str],
    period: float,
    *,
    elector: LeaderElector | None = None,
    on_gain: Callable[[], Awaitable[None]] | None = None,
) -> None:
    """Reconcile every ModelDeployment each ``period`` seconds (drift, deadlines). With an
    ``elector``, only while leading, and at once (after ``on_gain``) on becoming the leader."""

    def is_leader() -> bool:
        return elector is None or elector.is_leader

    while True:
        if elector is not None and not elector.is_leader:
            await elector.wait_leader()
            log.info("leading: resyncing every ModelDeployment now")
            if on_gain is not None:
                try:
                    await on_gain()
                except Exception:  # the resync below must still run
                    log.exception("on becoming the leader")
        else:
            await asyncio.sleep(period)
            if not is_leader():
                continue
        await resync_all(reconciler, kube, namespaces, is_leader)
