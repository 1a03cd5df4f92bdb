"""Offline checks of the rules the API server applies to a CRD's schema.

The API server rejects a CRD whose schema is not *structural* or whose defaults do not fit
it. These checks catch the same mistakes without a cluster (the e2e suite then applies the
CRDs to a real API server): see "Specifying a structural schema" in the Kubernetes docs.
"""

from __future__ import annotations

from typing import Any

_TYPES = {"object", "array", "string", "integer", "number", "boolean"}
# Keys not allowed inside anyOf/allOf/oneOf/not in a structural schema.
_FORBIDDEN_IN_JUNCTORS = {"description", "type", "default", "additionalProperties", "nullable"}
_FORBIDDEN_ANYWHERE = {"$ref", "definitions", "$defs", "const", "title"}
_JUNCTORS = ("anyOf", "allOf", "oneOf", "not")
_INT_OR_STRING = [{"type": "integer"}, {"type": "string"}]


def check_crd(crd: dict[str, Any]) -> list[str]:
    """Every structural-schema violation in a CRD manifest, as 'path: problem' strings."""
    problems: list[str] = []
    for version in crd["spec"]["versions"]:
        schema = version["schema"]["openAPIV3Schema"]
        root = f"versions[{version['name']}].openAPIV3Schema"
        _check_node(schema, root, problems)
        meta = schema.get("properties", {}).get("metadata", {})
        for key in meta.get("properties", {}):
            if key not in ("name", "generateName"):
                problems.append(f"{root}.metadata: only name and generateName may be restricted")
        scale = version.get("subresources", {}).get("scale")
        if scale:
            for key in ("specReplicasPath", "statusReplicasPath"):
                _require_path(schema, scale[key], "integer", f"{root} scale.{key}", problems)
            if "labelSelectorPath" in scale:
                path = scale["labelSelectorPath"]
                _require_path(schema, path, "string", f"{root} scale.labelSelectorPath", problems)
    return problems


def _require_path(schema: dict[str, Any], path: str, typ: str, where: str, out: list[str]) -> None:
    node = schema
    for part in path.lstrip(".").split("."):
        node = node.get("properties", {}).get(part, {})
    if node.get("type") != typ:
        out.append(f"{where}: {path} must be a {typ} field of the schema")


def _check_node(node: dict[str, Any], path: str, out: list[str], in_junctor: bool = False) -> None:
    for key in _FORBIDDEN_ANYWHERE & node.keys():
        out.append(f"{path}: '{key}' is not allowed in a structural schema")
    if in_junctor:
        for key in _FORBIDDEN_IN_JUNCTORS & node.keys():
            out.append(f"{path}: '{key}' is not allowed inside anyOf/allOf/oneOf/not")
    else:
        _check_type(node, path, out)
    if "properties" in node and "additionalProperties" in node:
        out.append(f"{path}: properties and additionalProperties are mutually exclusive")
    if node.get("type") == "array" and "items" not in node:
        out.append(f"{path}: an array needs items")
    _check_children(node, path, out)
    for name in node.get("required", []):
        if name not in node.get("properties", {}):
            out.append(f"{path}: required field {name!r} is not among the properties")
    _check_list_type(node, path, out)
    if "default" in node:
        out.extend(_default_problems(node["default"], node, path))


def _check_children(node: dict[str, Any], path: str, out: list[str]) -> None:
    """Properties, map values, array items and junctor branches, each checked in turn."""
    for name, prop in node.get("properties", {}).items():
        _check_node(prop, f"{path}.{name}", out)
    if isinstance(node.get("additionalProperties"), dict):
        _check_node(node["additionalProperties"], f"{path}[*]", out)
    if isinstance(node.get("items"), dict):
        _check_node(node["items"], f"{path}[]", out)
    if node.get("x-kubernetes-int-or-string") and node.get("anyOf") == _INT_OR_STRING:
        return  # the one junctor with types inside that Kubernetes allows
    for junctor in _JUNCTORS:
        subs = node.get(junctor, [])
        for i, sub in enumerate(subs if isinstance(subs, list) else [subs]):
            _check_node(sub, f"{path}.{junctor}[{i}]", out, in_junctor=True)


def _check_type(node: dict[str, Any], path: str, out: list[str]) -> None:
    if node.get("x-kubernetes-int-or-string"):
        if "type" in node:
            out.append(f"{path}: x-kubernetes-int-or-string must not set type")
        return
    if node.get("x-kubernetes-preserve-unknown-fields"):
        return
    typ = node.get("type")
    if typ not in _TYPES:
        out.append(f"{path}: type must be one of {sorted(_TYPES)}, got {typ!r}")


def _check_list_type(node: dict[str, Any], path: str, out: list[str]) -> None:
    if node.get("x-kubernetes-list-type") != "map":
        return
    items = node.get("items", {})
    keys = node.get("x-kubernetes-list-map-keys", [])
    if not keys:
        out.append(f"{path}: list-type map needs x-kubernetes-list-map-keys")
    for key in keys:
        prop = items.get("properties", {}).get(key)
        if prop is None:
            out.append(f"{path}: list-map key {key!r} is not a property of the items")
        elif key not in items.get("required", []) and "default" not in prop:
            out.append(f"{path}: list-map key {key!r} must be required or defaulted")


_DEFAULT_TYPES: dict[str, Any] = {
    "object": dict,
    "array": list,
    "string": str,
    "boolean": bool,
    "integer": int,
    "number": int | float,
}


def _default_problems(value: Any, node: dict[str, Any], path: str) -> list[str]:
    """Where a default does not fit its own schema (the API server refuses such CRDs)."""
    if node.get("x-kubernetes-int-or-string"):
        ok = isinstance(value, int | str) and not isinstance(value, bool)
        return [] if ok else [f"{path}: default {value!r} is not an int or string"]
    typ = node.get("type")
    want = _DEFAULT_TYPES.get(typ or "")
    if want is None:
        return []
    if not isinstance(value, want) or (typ in ("integer", "number") and isinstance(value, bool)):
        return [f"{path}: default {value!r} is not of type {typ}"]
    problems = []
    if "enum" in node and typ != "array" and value not in node["enum"]:
        problems.append(f"{path}: default {value!r} is not one of {node['enum']}")
    if typ == "array":
        item = node.get("items", {})
        for i, v in enumerate(value):
            problems += _default_problems(v, item, f"{path}[{i}]")
    if typ == "object" and isinstance(value, dict):
        problems += _object_default_problems(value, node, path)
    if typ in ("integer", "number"):
        problems += _bound_problems(value, node, path)
    return problems


def _object_default_problems(value: dict[str, Any], node: dict[str, Any], path: str) -> list[str]:
    problems = []
    for k, v in value.items():
        sub = node.get("properties", {}).get(k)
        if sub is None:
            problems.append(f"{path}: default sets unknown field {k!r}")
        else:
            problems += _default_problems(v, sub, f"{path}.{k}")
    return problems


def _bound_problems(value: float, node: dict[str, Any], path: str) -> list[str]:
    problems = []
    lo, hi = node.get("minimum"), node.get("maximum")
    if lo is not None and (value < lo or (node.get("exclusiveMinimum") and value == lo)):
        problems.append(f"{path}: default {value} is below the minimum {lo}")
    if hi is not None and (value > hi or (node.get("exclusiveMaximum") and value == hi)):
        problems.append(f"{path}: default {value} is above the maximum {hi}")
    return problems
