"""The circuit breaker in front of the cloud endpoint: stop calling what keeps failing."""

from __future__ import annotations

import time
from dataclasses import dataclass
from enum import StrEnum

# Consecutive cloud failures that open the circuit.
BREAKER_FAILURES = 5
# How long an open circuit refuses calls before letting one probe through.
BREAKER_COOLDOWN_S = 10.0


class BreakerState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half-open"


@dataclass
class CircuitBreaker:
    """Stops calling an endpoint that keeps failing, and probes it again after a cooldown."""

    failures_to_open: int = BREAKER_FAILURES
    cooldown_s: float = BREAKER_COOLDOWN_S
    state: BreakerState = BreakerState.CLOSED
    failures: int = 0
    opened_at: float = 0.0
    probing: bool = False

    def allow(self, now: float | None = None) -> bool:
        """True when a call may go out now (closed, or the one half-open probe)."""
        t = time.monotonic() if now is None else now
        if self.state == BreakerState.OPEN and t - self.opened_at >= self.cooldown_s:
            self.state = BreakerState.HALF_OPEN
            self.probing = False
        if self.state == BreakerState.CLOSED:
            return True
        if self.state == BreakerState.HALF_OPEN and not self.probing:
            self.probing = True
            return True
        return False

    def available(self, now: float | None = None) -> bool:
        """Whether a call could go out now (without taking the half-open probe): closed,
        half-open with the probe free, or open past its cooldown. Routing decisions use
        this, so the cloud is chosen again after a cooldown and the probe can happen."""
        t = time.monotonic() if now is None else now
        if self.state == BreakerState.OPEN:
            return t - self.opened_at >= self.cooldown_s
        return self.state == BreakerState.CLOSED or not self.probing

    def record(self, ok: bool, now: float | None = None) -> None:
        """Feed the outcome of a call."""
        t = time.monotonic() if now is None else now
        if ok:
            self.state, self.failures, self.probing = BreakerState.CLOSED, 0, False
            return
        self.failures += 1
        if self.state == BreakerState.HALF_OPEN or self.failures >= self.failures_to_open:
            self.state, self.opened_at, self.probing = BreakerState.OPEN, t, False
