"""The semantic router's classifier: logistic regression over prompt embeddings (numpy).

Imported only when a policy enables the semantic router (see :mod:`.semantic`), so other
sidecars don't load an array library.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

__all__ = ["LocalEnough"]

# Ridge strength and steps of the batch fit; the learning rate of feedback steps.
L2 = 1e-3
FIT_STEPS = 300
FIT_RATE = 2.0
FEEDBACK_RATE = 0.05


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
        self, vectors: Sequence[Sequence[float]] | npt.NDArray[np.float32], local: Sequence[bool]
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

    def predict(self, vector: Sequence[float] | npt.NDArray[np.float32]) -> float:
        """Probability that local is good enough, 0 to 1."""
        z = float(np.dot(self.weights, np.asarray(vector, dtype=np.float64))) + self.bias
        return 1.0 / (1.0 + math.exp(-max(min(z, 30.0), -30.0)))

    def learn(self, vector: Sequence[float] | npt.NDArray[np.float32], score: float) -> None:
        """One feedback: the local answer to this prompt scored ``score`` (0 to 1)."""
        x = np.asarray(vector, dtype=np.float64)
        err = self.predict(vector) - score
        self.weights -= FEEDBACK_RATE * (err * x + L2 * self.weights)
        self.bias -= FEEDBACK_RATE * err
        self.feedback += 1


class SimilarityStore:
    """The semantic cache's entries: unit vectors of whole conversations, their guards and
    answers, at most ``max_entries`` (the oldest replaced first), each for ``ttl_s``.

    A hit needs a cosine similarity of at least ``min_similarity`` *and* the same guard:
    the negations and the numbers of the conversation (:func:`guard`), so "is X safe" never
    answers "is X not safe", nor "2 tablets" "20 tablets", however close the vectors.
    """

    def __init__(self, dim: int, max_entries: int, ttl_s: float, min_similarity: float) -> None:
        self.vectors = np.zeros((max_entries, dim), dtype=np.float32)
        self.meta: list[tuple[float, str, object] | None] = [None] * max_entries
        self.next = 0
        self.ttl_s = ttl_s
        self.min_similarity = min_similarity

    def get(
        self, vector: Sequence[float], guard_key: str, now: float
    ) -> tuple[object, float] | None:
        """The stored value and its similarity, for the closest live entry with the same
        guard at or over the threshold; None otherwise."""
        sims = self.vectors @ np.asarray(vector, dtype=np.float32)
        for i in np.argsort(-sims)[:8]:
            entry = self.meta[int(i)]
            similarity = float(sims[int(i)])
            if similarity < self.min_similarity:
                break
            if entry is None or now - entry[0] > self.ttl_s or entry[1] != guard_key:
                continue
            return entry[2], similarity
        return None

    def put(self, vector: Sequence[float], guard_key: str, value: object, now: float) -> None:
        slot = self.next
        self.vectors[slot] = np.asarray(vector, dtype=np.float32)
        self.meta[slot] = (now, guard_key, value)
        self.next = (slot + 1) % len(self.meta)
