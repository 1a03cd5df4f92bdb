"""The HorizontalPodAutoscaler that scales the ModelDeployment on the sidecars' load reports.

It targets the ModelDeployment's scale subresource (not the Deployment), so the desired
replica count lives in one place, spec.replicas, and the operator propagates it.
"""

from __future__ import annotations

from typing import Final

from clawdbot_api.v1alpha1 import API_VERSION, AutoscalingMetric, ModelDeployment
from clawdbot_operator.builders.meta import (
    LABEL_MODEL_DEPLOYMENT,
    LABEL_NAMESPACE,
    Manifest,
    name_of,
    namespace_of,
    object_meta,
)

METRIC_NAMES: Final[dict[AutoscalingMetric, str]] = {
    AutoscalingMetric.IN_FLIGHT: "clawdbot_inflight_requests",
    AutoscalingMetric.QUEUE: "clawdbot_queue_depth",
    AutoscalingMetric.RPS: "clawdbot_requests_per_second",
}
"""External metric served by the operator (external.metrics.k8s.io) per spec metric."""


def quantity(value: float) -> str:
    """A Kubernetes quantity for a metric target: ``8``, ``0.5`` -> ``500m``."""
    if float(value).is_integer():
        return str(int(value))
    return f"{round(value * 1000)}m"


def metric_selector(md: ModelDeployment) -> dict[str, str]:
    """Labels the external metric is selected by (the metrics API matches report labels)."""
    return {LABEL_MODEL_DEPLOYMENT: name_of(md), LABEL_NAMESPACE: namespace_of(md)}


def build_hpa(md: ModelDeployment, revision: int) -> Manifest | None:
    """The autoscaling/v2 HPA, or None when spec.autoscaling is unset."""
    auto = md.spec.autoscaling
    if auto is None:
        return None
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": object_meta(md, revision),
        "spec": {
            "scaleTargetRef": {
                "apiVersion": API_VERSION,
                "kind": "ModelDeployment",
                "name": name_of(md),
            },
            "minReplicas": auto.min_replicas,
            "maxReplicas": auto.max_replicas,
            "metrics": [
                {
                    "type": "External",
                    "external": {
                        "metric": {
                            "name": METRIC_NAMES[auto.metric],
                            "selector": {"matchLabels": metric_selector(md)},
                        },
                        "target": {
                            "type": "AverageValue",
                            "averageValue": quantity(auto.target_per_replica),
                        },
                    },
                }
            ],
            "behavior": {
                "scaleDown": {
                    "stabilizationWindowSeconds": auto.scale_down_stabilization_seconds,
                }
            },
        },
    }
