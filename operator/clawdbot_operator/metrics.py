"""The operator's own Prometheus metrics, served on ``--prometheus-port`` at ``/metrics``.

    clawdbot_operator_reconciles_total{result}            ok | error
    clawdbot_operator_reconcile_duration_seconds          histogram
    clawdbot_operator_leader                              1 on the Lease holder
    clawdbot_operator_injection_requests_total{outcome}   the webhook's decisions

All in one registry, so one scrape shows the whole operator.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from aiohttp import web
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

T = TypeVar("T")
RECONCILE_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class OperatorMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.reconciles = Counter(
            "clawdbot_operator_reconciles",
            "ModelDeployment reconciles by result (ok, error).",
            ["result"],
            registry=self.registry,
        )
        self.reconcile_duration = Histogram(
            "clawdbot_operator_reconcile_duration_seconds",
            "Time to reconcile one ModelDeployment (API calls included).",
            buckets=RECONCILE_BUCKETS,
            registry=self.registry,
        )
        self.leader = Gauge(
            "clawdbot_operator_leader",
            "1 while this replica holds the leader Lease (or runs without leader election).",
            registry=self.registry,
        )

    async def timed_reconcile(self, run: Callable[[], Awaitable[T]]) -> T:
        """Run one reconcile, counting its result and duration."""
        started = time.perf_counter()
        try:
            result = await run()
        except Exception:
            self.reconciles.labels("error").inc()
            raise
        finally:
            self.reconcile_duration.observe(time.perf_counter() - started)
        self.reconciles.labels("ok").inc()
        return result


async def serve(registry: CollectorRegistry, host: str, port: int) -> web.AppRunner:
    """A plain-HTTP /metrics endpoint (scraped by Prometheus inside the cluster)."""

    async def metrics(request: web.Request) -> web.Response:
        return web.Response(
            body=generate_latest(registry), headers={"Content-Type": CONTENT_TYPE_LATEST}
        )

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner
