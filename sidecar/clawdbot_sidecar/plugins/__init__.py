"""Sidecar plugins: code that runs before each routing decision and after each answer.

A plugin is a class registered under the ``clawdbot.sidecar.plugins`` entry point group of
any installed distribution::

    [project.entry-points."clawdbot.sidecar.plugins"]
    token-accounting = "clawdbot_sidecar.plugins.token_accounting:TokenAccounting"

and enabled by name (``clawdbot-sidecar serve --plugin token-accounting``, repeatable, or
``CLAWDBOT_SIDECAR_PLUGINS=a,b``). The class is called with the sidecar's metrics registry; the
object may define either hook:

* ``async before_route(request: PluginRequest) -> None``: sees the request (read-only) and
  may add routing headers (``request.headers``), which the policy's header rules then match,
  or refuse the request by raising ``clawdbot_sidecar.errors.RequestError``;
* ``after_response(request: PluginRequest, result: PluginResult) -> None``: runs once per
  request when it is finished (answered, failed or cut off); it must not block.

A plugin that fails in any other way is logged and skipped: it never fails a request.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any, Protocol, runtime_checkable

from prometheus_client import CollectorRegistry

log = logging.getLogger("clawdbot.sidecar.plugins")

ENTRY_POINT_GROUP = "clawdbot.sidecar.plugins"


@dataclass
class PluginRequest:
    """What a plugin sees of a request. Never logged by the sidecar."""

    request_id: str
    endpoint: str
    """chat/completions, completions or embeddings."""
    model: str
    body: Mapping[str, Any]
    headers: dict[str, str]
    """Lower-cased request headers; a before_route hook may add routing headers here."""


@dataclass(frozen=True)
class PluginResult:
    """How a request ended."""

    target: str
    """local, cloud, cache, reject or none."""
    reason: str
    status: int
    latency_s: float
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float
    redacted: Mapping[str, int] = field(default_factory=dict)


@runtime_checkable
class BeforeRoute(Protocol):
    async def before_route(self, request: PluginRequest) -> None: ...


@runtime_checkable
class AfterResponse(Protocol):
    def after_response(self, request: PluginRequest, result: PluginResult) -> None: ...


class PluginError(ValueError):
    """A plugin named in the configuration can't be found or built."""


def load_plugins(names: Iterable[str], registry: CollectorRegistry) -> list[object]:
    """Instantiate the named plugins from the entry point group, in order."""
    available = {ep.name: ep for ep in metadata.entry_points(group=ENTRY_POINT_GROUP)}
    plugins: list[object] = []
    for name in names:
        ep = available.get(name)
        if ep is None:
            known = ", ".join(sorted(available)) or "none installed"
            raise PluginError(f"plugin {name!r} is not installed (known: {known})")
        try:
            plugins.append(ep.load()(registry))
        except Exception as exc:
            raise PluginError(f"plugin {name!r} failed to start: {exc}") from exc
        log.info("plugin %s loaded from %s", name, ep.value)
    return plugins
