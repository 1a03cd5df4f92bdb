"""The operator's routing plane: the injection webhook, the discovery stream, their TLS, and
the watches and RoutingPolicy status that feed them.

    RoutingPlane(kube, config, store, namespace).register(registry)   # kopf handlers
    await plane.start(bind_address)                                   # servers, certificates
    ...
    await plane.stop()

Certificates: ``tls.ServingCertificates``, shared with the metrics API when the
caller passes one in (one CA for every server): from ``webhook_cert_dir`` (cert-manager), else
self-issued and kept in the ``webhook_cert_secret`` Secret (shared by replicas), else
self-issued in memory. The CA goes into the webhook configuration's caBundle and into every
injected sidecar (to verify the discovery stream).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import os
import posixpath
from collections.abc import Callable, Collection, Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
import kopf
from aiohttp import web
from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from pydantic import ValidationError

from clawdbot_api.v1alpha1 import API_VERSION, GROUP, RoutingPolicySpec
from clawdbot_operator import tls
from clawdbot_operator.builders.meta import LABEL_MODEL_DEPLOYMENT
from clawdbot_operator.config import OperatorConfig
from clawdbot_operator.discovery.relay import PeerRelay, service_account_of
from clawdbot_operator.discovery.resolve import endpoints_for, pod_ready, policy_for_pod
from clawdbot_operator.discovery.server import (
    DiscoveryServicer,
    DiscoveryState,
    add_to_server,
)
from clawdbot_operator.discovery.tokenreview import KubeTokenReviewer
from clawdbot_operator.kube import Kube, KubeError
from clawdbot_operator.loadreports import LoadReportStore
from clawdbot_operator.policystatus import models_without_endpoints, policy_conditions
from clawdbot_operator.webhook.inject import AUDIT_DIR, INJECTED_ANNOTATION, SidecarSettings
from clawdbot_operator.webhook.server import WebhookMetrics, build_app

log = logging.getLogger("clawdbot.operator.routing")

# How long a namespace's labels are trusted by the webhook before being read again.
NAMESPACE_LABELS_TTL_S = 10.0
VERSION = API_VERSION.split("/")[1]


class RoutingPlane:
    """Everything between the operator and the sidecars."""

    def __init__(
        self,
        kube: Kube,
        config: OperatorConfig,
        store: LoadReportStore,
        namespace: str,
        is_leader: Callable[[], bool] = lambda: True,
        *,
        registry: CollectorRegistry | None = None,
        certificates: tls.ServingCertificates | None = None,
        watch_namespaces: Collection[str] | None = None,
    ) -> None:
        """``watch_namespaces``: where RoutingPolicies are resolved (None: everywhere); the
        webhook leaves pods elsewhere alone, as their sidecar would never get a policy."""
        self.kube = kube
        self.watch_namespaces = frozenset(watch_namespaces) if watch_namespaces else None
        self.is_leader = is_leader  # only the leader writes RoutingPolicy status
        self.config = config
        self.namespace = namespace
        self.state = DiscoveryState()
        self.store = store
        # The caller makes it when the metrics API shares it (one CA for every server).
        self.certificates = certificates or tls.ServingCertificates(
            kube,
            namespace,
            self.dns_names(),
            cert_dir=config.webhook_cert_dir,
            secret=config.webhook_cert_secret,
            webhook_configuration=config.webhook_configuration if config.webhook_port else "",
        )
        self.webhook_metrics = WebhookMetrics(registry)
        self.webhook_metrics.registry.register(_RelayCollector(self))
        self._runner: web.AppRunner | None = None
        self._grpc: grpc.aio.Server | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._ns_labels: dict[str, tuple[float, Mapping[str, str]]] = {}
        self.webhook_port = 0
        self.discovery_port = 0
        self.relay: PeerRelay | None = None
        self._grpc_cert_version = 0

    # -- certificates -------------------------------------------------------------------

    def dns_names(self) -> list[str]:
        """The names the serving certificate covers when the plane makes its own."""
        services = (self.config.webhook_service, self.config.discovery_service)
        return tls.service_names(services, self.namespace, "localhost")

    @property
    def bundle(self) -> tls.CertBundle | None:
        """The certificate the webhook and the discovery stream serve."""
        return self.certificates.bundle

    def _grpc_cert(self) -> grpc.ServerCertificateConfiguration:
        assert self.bundle is not None
        return grpc.ssl_server_certificate_configuration([(self.bundle.key, self.bundle.cert)])

    def _fetch_grpc_cert(self) -> grpc.ServerCertificateConfiguration | None:
        """gRPC asks before each handshake; a renewed certificate is handed over once."""
        if self._grpc_cert_version == self.certificates.version:
            return None
        self._grpc_cert_version = self.certificates.version
        return self._grpc_cert()

    # -- servers ------------------------------------------------------------------------

    def sidecar_settings(self) -> SidecarSettings:
        assert self.bundle is not None
        return SidecarSettings(
            image=self.config.image_sidecar,
            discovery_address=(
                f"{self.config.discovery_service}.{self.namespace}.svc:{self.config.discovery_port}"
            ),
            discovery_ca=self.bundle.ca_cert.decode() if self.config.discovery_port else "",
        )

    async def namespace_labels(self, namespace: str) -> Mapping[str, str]:
        now = asyncio.get_running_loop().time()
        hit = self._ns_labels.get(namespace)
        if hit is not None and now - hit[0] < NAMESPACE_LABELS_TTL_S:
            return hit[1]
        ns = await self.kube.get("v1", "Namespace", "", namespace) if namespace else None
        labels: Mapping[str, str] = ((ns or {}).get("metadata") or {}).get("labels") or {}
        self._ns_labels[namespace] = (now, labels)
        return labels

    async def _get_pod(self, namespace: str, name: str) -> Mapping[str, Any] | None:
        return await self.kube.get("v1", "Pod", namespace, name)

    async def _get_secret(self, namespace: str, name: str, key: str) -> str | None:
        try:
            secret = await self.kube.get("v1", "Secret", namespace, name)
        except KubeError as exc:
            log.warning("cannot read Secret %s/%s: %s", namespace, name, exc)
            return None
        value = ((secret or {}).get("data") or {}).get(key)
        return base64.b64decode(value).decode().strip() if value else None

    async def start(self, bind_address: str) -> None:
        """Certificates, then the webhook and discovery servers, then the renewal loop."""
        cfg = self.config
        if not (cfg.webhook_port or cfg.discovery_port):
            return
        await self.certificates.start()
        if cfg.webhook_port:
            app = build_app(
                self.sidecar_settings(),
                self.namespace_labels,
                self.namespace,
                self.webhook_metrics,
                path=cfg.webhook_path,
                watched=self.watch_namespaces,
            )
            self._runner = web.AppRunner(app, access_log=None)
            await self._runner.setup()
            context = self.certificates.server_ssl()
            site = web.TCPSite(self._runner, bind_address, cfg.webhook_port, ssl_context=context)
            await site.start()
            self.webhook_port = cfg.webhook_port
            log.info("injection webhook on https://%s:%d%s", bind_address, cfg.webhook_port,
                     cfg.webhook_path)  # fmt: skip
        if cfg.discovery_port:
            assert self.bundle is not None
            self._grpc = grpc.aio.server()
            self.relay, peer_account = self._peer_relay()
            servicer = DiscoveryServicer(
                self.state,
                KubeTokenReviewer(self.kube.api),
                self._get_pod,
                self.store,
                get_secret=self._get_secret,
                relay=self.relay,
                peer_account=peer_account,
            )
            add_to_server(self._grpc, servicer)
            self._grpc_cert_version = self.certificates.version
            creds = grpc.dynamic_ssl_server_credentials(self._grpc_cert(), self._fetch_grpc_cert)
            self.discovery_port = self._grpc.add_secure_port(
                f"{bind_address}:{cfg.discovery_port}", creds
            )
            await self._grpc.start()
            log.info("discovery stream on %s:%d (TLS)", bind_address, self.discovery_port)
            if self.relay is not None:
                self.relay.start()

    def _peer_relay(self) -> tuple[PeerRelay | None, tuple[str, str] | None]:
        """The relay of load reports to the other replicas, and the (namespace, service
        account) whose tokens may relay to this one; (None, None) when not configured."""
        cfg = self.config
        token_file = Path(cfg.peer_token_file)
        if not cfg.peer_selector:
            return None, None
        if not token_file.is_file():
            log.warning("peer relay off: no token at %s (mount a projected serviceAccountToken, "
                        "audience clawdbot, there)", token_file)  # fmt: skip
            return None, None
        account = service_account_of(token_file.read_text().strip())
        if account is None:
            log.warning("peer relay off: %s is not a service-account token", token_file)
            return None, None
        own_name = os.environ.get("POD_NAME", "")
        port = cfg.discovery_port
        # Every replica's certificate names the discovery Service; peers are dialled by IP.
        target = f"{cfg.discovery_service}.{self.namespace}.svc"

        async def list_peers() -> list[str]:
            pods = await self.kube.list("v1", "Pod", self.namespace, cfg.peer_selector)
            return [
                f"{p['status']['podIP']}:{port}"
                for p in pods
                if p["metadata"]["name"] != own_name and pod_ready(p)
            ]

        def channel(address: str) -> grpc.aio.Channel:
            assert self.bundle is not None
            creds = grpc.ssl_channel_credentials(self.bundle.ca_cert)
            return grpc.aio.secure_channel(
                address, creds, options=[("grpc.ssl_target_name_override", target)]
            )

        relay = PeerRelay(own_name or "operator", list_peers, channel, token_file)
        log.info("relaying load reports to peers %r on port %d", cfg.peer_selector, port)
        return relay, account

    async def stop(self) -> None:
        await self.certificates.stop()
        if self.relay is not None:
            await self.relay.stop()
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._grpc is not None:
            # On SIGTERM kopf cancels the loop's other tasks, grpc's serving loop among
            # them; its shutdown then reports that cancellation, which is expected here.
            with contextlib.suppress(asyncio.CancelledError):
                await self._grpc.stop(grace=2)
        if self._runner is not None:
            await self._runner.cleanup()

    # -- watches ------------------------------------------------------------------------

    def register(self, registry: kopf.OperatorRegistry) -> None:
        """kopf handlers feeding the discovery state and RoutingPolicy status."""

        @kopf.on.event(GROUP, VERSION, "routingpolicies", registry=registry)
        async def policy_event(body: kopf.Body, type: str | None, **_: Any) -> None:
            ns, name = body.metadata.namespace or "", body.metadata.name or ""
            if type == "DELETED":
                await self.state.set_policy(ns, name, None)
                return
            await self._sync_policy(dict(body))

        @kopf.on.event(GROUP, VERSION, "modeldeployments", id="served-name", registry=registry)
        async def served_name(body: kopf.Body, type: str | None, **_: Any) -> None:
            ns, name = body.metadata.namespace or "", body.metadata.name or ""
            model = None if type == "DELETED" else (body.get("spec") or {}).get("model", {})
            await self.state.set_served_name(ns, name, model.get("name") if model else None)

        @kopf.on.event(
            "v1", "pods", labels={LABEL_MODEL_DEPLOYMENT: kopf.PRESENT}, registry=registry
        )
        async def model_pod(body: kopf.Body, type: str | None, **_: Any) -> None:
            ns, name = body.metadata.namespace or "", body.metadata.name or ""
            await self.state.set_model_pod(ns, name, None if type == "DELETED" else dict(body))
            await self.refresh_policies(ns)

        @kopf.on.event(
            "v1", "pods", id="injected-pods",
            annotations={INJECTED_ANNOTATION: kopf.PRESENT}, registry=registry,
        )  # fmt: skip
        async def injected_pod(body: kopf.Body, **_: Any) -> None:
            await self.refresh_policies(body.metadata.namespace or "")

    async def _sync_policy(self, body: Mapping[str, Any]) -> None:
        meta = body.get("metadata") or {}
        ns, name = meta.get("namespace", ""), meta.get("name", "")
        try:
            spec = RoutingPolicySpec.model_validate(dict(body.get("spec") or {}))
        except ValidationError as exc:
            await self._policy_status(body, None, str(exc).splitlines()[0])
            return
        await self.state.set_policy(ns, name, spec)
        await self._policy_status(body, spec, None)

    async def refresh_policies(self, namespace: str) -> None:
        """Recompute the status of a namespace's policies (pods or endpoints changed)."""
        try:
            for policy in await self.kube.list(API_VERSION, "RoutingPolicy", namespace):
                await self._sync_policy(policy)
        except KubeError as exc:
            log.warning("cannot refresh RoutingPolicies in %s: %s", namespace, exc)

    async def _policy_status(
        self, body: Mapping[str, Any], spec: RoutingPolicySpec | None, invalid: str | None
    ) -> None:
        """Conditions (see ``policystatus``), pods using the policy, ready endpoints."""
        if not self.is_leader():
            return  # followers keep the discovery state, the leader writes the status
        meta = body.get("metadata") or {}
        ns, name = meta.get("namespace", ""), meta.get("name", "")
        problems: list[str] = [invalid] if invalid else []
        ready_endpoints = matched = 0
        idle: list[str] = []
        if spec is not None:
            if spec.cloud and spec.cloud.api_key_secret_ref:
                ref = spec.cloud.api_key_secret_ref
                if not await self._get_secret(ns, ref.name, ref.key):
                    problems.append(
                        f"cloud.apiKeySecretRef: Secret {ref.name} key {ref.key} not found"
                    )
            audit = spec.audit
            if audit.enabled and audit.sink == "file" and not _in_audit_dir(audit.path):
                problems.append(
                    f"audit.path: injected sidecars write files only under {AUDIT_DIR}/ (an "
                    "emptyDir that lives as long as the pod); use sink stdout to keep the "
                    "records with the pod's logs"
                )
            for model in spec.local_models:
                if await self.kube.get(API_VERSION, "ModelDeployment", ns, model.name) is None:
                    problems.append(f"localModels: ModelDeployment {model.name} not found")
            pods = await self.kube.list("v1", "Pod", ns)
            policies = self.state.policies.get(ns, {})
            for pod in pods:
                annotations = (pod.get("metadata") or {}).get("annotations") or {}
                found = policy_for_pod(pod, policies)
                if INJECTED_ANNOTATION in annotations and found and found[0] == name:
                    matched += 1
            endpoints = endpoints_for(
                spec,
                self.state.model_pods.get(ns, {}).values(),
                self.state.served_names.get(ns, {}),
            )
            ready_endpoints = len(endpoints)
            idle = models_without_endpoints(spec, (e.model_deployment for e in endpoints))
        generation = meta.get("generation")
        conditions = policy_conditions(
            spec=spec,
            problems=problems,
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
        if (body.get("status") or {}) == {**(body.get("status") or {}), **status}:
            return  # unchanged: don't write (and don't trigger another event)
        try:
            await self.kube.patch_status(API_VERSION, "RoutingPolicy", ns, name, status)
        except KubeError as exc:
            log.warning("cannot update status of RoutingPolicy %s/%s: %s", ns, name, exc)


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _in_audit_dir(path: str | None) -> bool:
    """A file path an injected sidecar can write (inside its audit emptyDir)."""
    if not path:
        return False
    normalized = posixpath.normpath(path)
    return normalized.startswith(f"{AUDIT_DIR}/")


class _RelayCollector(Collector):
    """The load-report relay's counters, read at scrape time."""

    def __init__(self, plane: RoutingPlane) -> None:
        self.plane = plane

    def collect(self) -> Iterator[Metric]:
        relay = self.plane.relay
        yield CounterMetricFamily(
            "clawdbot_operator_load_reports_relayed",
            "Sidecar load reports this replica forwarded to the other replicas.",
            value=relay.relayed if relay else 0,
        )
        yield CounterMetricFamily(
            "clawdbot_operator_load_reports_relay_dropped",
            "Load reports dropped because a peer's queue was full (the peer is down or slow).",
            value=relay.dropped if relay else 0,
        )
        yield GaugeMetricFamily(
            "clawdbot_operator_relay_peers",
            "Other operator replicas this replica relays load reports to.",
            value=len(relay.peers) if relay else 0,
        )
