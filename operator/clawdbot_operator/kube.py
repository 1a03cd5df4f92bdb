"""A small asyncio Kubernetes client: server-side apply, get, list, delete, status, events.

It speaks to the API by path (``/apis/GROUP/VERSION/namespaces/NS/PLURAL/NAME``) through
kubernetes_asyncio's authenticated ApiClient, so one method serves every kind the operator
owns, and apply is real server-side apply (``application/apply-patch+yaml`` with a field
manager and ``force``): idempotent, restart-safe, and it takes fields back from anyone who
edited them by hand.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import Any, Final

from kubernetes_asyncio import client as k8s
from kubernetes_asyncio import config as k8s_config
from kubernetes_asyncio.client.exceptions import ApiException

from clawdbot_api.v1alpha1 import API_VERSION

log = logging.getLogger(__name__)

Obj = dict[str, Any]

PLURALS: Final[dict[str, str]] = {
    "Deployment": "deployments",
    "Service": "services",
    "PodDisruptionBudget": "poddisruptionbudgets",
    "NetworkPolicy": "networkpolicies",
    "HorizontalPodAutoscaler": "horizontalpodautoscalers",
    "ControllerRevision": "controllerrevisions",
    "ReplicaSet": "replicasets",
    "Pod": "pods",
    "Event": "events",
    "ModelDeployment": "modeldeployments",
    "RoutingPolicy": "routingpolicies",
    "Secret": "secrets",
    "ConfigMap": "configmaps",
    "Namespace": "namespaces",
    "MutatingWebhookConfiguration": "mutatingwebhookconfigurations",
    "APIService": "apiservices",
    "Lease": "leases",
}
# Every call has a deadline: a hung connection must not stall a reconcile forever.
REQUEST_TIMEOUT_S: Final = 30


class KubeError(RuntimeError):
    """The API server refused a request; ``status`` is the HTTP status, ``reason`` the
    API server's own sentence (a Status object's message, else the HTTP reason)."""

    def __init__(self, status: int, message: str, reason: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason or message


def _status_message(body: str | None) -> str | None:
    """The message of a Kubernetes Status object, if ``body`` is one."""
    try:
        message = json.loads(body).get("message") if body else None
    except (ValueError, AttributeError):
        return None
    return str(message) if message else None


def resource_path(
    api_version: str, kind: str, namespace: str | None, name: str | None = None
) -> str:
    """The REST path of a collection (no name) or an object."""
    base = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
    path = f"{base}/namespaces/{namespace}" if namespace else base
    path += f"/{PLURALS[kind]}"
    return f"{path}/{name}" if name else path


async def connect(kubeconfig: str | None, context: str | None = None) -> k8s.ApiClient:
    """An ApiClient from ``kubeconfig`` (its ``context``, else the current one), else
    in-cluster, else the default kubeconfig."""
    configuration = k8s.Configuration()
    if kubeconfig:
        await k8s_config.load_kube_config(
            config_file=kubeconfig, context=context, client_configuration=configuration
        )
    else:
        try:
            k8s_config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
        except k8s_config.ConfigException:
            await k8s_config.load_kube_config(client_configuration=configuration)
    return k8s.ApiClient(configuration)


class Kube:
    """The operations the reconciler needs, on any kind in PLURALS."""

    def __init__(self, api: k8s.ApiClient, field_manager: str) -> None:
        self.api = api
        self.field_manager = field_manager

    async def close(self) -> None:
        """Close the API client's connections."""
        await self.api.close()

    async def _call(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        content_type: str = "application/json",
        query: list[tuple[str, str]] | None = None,
    ) -> Obj:
        try:
            result = await self.api.call_api(
                path,
                method,
                query_params=query or [],
                header_params={"Accept": "application/json", "Content-Type": content_type},
                body=body,
                response_types_map={200: "object", 201: "object", 202: "object"},
                auth_settings=["BearerToken"],
                _return_http_data_only=True,
                _request_timeout=REQUEST_TIMEOUT_S,
            )
        except ApiException as exc:
            raise _kube_error(exc, f"{method} {path}") from exc
        return result if isinstance(result, dict) else {}

    async def apply(self, manifest: Obj) -> Obj:
        """Server-side apply ``manifest`` (create or update) as this operator's field manager."""
        meta = manifest["metadata"]
        path = resource_path(
            manifest["apiVersion"], manifest["kind"], meta.get("namespace"), meta["name"]
        )
        return await self._call(
            "PATCH",
            path,
            body=manifest,
            content_type="application/apply-patch+yaml",
            query=[("fieldManager", self.field_manager), ("force", "true")],
        )

    async def create(self, manifest: Obj) -> Obj:
        """Create ``manifest``; a KubeError with status 409 when it already exists."""
        meta = manifest["metadata"]
        path = resource_path(manifest["apiVersion"], manifest["kind"], meta.get("namespace"))
        return await self._call(
            "POST", path, body=manifest, query=[("fieldManager", self.field_manager)]
        )

    async def replace(self, manifest: Obj) -> Obj:
        """Replace (PUT) an object. With ``metadata.resourceVersion`` set this is an optimistic
        update: a KubeError with status 409 when the object changed since it was read."""
        meta = manifest["metadata"]
        path = resource_path(
            manifest["apiVersion"], manifest["kind"], meta.get("namespace"), meta["name"]
        )
        return await self._call(
            "PUT", path, body=manifest, query=[("fieldManager", self.field_manager)]
        )

    async def get(self, api_version: str, kind: str, namespace: str, name: str) -> Obj | None:
        """The object, or None when it does not exist."""
        try:
            return await self._call("GET", resource_path(api_version, kind, namespace, name))
        except KubeError as exc:
            if exc.status == 404:
                return None
            raise

    async def list(
        self, api_version: str, kind: str, namespace: str | None, label_selector: str = ""
    ) -> list[Obj]:
        """Objects of a kind in a namespace (every namespace for None), by label selector."""
        query = [("labelSelector", label_selector)] if label_selector else []
        found = await self._call("GET", resource_path(api_version, kind, namespace), query=query)
        items: list[Obj] = found.get("items", [])
        return items

    async def delete(self, api_version: str, kind: str, namespace: str, name: str) -> bool:
        """Delete; False when it was already gone."""
        try:
            await self._call(
                "DELETE",
                resource_path(api_version, kind, namespace, name),
                body={"propagationPolicy": "Background"},
            )
        except KubeError as exc:
            if exc.status == 404:
                return False
            raise
        return True

    async def patch_model_deployment(
        self, namespace: str, name: str, patch: Obj, *, status: bool = False
    ) -> Obj:
        """JSON merge patch of a ModelDeployment (its status subresource with ``status``)."""
        path = resource_path(API_VERSION, "ModelDeployment", namespace, name)
        if status:
            path += "/status"
        return await self._call(
            "PATCH", path, body=patch, content_type="application/merge-patch+json"
        )

    async def patch_status(
        self, api_version: str, kind: str, namespace: str, name: str, status: Obj
    ) -> Obj:
        """JSON merge patch of an object's status subresource."""
        path = resource_path(api_version, kind, namespace, name) + "/status"
        return await self._call(
            "PATCH", path, body={"status": status}, content_type="application/merge-patch+json"
        )

    async def pod_log(
        self, namespace: str, pod: str, container: str, previous: bool = False
    ) -> str:
        """The log of one container of a pod (of its previous run with ``previous``)."""
        try:
            text = await k8s.CoreV1Api(self.api).read_namespaced_pod_log(
                pod, namespace, container=container, previous=previous,
                _request_timeout=REQUEST_TIMEOUT_S,
            )  # fmt: skip
        except ApiException as exc:
            raise _kube_error(exc, f"GET log of pod {namespace}/{pod}") from exc
        return str(text)

    async def post_event(self, involved: Obj, type_: str, reason: str, message: str) -> None:
        """A core/v1 Event about ``involved`` (best effort: a lost Event is only logged)."""
        meta = involved["metadata"]
        now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        event = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
            "involvedObject": {
                "apiVersion": involved.get("apiVersion", API_VERSION),
                "kind": involved.get("kind", "ModelDeployment"),
                "name": meta["name"],
                "namespace": meta["namespace"],
                "uid": meta.get("uid"),
                "resourceVersion": meta.get("resourceVersion"),
            },
            "type": type_,
            "reason": reason,
            "message": message,
            "source": {"component": self.field_manager},
            "reportingComponent": self.field_manager,
            "reportingInstance": self.field_manager,
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }
        try:
            await self._call("POST", resource_path("v1", "Event", meta["namespace"]), body=event)
        except KubeError as exc:
            log.warning("could not post event %s on %s: %s", reason, meta["name"], exc)


def _kube_error(exc: ApiException, what: str) -> KubeError:
    detail = exc.body.decode() if isinstance(exc.body, bytes) else exc.body
    reason = _status_message(detail) or detail or exc.reason or ""
    return KubeError(int(exc.status or 0), f"{what}: {detail or exc.reason}", str(reason))
