"""Cloud budgets: requests and tokens per minute, spend per day, over sliding windows.

A window is a ring of fixed-width buckets with running totals, so memory is bounded by the
number of buckets (60 for a minute, 1,440 for a day) whatever the traffic, and a check or a
record costs O(1) amortized. The price is granularity: a call leaves a window up to one bucket
width (1 s for the minute budgets, 1 min for the day) late, which errs on the side of
keeping spend under the budget. Windows for budgets the policy doesn't set are not kept.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field

from clawdbot_api.v1alpha1.routingpolicy import Budgets, Pricing

__all__ = ["BudgetTracker", "SlidingSum"]

MINUTE_S = 60.0
DAY_S = 86400.0
# Bucket widths: a sixtieth of a minute, a 1,440th of a day.
MINUTE_BUCKET_S = 1.0
DAY_BUCKET_S = 60.0


@dataclass
class SlidingSum:
    """The sum of values added within the last ``window_s`` seconds, in buckets."""

    window_s: float
    bucket_s: float
    _buckets: deque[tuple[int, float]] = field(default_factory=deque)
    _total: float = 0.0

    def add(self, value: float, now: float) -> None:
        """Count ``value`` at time ``now`` (monotonic seconds)."""
        self._expire(now)  # also when nobody asks for the total: the ring stays bounded
        slot = int(now // self.bucket_s)
        if self._buckets and self._buckets[-1][0] == slot:
            _, old = self._buckets[-1]
            self._buckets[-1] = (slot, old + value)
        else:
            self._buckets.append((slot, value))
        self._total += value

    def total(self, now: float) -> float:
        """What was added in the window ending at ``now`` (and up to one bucket before)."""
        self._expire(now)
        return self._total

    def _expire(self, now: float) -> None:
        # A bucket leaves once all of it is older than the window: a value added at t counts
        # while now - t <= window_s, as an exact window would, and at most one bucket
        # longer, never shorter (leaving at the bucket's start let spend in early).
        cutoff = now - self.window_s
        buckets = self._buckets
        while buckets and (buckets[0][0] + 1) * self.bucket_s <= cutoff:
            self._total -= buckets.popleft()[1]
        if not buckets:
            self._total = 0.0  # no float drift left behind by the subtractions

    def __len__(self) -> int:
        return len(self._buckets)


@dataclass
class BudgetTracker:
    """Cloud tokens, requests and spend against the policy's budgets; exhausted = stay local."""

    budgets: Budgets
    pricing: Pricing
    _requests: SlidingSum | None = None
    _tokens: SlidingSum | None = None
    _spend: SlidingSum | None = None

    def __post_init__(self) -> None:
        b = self.budgets
        if b.cloud_requests_per_minute is not None:
            self._requests = SlidingSum(MINUTE_S, MINUTE_BUCKET_S)
        if b.cloud_tokens_per_minute is not None:
            self._tokens = SlidingSum(MINUTE_S, MINUTE_BUCKET_S)
        if b.cloud_usd_per_day is not None:
            self._spend = SlidingSum(DAY_S, DAY_BUCKET_S)

    def cost_usd(self, prompt_tokens: int, completion_tokens: int) -> float:
        """Price of one call at the endpoint's rates."""
        return (
            prompt_tokens * self.pricing.input_per_million_tokens
            + completion_tokens * self.pricing.output_per_million_tokens
        ) / 1e6

    def exhausted(self, planned_tokens: int = 0, now: float | None = None) -> str | None:
        """The name of the budget a call of ``planned_tokens`` would break, or None."""
        t = time.monotonic() if now is None else now
        b = self.budgets
        rpm, tpm, usd = b.cloud_requests_per_minute, b.cloud_tokens_per_minute, b.cloud_usd_per_day
        if rpm is not None and self._requests is not None and self._requests.total(t) + 1 > rpm:
            return "cloudRequestsPerMinute"
        if (
            tpm is not None
            and self._tokens is not None
            and self._tokens.total(t) + planned_tokens > tpm
        ):
            return "cloudTokensPerMinute"
        if usd is not None and self._spend is not None and self._spend.total(t) >= usd:
            return "cloudUSDPerDay"
        return None

    def record(self, prompt_tokens: int, completion_tokens: int, now: float | None = None) -> float:
        """Account one finished cloud call; returns its cost in USD."""
        t = time.monotonic() if now is None else now
        cost = self.cost_usd(prompt_tokens, completion_tokens)
        if self._requests is not None:
            self._requests.add(1, t)
        if self._tokens is not None:
            self._tokens.add(prompt_tokens + completion_tokens, t)
        if self._spend is not None:
            self._spend.add(cost, t)
        return cost

    def footprint(self) -> int:
        """Buckets held across every window (bounded by 60 + 60 + 1,440)."""
        return sum(len(w) for w in (self._requests, self._tokens, self._spend) if w is not None)
