"""Whether the local model is good enough for a prompt, predicted from its embedding.

The semantic router embeds the prompt with a sentence encoder (all-MiniLM-L6-v2 served by
the project's runtime on ``/v1/embeddings``, see runtime/clawdbot_runtime/bert_onnx.py) and
predicts the probability that the local model's answer will do, with a logistic regression
over the embedding fitted on labelled examples (prompts marked ``local`` or ``cloud``) and
then moved by feedback: each scored answer whose prompt was embedded is one more example
(an online gradient step, so memory stays the weights).

The prediction replaces the keyword complexity score as the bandit's context value 2
(``1 - P(local is good enough)``, so 0 still means easy); without an encoder, or until the
examples are embedded, the keyword score stays.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

__all__ = ["Example", "LocalEnough", "parse_examples"]

Vector = npt.NDArray[np.float32]

LABELS = {"local": 1.0, "cloud": 0.0}
# Ridge strength and steps of the batch fit; the learning rate of feedback steps.
L2 = 1e-3
FIT_STEPS = 300
FIT_RATE = 2.0
FEEDBACK_RATE = 0.05
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


def _sigmoid(z: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    result: npt.NDArray[np.float64] = 1.0 / (1.0 + np.exp(-np.clip(z, -30, 30)))
    return result


class LocalEnough:
    """P(the local answer is good enough | prompt embedding): logistic regression."""

    def __init__(self, dim: int) -> None:
        self.weights = np.zeros(dim, dtype=np.float64)
        self.bias = 0.0
        self.examples = 0
        self.feedback = 0

    def fit(
        self, vectors: Sequence[Vector] | npt.NDArray[np.float32], local: Sequence[bool]
    ) -> None:
        """Fit on labelled examples (full-batch gradient descent, ridge-regularised)."""
        x = np.asarray(vectors, dtype=np.float64)
        y = np.asarray(local, dtype=np.float64)
        if len(x) == 0:
            return
        # Balance the classes, so a skewed example set doesn't tilt every prediction.
        pos = max(float(y.sum()), 1.0)
        neg = max(float(len(y) - y.sum()), 1.0)
        weight = np.where(y > 0, len(y) / (2 * pos), len(y) / (2 * neg))
        w, b = np.zeros(x.shape[1]), 0.0
        for _ in range(FIT_STEPS):
            err = (_sigmoid(x @ w + b) - y) * weight
            w -= FIT_RATE * (x.T @ err / len(y) + L2 * w)
            b -= FIT_RATE * float(err.mean())
        self.weights, self.bias, self.examples = w, b, len(y)

    def predict(self, vector: Vector) -> float:
        """Probability that local is good enough, 0 to 1."""
        z = float(np.dot(self.weights, vector.astype(np.float64))) + self.bias
        return 1.0 / (1.0 + math.exp(-max(min(z, 30.0), -30.0)))

    def learn(self, vector: Vector, score: float) -> None:
        """One feedback: the local answer to this prompt scored ``score`` (0 to 1)."""
        x = vector.astype(np.float64)
        err = self.predict(vector) - score
        self.weights -= FEEDBACK_RATE * (err * x + L2 * self.weights)
        self.bias -= FEEDBACK_RATE * err
        self.feedback += 1
