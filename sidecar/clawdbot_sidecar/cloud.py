"""Guards around the cloud endpoint: circuit breaker and budgets.

The HTTP call itself lives with the other upstream calls in :mod:`clawdbot_sidecar.upstream`;
here is the state that decides whether the cloud may be tried at all.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from enum import StrEnum

from clawdbot_api.v1alpha1.routingpolicy import Budgets, Pricing

# Consecutive cloud failures that open the circuit.
BREAKER_FAILURES = 5
# How long an open circuit refuses calls before letting one probe through.
BREAKER_COOLDOWN_S = 10.0
# Budgets are enforced over a sliding window of this length (the CRD speaks per minute).
BUDGET_WINDOW_S = 60.0
DAY_S = 86400.0


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


@dataclass
class BudgetTracker:
    """Cloud tokens, requests and spend over sliding windows; exhausted means stay local."""

    budgets: Budgets
    pricing: Pricing
    _tokens: deque[tuple[float, int]] = field(default_factory=deque)
    _requests: deque[float] = field(default_factory=deque)
    _spend: deque[tuple[float, float]] = field(default_factory=deque)

    def cost_usd(self, prompt_tokens: int, completion_tokens: int) -> float:
        """Price of one call at the endpoint's rates."""
        return (
            prompt_tokens * self.pricing.input_per_million_tokens
            + completion_tokens * self.pricing.output_per_million_tokens
        ) / 1e6

    def _trim(self, now: float) -> None:
        while self._tokens and now - self._tokens[0][0] > BUDGET_WINDOW_S:
            self._tokens.popleft()
        while self._requests and now - self._requests[0] > BUDGET_WINDOW_S:
            self._requests.popleft()
        while self._spend and now - self._spend[0][0] > DAY_S:
            self._spend.popleft()

    def exhausted(self, planned_tokens: int = 0, now: float | None = None) -> str | None:
        """The name of the budget a call of ``planned_tokens`` would break, or None."""
        t = time.monotonic() if now is None else now
        self._trim(t)
        b = self.budgets
        rpm, tpm, usd = b.cloud_requests_per_minute, b.cloud_tokens_per_minute, b.cloud_usd_per_day
        if rpm is not None and len(self._requests) + 1 > rpm:
            return "cloudRequestsPerMinute"
        if tpm is not None and sum(n for _, n in self._tokens) + planned_tokens > tpm:
            return "cloudTokensPerMinute"
        if usd is not None and sum(c for _, c in self._spend) >= usd:
            return "cloudUSDPerDay"
        return None

    def record(self, prompt_tokens: int, completion_tokens: int, now: float | None = None) -> float:
        """Account one finished cloud call; returns its cost in USD."""
        t = time.monotonic() if now is None else now
        cost = self.cost_usd(prompt_tokens, completion_tokens)
        self._requests.append(t)
        self._tokens.append((t, prompt_tokens + completion_tokens))
        self._spend.append((t, cost))
        return cost
