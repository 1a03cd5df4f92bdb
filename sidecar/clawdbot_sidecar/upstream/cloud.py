"""One call to the cloud endpoint: redacted on the way out, restored on the way back.

Retries (connection errors, timeouts, 429, 5xx) with jittered backoff, honouring the
endpoint's Retry-After, all within one deadline; a circuit breaker that stops calling an
endpoint that keeps failing; moving averages of latency and errors for the router.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, ClassVar

from clawdbot_api.openai_wire import usage_of
from clawdbot_api.v1alpha1.routingpolicy import CloudEndpoint, Redaction
from clawdbot_sidecar.accounting.ledger import Outcome
from clawdbot_sidecar.accounting.metrics import SidecarMetrics
from clawdbot_sidecar.errors import SensitiveDataBlocked
from clawdbot_sidecar.redaction import Redactor, Restorer, iter_request_texts
from clawdbot_sidecar.redaction.model_tier import ModelTierError, ModelTierRunner, merge_findings
from clawdbot_sidecar.redaction.native import restore_document
from clawdbot_sidecar.upstream.breaker import CircuitBreaker
from clawdbot_sidecar.upstream.client import Upstream, UpstreamError, backoff_delay
from clawdbot_sidecar.upstream.form import encode_form
from clawdbot_sidecar.upstream.local import Reply, with_stream_usage
from clawdbot_sidecar.upstream.native import native_relay, record_usage
from clawdbot_sidecar.upstream.pool import NoEndpoint
from clawdbot_sidecar.upstream.stream import relay

__all__ = ["CLOUD_EWMA_ALPHA", "CloudCall", "CloudTarget", "Wire"]

# Weight of the newest sample in the cloud latency / error-rate moving averages.
CLOUD_EWMA_ALPHA = 0.1


@dataclass(frozen=True, slots=True)
class CloudCall:
    """What one cloud call needs from the configuration in force."""

    endpoint: CloudEndpoint
    redaction: Redaction
    redactor: Redactor
    api_key: str | None
    connect_timeout_s: float
    model_tier: ModelTierRunner | None = None
    """The model tier to run on the cloud-bound texts, if the policy enables it."""
    model_tier_error: str | None = None
    """Why the enabled model tier can't run (then nothing is sent)."""


class Encoding(StrEnum):
    CHAT = "chat"
    """OpenAI JSON (chat, completions, embeddings), answers in chat completions' shape."""
    AUDIO = "audio"
    """A multipart form; a JSON answer (a transcription)."""
    NATIVE = "native"
    """The request's own API (Responses, Messages): JSON, answers in that API's shape."""


@dataclass(frozen=True, slots=True)
class Wire:
    """How a request is sent to the cloud and its answer read back."""

    encoding: Encoding
    path: str | None = None
    """Below the base URL; None: the request's endpoint."""
    headers: Mapping[str, str] = field(default_factory=dict)
    """Headers of the API (``anthropic-version``)."""
    key_header: str = "Authorization"
    """Where the API key goes: ``Authorization: Bearer``, or Anthropic's ``x-api-key``."""

    CHAT: ClassVar[Wire]
    AUDIO: ClassVar[Wire]

    @classmethod
    def native(cls, path: str, headers: Mapping[str, str]) -> Wire:
        """The wire of a request in its own API at ``path`` (``responses``, ``messages``)."""
        key_header = "x-api-key" if path == "messages" else "Authorization"
        return cls(Encoding.NATIVE, path, dict(headers), key_header)

    def auth(self, api_key: str | None) -> dict[str, str]:
        """The request's headers: the API's and the key."""
        out = dict(self.headers)
        if api_key:
            if self.key_header == "Authorization":
                out["Authorization"] = f"Bearer {api_key}"
            else:
                out[self.key_header] = api_key
        return out


Wire.CHAT = Wire(Encoding.CHAT)
Wire.AUDIO = Wire(Encoding.AUDIO)


def _json_mode(body: Mapping[str, Any]) -> bool:
    """Whether the request asks for a JSON document as the answer's text."""
    fmt = body.get("response_format")
    return isinstance(fmt, Mapping) and fmt.get("type") in ("json_object", "json_schema")


class CloudTarget:
    """The cloud endpoint's client state: breaker and health estimates."""

    def __init__(self, client: Upstream, metrics: SidecarMetrics) -> None:
        self.client = client
        self.metrics = metrics
        self.breaker = CircuitBreaker()
        self.latency_s = 0.0
        self.error_rate = 0.0

    async def call(
        self, body: Mapping[str, Any], call: CloudCall, out: Outcome, wire: Wire = Wire.CHAT
    ) -> Reply:
        """Answer from the cloud; raises NoEndpoint, UpstreamError or SensitiveDataBlocked.

        ``wire``: how the body is sent (chat JSON by default; an audio form; a request in
        its own API, whose answer comes back in that API's shape)."""
        cloud = call.endpoint
        if call.redaction.enabled and (call.model_tier is not None or call.model_tier_error):
            await self._model_findings(body, call, out)
        result = call.redactor.redact_request(body, memo=out.findings)
        if result.is_blocked:
            raise SensitiveDataBlocked(
                "the request holds sensitive data the policy blocks from the cloud "
                f"({', '.join(sorted(result.blocked))}), and no local model can answer it"
            )
        out.redacted = dict(result.counts)
        for entity, n in result.counts.items():
            self.metrics.redactions.labels(entity).inc(n)
        restorer = None
        if result.counts and call.redaction.restore_in_responses and len(result.mapping):
            restorer = Restorer(result.mapping, json_content=_json_mode(body))
        request = dict(result.request)
        if out.endpoint == "embeddings":
            if cloud.embedding_model is None:  # decide() keeps them away; never the chat model
                raise NoEndpoint("the cloud has no embedding model")
            request["model"] = cloud.embedding_model
        elif wire.encoding == Encoding.AUDIO:
            if cloud.audio_model is None:  # never the chat model
                raise NoEndpoint("the cloud has no audio model (spec.cloud.audioModel)")
            request["model"] = cloud.audio_model
        else:
            request["model"] = cloud.model
        if wire.encoding == Encoding.CHAT:
            request = with_stream_usage(request)
        wants_usage = "stream_options" in body
        return await self._attempts(
            request, call, out, restorer, wants_usage=wants_usage, wire=wire
        )

    @staticmethod
    async def _model_findings(body: Mapping[str, Any], call: CloudCall, out: Outcome) -> None:
        """Add the model tier's findings to the fast tier's (``out.findings``) for every
        cloud-bound text; the request is blocked when the tier can't run (fail closed)."""
        runner = call.model_tier
        if runner is None:
            raise SensitiveDataBlocked(
                f"the policy's model tier can't run ({call.model_tier_error}); nothing "
                "leaves for the cloud until it can",
                reason="model-tier-unavailable",
            )
        texts = list(dict.fromkeys(t for t in iter_request_texts(body) if t.strip()))
        if not texts:
            return
        loop = asyncio.get_running_loop()
        try:
            found = await loop.run_in_executor(runner.executor, runner.tier.find, texts)
        except (ModelTierError, RuntimeError) as exc:  # RuntimeError: its worker is shut down
            raise SensitiveDataBlocked(
                f"the policy's model tier failed on this request ({exc}); it is not sent",
                reason="model-tier-failed",
            ) from exc
        active = call.redactor.active
        for text, spans in zip(texts, found, strict=True):
            extra = [s for s in spans if s.entity in active]
            if extra:
                fast = call.redactor.inspect(text, out.findings)
                out.findings[text] = merge_findings(fast, extra)

    async def _attempts(
        self,
        request: dict[str, Any],
        call: CloudCall,
        out: Outcome,
        restorer: Restorer | None,
        *,
        wants_usage: bool,
        wire: Wire,
    ) -> Reply:
        cloud = call.endpoint
        url = f"{cloud.base_url.rstrip('/')}/{wire.path or out.endpoint}"
        headers = wire.auth(call.api_key)
        # One deadline for every attempt and the waits between them: what the app waits
        # for the cloud is bounded whatever maxRetries says.
        budget_s = cloud.deadline_seconds or cloud.timeout_seconds
        deadline = time.monotonic() + budget_s
        attempt = 0
        while True:
            if not self.breaker.allow():
                raise UpstreamError("connect", "the cloud circuit breaker is open")
            started = time.monotonic()
            timeout_s = min(cloud.timeout_seconds, deadline - started)
            try:
                if out.stream:
                    handle = await self.client.open_stream(
                        url, request, headers, timeout_s, call.connect_timeout_s
                    )
                    if wire.encoding == Encoding.NATIVE:
                        return Reply(chunks=native_relay(handle, restorer, out), native=True)
                    return Reply(chunks=relay(handle, restorer, out, wants_usage=wants_usage))
                if wire.encoding == Encoding.AUDIO:
                    answer = await self.client.post_form(
                        url, encode_form(request), headers, timeout_s, call.connect_timeout_s
                    )
                else:
                    answer = await self.client.post_json(
                        url, request, headers, timeout_s, call.connect_timeout_s
                    )
            except UpstreamError as exc:
                # The cloud's fault (unreachable, slow, 5xx, 429) counts against its health;
                # a 4xx refusal of this request does not.
                self.observe(time.monotonic() - started, ok=not exc.server_side)
                if not exc.retryable or attempt >= cloud.max_retries:
                    raise
                attempt += 1
                delay = backoff_delay(attempt)
                if exc.retry_after_s is not None:  # the endpoint said when: not sooner
                    delay = max(delay, exc.retry_after_s)
                if time.monotonic() + delay >= deadline:
                    raise UpstreamError(
                        exc.kind,
                        f"{exc}; no time left for a retry within the {budget_s:g}s deadline",
                        status=exc.status,
                        body=exc.body,
                    ) from exc
                await asyncio.sleep(delay)
                continue
            self.observe(time.monotonic() - started, ok=True)
            return self._answered(answer, out, restorer, wire)

    @staticmethod
    def _answered(
        answer: dict[str, Any], out: Outcome, restorer: Restorer | None, wire: Wire
    ) -> Reply:
        if wire.encoding == Encoding.CHAT:
            out.prompt_tokens, out.completion_tokens = usage_of(answer)
        else:
            record_usage(answer, out)
        if restorer is not None:
            if wire.encoding == Encoding.CHAT:
                answer = restorer.restore_response(answer)
            else:  # a Response, a Message or a transcription: every string of it
                answer = restore_document(restorer, answer)
            out.restored_pii = True
        return Reply(body=answer, native=wire.encoding == Encoding.NATIVE)

    def observe(self, elapsed: float, ok: bool) -> None:
        """Feed one attempt's outcome to the breaker and the moving averages."""
        self.breaker.record(ok)
        a = CLOUD_EWMA_ALPHA
        if ok:  # a failure's time says nothing about how fast the cloud answers
            self.latency_s = (1 - a) * self.latency_s + a * elapsed
        self.error_rate = (1 - a) * self.error_rate + a * (0.0 if ok else 1.0)
