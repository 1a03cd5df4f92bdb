"""The operator's external metrics API registered with the aggregation layer, for a test.

``v1beta1.external.metrics.k8s.io`` -> a Service of type ExternalName (``localhost``) ->
the operator's metrics port on this host (see e2e/README.md: the local plane runs without
aggregator routing, so the aggregator dials the ExternalName). The APIService verifies the
operator's serving certificate against ``ca_pem`` for ``<service>.<namespace>.svc``.

An APIService is cluster-scoped, one per group/version: registration refuses to replace one
that exists (another test run, an installed chart) and deletes only the one it created.
"""

from __future__ import annotations

import base64
import contextlib
from collections.abc import Iterator
from typing import Any

from e2e.harness.kube import Kubectl, KubectlError, is_true

APISERVICE = "v1beta1.external.metrics.k8s.io"
METRICS_SERVICE = "clawdbot-metrics"
AVAILABLE_WAIT_S = 30.0


class APIServiceTaken(RuntimeError):
    """Someone else's APIService already serves external metrics on this cluster."""


def _owner(apiservice: dict[str, Any]) -> str:
    svc = (apiservice.get("spec") or {}).get("service") or {}
    if svc:
        return f"Service {svc.get('namespace')}/{svc.get('name')}"
    return "the API server itself (local APIService)"


@contextlib.contextmanager
def external_metrics_apiservice(
    cluster_kube: Kubectl, kube: Kubectl, port: int, ca_pem: bytes
) -> Iterator[dict[str, Any]]:
    """Register the operator listening on ``port`` (namespace of ``kube``); yields the
    APIService once Available."""
    existing = cluster_kube.get_or_none("apiservice", APISERVICE)
    if existing is not None:
        raise APIServiceTaken(
            f"APIService {APISERVICE} already exists (backed by {_owner(existing)}): another "
            "test run or an installed chart serves external metrics on this cluster. It is "
            "cluster-scoped, so this test won't replace it; delete it or wait for that run "
            "to finish."
        )
    kube.create(
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": METRICS_SERVICE},
            "spec": {
                "type": "ExternalName",
                "externalName": "localhost",
                "ports": [{"name": "https", "port": port, "protocol": "TCP"}],
            },
        }
    )
    try:
        cluster_kube.create(
            {
                "apiVersion": "apiregistration.k8s.io/v1",
                "kind": "APIService",
                "metadata": {
                    "name": APISERVICE,
                    "labels": {"clawdbot.io/e2e-namespace": kube.namespace or ""},
                },
                "spec": {
                    "group": "external.metrics.k8s.io",
                    "version": "v1beta1",
                    "service": {"name": METRICS_SERVICE, "namespace": kube.namespace,
                                "port": port},
                    "caBundle": base64.b64encode(ca_pem).decode(),
                    "groupPriorityMinimum": 100,
                    "versionPriority": 100,
                },
            }
        )  # fmt: skip
    except KubectlError as exc:
        if "AlreadyExists" in exc.stderr or "already exists" in exc.stderr:
            raise APIServiceTaken(
                f"APIService {APISERVICE} was created by someone else meanwhile (another "
                "test run?); this test won't replace it"
            ) from exc
        raise
    uid = cluster_kube.get("apiservice", APISERVICE)["metadata"]["uid"]
    try:
        yield cluster_kube.wait_for(
            "apiservice",
            APISERVICE,
            lambda a: is_true(a, "Available"),
            timeout=AVAILABLE_WAIT_S,
            what="Available (the aggregator reaches the operator's metrics API)",
        )
    finally:
        current = cluster_kube.get_or_none("apiservice", APISERVICE)
        if current is not None and current["metadata"]["uid"] == uid:
            cluster_kube.delete("apiservice", APISERVICE)
