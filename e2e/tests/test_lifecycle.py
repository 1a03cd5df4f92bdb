"""A ModelDeployment's whole life on the local control plane: every runtime on every
accelerator, deletion, and an operator killed in the middle of a rollout.

kwok plays the kubelet of the fake nodes in e2e/cluster/nodes.yaml: two NVIDIA nodes (one
tainted as GKE taints GPU nodes, one only labelled), one AMD node (labelled) and one CPU node,
so placement is checked against both ways clusters mark GPU nodes. Pods become Ready at once,
unless annotated ``clawdbot.io/e2e-never-ready`` (see e2e/cluster/kwok-stages.yaml), which
the operator copies onto them from ``clawdbot.io/pod-annotations``.
"""

from __future__ import annotations

import contextlib
import json
import signal
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from clawdbot_api.v1alpha1 import AcceleratorType, Runtime
from e2e.conftest import REPO_ROOT, E2ECluster
from e2e.harness.kube import Kubectl, is_true
from e2e.harness.modeldeployment import (
    NEVER_READY,
    POD_ANNOTATIONS,
    enforce_restricted,
    events,
    md_status,
    model_deployment,
    owned_by,
    ready_at,
    revision_phases,
    selector_labels,
    transition_time,
)
from e2e.harness.operator import Operator, run_operator
from e2e.harness.watch import PodWatch, revision_of, serving, serving_at

pytestmark = pytest.mark.e2e

# kwok pods are Ready within a second; the operator follows within a resync (2s here).
WAIT_S = 60.0
# How late past a progress deadline the operator may act: two resyncs, plus the Deployment
# controller's and the API server's reaction, with room for a loaded machine.
NOTICE_S = 10.0
# The garbage collector removes a deleted owner's dependents within seconds (once it watches
# the owner's resource); a ReplicaSet's pods go one level further down.
CLEANUP_S = 20.0

NODES_YAML = REPO_ROOT / "e2e" / "cluster" / "nodes.yaml"
NODES = {
    "nvidia": {"gpu-nvidia-0", "gpu-nvidia-1"},
    "amd": {"gpu-amd-0"},
    "cpu": {"cpu-0"},
}
"""Where each accelerator's pods may run (and nowhere else)."""
GPU_RESOURCE = {"nvidia": "nvidia.com/gpu", "amd": "amd.com/gpu"}
HTTP_PORT, GRPC_PORT = 8000, 8001
OWNED_KINDS = (
    "deployments,replicasets,pods,services,poddisruptionbudgets,networkpolicies,"
    "horizontalpodautoscalers,controllerrevisions"
)
"""Everything a ModelDeployment gets, directly or through its Deployment."""


@dataclass(frozen=True)
class Combo:
    """One runtime on one accelerator, with the settings that make its pods distinct."""

    runtime: str
    accelerator: str
    precision: str
    replicas: int = 1
    gpus: int = 1
    autoscaled: bool = False

    @property
    def name(self) -> str:
        return f"{self.runtime}-{self.accelerator}"

    @property
    def image(self) -> str:
        """The image the test configures the operator with for this pair."""
        return f"clawdbot-e2e/{self.runtime}-{self.accelerator}:matrix"

    @property
    def image_setting(self) -> str:
        return f"CLAWDBOT_IMAGE_{self.runtime.upper()}_{self.accelerator.upper()}"

    def manifest(self) -> dict[str, Any]:
        accelerator: dict[str, Any] = {"type": self.accelerator}
        if self.accelerator in GPU_RESOURCE:
            accelerator["count"] = self.gpus
        spec: dict[str, Any] = {
            "runtime": self.runtime,
            "precision": self.precision,
            "accelerator": accelerator,
            "replicas": self.replicas,
            "model": {"name": "tiny", "uri": "file:///models/tiny", "version": "1"},
        }
        if self.autoscaled:
            spec["autoscaling"] = {
                "minReplicas": self.replicas,
                "maxReplicas": self.replicas + 2,
                "targetPerReplica": 4,
            }
        return model_deployment(self.name, **spec)


MATRIX = (
    # Tensor parallelism over two GPUs, on both NVIDIA nodes (one of them tainted).
    Combo("vllm", "nvidia", "bf16", replicas=2, gpus=2),
    Combo("vllm", "amd", "fp16", autoscaled=True),
    Combo("vllm", "cpu", "bf16", autoscaled=True),
    Combo("onnx", "nvidia", "fp16", autoscaled=True),
    # int8: the compress init container runs the same image.
    Combo("onnx", "amd", "int8"),
    # Two CPU pods: spreading must not push the second onto a GPU node.
    Combo("onnx", "cpu", "fp16", replicas=2),
)


def test_the_matrix_is_every_runtime_on_every_accelerator() -> None:
    pairs = Counter((c.runtime, c.accelerator) for c in MATRIX)
    assert pairs == Counter((r.value, a.value) for r in Runtime for a in AcceleratorType)


@pytest.fixture(scope="module")
def fake_nodes(local_cluster: E2ECluster) -> E2ECluster:
    """The fake nodes with nodes.yaml's labels and taints (also on a cluster started before
    they changed: apply is idempotent, and kwok keeps their status)."""
    local_cluster.kubectl.apply(NODES_YAML)
    node = local_cluster.kubectl.get("node", "gpu-nvidia-0")
    assert {"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"} in (
        node["spec"].get("taints") or []
    )
    return local_cluster


@pytest.fixture
def restricted(cluster: E2ECluster, namespace: str) -> None:
    """Enforce the ``restricted`` Pod Security Standard on the test namespace."""
    enforce_restricted(cluster.kubectl, namespace)


def start_operator(
    stack: contextlib.ExitStack,
    cluster: E2ECluster,
    namespace: str,
    log: Path,
    env: Mapping[str, str] | None = None,
) -> Operator:
    """An operator process for ``namespace``, stopped (by its pid) when ``stack`` closes."""
    assert cluster.kubeconfig, "the operator needs a kubeconfig"
    try:
        return stack.enter_context(
            run_operator(cluster.kubeconfig, namespace, log, env=env, cwd=REPO_ROOT)
        )
    except RuntimeError as exc:
        pytest.fail(str(exc))


def flag(args: list[str], name: str) -> str | None:
    """The value after ``name`` in a command line."""
    return args[args.index(name) + 1] if name in args else None


def labels_of(obj: dict[str, Any]) -> dict[str, str]:
    found: dict[str, str] = obj["metadata"].get("labels") or {}
    return found


def owned_objects(kube: Kubectl, name: str) -> list[dict[str, Any]]:
    """Every object labelled as ModelDeployment ``name``'s, of every kind it gets."""
    selector = f"clawdbot.io/model-deployment={name}"
    items: list[dict[str, Any]] = kube.get(OWNED_KINDS, None, "-l", selector)["items"]
    return items


def healthy_pods(n: int) -> Callable[[dict[str, Any]], bool]:
    """Predicate on a PodDisruptionBudget: it counts ``n`` healthy pods."""
    return lambda pdb: (pdb.get("status") or {}).get("currentHealthy") == n


def kinds(objects: list[dict[str, Any]]) -> Counter[str]:
    return Counter(str(o["kind"]) for o in objects)


# --- every runtime x accelerator -------------------------------------------------------------


def check_combo(
    c: Combo, md: dict[str, Any], objects: list[dict[str, Any]], namespace: str
) -> list[str]:
    """What is wrong with ``c``'s children and pods (each line names the combination)."""
    problems: list[str] = []

    def expect(ok: bool, what: str) -> None:
        if not ok:
            problems.append(f"[{c.name}] {what}")

    selector = selector_labels(c.name)

    def named(kind: str) -> list[dict[str, Any]]:
        return [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == c.name]

    wanted = ["Deployment", "Service", "PodDisruptionBudget", "NetworkPolicy"]
    if c.autoscaled:
        wanted.append("HorizontalPodAutoscaler")
    else:
        expect(not named("HorizontalPodAutoscaler"), "has an HPA without autoscaling")
    for kind in wanted:
        found = named(kind)
        expect(len(found) == 1, f"{len(found)} {kind} objects, want 1")
        if found:
            expect(owned_by(found[0], md), f"{kind} is not controlled by the ModelDeployment")
            expect(
                labels_of(found[0]).get("app.kubernetes.io/managed-by") == "clawdbot-operator",
                f"{kind} lacks the managed-by label",
            )
    if problems:
        return problems  # the rest reads those children

    deployment = named("Deployment")[0]
    expect(
        deployment["spec"]["selector"] == {"matchLabels": selector},
        f"Deployment selector {deployment['spec']['selector']}",
    )
    replica_sets = [o for o in objects if o["kind"] == "ReplicaSet" and owned_by(o, deployment)]
    pods = [o for o in objects if o["kind"] == "Pod" and selector.items() <= labels_of(o).items()]
    expect(len(pods) == c.replicas, f"{len(pods)} pods, want {c.replicas}")
    gpu = GPU_RESOURCE.get(c.accelerator)
    for pod in pods:
        name, spec = pod["metadata"]["name"], pod["spec"]
        expect(any(owned_by(pod, rs) for rs in replica_sets), f"pod {name}: not the Deployment's")
        expect(
            pod["status"].get("phase") == "Running" and is_true(pod, "Ready"),
            f"pod {name}: {pod['status'].get('phase')}, Ready={is_true(pod, 'Ready')}",
        )
        node = spec.get("nodeName")
        expect(node in NODES[c.accelerator], f"pod {name} on {node}, want {NODES[c.accelerator]}")
        expect(labels_of(pod).get("clawdbot.io/revision") == "1", f"pod {name}: not revision 1")
        server = next(k for k in spec["containers"] if k["name"] == "server")
        expect(server["image"] == c.image, f"pod {name}: image {server['image']}")
        for init in spec.get("initContainers") or []:
            expect(init["image"] == c.image, f"pod {name}: {init['name']} image {init['image']}")
        limits = server["resources"]["limits"]
        gpu_limits = {k: v for k, v in limits.items() if k.endswith("/gpu")}
        want_gpus = {gpu: str(c.gpus)} if gpu else {}
        expect(gpu_limits == want_gpus, f"pod {name}: GPU limits {gpu_limits}, want {want_gpus}")
        tolerated = {t.get("key") for t in spec.get("tolerations") or []}
        affinity = (spec.get("affinity") or {}).get("nodeAffinity")
        if gpu:
            expect(gpu in tolerated, f"pod {name}: does not tolerate the {gpu} taint")
        else:
            expect(
                not tolerated & set(GPU_RESOURCE.values()),
                f"pod {name}: a CPU pod tolerates a GPU taint ({tolerated})",
            )
            expect(affinity is not None, f"pod {name}: no node affinity away from GPU nodes")
        args = server["args"]
        if c.runtime == "vllm" and gpu:
            parallel = flag(args, "--tensor-parallel-size")
            expect(parallel == str(c.gpus), f"pod {name}: tensor parallelism {parallel}")
        if c.runtime == "onnx":
            accel = flag(args, "--accelerator")
            expect(accel == c.accelerator, f"pod {name}: --accelerator {accel}")
        serving_ports = [(p["name"], p["containerPort"]) for p in server["ports"]]
        want_ports = [("http", HTTP_PORT)] + ([("grpc", GRPC_PORT)] if c.runtime == "onnx" else [])
        expect(serving_ports == want_ports, f"pod {name}: container ports {serving_ports}")

    service = named("Service")[0]
    expect(service["spec"]["selector"] == selector, f"Service selector {service['spec']}")
    ports = [(p["name"], p["port"], p["targetPort"]) for p in service["spec"]["ports"]]
    want = [("http", HTTP_PORT, "http")]
    if c.runtime == "onnx":
        want.append(("grpc", GRPC_PORT, "grpc"))
    expect(ports == want, f"Service ports {ports}, want {want}")
    # Six models share the namespace: each Service must pick its own pods and no other's.
    every_pod = [o for o in objects if o["kind"] == "Pod"]
    selected = {
        p["metadata"]["name"]
        for p in every_pod
        if service["spec"]["selector"].items() <= labels_of(p).items()
    }
    expect(selected == {p["metadata"]["name"] for p in pods}, f"Service selects {sorted(selected)}")

    pdb = named("PodDisruptionBudget")[0]
    expect(pdb["spec"].get("maxUnavailable") == 1, f"PDB {pdb['spec']}")
    expect(pdb["spec"]["selector"] == {"matchLabels": selector}, f"PDB selector {pdb['spec']}")
    expect(
        (pdb.get("status") or {}).get("expectedPods") == c.replicas,
        f"PDB counts {(pdb.get('status') or {}).get('expectedPods')} pods",
    )

    policy = named("NetworkPolicy")[0]["spec"]
    expect(policy["podSelector"] == {"matchLabels": selector}, f"NetworkPolicy {policy}")
    expect(policy["policyTypes"] == ["Ingress", "Egress"], f"policy types {policy}")
    ingress = [p["port"] for rule in policy["ingress"] for p in rule["ports"]]
    want_in = [HTTP_PORT] + ([GRPC_PORT] if c.runtime == "onnx" else [])
    expect(ingress == want_in, f"ingress ports {ingress}, want {want_in}")
    # file:// weights: nothing to download, so no egress but DNS.
    egress = [(p["protocol"], p["port"]) for rule in policy["egress"] for p in rule["ports"]]
    expect(egress == [("UDP", 53), ("TCP", 53)], f"egress {egress}")

    if c.autoscaled:
        hpa = named("HorizontalPodAutoscaler")[0]["spec"]
        expect(
            hpa["scaleTargetRef"]
            == {"apiVersion": "clawdbot.io/v1alpha1", "kind": "ModelDeployment", "name": c.name},
            f"HPA target {hpa['scaleTargetRef']}",
        )
        expect(
            (hpa["minReplicas"], hpa["maxReplicas"]) == (c.replicas, c.replicas + 2),
            f"HPA bounds {hpa['minReplicas']}..{hpa['maxReplicas']}",
        )
        metric = hpa["metrics"][0]["external"]["metric"]
        expect(
            metric
            == {
                "name": "clawdbot_inflight_requests",
                "selector": {
                    "matchLabels": {
                        "clawdbot.io/model-deployment": c.name,
                        "clawdbot.io/namespace": namespace,
                    }
                },
            },
            f"HPA metric {metric}",
        )
    return problems


@pytest.fixture
def matrix_operator(
    fake_nodes: E2ECluster, crds: None, namespace: str, tmp_path: Path
) -> Iterator[Operator]:
    """The operator configured with a distinct image per runtime/accelerator pair."""
    with contextlib.ExitStack() as stack:
        images = {c.image_setting: c.image for c in MATRIX}
        yield start_operator(stack, fake_nodes, namespace, tmp_path / "operator.log", images)


def test_every_runtime_on_every_accelerator(
    matrix_operator: Operator, kube: Kubectl, namespace: str, restricted: None
) -> None:
    """Each pair's pods run its configured image on its own kind of node, admitted under the
    restricted profile, with its Service, PDB, NetworkPolicy and (when autoscaled) HPA."""
    kube.apply([c.manifest() for c in MATRIX])
    mds = {
        c.name: kube.wait_for(
            "md", c.name, ready_at(1, c.replicas), timeout=WAIT_S, what=f"[{c.name}] Ready"
        )
        for c in MATRIX
    }
    # The disruption controller counts each budget's pods: proof its selector matches.
    for c in MATRIX:
        kube.wait_for(
            "pdb",
            c.name,
            healthy_pods(c.replicas),
            timeout=WAIT_S,
            what=f"[{c.name}] PDB counts its healthy pods",
        )
    objects: list[dict[str, Any]] = kube.get(OWNED_KINDS)["items"]
    problems = [p for c in MATRIX for p in check_combo(c, mds[c.name], objects, namespace)]
    assert not problems, "\n".join(problems)


# --- the operator killed mid-rollout ---------------------------------------------------------


def held_rollout(name: str, replicas: int, deadline: int, version: str) -> dict[str, Any]:
    """``name`` at ``version`` with pods that stay unready until released (or forever)."""
    return model_deployment(
        name,
        annotations={POD_ANNOTATIONS: json.dumps({NEVER_READY: "true"})},
        replicas=replicas,
        rollout={"progressDeadlineSeconds": deadline, "maxUnavailable": 0},
        model={"name": "llama-7b", "uri": "file:///models/llama-7b", "version": version},
    )


def rolling_out(revision: int) -> Callable[[dict[str, Any]], bool]:
    """Predicate: ``revision`` is current and still Progressing."""
    return lambda md: (
        md_status(md).get("currentRevision") == revision
        and revision_phases(md).get(revision) == "Progressing"
        and is_true(md, "Progressing")
    )


def release_pods(kube: Kubectl, name: str, done: Callable[[], bool], timeout: float) -> None:
    """Let revision 2's held pods become Ready (their model "finished loading"), new ones
    too as the Deployment controller creates them, until ``done()``."""
    deadline = time.monotonic() + timeout
    selector = f"clawdbot.io/model-deployment={name},clawdbot.io/revision=2"
    while not done():
        for pod in kube.get("pods", None, "-l", selector)["items"]:
            meta = pod["metadata"]
            if (meta.get("annotations") or {}).get(NEVER_READY) == "true":
                kube.run("annotate", "pod", meta["name"], f"{NEVER_READY}=false", "--overwrite")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{name}: the released rollout did not finish in {timeout:.0f}s")
        time.sleep(0.5)


def test_operator_killed_mid_rollout_converges_after_restart(
    cluster: E2ECluster, kube: Kubectl, namespace: str, crds: None, tmp_path: Path
) -> None:
    name, replicas = "llama", 3
    with contextlib.ExitStack() as stack:
        first = start_operator(stack, cluster, namespace, tmp_path / "operator-1.log")
        kube.apply(model_deployment(name, replicas=replicas))
        kube.wait_for("md", name, ready_at(1, replicas), timeout=WAIT_S, what="revision 1")
        # Revision 2's pods stay unready until the test releases them, so the operator is
        # killed with the rollout surely under way, whatever the machine's speed.
        kube.apply(held_rollout(name, replicas, deadline=120, version="2"))
        kube.wait_for("md", name, rolling_out(2), timeout=WAIT_S, what="revision 2 rolling out")
        kube.wait_for(
            "deployment",
            name,
            lambda d: (
                d["spec"]["template"]["metadata"]["labels"]["clawdbot.io/revision"] == "2"
                and (d.get("status") or {}).get("updatedReplicas", 0) >= 1
            ),
            timeout=WAIT_S,
            what="a revision 2 pod created",
        )
        assert first.kill() == -signal.SIGKILL
    md = kube.get("md", name)
    assert rolling_out(2)(md), f"not mid-rollout when killed: {md_status(md)}"
    created_before = len(events(kube, "Created"))

    with contextlib.ExitStack() as stack:
        start_operator(stack, cluster, namespace, tmp_path / "operator-2.log")
        release_pods(
            kube, name, lambda: ready_at(2, replicas)(kube.get("md", name)), timeout=WAIT_S
        )
        md = kube.wait_for("md", name, ready_at(2, replicas), timeout=WAIT_S, what="revision 2")
        kube.wait_for(
            "deployment",
            name,
            lambda d: (d.get("status") or {}).get("replicas") == replicas,
            timeout=WAIT_S,
            what="revision 1's pods gone",
        )
        objects = owned_objects(kube, name)

    st = md_status(md)
    assert revision_phases(md) == {1: "Healthy", 2: "Healthy"}
    assert (st["stableRevision"], st["updatedReplicas"]) == (2, replicas)
    progressing = next(c for c in st["conditions"] if c["type"] == "Progressing")
    assert (progressing["status"], progressing["reason"]) == ("False", "RolloutComplete")
    # One of each child, the two revisions' snapshots, and only revision 2's pods.
    assert kinds(objects) == {
        "Deployment": 1,
        "ReplicaSet": 2,
        "Pod": replicas,
        "Service": 1,
        "PodDisruptionBudget": 1,
        "NetworkPolicy": 1,
        "ControllerRevision": 2,
    }
    revisions = sorted(o["metadata"]["name"] for o in objects if o["kind"] == "ControllerRevision")
    assert revisions == [f"{name}-r1", f"{name}-r2"]
    pods = [o for o in objects if o["kind"] == "Pod"]
    assert all(revision_of(p) == "2" and serving(p) for p in pods), [
        (p["metadata"]["name"], revision_of(p)) for p in pods
    ]
    # The restarted operator found its children and created none again.
    assert len(events(kube, "Created")) == created_before == 4
    healthy = [e for e in events(kube, "RevisionHealthy") if "Revision 2" in e["message"]]
    assert len(healthy) == 1, healthy


def test_restarted_operator_rolls_back_on_the_revisions_own_deadline(
    cluster: E2ECluster, kube: Kubectl, namespace: str, crds: None, tmp_path: Path
) -> None:
    """The progress deadline runs from when the revision started, across operator restarts;
    and the old revision keeps serving at full strength the whole time."""
    name, replicas, deadline = "phi", 2, 30
    floor = replicas  # maxUnavailable 0: no old pod may leave service during the rollout
    with contextlib.ExitStack() as stack:
        first = start_operator(stack, cluster, namespace, tmp_path / "operator-1.log")
        kube.apply(
            model_deployment(name, replicas=replicas, rollout={"progressDeadlineSeconds": deadline})
        )
        kube.wait_for("md", name, ready_at(1, replicas), timeout=WAIT_S, what="revision 1")
        watch = stack.enter_context(PodWatch(kube, f"clawdbot.io/model-deployment={name}"))
        watch.wait_until(
            lambda pods: serving_at(1)(pods) == replicas, timeout=WAIT_S, what="revision 1 up"
        )
        start = watch.mark()

        kube.apply(held_rollout(name, replicas, deadline=deadline, version="2"))
        md = kube.wait_for("md", name, rolling_out(2), timeout=WAIT_S, what="revision 2 started")
        began = transition_time(md, "Progressing")
        assert first.kill() == -signal.SIGKILL
        # The outage itself: nothing to wait for, the point is time passing with no operator.
        # Long enough that a clock restarted by the new operator would miss the deadline by
        # more than NOTICE_S.
        time.sleep(deadline / 2)
        restarted = datetime.now(UTC)
        start_operator(stack, cluster, namespace, tmp_path / "operator-2.log")

        md = kube.wait_for(
            "md",
            name,
            lambda md: is_true(md, "RolledBack") and md_status(md).get("currentRevision") == 1,
            timeout=deadline + WAIT_S,
            what="rolled back to revision 1",
        )
        watch.wait_until(
            lambda pods: (
                all(revision_of(p) == "1" for p in pods.values())
                and serving_at(1)(pods) == replicas
            ),
            timeout=WAIT_S,
            what="only revision 1's pods left",
        )
        states = watch.states(since=start)

    rolled_at = transition_time(md, "RolledBack")
    after = (rolled_at - began).total_seconds()
    assert deadline <= after <= deadline + NOTICE_S, (
        f"rolled back {after:.0f}s after revision 2 started (deadline {deadline}s)"
    )
    assert rolled_at < restarted + timedelta(seconds=deadline), "the restart reset the clock"
    rolled = next(c for c in md_status(md)["conditions"] if c["type"] == "RolledBack")
    assert rolled["reason"] == "ProgressDeadlineExceeded"
    assert revision_phases(md) == {1: "Healthy", 2: "RolledBack"}
    assert len(events(kube, "RolledBack")) == 1

    assert any(any(revision_of(p) == "2" for p in s.values()) for s in states), (
        "no revision 2 pod was ever seen: the watch missed the rollout"
    )
    lowest = min(serving_at(1)(s) for s in states)
    assert lowest >= floor, f"revision 1 dropped to {lowest} serving pods (floor {floor})"


# --- deletion --------------------------------------------------------------------------------


def cpu_model(name: str, **spec: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "runtime": "onnx",
        "precision": "fp16",
        "accelerator": {"type": "cpu"},
        "model": {"name": "tiny", "uri": "file:///models/tiny", "version": "1"},
    }
    base.update(spec)
    return model_deployment(name, **base)


def wait_until_collected_by_owner(kube: Kubectl, timeout: float) -> float:
    """Wait until the garbage collector acts on ModelDeployments; the seconds it took.

    It learns a new CRD's resources on its periodic discovery (every 30s): until then a
    deleted ModelDeployment's children stay. A ConfigMap owned by a throwaway
    ModelDeployment (one the operator rejects, so it gets no children) shows when it does.
    """
    began = time.monotonic()
    canary = model_deployment(
        "gc-canary",
        runtime="onnx",
        precision="int8",
        accelerator={"type": "nvidia", "count": 2},  # onnx takes one GPU: InvalidSpec
    )
    kube.apply(canary)
    owner = kube.get("md", "gc-canary")
    ref = {
        "apiVersion": "clawdbot.io/v1alpha1",
        "kind": "ModelDeployment",
        "name": "gc-canary",
        "uid": owner["metadata"]["uid"],
    }
    kube.apply(
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "gc-canary", "ownerReferences": [ref]},
        }
    )
    kube.delete("md", "gc-canary")
    while kube.get_or_none("configmap", "gc-canary") is not None:
        if time.monotonic() - began > timeout:
            raise TimeoutError(f"the garbage collector ignored ModelDeployments for {timeout:.0f}s")
        time.sleep(0.5)
    return time.monotonic() - began


def test_deleting_a_model_deployment_removes_everything_it_owned(
    kube: Kubectl, operator: Operator
) -> None:
    """Owner references hand the children to the garbage collector; the operator must not
    fight it (recreate what it deletes), with background or foreground propagation."""
    waited = wait_until_collected_by_owner(kube, timeout=WAIT_S)
    print(f"the garbage collector acts on ModelDeployments ({waited:.1f}s to find out)")
    cascades = {"bg": "background", "fg": "foreground"}
    autoscaling = {"minReplicas": 2, "maxReplicas": 3}
    for name in cascades:
        kube.apply(cpu_model(name, replicas=2, autoscaling=autoscaling))
    for name in cascades:
        kube.wait_for("md", name, ready_at(1, 2), timeout=WAIT_S, what=f"{name} at revision 1")
    # A second revision: two ControllerRevisions and two ReplicaSets to clean up.
    for name in cascades:
        version = {"model": {"name": "tiny", "uri": "file:///models/tiny", "version": "2"}}
        kube.run("patch", "md", name, "--type=merge", "-p", json.dumps({"spec": version}))
    for name in cascades:
        kube.wait_for("md", name, ready_at(2, 2), timeout=WAIT_S, what=f"{name} at revision 2")
    for name in cascades:
        kube.wait_for(
            "deployment",
            name,
            lambda d: (d.get("status") or {}).get("replicas") == 2,
            timeout=WAIT_S,
            what="revision 1's pods gone",
        )
        assert kinds(owned_objects(kube, name)) == {
            "Deployment": 1,
            "ReplicaSet": 2,
            "Pod": 2,
            "Service": 1,
            "PodDisruptionBudget": 1,
            "NetworkPolicy": 1,
            "HorizontalPodAutoscaler": 1,
            "ControllerRevision": 2,
        }, name

    began = time.monotonic()
    for name, cascade in cascades.items():
        kube.run("delete", "md", name, f"--cascade={cascade}", "--wait=false")
    while True:
        left = {name: remaining(kube, name) for name in cascades}
        if not any(left.values()):
            break
        assert time.monotonic() - began < CLEANUP_S, f"still there after {CLEANUP_S:.0f}s: {left}"
        time.sleep(0.5)
    took = time.monotonic() - began
    print(f"everything of both ModelDeployments deleted {took:.1f}s after the delete")

    # The operator is alive and has handled the deletions' events: a new model comes up...
    kube.apply(cpu_model("after", replicas=1))
    kube.wait_for("md", "after", ready_at(1, 1), timeout=WAIT_S, what="a later model Ready")
    # ...and nothing of the deleted ones came back.
    for name in cascades:
        assert not owned_objects(kube, name), f"{name}: children came back after the delete"


def remaining(kube: Kubectl, name: str) -> Counter[str]:
    """What is left of ModelDeployment ``name``: itself, its children, their pods."""
    left = kinds(owned_objects(kube, name))
    if kube.get_or_none("md", name) is not None:
        left["ModelDeployment"] += 1
    return left
