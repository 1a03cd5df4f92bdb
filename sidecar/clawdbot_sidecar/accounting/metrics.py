"""Prometheus metrics of the sidecar, all prefixed ``clawdbot_sidecar_``.

Labels are bounded: ``target`` is local/cloud/cache/reject, ``reason`` comes from the
policy's rule names and a fixed set of guard reasons, ``entity`` from the redaction config.
Prompt text, model answers and redacted values never become label values.
"""

from __future__ import annotations

from typing import Any, TypeVar

import prometheus_client
from prometheus_client import CollectorRegistry

from clawdbot_sidecar.redaction.fastscan import scanner_type

# Latency buckets from a cached answer (ms) to a long generation (minutes).
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)

_M = TypeVar("_M", bound="_MemoLabels")


class _MemoLabels:
    """``labels(*values)`` answered from a dict after the first call per label set.

    prometheus_client checks, converts and locks on every ``labels()`` call, several times
    the cost of the ``inc()`` that follows; the sidecar calls it a dozen times a request with
    a bounded set of values (see the module docstring), and never removes a child.
    """

    _memo: dict[tuple[Any, ...], Any]

    def labels(self: _M, *labelvalues: Any, **labelkwargs: Any) -> _M:
        if labelkwargs:
            return super().labels(*labelvalues, **labelkwargs)  # type: ignore[misc, no-any-return]
        memo = self.__dict__.setdefault("_memo", {})
        child = memo.get(labelvalues)
        if child is None:
            child = memo[labelvalues] = super().labels(*labelvalues)  # type: ignore[misc]
        return child  # type: ignore[no-any-return]


class Counter(_MemoLabels, prometheus_client.Counter):
    """A Counter whose label children are memoized."""


class Gauge(_MemoLabels, prometheus_client.Gauge):
    """A Gauge whose label children are memoized."""


class Histogram(_MemoLabels, prometheus_client.Histogram):
    """A Histogram whose label children are memoized."""


class SidecarMetrics:
    """The sidecar's metrics in their own registry (one per process, several in tests)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "clawdbot_sidecar_requests",
            "Requests answered, by API endpoint, final target and HTTP status code.",
            ["endpoint", "target", "code"],
            registry=r,
        )
        self.decisions = Counter(
            "clawdbot_sidecar_decisions",
            "Routing decisions by target and reason (rule:<name>, adaptive:<algo>, guards).",
            ["target", "reason"],
            registry=r,
        )
        self.fallbacks = Counter(
            "clawdbot_sidecar_fallbacks",
            "Requests answered by the other target after the first one failed.",
            ["source", "destination"],
            registry=r,
        )
        self.latency = Histogram(
            "clawdbot_sidecar_request_duration_seconds",
            "Time from request to the last byte of the answer, by target.",
            ["target"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.tokens = Counter(
            "clawdbot_sidecar_tokens",
            "Tokens by target and kind (prompt, completion), as the upstream reported them.",
            ["target", "kind"],
            registry=r,
        )
        self.cache = Counter(
            "clawdbot_sidecar_cache_requests",
            "Cache lookups by result (hit, miss, error).",
            ["result"],
            registry=r,
        )
        self.redactions = Counter(
            "clawdbot_sidecar_redactions",
            "Sensitive values removed from cloud-bound requests, by entity.",
            ["entity"],
            registry=r,
        )
        self.cloud_spend = Counter(
            "clawdbot_sidecar_cloud_spend_usd",
            "Estimated cloud spend in USD from the endpoint's pricing.",
            registry=r,
        )
        self.in_flight = Gauge(
            "clawdbot_sidecar_in_flight_requests",
            "Requests in progress in this sidecar.",
            registry=r,
        )
        self.rejected = Counter(
            "clawdbot_sidecar_rejected_requests",
            "Requests refused before routing (overload, body too large, invalid).",
            ["reason"],
            registry=r,
        )
        self.local_endpoints = Gauge(
            "clawdbot_sidecar_local_endpoints",
            "Local endpoints known to the sidecar, by state (healthy, ejected).",
            ["state"],
            registry=r,
        )
        self.redaction_native = Gauge(
            "clawdbot_sidecar_redaction_fast_tier_native",
            "1 when the redaction fast tier runs its native scanner, 0 on the pure-Python path.",
            registry=r,
        )
        self.redaction_native.set(1 if scanner_type() is not None else 0)
        self.feedback = Counter(
            "clawdbot_sidecar_feedback",
            "Feedback on answers by source (explicit, reask), result (recorded, unknown, "
            "duplicate) and the target that gave the scored answer.",
            ["source", "result", "target"],
            registry=r,
        )
        self.feedback_score = Histogram(
            "clawdbot_sidecar_feedback_score",
            "Scores (0 bad to 1 good) of recorded feedback, by the target that answered.",
            ["target"],
            buckets=(0.1, 0.25, 0.5, 0.75, 0.9, 1.0),
            registry=r,
        )
        self.cascade = Counter(
            "clawdbot_sidecar_cascade",
            "Cascade decisions by outcome: kept (local confident enough), escalated (the "
            "cloud answered instead), and the reasons an unsure local answer stayed.",
            ["outcome"],
            registry=r,
        )
        self.confidence = Histogram(
            "clawdbot_sidecar_local_confidence",
            "Confidence of local answers (geometric mean token probability), when measured.",
            buckets=(0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0),
            registry=r,
        )
        self.cloud_circuit_open = Gauge(
            "clawdbot_sidecar_cloud_circuit_open",
            "1 while the circuit breaker keeps requests away from the cloud.",
            registry=r,
        )
