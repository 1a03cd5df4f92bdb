"""Token-by-token text generation over a served ONNX language model.

Two contracts generate text (see model.OnnxModel for how a folder picks one):

- the project's char-level contract (lm_spec.py): each step feeds the last
  ``context_length`` tokens, so a step costs the same however long the text grows;
- the Optimum decoder contract (decoder_spec.py): the prompt runs once with an empty KV
  cache (prefill), then each step feeds one token and the cache the previous step returned.

Every step goes through the model's batcher, so concurrent generations whose steps have the
same shapes (same prompt length at prefill, same cache length after) share onnxruntime runs
with each other and with v2 traffic. Sampling is greedy at temperature 0, otherwise
temperature + top-p (nucleus) from a seeded generator, which makes seeded requests
reproducible.
"""

from __future__ import annotations

import math
import time
from abc import ABC, abstractmethod
from collections.abc import AsyncGenerator, Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from clawdbot_runtime.dataplane import DataPlane
from clawdbot_runtime.decoder_spec import LOGITS
from clawdbot_runtime.errors import ContextLengthExceeded, InvalidInput
from clawdbot_runtime.hf_text import ChatTemplateError
from clawdbot_runtime.lm_spec import CharTokenizer, LanguageModelSpec
from clawdbot_runtime.model import DecoderLM
from clawdbot_runtime.repository import ServedModel
from clawdbot_runtime.tensors import Array

# A chat message as the generator sees it: {"role": ..., "content": ...}.
Message = Mapping[str, str]


@dataclass(frozen=True)
class SamplingParams:
    """How to pick tokens and when to stop."""

    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    stop: Sequence[str] = field(default_factory=tuple)
    ignore_eos: bool = False  # end-of-text tokens are then never sampled
    logprobs: int | None = None
    """Report each generated token's log-probability and this many most likely
    alternatives (0 to :data:`MAX_TOP_LOGPROBS`); None: no log-probabilities."""


# OpenAI's limit on top_logprobs.
MAX_TOP_LOGPROBS = 20


@dataclass(frozen=True)
class TokenLogprob:
    """One generated token, its log-probability and the most likely alternatives.

    Log-probabilities are of the distribution the token was drawn from before temperature
    and top-p (what OpenAI and vLLM report): a model's confidence, not the sampler's."""

    token: str
    logprob: float
    top: tuple[tuple[str, float], ...] = ()


@dataclass
class TextDelta:
    """A piece of generated text; the last one carries ``finish_reason``."""

    text: str
    finish_reason: str | None = None
    logprobs: list[TokenLogprob] = field(default_factory=list)
    """The tokens generated since the previous delta (when logprobs were asked for)."""


@dataclass
class GenerationStats:
    """Token counts of one generation, filled in as it runs (OpenAI ``usage``)."""

    prompt_tokens: int = 0
    completion_tokens: int = 0


class Steps(ABC):
    """One generation's model state: feed tokens, get the next token's logits."""

    @abstractmethod
    async def advance(self, tokens: list[int]) -> Array:
        """Run ``tokens`` (the prompt, then one token at a time); logits [vocab] after them."""


class Detokenizer(ABC):
    """Generated token ids -> text, piece by piece."""

    @abstractmethod
    def add(self, token: int) -> str:
        """Text that ``token`` completes."""

    def flush(self) -> str:
        """Text still held back when the generation ends."""
        return ""


class TextModel(ABC):
    """The text side of a served model: prompts to tokens, tokens to text, stepping."""

    @abstractmethod
    def encode(self, text: str) -> list[int]:
        """Token ids of a completion prompt."""

    @abstractmethod
    def chat_ids(self, messages: Sequence[Message]) -> list[int]:
        """Token ids of the chat prompt for ``messages``, ending with the assistant's turn."""

    @abstractmethod
    def stop_ids(self) -> frozenset[int]:
        """Tokens that end a generation (finish_reason ``stop``)."""

    @abstractmethod
    def room(self, prompt_tokens: int) -> int | None:
        """Most tokens the context leaves after the prompt; None when unlimited."""

    @abstractmethod
    def detokenizer(self, prompt_ids: list[int]) -> Detokenizer:
        """A detokenizer for the completion of ``prompt_ids``."""

    @abstractmethod
    def steps(self, dataplane: DataPlane, served: ServedModel) -> Steps:
        """Fresh model state for one generation."""

    @abstractmethod
    def token_text(self, token: int) -> str:
        """The text of one token on its own (log-probability entries name tokens by it)."""

    def check_prompt(self, prompt_ids: list[int], param: str) -> None:
        """ContextLengthExceeded (400) when the prompt leaves no room for one token."""
        if not prompt_ids:
            raise InvalidInput(
                "the prompt is empty and the model has no BOS token to start from", param=param
            )
        room = self.room(len(prompt_ids))
        if room is not None and room < 1:
            context = len(prompt_ids) + room
            raise ContextLengthExceeded(
                f"this model's maximum context length is {context} tokens, and the prompt has "
                f"{len(prompt_ids)}; shorten the prompt to at most {context - 1} tokens",
                param=param,
            )


# -- the char-level contract ----------------------------------------------------------------


def chat_prompt(template: str, assistant_prefix: str, messages: Sequence[Message]) -> str:
    """Render messages with a char-level model's template, ending with the assistant's turn."""
    rendered = "".join(template.format(role=m["role"], content=m["content"]) for m in messages)
    return rendered + assistant_prefix


class _CharText(TextModel):
    def __init__(self, spec: LanguageModelSpec) -> None:
        self._spec = spec
        self._tokenizer = CharTokenizer(spec)

    def encode(self, text: str) -> list[int]:
        return self._tokenizer.encode(text)

    def chat_ids(self, messages: Sequence[Message]) -> list[int]:
        spec = self._spec
        return self.encode(chat_prompt(spec.chat_template, spec.assistant_prefix, messages))

    def stop_ids(self) -> frozenset[int]:
        return frozenset({self._spec.eos_token_id})

    def room(self, prompt_tokens: int) -> int | None:
        return None  # the window slides: a char-level generation is never out of context

    def check_prompt(self, prompt_ids: list[int], param: str) -> None:
        return None  # an empty prompt starts from the BOS padding

    def detokenizer(self, prompt_ids: list[int]) -> Detokenizer:
        return _CharDetokenizer(self._tokenizer)

    def steps(self, dataplane: DataPlane, served: ServedModel) -> Steps:
        return _WindowSteps(dataplane, served, self._spec)

    def token_text(self, token: int) -> str:
        return self._tokenizer.decode_token(token)


class _CharDetokenizer(Detokenizer):
    def __init__(self, tokenizer: CharTokenizer) -> None:
        self._tokenizer = tokenizer

    def add(self, token: int) -> str:
        return self._tokenizer.decode_token(token)


class _WindowSteps(Steps):
    """Feeds the last ``context_length`` tokens, left-padded with BOS, every step."""

    def __init__(self, dataplane: DataPlane, served: ServedModel, spec: LanguageModelSpec) -> None:
        self._dataplane = dataplane
        self._served = served
        self._spec = spec
        self._context = [spec.bos_token_id] * spec.context_length

    async def advance(self, tokens: list[int]) -> Array:
        spec = self._spec
        self._context.extend(tokens)
        window = np.array([self._context[-spec.context_length :]], dtype=np.int64)
        outputs = await self._dataplane.run(
            self._served, {spec.input_name: window}, [spec.output_name]
        )
        logits: Array = outputs[spec.output_name][0]
        return logits[-1] if logits.ndim == 2 else logits  # [seq, vocab]: the last position


# -- the Optimum decoder contract -----------------------------------------------------------


class _DecoderText(TextModel):
    def __init__(self, decoder: DecoderLM) -> None:
        self._decoder = decoder

    def encode(self, text: str) -> list[int]:
        spec, tokenizer = self._decoder.spec, self._decoder.tokenizer
        ids = tokenizer.encode(text, add_special_tokens=True)
        if not ids and spec.bos_token_id is not None:
            ids = [spec.bos_token_id]  # an empty prompt: generate from the start of a text
        return ids

    def chat_ids(self, messages: Sequence[Message]) -> list[int]:
        tokenizer = self._decoder.tokenizer
        try:
            prompt = tokenizer.render_chat(messages)
        except ChatTemplateError as exc:
            raise InvalidInput(str(exc), param="messages") from None
        # The template spells out BOS and the turn markers itself (as vLLM does too).
        return tokenizer.encode(prompt, add_special_tokens=False)

    def stop_ids(self) -> frozenset[int]:
        return frozenset(self._decoder.spec.eos_token_ids)

    def room(self, prompt_tokens: int) -> int | None:
        return self._decoder.spec.context_length - prompt_tokens

    def detokenizer(self, prompt_ids: list[int]) -> Detokenizer:
        return _HfDetokenizer(self._decoder, prompt_ids)

    def steps(self, dataplane: DataPlane, served: ServedModel) -> Steps:
        return _CacheSteps(dataplane, served, self._decoder)

    def token_text(self, token: int) -> str:
        return self._decoder.tokenizer.decode([token])


class _HfDetokenizer(Detokenizer):
    def __init__(self, decoder: DecoderLM, prompt_ids: list[int]) -> None:
        self._decoder = decoder.tokenizer.decoder(prompt_ids)

    def add(self, token: int) -> str:
        return self._decoder.add(token)

    def flush(self) -> str:
        return self._decoder.flush()


class _CacheSteps(Steps):
    """Prefill with an empty cache, then one token per step with the returned cache."""

    def __init__(self, dataplane: DataPlane, served: ServedModel, decoder: DecoderLM) -> None:
        self._dataplane = dataplane
        self._served = served
        self._spec = decoder.spec
        self._past = decoder.spec.empty_past()
        self._length = 0

    async def advance(self, tokens: list[int]) -> Array:
        spec = self._spec
        feeds = spec.feeds(tokens, self._past, self._length)
        outputs = await self._dataplane.run(self._served, feeds, spec.output_names)
        self._past = [outputs[name] for name in spec.present_names]
        self._length += len(tokens)
        logits: Array = outputs[LOGITS][0]
        return logits[-1] if logits.ndim == 2 else logits  # [seq, vocab]: the last position


def text_model(served: ServedModel) -> TextModel:
    """The model's text side; InvalidInput if it is not a text generation model."""
    model = served.model
    if model.decoder is not None:
        return _DecoderText(model.decoder)
    if model.lm is not None:
        return _CharText(model.lm)
    if model.embedding is not None:
        raise InvalidInput(
            f"model '{model.name}' is an embedding model, not a text generation model; send "
            "its requests to /v1/embeddings",
            param="model",
        )
    raise InvalidInput(
        f"model '{model.name}' is not a text generation model (its version folder has "
        "neither generation.json nor the config.json and tokenizer.json of a causal LM)",
        param="model",
    )


# -- sampling and the generation loop -------------------------------------------------------


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


def log_softmax(logits: Array) -> Array:
    """Log-probabilities of ``logits`` (float64, stable)."""
    shifted = logits.astype(np.float64) - float(np.max(logits))
    result: Array = shifted - math.log(float(np.exp(shifted).sum()))
    return result


def token_logprob(
    logits: Array, token: int, top: int, token_text: Callable[[int], str]
) -> TokenLogprob:
    """The log-probability entry of ``token`` drawn from ``logits``, with ``top``
    alternatives (most likely first)."""
    logp = log_softmax(logits)
    alternatives: tuple[tuple[str, float], ...] = ()
    if top > 0:
        best = np.argpartition(-logp, min(top, len(logp) - 1))[:top]
        best = best[np.argsort(-logp[best], kind="stable")]
        alternatives = tuple((token_text(int(i)), float(logp[i])) for i in best)
    return TokenLogprob(token_text(token), float(logp[token]), alternatives)


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

    async def generate(
        self,
        served: ServedModel,
        prompt_ids: list[int],
        params: SamplingParams,
        stats: GenerationStats,
    ) -> AsyncGenerator[TextDelta, None]:
        """Yield text as it is generated; stop sequences never appear in the output.

        A decoder stops at its context length (finish_reason ``length``) even when
        ``max_tokens`` asks for more; callers check the prompt with ``check_prompt`` first.
        """
        text_side = text_model(served)
        metrics = self._dataplane.metrics
        name = served.model.name
        rng = np.random.default_rng(params.seed)
        stop_ids = text_side.stop_ids()
        banned = sorted(stop_ids) if params.ignore_eos else []
        detokenizer = text_side.detokenizer(prompt_ids)
        room = text_side.room(len(prompt_ids))
        limit = params.max_tokens if room is None else max(0, min(params.max_tokens, room))
        stats.prompt_tokens = len(prompt_ids)
        metrics.prompt_tokens.labels(model=name).inc(len(prompt_ids))
        text, emitted = "", 0
        pending: list[TokenLogprob] = []  # log-probabilities of tokens not yet yielded
        finish = "length"
        started = time.perf_counter()
        with served.lease():
            steps = text_side.steps(self._dataplane, served)
            logits = await steps.advance(prompt_ids) if limit > 0 else None
            for produced in range(1, limit + 1):
                assert logits is not None
                if banned:
                    logits = logits.copy()
                    logits[banned] = -np.inf
                token = sample(logits, params.temperature, params.top_p, rng)
                if params.logprobs is not None and token not in stop_ids:
                    pending.append(
                        token_logprob(logits, token, params.logprobs, text_side.token_text)
                    )
                if produced == 1:
                    metrics.time_to_first_token.labels(model=name).observe(
                        time.perf_counter() - started
                    )
                stats.completion_tokens += 1
                metrics.generated_tokens.labels(model=name).inc()
                ended = token in stop_ids
                if ended:
                    text += detokenizer.flush()
                else:
                    text += detokenizer.add(token)
                    if produced == limit:
                        text += detokenizer.flush()
                hit = _find_stop(text, params.stop, emitted)
                if hit >= 0:
                    text = text[:hit]
                    finish = "stop"
                    break
                if ended:
                    finish = "stop"
                    break
                safe = len(text) - _held_back(text, params.stop)
                if safe > emitted:
                    yield TextDelta(text[emitted:safe], logprobs=pending)
                    emitted, pending = safe, []
                if produced < limit:
                    logits = await steps.advance([token])
        elapsed = time.perf_counter() - started
        if stats.completion_tokens and elapsed > 0:
            metrics.tokens_per_second.labels(model=name).observe(stats.completion_tokens / elapsed)
        yield TextDelta(text[emitted:], finish_reason=finish, logprobs=pending)
