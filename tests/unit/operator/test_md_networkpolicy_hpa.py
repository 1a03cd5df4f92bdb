"""NetworkPolicy (the model sandbox) and the HPA on the scale subresource."""

from __future__ import annotations

import pytest
from md_support import model_deployment

from clawdbot_operator.builders.hpa import build_hpa, quantity
from clawdbot_operator.builders.networkpolicy import build_network_policy
from clawdbot_operator.config import OperatorConfig

CONFIG = OperatorConfig()


def _egress_ports(uri: str, runtime: str = "vllm") -> list[tuple[str, int]]:
    extra = {"precision": "int8", "accelerator": {"type": "cpu"}} if runtime == "onnx" else {}
    md = model_deployment(model={"name": "m", "uri": uri}, runtime=runtime, **extra)
    policy = build_network_policy(md, CONFIG, 1)
    return [(p["protocol"], p["port"]) for rule in policy["spec"]["egress"] for p in rule["ports"]]


DNS = [("UDP", 53), ("TCP", 53)]


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("pvc://models/llama", DNS),
        ("file:///models/llama", DNS),
        ("hf://org/llama", [*DNS, ("TCP", 443)]),
        ("s3://bucket/llama", [*DNS, ("TCP", 443)]),
        ("gs://bucket/llama", [*DNS, ("TCP", 443)]),
        ("https://models.example/llama/", [*DNS, ("TCP", 443)]),
        ("http://models.example:8080/llama/", [*DNS, ("TCP", 8080)]),
    ],
)
def test_egress_is_dns_plus_the_download(uri: str, expected: list[tuple[str, int]]) -> None:
    assert _egress_ports(uri) == expected


def test_ingress_on_serving_ports_only() -> None:
    vllm = build_network_policy(model_deployment(), CONFIG, 1)["spec"]
    assert vllm["policyTypes"] == ["Ingress", "Egress"]
    assert vllm["ingress"] == [{"ports": [{"protocol": "TCP", "port": 8000}]}]
    assert vllm["podSelector"]["matchLabels"]["clawdbot.io/model-deployment"] == "llama"
    onnx_md = model_deployment(runtime="onnx", precision="int8", accelerator={"type": "cpu"})
    onnx = build_network_policy(onnx_md, CONFIG, 1)["spec"]
    assert [p["port"] for p in onnx["ingress"][0]["ports"]] == [8000, 8001]


def test_no_hpa_without_autoscaling() -> None:
    assert build_hpa(model_deployment(), 1) is None


@pytest.mark.parametrize(
    ("metric", "name"),
    [
        (None, "clawdbot_inflight_requests"),
        ("queueDepth", "clawdbot_queue_depth"),
        ("requestsPerSecond", "clawdbot_requests_per_second"),
    ],
)
def test_hpa_targets_the_model_deployment_on_an_external_metric(
    metric: str | None, name: str
) -> None:
    auto: dict[str, object] = {
        "minReplicas": 2,
        "maxReplicas": 6,
        "targetPerReplica": 2.5,
        "scaleDownStabilizationSeconds": 120,
    }
    if metric:
        auto["metric"] = metric
    hpa = build_hpa(model_deployment(autoscaling=auto), 1)
    assert hpa is not None
    spec = hpa["spec"]
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert spec["scaleTargetRef"] == {
        "apiVersion": "clawdbot.io/v1alpha1",
        "kind": "ModelDeployment",
        "name": "llama",
    }
    assert (spec["minReplicas"], spec["maxReplicas"]) == (2, 6)
    external = spec["metrics"][0]["external"]
    assert spec["metrics"][0]["type"] == "External"
    assert external["metric"] == {
        "name": name,
        "selector": {
            "matchLabels": {"clawdbot.io/model-deployment": "llama", "clawdbot.io/namespace": "ai"}
        },
    }
    assert external["target"] == {"type": "AverageValue", "averageValue": "2500m"}
    assert spec["behavior"]["scaleDown"]["stabilizationWindowSeconds"] == 120


def test_quantity() -> None:
    assert [quantity(v) for v in (8, 8.0, 0.5, 1.25)] == ["8", "8", "500m", "1250m"]
