"""``clawdbot-operator``: the ModelDeployment controller, the external metrics API, the
sidecar injection webhook and the discovery stream.

clawdbot-operator [--namespace NS ... | --all-namespaces] [--kubeconfig PATH]
                  [--metrics-port PORT] [--health-port PORT]
                  [--leader-elect [--leader-election-namespace NS] [--leader-election-name N]]

Every replica runs the watches, the webhook and the discovery stream. With ``--leader-elect``
the replicas elect a leader through a Lease (see ``leader``), and only the leader writes:
ModelDeployment reconciles (watch events and the periodic resync) and RoutingPolicy status.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import kopf

from clawdbot_api.v1alpha1 import API_VERSION
from clawdbot_operator import metrics as operator_metrics
from clawdbot_operator import metrics_api
from clawdbot_operator.config import OperatorConfig
from clawdbot_operator.handlers import register
from clawdbot_operator.kube import Kube, KubeError, connect
from clawdbot_operator.leader import LeaderElector, identity
from clawdbot_operator.loadreports import LoadReportStore
from clawdbot_operator.metrics import OperatorMetrics
from clawdbot_operator.reconciler import Reconciler
from clawdbot_operator.routing import RoutingPlane

log = logging.getLogger("clawdbot_operator")

# Where the operator runs when POD_NAMESPACE (the downward API) doesn't say.
DEFAULT_NAMESPACE = "clawdbot-system"
DEFAULT_LEASE_NAME = "clawdbot-operator"


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
    p.add_argument("--metrics-cert-file", help="serving certificate (default: self-signed)")
    p.add_argument("--metrics-key-file", help="key of --metrics-cert-file")
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
    """kopf login: the pod's service account, else the kubeconfig (``KUBECONFIG``)."""
    info: kopf.ConnectionInfo | None = kopf.login_with_service_account(**kwargs)
    return info or kopf.login_with_kubeconfig(**kwargs)


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
    elector: LeaderElector | None = None
    if args.leader_elect:
        elector = LeaderElector(
            kube,
            args.leader_election_namespace or operator_namespace,
            args.leader_election_name,
            identity(),
        )

    def is_leader() -> bool:
        return elector is None or elector.is_leader

    metrics.leader.set_function(lambda: float(is_leader()))
    registry = kopf.OperatorRegistry()
    register(registry, reconciler, is_leader)
    plane = RoutingPlane(
        kube, config, store, operator_namespace, is_leader, registry=metrics.registry
    )
    plane.register(registry)
    # kopf's watches log in the way the API client above does: in-cluster, else kubeconfig.
    kopf.on.login(registry=registry)(login)

    settings = kopf.OperatorSettings()
    settings.posting.enabled = False  # the reconciler posts its own, user-facing Events
    settings.persistence.finalizer = "clawdbot.io/finalizer"  # unused: no handler needs one

    runner = None
    if args.metrics_port:
        runner = await metrics_api.serve(
            store,
            host=args.bind_address,
            port=args.metrics_port,
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
        if prometheus is not None:
            await prometheus.cleanup()
        await api.close()


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
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run(args))


if __name__ == "__main__":
    main()
