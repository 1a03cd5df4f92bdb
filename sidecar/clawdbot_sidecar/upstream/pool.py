"""The pool of local model endpoints: least-loaded choice and outlier ejection.

Choice is the power of two random choices over in-flight requests (ties broken by recent
latency): near-optimal load spreading with O(1) work and no herd on one "best" replica.
An endpoint that fails several times in a row is ejected for a while that doubles on each
repeat (Envoy's outlier detection), then given traffic again.
"""

from __future__ import annotations

import logging
import random
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from clawdbot_sidecar.config import LocalEndpoint

log = logging.getLogger("clawdbot.sidecar")

# Consecutive failures (connection errors, 5xx) before an endpoint is ejected.
EJECT_AFTER_FAILURES = 3
# First ejection lasts this long; each further ejection in a row doubles it, up to the max.
BASE_EJECTION_S = 2.0
MAX_EJECTION_S = 60.0
# Weight of the newest sample in the latency moving average.
LATENCY_EWMA_ALPHA = 0.2


@dataclass
class EndpointState:
    """What the pool knows about one endpoint."""

    endpoint: LocalEndpoint
    in_flight: int = 0
    latency_ewma_s: float = 0.0
    consecutive_failures: int = 0
    ejections: int = 0
    ejected_until: float = 0.0
    requests: int = 0
    errors: int = 0
    # Integral of in_flight over time (request-seconds) up to ``_changed``: its growth over
    # a report interval is the mean concurrency, the autoscaling signal (a snapshot of
    # in_flight mostly reads 0 or 1 when requests are short).
    _in_flight_area: float = 0.0
    _changed: float = 0.0
    # Recent latencies for percentiles in load reports; bounded so memory stays flat.
    latencies_s: deque[float] = field(default_factory=lambda: deque(maxlen=512))

    def in_flight_seconds(self, now: float | None = None) -> float:
        """The in-flight integral up to ``now`` (monotonic seconds)."""
        now = time.monotonic() if now is None else now
        return self._in_flight_area + self.in_flight * max(0.0, now - self._changed)

    def _count(self, delta: int, now: float) -> None:
        self._in_flight_area += self.in_flight * max(0.0, now - self._changed)
        self._changed = now
        self.in_flight += delta

    def healthy(self, now: float) -> bool:
        """True unless the endpoint is serving an ejection."""
        return now >= self.ejected_until


class NoEndpoint(Exception):
    """No local endpoint can take the request (none configured, all ejected or excluded)."""


class LocalPool:
    """Local endpoints with load tracking. Not thread-safe: one event loop owns it."""

    def __init__(self, endpoints: Iterable[LocalEndpoint] = (), *, seed: int | None = None):
        self._states: dict[str, EndpointState] = {}
        self._rng = random.Random(seed)
        # Called with each endpoint as it is ejected (the local target probes it back).
        self.on_eject: Callable[[EndpointState], None] | None = None
        self.update(endpoints)

    def update(self, endpoints: Iterable[LocalEndpoint]) -> None:
        """Replace the endpoint set, keeping the state of endpoints that stay."""
        fresh = {e.url: e for e in endpoints}
        self._states = {
            url: self._states.get(url) or EndpointState(endpoint=e) for url, e in fresh.items()
        }
        for url, e in fresh.items():
            self._states[url].endpoint = e

    @property
    def states(self) -> list[EndpointState]:
        """Every endpoint's state, for metrics and load reports."""
        return list(self._states.values())

    def healthy_count(self, now: float | None = None) -> int:
        """Endpoints not currently ejected."""
        t = time.monotonic() if now is None else now
        return sum(s.healthy(t) for s in self._states.values())

    def pick(
        self, exclude: set[str] | frozenset[str] = frozenset(), model: str | None = None
    ) -> EndpointState:
        """The less loaded of two random healthy endpoints; raises NoEndpoint if none.

        With ``model``, endpoints serving that model name are preferred when there are any
        (a policy may list several local models); otherwise any endpoint answers.
        """
        now = time.monotonic()
        candidates = [s for url, s in self._states.items() if url not in exclude and s.healthy(now)]
        if model is not None:
            serving = [s for s in candidates if s.endpoint.model == model]
            candidates = serving or candidates
        if not candidates:
            raise NoEndpoint("no healthy local endpoint")
        if len(candidates) == 1:
            return candidates[0]
        a, b = self._rng.sample(candidates, 2)
        return min((a, b), key=lambda s: (s.in_flight, s.latency_ewma_s))

    def least_loaded_in_flight(self) -> int:
        """In-flight requests on the least loaded healthy endpoint (a queue-depth signal)."""
        now = time.monotonic()
        loads = [s.in_flight for s in self._states.values() if s.healthy(now)]
        return min(loads) if loads else 0

    @staticmethod
    def begin(state: EndpointState) -> float:
        """Count a request as in flight; returns its start time."""
        now = time.monotonic()
        state._count(1, now)
        state.requests += 1
        return now

    def end(self, state: EndpointState, started: float, ok: bool) -> None:
        """Count a request as done, update latency and ejection state."""
        now = time.monotonic()
        state._count(-1, now)
        elapsed = now - started
        if ok:
            state.consecutive_failures = 0
            state.ejections = 0
            a = LATENCY_EWMA_ALPHA
            prev = state.latency_ewma_s
            state.latency_ewma_s = elapsed if prev == 0 else (1 - a) * prev + a * elapsed
            state.latencies_s.append(elapsed)
            return
        state.errors += 1
        state.consecutive_failures += 1
        if state.consecutive_failures >= EJECT_AFTER_FAILURES:
            self.eject(state)

    def eject(self, state: EndpointState) -> None:
        """Take an endpoint out of rotation for a backoff period (``on_eject`` is told)."""
        duration = min(BASE_EJECTION_S * 2**state.ejections, MAX_EJECTION_S)
        log.warning(
            "local endpoint %s ejected for %.0fs after %d failures in a row",
            state.endpoint.url,
            duration,
            state.consecutive_failures,
        )
        state.ejections += 1
        state.consecutive_failures = 0
        state.ejected_until = time.monotonic() + duration
        if self.on_eject is not None:
            self.on_eject(state)

    def readmit(self, state: EndpointState) -> None:
        """End an ejection early: a probe found the endpoint serving again."""
        if state.ejected_until:
            log.info("local endpoint %s serves again; back in rotation", state.endpoint.url)
        state.ejected_until = 0.0
        state.consecutive_failures = 0

    def holds(self, state: EndpointState) -> bool:
        """Whether ``state`` is still one of the pool's endpoints (not replaced or removed)."""
        return self._states.get(state.endpoint.url) is state
