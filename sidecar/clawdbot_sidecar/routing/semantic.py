"""Whether the local model is good enough for a prompt, predicted from its embedding.

The semantic router embeds the prompt with a sentence encoder (all-MiniLM-L6-v2 served by
the project's runtime on ``/v1/embeddings``, see runtime/clawdbot_runtime/bert_onnx.py) and
predicts the probability that the local model's answer will do, with a logistic regression
over the embedding fitted on labelled examples (prompts marked ``local`` or ``cloud``) and
then moved by feedback: each scored answer whose prompt was embedded is one more example
(an online gradient step, so memory stays the weights).

The classifier is in :mod:`clawdbot_sidecar.routing.semantic_model` (numpy, imported only
by sidecars whose policy enables this). The prediction replaces the keyword complexity
score as the bandit's context value 2 (``1 - P(local is good enough)``, so 0 still means
easy); without an encoder, or until the examples are embedded, the keyword score stays.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from clawdbot_api.v1alpha1.routingpolicy import SemanticCache

if TYPE_CHECKING:
    from clawdbot_sidecar.routing.semantic_model import LocalEnough, SimilarityStore

__all__ = ["Example", "SemanticCacheState", "SemanticState", "guard", "parse_examples"]

log = logging.getLogger("clawdbot.sidecar")

Vector = Sequence[float]

LABELS = {"local": 1.0, "cloud": 0.0}
# Prompt text embedded per request: the latest part (the question is at the end), short
# enough for the encoder's 256 tokens.
MAX_CHARS = 900
MAX_EXAMPLES = 5000


@dataclass(frozen=True)
class Example:
    prompt: str
    local: bool
    """True: the local model answers this kind of prompt well enough."""


def parse_examples(text: str) -> list[Example]:
    """Examples from JSON lines (``{"prompt": ..., "label": "local"|"cloud"}``) or from a
    JSON array of such objects; raises ValueError naming the bad line."""
    stripped = text.strip()
    items: Iterable[object]
    if stripped.startswith("["):
        items = json.loads(stripped)
    else:
        items = [json.loads(line) for line in stripped.splitlines() if line.strip()]
    out: list[Example] = []
    for n, item in enumerate(items, 1):
        if not isinstance(item, dict):
            raise ValueError(f"example {n}: not an object")
        prompt, label = item.get("prompt"), item.get("label")
        if not isinstance(prompt, str) or not prompt or label not in LABELS:
            raise ValueError(f'example {n}: needs "prompt" and "label" (local or cloud)')
        out.append(Example(prompt, label == "local"))
        if len(out) > MAX_EXAMPLES:
            raise ValueError(f"more than {MAX_EXAMPLES} examples")
    return out


# An example set that could not be embedded is tried again after this long.
RETRY_S = 30.0
EMBED_BATCH = 32

Embed = Callable[[str, list[str]], Awaitable[list[list[float]]]]


class SemanticState:
    """One policy's semantic router: its examples, embedded once in the background (the
    encoder is a local endpoint that may not be up yet), and the classifier fitted on them."""

    def __init__(self, model: str, examples: list[Example]) -> None:
        self.model = model
        self.examples = examples
        self.router: LocalEnough | None = None
        self._task: asyncio.Task[None] | None = None
        self._failed_at: float | None = None

    @property
    def ready(self) -> bool:
        return self.router is not None

    def start(self, embed: Embed) -> None:
        """Embed the examples and fit, in the background (once; again after a failure)."""
        now = time.monotonic()
        if self._task is not None and not self._task.done():
            return
        if self._failed_at is not None and now - self._failed_at < RETRY_S:
            return
        self._task = asyncio.get_running_loop().create_task(self._prepare(embed))

    async def _prepare(self, embed: Embed) -> None:
        # numpy only in sidecars whose policy turns the semantic router on.
        from clawdbot_sidecar.routing.semantic_model import LocalEnough  # noqa: PLC0415

        try:
            prompts = [e.prompt[-MAX_CHARS:] for e in self.examples]
            vectors: list[list[float]] = []
            for i in range(0, len(prompts), EMBED_BATCH):
                vectors.extend(await embed(self.model, prompts[i : i + EMBED_BATCH]))
            if not vectors:
                raise ValueError("no examples")
            router = LocalEnough(dim=len(vectors[0]))
            router.fit(vectors, [e.local for e in self.examples])
            self.router = router
            log.info(
                "semantic router ready: %d examples embedded with %s", len(prompts), self.model
            )
        except Exception as exc:  # the encoder not up yet, or not an encoder: keywords stay
            self._failed_at = time.monotonic()
            log.warning(
                "semantic router: the examples could not be embedded with %s (%s); the "
                "keyword complexity score is used meanwhile",
                self.model,
                exc,
            )

    def close(self) -> None:
        if self._task is not None:
            self._task.cancel()


# Words that turn a question around; a hit needs the same set of them on both sides.
_NEGATIONS = re.compile(
    r"\b(not|no|never|none|nothing|neither|nor|without|cannot|except|"
    r"\w+n't|isnt|dont|doesnt|cant|wont)\b",
    re.IGNORECASE,
)
_NUMBERS = re.compile(r"\d+(?:[.,]\d+)*")


def guard(text: str) -> str:
    """What two conversations must share for a semantic-cache hit besides similarity: the
    same negation words (as a set) and the same numbers (in order)."""
    negations = sorted({m.lower().replace("'", "") for m in _NEGATIONS.findall(text)})
    return f"{','.join(negations)}|{','.join(_NUMBERS.findall(text))}"


class SemanticCacheState:
    """The semantic cache of one policy in this pod (so partitioned by policy and
    namespace); its store is made on the first embedding, which gives the dimension."""

    def __init__(self, model: str, settings: SemanticCache) -> None:
        self.model = model
        self.settings = settings
        self._store: SimilarityStore | None = None

    def _ready(self, dim: int) -> SimilarityStore:
        if self._store is None:
            from clawdbot_sidecar.routing.semantic_model import SimilarityStore  # noqa: PLC0415

            s = self.settings
            self._store = SimilarityStore(dim, s.max_entries, s.ttl_seconds, s.min_similarity)
        return self._store

    def get(self, vector: Vector, key: str) -> tuple[object, float] | None:
        return self._ready(len(vector)).get(vector, key, time.monotonic())

    def put(self, vector: Vector, key: str, value: object) -> None:
        self._ready(len(vector)).put(vector, key, value, time.monotonic())
