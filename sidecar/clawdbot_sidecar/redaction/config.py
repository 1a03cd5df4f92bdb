"""Redaction settings: the RoutingPolicy's `redaction` field, as the engine uses it.

The API type is the single source of truth for the fields and their checks (custom patterns
compile, entity names are known: see `clawdbot_api.v1alpha1.routingpolicy.Redaction`), so
the API server, the operator and this sidecar refuse the same policies; this subclass only
freezes it and adds the engine's lookups.
"""

from __future__ import annotations

from typing import Final

from pydantic import ConfigDict

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

    def active_entities(self) -> tuple[str, ...]:
        """Enabled built-ins in canonical order, then every custom entity (always active)."""
        chosen = set(self.entities)
        builtins = tuple(e.value for e in Entity if e in chosen)
        return builtins + tuple(c.name for c in self.custom)

    def mode_for(self, entity: str) -> RedactionMode:
        """The effective mode of one entity."""
        return self.per_entity_mode.get(entity, self.mode)
