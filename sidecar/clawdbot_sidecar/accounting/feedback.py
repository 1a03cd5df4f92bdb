"""Quality feedback on answers: explicit scores and re-asks, fed back into the bandit.

Every answer carries ``x-clawdbot-request-id``. For ``quality.feedback.windowSeconds`` the
sidecar remembers, per answer, what the router learned from it (the bandit arm, its context
and the quality term the reward had); ``POST /v1/feedback`` (or gRPC ``Generate/Feedback``)
with a score for that id corrects the reward. The bandit is a ridge regression per arm, so
replacing an observed reward r by r' for the same context x is exact: b += (r' - r) x, A
unchanged (:meth:`clawdbot_sidecar.routing.decision.Bandit.correct`).

Implicit feedback: the same conversation (the same request body, as the cache keys it)
asked again within ``reaskWindowSeconds`` scores the earlier answer 0.

Memory is bounded: at most ``maxEntries`` answers and as many conversation keys, the oldest
forgotten first; nothing of the prompt or answer is kept, only ids, numbers and names.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol

from clawdbot_api.v1alpha1.routingpolicy import Feedback
from clawdbot_sidecar.errors import invalid

__all__ = [
    "Corrector",
    "FeedbackBook",
    "FeedbackResult",
    "Remembered",
    "parse_feedback",
    "quality_term",
]

# Ids are the sidecar's 32 hex digits; anything much longer is not one of them.
MAX_ID_LENGTH = 128


def parse_feedback(body: Any) -> tuple[str, float]:
    """The answer id and score of a feedback body; a 400 RequestError naming the field.

    ``{"request_id": "<x-clawdbot-request-id>", "score": 0.0 to 1.0}``; ``score`` may also
    be a boolean (true: good, false: bad).
    """
    if not isinstance(body, dict):
        raise invalid("the request body must be a JSON object")
    answer_id = body.get("request_id")
    if not isinstance(answer_id, str) or not 0 < len(answer_id) <= MAX_ID_LENGTH:
        raise invalid("request_id must be the x-clawdbot-request-id of an answer", "request_id")
    score = body.get("score")
    if isinstance(score, bool):
        return answer_id, float(score)
    if not isinstance(score, int | float) or not 0.0 <= score <= 1.0:
        raise invalid("score must be a number from 0 (bad) to 1 (good)", "score")
    return answer_id, float(score)


class FeedbackResult(StrEnum):
    """What became of one feedback."""

    RECORDED = "recorded"
    UNKNOWN = "unknown"
    """No answer with that id in the window (never seen, expired or forgotten)."""
    DUPLICATE = "duplicate"
    """The answer was scored already (once per answer: the first score stands)."""


class Corrector(Protocol):
    """What takes a reward correction: the bandit the answer's reward went into."""

    def correct(self, arm: Any, context: tuple[float, ...], delta: float) -> None: ...


def quality_term(quality: float | None, weight: float) -> float:
    """The quality part of a reward: 0 for a good answer (1), -weight for a bad one (0);
    nothing when no quality is known."""
    if quality is None:
        return 0.0
    return -weight * (1.0 - min(max(quality, 0.0), 1.0))


@dataclass(slots=True)
class Remembered:
    """One answer, as feedback may still correct it."""

    at: float
    target: str
    reason: str
    arm: str | None = None
    context: tuple[float, ...] | None = None
    learner: Corrector | None = None
    """The bandit the reward went into (None: the answer was not the bandit's choice)."""
    quality_weight: float = 0.0
    applied: float = 0.0
    """The quality term already in the reward."""
    scored: bool = False
    on_score: Callable[[float], None] | None = None
    """Also told the score (the semantic router learns from scored local answers)."""


class FeedbackBook:
    """Answers awaiting feedback and recent conversations, both bounded in time and size."""

    def __init__(self, settings: Feedback, clock: Callable[[], float] = time.monotonic) -> None:
        self.settings = settings
        self._clock = clock
        self._answers: OrderedDict[str, Remembered] = OrderedDict()
        self._conversations: OrderedDict[str, tuple[float, str]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._answers)

    def _expire(self, now: float) -> None:
        window = self.settings.window_seconds
        answers = self._answers
        while answers and (
            len(answers) > self.settings.max_entries
            or now - next(iter(answers.values())).at > window
        ):
            answers.popitem(last=False)
        reask = self.settings.reask_window_seconds
        convs = self._conversations
        while convs and (
            len(convs) > self.settings.max_entries or now - next(iter(convs.values()))[0] > reask
        ):
            convs.popitem(last=False)

    def remember(self, answer_id: str, entry: Remembered) -> None:
        """Keep an answer for feedback (its ``at`` is the book's clock, seconds)."""
        self._answers[answer_id] = entry
        self._answers.move_to_end(answer_id)
        self._expire(entry.at)

    def now(self) -> float:
        return self._clock()

    def reasked(self, conversation: str, answer_id: str) -> str | None:
        """Note that ``answer_id`` answers ``conversation``; the id of the answer it repeats
        (asked within the re-ask window), if any."""
        if self.settings.reask_window_seconds <= 0:
            return None
        now = self._clock()
        self._expire(now)
        previous = self._conversations.pop(conversation, None)
        self._conversations[conversation] = (now, answer_id)
        return previous[1] if previous is not None else None

    def score(self, answer_id: str, score: float) -> tuple[FeedbackResult, Remembered | None]:
        """Apply a score in [0, 1] to a remembered answer: corrects the bandit's reward."""
        self._expire(self._clock())
        entry = self._answers.get(answer_id)
        if entry is None:
            return FeedbackResult.UNKNOWN, None
        if entry.scored:
            return FeedbackResult.DUPLICATE, entry
        entry.scored = True
        if entry.on_score is not None:
            entry.on_score(score)
        if entry.learner is not None and entry.context is not None and entry.arm is not None:
            term = quality_term(score, entry.quality_weight)
            entry.learner.correct(entry.arm, entry.context, term - entry.applied)
            entry.applied = term
        return FeedbackResult.RECORDED, entry
