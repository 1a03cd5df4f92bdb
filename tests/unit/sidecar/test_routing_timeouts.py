"""Time limits of upstream calls, end to end with the openai client: a local endpoint that
never accepts is left at the connect timeout, and a cloud call with its retries keeps to one
deadline and to the waits its endpoint asks for (Retry-After)."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import openai
import pytest
from sidecar_support import API_KEY, LONG_FILLER, StartSidecar, inject, policy, received

# The whole-request limit of local calls in these tests: far above every bound asserted, so
# only the connect timeout can explain a quick answer.
LOCAL_TIMEOUT_S = 60.0
CONNECT_TIMEOUT_S = 0.3


async def test_a_local_endpoint_that_never_accepts_is_left_for_another(
    local_url: str, cloud: str, blackhole: str, make_sidecar: StartSidecar
) -> None:
    sc = await make_sidecar(
        policy(cloud),
        [blackhole, local_url],
        local_timeout_s=LOCAL_TIMEOUT_S,
        local_connect_timeout_s=CONNECT_TIMEOUT_S,
    )
    for _ in range(4):  # bounded; the hole is picked once the live endpoint has a latency
        async with asyncio.timeout(10):
            raw = await sc.chat("hi")
        assert raw.headers["x-clawdbot-target"] == "local"
        assert raw.headers["x-clawdbot-reason"] == "rule:short"
    hole = next(s for s in sc.core.pool.states if s.endpoint.url == blackhole)
    assert hole.errors >= 1  # it was tried, failed at the connect timeout, and was left
    assert await received(cloud) == []


async def test_connect_timeouts_count_toward_ejection_and_fall_back_to_the_cloud(
    cloud: str, blackhole: str, make_sidecar: StartSidecar
) -> None:
    sc = await make_sidecar(
        policy(cloud),
        [blackhole],
        local_timeout_s=LOCAL_TIMEOUT_S,
        local_connect_timeout_s=CONNECT_TIMEOUT_S,
    )
    for i in range(3):  # three connect failures in a row eject the endpoint
        started = time.monotonic()
        async with asyncio.timeout(10):
            if i == 1:  # a streamed request falls back the same way
                stream = await sc.client.chat.completions.create(
                    model="tiny-chat", messages=[{"role": "user", "content": "hi"}], stream=True
                )
                assert [c async for c in stream]
            else:
                raw = await sc.chat("hi")
                assert raw.headers["x-clawdbot-target"] == "cloud"
                assert raw.headers["x-clawdbot-reason"] == "fallback:local-failed (rule:short)"
        assert time.monotonic() - started < 3
    assert len(await received(cloud)) == 3
    raw = await sc.chat("hi")
    assert raw.headers["x-clawdbot-reason"] == "local-unavailable"  # ejected: not tried


@pytest.mark.parametrize(
    "limits",
    [
        {"timeoutSeconds": 5, "deadlineSeconds": 1},
        {"timeoutSeconds": 1},  # no deadline set: the timeout is the deadline
    ],
)
async def test_cloud_retries_stop_at_the_deadline(
    local_url: str, cloud: str, make_sidecar: StartSidecar, limits: dict[str, float]
) -> None:
    spec = policy(cloud, fallback={"cloudToLocal": False})
    spec["cloud"].update(maxRetries=10, **limits)
    sc = await make_sidecar(spec, [local_url])
    await inject(cloud, status=503, count=100, delayS=0.3)  # slow failures, every time
    started = time.monotonic()
    with pytest.raises(openai.APIStatusError) as err:
        async with asyncio.timeout(10):
            await sc.chat(LONG_FILLER)
    elapsed = time.monotonic() - started
    # Eleven 0.3 s attempts and their backoff would take over 3.3 s; the deadline is 1 s.
    # What shows the deadline is the number of attempts (a busy machine only slows each).
    assert elapsed > 0.6
    assert 2 <= len(await received(cloud)) <= 4
    assert err.value.status_code == 502
    assert "no time left for a retry within the 1s deadline" in err.value.message


async def test_cloud_retries_wait_as_long_as_retry_after_says(
    local_url: str, cloud: str, make_sidecar: StartSidecar
) -> None:
    spec = policy(cloud)
    spec["cloud"].update(maxRetries=2, deadlineSeconds=10)
    sc = await make_sidecar(spec, [local_url])
    await inject(cloud, status=429, count=1, retryAfter="1")
    started = time.monotonic()
    raw = await sc.chat(LONG_FILLER)
    elapsed = time.monotonic() - started
    assert raw.headers["x-clawdbot-target"] == "cloud"
    assert raw.headers["x-clawdbot-reason"] == "rule:medium"
    assert len(await received(cloud)) == 2
    assert 1.0 <= elapsed < 5  # the backoff alone would have retried within 0.2 s


async def test_a_retry_after_beyond_the_deadline_is_not_waited_for(
    local_url: str, cloud: str, make_sidecar: StartSidecar
) -> None:
    spec = policy(cloud)
    spec["cloud"].update(maxRetries=2, deadlineSeconds=5)
    sc = await make_sidecar(spec, [local_url])
    await inject(cloud, status=429, count=1, retryAfter="30")
    started = time.monotonic()
    raw = await sc.chat(LONG_FILLER)
    # No retry at all (it could only come after the deadline): local answers at once.
    assert time.monotonic() - started < 3
    assert raw.headers["x-clawdbot-target"] == "local"
    assert raw.headers["x-clawdbot-reason"] == "fallback:cloud-failed (rule:medium)"
    assert len(await received(cloud)) == 1


async def test_a_cloud_that_never_accepts_fails_at_its_connect_timeout(
    local_url: str, blackhole: str, make_sidecar: StartSidecar
) -> None:
    spec = policy(blackhole.removesuffix("/v1"))
    spec["cloud"].update(maxRetries=1, timeoutSeconds=60)
    sc = await make_sidecar(spec, [local_url], cloud_connect_timeout_s=CONNECT_TIMEOUT_S)
    started = time.monotonic()
    async with asyncio.timeout(10):  # the cloud's own timeout is 60 s
        raw = await sc.chat(LONG_FILLER)
        stream = await sc.client.chat.completions.create(
            model="tiny-chat",
            messages=[{"role": "user", "content": LONG_FILLER}],
            max_tokens=4,
            stream=True,
        )
        assert [c async for c in stream]
    # Two attempts each (a connect failure is retried), then the local fallback answers.
    assert time.monotonic() - started < 6
    assert raw.headers["x-clawdbot-target"] == "local"
    assert raw.headers["x-clawdbot-reason"] == "fallback:cloud-failed (rule:medium)"


async def test_a_local_endpoint_that_accepts_but_never_answers_is_left_for_another(
    local_url: str, cloud: str, silent_endpoint: str, make_sidecar: StartSidecar
) -> None:
    """A replica that takes the connection and then says nothing (a wedged process) does not
    hold requests for the whole local timeout: once it fails its liveness probe, requests
    waiting on it go to a replica that answers, and it is ejected."""
    sc = await make_sidecar(
        policy(cloud),
        [silent_endpoint, local_url],
        local_timeout_s=LOCAL_TIMEOUT_S,
        local_connect_timeout_s=CONNECT_TIMEOUT_S,
    )
    started = time.monotonic()
    async with asyncio.timeout(20):  # far below the 60 s local timeout
        answers = await asyncio.gather(*(sc.chat(f"hi {i}") for i in range(6)))
    assert all(a.headers["x-clawdbot-target"] == "local" for a in answers)
    assert time.monotonic() - started < 15
    silent = next(s for s in sc.core.pool.states if s.endpoint.url == silent_endpoint)
    assert silent.errors >= 1 and not silent.healthy(time.monotonic())
    assert silent.in_flight == 0  # the requests it held were let go, not left counting
    assert await received(cloud) == []  # a ready replica answered: nothing left the pod
    # A streamed request does not wait on it either (it is ejected now).
    async with asyncio.timeout(20):
        stream = await sc.client.chat.completions.create(
            model="tiny-chat", messages=[{"role": "user", "content": "hi"}], stream=True
        )
        assert [c async for c in stream]


async def test_the_stand_in_resets_connections_when_told(cloud: str) -> None:
    await inject(cloud, reset=True, count=1)
    async with aiohttp.ClientSession() as s:
        with pytest.raises(aiohttp.ClientConnectionError):
            await s.post(
                f"{cloud}/v1/chat/completions",
                json={"model": "m", "messages": [{"role": "user", "content": "hi"}]},
                headers={"Authorization": f"Bearer {API_KEY}"},
            )
        async with s.get(f"{cloud}/_stub/healthz") as r:  # the next one is served
            assert r.status == 200


@pytest.mark.parametrize(
    ("fault", "attempts"),
    [
        ({"reset": True}, 2),  # retried: a reset before the answer
        ({"status": 503}, 2),
        ({"status": 500}, 1),  # not retried: the provider may have done the work
        ({"delayS": 3.0}, 1),  # the 1 s timeout is the deadline: no time for a retry
    ],
)
async def test_a_cloud_that_resets_fails_or_stalls_is_answered_locally(
    local_url: str,
    cloud: str,
    make_sidecar: StartSidecar,
    fault: dict[str, object],
    attempts: int,
) -> None:
    """Each cloud fault ends in the local fallback's answer, within the cloud's timeout."""
    spec = policy(cloud)
    spec["cloud"].update(maxRetries=1, timeoutSeconds=1)
    sc = await make_sidecar(spec, [local_url])
    await inject(cloud, count=10, **fault)
    async with asyncio.timeout(10):
        raw = await sc.chat(LONG_FILLER)
    assert raw.headers["x-clawdbot-target"] == "local"
    assert raw.headers["x-clawdbot-reason"] == "fallback:cloud-failed (rule:medium)"
    assert len(await received(cloud)) == attempts
