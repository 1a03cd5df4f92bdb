"""Load reports from the routing sidecars, and what the operator derives from them.

One store feeds two consumers: the external metrics API (autoscaling) and the rollback
check (error rate and latency of a revision). Reports arrive through
:meth:`LoadReportStore.add`, from the discovery stream (each sidecar's reports, checked and
stamped there, see ``discovery.server``) and from the metrics server's optional HTTP
endpoint.

Reports come from pods, and a pod may lie, so the store bounds what any one of them can do:

* memory: each source (one pod's view of one endpoint) keeps at most one report per
  ``bucket`` of the window (reports closer together are merged: counts added, gauges
  replaced), and the store keeps at most ``max_sources`` sources (the stalest go first);
* the rollback check: a revision's error rate and p95 latency are the lower median over the
  reporting pods (:meth:`LoadReportStore.revision_health`), so one pod alone can't fail a
  revision that the other clients see answer well.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Final, Protocol

from clawdbot_operator.builders.meta import LABEL_MODEL_DEPLOYMENT, LABEL_NAMESPACE

# A pod needs this many requests in the window for its error rate to be a vote (while any
# pod has that many): a client that sent one request and saw it fail is not a verdict.
MIN_VOTING_REQUESTS: Final = 5


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
    reporter: str = ""
    """The pod that reported (one pod may report on several endpoints); "": ``source``."""

    @property
    def reporting_pod(self) -> str:
        """Whose view this is: the pod, else the source."""
        return self.reporter or self.source

    def labels(self) -> dict[str, str]:
        """Labels the metrics API matches selectors against."""
        return {LABEL_MODEL_DEPLOYMENT: self.model_deployment, LABEL_NAMESPACE: self.namespace}


@dataclass(frozen=True)
class RevisionHealth:
    """Traffic outcome of one revision over the report window."""

    requests: int
    errors: int
    p95_latency_ms: float | None
    median_error_rate: float | None = None
    """The error rate the typical reporting pod saw (see ``revision_health``); None: the
    pooled ``errors / requests``."""

    @property
    def error_rate(self) -> float:
        if self.median_error_rate is not None:
            return self.median_error_rate
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


def _merge(older: LoadReport, newer: LoadReport) -> LoadReport:
    """Two reports of one source as one: counts added, p95 weighted by requests, the newer
    gauges and time."""
    p95: float | None = newer.p95_latency_ms
    weights = [(r.p95_latency_ms, r.requests) for r in (older, newer)]
    timed = [(v, w) for v, w in weights if v is not None and w > 0]
    if timed:
        p95 = sum(v * w for v, w in timed) / sum(w for _, w in timed)
    return replace(
        newer,
        requests=older.requests + newer.requests,
        errors=older.errors + newer.errors,
        p95_latency_ms=p95,
    )


def _lower_median(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[(len(ordered) - 1) // 2]


SourceKey = tuple[str, str, str]


@dataclass
class LoadReportStore:
    """In-memory reports, kept for ``window`` (thread-safe: the gRPC server may use threads).
    Bounded as the module docstring says."""

    window: timedelta = timedelta(minutes=5)
    gauge_ttl: timedelta = timedelta(seconds=35)
    """A source's gauges count this long after its last report (a bit over three report
    intervals): a sidecar that stopped, or an endpoint that went away, stops adding load."""
    bucket: timedelta = timedelta(seconds=10)
    """Reports of one source closer together than this are merged into one."""
    max_sources: int = 20_000
    """Sources kept at most; past it, the source that reported longest ago is dropped."""
    _series: dict[SourceKey, list[LoadReport]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, report: LoadReport) -> None:
        """Record a report."""
        key = (report.namespace, report.model_deployment, report.source)
        with self._lock:
            series = self._series.pop(key, [])  # re-inserted last: the dict is oldest-first
            last = series[-1] if series else None
            if (
                last is not None
                and last.revision == report.revision
                and report.timestamp - last.timestamp < self.bucket
            ):
                series[-1] = _merge(last, report)
            else:
                series.append(report)
            cutoff = report.timestamp - self.window
            self._series[key] = [r for r in series if r.timestamp >= cutoff]
            while len(self._series) > self.max_sources:
                del self._series[next(iter(self._series))]

    def __len__(self) -> int:
        """Reports held, every source's together."""
        with self._lock:
            return sum(len(s) for s in self._series.values())

    @property
    def sources(self) -> int:
        """Sources held."""
        with self._lock:
            return len(self._series)

    def _recent(self, now: datetime) -> list[LoadReport]:
        cutoff = now - self.window
        with self._lock:
            for key in [k for k, s in self._series.items() if s[-1].timestamp < cutoff]:
                del self._series[key]
            return [r for s in self._series.values() for r in s if r.timestamp >= cutoff]

    def _latest_per_source(self, now: datetime) -> list[LoadReport]:
        cutoff = now - self.window
        with self._lock:
            return [s[-1] for s in self._series.values() if s[-1].timestamp >= cutoff]

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
        """Requests and errors summed over the window; the error rate and p95 latency are
        the lower median of what each reporting pod saw (each pod's p95 weighted by its
        requests), counting pods with at least ``MIN_VOTING_REQUESTS`` requests while any
        has that many. One pod is one vote, however much it claims to have sent: a lone
        client decides alone, but one pod among others can't fail a revision they see
        answer well."""
        reports = [
            r
            for r in self._recent(now)
            if (r.namespace, r.model_deployment, r.revision) == (namespace, name, revision)
        ]
        if not reports:
            return None
        pods = _per_pod(reports)
        voters = [v for v in pods.values() if v.requests >= MIN_VOTING_REQUESTS]
        voters = voters or [v for v in pods.values() if v.requests > 0]
        timed = [v.p95_latency_ms for v in voters if v.p95_latency_ms is not None]
        # A latency verdict needs most voters to have measured one: a lone figure among
        # pods that sent none is one pod's word again.
        p95 = _lower_median(timed) if timed and 2 * len(timed) >= len(voters) else None
        return RevisionHealth(
            requests=sum(v.requests for v in pods.values()),
            errors=sum(v.errors for v in pods.values()),
            p95_latency_ms=p95,
            median_error_rate=(
                _lower_median([v.errors / v.requests for v in voters]) if voters else None
            ),
        )


def _per_pod(reports: Iterable[LoadReport]) -> dict[str, RevisionHealth]:
    """Each reporting pod's requests, errors and request-weighted p95."""
    totals: dict[str, tuple[int, int, float, int]] = {}
    for r in reports:
        requests, errors, latency, timed = totals.get(r.reporting_pod, (0, 0, 0.0, 0))
        if r.p95_latency_ms is not None and r.requests > 0:
            latency, timed = latency + r.p95_latency_ms * r.requests, timed + r.requests
        totals[r.reporting_pod] = (requests + r.requests, errors + r.errors, latency, timed)
    return {
        pod: RevisionHealth(requests, min(errors, requests), latency / timed if timed else None)
        for pod, (requests, errors, latency, timed) in totals.items()
    }
