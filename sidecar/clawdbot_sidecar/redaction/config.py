"""Redaction settings: the RoutingPolicy's `redaction` field, checked for use by the engine.

The API type is the single source of truth for the fields; this subclass adds the checks
the CRD schema cannot express (custom patterns compile, entity names are known), so a bad
policy is refused with the entity named before any request depends on it.
"""

from __future__ import annotations

import re
from typing import Final

from pydantic import ConfigDict, model_validator

from clawdbot_api.v1alpha1.routingpolicy import CustomEntity, Entity, Redaction, RedactionMode

__all__ = [
    "BUILTIN_ENTITIES",
    "CustomEntity",
    "Entity",
    "RedactionConfig",
    "RedactionMode",
]

BUILTIN_ENTITIES: Final[tuple[str, ...]] = tuple(e.value for e in Entity)


class RedactionConfig(Redaction):
    """Which entities are redacted from cloud-bound requests, and how."""

    # A Redactor compiles its detectors from this once; a later change would go unseen.
    model_config = ConfigDict(frozen=True)

    @classmethod
    def from_api(cls, redaction: Redaction) -> RedactionConfig:
        """Check a RoutingPolicy's `spec.redaction` for use (raises pydantic's ValidationError)."""
        return cls.model_validate(redaction.model_dump(by_alias=True))

    @model_validator(mode="after")
    def _checked(self) -> RedactionConfig:
        custom_names = [c.name for c in self.custom]
        seen: set[str] = set()
        for entity in self.custom:
            if entity.name in BUILTIN_ENTITIES:
                raise ValueError(f"custom entity {entity.name!r}: clashes with a built-in entity")
            if entity.name in seen:
                raise ValueError(f"custom entity {entity.name!r}: defined more than once")
            seen.add(entity.name)
            try:
                compiled = re.compile(entity.pattern)
            except re.error as exc:
                raise ValueError(
                    f"custom entity {entity.name!r}: invalid regular expression: {exc}"
                ) from exc
            if compiled.fullmatch("") is not None:
                raise ValueError(f"custom entity {entity.name!r}: pattern matches the empty string")
        known = set(BUILTIN_ENTITIES) | set(custom_names)
        for name in self.per_entity_mode:
            if name not in known:
                raise ValueError(f"perEntityMode: unknown entity {name!r}")
        return self

    def active_entities(self) -> tuple[str, ...]:
        """Enabled built-ins in canonical order, then every custom entity (always active)."""
        chosen = set(self.entities)
        builtins = tuple(e.value for e in Entity if e in chosen)
        return builtins + tuple(c.name for c in self.custom)

    def mode_for(self, entity: str) -> RedactionMode:
        """The effective mode of one entity."""
        return self.per_entity_mode.get(entity, self.mode)
