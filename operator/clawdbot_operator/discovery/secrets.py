"""The Secrets the discovery stream hands out (cloud API keys, audit HMAC keys), read through
a short-lived cache.

Every subscriber's snapshot carries its policy's keys, and snapshots are recomputed on
changes and every resync: reading the Secret for each one made a GET per subscriber per
change (20 sidecars and 50 events of an unrelated pod: 1,000 GETs). The cache reads each
Secret (by namespace and name) at most once per ``ttl_s``, however many subscribers and
status refreshes ask, and concurrent askers share one read.

A TTL rather than a watch: watching Secrets takes list and watch on every Secret of every
watched namespace, so the operator would receive them all; a GET by name reads only the
Secrets policies name (the chart grants ``get`` alone). A rotated key is therefore seen
within ``ttl_s`` plus a subscriber's resync (see ``server.RESYNC_S``).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Final

log = logging.getLogger("clawdbot.operator.secrets")

DEFAULT_TTL_S: Final = 30.0
MAX_ENTRIES: Final = 4096

# (namespace, name) -> the Secret, None when it does not exist; raises when it can't tell.
SecretReader = Callable[[str, str], Awaitable[Mapping[str, Any] | None]]


class SecretCache:
    """Secret values by (namespace, name, key), each Secret read at most once per TTL."""

    def __init__(
        self,
        read: SecretReader,
        ttl_s: float = DEFAULT_TTL_S,
        *,
        monotonic: Callable[[], float] = time.monotonic,
        max_entries: int = MAX_ENTRIES,
    ) -> None:
        self._read = read
        self.ttl_s = ttl_s
        self.monotonic = monotonic
        self.max_entries = max_entries
        self.reads = 0
        """Secrets read from the API so far."""
        self._entries: dict[tuple[str, str], tuple[float, dict[str, str]]] = {}
        self._inflight: dict[tuple[str, str], asyncio.Future[dict[str, str]]] = {}

    def invalidate(self, namespace: str, name: str) -> None:
        """Forget a Secret: the next ask reads it again."""
        self._entries.pop((namespace, name), None)

    async def __call__(self, namespace: str, name: str, key: str) -> str | None:
        """One key of a Secret, decoded and stripped; None when the Secret or the key is
        missing or can't be read (logged, never the value)."""
        return (await self._data(namespace, name)).get(key)

    async def _data(self, namespace: str, name: str) -> dict[str, str]:
        ident = (namespace, name)
        hit = self._entries.get(ident)
        if hit is not None and self.monotonic() - hit[0] < self.ttl_s:
            return hit[1]
        pending = self._inflight.get(ident)
        if pending is not None:
            return await asyncio.shield(pending)
        future: asyncio.Future[dict[str, str]] = asyncio.get_running_loop().create_future()
        self._inflight[ident] = future
        try:
            data = await self._fetch(namespace, name, hit[1] if hit else None)
            future.set_result(data)
        except BaseException as exc:  # cancelled: the next asker reads again
            future.set_exception(exc)
            future.exception()  # retrieved: shared askers get it from their own await
            raise
        finally:
            del self._inflight[ident]
        return data

    async def _fetch(
        self, namespace: str, name: str, stale: dict[str, str] | None
    ) -> dict[str, str]:
        self.reads += 1
        try:
            secret = await self._read(namespace, name)
        except Exception as exc:
            # Unreadable now (the API server is away): keep what was known, uncached, so
            # an outage neither strips sidecars of their keys nor lasts a whole TTL.
            log.warning("cannot read Secret %s/%s: %s", namespace, name, exc)
            return stale or {}
        out: dict[str, str] = {}
        for key, value in ((secret or {}).get("data") or {}).items():
            try:
                out[str(key)] = base64.b64decode(value).decode().strip()
            except (binascii.Error, UnicodeDecodeError, TypeError):
                log.warning("Secret %s/%s: key %s is not base64 text", namespace, name, key)
        if len(self._entries) >= self.max_entries:
            self._entries.clear()
        self._entries[(namespace, name)] = (self.monotonic(), out)
        return out
