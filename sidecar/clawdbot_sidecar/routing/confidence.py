"""How sure the local model was of its answer, from the answer's token log-probabilities.

The confidence of an answer is the geometric mean of its tokens' probabilities,
``exp(mean(logprob))``, in [0, 1]: the cascade literature's cheapest signal (FrugalGPT,
AutoMix score answers with a model; token probabilities need no second model). The local
model is asked for log-probabilities (``logprobs: true`` on chat, ``logprobs: 0`` on
completions, which vLLM and the project's runtime both answer); when the app did not ask
for them itself they are taken out of the answer before it sees it.

A streamed answer is judged on the tokens held so far (:class:`StreamMeter`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass
from typing import Any

__all__ = [
    "StreamMeter",
    "answer_confidence",
    "asks_logprobs",
    "strip_logprobs",
    "with_logprobs",
]


def asks_logprobs(body: Mapping[str, Any], chat: bool) -> bool:
    """Whether the app asked for log-probabilities itself."""
    value = body.get("logprobs")
    return bool(value) if chat else value is not None and value is not False


def with_logprobs(body: Mapping[str, Any], chat: bool) -> dict[str, Any]:
    """The request, asking for the chosen tokens' log-probabilities (if it did not)."""
    if asks_logprobs(body, chat):
        return dict(body)
    return {**body, "logprobs": True if chat else 0}


def _choice_logprobs(choice: Mapping[str, Any]) -> list[float] | None:
    lp = choice.get("logprobs")
    if not isinstance(lp, Mapping):
        return None
    content = lp.get("content")
    if isinstance(content, list):  # chat
        return [
            float(e["logprob"])
            for e in content
            if isinstance(e, Mapping) and isinstance(e.get("logprob"), int | float)
        ]
    tokens = lp.get("token_logprobs")
    if isinstance(tokens, list):  # completions
        return [float(v) for v in tokens if isinstance(v, int | float)]
    return None


def _geometric_mean(logprobs: list[float]) -> float:
    if not logprobs:
        return 0.0  # an empty answer is no answer
    mean = math.fsum(max(v, -100.0) for v in logprobs) / len(logprobs)
    return min(max(math.exp(mean), 0.0), 1.0)


def answer_confidence(body: Mapping[str, Any]) -> float | None:
    """The first choice's confidence; None when the answer has no log-probabilities."""
    choices = body.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], Mapping):
        return None
    values = _choice_logprobs(choices[0])
    return None if values is None else _geometric_mean(values)


def strip_logprobs(body: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """The answer (or chunk) without the log-probabilities the app did not ask for."""
    choices = body.get("choices")
    if isinstance(choices, list):
        for choice in choices:
            if isinstance(choice, MutableMapping) and "logprobs" in choice:
                choice["logprobs"] = None
    return body


@dataclass
class StreamMeter:
    """Counts a stream's tokens and their log-probabilities as chunks go by."""

    tokens: int = 0
    chunks_with_text: int = 0
    measured: bool = False
    _sum: float = 0.0

    def feed(self, chunk: Mapping[str, Any]) -> None:
        choices = chunk.get("choices")
        if not isinstance(choices, list):
            return
        for choice in choices:
            if not isinstance(choice, Mapping) or choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta")
            text = delta.get("content") if isinstance(delta, Mapping) else choice.get("text")
            if isinstance(text, str) and text:
                self.chunks_with_text += 1
            values = _choice_logprobs(choice)
            if values is not None:
                self.measured = True
                self.tokens += len(values)
                self._sum += math.fsum(max(v, -100.0) for v in values)

    @property
    def seen(self) -> int:
        """Tokens seen (chunks with text, when the stream carries no log-probabilities)."""
        return self.tokens if self.measured else self.chunks_with_text

    @property
    def confidence(self) -> float | None:
        if not self.measured:
            return None
        return _geometric_mean([self._sum / self.tokens] if self.tokens else [])
