"""How the operator copes with many ModelDeployments on the local control plane.

    make cluster-up && .venv/bin/python bench/operator_scale.py [--counts 10,50,200]

For each N: a fresh namespace, the operator watching it, N ModelDeployments applied at once
(ONNX on CPU, one replica each: a Deployment, Service, PDB, NetworkPolicy and a kwok pod per
object), then the time until every one reports phase Available, and the operator's peak
resident memory (sampled from /proc while it works). Loopback only; bounded waits.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from e2e.harness.kube import Kubectl, to_yaml  # noqa: E402
from e2e.harness.operator import run_operator  # noqa: E402

K8S_VERSION = os.environ.get("K8S_VERSION", "v1.36.3")
TOOLS = Path(os.environ.get("CLAWDBOT_BIN_DIR", ROOT / ".cache" / "bin" / K8S_VERSION))
KUBECONFIG = ROOT / ".run" / "cluster" / "kubeconfig"
READY_TIMEOUT_S = 900.0


def model_deployment(i: int) -> dict[str, object]:
    return {
        "apiVersion": "clawdbot.io/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": f"m{i:04d}"},
        "spec": {
            "model": {"name": "tiny-chat", "uri": "file:///models"},
            "runtime": "onnx",
            "precision": "fp16",
            "accelerator": {"type": "cpu"},
            # Small requests, so N replicas fit on the fake nodes' capacity (the benchmark
            # measures the operator, not the scheduler's bin packing).
            "resources": {
                "requests": {"cpu": "100m", "memory": "128Mi"},
                "limits": {"memory": "256Mi"},
            },
        },
    }


def rss_mib(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def run(kube: Kubectl, n: int) -> tuple[float, float, float]:
    """(seconds until all Available, operator RSS before, peak RSS during)."""
    ns = f"bench-scale-{n}-{uuid.uuid4().hex[:6]}"
    kube.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
    scoped = kube.in_namespace(ns)
    scoped.wait_for("serviceaccount", "default", lambda _: True)
    log = Path(tempfile.mkdtemp(prefix="bench-operator-")) / "operator.log"
    try:
        with run_operator(str(KUBECONFIG), ns, log, cwd=ROOT, print_log=False) as op:
            time.sleep(2)  # let the watches settle before measuring the baseline
            before = rss_mib(op.proc.pid)
            peak = [before]
            stop = threading.Event()

            def sample() -> None:
                while not stop.is_set():
                    peak[0] = max(peak[0], rss_mib(op.proc.pid))
                    stop.wait(0.5)

            sampler = threading.Thread(target=sample, daemon=True)
            sampler.start()
            started = time.monotonic()
            scoped.run("apply", "-f", "-", input=to_yaml([model_deployment(i) for i in range(n)]),
                       timeout=300)  # fmt: skip
            available = 0
            while time.monotonic() - started < READY_TIMEOUT_S:
                items = scoped.get("modeldeployments")["items"]
                available = sum((i.get("status") or {}).get("phase") == "Available" for i in items)
                if available == n:
                    break
                time.sleep(1)
            elapsed = time.monotonic() - started
            stop.set()
            sampler.join()
            if available != n:
                raise SystemExit(f"only {available}/{n} Available after {READY_TIMEOUT_S:.0f}s")
            return elapsed, before, peak[0]
    finally:
        kube.run("delete", "namespace", ns, "--wait=false")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--counts", default="10,50,200", help="comma-separated N values")
    args = parser.parse_args()
    if not KUBECONFIG.exists():
        print("start the local control plane first: make cluster-up", file=sys.stderr)
        return 2
    kube = Kubectl(str(TOOLS / "kubectl"), kubeconfig=str(KUBECONFIG))
    kube.apply(ROOT / "crds")
    rows = []
    for n in (int(c) for c in args.counts.split(",")):
        print(f"N={n}: applying...", flush=True)
        elapsed, before, peak = run(kube, n)
        rows.append((n, elapsed, before, peak))
        print(f"N={n}: all Available in {elapsed:.1f}s, operator RSS {before:.0f} -> "
              f"{peak:.0f} MiB", flush=True)  # fmt: skip
    print("\n| ModelDeployments | time to all Available | per object | operator RSS idle | peak |")
    print("|---:|---:|---:|---:|---:|")
    for n, elapsed, before, peak in rows:
        print(f"| {n} | {elapsed:.1f} s | {elapsed / n * 1000:.0f} ms | {before:.0f} MiB | "
              f"{peak:.0f} MiB |")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
