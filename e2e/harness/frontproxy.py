"""Calling the operator's metrics API directly, as the API server's aggregator does.

The metrics API serves only requests that come with the aggregator's front-proxy client
certificate and name their user in ``X-Remote-User`` (see clawdbot_operator.metrics_auth).
A test that must ask one replica directly (the aggregator would pick one) presents the same
certificate: on the local control plane it is in the cluster's PKI directory
(e2e/cluster/cluster.sh makes it), on kind in the control-plane node's /etc/kubernetes/pki.
"""

from __future__ import annotations

import shutil
import ssl
import subprocess
from pathlib import Path

from e2e.conftest import KIND_CLUSTER, E2ECluster, state_dir

# The local plane's admin, in the group RBAC grants everything to.
ADMIN = {"X-Remote-User": "kubernetes-admin", "X-Remote-Group": "system:masters"}


def client_certificate(cluster: E2ECluster, directory: Path) -> tuple[Path, Path] | None:
    """The front-proxy client certificate and key, or None where this harness can't get them
    (an existing cluster)."""
    if cluster.is_local:
        pki = state_dir() / "pki"
        return pki / "front-proxy-client.crt", pki / "front-proxy-client.key"
    docker = shutil.which("docker")
    if cluster.mode != "kind" or docker is None:
        return None
    directory.mkdir(parents=True, exist_ok=True)
    out = []
    for ext in ("crt", "key"):
        target = directory / f"front-proxy-client.{ext}"
        source = f"{KIND_CLUSTER}-control-plane:/etc/kubernetes/pki/front-proxy-client.{ext}"
        subprocess.run([docker, "cp", source, str(target)], check=True, capture_output=True)
        out.append(target)
    return out[0], out[1]


def aggregator_context(
    client: tuple[Path, Path], cafile: str | None = None, cadata: str | None = None
) -> ssl.SSLContext:
    """A TLS context that verifies the server (``cafile``/``cadata``; neither: no check) and
    presents the front-proxy client certificate."""
    context = ssl.create_default_context(cafile=cafile, cadata=cadata)
    if cafile is None and cadata is None:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    context.load_cert_chain(*client)
    return context
