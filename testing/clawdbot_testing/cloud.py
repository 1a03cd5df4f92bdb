"""A loopback stand-in for a cloud LLM API, for tests and the demo (not for production).

It speaks OpenAI's protocol over a real socket (chat completions, completions, embeddings,
models; JSON and SSE streaming, usage, errors in OpenAI's shape) and checks the bearer key,
so the sidecar is exercised exactly as against a real provider. It also speaks OpenAI's
Responses API and Anthropic's Messages API natively (JSON and their named event streams;
Messages checks ``x-api-key`` and ``anthropic-version``), and the audio endpoints
(multipart forms): see :mod:`clawdbot_testing.cloud_native`. Its answers are
deterministic: it echoes the last user message (which makes restored placeholders visible in
tests), calls the first tool when ``tool_choice`` requires a call (``required``, a named
function; Messages: ``any``, ``tool``), answers a JSON document in JSON mode, and records
every request it received, so tests can assert what left the pod.

    clawdbot-cloud-standin --port 9099 --api-key sk-test

Faults for tests: ``POST /_stub/faults {"status": 503, "count": 2, "delayS": 0.5}`` makes the
next ``count`` requests fail with ``status`` (0: just delay), with a ``Retry-After`` header
when the faults give ``retryAfter``; ``"reset": true`` makes them end in a TCP reset instead
of an answer (after the delay, if any), as a crashing provider front or a middlebox does.
``GET /_stub/requests`` lists what was received; ``DELETE /_stub/requests`` clears it;
``GET /_stub/healthz`` answers once the stand-in serves.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import socket
import struct
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from clawdbot_api.openai_wire import SSE_DONE, error_body, sse_event
from clawdbot_testing import cloud_native

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
    reset: bool = False


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


def last_user_text(body: dict[str, Any]) -> str:
    """The text of a chat body's last user message (a prompt's or input's text)."""
    if "messages" in body:
        users = [m for m in body["messages"] if isinstance(m, dict) and m.get("role") == "user"]
        last, _ = prompt_text({"messages": users[-1:]}) if users else ("", 0)
    else:
        last, _ = prompt_text(body)
    return last


def answer_text(body: dict[str, Any]) -> str:
    """The stub's deterministic answer: it echoes the last user text."""
    return f"Cloud answer. You said: {last_user_text(body)}"


def _authorized(request: web.Request, api_key: str | None) -> bool:
    if api_key is None:
        return True
    if request.path.endswith("/messages"):  # Anthropic's API takes the key as x-api-key
        return request.headers.get("x-api-key") == api_key
    return request.headers.get("Authorization") == f"Bearer {api_key}"


@web.middleware
async def _guard(request: web.Request, handler: Any) -> web.StreamResponse:
    state = request.app[STATE]
    if request.path.startswith("/_stub/"):
        return await handler(request)  # type: ignore[no-any-return]
    if not _authorized(request, state.api_key):
        return _error(401, "Incorrect API key provided.", "invalid_request_error",
                          "invalid_api_key")  # fmt: skip
    if request.method == "POST":
        try:
            body = await cloud_native.read_body(request)
        except ValueError:
            return _error(400, "We could not parse the JSON body.", "invalid_request_error")
        if len(state.requests) < MAX_RECORDED:
            state.requests.append(
                {"path": request.path, "body": body, "headers": cloud_native.headers_of(request)}
            )
    faults = state.faults
    if faults.count > 0:
        faults.count -= 1
        if faults.delay_s:
            await asyncio.sleep(faults.delay_s)
        if faults.reset:
            _reset(request)
            raise ConnectionResetError("injected reset")
        if faults.status:
            answer = _error(faults.status, "The server is overloaded (injected).", "server_error")
            if faults.retry_after is not None:
                answer.headers["Retry-After"] = faults.retry_after
            return answer
    return await handler(request)  # type: ignore[no-any-return]


def _reset(request: web.Request) -> None:
    """Abort the request's connection with a TCP reset (SO_LINGER 0), no answer sent."""
    transport = request.transport
    if transport is None:
        return
    sock = transport.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()


def _stream_choices(
    chat: bool, message: dict[str, Any], finish: str, text: str
) -> list[dict[str, Any]]:
    """The streamed choices of an answer, its text (or tool arguments) in short pieces."""
    out: list[dict[str, Any]] = []
    calls = message.get("tool_calls")
    if calls:
        call = calls[0]
        function = call["function"]
        first = {"index": 0, "id": call["id"], "type": "function",
                 "function": {"name": function["name"], "arguments": ""}}  # fmt: skip
        out.append({"index": 0, "finish_reason": None,
                    "delta": {"role": "assistant", "tool_calls": [first]}})  # fmt: skip
        for piece in _pieces(function["arguments"]):
            delta = {"tool_calls": [{"index": 0, "function": {"arguments": piece}}]}
            out.append({"index": 0, "finish_reason": None, "delta": delta})
        out.append({"index": 0, "finish_reason": finish, "delta": {}})
        return out
    content = message.get("content") if chat else text
    pieces = _pieces(str(content or ""))
    for i, piece in enumerate(pieces):
        last = i == len(pieces) - 1
        c: dict[str, Any] = {"index": 0, "finish_reason": finish if last else None}
        if chat:
            c["delta"] = {"content": piece, **({"role": "assistant"} if i == 0 else {})}
        else:
            c["text"] = piece
        out.append(c)
    return out


def _usage(body: dict[str, Any], text: str) -> dict[str, int]:
    prompt = estimate_tokens(prompt_text(body)[0])
    completion = estimate_tokens(text)
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


def json_mode(body: dict[str, Any]) -> bool:
    """Whether a chat body asks for a JSON answer (json_object or json_schema)."""
    fmt = body.get("response_format")
    return isinstance(fmt, dict) and fmt.get("type") in ("json_object", "json_schema")


def forced_tool(body: dict[str, Any]) -> str | None:
    """The function a chat body's tool_choice makes the model call, if any."""
    tools = [t for t in body.get("tools") or [] if isinstance(t, dict)]
    choice = body.get("tool_choice")
    if isinstance(choice, dict) and isinstance(choice.get("function"), dict):
        return str(choice["function"].get("name"))
    if choice == "required" and tools:
        return str((tools[0].get("function") or {}).get("name"))
    return None


def _chat_message(body: dict[str, Any], text: str) -> tuple[dict[str, Any], str]:
    """The answer message of a chat body and its finish reason."""
    tool = forced_tool(body)
    if tool is not None:
        arguments = json.dumps({"text": last_user_text(body)}, ensure_ascii=False)
        call = {"id": "call_" + hashlib.sha256(text.encode()).hexdigest()[:12],
                "type": "function", "function": {"name": tool, "arguments": arguments}}  # fmt: skip
        return {"role": "assistant", "content": None, "tool_calls": [call]}, "tool_calls"
    if json_mode(body):
        text = json.dumps({"answer": text}, ensure_ascii=False)
    return {"role": "assistant", "content": text}, "stop"


def _pieces(text: str) -> list[str]:
    return [text[i : i + STREAM_PIECE_CHARS] for i in range(0, len(text), STREAM_PIECE_CHARS)]


async def _completion(request: web.Request) -> web.StreamResponse:
    body: dict[str, Any] = await request.json()  # read (and checked) by the middleware
    chat = request.path.endswith("/chat/completions")
    text = answer_text(body)
    rid = "cmpl-" + hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:12]
    created = int(time.time())
    obj = "chat.completion" if chat else "text_completion"
    message, finish = _chat_message(body, text) if chat else ({}, "stop")
    if not body.get("stream"):
        choice: dict[str, Any] = {"index": 0, "finish_reason": finish, "logprobs": None}
        if chat:
            choice["message"] = message
        else:
            choice["text"] = text
        return web.json_response(
            {"id": rid, "object": obj, "created": created, "model": STUB_MODEL,
             "choices": [choice], "usage": _usage(body, text)}
        )  # fmt: skip
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await resp.prepare(request)
    chunk_obj = "chat.completion.chunk" if chat else "text_completion"
    for c in _stream_choices(chat, message, finish, text):
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


async def _healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def _set_faults(request: web.Request) -> web.Response:
    data = await request.json()
    request.app[STATE].faults = Faults(
        status=int(data.get("status", 0)),
        count=int(data.get("count", 1)),
        delay_s=float(data.get("delayS", 0.0)),
        retry_after=None if data.get("retryAfter") is None else str(data["retryAfter"]),
        reset=bool(data.get("reset", False)),
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
    cloud_native.add_routes(app, prefix="Cloud")
    app.router.add_get("/_stub/requests", _get_requests)
    app.router.add_delete("/_stub/requests", _clear_requests)
    app.router.add_post("/_stub/faults", _set_faults)
    app.router.add_get("/_stub/healthz", _healthz)
    return app


def main(argv: Sequence[str] | None = None) -> int:
    """``clawdbot-cloud-standin [--host H] [--port P] [--api-key KEY]``."""
    p = argparse.ArgumentParser(prog="clawdbot-cloud-standin", description=__doc__.split("\n")[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=9099)
    p.add_argument("--api-key", default=os.environ.get("CLAWDBOT_STUB_API_KEY"))
    kind = p.add_mutually_exclusive_group()
    kind.add_argument(
        "--speech",
        action="store_true",
        help="serve only the audio routes, without a key: a stand-in for a local "
        "OpenAI-compatible speech server (it transcribes nothing)",
    )
    kind.add_argument(
        "--asr",
        action="store_true",
        help="a local OpenAI-compatible speech server on a real recognizer (PocketSphinx, "
        "English; see clawdbot_testing.asr)",
    )
    args = p.parse_args(argv)
    if args.asr:
        from clawdbot_testing.asr import build_asr_app  # noqa: PLC0415 - loads numpy

        app, what = build_asr_app(), "speech server (PocketSphinx)"
    elif args.speech:
        app, what = cloud_native.build_speech_app(), "speech server stand-in"
    else:
        app, what = build_app(args.api_key), "cloud stand-in"
    print(f"{what} on http://{args.host}:{args.port}/v1", flush=True)
    web.run_app(app, host=args.host, port=args.port, print=None)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
