"""The seed's clawdbot-config.yaml translates to equivalent manifests; bad files are named."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from clawdbot_api import seed
from clawdbot_api.manifests import parse_manifests
from clawdbot_api.v1alpha1 import ModelDeployment, RoutingPolicy

REPO = Path(__file__).resolve().parents[3]
SEED = REPO / "examples" / "seed" / "clawdbot-config.yaml"


def translate(text: str, **opts: str) -> list[ModelDeployment | RoutingPolicy]:
    return seed.translate(seed.parse(text, "cfg.yaml"), seed.ImportOptions(**opts))


def test_seed_example_translates_field_by_field() -> None:
    objs = seed.translate(seed.load(SEED), seed.ImportOptions(namespace="ai"))
    md, policy = objs
    assert isinstance(md, ModelDeployment) and isinstance(policy, RoutingPolicy)
    assert md.metadata.name == "llama-7b" and md.metadata.namespace == "ai"
    assert md.spec.model.uri == "file:///models/llama"
    assert md.spec.precision == "int4"
    assert md.spec.accelerator.memory_fraction == 0.7
    assert md.spec.cpu_threads == 8
    assert [r.match.max_tokens for r in policy.spec.rules] == [512, 2048]
    assert [r.target for r in policy.spec.rules] == ["local", "cloud"]
    # Prompts longer than every threshold follow the last rule: "long ones go to the cloud".
    assert policy.spec.default_target == "cloud"
    assert policy.spec.cloud is not None
    assert [m.name for m in policy.spec.local_models] == ["llama-7b"]


def test_output_is_valid_yaml_that_reparses_to_the_same_objects() -> None:
    objs = seed.translate(seed.load(SEED), seed.ImportOptions())
    again = parse_manifests(seed.to_yaml(objs), "out.yaml")
    assert [o.model_dump() for o in again] == [o.model_dump() for o in objs]


def test_models_pvc_maps_paths_onto_the_claim() -> None:
    objs = translate("models: [{name: m, path: /models/llama}]", models_pvc="weights")
    md = objs[0]
    assert isinstance(md, ModelDeployment)
    assert md.spec.model.uri == "pvc://weights/models/llama"


def test_local_only_seed_needs_no_cloud() -> None:
    policy = translate(
        "models: [{name: m, path: /m}]\nrouting_rules: [{max_tokens: 9, endpoint: local}]"
    )[-1]
    assert isinstance(policy, RoutingPolicy)
    assert policy.spec.cloud is None and policy.spec.default_target == "local"


def test_cpu_model_gets_no_gpu_count() -> None:
    md = translate(
        "models: [{name: m, path: /m, accelerator: cpu, runtime: onnx, precision: int8}]"
    )[0]
    assert isinstance(md, ModelDeployment)
    assert md.spec.accelerator.count is None and md.spec.runtime == "onnx"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "models:\n  - name: m\n    path: /m\n    precision: int3\n",
            "cfg.yaml:4: models[0].precision",
        ),
        ("models:\n  - name: m\n    pth: /m\n", "cfg.yaml:3: models[0].pth: unknown field"),
        ("models:\n  - name: m\n", "cfg.yaml:2: models[0].path: required field is missing"),
        (
            "resources:\n  gpu_allocation: 1.7\nmodels: [{name: m, path: /m}]\n",
            "cfg.yaml:2: resources.gpu_allocation",
        ),
        (
            "models: [{name: m, path: /m}]\nrouting_rules:\n"
            "  - {max_tokens: 512, endpoint: local}\n  - {max_tokens: 100, endpoint: cloud}\n",
            "cfg.yaml:3: routing_rules: rule 1 has max_tokens 100, not above rule 0's 512",
        ),
        (
            "models: [{name: m, path: /m}]\nrouting_rules: [{max_tokens: 5, endpoint: moon}]\n",
            "routing_rules[0].endpoint",
        ),
        ("models: []\n", "cfg.yaml:1: models"),
        ("models:\n\t- name: m\n", "cfg.yaml:2: not valid YAML"),
        ("- just\n- a list\n", "expected a mapping"),
        ("models: [{name: m, path: /m, runtime: onnx, precision: fp8}]\n", "runtime onnx supports"),
        ("models: [{name: '---', path: /m}]\n", "models[0].name: '---' has no letters or digits"),
    ],
)
def test_bad_files_get_errors_naming_line_and_field(text: str, expected: str) -> None:
    with pytest.raises(seed.SeedConfigError) as info:
        translate(text)
    assert expected in str(info.value)


def test_unreadable_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(seed.SeedConfigError, match=r"missing\.yaml: cannot read"):
        seed.load(tmp_path / "missing.yaml")


@given(st.text(min_size=1, max_size=60))
def test_dns_name_is_always_a_valid_object_name_or_empty(name: str) -> None:
    out = seed.dns_name(name)
    assert len(out) <= 63
    if out:
        assert out[0].isalnum() and out[-1].isalnum()
        assert all(c.islower() or c.isdigit() or c == "-" for c in out)
        assert out.isascii()


@given(st.lists(st.integers(1, 100_000), min_size=1, max_size=6, unique=True))
def test_increasing_thresholds_become_ordered_rules(thresholds: list[int]) -> None:
    thresholds.sort()
    rules = "".join(f"  - {{max_tokens: {t}, endpoint: local}}\n" for t in thresholds)
    policy = translate(f"models: [{{name: m, path: /m}}]\nrouting_rules:\n{rules}")[-1]
    assert isinstance(policy, RoutingPolicy)
    assert [r.match.max_tokens for r in policy.spec.rules] == thresholds
