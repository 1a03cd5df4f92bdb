"""OpenAI-compatible ``/v1`` routes for the text models of the repository.

``/v1/completions`` and ``/v1/chat/completions`` (with ``stream: true`` as server-sent
events in OpenAI's chunk format, ending ``data: [DONE]``, and ``usage``) for the models that
generate text, ``/v1/embeddings`` for the encoders, and ``/v1/models``, so the routing
sidecar sends the same requests to an ONNX pod as to a vLLM pod. Prompt, completion and
input text are never logged.
"""

from __future__ import annotations

import base64
import contextlib
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

import orjson
from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from clawdbot_api.openai_wire import SSE_DONE, sse_event
from clawdbot_runtime.dataplane import DataPlane
from clawdbot_runtime.embeddings import Embedder, parse_input
from clawdbot_runtime.errors import InferenceError, InvalidInput
from clawdbot_runtime.generation import (
    MAX_TOP_LOGPROBS,
    GenerationStats,
    SamplingParams,
    TextGenerator,
    TextModel,
    TokenLogprob,
    text_model,
)
from clawdbot_runtime.repository import ServedModel
from clawdbot_runtime.rest import DATAPLANE_KEY, error_body, read_json

GENERATOR_KEY = web.AppKey("generator", TextGenerator)
EMBEDDER_KEY = web.AppKey("embedder", Embedder)

# Upper bound on max_tokens: every token is a model run (a cheap one with a KV cache, a
# whole window without), and an unbounded request would hold a queue slot for minutes.
# Decoders are further bounded by their context length.
MAX_TOKENS_LIMIT = 4096
# Chat requests without max_tokens mean "until the model stops"; cap them at this.
DEFAULT_CHAT_MAX_TOKENS = 256
# OpenAI's limits on stop sequences and choices per request.
MAX_STOP_SEQUENCES = 4
MAX_CHOICES = 16
# OpenAI's limit on a completion request's logprobs (alternatives per token).
MAX_COMPLETION_LOGPROBS = 5

_Body = TypeVar("_Body", bound=BaseModel)


class StreamOptions(BaseModel):
    """OpenAI ``stream_options``."""

    include_usage: bool = False


class _Sampling(BaseModel):
    # Unknown OpenAI fields (user, penalties, logit_bias...) are accepted and ignored, as
    # vLLM does, so SDK defaults never turn into errors.
    model_config = ConfigDict(extra="ignore")

    model: str
    temperature: float = Field(default=1.0, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    n: int = Field(default=1, ge=1, le=MAX_CHOICES)
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = None
    seed: int | None = None
    # vLLM's extension (OpenAI has no such field): generate max_tokens whatever the model
    # says, for benchmarks and load tests that need fixed-length completions.
    ignore_eos: bool = False

    def top_logprobs_asked(self) -> int | None:
        """Alternatives per token to report; None: no log-probabilities."""
        return None

    def sampling(self, max_tokens: int, index: int) -> SamplingParams:
        """Sampling parameters for choice ``index`` (seeded choices differ, yet repeat)."""
        if max_tokens > MAX_TOKENS_LIMIT:
            raise InvalidInput(
                f"max_tokens is {max_tokens}; this server allows at most {MAX_TOKENS_LIMIT}",
                param="max_tokens",
            )
        stops = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        if len(stops) > MAX_STOP_SEQUENCES:
            raise InvalidInput(
                f"at most {MAX_STOP_SEQUENCES} stop sequences are allowed", param="stop"
            )
        return SamplingParams(
            max_tokens=max_tokens,
            temperature=self.temperature,
            top_p=self.top_p,
            seed=None if self.seed is None else self.seed + index,
            stop=tuple(s for s in stops if s),
            ignore_eos=self.ignore_eos,
            logprobs=self.top_logprobs_asked(),
        )

    @property
    def include_usage(self) -> bool:
        """Whether a stream ends with a usage chunk (OpenAI sends it only on request)."""
        return self.stream_options is not None and self.stream_options.include_usage


class CompletionRequest(_Sampling):
    """Body of ``POST /v1/completions``."""

    prompt: str | list[str]
    max_tokens: int = Field(default=16, ge=0)
    echo: bool = False
    logprobs: int | None = Field(default=None, ge=0, le=MAX_COMPLETION_LOGPROBS)
    """Log-probabilities of each token and of this many alternatives (OpenAI's legacy
    completions field)."""

    def top_logprobs_asked(self) -> int | None:
        return self.logprobs


class ChatMessage(BaseModel):
    """One chat message; content may be a string or a list of text parts."""

    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[dict[str, Any]] | None = None

    def text(self) -> str:
        """The message's text (text parts joined)."""
        if self.content is None or isinstance(self.content, str):
            return self.content or ""
        parts = []
        for part in self.content:
            if part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise InvalidInput("only text content parts are supported", param="messages")
            parts.append(part["text"])
        return "".join(parts)


class ChatCompletionRequest(_Sampling):
    """Body of ``POST /v1/chat/completions``."""

    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=0)
    max_completion_tokens: int | None = Field(default=None, ge=0)
    logprobs: bool | None = None
    top_logprobs: int | None = Field(default=None, ge=0, le=MAX_TOP_LOGPROBS)

    def top_logprobs_asked(self) -> int | None:
        if self.top_logprobs is not None and not self.logprobs:
            raise InvalidInput("top_logprobs requires logprobs to be true", param="top_logprobs")
        return (self.top_logprobs or 0) if self.logprobs else None

    def token_budget(self) -> int:
        """max_completion_tokens (the newer name) wins over max_tokens; else the default."""
        for value in (self.max_completion_tokens, self.max_tokens):
            if value is not None:
                return value
        return DEFAULT_CHAT_MAX_TOKENS


class EmbeddingRequest(BaseModel):
    """Body of ``POST /v1/embeddings``; ``user`` and unknown fields are ignored."""

    model_config = ConfigDict(extra="ignore")

    model: str
    # A string, strings, token ids or lists of token ids: embeddings.parse_input checks it,
    # so each mistake gets its own message rather than a union's list of failures.
    input: Any
    encoding_format: Literal["float", "base64"] | None = None
    dimensions: int | None = Field(default=None, ge=1)


def _parse(model: type[_Body], body: dict[str, Any]) -> _Body:
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        error = exc.errors()[0]
        name = ".".join(str(part) for part in error["loc"]) or None
        raise InvalidInput(f"{name}: {error['msg']}", param=name) from None


def _served(request: web.Request, name: str) -> tuple[ServedModel, TextModel]:
    served = request.app[DATAPLANE_KEY].manager.get(name)
    return served, text_model(served)


@dataclass
class _Choice:
    """One choice to generate, and what came of it."""

    index: int
    prompt_ids: list[int]
    params: SamplingParams
    echo: str = ""  # prompt text echoed in front of a completion
    stats: GenerationStats = field(default_factory=GenerationStats)
    text: str = ""
    finish_reason: str = "length"
    logprobs: list[TokenLogprob] = field(default_factory=list)


def _usage(choices: list[_Choice]) -> dict[str, int]:
    # With n > 1 the prompt is counted once per distinct prompt, as OpenAI does.
    prompts = {id(c.prompt_ids): c.stats.prompt_tokens for c in choices}
    prompt = sum(prompts.values())
    completion = sum(c.stats.completion_tokens for c in choices)
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


class _Format(ABC):
    """How one endpoint spells its responses and stream chunks."""

    object_name = ""
    chunk_object_name = ""

    def __init__(self, model: str, prefix: str) -> None:
        self.model = model
        self.id = f"{prefix}-{uuid.uuid4().hex}"
        self.created = int(time.time())

    def envelope(self, object_name: str) -> dict[str, Any]:
        """The fields every response and chunk starts with."""
        return {"id": self.id, "object": object_name, "created": self.created, "model": self.model}

    @abstractmethod
    def opening(self, choice: _Choice) -> dict[str, Any] | None:
        """The chunk that opens a choice's stream, if the format has one."""

    @abstractmethod
    def delta(
        self,
        choice: _Choice,
        text: str | None,
        finish: str | None,
        logprobs: list[TokenLogprob] | None = None,
    ) -> dict[str, Any]:
        """One choice's entry in a stream chunk (``logprobs``: of the tokens it adds)."""

    @abstractmethod
    def final(self, choice: _Choice) -> dict[str, Any]:
        """One choice's entry in a complete response."""

    def chunk(self, entry: dict[str, Any]) -> dict[str, Any]:
        """A stream chunk carrying one choice entry."""
        return {**self.envelope(self.chunk_object_name), "choices": [entry]}

    def usage_chunk(self, choices: list[_Choice]) -> dict[str, Any]:
        """The closing chunk with token counts (``stream_options.include_usage``)."""
        return {
            **self.envelope(self.chunk_object_name),
            "choices": [],
            "usage": _usage(choices),
        }

    def response(self, choices: list[_Choice]) -> dict[str, Any]:
        """The complete (non-streamed) response."""
        return {
            **self.envelope(self.object_name),
            "choices": [self.final(c) for c in choices],
            "usage": _usage(choices),
        }


class _CompletionFormat(_Format):
    object_name = chunk_object_name = "text_completion"

    def opening(self, choice: _Choice) -> dict[str, Any] | None:
        return self.delta(choice, choice.echo, None) if choice.echo else None

    def delta(
        self,
        choice: _Choice,
        text: str | None,
        finish: str | None,
        logprobs: list[TokenLogprob] | None = None,
    ) -> dict[str, Any]:
        asked = choice.params.logprobs is not None
        return {
            "index": choice.index,
            "text": text or "",
            "logprobs": _completion_logprobs(logprobs or []) if asked else None,
            "finish_reason": finish,
        }

    def final(self, choice: _Choice) -> dict[str, Any]:
        entry = self.delta(choice, choice.echo + choice.text, choice.finish_reason)
        if choice.params.logprobs is not None:
            entry["logprobs"] = _completion_logprobs(choice.logprobs, len(choice.echo))
        return entry


def _completion_logprobs(entries: list[TokenLogprob], offset: int = 0) -> dict[str, Any]:
    """The legacy completions shape: parallel lists, alternatives as {token: logprob}."""
    offsets = []
    for e in entries:
        offsets.append(offset)
        offset += len(e.token)
    return {
        "tokens": [e.token for e in entries],
        "token_logprobs": [e.logprob for e in entries],
        "top_logprobs": [dict(e.top) for e in entries],
        "text_offset": offsets,
    }


def _chat_logprobs(entries: list[TokenLogprob]) -> dict[str, Any]:
    """The chat shape: one object per token, with its UTF-8 bytes and alternatives."""
    return {
        "content": [
            {
                "token": e.token,
                "logprob": e.logprob,
                "bytes": list(e.token.encode()),
                "top_logprobs": [
                    {"token": t, "logprob": lp, "bytes": list(t.encode())} for t, lp in e.top
                ],
            }
            for e in entries
        ],
        "refusal": None,
    }


class _ChatFormat(_Format):
    object_name = "chat.completion"
    chunk_object_name = "chat.completion.chunk"

    def opening(self, choice: _Choice) -> dict[str, Any] | None:
        return self._entry(choice, {"role": "assistant", "content": ""}, None)

    def delta(
        self,
        choice: _Choice,
        text: str | None,
        finish: str | None,
        logprobs: list[TokenLogprob] | None = None,
    ) -> dict[str, Any]:
        entry = self._entry(choice, {} if text is None else {"content": text}, finish)
        if choice.params.logprobs is not None and logprobs:
            entry["logprobs"] = _chat_logprobs(logprobs)
        return entry

    def final(self, choice: _Choice) -> dict[str, Any]:
        asked = choice.params.logprobs is not None
        return {
            "index": choice.index,
            "message": {"role": "assistant", "content": choice.text},
            "logprobs": _chat_logprobs(choice.logprobs) if asked else None,
            "finish_reason": choice.finish_reason,
        }

    @staticmethod
    def _entry(choice: _Choice, delta: dict[str, Any], finish: str | None) -> dict[str, Any]:
        return {"index": choice.index, "delta": delta, "logprobs": None, "finish_reason": finish}


async def _respond(
    request: web.Request,
    served: ServedModel,
    choices: list[_Choice],
    body: _Sampling,
    fmt: _Format,
) -> web.StreamResponse:
    """Generate every choice, as one JSON response or as a server-sent event stream."""
    dataplane = request.app[DATAPLANE_KEY]
    generator = request.app[GENERATOR_KEY]
    name = served.model.name

    async def events() -> AsyncGenerator[dict[str, Any], None]:
        # Choices run one after the other; concurrent requests still share batches.
        async with dataplane.request_scope(name, "openai"):
            for choice in choices:
                opening = fmt.opening(choice)
                if opening is not None:
                    yield fmt.chunk(opening)
                generation = generator.generate(
                    served, choice.prompt_ids, choice.params, choice.stats
                )
                async with contextlib.aclosing(generation) as pieces:
                    async for piece in pieces:
                        choice.text += piece.text
                        choice.logprobs.extend(piece.logprobs)
                        if piece.finish_reason is not None:
                            choice.finish_reason = piece.finish_reason
                        if piece.text or piece.finish_reason:
                            delta = fmt.delta(
                                choice, piece.text or None, piece.finish_reason, piece.logprobs
                            )
                            yield fmt.chunk(delta)

    if not body.stream:
        async with contextlib.aclosing(events()) as pieces:
            async for _ in pieces:
                pass
        return web.json_response(fmt.response(choices), dumps=_dumps)

    response = web.StreamResponse(
        headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
    )
    await response.prepare(request)
    # aclosing: a client that hangs up mid-stream makes write() raise; the generator must
    # still close now, or its request would count as in flight until garbage collection.
    async with contextlib.aclosing(events()) as chunks:
        try:
            async for chunk in chunks:
                await response.write(sse_event(chunk))
            if body.include_usage:
                await response.write(sse_event(fmt.usage_chunk(choices)))
        except InferenceError as exc:
            # The status line is sent already: report the error in-band, as OpenAI's API does.
            await response.write(sse_event(error_body(request, exc)))
    await response.write(SSE_DONE)
    await response.write_eof()
    return response


def _dumps(value: Any) -> str:
    return orjson.dumps(value).decode()


async def completions(request: web.Request) -> web.StreamResponse:
    """POST /v1/completions."""
    body = _parse(CompletionRequest, await read_json(request))
    served, text = _served(request, body.model)
    prompts = [body.prompt] if isinstance(body.prompt, str) else body.prompt
    if not prompts:
        raise InvalidInput("prompt must not be empty", param="prompt")
    choices: list[_Choice] = []
    for p_index, prompt in enumerate(prompts):
        ids = text.encode(prompt)
        text.check_prompt(ids, "prompt")
        for c_index in range(body.n):
            index = p_index * body.n + c_index
            params = body.sampling(body.max_tokens, index)
            choices.append(_Choice(index, ids, params, echo=prompt if body.echo else ""))
    return await _respond(request, served, choices, body, _CompletionFormat(body.model, "cmpl"))


async def chat_completions(request: web.Request) -> web.StreamResponse:
    """POST /v1/chat/completions."""
    body = _parse(ChatCompletionRequest, await read_json(request))
    served, text = _served(request, body.model)
    ids = text.chat_ids([{"role": m.role, "content": m.text()} for m in body.messages])
    text.check_prompt(ids, "messages")
    budget = body.token_budget()
    choices = [_Choice(i, ids, body.sampling(budget, i)) for i in range(body.n)]
    return await _respond(request, served, choices, body, _ChatFormat(body.model, "chatcmpl"))


async def embeddings(request: web.Request) -> web.Response:
    """POST /v1/embeddings."""
    body = _parse(EmbeddingRequest, await read_json(request))
    inputs = parse_input(body.input)
    dataplane = request.app[DATAPLANE_KEY]
    async with dataplane.request_scope(body.model, "openai"):
        served = dataplane.manager.get(body.model)
        result = await request.app[EMBEDDER_KEY].embed(served, inputs, body.dimensions)
    if body.encoding_format == "base64":
        # What OpenAI sends and its SDKs decode: the float32 values' little-endian bytes.
        data: list[Any] = [
            base64.b64encode(row.astype("<f4").tobytes()).decode("ascii") for row in result.vectors
        ]
    else:
        data = list(result.vectors)  # float32 rows: orjson writes their shortest form
    document = {
        "object": "list",
        "data": [
            {"object": "embedding", "index": i, "embedding": value} for i, value in enumerate(data)
        ],
        "model": body.model,
        "usage": {"prompt_tokens": result.prompt_tokens, "total_tokens": result.prompt_tokens},
    }
    return web.Response(
        body=orjson.dumps(document, option=orjson.OPT_SERIALIZE_NUMPY),
        content_type="application/json",
    )


def _listed(served: ServedModel) -> bool:
    return served.model.generates_text or served.model.embedding is not None


async def list_models(request: web.Request) -> web.Response:
    """GET /v1/models: the text generation and embedding models being served."""
    manager = request.app[DATAPLANE_KEY].manager
    served = sorted(manager.served(), key=lambda s: s.model.name)
    data = [_model_card(s) for s in served if _listed(s)]
    return web.json_response({"object": "list", "data": data})


async def get_model(request: web.Request) -> web.Response:
    """GET /v1/models/{model}: 400 for a model the /v1 routes do not serve."""
    served = request.app[DATAPLANE_KEY].manager.get(request.match_info["model"])
    if served.model.embedding is None:
        text_model(served)  # raises, saying what the model is not
    return web.json_response(_model_card(served))


def _model_card(served: ServedModel) -> dict[str, Any]:
    card: dict[str, Any] = {
        "id": served.model.name,
        "object": "model",
        "created": int(served.loaded_at),
        "owned_by": "clawdbot",
    }
    if served.model.decoder is not None:
        # vLLM's field: what a client may size prompt plus completion to.
        card["max_model_len"] = served.model.decoder.spec.context_length
    elif served.model.embedding is not None:
        card["max_model_len"] = served.model.embedding.spec.max_tokens
    return card


def add_routes(app: web.Application, dataplane: DataPlane) -> None:
    """Register the /v1 routes on the REST application."""
    app[GENERATOR_KEY] = TextGenerator(dataplane)
    app[EMBEDDER_KEY] = Embedder(dataplane)
    app.router.add_post("/v1/completions", completions)
    app.router.add_post("/v1/chat/completions", chat_completions)
    app.router.add_post("/v1/embeddings", embeddings)
    app.router.add_get("/v1/models", list_models)
    app.router.add_get("/v1/models/{model}", get_model)
