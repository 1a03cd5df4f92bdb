"""Generate the CustomResourceDefinitions from the pydantic models.

pydantic emits JSON Schema 2020-12; the API server wants an OpenAPI v3.0 *structural*
schema. The translation inlines ``$ref``s, turns ``X | None`` into an optional X, maps
numeric ``exclusiveMinimum`` to the boolean form, keeps int-or-string as Kubernetes spells
it, and gives nested objects a ``{}`` default so the API server fills their defaults in.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel
from pydantic.fields import FieldInfo

from clawdbot_api.v1alpha1 import GROUP, VERSION
from clawdbot_api.v1alpha1.common import CEL_RULES_ATTR, CelRule
from clawdbot_api.v1alpha1.modeldeployment import (
    ModelDeployment,
    ModelDeploymentSpec,
    ModelDeploymentStatus,
)
from clawdbot_api.v1alpha1.routingpolicy import (
    RoutingPolicy,
    RoutingPolicySpec,
    RoutingPolicyStatus,
)

Schema = dict[str, Any]

# JSON Schema keys with no meaning (or no place) in a Kubernetes structural schema.
_DROPPED_KEYS = {"title", "additionalProperties", "$defs", "discriminator"}


@dataclass(frozen=True)
class PrinterColumn:
    """An additionalPrinterColumns entry: what `kubectl get` shows."""

    name: str
    type: str
    json_path: str
    description: str = ""
    priority: int = 0

    def as_dict(self) -> dict[str, Any]:
        """The column as the CRD spells it."""
        out: dict[str, Any] = {"name": self.name, "type": self.type, "jsonPath": self.json_path}
        if self.description:
            out["description"] = self.description
        if self.priority:
            out["priority"] = self.priority
        return out


@dataclass(frozen=True)
class CrdInfo:
    """What a kind needs besides its schema: names, columns, subresources."""

    resource: type[BaseModel]
    spec: type[BaseModel]
    status: type[BaseModel]
    plural: str
    short_names: tuple[str, ...]
    columns: tuple[PrinterColumn, ...]
    scale: bool = False
    categories: tuple[str, ...] = ("clawdbot",)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def kind(self) -> str:
        return self.resource.__name__

    @property
    def name(self) -> str:
        return f"{self.plural}.{GROUP}"

    @property
    def file_name(self) -> str:
        return f"{GROUP}_{self.plural}.yaml"


_AGE = PrinterColumn("Age", "date", ".metadata.creationTimestamp")

KINDS: tuple[CrdInfo, ...] = (
    CrdInfo(
        resource=ModelDeployment,
        spec=ModelDeploymentSpec,
        status=ModelDeploymentStatus,
        plural="modeldeployments",
        short_names=("md", "mdep"),
        scale=True,
        columns=(
            PrinterColumn("Model", "string", ".spec.model.name", "Served model name"),
            PrinterColumn("Version", "string", ".spec.model.version", "Model version"),
            PrinterColumn("Runtime", "string", ".spec.runtime", "vllm or onnx"),
            PrinterColumn("Accelerator", "string", ".spec.accelerator.type"),
            PrinterColumn("Desired", "integer", ".spec.replicas", "Desired replicas"),
            PrinterColumn("Ready", "integer", ".status.readyReplicas", "Ready replicas"),
            PrinterColumn("Phase", "string", ".status.phase"),
            PrinterColumn("Revision", "integer", ".status.currentRevision", priority=1),
            PrinterColumn("Endpoint", "string", ".status.endpoint", priority=1),
            _AGE,
        ),
    ),
    CrdInfo(
        resource=RoutingPolicy,
        spec=RoutingPolicySpec,
        status=RoutingPolicyStatus,
        plural="routingpolicies",
        short_names=("rp", "rpol"),
        columns=(
            PrinterColumn("Cloud", "string", ".spec.cloud.model", "Cloud model"),
            PrinterColumn("Default", "string", ".spec.defaultTarget"),
            PrinterColumn("Pods", "integer", ".status.matchedPods", "Pods using the policy"),
            PrinterColumn("Endpoints", "integer", ".status.readyEndpoints", "Ready endpoints"),
            PrinterColumn(
                "Ready", "string", '.status.conditions[?(@.type=="Ready")].status', "Resolved"
            ),
            _AGE,
        ),
    ),
)


def _resolve_ref(ref: str, defs: dict[str, Schema]) -> Schema:
    name = ref.rsplit("/", 1)[-1]
    return defs[name]


def _is_null(s: Schema) -> bool:
    return s.get("type") == "null"


def _inline(s: Schema, defs: dict[str, Schema]) -> Schema:
    """A ``$ref`` replaced by its definition, and ``X | None`` by an optional X."""
    if "$ref" in s:
        # Sibling keys (a field's description, default) win over the referenced definition's.
        target = copy.deepcopy(_resolve_ref(s.pop("$ref"), defs))
        s = {**target, **s}
    if "anyOf" in s and not s.get("x-kubernetes-int-or-string"):
        options = [o for o in s["anyOf"] if not _is_null(o)]
        if len(options) != 1:
            raise ValueError(f"union types have no structural schema: {s['anyOf']!r}")
        del s["anyOf"]
        s = {**_to_structural(options[0], defs), **s}
        if "default" in s and s["default"] is None:
            del s["default"]
    return s


def _kubernetes_spelling(s: Schema) -> Schema:
    """int-or-string without a type, ``const`` as a one-value enum, and OpenAPI v3.0's
    boolean exclusive bounds."""
    if s.get("x-kubernetes-int-or-string"):
        s.pop("type", None)
    if "const" in s:
        s["enum"] = [s.pop("const")]
        s.setdefault("type", "string")
    for bound in ("exclusiveMinimum", "exclusiveMaximum"):
        if isinstance(s.get(bound), int | float) and not isinstance(s.get(bound), bool):
            s["minimum" if bound == "exclusiveMinimum" else "maximum"] = s[bound]
            s[bound] = True
    return s


def _to_structural(node: Any, defs: dict[str, Schema]) -> Any:
    """Recursively rewrite one pydantic JSON Schema node into a structural schema node."""
    if isinstance(node, list):
        return [_to_structural(n, defs) for n in node]
    if not isinstance(node, dict):
        return node
    s = _kubernetes_spelling(_inline(dict(node), defs))
    extra = s.get("additionalProperties")
    if s.get("type") == "object" and isinstance(extra, dict) and "properties" not in s:
        # A dict field keeps additionalProperties; only object models drop it below.
        out = {k: _to_structural(v, defs) for k, v in s.items() if k != "additionalProperties"}
        out["additionalProperties"] = _to_structural(extra, defs)
        return _drop(out, keep_additional=True)
    out = {}
    for k, v in s.items():
        if k == "properties":
            out[k] = {name: _to_structural(prop, defs) for name, prop in v.items()}
        elif k in ("items", "anyOf", "allOf", "oneOf", "not"):
            out[k] = _to_structural(v, defs)
        else:
            out[k] = v
    return _drop(out, keep_additional=False)


# Keys first in this order, the rest alphabetical: the YAML reads top-down like a reference.
_KEY_ORDER = ("type", "description", "default", "enum", "format", "required", "properties")


def _drop(s: Schema, *, keep_additional: bool) -> Schema:
    for key in _DROPPED_KEYS:
        if key == "additionalProperties" and keep_additional:
            continue
        s.pop(key, None)
    if not s.get("required"):
        s.pop("required", None)
    if isinstance(s.get("description"), str):
        # Docstrings wrap at the source's line length; a description is one paragraph.
        s["description"] = " ".join(s["description"].split())
    first = [k for k in _KEY_ORDER if k in s]
    return {k: s[k] for k in first + sorted(k for k in s if k not in _KEY_ORDER)}


def _object_defaults(model: type[BaseModel], schema: Schema) -> None:
    """Give fields whose Python default comes from a factory the matching CRD default."""
    props = schema.get("properties", {})
    for name, info in model.model_fields.items():
        prop = props.get(info.alias or name)
        if prop is None:
            continue
        _apply_factory_default(info, prop)
        sub = _nested_model(info)
        if sub is not None and prop.get("type") == "object":
            _object_defaults(sub, prop)
        elif sub is not None and prop.get("type") == "array":
            _object_defaults(sub, prop["items"])


def _apply_factory_default(info: FieldInfo, prop: Schema) -> None:
    if info.default_factory is None or "default" in prop:
        return
    value = info.default_factory()  # type: ignore[call-arg]
    if isinstance(value, BaseModel):
        prop["default"] = {}
    elif isinstance(value, dict):
        prop["default"] = dict(value)
    else:
        # Lists default to [] too: CEL rules then see the field on objects that omit it.
        prop["default"] = [v.value if hasattr(v, "value") else v for v in value]


def _nested_model(info: FieldInfo) -> type[BaseModel] | None:
    ann = info.annotation
    candidates = [ann, *getattr(ann, "__args__", ())]
    for c in candidates:
        for inner in (c, *getattr(c, "__args__", ())):
            if isinstance(inner, type) and issubclass(inner, BaseModel):
                return inner
    return None


def _cel_rules(model: type[BaseModel], schema: Schema) -> None:
    """Attach each model's CEL rules at the schema node that holds the model."""
    rules: tuple[CelRule, ...] = getattr(model, CEL_RULES_ATTR, ())
    # getattr sees rules of base classes too; only the class's own declaration counts.
    if rules and CEL_RULES_ATTR in model.__dict__:
        schema["x-kubernetes-validations"] = [r.as_schema() for r in rules]
    props = schema.get("properties", {})
    for name, info in model.model_fields.items():
        sub = _nested_model(info)
        prop = props.get(info.alias or name)
        if sub is None or prop is None:
            continue
        _cel_rules(sub, prop["items"] if prop.get("type") == "array" else prop)


def model_schema(model: type[BaseModel]) -> Schema:
    """The structural schema of one model, with defaults and CEL rules."""
    raw = model.model_json_schema(by_alias=True, mode="validation")
    defs = raw.get("$defs", {})
    schema: Schema = _to_structural(raw, defs)
    _object_defaults(model, schema)
    _cel_rules(model, schema)
    return schema


def build_crd(info: CrdInfo) -> dict[str, Any]:
    """The CustomResourceDefinition manifest for one kind."""
    description = (info.resource.__doc__ or "").strip()
    root: Schema = {
        "type": "object",
        "description": description,
        "required": ["spec"],
        "properties": {
            "apiVersion": {"type": "string", "description": "clawdbot.io/v1alpha1"},
            "kind": {"type": "string", "description": f"{info.kind}"},
            "metadata": {"type": "object"},
            "spec": model_schema(info.spec),
            "status": model_schema(info.status),
        },
    }
    subresources: dict[str, Any] = {"status": {}}
    if info.scale:
        subresources["scale"] = {
            "specReplicasPath": ".spec.replicas",
            "statusReplicasPath": ".status.replicas",
            "labelSelectorPath": ".status.selector",
        }
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": info.name,
            "labels": {"app.kubernetes.io/part-of": "clawdbot"},
        },
        "spec": {
            "group": GROUP,
            "names": {
                "kind": info.kind,
                "listKind": f"{info.kind}List",
                "plural": info.plural,
                "singular": info.kind.lower(),
                "shortNames": list(info.short_names),
                "categories": list(info.categories),
            },
            "scope": "Namespaced",
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "schema": {"openAPIV3Schema": root},
                    "subresources": subresources,
                    "additionalPrinterColumns": [c.as_dict() for c in info.columns],
                }
            ],
        },
    }


HEADER = "# Generated from the pydantic models in api/clawdbot_api by `make crds`. Do not edit.\n"


def render(crd: dict[str, Any]) -> str:
    """The YAML text of a CRD, stable across runs."""
    return HEADER + "---\n" + yaml.safe_dump(crd, sort_keys=False, width=100)


def generate(out_dir: Path) -> list[Path]:
    """Write every CRD into ``out_dir``; return the paths written."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for info in KINDS:
        path = out_dir / info.file_name
        path.write_text(render(build_crd(info)))
        written.append(path)
    return written


def drift(out_dir: Path) -> list[str]:
    """Files in ``out_dir`` that differ from what the models generate (empty: in sync)."""
    problems = []
    for info in KINDS:
        path = out_dir / info.file_name
        want = render(build_crd(info))
        if not path.exists():
            problems.append(f"{path}: missing")
        elif path.read_text() != want:
            problems.append(f"{path}: differs from the models")
    return problems
