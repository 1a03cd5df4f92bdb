"""Sidecars' load reports as the operator takes them in: checked, stamped, bounded.

A report is a pod's word, and any pod that can be injected can send one, so nothing in it is
taken as sent:

* time: a report is stamped with the moment this replica received it, and rates are over
  the time between two receipts (the report's own ``unix_ms`` is ignored), so a report dated
  next year can't keep a gauge alive after its pod has gone;
* what it is about: only endpoints the pod's own snapshot holds (the endpoints of its own
  policy's local models) are taken, and each under the ModelDeployment and revision the
  operator knows that endpoint by, never the ones the report names;
* how much: counts that go up by more than ``MAX_REQUESTS_PER_S`` per second are cut to it,
  errors to the requests, in-flight requests to ``MAX_IN_FLIGHT`` per endpoint and latency
  to ``MAX_LATENCY_MS``: one pod weighs at most as much as one very busy client;
* memory: one set of counters per (pod, endpoint), ``MAX_COUNTERS`` in all (the longest
  silent go first); the store bounds the reports themselves (``loadreports``).

Relayed reports (from another replica, which checked them) are stamped and bounded again
but not matched against a pod's endpoints, which that replica already did.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final

from clawdbot_api.discovery import discovery_pb2 as pb
from clawdbot_operator.discovery.resolve import EndpointInfo
from clawdbot_operator.loadreports import LoadReport, LoadReportStore

MAX_REQUESTS_PER_S: Final = 10_000.0
"""More than any one client pod sends to one model replica; a count growing faster is cut."""
MAX_IN_FLIGHT: Final = 1024.0
"""Concurrent requests one pod may claim on one endpoint."""
MAX_LATENCY_MS: Final = 3_600_000.0
"""An hour: longer latencies are reported as this."""
MAX_COUNTERS: Final = 50_000
"""(pod, endpoint) counter sets kept; past it, the least recently reported one is dropped."""
MIN_SPAN_S: Final = 0.1
"""Shortest time a rate is computed over: two reports in one burst don't divide by ~0."""
FIRST_REPORT_SPAN_S: Final = 300.0
"""What a first report's counts (since the sidecar started) may cover at most: the window."""


@dataclass(frozen=True)
class _Counters:
    """One endpoint's cumulative counters as of one report, and when it was received."""

    received_s: float
    requests: int
    errors: int
    in_flight_seconds: float


def _clamp(value: float, low: float, high: float) -> float:
    return min(max(value, low), high)


class ReportIntake:
    """Turns sidecars' reports into store entries; see the module docstring."""

    def __init__(
        self,
        store: LoadReportStore,
        *,
        monotonic: Callable[[], float] = time.monotonic,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        max_counters: int = MAX_COUNTERS,
    ) -> None:
        self.store = store
        self.monotonic = monotonic
        self.clock = clock
        self.max_counters = max_counters
        self.dropped_endpoints = 0
        """Endpoints reported that the pod was not given (counted, not stored)."""
        # (namespace, pod, url) -> that endpoint's counters at the previous report.
        self._counters: OrderedDict[tuple[str, str, str], _Counters] = OrderedDict()

    @property
    def counters(self) -> int:
        """(pod, endpoint) counter sets held."""
        return len(self._counters)

    def record(
        self, report: pb.LoadReport, endpoints: Mapping[str, EndpointInfo] | None
    ) -> pb.LoadReport:
        """Take one report; ``endpoints``: the reporting pod's own (url -> what the operator
        knows it as), None for a relayed report. Returns the report as taken (endpoints
        filtered and renamed), to relay to the other replicas."""
        received_s, when = self.monotonic(), self.clock()
        taken = pb.LoadReport(
            pod_namespace=report.pod_namespace,
            pod_name=report.pod_name,
            unix_ms=int(when.timestamp() * 1000),
        )
        for e in report.endpoints:
            info = endpoints.get(e.url) if endpoints is not None else None
            if endpoints is not None and info is None:
                self.dropped_endpoints += 1
                continue
            load = pb.EndpointLoad()
            load.CopyFrom(e)
            if info is not None:
                load.model_deployment, load.revision = info.model_deployment, info.revision
            self._take(report.pod_namespace, report.pod_name, load, received_s, when)
            taken.endpoints.append(load)
        return taken

    def _take(
        self, ns: str, pod: str, e: pb.EndpointLoad, received_s: float, when: datetime
    ) -> None:
        key = (ns, pod, e.url)
        now = _Counters(received_s, e.requests, e.errors, e.in_flight_seconds)
        prev = self._counters.pop(key, None)
        self._counters[key] = now
        while len(self._counters) > self.max_counters:
            self._counters.popitem(last=False)
        span_s: float | None = None
        if prev is None or e.requests < prev.requests:
            # First report of this endpoint, or the sidecar restarted and its counters began
            # again: they cover an unknown span, at most the window.
            prev = _Counters(received_s, 0, 0, 0.0)
            limit = MAX_REQUESTS_PER_S * FIRST_REPORT_SPAN_S
        else:
            span_s = max(received_s - prev.received_s, MIN_SPAN_S)
            limit = MAX_REQUESTS_PER_S * span_s
        requests = int(_clamp(e.requests - prev.requests, 0, limit))
        errors = int(_clamp(e.errors - prev.errors, 0, requests))
        rps = requests / span_s if span_s else 0.0
        mean_in_flight = float(e.in_flight)
        if span_s and e.in_flight_seconds:  # 0: a sidecar that doesn't integrate; snapshot
            mean_in_flight = (e.in_flight_seconds - prev.in_flight_seconds) / span_s
        p95 = _clamp(e.latency_p95_ms, 0.0, MAX_LATENCY_MS) if e.latency_p95_ms > 0 else None
        self.store.add(
            LoadReport(
                namespace=ns,
                model_deployment=e.model_deployment,
                source=f"{pod}/{e.url}",
                reporter=pod,
                timestamp=when,
                revision=e.revision or None,
                inflight_requests=_clamp(mean_in_flight, 0.0, MAX_IN_FLIGHT),
                requests_per_second=rps,
                requests=requests,
                errors=errors,
                p95_latency_ms=p95,
            )
        )
