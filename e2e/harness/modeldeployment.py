"""ModelDeployment manifests and the checks e2e tests make on them and their children."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

from e2e.harness.kube import Kubectl, condition, is_true

NEVER_READY = "clawdbot.io/e2e-never-ready"
"""Pod annotation that keeps a kwok pod Running but never Ready (e2e/cluster/kwok-stages.yaml);
setting it to anything but "true" later makes the pod Ready."""
POD_ANNOTATIONS = "clawdbot.io/pod-annotations"
"""ModelDeployment annotation whose JSON object the operator copies onto the model pods."""
MANAGED_BY = "clawdbot-operator"


def model_deployment(
    name: str, annotations: dict[str, str] | None = None, **spec: Any
) -> dict[str, Any]:
    """A vLLM-on-NVIDIA ModelDeployment with two replicas and a 30s progress deadline;
    ``spec`` keys replace the defaults."""
    base: dict[str, Any] = {
        "model": {"name": "llama-7b", "uri": "file:///models/llama-7b", "version": "1"},
        "runtime": "vllm",
        "precision": "bf16",
        "accelerator": {"type": "nvidia", "count": 1, "memoryFraction": 0.8},
        "replicas": 2,
        "rollout": {"progressDeadlineSeconds": 30},
    }
    base.update(spec)
    meta: dict[str, Any] = {"name": name}
    if annotations:
        meta["annotations"] = annotations
    return {
        "apiVersion": "clawdbot.io/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": meta,
        "spec": base,
    }


def md_status(obj: dict[str, Any]) -> dict[str, Any]:
    """``status`` of an object, {} when it has none yet."""
    status: dict[str, Any] = obj.get("status") or {}
    return status


def ready_at(revision: int, replicas: int) -> Callable[[dict[str, Any]], bool]:
    """Predicate: Ready and Available at ``revision`` with ``replicas`` ready, status current."""

    def check(md: dict[str, Any]) -> bool:
        st = md_status(md)
        return (
            is_true(md, "Ready")
            and st.get("currentRevision") == revision
            and st.get("readyReplicas") == replicas
            and st.get("phase") == "Available"
            and st.get("observedGeneration") == md["metadata"]["generation"]
        )

    return check


def transition_time(md: dict[str, Any], type_: str) -> datetime:
    """lastTransitionTime of condition ``type_`` (the operator's clock, in seconds)."""
    cond = condition(md, type_)
    assert cond is not None, f"no {type_} condition in {md_status(md)}"
    return datetime.fromisoformat(cond["lastTransitionTime"].replace("Z", "+00:00"))


def revision_phases(md: dict[str, Any]) -> dict[int, str]:
    """status.revisions as {number: phase}."""
    return {r["revision"]: r["phase"] for r in md_status(md).get("revisions") or []}


def owned_by(obj: dict[str, Any], owner: dict[str, Any]) -> bool:
    """Whether ``owner`` is ``obj``'s controller (the reference garbage collection follows)."""
    refs = obj["metadata"].get("ownerReferences") or []
    return any(
        r["kind"] == owner["kind"]
        and r["uid"] == owner["metadata"]["uid"]
        and r.get("controller") is True
        for r in refs
    )


def selector_labels(name: str) -> dict[str, str]:
    """The labels every child's selector uses for ModelDeployment ``name``."""
    return {
        "app.kubernetes.io/instance": name,
        "app.kubernetes.io/managed-by": MANAGED_BY,
        "clawdbot.io/model-deployment": name,
    }


def events(kube: Kubectl, reason: str) -> list[dict[str, Any]]:
    """Events in the namespace with this reason."""
    found: list[dict[str, Any]] = kube.get("events")["items"]
    return [e for e in found if e.get("reason") == reason]


def enforce_restricted(kubectl: Kubectl, namespace: str) -> None:
    """Enforce the ``restricted`` Pod Security Standard on ``namespace``."""
    kubectl.run(
        "label",
        "namespace",
        namespace,
        "pod-security.kubernetes.io/enforce=restricted",
        "pod-security.kubernetes.io/enforce-version=latest",
        "--overwrite",
    )
