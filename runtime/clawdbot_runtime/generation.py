"""Token-by-token text generation over a served ONNX language model.

Each step feeds the last ``context_length`` tokens through the model's batcher, so
concurrent generations share onnxruntime runs with each other and with v2 traffic. Sampling
is greedy at temperature 0, otherwise temperature + top-p (nucleus) from a seeded generator,
which makes seeded requests reproducible.
"""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass, field

import numpy as np

from clawdbot_runtime.dataplane import DataPlane
from clawdbot_runtime.errors import InvalidInput
from clawdbot_runtime.lm_spec import CharTokenizer, LanguageModelSpec
from clawdbot_runtime.repository import ServedModel
from clawdbot_runtime.tensors import Array


@dataclass(frozen=True)
class SamplingParams:
    """How to pick tokens and when to stop."""

    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    stop: Sequence[str] = field(default_factory=tuple)


@dataclass
class TextDelta:
    """A piece of generated text; the last one carries ``finish_reason``."""

    text: str
    finish_reason: str | None = None


@dataclass
class GenerationStats:
    """Token counts of one generation, filled in as it runs (OpenAI ``usage``)."""

    prompt_tokens: int = 0
    completion_tokens: int = 0


def language_model(served: ServedModel) -> LanguageModelSpec:
    """The model's generation spec; InvalidInput if it is not a text generation model."""
    if served.model.lm is None:
        raise InvalidInput(
            f"model '{served.model.name}' is not a text generation model "
            "(its version folder has no generation.json)",
            param="model",
        )
    return served.model.lm


def sample(logits: Array, temperature: float, top_p: float, rng: np.random.Generator) -> int:
    """Pick the next token: argmax at temperature 0, else temperature + nucleus sampling."""
    if temperature <= 0:
        return int(np.argmax(logits))
    scaled = logits.astype(np.float64) / temperature
    probs = np.exp(scaled - scaled.max())
    probs /= probs.sum()
    if top_p < 1.0:
        order = np.argsort(-probs, kind="stable")
        cumulative = np.cumsum(probs[order])
        # Keep the smallest prefix whose mass reaches top_p (always at least one token).
        keep = order[: int(np.searchsorted(cumulative, top_p)) + 1]
        mask = np.zeros_like(probs)
        mask[keep] = probs[keep]
        probs = mask / mask.sum()
    return int(rng.choice(len(probs), p=probs))


def _find_stop(text: str, stops: Sequence[str], start: int) -> int:
    """Where the earliest stop sequence begins at or after ``start``, or -1."""
    hits = [i for i in (text.find(stop, start) for stop in stops if stop) if i >= 0]
    return min(hits, default=-1)


def _held_back(text: str, stops: Sequence[str]) -> int:
    """Characters at the end of ``text`` that could be the start of a stop sequence."""
    longest = 0
    for stop in stops:
        for size in range(min(len(stop) - 1, len(text)), longest, -1):
            if text.endswith(stop[:size]):
                longest = size
                break
    return longest


class TextGenerator:
    """Runs generations for the /v1 routes."""

    def __init__(self, dataplane: DataPlane) -> None:
        self._dataplane = dataplane

    def encode(self, served: ServedModel, text: str) -> list[int]:
        """Prompt token ids for ``text``."""
        return CharTokenizer(language_model(served)).encode(text)

    async def generate(
        self,
        served: ServedModel,
        prompt_ids: list[int],
        params: SamplingParams,
        stats: GenerationStats,
    ) -> AsyncGenerator[TextDelta, None]:
        """Yield text as it is generated; stop sequences never appear in the output."""
        spec = language_model(served)
        tokenizer = CharTokenizer(spec)
        metrics = self._dataplane.metrics
        name = served.model.name
        rng = np.random.default_rng(params.seed)
        stats.prompt_tokens = len(prompt_ids)
        metrics.prompt_tokens.labels(model=name).inc(len(prompt_ids))
        context = [spec.bos_token_id] * spec.context_length + list(prompt_ids)
        text, emitted = "", 0
        finish = "length"
        started = time.perf_counter()
        with served.lease():
            for _ in range(params.max_tokens):
                window = np.array([context[-spec.context_length :]], dtype=np.int64)
                outputs = await self._dataplane.run(
                    served, {spec.input_name: window}, [spec.output_name]
                )
                logits = outputs[spec.output_name][0]
                if logits.ndim == 2:  # [seq, vocab]: the last position predicts the next token
                    logits = logits[-1]
                token = sample(logits, params.temperature, params.top_p, rng)
                stats.completion_tokens += 1
                metrics.generated_tokens.labels(model=name).inc()
                if token == spec.eos_token_id:
                    finish = "stop"
                    break
                context.append(token)
                text += tokenizer.decode_token(token)
                hit = _find_stop(text, params.stop, emitted)
                if hit >= 0:
                    text = text[:hit]
                    finish = "stop"
                    break
                safe = len(text) - _held_back(text, params.stop)
                if safe > emitted:
                    yield TextDelta(text[emitted:safe])
                    emitted = safe
        elapsed = time.perf_counter() - started
        if stats.completion_tokens and elapsed > 0:
            metrics.tokens_per_second.labels(model=name).observe(stats.completion_tokens / elapsed)
        yield TextDelta(text[emitted:], finish_reason=finish)
