"""``clawdbot status`` and ``clawdbot rollback`` against real objects, the operator running.

The CLI runs as a real process with the cluster's kubeconfig; the operator (a real process)
reconciles the ModelDeployment and reports the RoutingPolicy; kwok makes the pods ready.
The plugin shim ``cli/kubectl-clawdbot`` runs it the way kubectl would.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from e2e.conftest import REPO_ROOT, E2ECluster
from e2e.harness.kube import Kubectl, is_true
from e2e.harness.operator import Operator

pytestmark = pytest.mark.e2e

CLAWDBOT = Path(sys.executable).parent / "clawdbot"
WAIT_S = 60.0
CLI_TIMEOUT_S = 120.0


def clawdbot(cluster: E2ECluster, *args: str) -> subprocess.CompletedProcess[str]:
    """The CLI through the kubectl plugin shim, with the cluster's kubeconfig."""
    assert cluster.kubeconfig
    env = {
        **os.environ,
        "CLAWDBOT_CLI": str(CLAWDBOT),
        "KUBECONFIG": cluster.kubeconfig,
    }
    return subprocess.run(
        [str(REPO_ROOT / "cli" / "kubectl-clawdbot"), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=CLI_TIMEOUT_S,
        check=False,
    )


def model_deployment(version: str) -> dict[str, Any]:
    return {
        "apiVersion": "clawdbot.io/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": "llama"},
        "spec": {
            "model": {"name": "llama-7b", "uri": "file:///models/llama-7b", "version": version},
            "runtime": "vllm",
            "precision": "bf16",
            "accelerator": {"type": "nvidia", "count": 1},
            "replicas": 2,
            "rollout": {"progressDeadlineSeconds": 30},
        },
    }


def ready_at(revision: int) -> Callable[[dict[str, Any]], bool]:
    def check(md: dict[str, Any]) -> bool:
        st = md.get("status") or {}
        return (
            is_true(md, "Ready")
            and st.get("currentRevision") == revision
            and st.get("stableRevision") == revision
            and st.get("readyReplicas") == 2
            and st.get("phase") == "Available"
            and st.get("observedGeneration") == md["metadata"]["generation"]
        )

    return check


def _row(output: str, name: str) -> list[str]:
    rows = [line.split() for line in output.splitlines() if line.split()[:1] == [name]]
    assert len(rows) == 1, output
    return rows[0]


def test_status_and_rollback(
    cluster: E2ECluster, kube: Kubectl, namespace: str, operator: Operator
) -> None:
    kube.apply(model_deployment("1"))
    kube.wait_for("md", "llama", ready_at(1), timeout=WAIT_S, what="Ready at revision 1")
    kube.apply(model_deployment("2"))
    kube.wait_for("md", "llama", ready_at(2), timeout=WAIT_S, what="Ready at revision 2")
    kube.apply(
        {"apiVersion": "clawdbot.io/v1alpha1", "kind": "RoutingPolicy",
         "metadata": {"name": "chat"},
         "spec": {"podSelector": {"matchLabels": {"app": "chat"}},
                  "localModels": [{"name": "llama"}],
                  "rules": [{"name": "all", "match": {"maxTokens": 4096}, "target": "local"}]}}
    )  # fmt: skip
    policy = kube.wait_for(
        "routingpolicy",
        "chat",
        lambda p: (p.get("status") or {}).get("observedGeneration") == 1,
        timeout=WAIT_S,
        what="reported",
    )

    shown = clawdbot(cluster, "status", "-n", namespace)
    assert shown.returncode == 0, shown.stderr
    md_row = _row(shown.stdout, "llama")
    assert md_row[:5] == ["llama", "Available", "2/2", "2", "2"], shown.stdout
    rp_row = _row(shown.stdout, "chat")
    ready = next(c for c in policy["status"]["conditions"] if c["type"] == "Ready")
    assert rp_row[:4] == [
        "chat",
        ready["status"],
        str(policy["status"].get("matchedPods", 0)),
        str(policy["status"].get("readyEndpoints", 0)),
    ], shown.stdout

    everywhere = clawdbot(cluster, "status", "-A")
    assert everywhere.returncode == 0, everywhere.stderr
    assert any(
        line.split()[:2] == [namespace, "llama"] for line in everywhere.stdout.splitlines()
    ), everywhere.stdout

    refused = clawdbot(cluster, "rollback", "llama", "--to-revision", "9", "-n", namespace)
    assert refused.returncode == 1
    assert "has no revision 9 in status.revisions (kept: 1, 2)" in refused.stderr

    rolled = clawdbot(
        cluster, "rollback", "llama", "--to-revision", "1", "-n", namespace, "--timeout", "60"
    )
    assert rolled.returncode == 0, rolled.stdout + rolled.stderr
    lines = rolled.stdout.splitlines()
    assert lines[0] == f"modeldeployment {namespace}/llama: spec.rollbackTo set to 1"
    assert any(line.startswith("rollback to revision 1: ") for line in lines[1:-1])
    assert lines[-1] == f"modeldeployment {namespace}/llama rolled back to revision 1 (2/2 ready)"

    md = kube.get("md", "llama")
    assert "rollbackTo" not in md["spec"]
    assert md["status"]["currentRevision"] == 1
    after = clawdbot(cluster, "status", "-n", namespace)
    assert _row(after.stdout, "llama")[:4] == ["llama", "Available", "2/2", "1"], after.stdout
