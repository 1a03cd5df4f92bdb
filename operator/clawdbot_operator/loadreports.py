"""Load reports from the routing sidecars, and what the operator derives from them.

One store feeds two consumers: the external metrics API (autoscaling) and the rollback
check (error rate and latency of a revision). Today reports arrive through
:meth:`LoadReportStore.add` (called by the HTTP endpoint of the metrics server and by
tests); the sidecars' gRPC stream will call the same method.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Protocol

from clawdbot_operator.builders.meta import LABEL_MODEL_DEPLOYMENT, LABEL_NAMESPACE


@dataclass(frozen=True)
class LoadReport:
    """What one reporter (a sidecar, or a model pod) saw of one ModelDeployment."""

    namespace: str
    model_deployment: str
    source: str
    """Who reports (pod name); a newer report from the same source replaces the gauges."""
    timestamp: datetime
    revision: int | None = None
    """Revision of the model pods the requests went to, when known."""
    inflight_requests: float = 0.0
    queue_depth: float = 0.0
    requests_per_second: float = 0.0
    requests: int = 0
    """Requests completed since this source's previous report."""
    errors: int = 0
    """Of those, how many failed (5xx, timeouts, resets)."""
    p95_latency_ms: float | None = None
    """p95 latency of those requests."""

    def labels(self) -> dict[str, str]:
        """Labels the metrics API matches selectors against."""
        return {LABEL_MODEL_DEPLOYMENT: self.model_deployment, LABEL_NAMESPACE: self.namespace}


@dataclass(frozen=True)
class RevisionHealth:
    """Traffic outcome of one revision over the report window."""

    requests: int
    errors: int
    p95_latency_ms: float | None

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else 0.0


class RevisionHealthSource(Protocol):
    """Where the rollback check gets a revision's error rate and latency."""

    def revision_health(
        self, namespace: str, name: str, revision: int, now: datetime
    ) -> RevisionHealth | None:
        """Health of ``revision`` over the recent window; None when nothing was reported."""
        ...


GAUGES: Mapping[str, str] = {
    "clawdbot_inflight_requests": "inflight_requests",
    "clawdbot_queue_depth": "queue_depth",
    "clawdbot_requests_per_second": "requests_per_second",
}
"""External metric name -> LoadReport attribute."""


@dataclass
class MetricValue:
    """One external metric value for one ModelDeployment."""

    labels: dict[str, str]
    value: float
    timestamp: datetime


@dataclass
class LoadReportStore:
    """In-memory reports, kept for ``window`` (thread-safe: the gRPC server may use threads)."""

    window: timedelta = timedelta(minutes=5)
    gauge_ttl: timedelta = timedelta(seconds=35)
    """A source's gauges count this long after its last report (a bit over three report
    intervals): a sidecar that stopped, or an endpoint that went away, stops adding load."""
    _reports: list[LoadReport] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, report: LoadReport) -> None:
        """Record a report."""
        with self._lock:
            self._reports.append(report)

    def _recent(self, now: datetime) -> list[LoadReport]:
        cutoff = now - self.window
        with self._lock:
            self._reports = [r for r in self._reports if r.timestamp >= cutoff]
            return list(self._reports)

    def _latest_per_source(self, now: datetime) -> list[LoadReport]:
        latest: dict[tuple[str, str, str], LoadReport] = {}
        for r in self._recent(now):
            key = (r.namespace, r.model_deployment, r.source)
            if key not in latest or latest[key].timestamp <= r.timestamp:
                latest[key] = r
        return list(latest.values())

    def metric_values(
        self, namespace: str, metric: str, now: datetime | None = None
    ) -> list[MetricValue]:
        """A gauge summed over the latest report of each source, one value per
        ModelDeployment of ``namespace``; [] for a metric this store doesn't know."""
        attr = GAUGES.get(metric)
        if attr is None:
            return []
        now = now or datetime.now(UTC)
        totals: dict[str, MetricValue] = {}
        for r in self._latest_per_source(now):
            if r.namespace != namespace or r.timestamp < now - self.gauge_ttl:
                continue
            value = float(getattr(r, attr))
            found = totals.get(r.model_deployment)
            if found is None:
                totals[r.model_deployment] = MetricValue(r.labels(), value, r.timestamp)
            else:
                found.value += value
                found.timestamp = max(found.timestamp, r.timestamp)
        return [totals[k] for k in sorted(totals)]

    def revision_health(
        self, namespace: str, name: str, revision: int, now: datetime
    ) -> RevisionHealth | None:
        """Requests and errors summed over the window; p95 weighted by requests."""
        reports = [
            r
            for r in self._recent(now)
            if (r.namespace, r.model_deployment, r.revision) == (namespace, name, revision)
        ]
        if not reports:
            return None
        requests = sum(r.requests for r in reports)
        errors = sum(r.errors for r in reports)
        timed = [r for r in reports if r.p95_latency_ms is not None and r.requests > 0]
        p95: float | None = None
        if timed:
            weight = sum(r.requests for r in timed)
            p95 = sum((r.p95_latency_ms or 0.0) * r.requests for r in timed) / weight
        return RevisionHealth(requests, errors, p95)
