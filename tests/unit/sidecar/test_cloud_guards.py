"""The circuit breaker's two questions: may routing choose the cloud, may a call go out."""

from __future__ import annotations

from clawdbot_sidecar.upstream.breaker import BreakerState, CircuitBreaker


def test_breaker_opens_cools_down_and_probes_once() -> None:
    b = CircuitBreaker(failures_to_open=3, cooldown_s=10.0)
    for t in range(3):
        assert b.allow(now=t)
        b.record(ok=False, now=t)
    assert b.state == BreakerState.OPEN
    # Open: neither routing nor calls may use the cloud until the cooldown has passed.
    assert not b.available(now=5) and not b.allow(now=5)
    # After it: routing may choose the cloud again (available() takes nothing)...
    assert b.available(now=13) and b.available(now=13)
    # ...and exactly one call goes out as the half-open probe.
    assert b.allow(now=13)
    assert not b.allow(now=13) and not b.available(now=13)
    b.record(ok=True, now=14)
    assert b.state == BreakerState.CLOSED and b.allow(now=14)


def test_a_failed_probe_opens_the_breaker_again() -> None:
    b = CircuitBreaker(failures_to_open=1, cooldown_s=1.0)
    b.record(ok=False, now=0)
    assert b.allow(now=2)
    b.record(ok=False, now=2)
    assert b.state == BreakerState.OPEN and not b.available(now=2.5)
