"""Two operator replicas with ``--leader-elect``: one Lease holder writes, and when it stops
(SIGTERM: it releases the Lease) or dies (SIGKILL: the Lease expires) the other takes the
Lease over and reconciles what changes after that.

Both replicas are real subprocesses watching the test's namespace, with their Lease in that
namespace too, so tests running side by side never share one.
"""

from __future__ import annotations

import contextlib
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from e2e.conftest import REPO_ROOT, E2ECluster
from e2e.harness.kube import Kubectl
from e2e.harness.operator import Operator, run_operator

pytestmark = pytest.mark.e2e

LEASE = "clawdbot-operator"
# client-go timings: a released Lease is taken within a (jittered) retry period of 2-4.4 s.
# One whose holder vanished without releasing it expires 15 s after the follower last saw it
# renewed, which it sees up to a retry period late, and is taken at the next retry.
TAKEOVER_S = {signal.SIGTERM: 20.0, signal.SIGKILL: 15.0 + 2 * 4.4 + 2.0}
WAIT_S = 60.0
# How long the follower is watched to make sure it does not take the Lease as well.
STABLE_S = 6.0


@pytest.fixture
def replicas(
    cluster: E2ECluster, crds: None, namespace: str, tmp_path: Path
) -> Iterator[dict[str, Operator]]:
    """Two operators, ``op-a`` and ``op-b`` (their POD_NAME), electing through one Lease."""
    assert cluster.kubeconfig, "the operator needs a kubeconfig"
    election = [
        "--leader-elect",
        "--leader-election-namespace", namespace,
        "--leader-election-name", LEASE,
    ]  # fmt: skip
    with contextlib.ExitStack() as stack:
        ops: dict[str, Operator] = {}
        for name in ("op-a", "op-b"):
            try:
                ops[name] = stack.enter_context(
                    run_operator(
                        cluster.kubeconfig,
                        namespace,
                        tmp_path / f"{name}.log",
                        env={"POD_NAME": name},
                        cwd=REPO_ROOT,
                        extra_args=election,
                    )
                )
            except RuntimeError as exc:
                pytest.fail(str(exc))
        yield ops


def holder(kube: Kubectl) -> str:
    """The Lease's holderIdentity ("" when released or not created yet)."""
    lease = kube.get_or_none("lease", LEASE)
    return str(((lease or {}).get("spec") or {}).get("holderIdentity") or "")


def replica_of(identity: str) -> str:
    """``op-a_1f2e3d4c`` -> ``op-a``."""
    return identity.rsplit("_", 1)[0]


def model_deployment(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "clawdbot.io/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": name},
        "spec": {
            "model": {"name": "llama-7b", "uri": "file:///models/llama-7b", "version": "1"},
            "runtime": "vllm",
            "precision": "bf16",
            "accelerator": {"type": "nvidia", "count": 1, "memoryFraction": 0.8},
            "replicas": 2,
        },
    }


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
def test_one_leader_writes_and_the_other_takes_over(
    kube: Kubectl, replicas: dict[str, Operator], stop: signal.Signals
) -> None:
    # Exactly one replica holds the Lease, and keeps it while it runs.
    lease = kube.wait_for(
        "lease",
        LEASE,
        lambda obj: bool((obj.get("spec") or {}).get("holderIdentity")),
        timeout=WAIT_S,
        what="a holder",
    )
    first = lease["spec"]["holderIdentity"]
    leader_name = replica_of(first)
    assert leader_name in replicas, first
    (follower_name,) = set(replicas) - {leader_name}
    leader, follower = replicas[leader_name], replicas[follower_name]
    assert lease["spec"]["leaseDurationSeconds"] == 15

    # The leader reconciles: the Deployment appears.
    kube.apply(model_deployment("x"))
    kube.wait_for(
        "deployment",
        "x",
        lambda d: d["spec"]["replicas"] == 2,
        timeout=WAIT_S,
        what="created with 2 replicas",
    )
    deadline = time.monotonic() + STABLE_S
    while time.monotonic() < deadline:
        assert holder(kube) == first, "the Lease changed hands while its holder ran"
        time.sleep(0.5)
    assert "became the leader" in leader.log.read_text()
    assert "became the leader" not in follower.log.read_text()

    # Stop the leader; the follower takes the Lease: at once when the leader released it on
    # its way out (SIGTERM), once it expired when the leader just vanished (SIGKILL).
    killed_at = time.monotonic()
    leader.proc.send_signal(stop)
    new = ""
    while time.monotonic() - killed_at < TAKEOVER_S[stop] + 10:
        new = holder(kube)
        if new and new != first:
            break
        time.sleep(0.2)
    took = time.monotonic() - killed_at
    print(f"e2e: {stop.name}: Lease {LEASE}: {first} -> {new or '(none)'} in {took:.1f}s")
    assert replica_of(new) == follower_name, f"the Lease is held by {new!r}, not the follower"
    assert took <= TAKEOVER_S[stop], f"the follower took {took:.1f}s to take over"
    with contextlib.suppress(subprocess.TimeoutExpired):
        leader.proc.wait(timeout=15)
    assert leader.proc.returncode is not None, "the old leader did not exit"
    released = "released Lease" in leader.log.read_text()
    assert released == (stop == signal.SIGTERM)

    # A change made now is reconciled by the new leader (the old one is gone).
    kube.run("scale", "md/x", "--replicas=3")
    kube.wait_for(
        "deployment",
        "x",
        lambda d: d["spec"]["replicas"] == 3,
        timeout=WAIT_S,
        what="scaled to 3 by the new leader",
    )
    assert "became the leader" in follower.log.read_text()
