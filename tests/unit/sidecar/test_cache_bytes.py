"""The memory cache is bounded in bytes as well as entries: many large answers can't grow
the sidecar past ``maxBytes``, eviction stays least-recently-used, and the policy's field
reaches the cache."""

from __future__ import annotations

import tracemalloc

import pytest
from pydantic import ValidationError

from clawdbot_api.v1alpha1.routingpolicy import Cache
from clawdbot_sidecar.cache import (
    ENTRY_OVERHEAD_BYTES,
    CachedResponse,
    MemoryCache,
    build_cache,
    cache_key,
)

# What the issue described: 10,000 large answers, each under the per-value limit.
ANSWERS = 10_000
ANSWER_BYTES = 64 * 1024
MAX_BYTES = 4 * 1024 * 1024


def answer(i: int, size: int = ANSWER_BYTES) -> CachedResponse:
    body = {"choices": [{"message": {"content": f"{i}:" + "w" * size}, "finish_reason": "stop"}]}
    return CachedResponse(body, "cloud", 1_800_000_000.0)


def key(i: int) -> str:
    return cache_key({"model": "m", "messages": [{"role": "user", "content": str(i)}]})


async def test_many_large_answers_stay_within_max_bytes() -> None:
    cache = MemoryCache(max_entries=ANSWERS, max_bytes=MAX_BYTES)
    tracemalloc.start()
    try:
        for i in range(ANSWERS):
            await cache.set(key(i), answer(i))
            assert cache.size_bytes <= MAX_BYTES
        held = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    # The entry bound alone let this reach 640 MiB (10,000 x 64 KiB).
    assert held < MAX_BYTES * 1.25, f"{held / 2**20:.1f} MiB held"
    # The most recent answers are the ones kept.
    kept = len(cache)
    assert 0 < kept < ANSWERS
    assert await cache.get(key(ANSWERS - 1)) is not None
    assert await cache.get(key(ANSWERS - kept - 1)) is None


async def test_what_the_cache_counts_is_what_it_holds() -> None:
    # Small answers, where each value's own allocation matters most.
    cache = MemoryCache(max_entries=ANSWERS, max_bytes=64 * 1024 * 1024)
    tracemalloc.start()
    try:
        for i in range(ANSWERS):
            await cache.set(key(i), answer(i, size=200))
        held = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    assert len(cache) == ANSWERS
    # Stored as encoded, each 200-byte answer held a 4 KiB buffer: 16 times the count.
    assert held < cache.size_bytes * 1.25, f"{held / 2**20:.1f} MiB for {cache.size_bytes}"


async def test_eviction_by_bytes_is_least_recently_used() -> None:
    weight = len(answer(0).encode()) + len(key(0)) + ENTRY_OVERHEAD_BYTES
    cache = MemoryCache(max_bytes=3 * weight + weight // 2)  # room for three
    for i in range(3):
        await cache.set(key(i), answer(i))
    assert await cache.get(key(0)) is not None  # 0 is now the most recently used
    await cache.set(key(3), answer(3))
    assert [await cache.get(key(i)) is not None for i in range(4)] == [True, False, True, True]


async def test_replacing_an_entry_counts_its_bytes_once() -> None:
    cache = MemoryCache(max_bytes=MAX_BYTES)
    for _ in range(100):
        await cache.set(key(0), answer(0))
    assert len(cache) == 1
    assert cache.size_bytes == len(answer(0).encode()) + len(key(0)) + ENTRY_OVERHEAD_BYTES
    await cache.close()
    assert cache.size_bytes == 0


async def test_expired_entries_give_back_their_bytes() -> None:
    now = [0.0]
    cache = MemoryCache(max_bytes=MAX_BYTES, ttl_s=10, clock=lambda: now[0])
    await cache.set(key(0), answer(0))
    now[0] = 11.0
    assert await cache.get(key(0)) is None
    assert cache.size_bytes == 0


async def test_an_answer_larger_than_max_bytes_is_not_stored() -> None:
    cache = MemoryCache(max_bytes=1024 * 1024)
    await cache.set(key(0), answer(0, size=1024 * 1024 - 100))  # under the per-value limit
    assert len(cache) == 0 and cache.size_bytes == 0


async def test_the_policys_max_bytes_reaches_the_memory_cache() -> None:
    assert Cache().max_bytes == 64 * 1024 * 1024
    policy = Cache.model_validate({"enabled": True, "maxBytes": 2 * 1024 * 1024})
    cache = build_cache(policy)
    assert isinstance(cache, MemoryCache)
    for i in range(200):  # 12.5 MiB of answers
        await cache.set(key(i), answer(i))
    assert cache.size_bytes <= 2 * 1024 * 1024


def test_max_bytes_below_one_mib_is_refused() -> None:
    with pytest.raises(ValidationError, match="maxBytes"):
        Cache.model_validate({"maxBytes": 1000})
