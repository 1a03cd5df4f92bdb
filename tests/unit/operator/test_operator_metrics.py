"""The operator's own metrics: reconcile counts by result and their duration."""

from __future__ import annotations

import pytest
from prometheus_client import generate_latest

from clawdbot_operator.metrics import OperatorMetrics


async def test_reconciles_are_counted_by_result_and_timed() -> None:
    metrics = OperatorMetrics()

    async def ok() -> str:
        return "done"

    async def broken() -> str:
        raise RuntimeError("API server said no")

    assert await metrics.timed_reconcile(ok) == "done"
    with pytest.raises(RuntimeError):
        await metrics.timed_reconcile(broken)
    text = generate_latest(metrics.registry).decode()
    assert 'clawdbot_operator_reconciles_total{result="ok"} 1.0' in text
    assert 'clawdbot_operator_reconciles_total{result="error"} 1.0' in text
    assert "clawdbot_operator_reconcile_duration_seconds_count 2.0" in text
