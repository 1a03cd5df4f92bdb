"""``clawdbot-operator``: the ModelDeployment and RoutingPolicy controllers, the external
metrics API, the sidecar injection webhook and the discovery stream.

clawdbot-operator [--namespace NS ... | --all-namespaces] [--kubeconfig PATH]
                  [--metrics-port PORT] [--health-port PORT]
                  [--metrics-service SVC] [--metrics-api-service NAME]
                  [--owner-deployment NAME]
                  [--leader-elect [--leader-election-namespace NS] [--leader-election-name N]]

This module only reads the command line: its flags and the ``CLAWDBOT_*`` settings become
one :class:`~clawdbot_operator.config.OperatorConfig`, which the composition root
(:class:`~clawdbot_operator.manager.Manager`) runs with.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import logging
import os
from collections.abc import Mapping, Sequence

from clawdbot_operator.config import DEFAULT_NAMESPACE, OperatorConfig
from clawdbot_operator.manager import Manager

DEFAULTS = OperatorConfig()
DEFAULT_LEASE_NAME = DEFAULTS.leader_election_name
DEFAULT_METRICS_SERVICE = DEFAULTS.metrics_service


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
    p.add_argument(
        "--bind-address", default=DEFAULTS.bind_address, help="address the servers listen on"
    )
    p.add_argument(
        "--metrics-port",
        type=int,
        default=DEFAULTS.metrics_port,
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
    p.add_argument(
        "--health-port", type=int, default=DEFAULTS.health_port, help="liveness endpoint port"
    )
    p.add_argument(
        "--prometheus-port",
        type=int,
        default=DEFAULTS.prometheus_port,
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


def config_from_args(
    args: argparse.Namespace, env: Mapping[str, str] | None = None
) -> OperatorConfig:
    """The one configuration the operator runs with: ``CLAWDBOT_*`` settings (and their
    file) from ``env``, then every process setting from the command line."""
    config = OperatorConfig.load(env)
    return dataclasses.replace(
        config,
        namespaces=tuple(args.namespace),
        kubeconfig=args.kubeconfig or "",
        bind_address=args.bind_address,
        metrics_port=args.metrics_port,
        metrics_cert_file=args.metrics_cert_file or "",
        metrics_key_file=args.metrics_key_file or "",
        metrics_service=args.metrics_service,
        metrics_api_service=args.metrics_api_service,
        owner_deployment=args.owner_deployment,
        accept_load_reports=args.accept_load_reports,
        health_port=args.health_port,
        prometheus_port=args.prometheus_port,
        leader_elect=args.leader_elect,
        leader_election_namespace=args.leader_election_namespace or "",
        leader_election_name=args.leader_election_name,
        log_level=args.log_level,
    )


def main(argv: Sequence[str] | None = None) -> None:
    """Console entry point."""
    config = config_from_args(parse_args(argv))
    logging.basicConfig(
        level=config.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if logging.getLogger().getEffectiveLevel() > logging.DEBUG:
        # kopf logs every handler run at INFO; the reconciler logs and posts what matters.
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    # Never below INFO, even with --log-level=DEBUG: the API client's DEBUG lines are whole
    # response bodies, the Secrets the operator reads (cloud API keys, its CA key) among them.
    logging.getLogger("kubernetes_asyncio.client.rest").setLevel(logging.INFO)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(Manager(config).run())


if __name__ == "__main__":
    main()
