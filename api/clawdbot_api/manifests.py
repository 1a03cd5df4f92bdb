"""Reading clawdbot.io manifests from YAML, with errors that point at the line."""

from __future__ import annotations

from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from clawdbot_api.errors import format_validation_error
from clawdbot_api.v1alpha1 import API_VERSION, ModelDeployment, RoutingPolicy

KINDS: dict[str, type[ModelDeployment] | type[RoutingPolicy]] = {
    "ModelDeployment": ModelDeployment,
    "RoutingPolicy": RoutingPolicy,
}


class ManifestError(ValueError):
    """A manifest that is not a valid clawdbot.io object; the message names line and field."""


def parse_manifests(text: str, source: str = "<stdin>") -> list[BaseModel]:
    """Every clawdbot.io document of a YAML stream, validated; other kinds are skipped."""
    try:
        nodes = list(yaml.compose_all(text, Loader=yaml.SafeLoader))
        docs: list[Any] = list(yaml.safe_load_all(text))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f":{mark.line + 1}" if mark else ""
        raise ManifestError(
            f"{source}{line}: not valid YAML: {getattr(exc, 'problem', exc)}"
        ) from exc
    out: list[BaseModel] = []
    problems: list[str] = []
    for node, doc in zip(nodes, docs, strict=True):
        if doc is None:
            continue
        if not isinstance(doc, dict):
            problems.append(f"{source}:{node.start_mark.line + 1}: expected a mapping")
            continue
        if doc.get("apiVersion") != API_VERSION or doc.get("kind") not in KINDS:
            continue
        try:
            out.append(KINDS[doc["kind"]].model_validate(doc))
        except ValidationError as exc:
            problems.append(format_validation_error(exc, source, node))
    if problems:
        raise ManifestError("\n".join(problems))
    return out
