"""Cheap request features the router decides on: size and complexity.

The text comes from the one walk over the request (:mod:`clawdbot_sidecar.redaction.walker`),
so routing measures what redaction rewrites.

Token counts are estimated at four characters a token (OpenAI's rule of thumb for English;
CJK text runs closer to one character a token, so those characters count as one each). An
exact tokenizer would cost more than the whole routing decision and differs per model.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_CJK = re.compile(r"[\u3000-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af]")
# Words that tend to mark requests needing reasoning rather than recall.
_HARD_WORDS = re.compile(
    r"\b(prove|derive|analy[sz]e|step by step|explain why|compare|optimi[sz]e|refactor|"
    r"debug|architecture|trade-?offs?|theorem|algorithm|complexity)\b",
    re.IGNORECASE,
)
_CODE = re.compile(r"```|\bdef |\bclass |\bfunction\b|#include|=>|\{\s*\n")
_MATH = re.compile(r"[∑∫√≤≥≠]|\\frac|\\sum|\b\d+\s*[\^*/]\s*\d+")
# Prefilters for ASCII text: each pattern's matches contain one of these (the hard words in
# lower case), so a text with none skips the regex. Non-ASCII text always runs it: case-
# insensitive matching also folds a few non-ASCII letters onto ASCII ones (the long s).
_HARD_STEMS = (
    "prove", "deriv", "analy", "step by step", "explain why", "compar", "optimi", "refactor",
    "debug", "architecture", "trade", "theorem", "algorithm", "complexity",
)  # fmt: skip
_CODE_NEEDLES = ("```", "def ", "class ", "function", "#include", "=>", "{")
_MATH_NEEDLES = ("^", "*", "/", "\\")


def estimate_tokens(text: str) -> int:
    """Estimated tokens of ``text`` (see the module docstring)."""
    cjk = len(_CJK.findall(text)) if not text.isascii() else 0
    return max(1, (len(text) - cjk + 3) // 4 + cjk) if text else 0


def complexity(text: str, turns: int) -> float:
    """A score in [0, 1]: reasoning words, code, math, long multi-turn context."""
    sample = text[-8000:]  # the latest part carries the question; bound the regex work
    ascii_only = sample.isascii()
    lowered = sample.lower() if ascii_only else ""
    score = 0.0
    if not ascii_only or _any_in(lowered, _HARD_STEMS):
        score += min(len(_HARD_WORDS.findall(sample)), 3) * 0.15
    if (not ascii_only or _any_in(sample, _CODE_NEEDLES)) and _CODE.search(sample):
        score += 0.25
    if (not ascii_only or _any_in(sample, _MATH_NEEDLES)) and _MATH.search(sample):
        score += 0.15
    score += min(turns, 10) * 0.015
    return min(score, 1.0)


def _any_in(text: str, needles: tuple[str, ...]) -> bool:
    return any(n in text for n in needles)


@dataclass(frozen=True)
class Features:
    """What the decision looks at."""

    model: str
    tokens: int
    complexity: float
    pii: dict[str, int]
    headers: dict[str, str]
    stream: bool
