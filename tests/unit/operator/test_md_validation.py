"""Combinations the schema accepts but the operator can't run are named precisely."""

from __future__ import annotations

from typing import Any

import pytest
from md_support import UID, model_deployment

from clawdbot_operator.config import OperatorConfig
from clawdbot_operator.validation import InvalidSpec, check_supported, parse

CONFIG = OperatorConfig()
ONNX: dict[str, Any] = {"runtime": "onnx", "precision": "int8"}


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({**ONNX, "accelerator": {"type": "nvidia", "count": 2}}, "spec.accelerator.count"),
        (
            {**ONNX, "accelerator": {"type": "cpu"}, "batching": {"maxBatchedTokens": 4096}},
            "spec.batching.maxBatchedTokens",
        ),
        (
            {**ONNX, "accelerator": {"type": "cpu"}, "batching": {"maxModelLen": 4096}},
            "spec.batching.maxModelLen",
        ),
        (
            {
                **ONNX,
                "accelerator": {"type": "cpu"},
                "model": {"name": "org/m", "uri": "file:///m"},
            },
            "spec.model.name",
        ),
        ({"model": {"name": "m", "uri": "oci://registry/model:1"}}, "spec.model.uri"),
        ({"model": {"name": "m", "uri": "pvc://Bad_Claim/m"}}, "spec.model.uri"),
        (
            {"annotations": {"clawdbot.io/pod-annotations": "not json"}},
            "metadata.annotations[clawdbot.io/pod-annotations]",
        ),
        (
            {"annotations": {"clawdbot.io/pod-annotations": '{"a": 1}'}},
            "metadata.annotations[clawdbot.io/pod-annotations]",
        ),
        ({"name": "model.with.dots"}, "metadata.name"),
    ],
)
def test_unsupported_combinations(kwargs: dict[str, Any], field: str) -> None:
    err = check_supported(model_deployment(**kwargs), CONFIG)
    assert isinstance(err, InvalidSpec)
    assert err.field == field
    assert str(err).startswith(f"{field}: ")


def test_a_pair_without_an_image_is_unsupported_unless_spec_image_is_set() -> None:
    config = OperatorConfig.from_mapping({"image_vllm_amd": ""})
    md = model_deployment(accelerator={"type": "amd"})
    err = check_supported(md, config)
    assert isinstance(err, InvalidSpec) and err.field == "spec.runtime"
    assert (
        check_supported(model_deployment(accelerator={"type": "amd"}, image="x/y:1"), config)
        is None
    )


def test_supported_examples_pass() -> None:
    assert check_supported(model_deployment(), CONFIG) is None
    onnx = model_deployment(**ONNX, accelerator={"type": "amd"})
    assert check_supported(onnx, CONFIG) is None


def test_parse_names_the_field_of_a_schema_error() -> None:
    body = {
        "apiVersion": "clawdbot.io/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": "x", "namespace": "ai", "uid": UID},
        "spec": {"model": {"name": "m", "uri": "pvc://c/m"}, "precision": "int3"},
        "status": {"phase": "Pending"},
    }
    err = parse(body)
    assert isinstance(err, InvalidSpec) and err.field == "spec.precision"
    body["spec"] = {"model": {"name": "m", "uri": "pvc://c/m"}}
    assert not isinstance(parse(body), InvalidSpec)
