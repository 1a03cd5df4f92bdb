"""The local pool's load accounting: what the load reports (and so the autoscaler) see."""

from __future__ import annotations

import pytest

from clawdbot_sidecar.config import LocalEndpoint
from clawdbot_sidecar.upstream import pool as pool_module
from clawdbot_sidecar.upstream.pool import LocalPool


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    c = Clock()
    monkeypatch.setattr(pool_module.time, "monotonic", c)
    return c


def test_in_flight_integral_is_the_area_under_concurrency(clock: Clock) -> None:
    pool = LocalPool([LocalEndpoint(url="http://127.1.0.5:8000/v1", model="m")])
    state = pool.states[0]
    first = LocalPool.begin(state)  # t=100: 1 in flight
    clock.now = 101.0
    second = LocalPool.begin(state)  # t=101: 2 in flight
    clock.now = 102.0
    pool.end(state, first, ok=True)  # t=102: 1 in flight
    clock.now = 103.0
    # 1 s at 1, 1 s at 2, then 1 s at 1 (the second is still running): 4 request-seconds.
    assert state.in_flight_seconds() == pytest.approx(4.0)
    pool.end(state, second, ok=False)
    clock.now = 110.0
    assert state.in_flight_seconds() == pytest.approx(4.0)  # idle time adds nothing
    assert (state.in_flight, state.requests, state.errors) == (0, 2, 1)


def test_integral_survives_an_endpoint_update(clock: Clock) -> None:
    endpoint = LocalEndpoint(url="http://127.1.0.5:8000/v1", model="m")
    pool = LocalPool([endpoint])
    started = LocalPool.begin(pool.states[0])
    clock.now = 102.0
    pool.update([endpoint, LocalEndpoint(url="http://127.1.0.6:8000/v1", model="m")])
    state = next(s for s in pool.states if s.endpoint.url == endpoint.url)
    pool.end(state, started, ok=True)
    assert state.in_flight_seconds() == pytest.approx(2.0)
