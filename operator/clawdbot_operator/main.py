"""``clawdbot-operator``: the ModelDeployment controller, the external metrics API, the
sidecar injection webhook and the discovery stream.

clawdbot-operator [--namespace NS ... | --all-namespaces] [--kubeconfig PATH]
                  [--metrics-port PORT] [--health-port PORT]
                  [--metrics-service SVC] [--metrics-api-service NAME]
                  [--owner-deployment NAME]
                  [--leader-elect [--leader-election-namespace NS] [--leader-election-name N]]

Every replica runs the watches, the webhook and the discovery stream. With ``--leader-elect``
the replicas elect a leader through a Lease (see ``leader``), and only the leader writes:
ModelDeployment reconciles (watch events and the periodic resync) and RoutingPolicy status.

One serving certificate (``tls``) serves the webhook, the discovery stream and the
metrics API; a self-issued one names their three Services, and its CA is published into the
webhook configuration and, with ``--metrics-api-service``, the APIService.

In a pod, the operator reaches the API server at ``KUBERNETES_SERVICE_HOST:PORT`` with the
pod's service-account token, as client-go's in-cluster configuration does.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import logging
import os
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import kopf

from clawdbot_api.v1alpha1 import API_VERSION
from clawdbot_operator import metrics as operator_metrics
from clawdbot_operator import metrics_api, tls
from clawdbot_operator.config import OperatorConfig
from clawdbot_operator.handlers import register
from clawdbot_operator.kube import Kube, KubeError, Obj, connect
from clawdbot_operator.leader import LeaderElector, identity
from clawdbot_operator.loadreports import LoadReportStore
from clawdbot_operator.metrics import OperatorMetrics
from clawdbot_operator.reconciler import Reconciler
from clawdbot_operator.routing import RoutingPlane

log = logging.getLogger("clawdbot_operator")

# Where the operator runs when POD_NAMESPACE (the downward API) doesn't say.
DEFAULT_NAMESPACE = "clawdbot-system"
DEFAULT_LEASE_NAME = "clawdbot-operator"
DEFAULT_METRICS_SERVICE = "clawdbot-metrics"
# Tries to read the owner Deployment while the API server starts up (about half a minute).
OWNER_ATTEMPTS = 6


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(
        prog="clawdbot-operator",
        description="Run the Clawdbot operator (ModelDeployment lifecycle, metrics API).",
    )
    scope = p.add_mutually_exclusive_group()
    scope.add_argument(
        "-n",
        "--namespace",
        action="append",
        default=[],
        help="watch this namespace (repeatable)",
    )
    scope.add_argument(
        "-A", "--all-namespaces", action="store_true", help="watch every namespace (default)"
    )
    p.add_argument("--kubeconfig", help="kubeconfig file (default: in-cluster, then ~/.kube)")
    p.add_argument("--bind-address", default="0.0.0.0", help="address the servers listen on")
    p.add_argument(
        "--metrics-port",
        type=int,
        default=6443,
        help="HTTPS port of the external.metrics.k8s.io API (0 disables it)",
    )
    p.add_argument(
        "--metrics-cert-file",
        help="serving certificate of the metrics API (default: the operator's own, shared with "
        "the webhook and the discovery stream)",
    )
    p.add_argument("--metrics-key-file", help="key of --metrics-cert-file")
    p.add_argument(
        "--metrics-service",
        metavar="SVC",
        default=DEFAULT_METRICS_SERVICE,
        help="Service in front of the metrics API, in the operator's namespace (a name of the "
        f"self-issued certificate; default: {DEFAULT_METRICS_SERVICE})",
    )
    p.add_argument(
        "--metrics-api-service",
        metavar="NAME",
        default="",
        help="APIService whose caBundle the operator keeps set to the CA of its self-issued "
        "certificate, e.g. v1beta1.external.metrics.k8s.io (default: none)",
    )
    p.add_argument(
        "--owner-deployment",
        metavar="NAME",
        default="",
        help="the operator's own Deployment, in its namespace: it owns the objects the "
        "operator creates for itself (certificate Secret, leader-election Lease), so they "
        "are deleted with it (default: none, they stay)",
    )
    p.add_argument(
        "--accept-load-reports",
        action="store_true",
        help="accept load reports by HTTP POST /loadreports on the metrics port",
    )
    p.add_argument("--health-port", type=int, default=8080, help="liveness endpoint port")
    p.add_argument(
        "--prometheus-port",
        type=int,
        default=9090,
        help="plain-HTTP port of the operator's own Prometheus /metrics (0 disables it)",
    )
    p.add_argument(
        "--leader-elect",
        action="store_true",
        help="elect a leader among replicas through a Lease; only the leader writes "
        "(default: off, this process is the only writer)",
    )
    p.add_argument(
        "--leader-election-namespace",
        metavar="NS",
        help=f"namespace of the Lease (default: $POD_NAMESPACE, else {DEFAULT_NAMESPACE})",
    )
    p.add_argument(
        "--leader-election-name",
        metavar="NAME",
        default=DEFAULT_LEASE_NAME,
        help=f"name of the Lease (default: {DEFAULT_LEASE_NAME})",
    )
    p.add_argument("--log-level", default=os.environ.get("CLAWDBOT_LOG_LEVEL", "INFO"))
    return p.parse_args(argv)


async def resync_all(
    reconciler: Reconciler,
    kube: Kube,
    namespaces: list[str],
    is_leader: Callable[[], bool] = lambda: True,
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
    kube: Kube,
    namespaces: list[str],
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


async def run(args: argparse.Namespace) -> None:
    """Start everything; return when kopf stops (signal or fatal error)."""
    config = OperatorConfig.load()
    if args.kubeconfig:
        # kopf's own login reads KUBECONFIG; the API client below gets the path directly.
        os.environ["KUBECONFIG"] = args.kubeconfig
    api = await connect(args.kubeconfig)
    kube = Kube(api, config.field_manager)
    store = LoadReportStore()
    metrics = OperatorMetrics()
    reconciler = Reconciler(kube, config, store, metrics=metrics)
    operator_namespace = os.environ.get("POD_NAMESPACE") or DEFAULT_NAMESPACE
    owners: list[Obj] = []
    if args.owner_deployment:
        owners = await owner_references(kube, operator_namespace, args.owner_deployment)
    elector: LeaderElector | None = None
    if args.leader_elect:
        lease_namespace = args.leader_election_namespace or operator_namespace
        elector = LeaderElector(
            kube,
            lease_namespace,
            args.leader_election_name,
            identity(),
            # An owner in another namespace would make the garbage collector delete the Lease.
            owner_references=owners if lease_namespace == operator_namespace else (),
        )

    def is_leader() -> bool:
        return elector is None or elector.is_leader

    metrics.leader.set_function(lambda: float(is_leader()))
    registry = kopf.OperatorRegistry()
    register(registry, reconciler, is_leader)
    certificates = serving_certificates(args, config, kube, operator_namespace, owners)
    plane = RoutingPlane(
        kube,
        config,
        store,
        operator_namespace,
        is_leader,
        registry=metrics.registry,
        certificates=certificates,
        watch_namespaces=list(args.namespace) or None,
    )
    plane.register(registry)
    # kopf's watches log in the way the API client above does: in-cluster, else kubeconfig.
    kopf.on.login(registry=registry)(login)

    settings = kopf.OperatorSettings()
    settings.posting.enabled = False  # the reconciler posts its own, user-facing Events
    settings.persistence.finalizer = "clawdbot.io/finalizer"  # unused: no handler needs one

    runner = None
    if args.metrics_port:
        own_files = bool(args.metrics_cert_file and args.metrics_key_file)
        if not own_files:
            await certificates.start()
        runner = await metrics_api.serve(
            store,
            host=args.bind_address,
            port=args.metrics_port,
            ssl_context=None if own_files else certificates.server_ssl(),
            cert_file=args.metrics_cert_file,
            key_file=args.metrics_key_file,
            accept_reports=args.accept_load_reports,
        )
    prometheus = None
    if args.prometheus_port:
        prometheus = await operator_metrics.serve(
            metrics.registry, args.bind_address, args.prometheus_port
        )
    await plane.start(args.bind_address)
    namespaces = list(args.namespace)

    async def refresh_policy_status() -> None:
        # Followers skipped RoutingPolicy status writes: bring them up to date.
        for ns in namespaces or [""]:
            await plane.refresh_policies(ns)

    if elector is not None:
        elector.start()
    resync_task = asyncio.create_task(
        resync(
            reconciler,
            kube,
            namespaces,
            config.resync_seconds,
            elector=elector,
            on_gain=refresh_policy_status,
        )
    )
    try:
        # Standalone on every replica: all of them watch (the routing plane needs the
        # events everywhere); leader election above decides who writes.
        await kopf.operator(
            registry=registry,
            settings=settings,
            standalone=True,
            namespaces=namespaces,
            clusterwide=not namespaces,
            liveness_endpoint=f"http://{args.bind_address}:{args.health_port}/healthz",
        )
    finally:
        resync_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await resync_task
        if elector is not None:
            await elector.stop()  # releases the Lease: a successor takes over at once
        if runner is not None:
            await runner.cleanup()
        await plane.stop()
        await certificates.stop()
        if prometheus is not None:
            await prometheus.cleanup()
        await api.close()


def serving_certificates(
    args: argparse.Namespace,
    config: OperatorConfig,
    kube: Kube,
    namespace: str,
    owners: Sequence[Obj],
) -> tls.ServingCertificates:
    """The one serving certificate of the webhook, the discovery stream and the metrics API
    (started by whichever server comes up first)."""
    services = [
        config.webhook_service if config.webhook_port else "",
        config.discovery_service if config.discovery_port else "",
        args.metrics_service if args.metrics_port else "",
    ]
    own_metrics_files = bool(args.metrics_cert_file and args.metrics_key_file)
    return tls.ServingCertificates(
        kube,
        namespace,
        tls.service_names(services, namespace, "localhost"),
        cert_dir=config.webhook_cert_dir,
        secret=config.webhook_cert_secret,
        webhook_configuration=config.webhook_configuration if config.webhook_port else "",
        api_service="" if own_metrics_files or not args.metrics_port else args.metrics_api_service,
        owner_references=owners,
    )


def main(argv: Sequence[str] | None = None) -> None:
    """Console entry point."""
    args = parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if logging.getLogger().getEffectiveLevel() > logging.DEBUG:
        # kopf logs every handler run at INFO; the reconciler logs and posts what matters.
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    # Never below INFO, even with --log-level=DEBUG: the API client's DEBUG lines are whole
    # response bodies, the Secrets the operator reads (cloud API keys, its CA key) among them.
    logging.getLogger("kubernetes_asyncio.client.rest").setLevel(logging.INFO)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run(args))


if __name__ == "__main__":
    main()
