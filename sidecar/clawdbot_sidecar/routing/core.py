"""The routing core: one request in, one answer out, whatever protocol carried it.

    validate -> features -> decide -> cache -> (redact) -> call, with fallback
             -> (restore) -> account (bandit, budgets, breaker, metrics, audit) -> answer

The REST and gRPC fronts are thin adapters around :meth:`RoutingCore.handle`: they hand in
an :class:`~clawdbot_sidecar.routing.request.Inbound` and get an
:class:`~clawdbot_sidecar.routing.request.Answer` (a body or chunk dicts) or a
:class:`~clawdbot_sidecar.errors.RequestError`; only they encode. The calls themselves are
in :mod:`clawdbot_sidecar.upstream`, the accounting in :mod:`clawdbot_sidecar.accounting`.
The core never logs prompt text, answers or redacted values; the audit record holds counts
and reasons.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import hmac
import logging
import os
import random
import time
from array import array
from collections import Counter
from collections.abc import AsyncGenerator, AsyncIterator, Mapping, Sequence
from typing import Any, NoReturn

from clawdbot_api.v1alpha1.routingpolicy import (
    Cache,
    CloudApi,
    RedactionMode,
    UninspectableContent,
)
from clawdbot_sidecar.accounting.feedback import FeedbackResult
from clawdbot_sidecar.accounting.ledger import Ledger, Outcome
from clawdbot_sidecar.accounting.metrics import SidecarMetrics
from clawdbot_sidecar.cache import CachedResponse, ResponseCache, cache_key, cacheable
from clawdbot_sidecar.config import SidecarConfig
from clawdbot_sidecar.dicom.convert import DicomRefused, convert
from clawdbot_sidecar.dicom.requests import CloudCopy, has_dicom, rewrite_for_cloud
from clawdbot_sidecar.errors import (
    Overloaded,
    PolicyRefused,
    RequestError,
    SensitiveDataBlocked,
    StreamBroken,
    Unavailable,
    UpstreamFailed,
)
from clawdbot_sidecar.plugins import AfterResponse, BeforeRoute, PluginRequest
from clawdbot_sidecar.redaction import Redactor
from clawdbot_sidecar.redaction.walker import Inspection, inspect_request, uninspectable_kinds
from clawdbot_sidecar.routing import snapshot as snapshots
from clawdbot_sidecar.routing.confidence import (
    StreamMeter,
    answer_confidence,
    asks_logprobs,
    strip_logprobs,
    with_logprobs,
)
from clawdbot_sidecar.routing.decision import Bandit, Decision, Signals, decide
from clawdbot_sidecar.routing.features import Features, complexity, estimate_tokens
from clawdbot_sidecar.routing.request import (
    AUDIO_KINDS,
    REQUEST_ID_HEADER,
    Answer,
    ApiKind,
    Inbound,
    Request,
    validate,
)
from clawdbot_sidecar.routing.semantic import MAX_CHARS, guard
from clawdbot_sidecar.upstream.breaker import BreakerState, CircuitBreaker
from clawdbot_sidecar.upstream.client import Upstream, UpstreamError
from clawdbot_sidecar.upstream.cloud import CloudCall, CloudTarget, Wire
from clawdbot_sidecar.upstream.local import LocalTarget, Reply
from clawdbot_sidecar.upstream.pool import LocalPool, NoEndpoint
from clawdbot_sidecar.upstream.speech import SpeechTarget

__all__ = ["RoutingCore"]

log = logging.getLogger("clawdbot.sidecar")

# Completion tokens assumed for price estimates when the request sets no max_tokens.
DEFAULT_COMPLETION_TOKENS = 256
# Reject reasons answered at once, before the cache: the policy refuses the request itself.
_REFUSALS = (
    "model-tier-unavailable",
    "rule:",
    "default",
    "embeddings:no-cloud-model",
    "redaction-block:",
    "unredacted:",
    "uninspectable:",
    "dicom:",
)

Failure = UpstreamError | NoEndpoint | RequestError
# What the semantic cache stores: complete answers, never ones that may hold PII.
_SIMILAR_POLICY = Cache(enabled=True, cache_restored_pii=False)


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
        self._before = [p for p in plugins if isinstance(p, BeforeRoute)]
        after = [p for p in plugins if isinstance(p, AfterResponse)]
        self._audit_key = audit_hmac_key
        self._cache_scope = cache_scope
        self._seed = seed
        # Keys the DICOM UID mapping when the policy has no audit key: UIDs stay consistent
        # within this sidecar's life only (docs/dicom.md).
        self._dicom_key = os.urandom(32)
        self.snapshot = self._build(config, None)
        self.pool = LocalPool(config.endpoints, seed=seed)
        self.local = LocalTarget(self.pool, upstream)
        self.cloud = CloudTarget(upstream, self.metrics)
        self.speech = SpeechTarget(upstream)
        self.ledger = Ledger(self.metrics, lambda: self.snapshot.books, after)
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
        # Request ids: 128 random bits, like a uuid4's hex, without a system call for each.
        self._ids = random.Random()
        self.in_flight = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        # Set while no request is in progress; graceful shutdown waits on it.
        self.idle = asyncio.Event()
        self.idle.set()

    # -- configuration ------------------------------------------------------------------

    def _build(
        self, config: SidecarConfig, previous: snapshots.Snapshot | None
    ) -> snapshots.Snapshot:
        return snapshots.build(
            config,
            previous,
            audit_key=self._audit_key,
            cache_scope=self._cache_scope,
            seed=self._seed,
        )

    def apply(self, config: SidecarConfig) -> None:
        """Take a new policy and endpoint set (from a file reload or the operator), whole.

        Every component is built before any is switched: if one can't be (the exception
        propagates), the configuration in force stays in force in full.
        """
        old = self.snapshot
        new = self._build(config, old)
        self.snapshot = new
        self.pool.update(config.endpoints)
        if old.audit is not None and old.audit is not new.audit:
            old.audit.close()
        if old.cache is not None and old.cache is not new.cache:
            with contextlib.suppress(RuntimeError):  # no loop yet: nothing was opened
                asyncio.get_running_loop().create_task(old.cache.close())
        if old.model_tier is not None and old.model_tier is not new.model_tier:
            old.model_tier.close()
        if old.semantic is not None and old.semantic is not new.semantic:
            old.semantic.close()

    @property
    def config(self) -> SidecarConfig:
        """The configuration in force."""
        return self.snapshot.config

    @property
    def redactor(self) -> Redactor:
        return self.snapshot.redactor

    @property
    def bandit(self) -> Bandit:
        return self.snapshot.bandit

    @property
    def audit(self) -> Any:
        """The audit log in force (None when auditing is off)."""
        return self.snapshot.audit

    @property
    def cache(self) -> ResponseCache | None:
        return self.snapshot.cache

    @property
    def breaker(self) -> CircuitBreaker:
        return self.cloud.breaker

    async def close(self) -> None:
        """Stop probing, release the cache's connections and flush the audit log."""
        self.local.close()
        snap = self.snapshot
        if snap.model_tier is not None:
            snap.model_tier.close()
        if snap.cache is not None:
            await snap.cache.close()
        if snap.audit is not None:
            await snap.audit.aclose()

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

    async def handle(self, inbound: Inbound) -> Answer:
        """Answer one request. Raises RequestError for refusals the front turns into errors."""
        snap = self.snapshot  # the whole request is routed under one configuration
        limit = snap.config.limits.max_concurrency
        if self.in_flight >= limit:
            self.metrics.rejected.labels("overloaded").inc()
            raise Overloaded(limit)
        self.in_flight += 1
        self.idle.clear()
        lowered = {k.lower(): v for k, v in inbound.headers.items()}
        answer_id = f"{self._ids.getrandbits(128):032x}"
        out = Outcome(
            request_id=lowered.get(REQUEST_ID_HEADER) or answer_id,
            endpoint=inbound.kind.value,
            front=inbound.front,
            started=time.monotonic(),
            answer_id=answer_id,
        )
        streaming = False
        try:
            request = validate(Inbound(inbound.kind, inbound.body, lowered, native=inbound.native))
            out.model, out.stream = request.model, request.stream
            route_headers = request.headers
            if self._before or self.ledger.has_after:
                out.plugin_request = PluginRequest(
                    out.request_id, request.kind.value, out.model, request.body, lowered
                )
                for plugin in self._before:
                    await self._run_before(plugin, out.plugin_request)
                route_headers = out.plugin_request.headers
            answer = await self._route(snap, request, route_headers, out)
            if answer.chunks is not None:
                streaming = True
                answer.chunks = self._finish_stream(answer.chunks, out)
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

    async def _route(
        self, snap: snapshots.Snapshot, request: Request, headers: dict[str, str], out: Outcome
    ) -> Answer:
        await self._prepare_dicom(snap, request, out)
        self._note_reask(snap, request, out)
        difficulty = await self._semantic_difficulty(snap, request, out)
        decision = self._decide(snap, request, headers, out, difficulty)
        if decision.target == "reject" and decision.reason.startswith(_REFUSALS):
            self._reject(decision, out)  # the policy says no: not even a cached answer

        # After the rules, so a request a rule now refuses is refused; before the guards'
        # verdict, so a cached answer still serves when no target can answer right now.
        key = None
        if snap.cache is not None and not out.stream and request.kind not in AUDIO_KINDS:
            key = cache_key(request.body)  # of the original: answers are stored restored
            hit = await self._cache_get(snap.cache, key)
            embeddings = request.kind == ApiKind.EMBEDDINGS
            if hit is not None and embeddings and hit.source != decision.target:
                hit = None  # a vector of the other side's model (the policy changed since)
            if hit is not None:
                out.cache, out.target, out.reason = "hit", "cache", f"cache-hit:{hit.source}"
                self.metrics.decisions.labels("cache", "cache-hit").inc()
                return Answer(
                    out.request_id,
                    out.target,
                    out.full_reason,
                    body=hit.body,
                    answer_id=out.answer_id,
                )
            out.cache = "miss"
        similar = await self._similar(snap, request, out)
        if similar is not None:
            return similar
        if decision.target == "reject":
            self._reject(decision, out)
        out.reason = decision.reason
        if decision.context is not None:
            out.arm, out.context = decision.target, decision.context
        self.metrics.decisions.labels(decision.target, decision.reason).inc()
        if decision.cascade and request.kind in (ApiKind.CHAT, ApiKind.COMPLETIONS):
            reply = await self._cascade(snap, request, decision, out)
        else:
            reply = await self._answer(snap, request, decision, out)
        if key is not None and reply.body is not None and not reply.native:
            await self._cache_put(snap, key, reply.body, out)
        if out.similar_key is not None and reply.body is not None and not reply.native:
            self._similar_put(snap, reply.body, out)
        return Answer(
            out.request_id,
            out.target,
            out.full_reason,
            body=reply.body,
            chunks=reply.chunks,
            native=reply.native,
            answer_id=out.answer_id,
            confidence=out.confidence,
        )

    @staticmethod
    def _order(snap: snapshots.Snapshot, request: Request, decision: Decision) -> list[str]:
        """The decided target, then the fallback the policy allows for it, if any."""
        fallback = snap.config.policy.fallback
        if request.kind == ApiKind.EMBEDDINGS:
            # The other side's model gives vectors the app can't compare: no fallback.
            return [decision.target]
        if decision.target == "local" and fallback.local_to_cloud and not decision.private:
            return ["local", "cloud"]
        if decision.target == "cloud" and fallback.cloud_to_local:
            return ["cloud", "local"]
        return [decision.target]

    async def _answer(
        self,
        snap: snapshots.Snapshot,
        request: Request,
        decision: Decision,
        out: Outcome,
        local_request: Request | None = None,
    ) -> Reply:
        """The first target of the decision's order that answers (``local_request``: what
        the local target is sent instead of ``request``)."""
        order = self._order(snap, request, decision)
        last: Failure | None = None
        for i, target in enumerate(order):
            if i > 0:
                # available(), not allow(): the call itself takes a half-open breaker's probe.
                cloud = snap.config.policy.cloud
                if target == "cloud" and not (cloud and self.breaker.available()):
                    break
                out.fallback_from = order[0]
            sent = local_request if target == "local" and local_request else request
            try:
                reply = await self._call(snap, target, sent, out)
            except (UpstreamError, NoEndpoint, RequestError) as exc:
                # RequestError: e.g. the cloud copy would carry a blocked entity.
                last = exc
                continue
            if out.fallback_from:
                self.metrics.fallbacks.labels(out.fallback_from, target).inc()
            return reply
        raise self._failure(last, out)

    async def _prepare_dicom(
        self, snap: snapshots.Snapshot, request: Request, out: Outcome
    ) -> None:
        """Convert the DICOM parts of a chat request for the cloud (spec.dicom), off the
        event loop: the cloud-bound copy goes to ``out.cloud_body``; a part that can't be
        converted sets ``out.dicom_refused`` and the request does not leave."""
        spec = snap.config.policy.dicom
        cloud = snap.config.policy.cloud
        native = request.native
        if (
            spec is None
            or not spec.enabled
            or request.kind != ApiKind.CHAT
            # A Responses or Messages request the cloud gets as it is: not rewritten.
            or (native is not None and cloud is not None and cloud.api == native.api)
            or not has_dicom(request.body)
        ):
            return
        key = self._dicom_key
        if snap.audit_key:
            name = f"clawdbot dicom uids {snap.config.policy_name}".encode()
            key = hmac.new(snap.audit_key, name, hashlib.sha256).digest()

        def run() -> CloudCopy:
            return rewrite_for_cloud(request.body, lambda data: convert(data, spec, key))

        try:
            copy = await asyncio.to_thread(run)
        except DicomRefused as exc:
            out.dicom_refused = exc.reason
            return
        out.cloud_body, out.inspected_body = copy.body, copy.inspected
        out.dicom = {
            "profile": spec.profile,
            "options": sorted(o.value for o in spec.options),
            "files": len(copy.converted),
            "actions": dict(sum((c.report.counts for c in copy.converted), Counter())),
            "private_removed": sum(c.report.private_removed for c in copy.converted),
            "sha256": [c.sha256 for c in copy.converted],
        }

    # -- quality: feedback, re-asks and the cascade ------------------------------------------

    def feedback(self, answer_id: str, score: float, source: str = "explicit") -> FeedbackResult:
        """Score an earlier answer by its x-clawdbot-request-id (0 bad to 1 good)."""
        return self.ledger.feedback(answer_id, score, source)

    def _note_reask(self, snap: snapshots.Snapshot, request: Request, out: Outcome) -> None:
        """The same conversation asked again soon after: the earlier answer was not good."""
        book = snap.feedback
        if (
            book is None
            or book.settings.reask_window_seconds <= 0
            or request.kind not in (ApiKind.CHAT, ApiKind.COMPLETIONS)
        ):
            return
        previous = book.reasked(cache_key(request.body), out.answer_id)
        if previous is not None:
            out.reasked = True
            self.ledger.feedback(previous, 0.0, "reask")

    async def _embed(self, model: str, texts: list[str]) -> list[list[float]]:
        """Embeddings of ``texts`` from the local endpoint serving ``model``."""
        probe = Outcome(
            request_id="semantic", endpoint=ApiKind.EMBEDDINGS.value, started=0.0, model=model
        )
        body = {"model": model, "input": texts, "encoding_format": "float"}
        reply = await self.local.call(body, self.config.limits, probe)
        data = (reply.body or {}).get("data")
        if not isinstance(data, list) or len(data) != len(texts):
            raise UpstreamError("protocol", f"{model} answered no embeddings")
        return [[float(x) for x in d["embedding"]] for d in data]

    async def _semantic_difficulty(
        self, snap: snapshots.Snapshot, request: Request, out: Outcome
    ) -> float | None:
        """The semantic router's view of the prompt (1 - P(local is good enough)), when it
        is configured, ready and the request may reach the bandit; else None."""
        semantic = snap.semantic
        if (
            semantic is None
            or not snap.may_adapt
            or request.kind not in (ApiKind.CHAT, ApiKind.COMPLETIONS)
        ):
            return None
        router = semantic.router
        if router is None:
            semantic.start(self._embed)
            return None
        text = "\n".join(inspect_request(request.body).conversation)[-MAX_CHARS:]
        if not text:
            return None
        try:
            vector = (await self._embed(semantic.model, [text]))[0]
        except (UpstreamError, NoEndpoint, RequestError, KeyError, TypeError, ValueError):
            return None  # the keyword score decides this one
        # Kept for feedback as float32 (1.5 KB for MiniLM), not a list of Python floats.
        compact = array("f", vector)
        out.on_local_score = lambda score: router.learn(compact, score)
        return 1.0 - router.predict(compact)

    async def _similar(
        self, snap: snapshots.Snapshot, request: Request, out: Outcome
    ) -> Answer | None:
        """A semantic-cache hit for this conversation, if the policy has the cache and one
        is close enough with the same negations and numbers; else None (and what to store
        the answer under is kept in ``out``)."""
        cache = snap.semantic_cache
        if (
            cache is None
            or out.stream
            or request.kind not in (ApiKind.CHAT, ApiKind.COMPLETIONS)
            or request.native is not None
        ):
            return None
        if out.reasked:
            # Asked again because the answer did not do: a new answer, not the same one.
            return None
        seen = inspect_request(request.body)
        if seen.uninspectable:
            # The text says nothing of an image, a file or audio: "any lesion here?" of
            # another patient's slice is not the same question.
            return None
        text = "\n".join(seen.conversation)
        if not text:
            return None
        try:
            vector = (await self._embed(cache.model, [text[-MAX_CHARS:]]))[0]
        except (UpstreamError, NoEndpoint, RequestError, KeyError, TypeError, ValueError):
            return None  # the encoder can't answer: no semantic cache for this one
        key = f"{request.kind.value}|{request.model}|{guard(text)}"
        hit = cache.get(vector, key)
        if hit is None:
            out.similar_key = (vector, key)
            self.metrics.cache.labels("semantic-miss").inc()
            return None
        value, similarity = hit
        assert isinstance(value, CachedResponse)
        self.metrics.cache.labels("semantic-hit").inc()
        out.cache, out.target, out.reason = "hit", "cache", f"semantic-cache-hit:{value.source}"
        self.metrics.decisions.labels("cache", "semantic-cache-hit").inc()
        return Answer(
            out.request_id,
            out.target,
            out.full_reason,
            body=value.body,
            answer_id=out.answer_id,
            similarity=similarity,
        )

    def _similar_put(self, snap: snapshots.Snapshot, body: dict[str, Any], out: Outcome) -> None:
        cache, entry = snap.semantic_cache, out.similar_key
        if cache is None or entry is None:
            return
        # Never an answer that may carry the request's sensitive values.
        may_hold_pii = out.restored_pii or any(out.pii.values())
        if cacheable(_SIMILAR_POLICY, body, may_hold_pii=may_hold_pii):
            cache.put(entry[0], entry[1], CachedResponse(body, out.target, time.time()))

    def _escalation_blocker(self, snap: snapshots.Snapshot, decision: Decision) -> str | None:
        """Why an unsure local answer can't be taken to the cloud now, if it can't."""
        if decision.escalation_blocker is not None:
            return decision.escalation_blocker
        if snap.config.policy.cloud is None or not self.breaker.available():
            return "cloud-unavailable"
        return None

    async def _cascade(
        self, snap: snapshots.Snapshot, request: Request, decision: Decision, out: Outcome
    ) -> Reply:
        """Answer locally; if the answer's confidence is under the threshold, the cloud's.

        A local failure falls back as a local decision does. A streamed answer is judged on
        its first ``holdTokens`` tokens, held back from the app until then.
        """
        settings = snap.config.policy.quality.cascade
        out.threshold = settings.threshold
        chat = request.kind == ApiKind.CHAT
        app_wants = asks_logprobs(request.body, chat)
        local = dataclasses.replace(request, body=with_logprobs(request.body, chat))
        reply = await self._answer(snap, request, decision, out, local_request=local)
        if out.target != "local":
            return reply  # local failed: the fallback answered
        if reply.body is not None:
            confidence = answer_confidence(reply.body)
            self._measured(out, confidence)
            if not app_wants:
                strip_logprobs(reply.body)
            if not self._unsure(snap, decision, out, confidence):
                return reply
            local_tokens = out.prompt_tokens, out.completion_tokens
            try:
                return await self._call(snap, "cloud", request, out)
            except (UpstreamError, NoEndpoint, RequestError):
                out.target, out.cascade = "local", "escalation-failed"
                out.prompt_tokens, out.completion_tokens = local_tokens
                self.metrics.cascade.labels("escalation-failed").inc()
                return reply
        assert reply.chunks is not None
        return await self._cascade_stream(
            snap, request=request, decision=decision, out=out, reply=reply, app_wants=app_wants
        )

    async def _cascade_stream(
        self,
        snap: snapshots.Snapshot,
        *,
        request: Request,
        decision: Decision,
        out: Outcome,
        reply: Reply,
        app_wants: bool,
    ) -> Reply:
        assert reply.chunks is not None
        chunks = reply.chunks
        hold = snap.config.policy.quality.cascade.hold_tokens
        meter, held = StreamMeter(), []
        broken: StreamBroken | None = None
        try:
            while meter.seen < hold:
                chunk = await anext(chunks)
                meter.feed(chunk)
                held.append(chunk)
        except StopAsyncIteration:
            pass
        except StreamBroken as exc:
            if self._escalation_blocker(snap, decision) is not None:
                raise
            broken = exc  # nothing was sent yet: the cloud answers instead, if it can
            out.status, out.error = 200, None
        confidence = meter.confidence
        self._measured(out, confidence)
        if broken is not None:
            out.cascade = "escalated"
            self.metrics.cascade.labels("escalated").inc()
        if broken is not None or self._unsure(snap, decision, out, confidence):
            local_tokens = out.prompt_tokens, out.completion_tokens
            try:
                # Opened before the local stream is closed: a cloud that fails leaves the
                # local answer to go on.
                cloud = await self._call(snap, "cloud", request, out)
            except (UpstreamError, NoEndpoint, RequestError):
                if broken is not None:
                    out.status, out.error = 502, "stream-broken"
                    raise broken from None
                out.target, out.cascade = "local", "escalation-failed"
                out.prompt_tokens, out.completion_tokens = local_tokens
                self.metrics.cascade.labels("escalation-failed").inc()
            else:
                out.discarded = True  # closing the local stream is not its failure
                if isinstance(chunks, AsyncGenerator):
                    await chunks.aclose()
                return cloud
        return Reply(chunks=self._replay(held, chunks, strip=not app_wants))

    @staticmethod
    async def _replay(
        held: list[dict[str, Any]], rest: AsyncIterator[dict[str, Any]], *, strip: bool
    ) -> AsyncIterator[dict[str, Any]]:
        """The held chunks, then the rest of the stream (without log-probabilities the app
        did not ask for)."""
        try:
            for chunk in held:
                yield dict(strip_logprobs(chunk)) if strip else chunk
            async for chunk in rest:
                yield dict(strip_logprobs(chunk)) if strip else chunk
        finally:
            if isinstance(rest, AsyncGenerator):
                await rest.aclose()

    def _measured(self, out: Outcome, confidence: float | None) -> None:
        out.confidence = confidence
        if confidence is not None:
            self.metrics.confidence.observe(confidence)

    def _unsure(
        self,
        snap: snapshots.Snapshot,
        decision: Decision,
        out: Outcome,
        confidence: float | None,
    ) -> bool:
        """Whether to ask the cloud: the local answer is unsure (or unmeasured) and the
        cloud may be asked. Records what the cascade did either way."""
        threshold = snap.config.policy.quality.cascade.threshold
        if confidence is not None and confidence >= threshold:
            out.cascade = "kept"
            self.metrics.cascade.labels("kept").inc()
            return False
        blocker = self._escalation_blocker(snap, decision)
        if blocker is not None:
            out.cascade = f"not-escalated:{blocker}"
            self.metrics.cascade.labels("not-escalated").inc()
            return False
        out.cascade = "escalated"
        self.metrics.cascade.labels("escalated").inc()
        return True

    def _decide(
        self,
        snap: snapshots.Snapshot,
        request: Request,
        headers: dict[str, str],
        out: Outcome,
        difficulty: float | None = None,
    ) -> Decision:
        """``difficulty``: the semantic router's 1 - P(local is good enough), which replaces
        the keyword complexity score; None: the keyword score."""
        seen = self._inspect(snap, request, out.inspected_body)  # what redaction walks again
        texts = seen.texts
        # Redaction off or narrower than the rules: rules still see every entity. The
        # findings are kept for the redaction of a cloud-bound copy (one detection pass).
        also = snap.pii_entities if snap.rules_check_pii else ()
        pii = snap.redactor.scan_parts(texts, out.findings, also) if texts else {}
        out.pii = pii
        features = Features(
            model=out.model,
            tokens=estimate_tokens("\n".join(texts)),
            complexity=complexity("\n".join(seen.conversation), seen.turns)
            if difficulty is None
            else difficulty,
            pii=pii,
            headers=headers,
            stream=out.stream,
        )
        signals = self._signals(snap, features, request)
        blocked = {e: n for e, n in pii.items() if self._mode(snap, e) == RedactionMode.BLOCK}
        decision = decide(
            snap.config.policy,
            features,
            signals,
            snap.bandit,
            blocked,
            embeddings=request.kind == ApiKind.EMBEDDINGS,
            keep_local=self._keep_local(snap, pii, seen, out.dicom_refused),
        )
        redaction = snap.config.policy.redaction
        if (
            decision.reason.startswith(("uninspectable:", "dicom:"))
            and redaction.uninspectable == UninspectableContent.REJECT
        ):
            # The policy refuses what it can't inspect rather than answer it elsewhere.
            return Decision("reject", decision.reason, private=True)
        return decision

    @staticmethod
    def _inspect(
        snap: snapshots.Snapshot, request: Request, body: dict[str, Any] | None = None
    ) -> Inspection:
        """The walk of the request (or of ``body``, the cloud-bound copy of a request whose
        DICOM parts were converted, less their PNGs), and of its native form when that is
        what would leave (so the rules see every string the cloud would get)."""
        seen = inspect_request(request.body if body is None else body)
        native = request.native
        cloud = snap.config.policy.cloud
        if native is None or cloud is None or cloud.api != native.api:
            return seen
        other = inspect_request(native.body)
        known = set(seen.texts)
        extra = [t for t in other.texts if t not in known]
        return Inspection(
            texts=seen.texts + extra,
            conversation=seen.conversation,
            turns=seen.turns,
            uninspectable=seen.uninspectable | other.uninspectable,
        )

    @staticmethod
    def _keep_local(
        snap: snapshots.Snapshot,
        pii: Mapping[str, int],
        seen: Inspection,
        dicom_refused: str | None = None,
    ) -> str | None:
        """Why the request must not leave, besides blocked entities; None if it may."""
        if snap.model_tier_error is not None:
            return "model-tier-unavailable"
        if dicom_refused is not None:
            return f"dicom:{dicom_refused}"
        redaction = snap.config.policy.redaction
        if (
            redaction.enabled
            and seen.uninspectable
            and redaction.uninspectable != UninspectableContent.ALLOW
        ):
            return f"uninspectable:{uninspectable_kinds(seen.uninspectable)}"
        # An entity a PII rule asks about but redaction leaves in place would go out raw.
        uncovered = sorted(
            e
            for e, n in pii.items()
            if n and e in snap.pii_rule_entities and e not in snap.redacted_entities
        )
        return f"unredacted:{uncovered[0]}" if uncovered else None

    def _reject(self, decision: Decision, out: Outcome) -> NoReturn:
        reason = decision.reason
        out.reason = reason
        self.metrics.decisions.labels(decision.target, reason).inc()
        if reason.startswith(("rule:", "default")):
            raise PolicyRefused(reason)
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
        what = reason.partition(":")[2]
        if reason.startswith(("redaction-block:", "unredacted:")):
            # Embeddings, which never switch sides, or a private request no local can take.
            raise SensitiveDataBlocked(
                f"the request holds sensitive data ({what}) the policy keeps from the cloud, "
                "and no local model can answer it (embeddings are never computed by the other "
                "side's model, whose vectors would not be comparable)",
                reason=reason,
            )
        if reason == "model-tier-unavailable":
            raise SensitiveDataBlocked(
                "the policy's model tier (spec.redaction.model) can't run, so nothing may "
                "leave for the cloud, and no local model can answer this request",
                reason=reason,
            )
        if reason.startswith("dicom:"):
            raise RequestError(
                400,
                f"the request holds a DICOM file the sidecar can't de-identify for the cloud "
                f"({what}), and no local model answers it (docs/dicom.md)",
                code="dicom_not_deidentified",
                reason=reason,
            )
        if reason.startswith("uninspectable:"):
            raise RequestError(
                400,
                f"the request holds content the sidecar can't inspect ({what}), which the "
                "policy keeps from the cloud (spec.redaction.uninspectable), and no local model "
                "answers it",
                code="uninspectable_content",
                reason=reason,
            )
        raise Unavailable(reason)

    @staticmethod
    def _failure(exc: Failure | None, out: Outcome) -> RequestError:
        if isinstance(exc, RequestError):
            return exc
        status = exc.status if isinstance(exc, UpstreamError) else None
        if status is not None and 400 <= status < 500 and status != 429:
            # The upstream refused the request itself: pass its verdict through.
            return RequestError(
                status, str(exc), type_="invalid_request_error", reason="upstream-4xx"
            )
        what = str(exc) if exc else "no target available"
        return UpstreamFailed(502 if isinstance(exc, UpstreamError) else 503, out.target, what)

    @staticmethod
    def _mode(snap: snapshots.Snapshot, entity: str) -> RedactionMode:
        redaction = snap.config.policy.redaction
        return redaction.per_entity_mode.get(entity, redaction.mode)

    def _signals(self, snap: snapshots.Snapshot, f: Features, request: Request) -> Signals:
        cloud = snap.config.policy.cloud
        body = request.body
        max_tokens = body.get("max_tokens") or body.get("max_completion_tokens")
        completion = max_tokens if isinstance(max_tokens, int) else DEFAULT_COMPLETION_TOKENS
        budgets = snap.budgets
        exhausted = budgets.exhausted(f.tokens + completion) if cloud else None
        states = [s for s in self.pool.states if s.healthy(time.monotonic())]
        least = min(states, key=lambda s: s.in_flight) if states else None
        if request.kind in AUDIO_KINDS:  # local is the policy's speech server, not the pool
            states, least = [], None
        local_healthy = len(states)
        if request.kind in AUDIO_KINDS and snap.config.policy.local_speech is not None:
            local_healthy = 1
        return Signals(
            local_healthy=local_healthy,
            local_queue=least.in_flight if least else 0,
            local_latency_s=least.latency_ewma_s if least else 0.0,
            cloud_configured=cloud is not None,
            cloud_allowed=cloud is not None and self.breaker.available(),
            cloud_latency_s=self.cloud.latency_s,
            cloud_error_rate=self.cloud.error_rate,
            cloud_price_usd=budgets.cost_usd(f.tokens, completion) if cloud else 0.0,
            budget_exhausted=exhausted,
        )

    # -- calling the targets ------------------------------------------------------------

    async def _call(
        self, snap: snapshots.Snapshot, target: str, request: Request, out: Outcome
    ) -> Reply:
        out.target = target
        config = snap.config
        body = request.body
        audio = request.kind in AUDIO_KINDS
        if target == "local" and audio:
            return await self.speech.call(body, config.policy.local_speech, config.limits, out)
        if target == "local":
            return await self.local.call(body, config.limits, out)
        cloud = config.policy.cloud
        if cloud is None:
            raise NoEndpoint("no cloud endpoint is configured")
        if out.cloud_body is not None:
            body = out.cloud_body  # DICOM parts converted: the PNG and the summary leave
        wire = Wire.AUDIO if audio else Wire.CHAT
        native = request.native
        if native is not None and native.api == cloud.api:
            body, wire = native.body, Wire.native(native.path, native.headers)
        elif cloud.api == CloudApi.ANTHROPIC_MESSAGES:
            raise NoEndpoint(
                "the cloud endpoint speaks only Anthropic's Messages API (spec.cloud.api); "
                f"a {out.front or out.endpoint} request is not sent to it"
            )
        call = CloudCall(
            endpoint=cloud,
            redaction=config.policy.redaction,
            redactor=snap.redactor,
            api_key=config.cloud_api_key,
            connect_timeout_s=config.limits.cloud_connect_timeout_s,
            model_tier=snap.model_tier,
            model_tier_error=snap.model_tier_error,
        )
        return await self.cloud.call(body, call, out, wire)

    async def _finish_stream(
        self, chunks: AsyncIterator[dict[str, Any]], out: Outcome
    ) -> AsyncIterator[dict[str, Any]]:
        try:
            async for chunk in chunks:
                yield chunk
        except StreamBroken:
            raise  # the relay recorded the upstream's failure
        except BaseException:
            out.status, out.error = 499, "client-closed"
            raise
        finally:
            self._done(out)
            # An app that left mid-stream: close the relay (and its upstream call) now.
            if isinstance(chunks, AsyncGenerator):
                await chunks.aclose()

    # -- caching ------------------------------------------------------------------------

    async def _cache_get(self, cache: ResponseCache, key: str) -> CachedResponse | None:
        try:
            hit = await cache.get(key)
        except Exception:  # a cache outage is a miss, never a failed request
            log.warning("cache lookup failed; answering without the cache", exc_info=True)
            self.metrics.cache.labels("error").inc()
            return None
        self.metrics.cache.labels("hit" if hit is not None else "miss").inc()
        return hit

    async def _cache_put(
        self, snap: snapshots.Snapshot, key: str, value: dict[str, Any], out: Outcome
    ) -> None:
        cache = snap.cache
        assert cache is not None
        # A local answer to a prompt holding PII may repeat it, like a restored cloud answer.
        may_hold_pii = out.restored_pii or any(out.pii.values())
        if not cacheable(snap.config.policy.cache, value, may_hold_pii=may_hold_pii):
            return
        try:
            await cache.set(key, CachedResponse(value, out.target, time.time()))
        except Exception:
            log.warning("cache store failed; the answer is not cached", exc_info=True)
            self.metrics.cache.labels("error").inc()

    # -- plugins and accounting ---------------------------------------------------------

    @staticmethod
    async def _run_before(plugin: BeforeRoute, request: PluginRequest) -> None:
        try:
            await plugin.before_route(request)
        except RequestError:
            raise  # the plugin refuses the request on purpose
        except Exception:
            log.exception("plugin %s failed before routing; ignored", type(plugin).__name__)

    def _done(self, out: Outcome) -> None:
        """Account a finished request: once, whether it succeeded, failed or was cut off."""
        self.in_flight -= 1
        if not self.in_flight:
            self.idle.set()
        self.ledger.finish(out)
