"""The API types accept what the docs promise and reject bad input naming the field."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from clawdbot_api.v1alpha1 import (
    Entity,
    LabelSelector,
    ModelDeployment,
    ModelDeploymentSpec,
    RoutingPolicySpec,
)


def md_spec(**overrides: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {"model": {"name": "llama-7b", "uri": "pvc://models/llama"}}
    spec.update(overrides)
    return spec


def error_fields(exc: ValidationError) -> list[str]:
    return [".".join(str(p) for p in e["loc"]) for e in exc.errors()]


def test_defaults_fill_a_minimal_model_deployment() -> None:
    md = ModelDeployment.model_validate({"metadata": {"name": "m"}, "spec": md_spec()})
    assert md.spec.runtime == "vllm"
    assert md.spec.accelerator.memory_fraction == 0.9
    assert md.spec.rollout.auto_rollback.enabled is True
    assert md.spec.rollout.max_surge == "25%"
    manifest = md.to_manifest()
    assert manifest["apiVersion"] == "clawdbot.io/v1alpha1"
    assert manifest["spec"]["accelerator"]["memoryFraction"] == 0.9
    assert "count" not in manifest["spec"]["accelerator"]


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"runtime": "tensorflow"}, "runtime"),
        ({"precision": "int3"}, "precision"),
        ({"accelerator": {"memoryFraction": 1.5}}, "accelerator.memoryFraction"),
        ({"accelerator": {"memoryFraction": 0}}, "accelerator.memoryFraction"),
        ({"accelerator": {"type": "tpu"}}, "accelerator.type"),
        ({"replicas": -1}, "replicas"),
        ({"cpuThreads": 0}, "cpuThreads"),
        ({"rollout": {"historyLimit": 0}}, "rollout.historyLimit"),
        ({"rollbackTo": 0}, "rollbackTo"),
        ({"model": {"name": "x", "uri": "/no/scheme"}}, "model.uri"),
        ({"autoscaling": {"minReplicas": 2}}, "autoscaling.maxReplicas"),
        ({"surprise": 1}, "surprise"),
    ],
)
def test_invalid_field_is_named(overrides: dict[str, Any], field: str) -> None:
    with pytest.raises(ValidationError) as info:
        ModelDeploymentSpec.model_validate(md_spec(**overrides))
    assert field in error_fields(info.value)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"accelerator": {"type": "cpu", "count": 2}}, "leave it out when type is cpu"),
        ({"autoscaling": {"minReplicas": 5, "maxReplicas": 2}}, "minReplicas must not exceed"),
        ({"runtime": "onnx", "precision": "bf16"}, "runtime onnx supports"),
        ({"runtime": "vllm", "precision": "int4", "accelerator": {"type": "cpu"}}, "vllm on cpu"),
        ({"precision": "fp8", "runtime": "onnx"}, "runtime onnx supports"),
    ],
)
def test_cross_field_rules_reject(overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        ModelDeploymentSpec.model_validate(md_spec(**overrides))


@given(lo=st.integers(1, 1000), hi=st.integers(1, 1000))
def test_autoscaling_accepts_exactly_ordered_bounds(lo: int, hi: int) -> None:
    spec = md_spec(autoscaling={"minReplicas": lo, "maxReplicas": hi})
    if lo <= hi:
        parsed = ModelDeploymentSpec.model_validate(spec)
        assert parsed.autoscaling is not None and parsed.autoscaling.max_replicas == hi
    else:
        with pytest.raises(ValidationError):
            ModelDeploymentSpec.model_validate(spec)


@given(frac=st.floats(allow_nan=False, allow_infinity=False, min_value=-2, max_value=2))
def test_memory_fraction_in_half_open_unit_interval(frac: float) -> None:
    spec = md_spec(accelerator={"memoryFraction": frac})
    if 0 < frac <= 1:
        assert ModelDeploymentSpec.model_validate(spec).accelerator.memory_fraction == frac
    else:
        with pytest.raises(ValidationError) as info:
            ModelDeploymentSpec.model_validate(spec)
        assert "accelerator.memoryFraction" in error_fields(info.value)


def rp_spec(**overrides: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "localModels": [{"name": "llama-7b"}],
        "cloud": {
            "baseURL": "https://api.example.test/v1",
            "model": "big",
            "apiKeySecretRef": {"name": "cloud"},
        },
        "rules": [
            {"name": "pii-local", "match": {"containsPII": True}, "target": "local"},
            {"name": "short", "match": {"maxTokens": 512}, "target": "local"},
            {"name": "long", "match": {"minTokens": 2049}, "target": "cloud"},
        ],
    }
    spec.update(overrides)
    return spec


def test_routing_policy_parses_with_camel_case_and_acronym_aliases() -> None:
    spec = RoutingPolicySpec.model_validate(
        rp_spec(cache={"backend": "redis", "redisURL": "redis://r:6379"})
    )
    assert spec.cloud is not None and spec.cloud.base_url == "https://api.example.test/v1"
    assert (
        spec.cloud.api_key_secret_ref is not None and spec.cloud.api_key_secret_ref.key == "api-key"
    )
    assert spec.rules[0].match.contains_pii is True
    assert spec.cache.redis_url == "redis://r:6379"
    assert spec.redaction.mode == "pseudonymize"
    assert spec.redaction.entities == list(Entity)  # every built-in entity by default
    dumped = spec.model_dump(by_alias=True, exclude_none=True)
    assert "baseURL" in dumped["cloud"] and "redisURL" in dumped["cache"]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"cloud": None}, "no cloud endpoint is configured"),
        ({"localModels": []}, "localModels is empty"),
        (
            {"rules": [{"name": "a", "target": "local"}, {"name": "a", "target": "local"}]},
            "rule names must be unique",
        ),
        (
            {
                "rules": [
                    {"name": "a", "match": {"minTokens": 9, "maxTokens": 3}, "target": "local"}
                ]
            },
            "minTokens must not exceed",
        ),
        ({"cache": {"backend": "redis"}}, "redisURL is required"),
    ],
)
def test_routing_policy_cross_field_rules(overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        RoutingPolicySpec.model_validate(rp_spec(**overrides))


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"cloud": {"baseURL": "ftp://x", "model": "m"}}, "cloud.baseURL"),
        ({"rules": [{"name": "Bad Name", "target": "local"}]}, "rules.0.name"),
        ({"rules": [{"name": "a", "target": "moon"}]}, "rules.0.target"),
        ({"redaction": {"entities": ["EMAIL", "DNA"]}}, "redaction.entities.1"),
        ({"redaction": {"custom": [{"name": "lower", "pattern": "x"}]}}, "redaction.custom.0.name"),
        ({"cache": {"ttlSeconds": 0}}, "cache.ttlSeconds"),
        ({"localModels": [{"name": "UPPER"}]}, "localModels.0.name"),
    ],
)
def test_routing_policy_invalid_field_is_named(overrides: dict[str, Any], field: str) -> None:
    with pytest.raises(ValidationError) as info:
        RoutingPolicySpec.model_validate(rp_spec(**overrides))
    assert field in error_fields(info.value)


@pytest.mark.parametrize(
    ("selector", "labels", "expected"),
    [
        ({}, {"a": "1"}, True),
        ({"matchLabels": {"app": "web"}}, {"app": "web", "x": "y"}, True),
        ({"matchLabels": {"app": "web"}}, {"app": "db"}, False),
        (
            {"matchExpressions": [{"key": "tier", "operator": "In", "values": ["a", "b"]}]},
            {"tier": "b"},
            True,
        ),
        ({"matchExpressions": [{"key": "tier", "operator": "In", "values": ["a"]}]}, {}, False),
        ({"matchExpressions": [{"key": "tier", "operator": "NotIn", "values": ["a"]}]}, {}, True),
        (
            {"matchExpressions": [{"key": "tier", "operator": "NotIn", "values": ["a"]}]},
            {"tier": "a"},
            False,
        ),
        ({"matchExpressions": [{"key": "gpu", "operator": "Exists"}]}, {"gpu": ""}, True),
        ({"matchExpressions": [{"key": "gpu", "operator": "DoesNotExist"}]}, {"gpu": ""}, False),
    ],
)
def test_label_selector_semantics(
    selector: dict[str, Any], labels: dict[str, str], expected: bool
) -> None:
    assert LabelSelector.model_validate(selector).matches(labels) is expected


@pytest.mark.parametrize(
    ("redaction", "where", "message"),
    [
        ({"custom": [{"name": "T", "pattern": "("}]}, ("custom", 0, "pattern"), "invalid regular"),
        ({"custom": [{"name": "T", "pattern": "x?"}]}, ("custom", 0, "pattern"), "empty string"),
        ({"custom": [{"name": "PHONE", "pattern": "x"}]}, ("custom",), "clashes with a built-in"),
        ({"perEntityMode": {"EMIAL": "mask"}}, (), "perEntityMode: unknown entity 'EMIAL'"),
        ({"entities": ["EMIAL"]}, ("entities", 0), "Input should be"),
    ],
)
def test_a_redaction_the_sidecar_could_not_apply_is_refused_naming_the_field(
    redaction: dict[str, Any], where: tuple[Any, ...], message: str
) -> None:
    with pytest.raises(ValidationError) as err:
        RoutingPolicySpec.model_validate({"redaction": redaction})
    (error,) = err.value.errors()
    assert error["loc"] == ("redaction", *where)
    assert message in error["msg"]


def test_custom_entities_may_be_given_modes() -> None:
    spec = RoutingPolicySpec.model_validate({"redaction": {
        "custom": [{"name": "TICKET", "pattern": "T-[0-9]+"}],
        "perEntityMode": {"TICKET": "block", "EMAIL": "mask"},
    }})  # fmt: skip
    assert spec.redaction.per_entity_mode == {"TICKET": "block", "EMAIL": "mask"}
