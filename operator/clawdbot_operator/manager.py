"""The composition root: one :class:`Manager` per operator process builds every part from one
:class:`OperatorConfig`, starts the servers and leader election, runs kopf with the
controllers' handlers, and shuts everything down in reverse order.

    await Manager(config).run()        # returns when kopf stops (signal or fatal error)

What runs, and who owns it:

* the API client and the kopf watches (``controllers.modeldeployment``,
  ``controllers.routingpolicy``);
* the serving certificate (``tls``): one CA and leaf for every TLS server below, from
  cert-manager's directory, a Secret shared by the replicas, or memory; its CA is published
  into the webhook configuration and, with ``metrics_api_service``, the APIService;
* the injection webhook (``webhook.server``) and the discovery stream
  (``discovery.server``, with the peer relay of load reports), when their ports are set;
* the external metrics API (``metrics_api``) and the operator's own Prometheus endpoint
  (``metrics``);
* leader election (``leader``): every replica watches, serves the webhook and the stream;
  only the leader writes (reconciles, RoutingPolicy status), and a new leader resyncs at once;
* the periodic ModelDeployment resync.

In a pod, the operator reaches the API server at ``KUBERNETES_SERVICE_HOST:PORT`` with the
pod's service-account token, as client-go's in-cluster configuration does.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import ssl
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import kopf
from aiohttp import web

from clawdbot_operator import metrics as operator_metrics
from clawdbot_operator import metrics_api, tls
from clawdbot_operator.config import OperatorConfig
from clawdbot_operator.controllers import modeldeployment
from clawdbot_operator.controllers.routingpolicy import RoutingPolicyController
from clawdbot_operator.discovery import server as discovery
from clawdbot_operator.discovery.relay import PeerRelay, RelayCollector, peer_relay
from clawdbot_operator.discovery.secrets import SecretCache
from clawdbot_operator.discovery.state import DiscoveryState
from clawdbot_operator.discovery.tokenreview import KubeTokenReviewer
from clawdbot_operator.kube import Kube, KubeError, Obj, connect
from clawdbot_operator.leader import LeaderElector, identity
from clawdbot_operator.loadreports import LoadReportStore
from clawdbot_operator.metrics import OperatorMetrics
from clawdbot_operator.metrics_auth import MetricsAuth
from clawdbot_operator.reconciler import Reconciler
from clawdbot_operator.webhook.inject import SidecarSettings
from clawdbot_operator.webhook.server import CachedNamespaceLabels, WebhookMetrics, build_app

log = logging.getLogger("clawdbot_operator")

# Tries to read the owner Deployment while the API server starts up (about half a minute).
OWNER_ATTEMPTS = 6
# On SIGTERM, how long the discovery stream's subscribers get to see it end.
GRPC_GRACE_S = 2.0


def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
    """kopf login: the pod's service account, else the kubeconfig (``KUBECONFIG``).

    kopf's own service-account login names ``https://kubernetes.default.svc``, which needs
    cluster DNS; the API server's address is in ``KUBERNETES_SERVICE_HOST``/``_PORT`` (set in
    every pod, and what the operator's other API client uses), so use it when it is there.
    """
    info: kopf.ConnectionInfo | None = kopf.login_with_service_account(**kwargs)
    host = os.environ.get("KUBERNETES_SERVICE_HOST")
    port = os.environ.get("KUBERNETES_SERVICE_PORT")
    if info is not None and host and port:
        server = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        info = dataclasses.replace(info, server=f"https://{server}")
    return info or kopf.login_with_kubeconfig(**kwargs)


async def config_map_value(kube: Kube, namespace: str, name: str, key: str) -> str | None:
    """One key of a ConfigMap; None when it or the key is missing or can't be read."""
    try:
        obj = await kube.get("v1", "ConfigMap", namespace, name)
    except KubeError as exc:
        log.warning("ConfigMap %s/%s can't be read: %s", namespace, name, exc)
        return None
    data = (obj or {}).get("data") or {}
    value = data.get(key)
    return value if isinstance(value, str) else None


async def owner_references(kube: Kube, namespace: str, deployment: str) -> list[Obj]:
    """An owner reference to the operator's Deployment, for the objects the operator
    creates for itself; none (logged) when it can't be read, as those objects then merely
    outlive an uninstall."""
    delay = 0.5
    for attempt in range(1, OWNER_ATTEMPTS + 1):
        try:
            found = await kube.get("apps/v1", "Deployment", namespace, deployment)
        except KubeError as exc:
            retry = exc.status == 429 or exc.status >= 500
            if retry and attempt < OWNER_ATTEMPTS:
                await asyncio.sleep(delay)
                delay = min(delay * 2, 8.0)
                continue
            log.warning("cannot read my Deployment %s/%s (%s): the objects I create for "
                        "myself will outlive it", namespace, deployment, exc)  # fmt: skip
            return []
        if found is None:
            log.warning("Deployment %s/%s (--owner-deployment) does not exist: the objects I "
                        "create for myself will outlive me", namespace, deployment)  # fmt: skip
            return []
        return [{"apiVersion": "apps/v1", "kind": "Deployment", "name": deployment,
                 "uid": found["metadata"]["uid"]}]  # fmt: skip
    return []


def serving_certificates(
    config: OperatorConfig, kube: Kube, owners: Sequence[Obj]
) -> tls.ServingCertificates:
    """The one serving certificate of the webhook, the discovery stream and the metrics API
    (started by whichever server comes up first)."""
    services = [
        config.webhook_service if config.webhook_port else "",
        config.discovery_service if config.discovery_port else "",
        config.metrics_service if config.metrics_port else "",
    ]
    publish_api = config.metrics_port and not config.own_metrics_certificate
    return tls.ServingCertificates(
        kube,
        config.namespace,
        tls.service_names(services, config.namespace, "localhost"),
        cert_dir=config.webhook_cert_dir,
        secret=config.webhook_cert_secret,
        webhook_configuration=config.webhook_configuration if config.webhook_port else "",
        api_service=config.metrics_api_service if publish_api else "",
        owner_references=owners,
    )


async def _serve_http(
    app: web.Application, host: str, port: int, context: ssl.SSLContext | None = None
) -> web.AppRunner:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port, ssl_context=context).start()
    return runner


class Manager:
    """Everything one operator process runs; see the module docstring."""

    def __init__(self, config: OperatorConfig) -> None:
        self.config = config
        self.metrics = OperatorMetrics()
        self.store = LoadReportStore()
        self.state = DiscoveryState()
        self.elector: LeaderElector | None = None
        self.relay: PeerRelay | None = None

    def is_leader(self) -> bool:
        """Whether this replica may write (always, without leader election)."""
        return self.elector is None or self.elector.is_leader

    async def run(self) -> None:
        """Start everything; return when kopf stops, with everything stopped again."""
        config = self.config
        if config.kubeconfig:
            # kopf's own login reads KUBECONFIG; the API client gets the path directly.
            os.environ["KUBECONFIG"] = config.kubeconfig
        async with contextlib.AsyncExitStack() as stack:
            api = await connect(config.kubeconfig or None)
            stack.push_async_callback(api.close)
            kube = Kube(api, config.field_manager)
            owners: list[Obj] = []
            if config.owner_deployment:
                owners = await owner_references(kube, config.namespace, config.owner_deployment)
            certificates = serving_certificates(config, kube, owners)
            stack.push_async_callback(certificates.stop)
            reconciler = Reconciler(kube, config, self.store, metrics=self.metrics)
            # One cache for the stream's keys and the status checks: each Secret is read at
            # most once per TTL, however many sidecars subscribe.
            secrets = SecretCache(lambda ns, name: kube.get("v1", "Secret", ns, name))
            policies = RoutingPolicyController(kube, self.state, self.is_leader, get_secret=secrets)
            registry = self._registry(reconciler, policies)
            await self._start_servers(stack, kube, certificates, secrets)
            await self._start_leader_election(stack, kube, owners, reconciler, policies)
            await self._run_kopf(registry)

    def _registry(
        self, reconciler: Reconciler, policies: RoutingPolicyController
    ) -> kopf.OperatorRegistry:
        registry = kopf.OperatorRegistry()
        modeldeployment.register(registry, reconciler, self.is_leader)
        policies.register(registry)
        # kopf's watches log in the way the API client does: in-cluster, else kubeconfig.
        kopf.on.login(registry=registry)(login)
        self.metrics.leader.set_function(lambda: float(self.is_leader()))
        return registry

    async def _start_servers(
        self,
        stack: contextlib.AsyncExitStack,
        kube: Kube,
        certificates: tls.ServingCertificates,
        secrets: SecretCache,
    ) -> None:
        """Prometheus, then the webhook and the discovery stream, then the metrics API."""
        config = self.config
        if config.prometheus_port:
            runner = await operator_metrics.serve(
                self.metrics.registry, config.bind_address, config.prometheus_port
            )
            stack.push_async_callback(runner.cleanup)
        if (
            config.webhook_port
            or config.discovery_port
            or (config.metrics_port and not config.own_metrics_certificate)
        ):
            await certificates.start()
        if config.webhook_port:
            await self._start_webhook(stack, kube, certificates)
        if config.discovery_port:
            await self._start_discovery(stack, kube, certificates, secrets)
        if config.metrics_port:
            own = config.own_metrics_certificate
            auth = MetricsAuth.for_api(
                kube.api, lambda ns, name: kube.get("v1", "ConfigMap", ns, name)
            )
            await auth.start()
            stack.push_async_callback(auth.stop)
            runner = await metrics_api.serve(
                self.store,
                auth=auth,
                host=config.bind_address,
                port=config.metrics_port,
                ssl_context=None if own else certificates.server_ssl(own=True),
                cert_file=config.metrics_cert_file or None,
                key_file=config.metrics_key_file or None,
                accept_reports=config.accept_load_reports,
            )
            stack.push_async_callback(runner.cleanup)

    def _sidecar_settings(self, certificates: tls.ServingCertificates) -> SidecarSettings:
        config = self.config
        assert certificates.bundle is not None
        return SidecarSettings(
            image=config.image_sidecar,
            discovery_address=(
                f"{config.discovery_service}.{config.namespace}.svc:{config.discovery_port}"
            ),
            discovery_ca=certificates.bundle.ca_cert.decode() if config.discovery_port else "",
        )

    async def _start_webhook(
        self, stack: contextlib.AsyncExitStack, kube: Kube, certificates: tls.ServingCertificates
    ) -> None:
        config = self.config
        app = build_app(
            self._sidecar_settings(certificates),
            CachedNamespaceLabels(kube),
            config.namespace,
            WebhookMetrics(self.metrics.registry),
            path=config.webhook_path,
            watched=frozenset(config.namespaces) or None,
        )
        runner = await _serve_http(
            app, config.bind_address, config.webhook_port, certificates.server_ssl()
        )
        stack.push_async_callback(runner.cleanup)
        log.info("injection webhook on https://%s:%d%s", config.bind_address,
                 config.webhook_port, config.webhook_path)  # fmt: skip

    async def _start_discovery(
        self,
        stack: contextlib.AsyncExitStack,
        kube: Kube,
        certificates: tls.ServingCertificates,
        secrets: SecretCache,
    ) -> None:
        config = self.config

        def ca_cert() -> bytes:
            assert certificates.bundle is not None
            return certificates.bundle.ca_cert

        self.relay, peer_account = peer_relay(
            kube,
            namespace=config.namespace,
            selector=config.peer_selector,
            token_file=Path(config.peer_token_file),
            own_name=config.pod_name,
            port=config.discovery_port,
            service_name=config.discovery_service,
            ca_cert=ca_cert,
        )
        self.metrics.registry.register(RelayCollector(lambda: self.relay))
        servicer = discovery.DiscoveryServicer(
            self.state,
            KubeTokenReviewer(kube.api),
            lambda ns, name: kube.get("v1", "Pod", ns, name),
            self.store,
            get_secret=secrets,
            relay=self.relay,
            peer_account=peer_account,
            get_config_map=lambda ns, name, key: config_map_value(kube, ns, name, key),
        )
        address = f"{config.bind_address}:{config.discovery_port}"
        server, port = await discovery.serve(servicer, address, certificates)

        async def stop_server() -> None:
            # On SIGTERM kopf cancels the loop's other tasks, grpc's serving loop among
            # them; its shutdown then reports that cancellation, which is expected here.
            with contextlib.suppress(asyncio.CancelledError):
                await server.stop(grace=GRPC_GRACE_S)

        stack.push_async_callback(stop_server)
        log.info("discovery stream on %s:%d (TLS)", config.bind_address, port)
        if self.relay is not None:
            self.relay.start()
            stack.push_async_callback(self.relay.stop)

    async def _start_leader_election(
        self,
        stack: contextlib.AsyncExitStack,
        kube: Kube,
        owners: Sequence[Obj],
        reconciler: Reconciler,
        policies: RoutingPolicyController,
    ) -> None:
        """The elector (with ``leader_elect``) and the resync loop that follows it."""
        config = self.config
        if config.leader_elect:
            lease_namespace = config.leader_election_namespace or config.namespace
            self.elector = LeaderElector(
                kube,
                lease_namespace,
                config.leader_election_name,
                identity(config.pod_name),
                # An owner in another namespace would make the garbage collector delete it.
                owner_references=owners if lease_namespace == config.namespace else (),
            )
            self.elector.start()
            stack.push_async_callback(self.elector.stop)  # releases the Lease

        async def catch_up() -> None:
            # Followers skipped RoutingPolicy status writes: bring them up to date.
            await policies.refresh_all(config.namespaces)

        task = asyncio.create_task(
            modeldeployment.resync(
                reconciler,
                kube,
                config.namespaces,
                config.resync_seconds,
                elector=self.elector,
                on_gain=catch_up,
            ),
            name="resync",
        )

        async def stop_resync() -> None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

        stack.push_async_callback(stop_resync)

    async def _run_kopf(self, registry: kopf.OperatorRegistry) -> None:
        config = self.config
        settings = kopf.OperatorSettings()
        settings.posting.enabled = False  # the reconciler posts its own, user-facing Events
        settings.persistence.finalizer = "clawdbot.io/finalizer"  # unused: no handler needs one
        namespaces = list(config.namespaces)
        # Standalone on every replica: all of them watch (the routing controller needs the
        # events everywhere); leader election decides who writes.
        await kopf.operator(
            registry=registry,
            settings=settings,
            standalone=True,
            namespaces=namespaces,
            clusterwide=not namespaces,
            liveness_endpoint=f"http://{config.bind_address}:{config.health_port}/healthz",
        )
