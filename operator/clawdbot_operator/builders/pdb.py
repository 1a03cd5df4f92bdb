"""The PodDisruptionBudget: voluntary evictions (node drains) take one model pod at a time."""

from __future__ import annotations

from clawdbot_api.v1alpha1 import ModelDeployment
from clawdbot_operator.builders.meta import Manifest, object_meta, selector_labels


def build_pdb(md: ModelDeployment, revision: int) -> Manifest:
    """maxUnavailable 1 rather than a minAvailable: a single-replica model must still let a
    node drain (it reloads elsewhere) instead of blocking it forever."""
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": object_meta(md, revision),
        "spec": {
            "maxUnavailable": 1,
            "selector": {"matchLabels": selector_labels(md)},
            "unhealthyPodEvictionPolicy": "AlwaysAllow",
        },
    }
