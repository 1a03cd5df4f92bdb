"""The response cache: exact match on a normalized request, in memory or in Redis.

A cache may only ever cost a miss: a Redis outage, a timeout or a corrupt value is logged
once, counted, and answered as a miss, and the request goes on to a model. Values are the
response JSON (bytes in memory too), so every hit hands out a fresh copy the caller may
change, and both backends behave alike.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, Protocol

import orjson

from clawdbot_api.v1alpha1.routingpolicy import Cache, CacheBackend

if TYPE_CHECKING:
    import redis.asyncio as aioredis

__all__ = [
    "CachedResponse",
    "MemoryCache",
    "RedisCache",
    "ResponseCache",
    "build_cache",
    "cache_key",
    "cacheable",
]

log = logging.getLogger(__name__)

# Request fields that never change the answer. Everything else is part of the key: a field
# unknown to this list (a new sampling parameter) costs at worst a miss, never a wrong answer.
IGNORED_FIELDS: Final = frozenset(
    {"stream", "stream_options", "user", "metadata", "store", "request_id", "service_tier"}
)
# Finish reasons of a complete answer; "content_filter" or a missing reason (a stream cut
# short) is not an answer worth repeating.
_COMPLETE: Final = frozenset({"stop", "length", "tool_calls", "function_call"})
# Answers larger than this are not cached: one of them would crowd out thousands of the
# short, repeated answers a cache is for, and a Redis round trip of megabytes costs more
# than it saves.
MAX_VALUE_BYTES: Final = 1024 * 1024
# What an entry costs the memory backend beyond its key and value (see MemoryCache._weight).
ENTRY_OVERHEAD_BYTES: Final = 256
_KEY_VERSION: Final = "v1"


@dataclass(frozen=True, slots=True)
class CachedResponse:
    """A stored answer: the OpenAI response body and who produced it."""

    body: dict[str, Any]
    source: str
    """The target that answered (local or cloud), for audit and metrics on hits."""
    stored_at: float
    """Unix time it was stored."""

    def encode(self) -> bytes:
        """The JSON stored in a backend."""
        return orjson.dumps({"body": self.body, "source": self.source, "stored_at": self.stored_at})

    @classmethod
    def decode(cls, raw: bytes | str) -> CachedResponse:
        """Parse stored JSON; ValueError if it is not a stored response."""
        obj = orjson.loads(raw)
        if not (
            isinstance(obj, dict)
            and isinstance(obj.get("body"), dict)
            and isinstance(obj.get("source"), str)
            and isinstance(obj.get("stored_at"), int | float)
        ):
            raise ValueError("not a cached response")
        return cls(obj["body"], obj["source"], float(obj["stored_at"]))


def _normalize(value: Any) -> Any:
    """Equal requests in different spellings to one form (1.0 -> 1, single text part -> str)."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, Mapping):
        out = {k: _normalize(v) for k, v in value.items()}
        content = out.get("content")
        if (
            isinstance(content, list)
            and len(content) == 1
            and isinstance(content[0], dict)
            and content[0].get("type") == "text"
            and set(content[0]) == {"type", "text"}
        ):
            out["content"] = content[0]["text"]
        return out
    if isinstance(value, list):
        return [_normalize(v) for v in value]
    return value


def cache_key(request_body: Mapping[str, Any]) -> str:
    """The cache key of an OpenAI request: a hash of its canonical answer-changing fields."""
    relevant = _normalize({k: v for k, v in request_body.items() if k not in IGNORED_FIELDS})
    try:
        canonical = orjson.dumps(relevant, option=orjson.OPT_SORT_KEYS)
    except orjson.JSONEncodeError:
        # Integers beyond 64 bits: rare, still valid JSON, and no reason to fail a request.
        canonical = json.dumps(relevant, sort_keys=True, separators=(",", ":")).encode()
    return f"{_KEY_VERSION}:{hashlib.sha256(canonical).hexdigest()}"


def cacheable(policy: Cache, response: Mapping[str, Any], *, may_hold_pii: bool) -> bool:
    """Whether an answer may be stored under `policy`.

    `may_hold_pii`: the answer carries the request's sensitive values, restored into it
    from placeholders (or answered locally from a prompt that held them). Such answers are
    cached only where the policy's `cacheRestoredPII` allows.
    """
    if not policy.enabled or (may_hold_pii and not policy.cache_restored_pii):
        return False
    if "error" in response:
        return False
    choices = response.get("choices")
    if choices is None:
        return isinstance(response.get("data"), list)  # embeddings
    return (
        isinstance(choices, list)
        and bool(choices)
        and all(isinstance(c, Mapping) and c.get("finish_reason") in _COMPLETE for c in choices)
    )


class ResponseCache(Protocol):
    """What the routing core calls; both backends turn every failure into a miss."""

    async def get(self, key: str) -> CachedResponse | None:
        """The stored answer for `key`, or None."""
        ...

    async def set(self, key: str, value: CachedResponse) -> None:
        """Store an answer (silently skipped when too large or the backend fails)."""
        ...

    async def close(self) -> None:
        """Release connections."""
        ...


class MemoryCache:
    """A per-process LRU with a TTL, bounded in entries and in bytes; O(1) get and set."""

    def __init__(
        self,
        *,
        max_entries: int = 10_000,
        max_bytes: int = 64 * 1024 * 1024,
        ttl_s: float = 300.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._entries: OrderedDict[str, tuple[float, bytes]] = OrderedDict()
        self._max_entries = max_entries
        self._max_bytes = max_bytes
        self._bytes = 0
        self._ttl_s = ttl_s
        self._clock = clock

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def size_bytes(self) -> int:
        """What the entries weigh, as counted against ``max_bytes``."""
        return self._bytes

    @staticmethod
    def _weight(key: str, raw: bytes) -> int:
        # The value, the key and what Python spends on an entry (the tuple, the bytes and
        # str headers, the OrderedDict's link): ~250 bytes, so tiny answers count too.
        return len(raw) + len(key) + ENTRY_OVERHEAD_BYTES

    async def get(self, key: str) -> CachedResponse | None:
        """The stored answer, refreshed as most recently used; None if absent or expired."""
        found = self._entries.get(key)
        if found is None:
            return None
        expires, raw = found
        if self._clock() >= expires:
            self._drop(key)
            return None
        self._entries.move_to_end(key)
        return CachedResponse.decode(raw)

    async def set(self, key: str, value: CachedResponse) -> None:
        """Store an answer, evicting the least recently used entries beyond the limits."""
        # orjson hands back bytes in the buffer it wrote them to, several times their size
        # (a 200-byte answer held 4 KiB); a copy holds what it counts, for the TTL.
        raw = memoryview(value.encode()).tobytes()
        weight = self._weight(key, raw)
        if len(raw) > MAX_VALUE_BYTES or weight > self._max_bytes:
            return
        if key in self._entries:
            self._drop(key)
        self._entries[key] = (self._clock() + self._ttl_s, raw)
        self._bytes += weight
        while len(self._entries) > self._max_entries or self._bytes > self._max_bytes:
            oldest = next(iter(self._entries))
            self._drop(oldest)

    def _drop(self, key: str) -> None:
        _, raw = self._entries.pop(key)
        self._bytes -= self._weight(key, raw)

    async def close(self) -> None:
        """Drop every entry."""
        self._entries.clear()
        self._bytes = 0


# A cache lookup sits in front of every request: a Redis that does not answer within these
# must cost a few milliseconds once, not a model call's worth of waiting.
REDIS_CONNECT_TIMEOUT_S: Final = 0.2
REDIS_OP_TIMEOUT_S: Final = 0.2
# After a failure, Redis is left alone this long: during an outage each request would
# otherwise pay the connect timeout before its miss.
REDIS_RETRY_AFTER_S: Final = 5.0


class RedisCache:
    """A cache shared by every pod of a policy, in Redis (values as JSON, TTL by SET EX)."""

    def __init__(
        self,
        client: aioredis.Redis,
        *,
        ttl_s: int = 300,
        prefix: str = "clawdbot:cache:",
        retry_after_s: float = REDIS_RETRY_AFTER_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        # redis is the optional "redis" extra: only this backend needs it.
        from redis.exceptions import RedisError  # noqa: PLC0415

        self._failures: tuple[type[Exception], ...] = (RedisError, OSError)
        self._client = client
        self._ttl_s = ttl_s
        self._prefix = prefix
        self._retry_after_s = retry_after_s
        self._clock = clock
        self._down_until: float | None = None
        self.errors = 0
        """Failed operations (each answered as a miss or a skipped store)."""

    @classmethod
    def from_url(cls, url: str, *, password: str | None = None, **kwargs: Any) -> RedisCache:
        """A cache on the Redis at `url` (redis:// or rediss://), authenticating with
        `password` when given."""
        import redis.asyncio as aioredis  # noqa: PLC0415 (optional dependency, see __init__)

        client = aioredis.Redis.from_url(
            url,
            password=password,
            socket_connect_timeout=REDIS_CONNECT_TIMEOUT_S,
            socket_timeout=REDIS_OP_TIMEOUT_S,
        )
        return cls(client, **kwargs)

    @property
    def available(self) -> bool:
        """False while backing off after a failure."""
        return self._down_until is None or self._clock() >= self._down_until

    async def get(self, key: str) -> CachedResponse | None:
        """The stored answer, or None (also on any Redis failure)."""
        if not self.available:
            return None
        try:
            raw = await self._client.get(self._prefix + key)
        except self._failures as exc:
            self._failed(exc)
            return None
        self._recovered()
        if raw is None:
            return None
        try:
            return CachedResponse.decode(raw)
        except ValueError:
            # Someone else's value under our prefix, or a format from another version.
            self.errors += 1
            return None

    async def set(self, key: str, value: CachedResponse) -> None:
        """Store an answer with the TTL; a failure only counts."""
        raw = value.encode()
        if len(raw) > MAX_VALUE_BYTES or not self.available:
            return
        try:
            await self._client.set(self._prefix + key, raw, ex=self._ttl_s)
        except self._failures as exc:
            self._failed(exc)
            return
        self._recovered()

    async def close(self) -> None:
        """Close the connection pool."""
        await self._client.aclose()

    def _failed(self, exc: Exception) -> None:
        self.errors += 1
        if self._down_until is None:
            # Once per outage: a log line per request would flood the pod's logs.
            log.warning(
                "response cache: Redis unavailable (%s); answering misses, retrying every %.0fs",
                type(exc).__name__,
                self._retry_after_s,
            )
        self._down_until = self._clock() + self._retry_after_s

    def _recovered(self) -> None:
        if self._down_until is not None:
            log.info("response cache: Redis available again")
            self._down_until = None


def build_cache(
    policy: Cache, *, key_prefix: str = "clawdbot:cache:", redis_password: str | None = None
) -> ResponseCache | None:
    """The cache a RoutingPolicy's `spec.cache` asks for; None when caching is off.

    `key_prefix` should name the policy (e.g. "clawdbot:cache:<namespace>/<policy>:") so
    pods of different policies sharing one Redis never answer each other's requests.
    `redis_password`: from the policy's cache.redisPasswordSecretRef.
    """
    if not policy.enabled:
        return None
    if policy.backend is CacheBackend.REDIS:
        if policy.redis_url is None:
            raise ValueError("cache.redisURL: required when cache.backend is redis")
        return RedisCache.from_url(
            policy.redis_url, password=redis_password, ttl_s=policy.ttl_seconds, prefix=key_prefix
        )
    return MemoryCache(
        max_entries=policy.max_entries, max_bytes=policy.max_bytes, ttl_s=policy.ttl_seconds
    )
