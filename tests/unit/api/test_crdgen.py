"""The generated CRDs are structural, documented, in sync with crds/, and the checker bites."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from clawdbot_api import crdgen, structural

REPO = Path(__file__).resolve().parents[3]


def crd(kind: str) -> dict[str, Any]:
    info = next(k for k in crdgen.KINDS if k.kind == kind)
    return crdgen.build_crd(info)


def spec_schema(c: dict[str, Any]) -> dict[str, Any]:
    schema: dict[str, Any] = c["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return schema


def walk(node: dict[str, Any], path: str = ""):  # type: ignore[no-untyped-def]
    yield path, node
    for name, prop in node.get("properties", {}).items():
        yield from walk(prop, f"{path}.{name}")
    if isinstance(node.get("items"), dict):
        yield from walk(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        yield from walk(node["additionalProperties"], f"{path}[*]")


@pytest.mark.parametrize("kind", ["ModelDeployment", "RoutingPolicy"])
def test_generated_crd_is_structural(kind: str) -> None:
    assert structural.check_crd(crd(kind)) == []


def test_committed_crds_match_the_models() -> None:
    assert crdgen.drift(REPO / "crds") == []


def test_drift_is_detected(tmp_path: Path) -> None:
    crdgen.generate(tmp_path)
    path = tmp_path / "clawdbot.io_modeldeployments.yaml"
    path.write_text(path.read_text().replace("maximum: 16", "maximum: 17"))
    assert crdgen.drift(tmp_path) == [f"{path}: differs from the models"]
    (tmp_path / "clawdbot.io_routingpolicies.yaml").unlink()
    assert len(crdgen.drift(tmp_path)) == 2


@pytest.mark.parametrize("kind", ["ModelDeployment", "RoutingPolicy"])
def test_every_spec_field_is_documented(kind: str) -> None:
    undocumented = [
        path
        for path, node in walk(spec_schema(crd(kind))["properties"]["spec"])
        if path and not path.endswith(("[]", "[*]")) and not node.get("description")
    ]
    assert undocumented == []


def test_model_deployment_has_scale_status_columns_and_short_names() -> None:
    c = crd("ModelDeployment")
    version = c["spec"]["versions"][0]
    assert version["subresources"]["scale"]["labelSelectorPath"] == ".status.selector"
    assert "status" in version["subresources"]
    assert "md" in c["spec"]["names"]["shortNames"]
    schema = spec_schema(c)
    for column in version["additionalPrinterColumns"]:
        if "[" in column["jsonPath"] or column["jsonPath"].startswith(".metadata."):
            continue  # a filter expression, or ObjectMeta (not part of our schema)
        node = schema
        for part in column["jsonPath"].lstrip(".").split("."):
            node = node.get("properties", {}).get(part, {})
        assert node, f"printer column {column['name']} points at a missing field"


def test_defaults_and_int_or_string_are_kubernetes_shaped() -> None:
    spec = spec_schema(crd("ModelDeployment"))["properties"]["spec"]
    rollout = spec["properties"]["rollout"]
    assert rollout["default"] == {}
    assert rollout["properties"]["autoRollback"]["default"] == {}
    surge = rollout["properties"]["maxSurge"]
    assert surge["x-kubernetes-int-or-string"] is True and surge["default"] == "25%"
    assert "type" not in surge
    fraction = spec["properties"]["accelerator"]["properties"]["memoryFraction"]
    assert fraction["exclusiveMinimum"] is True and fraction["minimum"] == 0
    assert fraction["maximum"] == 1
    assert "count" not in spec["properties"]["accelerator"].get("required", [])
    rules = [r["rule"] for r in spec["x-kubernetes-validations"]]
    assert any("onnx" in r for r in rules)


def test_conditions_are_a_map_list_keyed_by_type() -> None:
    status = spec_schema(crd("RoutingPolicy"))["properties"]["status"]
    conditions = status["properties"]["conditions"]
    assert conditions["x-kubernetes-list-type"] == "map"
    assert conditions["x-kubernetes-list-map-keys"] == ["type"]


def test_crd_files_are_plain_yaml_documents() -> None:
    for path in sorted((REPO / "crds").glob("*.yaml")):
        docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
        assert len(docs) == 1 and docs[0]["kind"] == "CustomResourceDefinition"


def _break(mutate: Any) -> list[str]:
    c = copy.deepcopy(crd("ModelDeployment"))
    mutate(spec_schema(c)["properties"]["spec"])
    return structural.check_crd(c)


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (lambda s: s["properties"]["runtime"].pop("type"), "type must be one of"),
        (lambda s: s["properties"].__setitem__("x", {"$ref": "#/a"}), "'$ref' is not allowed"),
        (
            lambda s: s["properties"].__setitem__(
                "x", {"type": "string", "anyOf": [{"type": "string", "description": "d"}]}
            ),
            "not allowed inside anyOf",
        ),
        (
            lambda s: s["properties"]["replicas"].__setitem__("default", "one"),
            "not of type integer",
        ),
        (lambda s: s["properties"]["runtime"].__setitem__("default", "tf"), "is not one of"),
        (lambda s: s["properties"]["replicas"].__setitem__("default", 5000), "above the maximum"),
        (
            lambda s: s["properties"]["nodeSelector"].__setitem__("properties", {}),
            "mutually exclusive",
        ),
        (lambda s: s["required"].append("ghost"), "'ghost' is not among the properties"),
        (lambda s: s["properties"]["args"].pop("items"), "an array needs items"),
    ],
)
def test_structural_checker_catches(mutate: Any, expected: str) -> None:
    problems = _break(mutate)
    assert any(expected in p for p in problems), problems


def test_checker_requires_scale_paths_to_exist() -> None:
    c = crd("ModelDeployment")
    c["spec"]["versions"][0]["subresources"]["scale"]["specReplicasPath"] = ".spec.copies"
    assert any("scale.specReplicasPath" in p for p in structural.check_crd(c))
