"""Names, labels and owner references shared by every child of a ModelDeployment."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, Final

from clawdbot_api.v1alpha1 import API_VERSION, ModelDeployment

Manifest = dict[str, Any]

MANAGED_BY: Final = "clawdbot-operator"
COMPONENT: Final = "model-server"
LABEL_MODEL_DEPLOYMENT: Final = "clawdbot.io/model-deployment"
LABEL_REVISION: Final = "clawdbot.io/revision"
LABEL_NAMESPACE: Final = "clawdbot.io/namespace"
ANNOTATION_REVISION_HASH: Final = "clawdbot.io/revision-hash"
ANNOTATION_POD_ANNOTATIONS: Final = "clawdbot.io/pod-annotations"
"""ModelDeployment annotation: a JSON object of annotations copied onto the model pods
(part of the revision, so changing it rolls the pods)."""

HTTP_PORT: Final = 8000
GRPC_PORT: Final = 8001


def name_of(md: ModelDeployment) -> str:
    """The ModelDeployment's name (every child shares it)."""
    assert md.metadata.name, "a ModelDeployment from the API server always has a name"
    return md.metadata.name


def namespace_of(md: ModelDeployment) -> str:
    """The ModelDeployment's namespace."""
    return md.metadata.namespace or "default"


def selector_labels(md: ModelDeployment) -> dict[str, str]:
    """The pod selector: stable for the life of the ModelDeployment (Deployment selectors are
    immutable), so no version or revision in it."""
    return {
        "app.kubernetes.io/instance": name_of(md),
        "app.kubernetes.io/managed-by": MANAGED_BY,
        LABEL_MODEL_DEPLOYMENT: name_of(md),
    }


def selector_string(md: ModelDeployment) -> str:
    """The selector as ``k=v,k=v`` (status.selector, read by the scale subresource)."""
    return ",".join(f"{k}={v}" for k, v in sorted(selector_labels(md).items()))


def labels(md: ModelDeployment, revision: int | None) -> dict[str, str]:
    """Labels of every child and of the pods."""
    out = {
        **selector_labels(md),
        "app.kubernetes.io/name": f"{md.spec.runtime.value}-server",
        "app.kubernetes.io/component": COMPONENT,
        "app.kubernetes.io/version": _label_value(md.spec.model.version),
    }
    if revision is not None:
        out[LABEL_REVISION] = str(revision)
    return out


def controller_uid(obj: Mapping[str, Any], kind: str) -> str | None:
    """The UID of the controller owner reference of ``kind`` on ``obj``, if any."""
    for ref in (obj.get("metadata") or {}).get("ownerReferences") or []:
        if ref.get("controller") and ref.get("kind") == kind and ref.get("uid"):
            return str(ref["uid"])
    return None


def owner_reference(md: ModelDeployment) -> Manifest:
    """The controller reference that makes a child garbage-collected with its owner."""
    assert md.metadata.uid, "a ModelDeployment from the API server always has a uid"
    return {
        "apiVersion": API_VERSION,
        "kind": "ModelDeployment",
        "name": name_of(md),
        "uid": md.metadata.uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def object_meta(md: ModelDeployment, revision: int | None) -> Manifest:
    """metadata of a namespaced child named after its owner."""
    return {
        "name": name_of(md),
        "namespace": namespace_of(md),
        "labels": labels(md, revision),
        "ownerReferences": [owner_reference(md)],
    }


def pod_annotations(md: ModelDeployment) -> dict[str, str]:
    """Annotations requested for the pods through ``clawdbot.io/pod-annotations``.

    Raises ValueError (naming the annotation) when it is not a JSON object of strings.
    """
    raw = md.metadata.annotations.get(ANNOTATION_POD_ANNOTATIONS)
    if raw is None:
        return {}
    try:
        parsed = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ValueError(f"not valid JSON ({exc.msg})") from exc
    if not isinstance(parsed, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in parsed.items()
    ):
        raise ValueError("must be a JSON object of string keys and string values")
    return dict(parsed)


def _label_value(value: str) -> str:
    # Label values: at most 63 characters of [A-Za-z0-9_.-], alphanumeric at both ends.
    cleaned = "".join(c if c.isalnum() or c in "_.-" else "_" for c in value)[:63]
    return cleaned.strip("_.-") or "unknown"
