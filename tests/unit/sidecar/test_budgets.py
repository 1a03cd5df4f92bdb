"""Cloud budgets as bucketed running sums: checked against an exact per-call window (what
the tracker used to keep), bounded in memory, and with a per-check cost that does not grow
with the number of calls recorded."""

from __future__ import annotations

import sys
import tracemalloc
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from hypothesis import given, settings
from hypothesis import strategies as st

from clawdbot_api.v1alpha1.routingpolicy import Budgets, Pricing
from clawdbot_sidecar.accounting.budgets import (
    DAY_BUCKET_S,
    DAY_S,
    MINUTE_BUCKET_S,
    MINUTE_S,
    BudgetTracker,
    SlidingSum,
)

PRICING = Pricing(inputPerMillionTokens=2.5, outputPerMillionTokens=10)


@dataclass
class ExactWindow:
    """The reference: every value kept with its time; one counts while now - t <= window."""

    window_s: float
    values: deque[tuple[float, float]] = field(default_factory=deque)

    def add(self, value: float, now: float) -> None:
        self.values.append((now, value))

    def total(self, now: float) -> float:
        return sum(v for t, v in self.values if now - t <= self.window_s)


# (seconds since the last event, value, whether a check follows)
Events = list[tuple[float, int, bool]]
events = st.lists(
    st.tuples(
        st.floats(min_value=0, max_value=30, allow_nan=False), st.integers(1, 1000), st.booleans()
    ),
    max_size=300,
)


@settings(max_examples=200, deadline=None)
@given(events=events, start=st.floats(min_value=0, max_value=1e6, allow_nan=False))
def test_a_bucketed_window_counts_what_an_exact_one_does_and_at_most_a_bucket_more(
    events: Events, start: float
) -> None:
    bucketed = SlidingSum(MINUTE_S, MINUTE_BUCKET_S)
    exact = ExactWindow(MINUTE_S)
    late = ExactWindow(MINUTE_S + MINUTE_BUCKET_S)  # an exact window one bucket longer
    now = start
    for gap, value, check in events:
        now += gap
        if check:
            # Never under the exact window (that would let spend past a budget), never
            # over it by more than what one bucket width of lateness holds.
            assert exact.total(now) <= bucketed.total(now) <= late.total(now)
        for window in (bucketed, exact, late):
            window.add(value, now)


def test_a_call_counts_for_the_whole_window_not_a_bucket_less() -> None:
    # The bucket of a call at 10.9 s starts at 10 s; it left the window at 70 s, when the
    # call was 59.1 s old, so a requests-per-minute budget let one call too many in.
    tracker = BudgetTracker(Budgets(cloudRequestsPerMinute=1), PRICING)
    tracker.record(10, 10, now=10.9)
    assert tracker.exhausted(now=70.0) == "cloudRequestsPerMinute"
    assert tracker.exhausted(now=70.9) == "cloudRequestsPerMinute"
    assert tracker.exhausted(now=71.0) is None  # 60.1 s later: within one bucket


def test_budgets_keep_their_meaning() -> None:
    """The cases the per-call tracker was tested for, through the same calls."""
    b = BudgetTracker(Budgets(cloudRequestsPerMinute=2), PRICING)
    b.record(1, 1, now=0)
    assert b.exhausted(now=1) is None
    b.record(1, 1, now=1)
    assert b.exhausted(now=2) == "cloudRequestsPerMinute"
    assert b.exhausted(now=62) is None  # both have left the minute

    t = BudgetTracker(Budgets(cloudTokensPerMinute=1000), PRICING)
    t.record(600, 100, now=0)
    assert t.exhausted(planned_tokens=300, now=1) is None
    assert t.exhausted(planned_tokens=301, now=1) == "cloudTokensPerMinute"

    d = BudgetTracker(Budgets(cloudUSDPerDay=1.0), PRICING)
    # 100k prompt tokens at $2.5/M and 75k completion tokens at $10/M: $1.00.
    assert d.record(100_000, 75_000, now=0) == 1.0
    assert d.exhausted(now=3600) == "cloudUSDPerDay"
    assert d.exhausted(now=DAY_S + DAY_BUCKET_S) is None


def test_windows_for_budgets_not_set_are_not_kept() -> None:
    tracker = BudgetTracker(Budgets(), PRICING)
    for i in range(1000):
        tracker.record(10, 10, now=float(i))
    assert tracker.footprint() == 0
    assert tracker.exhausted(now=1000.0) is None


CALLS = 500_000
# Every window full: 60 + 60 one-second buckets, 1,440 one-minute buckets, and one more
# each while a bucket is half in the window.
MAX_BUCKETS = 60 + 60 + 1440 + 3


def all_budgets() -> BudgetTracker:
    budgets = Budgets(
        cloudRequestsPerMinute=10**9, cloudTokensPerMinute=10**12, cloudUSDPerDay=10**9
    )
    return BudgetTracker(budgets, PRICING)


def record_calls(tracker: BudgetTracker, calls: int) -> float:
    """``calls`` cloud calls spread over a day, a check before each; returns the time."""
    step = DAY_S / calls
    now = 0.0
    for i in range(calls):
        now = i * step
        tracker.exhausted(50, now=now)
        tracker.record(40, 10, now=now)
    return now


def lines_run(call: Callable[[], object]) -> int:
    """Python lines that ``call`` runs: a cost measure that does not depend on the machine."""
    count = 0

    def trace(frame: object, event: str, arg: object) -> object:
        nonlocal count
        if event == "line":
            count += 1
        return trace

    sys.settrace(trace)  # type: ignore[arg-type]
    try:
        call()
    finally:
        sys.settrace(None)
    return count


def test_half_a_million_calls_cost_bounded_memory_and_a_constant_check() -> None:
    few, many = all_budgets(), all_budgets()
    record_calls(few, 1000)
    tracemalloc.start()
    try:
        now = record_calls(many, CALLS)
        held = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    assert many.footprint() <= MAX_BUCKETS
    # One entry per call kept all of them for a day: 88 MiB at this count.
    assert held < 512 * 1024, f"{held / 2**10:.0f} KiB held for {CALLS} calls"
    # A check after 500,000 calls does what a check after 1,000 does (it summed every
    # call of the day: 30 ms per request).
    later = now + MINUTE_BUCKET_S / 2
    cost_many = lines_run(lambda: many.exhausted(50, now=later))
    cost_few = lines_run(lambda: few.exhausted(50, now=later))
    assert cost_many <= cost_few + 10, (cost_few, cost_many)
