"""The RoutingPolicy controller: feeds the discovery state the sidecars are served from, and
writes RoutingPolicy status.

Watches (kopf ``on.event``, level-based, no finalizers):

* RoutingPolicies: a valid spec goes into the discovery state; every policy gets status.
* ModelDeployments: the model name each one serves (what sidecars ask the local model for),
  and their UIDs;
* the Deployments and ReplicaSets of ModelDeployments: who controls whom, by UID, so that
  only the pods of a ModelDeployment's own ReplicaSets count as its endpoints (a label alone
  is a claim any pod can make);
* model pods (label ``clawdbot.io/model-deployment``): the local endpoints; a change
  refreshes the status of the namespace's policies (ready endpoints, Degraded).
* injected pods (annotation ``clawdbot.io/injected``): a change refreshes the status of the
  namespace's policies (matched pods);
* pods with an open discovery stream: a relabelled or deleted pod ends its stream (see
  ``discovery.server``).

Two ``@kopf.index``es replace API reads that every pod event used to make: the namespace's
RoutingPolicies (a LIST per model-pod or injected-pod event) and its injected pods (a LIST of
every pod in the namespace per policy status). kopf hands indexes to its handlers only, and
starts them once the indexes are filled; the status refresh a new leader runs outside any
handler (see ``manager``) reads the API instead, once.

Only the leader writes status; every replica keeps the discovery state (any replica may
serve a sidecar's stream).
"""

from __future__ import annotations

import logging
import posixpath
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Protocol

import kopf
from pydantic import ValidationError

from clawdbot_api.errors import describe, dotted
from clawdbot_api.v1alpha1 import API_VERSION, GROUP, VERSION, LabelSelector, RoutingPolicySpec
from clawdbot_operator.builders.meta import LABEL_MODEL_DEPLOYMENT, MANAGED_BY, controller_uid
from clawdbot_operator.discovery.resolve import endpoints_for, policy_for_pod
from clawdbot_operator.discovery.server import SecretGetter
from clawdbot_operator.discovery.state import DiscoveryState
from clawdbot_operator.kube import KubeError, Obj
from clawdbot_operator.policystatus import (
    INLINE_PASSWORD_REASON,
    inline_redis_password,
    models_without_endpoints,
    policy_conditions,
)
from clawdbot_operator.webhook.inject import AUDIT_DIR, INJECTED_ANNOTATION

log = logging.getLogger("clawdbot.operator.routingpolicy")

Manifest = Mapping[str, Any]


class PolicyKube(Protocol):
    """The API calls the controller makes."""

    async def get(self, api_version: str, kind: str, namespace: str, name: str) -> Obj | None:
        """The object, or None when it does not exist."""
        ...

    async def list(
        self, api_version: str, kind: str, namespace: str | None, label_selector: str = ""
    ) -> list[Obj]:
        """Objects of a kind in a namespace."""
        ...

    async def patch_status(
        self, api_version: str, kind: str, namespace: str, name: str, status: Obj
    ) -> Obj:
        """JSON merge patch of an object's status subresource."""
        ...

    async def post_event(self, involved: Obj, type_: str, reason: str, message: str) -> None:
        """A core/v1 Event about ``involved`` (best effort)."""
        ...


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def in_audit_dir(path: str | None) -> bool:
    """A file path an injected sidecar can write (inside its audit emptyDir)."""
    if not path:
        return False
    return posixpath.normpath(path).startswith(f"{AUDIT_DIR}/")


def _pod_meta(body: Manifest) -> dict[str, Any]:
    """What policy resolution reads of a pod: its name, labels and annotations."""
    meta = body.get("metadata") or {}
    return {"metadata": {"name": meta.get("name"), "labels": dict(meta.get("labels") or {}),
                         "annotations": dict(meta.get("annotations") or {})}}  # fmt: skip


def _policy_copy(body: Manifest) -> dict[str, Any]:
    """A policy as the status refresh needs it, detached from kopf's live body."""
    return {
        "metadata": dict(body.get("metadata") or {}),
        "spec": dict(body.get("spec") or {}),
        "status": dict(body.get("status") or {}),
    }


class RoutingPolicyController:
    """Discovery state and RoutingPolicy status; see the module docstring."""

    def __init__(
        self,
        kube: PolicyKube,
        state: DiscoveryState,
        is_leader: Callable[[], bool] = lambda: True,
        *,
        get_secret: SecretGetter,
    ) -> None:
        self.kube = kube
        self.state = state
        self.is_leader = is_leader  # only the leader writes RoutingPolicy status
        self.get_secret = get_secret

    def register(self, registry: kopf.OperatorRegistry) -> None:
        """kopf indexes and handlers feeding the discovery state and RoutingPolicy status."""

        # An index reaches handlers as the keyword argument named by its id.
        @kopf.index(GROUP, VERSION, "routingpolicies", id="routing_policies", registry=registry)
        def routing_policies(body: kopf.Body, **_: Any) -> dict[str, dict[str, Any]]:
            return {body.metadata.namespace or "": _policy_copy(body)}

        @kopf.index(
            "v1", "pods", id="injected_pods",
            annotations={INJECTED_ANNOTATION: kopf.PRESENT}, registry=registry,
        )  # fmt: skip
        def injected_pods(body: kopf.Body, **_: Any) -> dict[str, dict[str, Any]]:
            return {body.metadata.namespace or "": _pod_meta(body)}

        @kopf.on.event(GROUP, VERSION, "routingpolicies", id="policies", registry=registry)
        async def policy_event(body: kopf.Body, type: str | None, **kwargs: Any) -> None:
            ns, name = body.metadata.namespace or "", body.metadata.name or ""
            if type == "DELETED":
                self.state.set_policy(ns, name, None)
                return
            await self.sync_policy(dict(body), _stored(kwargs, "injected_pods", ns))

        @kopf.on.event(GROUP, VERSION, "modeldeployments", id="served-name", registry=registry)
        async def served_name(body: kopf.Body, type: str | None, **kwargs: Any) -> None:
            ns, name = body.metadata.namespace or "", body.metadata.name or ""
            model = None if type == "DELETED" else (body.get("spec") or {}).get("model", {})
            uid = body.metadata.uid
            if self.state.set_served_name(ns, name, model.get("name") if model else None, uid):
                await self._refresh_indexed(ns, kwargs)  # its pods may count now, or no more

        @kopf.on.event(
            "apps", "v1", "deployments", id="model-deployments-deployments",
            labels={LABEL_MODEL_DEPLOYMENT: kopf.PRESENT,
                    "app.kubernetes.io/managed-by": MANAGED_BY},
            registry=registry,
        )  # fmt: skip
        async def deployment(body: kopf.Body, type: str | None, **kwargs: Any) -> None:
            await self._set_controller(body, type, "Deployment", "ModelDeployment", kwargs)

        @kopf.on.event(
            "apps", "v1", "replicasets", id="model-replicasets",
            labels={LABEL_MODEL_DEPLOYMENT: kopf.PRESENT}, registry=registry,
        )  # fmt: skip
        async def replica_set(body: kopf.Body, type: str | None, **kwargs: Any) -> None:
            await self._set_controller(body, type, "ReplicaSet", "Deployment", kwargs)

        @kopf.on.event(
            "v1", "pods", id="model-pods",
            labels={LABEL_MODEL_DEPLOYMENT: kopf.PRESENT}, registry=registry,
        )  # fmt: skip
        async def model_pod(body: kopf.Body, type: str | None, **kwargs: Any) -> None:
            ns, name = body.metadata.namespace or "", body.metadata.name or ""
            self.state.set_model_pod(ns, name, None if type == "DELETED" else dict(body))
            await self._refresh_indexed(ns, kwargs)

        @kopf.on.event(
            "v1", "pods", id="subscribed-pods", registry=registry,
            when=lambda namespace, name, **_: self.state.is_subscribed(namespace or "", name),
        )  # fmt: skip
        async def subscribed_pod(body: kopf.Body, type: str | None, **_: Any) -> None:
            # A pod with an open discovery stream: relabelled or deleted, its stream must know.
            pod = None if type == "DELETED" else dict(body)
            self.state.set_subscribed_pod(
                body.metadata.namespace or "", body.metadata.name or "", pod
            )

        @kopf.on.event(
            "v1", "pods", id="injected-pods",
            annotations={INJECTED_ANNOTATION: kopf.PRESENT}, registry=registry,
        )  # fmt: skip
        async def injected_pod(body: kopf.Body, **kwargs: Any) -> None:
            await self._refresh_indexed(body.metadata.namespace or "", kwargs)

    async def _set_controller(
        self, body: kopf.Body, type_: str | None, kind: str, owner_kind: str,
        kwargs: Mapping[str, Any],
    ) -> None:  # fmt: skip
        """Record who controls a Deployment or ReplicaSet; a change (a rollout's new
        ReplicaSet, often seen after its first pods) may make pods count as endpoints."""
        ns = body.metadata.namespace or ""
        owner = None if type_ == "DELETED" else controller_uid(body, owner_kind)
        if self.state.set_controller(ns, kind, body.metadata.uid or "", owner):
            await self._refresh_indexed(ns, kwargs)

    async def _refresh_indexed(self, namespace: str, kwargs: Mapping[str, Any]) -> None:
        """``refresh`` from the indexes kopf passes to a handler."""
        await self.refresh(
            namespace,
            _stored(kwargs, "routing_policies", namespace),
            _stored(kwargs, "injected_pods", namespace),
        )

    async def sync_policy(self, body: Manifest, injected: Sequence[Manifest] | None = None) -> None:
        """Take a policy's spec into the discovery state (when valid) and write its status.
        ``injected``: the namespace's injected pods (None: read them from the API)."""
        meta = body.get("metadata") or {}
        ns, name = meta.get("namespace", ""), meta.get("name", "")
        raw = dict(body.get("spec") or {})
        try:
            spec = RoutingPolicySpec.model_validate(raw)
        except ValidationError as exc:
            # Sidecars could not apply it: it never goes down the stream. They keep the
            # policy's last valid spec (or, without one, whatever they hold).
            kept = self.state.set_invalid_policy(ns, name, _selector_of(raw))
            effect = (
                "its sidecars keep its last valid spec"
                if kept
                else "its pods' sidecars get no policy until it is fixed"
            )
            await self._policy_status(body, None, f"{invalid_spec(exc)} ({effect})", injected)
            return
        self.state.set_policy(ns, name, spec)
        await self._policy_status(body, spec, None, injected)

    async def refresh(
        self,
        namespace: str,
        policies: Iterable[Manifest] | None = None,
        injected: Sequence[Manifest] | None = None,
    ) -> None:
        """Recompute the status of a namespace's policies (pods or endpoints changed);
        ``policies`` and ``injected`` from kopf's indexes, else read from the API."""
        try:
            if policies is None:
                policies = await self.kube.list(API_VERSION, "RoutingPolicy", namespace)
            for policy in policies:
                await self.sync_policy(policy, injected)
        except KubeError as exc:
            log.warning("cannot refresh RoutingPolicies in %s: %s", namespace, exc)

    async def refresh_all(self, namespaces: Sequence[str]) -> None:
        """Every watched namespace's policies, from the API (a new leader catching up on the
        status writes it skipped as a follower)."""
        for ns in namespaces or [""]:
            await self.refresh(ns)

    async def _problems(self, ns: str, spec: RoutingPolicySpec) -> list[str]:
        """What keeps a valid spec from being in force: missing references, unusable paths."""
        problems: list[str] = []
        refs = {
            "cloud.apiKeySecretRef": spec.cloud.api_key_secret_ref if spec.cloud else None,
            "cache.redisPasswordSecretRef": spec.cache.redis_password_secret_ref,
        }
        for field_name, ref in refs.items():
            if ref is not None and not await self.get_secret(ns, ref.name, ref.key):
                problems.append(f"{field_name}: Secret {ref.name} key {ref.key} not found")
        audit = spec.audit
        if audit.enabled and audit.sink == "file" and not in_audit_dir(audit.path):
            problems.append(
                f"audit.path: injected sidecars write files only under {AUDIT_DIR}/ (an "
                "emptyDir that lives as long as the pod); use sink stdout to keep the "
                "records with the pod's logs"
            )
        for model in spec.local_models:
            if await self.kube.get(API_VERSION, "ModelDeployment", ns, model.name) is None:
                problems.append(f"localModels: ModelDeployment {model.name} not found")
        return problems

    async def _matched_pods(self, ns: str, name: str, injected: Sequence[Manifest] | None) -> int:
        """Injected pods whose sidecar resolves to this policy."""
        if injected is None:
            pods = await self.kube.list("v1", "Pod", ns)
            injected = [
                p for p in pods
                if INJECTED_ANNOTATION in ((p.get("metadata") or {}).get("annotations") or {})
            ]  # fmt: skip
        policies = self.state.policies.get(ns, {})
        return sum(1 for pod in injected if (found := policy_for_pod(pod, policies)) and
                   found[0] == name)  # fmt: skip

    async def _policy_status(
        self,
        body: Manifest,
        spec: RoutingPolicySpec | None,
        invalid: str | None,
        injected: Sequence[Manifest] | None = None,
    ) -> None:
        """Conditions (see ``policystatus``), pods using the policy, ready endpoints."""
        if not self.is_leader():
            return  # followers keep the discovery state, the leader writes the status
        meta = body.get("metadata") or {}
        ns, name = meta.get("namespace", ""), meta.get("name", "")
        problems: list[str] = []
        ready_endpoints = matched = 0
        idle: list[str] = []
        if spec is not None:
            problems += await self._problems(ns, spec)
            matched = await self._matched_pods(ns, name, injected)
            endpoints = endpoints_for(
                spec,
                self.state.model_pods.get(ns, {}).values(),
                self.state.served_names.get(ns, {}),
                self.state.ownership_of(ns),
            )
            ready_endpoints = len(endpoints)
            idle = models_without_endpoints(spec, (e.model_deployment for e in endpoints))
        generation = meta.get("generation")
        conditions = policy_conditions(
            spec=spec,
            problems=problems,
            invalid=invalid,
            idle_models=idle,
            generation=generation,
            previous=(body.get("status") or {}).get("conditions") or [],
            now=_now(),
        )
        status = {
            "observedGeneration": generation,
            "conditions": conditions,
            "matchedPods": matched,
            "readyEndpoints": ready_endpoints,
        }
        if spec is not None and (body.get("status") or {}).get("observedGeneration") != generation:
            await self._warn_once(body, spec)
        if (body.get("status") or {}) == {**(body.get("status") or {}), **status}:
            return  # unchanged: don't write (and don't trigger another event)
        try:
            await self.kube.patch_status(API_VERSION, "RoutingPolicy", ns, name, status)
        except KubeError as exc:
            log.warning("cannot update status of RoutingPolicy %s/%s: %s", ns, name, exc)

    async def _warn_once(self, body: Manifest, spec: RoutingPolicySpec) -> None:
        """Warning Events about a generation of the spec that works but is unsafe; called
        once per generation (before its status is first written)."""
        warning = inline_redis_password(spec)
        if warning is None:
            return
        involved = {"apiVersion": API_VERSION, "kind": "RoutingPolicy",
                    "metadata": dict(body.get("metadata") or {})}  # fmt: skip
        await self.kube.post_event(involved, "Warning", INLINE_PASSWORD_REASON, warning)


def invalid_spec(exc: ValidationError) -> str:
    """Every problem of a spec the types refuse, each with the field it is in."""
    return "; ".join(f"{dotted(('spec', *err['loc']))}: {describe(err)}" for err in exc.errors())


def _selector_of(raw: Mapping[str, Any]) -> LabelSelector | None:
    """The pod selector of a spec that is invalid elsewhere (None when it is not readable
    either: then only pods that name the policy by annotation are held)."""
    try:
        return LabelSelector.model_validate(raw.get("podSelector") or {})
    except ValidationError:
        return None


def _stored(kwargs: Mapping[str, Any], index_name: str, namespace: str) -> list[Any]:
    """The values one of kopf's indexes (a handler keyword argument named after the index
    function) holds for one namespace ([] when it holds none)."""
    index: kopf.Index[str, Any] = kwargs[index_name]
    return list(index[namespace]) if namespace in index else []
