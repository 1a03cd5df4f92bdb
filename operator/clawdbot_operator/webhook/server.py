"""The admission endpoint: AdmissionReview in, a JSONPatch that injects the sidecar out.

The handler never fails a pod because of itself: any error in the decision is answered with
``allowed: true`` and no patch (logged and counted), so a webhook bug degrades to "no
sidecar", never to "no pods". Whether the API server admits pods when the webhook is
unreachable is the configuration's ``failurePolicy`` (a chart value).
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
from collections.abc import Awaitable, Callable, Collection, Mapping
from typing import Any, Protocol

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter

from clawdbot_operator.webhook.inject import Outcome, SidecarSettings, decide, inject, json_patch

log = logging.getLogger("clawdbot.operator.webhook")

MUTATE_PATH = "/inject-sidecar"
NamespaceLabels = Callable[[str], Awaitable[Mapping[str, str]]]
# How long a namespace's labels are trusted by the webhook before being read again.
NAMESPACE_LABELS_TTL_S = 10.0


class ObjectGetter(Protocol):
    async def get(
        self, api_version: str, kind: str, namespace: str, name: str
    ) -> dict[str, Any] | None:
        """The object, or None when it does not exist."""
        ...


class CachedNamespaceLabels:
    """A namespace's labels (the opt-in label may sit there), read at most once per
    ``ttl_s``: every pod creation calls the webhook, and most come in bursts."""

    def __init__(self, kube: ObjectGetter, ttl_s: float = NAMESPACE_LABELS_TTL_S) -> None:
        self.kube = kube
        self.ttl_s = ttl_s
        self._cache: dict[str, tuple[float, Mapping[str, str]]] = {}

    async def __call__(self, namespace: str) -> Mapping[str, str]:
        now = asyncio.get_running_loop().time()
        hit = self._cache.get(namespace)
        if hit is not None and now - hit[0] < self.ttl_s:
            return hit[1]
        ns = await self.kube.get("v1", "Namespace", "", namespace) if namespace else None
        labels: Mapping[str, str] = ((ns or {}).get("metadata") or {}).get("labels") or {}
        self._cache[namespace] = (now, labels)
        return labels


class WebhookMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.outcomes = Counter(
            "clawdbot_operator_injection_requests",
            "Pod admission requests by outcome (injected, not-opted-in, opted-out, "
            "already-injected, host-network, protected-namespace, not-watched, error).",
            ["outcome"],
            registry=self.registry,
        )


def review_response(
    uid: str, patch: list[dict[str, Any]] | None, warning: str | None = None
) -> Any:
    response: dict[str, Any] = {"uid": uid, "allowed": True}
    if patch:
        response["patchType"] = "JSONPatch"
        response["patch"] = base64.b64encode(json.dumps(patch).encode()).decode()
    if warning:
        response["warnings"] = [warning]
    return {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "response": response}


def build_app(
    settings: SidecarSettings,
    namespace_labels: NamespaceLabels,
    operator_namespace: str,
    metrics: WebhookMetrics | None = None,
    path: str = MUTATE_PATH,
    *,
    watched: Collection[str] | None = None,
) -> web.Application:
    """The webhook app; serve it over TLS (the API server only calls HTTPS webhooks).
    ``watched``: the operator's namespaces (None: every namespace); see ``decide``."""
    counters = metrics or WebhookMetrics()

    async def mutate(request: web.Request) -> web.Response:
        try:
            review = await request.json()
            req = review["request"]
            uid = str(req["uid"])
        except (ValueError, KeyError, TypeError):
            return web.json_response(
                {"error": "expected an admission.k8s.io/v1 AdmissionReview"}, status=400
            )
        try:
            if req.get("operation") != "CREATE" or (req.get("kind") or {}).get("kind") != "Pod":
                return web.json_response(review_response(uid, None))
            pod = req["object"]
            namespace = req.get("namespace") or (pod.get("metadata") or {}).get("namespace", "")
            labels = await namespace_labels(namespace)
            outcome = decide(pod, namespace, labels, operator_namespace, watched)
            counters.outcomes.labels(outcome.value).inc()
            if outcome != Outcome.INJECTED:
                return web.json_response(review_response(uid, None))
            patch = json_patch(pod, inject(pod, settings))
            return web.json_response(review_response(uid, patch))
        except Exception:
            log.exception("injection failed; admitting the pod without the sidecar")
            counters.outcomes.labels("error").inc()
            return web.json_response(
                review_response(uid, None, "clawdbot: sidecar injection failed; see operator logs")
            )

    app = web.Application()
    app.router.add_post(path, mutate)
    return app
