"""A loopback stand-in for a cloud LLM API, for tests and the demo (not for production).

It speaks OpenAI's protocol over a real socket (chat completions, completions, embeddings,
models; JSON and SSE streaming, usage, errors in OpenAI's shape) and checks the bearer key,
so the sidecar is exercised exactly as against a real provider. Its answers are
deterministic: it echoes the last user message (which makes restored placeholders visible in
tests) and records every request it received, so tests can assert what left the pod.

    clawdbot-cloud-standin --port 9099 --api-key sk-test

Faults for tests: ``POST /_stub/faults {"status": 503, "count": 2, "delayS": 0.5}`` makes the
next ``count`` requests fail with ``status`` (0: just delay), with a ``Retry-After`` header
when the faults give ``retryAfter``; ``GET /_stub/requests`` lists what was received;
``DELETE /_stub/requests`` clears it.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from clawdbot_api.openai_wire import SSE_DONE, error_body, sse_event

STUB_MODEL = "cloud-stub-1"
# Streamed answers are cut into pieces this long, so placeholders span chunk boundaries.
STREAM_PIECE_CHARS = 3
EMBEDDING_DIM = 16
MAX_RECORDED = 1000


@dataclass
class Faults:
    status: int = 0
    count: int = 0
    delay_s: float = 0.0
    retry_after: str | None = None


@dataclass
class StubState:
    api_key: str | None
    requests: list[dict[str, Any]] = field(default_factory=list)
    faults: Faults = field(default_factory=Faults)


STATE: web.AppKey[StubState] = web.AppKey("state", StubState)


def _error(status: int, message: str, type_: str, code: str | None = None) -> web.Response:
    return web.json_response(error_body(message, type_=type_, code=code), status=status)


def estimate_tokens(text: str) -> int:
    """Tokens at four characters each, as OpenAI's rule of thumb counts English."""
    return (len(text) + 3) // 4


def prompt_text(body: dict[str, Any]) -> tuple[str, int]:
    """The plain text of a chat, completions or embeddings body, and its number of turns."""
    messages = body.get("messages")
    if isinstance(messages, list):
        parts: list[str] = []
        for msg in messages:
            content = msg.get("content") if isinstance(msg, dict) else None
            if isinstance(content, str):
                parts.append(content)
            elif isinstance(content, list):
                parts.extend(
                    p["text"]
                    for p in content
                    if isinstance(p, dict) and isinstance(p.get("text"), str)
                )
        return "\n".join(parts), len(messages)
    for key in ("prompt", "input"):
        value = body.get(key)
        if isinstance(value, str):
            return value, 1
        if isinstance(value, list):
            return "\n".join(v for v in value if isinstance(v, str)), 1
    return "", 0


def answer_text(body: dict[str, Any]) -> str:
    """The stub's deterministic answer: it echoes the last user text."""
    if "messages" in body:
        users = [m for m in body["messages"] if isinstance(m, dict) and m.get("role") == "user"]
        last, _ = prompt_text({"messages": users[-1:]}) if users else ("", 0)
    else:
        last, _ = prompt_text(body)
    return f"Cloud answer. You said: {last}"


@web.middleware
async def _guard(request: web.Request, handler: Any) -> web.StreamResponse:
    state = request.app[STATE]
    if request.path.startswith("/_stub/"):
        return await handler(request)  # type: ignore[no-any-return]
    authorization = request.headers.get("Authorization")
    if state.api_key is not None and authorization != f"Bearer {state.api_key}":
        return _error(401, "Incorrect API key provided.", "invalid_request_error",
                          "invalid_api_key")  # fmt: skip
    if request.method == "POST":
        try:
            body = await request.json()
        except ValueError:
            return _error(400, "We could not parse the JSON body.", "invalid_request_error")
        if len(state.requests) < MAX_RECORDED:
            state.requests.append({"path": request.path, "body": body})
    faults = state.faults
    if faults.count > 0:
        faults.count -= 1
        if faults.delay_s:
            await asyncio.sleep(faults.delay_s)
        if faults.status:
            answer = _error(faults.status, "The server is overloaded (injected).", "server_error")
            if faults.retry_after is not None:
                answer.headers["Retry-After"] = faults.retry_after
            return answer
    return await handler(request)  # type: ignore[no-any-return]


def _usage(body: dict[str, Any], text: str) -> dict[str, int]:
    prompt = estimate_tokens(prompt_text(body)[0])
    completion = estimate_tokens(text)
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


async def _completion(request: web.Request) -> web.StreamResponse:
    body: dict[str, Any] = await request.json()  # read (and checked) by the middleware
    chat = request.path.endswith("/chat/completions")
    text = answer_text(body)
    rid = "cmpl-" + hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:12]
    created = int(time.time())
    obj = "chat.completion" if chat else "text_completion"
    if not body.get("stream"):
        choice: dict[str, Any] = {"index": 0, "finish_reason": "stop", "logprobs": None}
        if chat:
            choice["message"] = {"role": "assistant", "content": text}
        else:
            choice["text"] = text
        return web.json_response(
            {"id": rid, "object": obj, "created": created, "model": STUB_MODEL,
             "choices": [choice], "usage": _usage(body, text)}
        )  # fmt: skip
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await resp.prepare(request)
    chunk_obj = "chat.completion.chunk" if chat else "text_completion"
    pieces = [text[i : i + STREAM_PIECE_CHARS] for i in range(0, len(text), STREAM_PIECE_CHARS)]
    for i, piece in enumerate(pieces):
        last = i == len(pieces) - 1
        c: dict[str, Any] = {"index": 0, "finish_reason": "stop" if last else None}
        if chat:
            c["delta"] = {"content": piece, **({"role": "assistant"} if i == 0 else {})}
        else:
            c["text"] = piece
        event = {"id": rid, "object": chunk_obj, "created": created, "model": STUB_MODEL,
                 "choices": [c]}  # fmt: skip
        await resp.write(sse_event(event))
    options = body.get("stream_options") or {}
    if options.get("include_usage"):
        event = {"id": rid, "object": chunk_obj, "created": created, "model": STUB_MODEL,
                 "choices": [], "usage": _usage(body, text)}  # fmt: skip
        await resp.write(sse_event(event))
    await resp.write(SSE_DONE)
    await resp.write_eof()
    return resp


async def _embeddings(request: web.Request) -> web.Response:
    body: dict[str, Any] = await request.json()
    inputs = body["input"] if isinstance(body.get("input"), list) else [body.get("input", "")]
    data = []
    for i, item in enumerate(inputs):
        digest = hashlib.sha256(str(item).encode()).digest()
        vector = [b / 255.0 for b in digest[:EMBEDDING_DIM]]
        data.append({"object": "embedding", "index": i, "embedding": vector})
    tokens = sum(estimate_tokens(str(x)) for x in inputs)
    return web.json_response(
        {"object": "list", "data": data, "model": body.get("model", STUB_MODEL),
         "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}
    )  # fmt: skip


async def _models(request: web.Request) -> web.Response:
    card = {"id": STUB_MODEL, "object": "model", "created": 0, "owned_by": "clawdbot-stub"}
    return web.json_response({"object": "list", "data": [card]})


async def _get_requests(request: web.Request) -> web.Response:
    return web.json_response(request.app[STATE].requests)


async def _clear_requests(request: web.Request) -> web.Response:
    request.app[STATE].requests.clear()
    return web.json_response({})


async def _set_faults(request: web.Request) -> web.Response:
    data = await request.json()
    request.app[STATE].faults = Faults(
        status=int(data.get("status", 0)),
        count=int(data.get("count", 1)),
        delay_s=float(data.get("delayS", 0.0)),
        retry_after=None if data.get("retryAfter") is None else str(data["retryAfter"]),
    )
    return web.json_response({})


def build_app(api_key: str | None = None) -> web.Application:
    """The stub as an aiohttp app (``base_url`` is ``http://host:port/v1``)."""
    app = web.Application(middlewares=[_guard])
    app[STATE] = StubState(api_key=api_key)
    app.router.add_post("/v1/chat/completions", _completion)
    app.router.add_post("/v1/completions", _completion)
    app.router.add_post("/v1/embeddings", _embeddings)
    app.router.add_get("/v1/models", _models)
    app.router.add_get("/_stub/requests", _get_requests)
    app.router.add_delete("/_stub/requests", _clear_requests)
    app.router.add_post("/_stub/faults", _set_faults)
    return app


def main(argv: Sequence[str] | None = None) -> int:
    """``clawdbot-cloud-standin [--host H] [--port P] [--api-key KEY]``."""
    p = argparse.ArgumentParser(prog="clawdbot-cloud-standin", description=__doc__.split("\n")[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=9099)
    p.add_argument("--api-key", default=os.environ.get("CLAWDBOT_STUB_API_KEY"))
    args = p.parse_args(argv)
    print(f"cloud stand-in on http://{args.host}:{args.port}/v1", flush=True)
    web.run_app(build_app(args.api_key), host=args.host, port=args.port, print=None)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
