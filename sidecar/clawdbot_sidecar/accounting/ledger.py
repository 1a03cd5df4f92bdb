"""Accounting of one request: what happened to it, written once when it is finished.

The routing core and the targets fill an :class:`Outcome` as the request goes (where it was
sent and why, tokens, redaction counts, status); :meth:`Ledger.finish` turns it into
metrics, cloud budget use, the bandit's feedback, the plugins' after-hooks and the audit
record, whether the request succeeded, failed or was cut off. Nothing here sees prompt or
answer text: the outcome holds counts, names and reasons only.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from clawdbot_api.v1alpha1.routingpolicy import Adaptive
from clawdbot_sidecar.accounting.audit import AuditLog, AuditRecord, FeedbackRecord
from clawdbot_sidecar.accounting.budgets import BudgetTracker
from clawdbot_sidecar.accounting.feedback import (
    FeedbackBook,
    FeedbackResult,
    Remembered,
    quality_term,
)
from clawdbot_sidecar.accounting.metrics import SidecarMetrics
from clawdbot_sidecar.plugins import AfterResponse, PluginRequest, PluginResult
from clawdbot_sidecar.redaction import FindingsMemo

__all__ = ["Learner", "Ledger", "Outcome", "reward"]

log = logging.getLogger("clawdbot.sidecar")


class Learner(Protocol):
    """What learns from outcomes: the adaptive router's bandit."""

    def update(self, arm: Any, context: tuple[float, ...], r: float) -> None: ...

    def correct(self, arm: Any, context: tuple[float, ...], delta: float) -> None: ...


@dataclass
class Outcome:
    """Accounting for one request, filled in as it goes and written once at the end."""

    request_id: str
    endpoint: str
    """The API endpoint below /v1 (chat/completions, completions, embeddings): the path
    the upstream is called at."""
    started: float
    front: str | None = None
    """The endpoint the app called when a front translated it into ``endpoint``
    (responses, messages); metrics and the audit record name this one."""
    model: str = ""
    stream: bool = False
    reason: str | None = None
    """Why the target was chosen (the decision's reason); None before a decision."""
    arm: str | None = None
    """The bandit's arm when the adaptive router chose; feedback goes to it."""
    context: tuple[float, ...] | None = None
    """The bandit's context when it chose."""
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
    local_endpoint: Any = None
    """The local endpoint state that answered, if any (for the pool's accounting)."""
    error: str | None = None
    # Detection results per prompt text: the routing scan fills it, redaction reuses it.
    findings: FindingsMemo = field(default_factory=dict)
    answer_id: str = ""
    """The x-clawdbot-request-id of the answer: always the sidecar's own, so feedback names
    one routed request whatever x-request-id the app sent."""
    quality: float | None = None
    """What is known of the answer's quality when it finishes (0 to 1), if anything."""
    confidence: float | None = None
    """The local answer's confidence from its token log-probabilities, when measured."""
    threshold: float | None = None
    """The cascade's threshold, for a cascade decision."""
    cascade: str | None = None
    """What the cascade did: kept, escalated, or why it could not escalate."""
    discarded: bool = False
    """The core closed the local stream itself (a cascade escalated): not a failure of the
    endpoint."""
    on_local_score: Callable[[float], None] | None = None
    """What learns from a score of this answer when local gave it (the semantic router)."""
    reasked: bool = False
    """The same conversation was asked shortly before (a re-ask)."""
    similar_key: tuple[list[float], str] | None = None
    """Where the semantic cache stores this answer (its embedding and guard), after a miss."""
    cloud_body: dict[str, Any] | None = None
    """The cloud-bound request when its DICOM parts were converted (PNG and summary)."""
    inspected_body: dict[str, Any] | None = None
    """That copy without the PNGs: what routing and redaction walk."""
    dicom: dict[str, Any] | None = None
    """What DICOM de-identification did (profile, options, counts, hashes): the audit's."""
    dicom_refused: str | None = None
    """Why a DICOM part could not be de-identified (the request then stays local)."""

    @property
    def full_reason(self) -> str:
        """The reason as headers and the audit log show it (fallbacks say so)."""
        reason = self.reason if self.reason is not None else (self.error or "invalid")
        if self.fallback_from:
            reason = f"fallback:{self.fallback_from}-failed ({reason})"
        if self.cascade is not None:
            reason += f" cascade:{self.cascade}"
            if self.confidence is not None:
                reason += f" confidence={self.confidence:.2f}"
            if self.threshold is not None:
                reason += f" threshold={self.threshold:.2f}"
        return reason


def reward(
    ok: bool,
    latency_s: float,
    cost_usd: float,
    adaptive: Adaptive,
    quality: float | None = None,
) -> float:
    """Outcome of one answered request, for the bandit: higher is better.

    A failure scores -1. A success scores 1, less a latency penalty that reaches 0.5 at the
    latency target and 1 at twice the target, less ``costWeight`` per dollar spent (the
    policy's exchange rate between a missed latency target and money), less
    ``qualityWeight`` x (1 - quality) when the answer's quality (0 to 1) is known. Feedback
    that arrives later corrects the quality term (:mod:`clawdbot_sidecar.accounting.feedback`).
    """
    if not ok:
        return -1.0
    target_s = adaptive.latency_target_ms / 1000.0
    latency_penalty = min(latency_s / target_s, 2.0) / 2.0
    return (
        1.0
        - latency_penalty
        - adaptive.cost_weight * cost_usd
        + quality_term(quality, adaptive.quality_weight)
    )


@dataclass
class Books:
    """The accounting state in force: swapped whole with the configuration."""

    budgets: BudgetTracker
    learner: Learner
    adaptive: Adaptive
    audit: AuditLog | None
    feedback: FeedbackBook | None = None


class Ledger:
    """Writes finished outcomes to metrics, budgets, the learner, plugins and the audit."""

    def __init__(
        self,
        metrics: SidecarMetrics,
        books: Callable[[], Books],
        after: Sequence[AfterResponse] = (),
    ) -> None:
        """``books()`` gives the accounting state in force when a request finishes."""
        self.metrics = metrics
        self._books = books
        self._after = tuple(after)

    @property
    def has_after(self) -> bool:
        """Whether a plugin wants to see finished requests."""
        return bool(self._after)

    def finish(self, out: Outcome) -> None:
        """Account a finished request: once, whether it succeeded, failed or was cut off."""
        elapsed = time.monotonic() - out.started
        books = self._books()
        m = self.metrics
        target = out.target or ("reject" if out.status >= 400 else "none")
        m.requests.labels(out.front or out.endpoint, target, str(out.status)).inc()
        m.latency.labels(target).observe(elapsed)
        if out.prompt_tokens or out.completion_tokens:
            m.tokens.labels(target, "prompt").inc(out.prompt_tokens)
            m.tokens.labels(target, "completion").inc(out.completion_tokens)
        if target == "cloud" and out.status < 400:
            out.cost_usd = books.budgets.record(out.prompt_tokens, out.completion_tokens)
            m.cloud_spend.inc(out.cost_usd)
        learned = (
            out.arm is not None
            and out.context is not None
            and out.fallback_from is None
            and target in ("local", "cloud")
        )
        if learned:
            assert out.context is not None
            r = reward(out.status < 400, elapsed, out.cost_usd, books.adaptive, out.quality)
            books.learner.update(out.arm, out.context, r)
        if (
            books.feedback is not None
            and out.answer_id
            and target in ("local", "cloud")
            and out.status < 400
        ):
            weight = books.adaptive.quality_weight
            books.feedback.remember(
                out.answer_id,
                Remembered(
                    at=books.feedback.now(),
                    target=target,
                    reason=out.reason or "",
                    arm=out.arm if learned else None,
                    context=out.context if learned else None,
                    learner=books.learner if learned else None,
                    quality_weight=weight,
                    applied=quality_term(out.quality, weight),
                    on_score=out.on_local_score if target == "local" else None,
                ),
            )
        self._run_after(out, target, elapsed)
        if books.audit is not None:
            books.audit.append(
                AuditRecord(
                    request_id=out.request_id,
                    target=target,
                    reason=out.full_reason,
                    model=out.model,
                    prompt_tokens=out.prompt_tokens,
                    completion_tokens=out.completion_tokens,
                    latency_ms=elapsed * 1000,
                    redacted=out.redacted,
                    cache_hit=out.cache == "hit",
                    status=out.status,
                    fallback=out.fallback_from is not None,
                    endpoint=out.front or out.endpoint,
                    clawdbot_request_id=out.answer_id or None,
                    confidence=out.confidence,
                    threshold=out.threshold,
                    dicom=out.dicom,
                )
            )

    def feedback(self, answer_id: str, score: float, source: str) -> FeedbackResult:
        """Score an earlier answer: corrects the bandit's reward; counted and audited."""
        books = self._books()
        if books.feedback is None:
            result, entry = FeedbackResult.UNKNOWN, None
        else:
            result, entry = books.feedback.score(answer_id, score)
        target = entry.target if entry is not None else ""
        self.metrics.feedback.labels(source, result.value, target or "none").inc()
        if result == FeedbackResult.RECORDED:
            self.metrics.feedback_score.labels(target).observe(score)
        if books.audit is not None:
            books.audit.append(
                FeedbackRecord(
                    clawdbot_request_id=answer_id,
                    score=score,
                    source=source,
                    result=result.value,
                    target=target,
                )
            )
        return result

    def _run_after(self, out: Outcome, target: str, elapsed: float) -> None:
        if out.plugin_request is None or not self._after:
            return
        result = PluginResult(
            target=target,
            reason=out.reason if out.reason is not None else (out.error or ""),
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
