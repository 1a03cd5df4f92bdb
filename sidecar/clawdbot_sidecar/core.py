"""The routing core: one request in, one answer out, whatever protocol carried it.

    validate -> features -> cache -> decide -> (redact) -> call, with fallback
             -> (restore) -> account (bandit, budgets, breaker, metrics, audit) -> answer

The HTTP and gRPC fronts are thin adapters around :meth:`RoutingCore.handle`. The core never
logs prompt text, answers or redacted values; the audit record holds counts and reasons.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import random
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, NoReturn, cast

from clawdbot_api.v1alpha1.routingpolicy import Pricing
from clawdbot_api.v1alpha1.routingpolicy import RedactionMode as ApiRedactionMode
from clawdbot_sidecar.audit import AuditLog, AuditRecord
from clawdbot_sidecar.cache import CachedResponse, ResponseCache, build_cache, cache_key, cacheable
from clawdbot_sidecar.cloud import BreakerState, BudgetTracker, CircuitBreaker
from clawdbot_sidecar.config import SidecarConfig
from clawdbot_sidecar.decision import Arm, Bandit, Decision, Signals, decide, reward
from clawdbot_sidecar.features import Features, complexity, estimate_tokens, prompt_parts
from clawdbot_sidecar.metrics import SidecarMetrics
from clawdbot_sidecar.plugins import AfterResponse, BeforeRoute, PluginRequest, PluginResult
from clawdbot_sidecar.pool import EndpointState, LocalPool, NoEndpoint
from clawdbot_sidecar.redaction import (
    BUILTIN_ENTITIES,
    FindingsMemo,
    RedactionConfig,
    Redactor,
    Restorer,
)
from clawdbot_sidecar.upstream import StreamHandle, Upstream, UpstreamError, backoff_delay

log = logging.getLogger("clawdbot.sidecar")

# Local attempts on connection failure: the first endpoint and up to this many others.
LOCAL_CONNECT_RETRIES = 2
# Completion tokens assumed for price estimates when the request sets no max_tokens.
DEFAULT_COMPLETION_TOKENS = 256
# Weight of the newest sample in the cloud latency / error-rate moving averages.
CLOUD_EWMA_ALPHA = 0.1
# Headers through which the app can see the decision.
TARGET_HEADER = "x-clawdbot-target"
REASON_HEADER = "x-clawdbot-reason"
REQUEST_ID_HEADER = "x-request-id"


class ApiKind(StrEnum):
    """The OpenAI endpoints the core routes; the value is the path below /v1."""

    CHAT = "chat/completions"
    COMPLETIONS = "completions"
    EMBEDDINGS = "embeddings"


class RequestError(Exception):
    """A request the core refuses or can't answer, in OpenAI's error vocabulary."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type_: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        reason: str = "",
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type_
        self.param = param
        self.code = code
        self.reason = reason

    def body(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }


@dataclass
class Answer:
    """What the front sends back: a JSON body or an SSE byte stream, plus decision headers."""

    status: int
    headers: dict[str, str]
    body: dict[str, Any] | None = None
    stream: AsyncIterator[bytes] | None = None


@dataclass
class _Outcome:
    """Accounting for one request, filled in as it goes and written once at the end."""

    request_id: str
    kind: ApiKind
    model: str
    started: float
    stream: bool
    decision: Decision | None = None
    target: str = ""
    fallback_from: str | None = None
    status: int = 200
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    redacted: dict[str, int] = field(default_factory=dict)
    cache: str = "off"
    restored_pii: bool = False
    pii: dict[str, int] = field(default_factory=dict)
    plugin_request: PluginRequest | None = None
    endpoint: EndpointState | None = None
    error: str | None = None
    # Detection results per prompt text: the routing scan fills it, redaction reuses it.
    findings: FindingsMemo = field(default_factory=dict)


def _validate(kind: ApiKind, body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise RequestError(400, "the request body must be a JSON object")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise RequestError(400, "you must provide a model parameter", param="model")
    if kind == ApiKind.CHAT:
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise RequestError(
                400, "messages must be a non-empty array of messages", param="messages"
            )
        for i, msg in enumerate(messages):
            if not isinstance(msg, dict) or not isinstance(msg.get("role"), str):
                raise RequestError(
                    400, f"messages[{i}] must be an object with a role", param=f"messages[{i}]"
                )
    elif kind == ApiKind.COMPLETIONS:
        if not isinstance(body.get("prompt"), str | list):
            raise RequestError(400, "prompt must be a string or an array", param="prompt")
    elif not isinstance(body.get("input"), str | list):
        raise RequestError(400, "input must be a string or an array", param="input")
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise RequestError(400, "stream must be a boolean", param="stream")
    if stream and kind == ApiKind.EMBEDDINGS:
        raise RequestError(400, "embeddings can't be streamed", param="stream")
    return body


# Reject reasons answered at once, before the cache: the policy refuses the request itself.
_REFUSALS = ("rule:", "default", "embeddings:no-cloud-model", "redaction-block:")


def _usage(body: Mapping[str, Any]) -> tuple[int, int]:
    usage = body.get("usage")
    if not isinstance(usage, dict):
        return 0, 0
    prompt = usage.get("prompt_tokens")
    completion = usage.get("completion_tokens")
    return (
        prompt if isinstance(prompt, int) else 0,
        completion if isinstance(completion, int) else 0,
    )


def _sse(event: Mapping[str, Any]) -> bytes:
    return b"data: " + json.dumps(event, separators=(",", ":")).encode() + b"\n\n"


class RoutingCore:
    """Routes OpenAI requests between the local pool and the cloud per a RoutingPolicy."""

    def __init__(
        self,
        config: SidecarConfig,
        upstream: Upstream,
        *,
        metrics: SidecarMetrics | None = None,
        audit_hmac_key: bytes | None = None,
        cache_scope: str = "standalone",
        plugins: Sequence[object] = (),
        seed: int | None = None,
    ) -> None:
        """``audit_hmac_key`` keys the audit hash chain (the policy's hmacKeySecretRef);
        ``cache_scope`` (the namespace) and the policy name prefix shared cache keys."""
        self.upstream = upstream
        self.metrics = metrics or SidecarMetrics()
        self.audit: AuditLog | None = None
        self._before = [p for p in plugins if isinstance(p, BeforeRoute)]
        self._after = [p for p in plugins if isinstance(p, AfterResponse)]
        self._audit_key = audit_hmac_key
        self.cache: ResponseCache | None = None
        self._cache_scope = cache_scope
        self.pool = LocalPool(config.endpoints, seed=seed)
        self.breaker = CircuitBreaker()
        # Gauges read at scrape time: nothing to keep in step on the request path.
        gauges = self.metrics.local_endpoints
        gauges.labels("healthy").set_function(self.pool.healthy_count)
        gauges.labels("ejected").set_function(
            lambda: len(self.pool.states) - self.pool.healthy_count()
        )
        self.metrics.cloud_circuit_open.set_function(
            lambda: float(self.breaker.state == BreakerState.OPEN)
        )
        self.metrics.in_flight.set_function(lambda: self.in_flight)
        self._seed = seed
        # Request ids: 128 random bits, like a uuid4's hex, without a system call for each.
        self._ids = random.Random()
        self.in_flight = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        # Set while no request is in progress; graceful shutdown waits on it.
        self.idle = asyncio.Event()
        self.idle.set()
        self.cloud_latency_s = 0.0
        self.cloud_error_rate = 0.0
        self.apply(config)

    # -- configuration ------------------------------------------------------------------

    def apply(self, config: SidecarConfig) -> None:
        """Take a new policy and endpoint set (from a file reload or the operator)."""
        old = getattr(self, "config", None)
        self.config = config
        policy = config.policy
        self.pool.update(config.endpoints)
        self.redactor = Redactor(RedactionConfig.from_api(policy.redaction))
        self._rules_check_pii = any(r.match.contains_pii is not None for r in policy.rules)
        self._pii_entities = (*BUILTIN_ENTITIES, *(c.name for c in policy.redaction.custom))
        if old is None or old.policy.adaptive != policy.adaptive:
            self.bandit = Bandit(policy.adaptive, seed=self._seed)
        cloud = policy.cloud
        audit_key = config.audit_hmac_key or self._audit_key
        old_key = old and (old.audit_hmac_key or self._audit_key)
        if old is None or old.policy.audit != policy.audit or old_key != audit_key:
            # Records after a key change are sealed with the new key: verify each part of
            # the log with the key that was in force (clawdbot audit verify --hmac-key-file).
            previous = self.audit
            self.audit = (
                AuditLog.from_api(policy.audit, hmac_key=audit_key)
                if policy.audit.enabled
                else None
            )
            if previous is not None:
                previous.close()
        cache_settings = (policy.cache, config.policy_name, config.cache_redis_password)
        if old is None or (old.policy.cache, old.policy_name, old.cache_redis_password) != (
            cache_settings
        ):
            self._replace_cache(
                build_cache(
                    policy.cache,
                    key_prefix=self._cache_prefix(),
                    redis_password=config.cache_redis_password,
                )
            )
        if old is None or old.policy.budgets != policy.budgets or old.policy.cloud != cloud:
            self.budgets = BudgetTracker(policy.budgets, cloud.pricing if cloud else Pricing())

    def _cache_prefix(self) -> str:
        # Pods of one policy share answers (through Redis); different policies never do.
        return f"clawdbot:cache:{self._cache_scope}/{self.config.policy_name or 'default'}:"

    def _replace_cache(self, cache: ResponseCache | None) -> None:
        old, self.cache = self.cache, cache
        if old is not None:
            with contextlib.suppress(RuntimeError):  # no loop yet: nothing was opened
                asyncio.get_running_loop().create_task(old.close())

    async def close(self) -> None:
        """Release the cache's connections and flush the audit log."""
        old, self.cache = self.cache, None
        if old is not None:
            await old.close()
        if self.audit is not None:
            await self.audit.aclose()

    def models(self) -> dict[str, str]:
        """Model name -> "local" or "cloud": what the sidecar can route to (/v1/models)."""
        names = {s.endpoint.model: "local" for s in self.pool.states}
        cloud = self.config.policy.cloud
        if cloud is not None:
            names.setdefault(cloud.model, "cloud")
            if cloud.embedding_model is not None:
                names.setdefault(cloud.embedding_model, "cloud")
        return dict(sorted(names.items()))

    # -- the request path ---------------------------------------------------------------

    async def handle(self, kind: ApiKind, raw: Any, headers: Mapping[str, str]) -> Answer:
        """Answer one request. Raises RequestError for refusals the front turns into errors."""
        limit = self.config.limits.max_concurrency
        if self.in_flight >= limit:
            self.metrics.rejected.labels("overloaded").inc()
            raise RequestError(
                429,
                f"the sidecar is at its limit of {limit} requests in progress; retry shortly",
                type_="rate_limit_error",
                code="overloaded",
            )
        self.in_flight += 1
        self.idle.clear()
        lowered = {k.lower(): v for k, v in headers.items()}
        out = _Outcome(
            request_id=lowered.get(REQUEST_ID_HEADER) or f"{self._ids.getrandbits(128):032x}",
            kind=kind,
            model="",
            started=time.monotonic(),
            stream=False,
        )
        streaming = False
        try:
            body = _validate(kind, raw)
            out.model, out.stream = body["model"], bool(body.get("stream"))
            route_headers = lowered
            if self._before or self._after:
                out.plugin_request = PluginRequest(
                    out.request_id, kind.value, out.model, body, lowered
                )
                for plugin in self._before:
                    await self._run_before(plugin, out.plugin_request)
                route_headers = out.plugin_request.headers
            answer = await self._route(body, route_headers, out)
            streaming = answer.stream is not None
            if answer.stream is not None:
                answer.stream = self._finish_stream(answer.stream, out)
            return answer
        except RequestError as exc:
            out.status, out.error = exc.status, exc.reason or exc.type
            if exc.status == 400:
                self.metrics.rejected.labels("invalid").inc()
            raise
        except Exception:
            out.status, out.error = 500, "internal-error"  # what the front answers
            raise
        finally:
            if not streaming:
                # Accounted once the front has written the answer (it does so before this
                # task yields again): metrics, budgets, the bandit and the audit are not on
                # the app's wait.
                loop = self._loop
                if loop is None:  # one loop for the core's life; a lookup costs a getpid
                    loop = self._loop = asyncio.get_running_loop()
                loop.call_soon(self._done, out)

    async def _route(self, body: dict[str, Any], headers: dict[str, str], out: _Outcome) -> Answer:
        policy = self.config.policy
        parts, turns = prompt_parts(body)
        text = "\n".join(parts)
        # Redaction off or narrower than the rules: rules still see every entity. The
        # findings are kept for the redaction of a cloud-bound copy (one detection pass).
        also = self._pii_entities if self._rules_check_pii else ()
        pii = self.redactor.scan_parts(parts, out.findings, also) if text else {}
        out.pii = pii
        features = Features(
            model=out.model,
            tokens=estimate_tokens(text),
            complexity=complexity(text, turns),
            pii=pii,
            headers=headers,
            stream=out.stream,
        )

        signals = self._signals(features, body)
        blocked = {e: n for e, n in pii.items() if self._mode(e) == ApiRedactionMode.BLOCK}
        embeddings = out.kind == ApiKind.EMBEDDINGS
        decision = decide(policy, features, signals, self.bandit, blocked, embeddings=embeddings)
        if decision.target == "reject" and decision.reason.startswith(_REFUSALS):
            self._reject(decision, out)  # the policy says no: not even a cached answer

        # After the rules, so a request a rule now refuses is refused; before the guards'
        # verdict, so a cached answer still serves when no target can answer right now.
        key = None
        if self.cache is not None and not out.stream:
            key = cache_key(body)  # of the original request: answers are stored restored
            hit = await self._cache_get(key)
            if hit is not None and embeddings and hit.source != decision.target:
                hit = None  # a vector of the other side's model (the policy changed since)
            if hit is not None:
                out.cache, out.target = "hit", "cache"
                out.decision = Decision("local", f"cache-hit:{hit.source}")
                self.metrics.decisions.labels("cache", "cache-hit").inc()
                return Answer(200, self._headers(out), body=hit.body)
            out.cache = "miss"
        if decision.target == "reject":
            self._reject(decision, out)
        out.decision = decision
        self.metrics.decisions.labels(decision.target, decision.reason).inc()

        order = [decision.target]
        if embeddings:
            pass  # the other side's model gives vectors the app can't compare: no fallback
        elif decision.target == "local" and policy.fallback.local_to_cloud and not blocked:
            order.append("cloud")
        elif decision.target == "cloud" and policy.fallback.cloud_to_local:
            order.append("local")

        last: UpstreamError | NoEndpoint | RequestError | None = None
        for i, target in enumerate(order):
            if i > 0:
                # available(), not allow(): the call itself takes a half-open breaker's probe.
                if target == "cloud" and not (policy.cloud and self.breaker.available()):
                    break
                out.fallback_from = order[0]
            try:
                answer = await self._call(target, body, out)
            except (UpstreamError, NoEndpoint) as exc:
                last = exc
                continue
            except RequestError as exc:  # e.g. the cloud copy would carry a blocked entity
                last = exc
                continue
            if out.fallback_from:
                self.metrics.fallbacks.labels(out.fallback_from, target).inc()
            if key is not None and answer.body is not None:
                await self._cache_put(key, answer.body, out)
            return answer
        raise self._failure(last, out)

    def _reject(self, decision: Decision, out: _Outcome) -> NoReturn:
        out.decision = decision
        reason = decision.reason
        self.metrics.decisions.labels(decision.target, reason).inc()
        if reason.startswith(("rule:", "default")):
            raise RequestError(
                403,
                f"the routing policy refused this request ({reason})",
                type_="policy_error",
                code="rejected",
                reason=reason,
            )
        if reason == "embeddings:no-cloud-model":
            raise RequestError(
                400,
                "the routing policy sends these embeddings to the cloud, which has no "
                "embedding model (spec.cloud.embeddingModel); embeddings are not answered by "
                "another model, whose vectors would not be comparable. Set "
                "spec.cloud.embeddingModel or route embeddings to a local model",
                code="embeddings_not_routable",
                reason=reason,
            )
        if reason.startswith("redaction-block:"):  # embeddings, which never switch sides
            raise RequestError(
                400,
                "the request holds sensitive data the policy blocks from the cloud "
                f"({reason.partition(':')[2]}), and its embeddings are not computed by the "
                "local model instead (its vectors would not be comparable)",
                code="sensitive_data_blocked",
                reason=reason,
            )
        raise RequestError(
            503,
            f"no target can answer this request now ({decision.reason}); retry later",
            type_="service_unavailable",
            code="unavailable",
            reason=decision.reason,
        )

    def _failure(
        self, exc: UpstreamError | NoEndpoint | RequestError | None, out: _Outcome
    ) -> RequestError:
        if isinstance(exc, RequestError):
            return exc
        status = exc.status if isinstance(exc, UpstreamError) else None
        if status is not None and 400 <= status < 500 and status != 429:
            # The upstream refused the request itself: pass its verdict through.
            return RequestError(
                status, str(exc), type_="invalid_request_error", reason="upstream-4xx"
            )
        what = str(exc) if exc else "no target available"
        return RequestError(
            502 if isinstance(exc, UpstreamError) else 503,
            f"no upstream could answer ({out.target or 'none'}: {what}); retry later",
            type_="upstream_error",
            code="upstream_unavailable",
            reason="upstream-failed",
        )

    def _mode(self, entity: str) -> ApiRedactionMode:
        redaction = self.config.policy.redaction
        return redaction.per_entity_mode.get(entity, redaction.mode)

    def _signals(self, f: Features, body: Mapping[str, Any]) -> Signals:
        cloud = self.config.policy.cloud
        max_tokens = body.get("max_tokens") or body.get("max_completion_tokens")
        completion = max_tokens if isinstance(max_tokens, int) else DEFAULT_COMPLETION_TOKENS
        exhausted = self.budgets.exhausted(f.tokens + completion) if cloud else None
        states = [s for s in self.pool.states if s.healthy(time.monotonic())]
        least = min(states, key=lambda s: s.in_flight) if states else None
        return Signals(
            local_healthy=len(states),
            local_queue=least.in_flight if least else 0,
            local_latency_s=least.latency_ewma_s if least else 0.0,
            cloud_configured=cloud is not None,
            cloud_allowed=cloud is not None and self.breaker.available(),
            cloud_latency_s=self.cloud_latency_s,
            cloud_error_rate=self.cloud_error_rate,
            cloud_price_usd=self.budgets.cost_usd(f.tokens, completion) if cloud else 0.0,
            budget_exhausted=exhausted,
        )

    # -- calling the targets ------------------------------------------------------------

    async def _call(self, target: str, body: dict[str, Any], out: _Outcome) -> Answer:
        out.target = target
        if target == "local":
            return await self._call_local(body, out)
        return await self._call_cloud(body, out)

    def _stream_body(self, body: dict[str, Any]) -> dict[str, Any]:
        """Ask for usage in the final chunk, so streamed answers are accounted too."""
        if not body.get("stream") or "stream_options" in body:
            return body
        return {**body, "stream_options": {"include_usage": True}}

    async def _call_local(self, body: dict[str, Any], out: _Outcome) -> Answer:
        limits = self.config.limits
        tried: set[str] = set()
        for _ in range(1 + LOCAL_CONNECT_RETRIES):
            state = self.pool.pick(exclude=tried, model=out.model)
            tried.add(state.endpoint.url)
            url = f"{state.endpoint.url.rstrip('/')}/{out.kind.value}"
            request = self._stream_body({**body, "model": state.endpoint.model})
            started = self.pool.begin(state)
            try:
                if out.stream:
                    handle = await self.upstream.open_stream(
                        url, request, {}, limits.local_timeout_s, limits.local_connect_timeout_s
                    )
                    out.endpoint = state
                    relay = self._relay(
                        handle, None, out, body, functools.partial(self.pool.end, state, started)
                    )
                    return Answer(200, self._headers(out), stream=relay)
                result = await self.upstream.post_json(
                    url, request, {}, limits.local_timeout_s, limits.local_connect_timeout_s
                )
            except UpstreamError as exc:
                self.pool.end(state, started, ok=exc.kind == "status" and exc.status == 400)
                if exc.kind != "connect":
                    raise
                log.warning("local endpoint %s unreachable, trying another", state.endpoint.url)
                continue
            self.pool.end(state, started, ok=True)
            out.endpoint = state
            out.prompt_tokens, out.completion_tokens = _usage(result)
            return Answer(200, self._headers(out), body=result)
        raise NoEndpoint(f"no local endpoint accepted a connection (tried {len(tried)})")

    async def _call_cloud(self, body: dict[str, Any], out: _Outcome) -> Answer:
        cloud = self.config.policy.cloud
        if cloud is None:
            raise NoEndpoint("no cloud endpoint is configured")
        redaction = self.config.policy.redaction
        result = self.redactor.redact_request(body, memo=out.findings)
        if result.is_blocked:
            raise RequestError(
                400,
                "the request holds sensitive data the policy blocks from the cloud "
                f"({', '.join(sorted(result.blocked))}), and no local model can answer it",
                code="sensitive_data_blocked",
                reason="redaction-block",
            )
        out.redacted = dict(result.counts)
        for entity, n in result.counts.items():
            self.metrics.redactions.labels(entity).inc(n)
        restorer = None
        if result.counts and redaction.restore_in_responses and len(result.mapping):
            restorer = Restorer(result.mapping)
        request = dict(result.request)
        if out.kind == ApiKind.EMBEDDINGS:
            if cloud.embedding_model is None:  # decide() keeps them away; never the chat model
                raise NoEndpoint("the cloud has no embedding model")
            request["model"] = cloud.embedding_model
        else:
            request["model"] = cloud.model
        request = self._stream_body(request)
        url = f"{cloud.base_url.rstrip('/')}/{out.kind.value}"
        headers = {}
        if self.config.cloud_api_key:
            headers["Authorization"] = f"Bearer {self.config.cloud_api_key}"
        connect_s = self.config.limits.cloud_connect_timeout_s

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
                    handle = await self.upstream.open_stream(
                        url, request, headers, timeout_s, connect_s
                    )
                    return Answer(
                        200, self._headers(out), stream=self._relay(handle, restorer, out, body)
                    )
                answer = await self.upstream.post_json(url, request, headers, timeout_s, connect_s)
            except UpstreamError as exc:
                # The cloud's fault (unreachable, slow, 5xx, 429) counts against its health;
                # a 4xx refusal of this request does not.
                self._cloud_observe(time.monotonic() - started, ok=not exc.server_side)
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
            self._cloud_observe(time.monotonic() - started, ok=True)
            out.prompt_tokens, out.completion_tokens = _usage(answer)
            if restorer is not None:
                answer = restorer.restore_response(answer)
                out.restored_pii = True
            return Answer(200, self._headers(out), body=answer)

    def _cloud_observe(self, elapsed: float, ok: bool) -> None:
        self.breaker.record(ok)
        a = CLOUD_EWMA_ALPHA
        if ok:  # a failure's time says nothing about how fast the cloud answers
            self.cloud_latency_s = (1 - a) * self.cloud_latency_s + a * elapsed
        self.cloud_error_rate = (1 - a) * self.cloud_error_rate + a * (0.0 if ok else 1.0)

    async def _relay(
        self,
        handle: StreamHandle,
        restorer: Restorer | None,
        out: _Outcome,
        body: Mapping[str, Any],
        finish: Callable[[bool], None] | None = None,
    ) -> AsyncGenerator[bytes, None]:
        """Re-emit the upstream's SSE events, restored, hiding usage chunks not asked for.

        ``finish(ok)`` runs once when the stream ends (local endpoints count it as done).
        """
        wants_usage = "stream_options" in body
        chunks = restorer.chunks() if restorer is not None else None
        last: dict[str, Any] | None = None
        ok = False
        try:
            async for received in handle.events():
                prompt, completion = _usage(received)
                if prompt or completion:
                    out.prompt_tokens, out.completion_tokens = prompt, completion
                event = chunks.feed(received) if chunks is not None else received
                last = event
                if not event.get("choices") and "usage" in event and not wants_usage:
                    continue
                yield _sse(event)
            if chunks is not None:
                tail = chunks.flush(last)
                if tail is not None:
                    yield _sse(tail)
            ok = True
        except UpstreamError as exc:
            out.status, out.error = 502, exc.kind
            yield _sse(
                {"error": {"message": f"upstream stream broke: {exc}", "type": "upstream_error",
                           "param": None, "code": "stream_broken"}}
            )  # fmt: skip
        finally:
            handle.close()  # also when the app left: the upstream stops generating for it
            if finish is not None:
                finish(ok)
        yield b"data: [DONE]\n\n"

    async def _finish_stream(
        self, stream: AsyncIterator[bytes], out: _Outcome
    ) -> AsyncIterator[bytes]:
        try:
            async for chunk in stream:
                yield chunk
        except BaseException:
            out.status, out.error = 499, "client-closed"
            raise
        finally:
            self._done(out)
            # An app that left mid-stream: close the relay (and its upstream call) now.
            if isinstance(stream, AsyncGenerator):
                await stream.aclose()

    # -- caching ------------------------------------------------------------------------

    async def _cache_get(self, key: str) -> CachedResponse | None:
        assert self.cache is not None
        try:
            hit = await self.cache.get(key)
        except Exception:  # a cache outage is a miss, never a failed request
            log.warning("cache lookup failed; answering without the cache", exc_info=True)
            self.metrics.cache.labels("error").inc()
            return None
        self.metrics.cache.labels("hit" if hit is not None else "miss").inc()
        return hit

    async def _cache_put(self, key: str, value: dict[str, Any], out: _Outcome) -> None:
        assert self.cache is not None
        # A local answer to a prompt holding PII may repeat it, like a restored cloud answer.
        may_hold_pii = out.restored_pii or any(out.pii.values())
        if not cacheable(self.config.policy.cache, value, may_hold_pii=may_hold_pii):
            return
        try:
            await self.cache.set(key, CachedResponse(value, out.target, time.time()))
        except Exception:
            log.warning("cache store failed; the answer is not cached", exc_info=True)
            self.metrics.cache.labels("error").inc()

    # -- accounting ---------------------------------------------------------------------

    def _headers(self, out: _Outcome) -> dict[str, str]:
        headers = {REQUEST_ID_HEADER: out.request_id, TARGET_HEADER: out.target}
        if out.decision is not None:
            reason = out.decision.reason
            if out.fallback_from:
                reason = f"fallback:{out.fallback_from}-failed ({reason})"
            headers[REASON_HEADER] = reason
        return headers

    async def _run_before(self, plugin: BeforeRoute, request: PluginRequest) -> None:
        try:
            await plugin.before_route(request)
        except RequestError:
            raise  # the plugin refuses the request on purpose
        except Exception:
            log.exception("plugin %s failed before routing; ignored", type(plugin).__name__)

    def _run_after(self, out: _Outcome, target: str, elapsed: float) -> None:
        if out.plugin_request is None or not self._after:
            return
        result = PluginResult(
            target=target,
            reason=out.decision.reason if out.decision else (out.error or ""),
            status=out.status,
            latency_s=elapsed,
            prompt_tokens=out.prompt_tokens,
            completion_tokens=out.completion_tokens,
            cost_usd=out.cost_usd,
            redacted=dict(out.redacted),
        )
        for plugin in self._after:
            try:
                plugin.after_response(out.plugin_request, result)
            except Exception:
                log.exception("plugin %s failed after the answer; ignored", type(plugin).__name__)

    def _done(self, out: _Outcome) -> None:
        """Account a finished request: once, whether it succeeded, failed or was cut off."""
        self.in_flight -= 1
        if not self.in_flight:
            self.idle.set()
        elapsed = time.monotonic() - out.started
        m = self.metrics
        target = out.target or ("reject" if out.status >= 400 else "none")
        m.requests.labels(out.kind.value, target, str(out.status)).inc()
        m.latency.labels(target).observe(elapsed)
        if out.prompt_tokens or out.completion_tokens:
            m.tokens.labels(target, "prompt").inc(out.prompt_tokens)
            m.tokens.labels(target, "completion").inc(out.completion_tokens)
        if target == "cloud" and out.status < 400:
            out.cost_usd = self.budgets.record(out.prompt_tokens, out.completion_tokens)
            m.cloud_spend.inc(out.cost_usd)
        decision = out.decision
        if (
            decision is not None
            and decision.context is not None
            and out.fallback_from is None
            and target in ("local", "cloud")
        ):
            r = reward(out.status < 400, elapsed, out.cost_usd, self.config.policy.adaptive)
            self.bandit.update(cast(Arm, decision.target), decision.context, r)
        self._run_after(out, target, elapsed)
        if self.audit is not None:
            reason = decision.reason if decision else (out.error or "invalid")
            if out.fallback_from:
                reason = f"fallback:{out.fallback_from}-failed ({reason})"
            self.audit.append(
                AuditRecord(
                    request_id=out.request_id,
                    target=target,
                    reason=reason,
                    model=out.model,
                    prompt_tokens=out.prompt_tokens,
                    completion_tokens=out.completion_tokens,
                    latency_ms=elapsed * 1000,
                    redacted=out.redacted,
                    cache_hit=out.cache == "hit",
                    status=out.status,
                    fallback=out.fallback_from is not None,
                )
            )
