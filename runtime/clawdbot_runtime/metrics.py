"""Prometheus metrics of one server, on its own registry (no process-global state)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

# Latency buckets from sub-millisecond (tiny CPU models) to tens of seconds (long generations).
_LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1,
    2.5,
    5,
    10,
    30,
)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
_TOKENS_PER_S_BUCKETS = (1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000)

# Label for requests naming a model the server does not have: request text must not become
# a label value, or a caller could blow up the series count.
UNKNOWN_MODEL = "_unknown"


class RuntimeMetrics:
    """The server's counters, gauges and histograms."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "clawdbot_runtime_requests",
            "Inference requests by model, protocol front and outcome (HTTP-style code).",
            ["model", "protocol", "code"],
            registry=r,
        )
        self.request_latency = Histogram(
            "clawdbot_runtime_request_duration_seconds",
            "Time from request decoded to response ready, queueing included.",
            ["model", "protocol"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.queue_depth = Gauge(
            "clawdbot_runtime_queue_depth",
            "Requests waiting for a batch slot.",
            ["model"],
            registry=r,
        )
        self.batch_size = Histogram(
            "clawdbot_runtime_batch_size",
            "Rows per onnxruntime run after dynamic batching.",
            ["model"],
            buckets=_BATCH_BUCKETS,
            registry=r,
        )
        self.requests_per_batch = Histogram(
            "clawdbot_runtime_requests_per_batch",
            "Requests merged into one onnxruntime run.",
            ["model"],
            buckets=_BATCH_BUCKETS,
            registry=r,
        )
        self.compute_latency = Histogram(
            "clawdbot_runtime_compute_duration_seconds",
            "Time inside onnxruntime per run.",
            ["model"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.model_ready = Gauge(
            "clawdbot_runtime_model_ready",
            "1 while the served version is loaded and warmed up.",
            ["model", "version"],
            registry=r,
        )
        self.load_failures = Counter(
            "clawdbot_runtime_model_load_failures",
            "Model versions that failed to load or warm up.",
            ["model"],
            registry=r,
        )
        self.generated_tokens = Counter(
            "clawdbot_runtime_generated_tokens",
            "Tokens generated on the /v1 routes.",
            ["model"],
            registry=r,
        )
        self.prompt_tokens = Counter(
            "clawdbot_runtime_prompt_tokens",
            "Prompt tokens consumed on the /v1 routes.",
            ["model"],
            registry=r,
        )
        self.tokens_per_second = Histogram(
            "clawdbot_runtime_generation_tokens_per_second",
            "Generation speed per request.",
            ["model"],
            buckets=_TOKENS_PER_S_BUCKETS,
            registry=r,
        )
        self.time_to_first_token = Histogram(
            "clawdbot_runtime_time_to_first_token_seconds",
            "Time from a generation's start to its first sampled token (prefill included).",
            ["model"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.in_flight = Gauge(
            "clawdbot_runtime_in_flight_requests", "Requests being served.", registry=r
        )

    def exposition(self) -> bytes:
        """The text exposition format for ``GET /metrics``."""
        return generate_latest(self.registry)
