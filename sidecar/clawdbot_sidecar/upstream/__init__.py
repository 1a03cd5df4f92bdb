"""What the sidecar calls: the HTTP client, the local pool and the cloud, and their guards.

``client`` (one keep-alive HTTP/1.1 client for JSON answers and event streams), ``pool``
(local endpoints: least-loaded choice, outlier ejection), ``local`` and ``cloud`` (one call
to each kind of target: connect retries across replicas; redaction, retries within a
deadline, the circuit breaker and restoration for the cloud), ``breaker``.
"""

from clawdbot_sidecar.upstream.client import (
    StreamHandle,
    Upstream,
    UpstreamError,
    backoff_delay,
    retry_after,
)

__all__ = ["StreamHandle", "Upstream", "UpstreamError", "backoff_delay", "retry_after"]
