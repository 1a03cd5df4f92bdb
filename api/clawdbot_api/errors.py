"""Turning validation errors into messages that name the file, the line and the field."""

from __future__ import annotations

from typing import Any

import yaml
from pydantic import ValidationError


def dotted(loc: tuple[Any, ...]) -> str:
    """A pydantic error location as a field path: ``models[0].precision``."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def describe(err: Any) -> str:
    """One pydantic error as a short sentence."""
    msg = str(err["msg"]).removeprefix("Value error, ")
    if err["type"] == "extra_forbidden":
        return "unknown field (check its spelling)"
    if err["type"] == "missing":
        return "required field is missing"
    return msg


def line_of(node: yaml.Node | None, loc: tuple[Any, ...]) -> str:
    """':N' for the line of the YAML node at ``loc`` (or its nearest existing parent)."""
    best = node
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            node = next((v for k, v in node.value if k.value == part), None)
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int):
            node = node.value[part] if part < len(node.value) else None
        else:
            node = None
        if node is None:
            break
        best = node
    return f":{best.start_mark.line + 1}" if best is not None else ""


def format_validation_error(
    exc: ValidationError, source: str, node: yaml.Node | None, prefix: tuple[Any, ...] = ()
) -> str:
    """Every error of ``exc`` as ``source:line: field: problem``, one per line."""
    lines = []
    for err in exc.errors():
        loc = prefix + tuple(err["loc"])
        field = dotted(loc) or "(top level)"
        lines.append(f"{source}{line_of(node, loc)}: {field}: {describe(err)}")
    return "\n".join(lines)
