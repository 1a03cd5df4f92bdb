"""What the operator knows that sidecars need, and who must hear of a change.

The routing controller's watches feed a :class:`DiscoveryState`; each sidecar's stream is a
:class:`Subscription` on it. A change wakes only the subscriptions it can affect:

* a RoutingPolicy whose spec changed: the subscriptions of its namespace (a selector may
  match any pod there); the same spec again (every status refresh re-reads it) wakes none;
* a model pod, a ModelDeployment's served name, who controls whom: the subscriptions of the
  namespace whose policy names that ModelDeployment among its local models, and only when
  what makes an endpoint changed (readiness, address, port, revision, controller), not on
  every status update of the pod;
* a subscribed pod itself (relabelled, deleted): that pod's subscriptions.

Any operator replica can serve the stream: the state is rebuilt from the API server's
watches in each replica, not shared.
"""

from __future__ import annotations

import asyncio
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

from clawdbot_api.v1alpha1 import LabelSelector, RoutingPolicySpec
from clawdbot_operator.builders.meta import LABEL_MODEL_DEPLOYMENT, LABEL_REVISION, controller_uid
from clawdbot_operator.discovery.resolve import Ownership, Resolved, http_port, pod_ready, resolve

Manifest = Mapping[str, Any]


def _endpoint_view(pod: Manifest | None) -> tuple[Any, ...] | None:
    """What of a model pod makes (or unmakes) an endpoint; other changes concern nobody."""
    if pod is None:
        return None
    meta = pod.get("metadata") or {}
    labels = meta.get("labels") or {}
    return (
        labels.get(LABEL_MODEL_DEPLOYMENT),
        labels.get(LABEL_REVISION),
        pod_ready(pod),
        (pod.get("status") or {}).get("podIP"),
        http_port(pod),
        controller_uid(pod, "ReplicaSet"),
    )


def _pod_view(pod: Manifest | None) -> tuple[Any, ...] | None:
    """What of a subscribed pod its subscription depends on: identity, labels, annotations."""
    if pod is None:
        return None
    meta = pod.get("metadata") or {}
    return (
        meta.get("uid"),
        bool(meta.get("deletionTimestamp")),
        tuple(sorted((meta.get("labels") or {}).items())),
        tuple(sorted((meta.get("annotations") or {}).items())),
    )


@dataclass(eq=False)
class Subscription:
    """One sidecar's stream: its pod, the local models its policy names, a wake-up flag."""

    namespace: str
    pod_name: str
    models: frozenset[str] = frozenset()
    """Local models of the policy last resolved for the pod (what changes concern it)."""
    woken: asyncio.Event = field(default_factory=asyncio.Event)

    def wake(self) -> None:
        """Something it depends on changed: recompute the snapshot."""
        self.woken.set()


class DiscoveryState:
    """Policies, model pods, served names and ownership per namespace, and the pods with a
    subscription; setters wake the subscriptions a change can affect."""

    def __init__(self) -> None:
        self.policies: dict[str, dict[str, RoutingPolicySpec]] = {}
        # Policies with no valid spec ever seen (name -> pod selector): their pods get nothing.
        self.held: dict[str, dict[str, LabelSelector | None]] = {}
        self.model_pods: dict[str, dict[str, Manifest]] = {}
        self.served_names: dict[str, dict[str, str]] = {}
        self.ownership: dict[str, Ownership] = {}
        self._subscriptions: set[Subscription] = set()
        # Subscribed pods as the watch last saw them; None: deleted.
        self._pods: dict[tuple[str, str], Manifest | None] = {}
        self.wakeups = 0
        """Subscriptions woken so far (each one recomputes a snapshot)."""

    # -- subscriptions ------------------------------------------------------------------

    def subscribe(self, namespace: str, pod: Manifest) -> Subscription:
        """A subscription for ``pod`` (as read when it subscribed)."""
        name = (pod.get("metadata") or {}).get("name", "")
        sub = Subscription(namespace, name)
        self._subscriptions.add(sub)
        self._pods.setdefault((namespace, name), pod)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        """The stream ended."""
        self._subscriptions.discard(sub)
        key = (sub.namespace, sub.pod_name)
        if not any((s.namespace, s.pod_name) == key for s in self._subscriptions):
            self._pods.pop(key, None)

    def is_subscribed(self, namespace: str, name: str) -> bool:
        """Whether a stream is open for this pod (the pod watch then reports on it)."""
        return (namespace, name) in self._pods

    def subscribed_pod(self, namespace: str, name: str) -> Manifest | None:
        """A subscribed pod as last seen; None once it was deleted."""
        return self._pods.get((namespace, name))

    def set_subscribed_pod(self, namespace: str, name: str, pod: Manifest | None) -> None:
        """A subscribed pod changed (None: deleted); its subscriptions re-check it."""
        key = (namespace, name)
        if key not in self._pods or _pod_view(self._pods[key]) == _pod_view(pod):
            return
        self._pods[key] = pod
        self._wake(namespace, pod=name)

    def _wake(
        self, namespace: str, *, models: Collection[str] | None = None, pod: str | None = None
    ) -> None:
        for sub in self._subscriptions:
            if sub.namespace != namespace:
                continue
            if pod is not None and sub.pod_name != pod:
                continue
            if models is not None and not sub.models & set(models):
                continue
            self.wakeups += 1
            sub.wake()

    # -- what the watches report ----------------------------------------------------------

    def set_policy(self, namespace: str, name: str, spec: RoutingPolicySpec | None) -> None:
        """A policy's valid spec (None: the policy is deleted)."""
        policies = self.policies.setdefault(namespace, {})
        was_held = self.held.get(namespace, {}).pop(name, ...) is not ...
        if policies.get(name) == spec and not was_held:
            return  # the same spec again: every status refresh re-reads it
        if spec is None:
            policies.pop(name, None)
        else:
            policies[name] = spec
        self._wake(namespace)

    def set_invalid_policy(self, namespace: str, name: str, selector: LabelSelector | None) -> bool:
        """A policy whose spec can't be applied. Its last valid spec, if it had one, stays
        in force (nothing changes for its sidecars); else its pods are held: they get no
        snapshot. True when a last valid spec stays in force."""
        if name in self.policies.get(namespace, {}):
            return True
        held = self.held.setdefault(namespace, {})
        if name not in held or held[name] != selector:
            held[name] = selector
            self._wake(namespace)
        return False

    def set_model_pod(self, namespace: str, name: str, pod: Manifest | None) -> None:
        """A pod labelled as some ModelDeployment's (None: deleted)."""
        pods = self.model_pods.setdefault(namespace, {})
        before = _endpoint_view(pods.get(name))
        if pod is None:
            pods.pop(name, None)
        else:
            pods[name] = pod
        after = _endpoint_view(pod)
        if before != after:
            models = {v[0] for v in (before, after) if v is not None and v[0]}
            self._wake(namespace, models=models)

    def set_served_name(
        self, namespace: str, deployment: str, model: str | None, uid: str | None = None
    ) -> bool:
        """A ModelDeployment's served model name and UID (None: it is gone); True when
        that changed anything."""
        names = self.served_names.setdefault(namespace, {})
        uids = self.ownership_of(namespace).model_deployments
        before = (names.get(deployment), uids.get(deployment))
        if model is None:
            names.pop(deployment, None)
            uids.pop(deployment, None)
        else:
            names[deployment] = model
            if uid:
                uids[deployment] = uid
        if before == (names.get(deployment), uids.get(deployment)):
            return False
        self._wake(namespace, models={deployment})
        return True

    def ownership_of(self, namespace: str) -> Ownership:
        """The namespace's ownership records (created empty on first use)."""
        return self.ownership.setdefault(namespace, Ownership())

    def set_controller(self, namespace: str, kind: str, uid: str, controller: str | None) -> bool:
        """A Deployment's controlling ModelDeployment UID, or a ReplicaSet's controlling
        Deployment UID (``kind`` says which; None: gone, or controlled by nothing); True
        when that changed anything."""
        ownership = self.ownership_of(namespace)
        table = ownership.deployments if kind == "Deployment" else ownership.replica_sets
        if table.get(uid) == controller:
            return False
        if controller is None:
            table.pop(uid, None)
        else:
            table[uid] = controller
        # Rare (a rollout's new ReplicaSet): which ModelDeployment it is for is a lookup
        # away; waking the namespace is simpler and as cheap.
        self._wake(namespace)
        return True

    def resolve(self, pod: Manifest) -> Resolved:
        """Everything ``pod``'s sidecar should hold now."""
        ns = (pod.get("metadata") or {}).get("namespace", "")
        return resolve(
            pod,
            self.policies.get(ns, {}),
            self.model_pods.get(ns, {}).values(),
            self.served_names.get(ns, {}),
            self.ownership_of(ns),
            held=self.held.get(ns, {}),
        )
