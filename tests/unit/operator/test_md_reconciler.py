"""The reconcile loop against an in-memory API: children, status, drift, revisions, rollback."""

from __future__ import annotations

import copy
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from md_support import UID

from clawdbot_operator.config import OperatorConfig
from clawdbot_operator.kube import Kube
from clawdbot_operator.loadreports import LoadReportStore
from clawdbot_operator.reconciler import Reconciler

Obj = dict[str, Any]


class FakeKube(Kube):
    """Objects in a dict; apply replaces (plus a generation bump when the spec changes)."""

    def __init__(self) -> None:
        self.field_manager = "test"
        self.objects: dict[tuple[str, str, str], Obj] = {}
        self.events: list[tuple[str, str, str]] = []
        self.status_patches = 0

    def _key(self, kind: str, ns: str, name: str) -> tuple[str, str, str]:
        return (kind, ns, name)

    async def apply(self, manifest: Obj) -> Obj:
        meta = manifest["metadata"]
        key = self._key(manifest["kind"], meta["namespace"], meta["name"])
        old = self.objects.get(key)
        new = copy.deepcopy(manifest)
        generation = 1
        # The API server gives an object its UID when it is created, and keeps it.
        new["metadata"]["uid"] = (old or new)["metadata"].get("uid") or f"uid-{key[0]}-{key[2]}"
        if old is not None:
            generation = old["metadata"]["generation"]
            if old.get("spec") != new.get("spec"):
                generation += 1
            new["status"] = old.get("status", {})
        new["metadata"]["generation"] = generation
        self.objects[key] = new
        return copy.deepcopy(new)

    async def get(self, api_version: str, kind: str, namespace: str, name: str) -> Obj | None:
        found = self.objects.get(self._key(kind, namespace, name))
        return copy.deepcopy(found) if found else None

    async def list(
        self, api_version: str, kind: str, namespace: str | None, label_selector: str = ""
    ) -> list[Obj]:
        wanted = dict(p.split("=", 1) for p in label_selector.split(",") if p)
        return [
            copy.deepcopy(o)
            for (k, ns, _), o in self.objects.items()
            if k == kind
            and (namespace is None or ns == namespace)
            and wanted.items() <= o["metadata"].get("labels", {}).items()
        ]

    async def delete(self, api_version: str, kind: str, namespace: str, name: str) -> bool:
        return self.objects.pop(self._key(kind, namespace, name), None) is not None

    async def patch_model_deployment(
        self, namespace: str, name: str, patch: Obj, *, status: bool = False
    ) -> Obj:
        obj = self.objects[self._key("ModelDeployment", namespace, name)]
        if status:
            self.status_patches += 1
            obj["status"] = patch["status"]
        else:
            for k, v in patch["spec"].items():
                if v is None:
                    obj["spec"].pop(k, None)
                else:
                    obj["spec"][k] = v
            obj["metadata"]["generation"] += 1
        return copy.deepcopy(obj)

    async def post_event(self, involved: Obj, type_: str, reason: str, message: str) -> None:
        self.events.append((type_, reason, message))

    # test helpers

    def md(self) -> Obj:
        return self.objects[("ModelDeployment", "ai", "llama")]

    def deployment(self) -> Obj:
        return self.objects[("Deployment", "ai", "llama")]

    def roll_out(self, ready: bool = True) -> None:
        """Play the Deployment controller and kubelet: every replica updated (and ready)."""
        dep = self.deployment()
        n = dep["spec"]["replicas"]
        dep["status"] = {
            "observedGeneration": dep["metadata"]["generation"],
            "replicas": n,
            "updatedReplicas": n,
            "readyReplicas": n if ready else 0,
            "availableReplicas": n if ready else 0,
        }

    def reasons(self) -> list[str]:
        out = [r for _, r, _ in self.events]
        self.events.clear()
        return out

    def set_spec(self, **spec: Any) -> None:
        self.md()["spec"].update(spec)
        self.md()["metadata"]["generation"] += 1


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def kube() -> FakeKube:
    k = FakeKube()
    k.objects[("ModelDeployment", "ai", "llama")] = {
        "apiVersion": "clawdbot.io/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": "llama", "namespace": "ai", "uid": UID, "generation": 1},
        "spec": {
            "model": {"name": "llama-7b", "uri": "pvc://models/llama", "version": "1"},
            "replicas": 2,
            "rollout": {"progressDeadlineSeconds": 60},
        },
    }
    return k


async def test_lifecycle(kube: FakeKube) -> None:
    clock = Clock()
    rec = Reconciler(kube, OperatorConfig(), LoadReportStore(), clock)

    await rec.reconcile_named("ai", "llama")
    assert sorted(k for k, _, _ in kube.objects) == [
        "ControllerRevision",
        "Deployment",
        "ModelDeployment",
        "NetworkPolicy",
        "PodDisruptionBudget",
        "Service",
    ]
    status = kube.md()["status"]
    assert (status["phase"], status["currentRevision"]) == ("Pending", 1)
    assert kube.reasons() == ["Created"] * 4 + ["NewRevision"]

    kube.roll_out()
    await rec.reconcile_named("ai", "llama")
    status = kube.md()["status"]
    assert (status["phase"], status["readyReplicas"], status["stableRevision"]) == (
        "Available",
        2,
        1,
    )
    assert kube.reasons() == ["RevisionHealthy"]

    # Level-based: nothing changed, nothing written.
    patches = kube.status_patches
    await rec.reconcile_named("ai", "llama")
    assert (kube.status_patches, kube.reasons()) == (patches, [])

    # Drift: a deleted Service comes back.
    del kube.objects[("Service", "ai", "llama")]
    await rec.reconcile_named("ai", "llama")
    assert ("Service", "ai", "llama") in kube.objects
    assert kube.reasons() == ["Created"]

    # Scaling is not a revision.
    kube.set_spec(replicas=3)
    await rec.reconcile_named("ai", "llama")
    assert kube.deployment()["spec"]["replicas"] == 3
    assert kube.md()["status"]["currentRevision"] == 1
    kube.roll_out()
    await rec.reconcile_named("ai", "llama")

    # A new model version is revision 2; its pods never get ready; past the deadline it is
    # rolled back to revision 1.
    kube.set_spec(model={"name": "llama-7b", "uri": "pvc://models/llama", "version": "2"})
    await rec.reconcile_named("ai", "llama")
    template = kube.deployment()["spec"]["template"]["metadata"]
    assert template["labels"]["clawdbot.io/revision"] == "2"
    assert kube.reasons() == ["NewRevision"]
    kube.roll_out(ready=False)
    clock.now += timedelta(seconds=30)
    await rec.reconcile_named("ai", "llama")
    assert kube.md()["status"]["phase"] == "Progressing"
    clock.now += timedelta(seconds=31)
    await rec.reconcile_named("ai", "llama")
    status = kube.md()["status"]
    assert status["currentRevision"] == 1
    assert [(r["revision"], r["phase"]) for r in status["revisions"]] == [
        (1, "Healthy"),
        (2, "RolledBack"),
    ]
    rolled = next(c for c in status["conditions"] if c["type"] == "RolledBack")
    assert (rolled["status"], rolled["reason"]) == ("True", "ProgressDeadlineExceeded")
    assert (
        kube.deployment()["spec"]["template"]["metadata"]["labels"]["clawdbot.io/revision"] == "1"
    )
    assert kube.reasons() == ["RolledBack"]

    # The same spec is not retried...
    await rec.reconcile_named("ai", "llama")
    assert kube.md()["status"]["currentRevision"] == 1
    # ...and without revision 1's snapshot, the operator leaves the pods alone, not guessing.
    snap1 = kube.objects.pop(("ControllerRevision", "ai", "llama-r1"))
    await rec.reconcile_named("ai", "llama")
    assert (
        kube.deployment()["spec"]["template"]["metadata"]["labels"]["clawdbot.io/revision"] == "1"
    )
    kube.objects[("ControllerRevision", "ai", "llama-r1")] = snap1
    # ...until asked with rollbackTo, which the operator clears once done.
    kube.set_spec(rollbackTo=2)
    await rec.reconcile_named("ai", "llama")
    assert kube.md()["status"]["currentRevision"] == 2
    assert "rollbackTo" not in kube.md()["spec"]
    assert kube.reasons() == ["RollbackRequested"]


async def test_invalid_spec_creates_nothing_and_warns_once(kube: FakeKube) -> None:
    kube.set_spec(runtime="onnx", precision="int8", accelerator={"type": "nvidia", "count": 2})
    rec = Reconciler(kube, OperatorConfig(), LoadReportStore(), Clock())
    await rec.reconcile_named("ai", "llama")
    await rec.reconcile_named("ai", "llama")
    assert [k for k, _, _ in kube.objects] == ["ModelDeployment"]
    status = kube.md()["status"]
    ready = next(c for c in status["conditions"] if c["type"] == "Ready")
    assert (status["phase"], ready["reason"]) == ("Failed", "InvalidSpec")
    assert "spec.accelerator.count" in ready["message"]
    assert kube.events == [("Warning", "InvalidSpec", f"Invalid spec: {ready['message']}.")]


async def test_autoscaling_off_removes_the_hpa(kube: FakeKube) -> None:
    kube.set_spec(autoscaling={"maxReplicas": 4})
    rec = Reconciler(kube, OperatorConfig(), LoadReportStore(), Clock())
    await rec.reconcile_named("ai", "llama")
    assert ("HorizontalPodAutoscaler", "ai", "llama") in kube.objects
    del kube.md()["spec"]["autoscaling"]
    await rec.reconcile_named("ai", "llama")
    assert ("HorizontalPodAutoscaler", "ai", "llama") not in kube.objects
    assert "Deleted" in kube.reasons()


async def _healthy_then_version_2(kube: FakeKube, clock: Clock) -> None:
    rec = Reconciler(kube, OperatorConfig(), LoadReportStore(), clock)
    await rec.reconcile_named("ai", "llama")
    kube.roll_out()
    await rec.reconcile_named("ai", "llama")
    kube.set_spec(model={"name": "llama-7b", "uri": "pvc://models/llama", "version": "2"})
    await rec.reconcile_named("ai", "llama")
    assert kube.md()["status"]["currentRevision"] == 2
    kube.reasons()


async def test_a_restarted_operator_keeps_the_rollouts_deadline(kube: FakeKube) -> None:
    """The deadline runs from when the revision started (recorded in status), not from when
    this process started: a restart late in the window still rolls back on time."""
    clock = Clock()
    await _healthy_then_version_2(kube, clock)
    kube.roll_out(ready=False)
    clock.now += timedelta(seconds=50)  # of 60
    restarted = Reconciler(kube, OperatorConfig(), LoadReportStore(), clock)
    await restarted.reconcile_named("ai", "llama")
    assert kube.md()["status"]["currentRevision"] == 2
    clock.now += timedelta(seconds=11)
    await restarted.reconcile_named("ai", "llama")
    status = kube.md()["status"]
    assert status["currentRevision"] == 1
    assert [(r["revision"], r["phase"]) for r in status["revisions"]] == [
        (1, "Healthy"),
        (2, "RolledBack"),
    ]
    assert kube.reasons() == ["RolledBack"]


async def test_a_restarted_operator_finishes_the_rollout_without_duplicates(
    kube: FakeKube,
) -> None:
    clock = Clock()
    await _healthy_then_version_2(kube, clock)
    before = sorted(kube.objects)
    restarted = Reconciler(kube, OperatorConfig(), LoadReportStore(), clock)
    await restarted.reconcile_named("ai", "llama")
    assert sorted(kube.objects) == before  # nothing created again
    assert kube.reasons() == []  # no second NewRevision, no Created
    kube.roll_out()
    await restarted.reconcile_named("ai", "llama")
    status = kube.md()["status"]
    assert (status["phase"], status["currentRevision"], status["stableRevision"]) == (
        "Available",
        2,
        2,
    )
    assert [(r["revision"], r["phase"]) for r in status["revisions"]] == [
        (1, "Healthy"),
        (2, "Healthy"),
    ]
    assert kube.reasons() == ["RevisionHealthy"]


async def test_a_snapshot_left_by_a_run_that_died_is_replaced_when_the_spec_moved_on(
    kube: FakeKube,
) -> None:
    """A run wrote revision 2's ControllerRevision and died before recording it; the spec
    then changed. The next run's revision 2 must run the new spec, not the snapshot."""
    clock = Clock()
    rec = Reconciler(kube, OperatorConfig(), LoadReportStore(), clock)
    await rec.reconcile_named("ai", "llama")
    kube.roll_out()
    await rec.reconcile_named("ai", "llama")
    recorded = copy.deepcopy(kube.md()["status"])
    kube.set_spec(model={"name": "llama-7b", "uri": "pvc://models/llama", "version": "2"})
    await rec.reconcile_named("ai", "llama")
    kube.md()["status"] = recorded  # the status write that never happened
    kube.set_spec(model={"name": "llama-7b", "uri": "pvc://models/llama", "version": "3"})

    restarted = Reconciler(kube, OperatorConfig(), LoadReportStore(), clock)
    await restarted.reconcile_named("ai", "llama")
    status = kube.md()["status"]
    assert [(r["revision"], r["modelVersion"]) for r in status["revisions"]] == [
        (1, "1"),
        (2, "3"),
    ]
    cr = kube.objects[("ControllerRevision", "ai", "llama-r2")]
    assert cr["data"]["spec"]["model"]["version"] == "3"
    assert (
        cr["metadata"]["annotations"]["clawdbot.io/revision-hash"] == status["revisions"][1]["hash"]
    )
    template = kube.deployment()["spec"]["template"]["metadata"]
    assert template["labels"]["app.kubernetes.io/version"] == "3"


def crash_looping_pod(name: str, revision: str, owner: str | None) -> Obj:
    """A pod with the ModelDeployment's labels whose container crash-loops."""
    refs = [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "rs", "uid": owner,
             "controller": True}] if owner else []  # fmt: skip
    return {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "ai", "ownerReferences": refs,
                     "labels": {"app.kubernetes.io/instance": "llama",
                                "app.kubernetes.io/managed-by": "clawdbot-operator",
                                "clawdbot.io/model-deployment": "llama",
                                "clawdbot.io/revision": revision}},
        "status": {"containerStatuses": [
            {"restartCount": 9, "state": {"waiting": {"reason": "CrashLoopBackOff"}}}]},
    }  # fmt: skip


async def test_only_the_deployments_own_pods_can_fail_a_revision(kube: FakeKube) -> None:
    """A crash-looping pod that merely carries the labels (anyone who can create pods can
    write them) does not roll a revision back; one of the Deployment's ReplicaSets does."""
    clock = Clock()
    rec = Reconciler(kube, OperatorConfig(), LoadReportStore(), clock)
    await rec.reconcile_named("ai", "llama")
    kube.roll_out()
    await rec.reconcile_named("ai", "llama")
    kube.set_spec(model={"name": "llama-7b", "uri": "pvc://models/llama", "version": "2"})
    await rec.reconcile_named("ai", "llama")
    deployment_uid = kube.deployment()["metadata"]["uid"]
    kube.objects[("Pod", "ai", "stranger")] = crash_looping_pod("stranger", "2", owner=None)
    kube.objects[("Pod", "ai", "foreign")] = crash_looping_pod("foreign", "2", owner="rs-x")
    await rec.reconcile_named("ai", "llama")
    assert kube.md()["status"]["currentRevision"] == 2
    assert "RolledBack" not in kube.reasons()

    labels = kube.deployment()["spec"]["template"]["metadata"]["labels"]
    kube.objects[("ReplicaSet", "ai", "llama-2")] = {
        "apiVersion": "apps/v1", "kind": "ReplicaSet",
        "metadata": {"name": "llama-2", "namespace": "ai", "uid": "rs-2", "labels": labels,
                     "ownerReferences": [{"apiVersion": "apps/v1", "kind": "Deployment",
                                          "name": "llama", "uid": deployment_uid,
                                          "controller": True}]},
    }  # fmt: skip
    kube.objects[("Pod", "ai", "llama-2-a")] = crash_looping_pod("llama-2-a", "2", owner="rs-2")
    await rec.reconcile_named("ai", "llama")
    assert kube.md()["status"]["currentRevision"] == 1
    assert "RolledBack" in kube.reasons()
