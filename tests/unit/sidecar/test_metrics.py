"""The sidecar's metrics: memoized label children expose exactly what prometheus_client does."""

from __future__ import annotations

from prometheus_client import generate_latest

from clawdbot_sidecar.accounting.metrics import SidecarMetrics


def test_label_children_are_reused_and_counted_as_usual() -> None:
    m = SidecarMetrics()
    child = m.requests.labels("chat/completions", "cloud", "200")
    assert m.requests.labels("chat/completions", "cloud", "200") is child
    child.inc()
    m.requests.labels("chat/completions", "cloud", "200").inc(2)
    m.requests.labels(endpoint="embeddings", target="local", code="200").inc()
    m.latency.labels("cloud").observe(0.02)
    m.redactions.labels("EMAIL").inc(3)
    text = generate_latest(m.registry).decode()
    assert (
        'clawdbot_sidecar_requests_total{code="200",endpoint="chat/completions",target="cloud"} 3.0'
        in text
    )
    assert (
        'clawdbot_sidecar_requests_total{code="200",endpoint="embeddings",target="local"} 1.0'
        in text
    )
    assert 'clawdbot_sidecar_request_duration_seconds_bucket{le="0.025",target="cloud"} 1.0' in text
    assert 'clawdbot_sidecar_redactions_total{entity="EMAIL"} 3.0' in text
