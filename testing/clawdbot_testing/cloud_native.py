"""The cloud stand-in's other APIs: OpenAI's Responses, Anthropic's Messages, and audio.

Each is spoken as the real service speaks it, over the stand-in's socket, so the sidecar's
native pass-through (``cloud.api``) is tested against the real protocol: JSON answers and
the named event streams (``event: <type>``), Messages' ``x-api-key`` (checked by the
stand-in's guard) and required ``anthropic-version`` header, Anthropic's error shape, and
the audio endpoints' multipart forms. Answers are deterministic, as for chat: the last user
text echoed, the first tool called when the request requires a call. The audio answer is
not a transcription (there is no speech model here): it names the file it got and echoes
the form's ``prompt``. :func:`build_speech_app` serves the audio routes alone, as a stand-in
for a local OpenAI-compatible speech server.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any, Final

from aiohttp import BodyPartReader, web

__all__ = ["add_routes", "build_speech_app", "headers_of", "read_body"]

MODEL: Final = "cloud-stub-1"
PIECE_CHARS: Final = 3
# Request headers the stand-in records (never a key).
_RECORDED_HEADERS: Final = ("anthropic-version", "anthropic-beta", "content-type")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
# The form a request carried, as read_body recorded it (lists of values per field).
_FORM: Final = web.RequestKey("form", dict)


def _tokens(text: str) -> int:
    return (len(text) + 3) // 4


def _pieces(text: str) -> list[str]:
    return [text[i : i + PIECE_CHARS] for i in range(0, len(text), PIECE_CHARS)]


def _digest(body: Any) -> str:
    return hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()[:24]


def headers_of(request: web.Request) -> dict[str, str]:
    """The request headers a test may check (the API version, never the key)."""
    return {k: request.headers[k] for k in _RECORDED_HEADERS if k in request.headers}


async def read_body(request: web.Request) -> Any:
    """A POST's body as the stand-in records it: JSON, or a form's fields with each file as
    its name, size and SHA-256 (the bytes themselves are not kept); ValueError if neither."""
    if request.content_type != "multipart/form-data":
        return await request.json()
    form: dict[str, Any] = {}
    reader = await request.multipart()
    while True:
        part = await reader.next()
        if part is None:
            break
        if not isinstance(part, BodyPartReader) or part.name is None:
            raise ValueError("nested multipart")
        data = await part.read()
        if part.filename is not None:
            form[part.name] = {"filename": part.filename, "bytes": len(data),
                               "sha256": hashlib.sha256(data).hexdigest(),
                               "content_type": part.headers.get("Content-Type")}  # fmt: skip
        else:
            form.setdefault(part.name, []).append(data.decode())
    request[_FORM] = form
    return {k: v[0] if isinstance(v, list) and len(v) == 1 else v for k, v in form.items()}


async def _sse(request: web.Request, events: list[dict[str, Any]]) -> web.StreamResponse:
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await resp.prepare(request)
    for event in events:
        line = f"event: {event['type']}\ndata: {json.dumps(event)}\n\n"
        await resp.write(line.encode())
    await resp.write_eof()
    return resp


# -- Responses -------------------------------------------------------------------------


def _item_text(item: Any) -> str:
    content = item.get("content") if isinstance(item, dict) else None
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return ""


def responses_input_text(body: dict[str, Any]) -> tuple[str, str]:
    """(all input text, the last user message's text) of a Responses request."""
    value = body.get("input")
    if isinstance(value, str):
        return value, value
    items = [i for i in value or [] if isinstance(i, dict)]
    users = [i for i in items if i.get("role") == "user"]
    every = "\n".join(_item_text(i) or str(i.get("output", "")) for i in items)
    return every, _item_text(users[-1]) if users else ""


def _responses_tool(body: dict[str, Any]) -> str | None:
    tools = [t for t in body.get("tools") or [] if isinstance(t, dict)]
    choice = body.get("tool_choice")
    if isinstance(choice, dict) and choice.get("type") == "function":
        return str(choice.get("name"))
    if choice == "required" and tools:
        return str(tools[0].get("name"))
    return None


async def _responses(request: web.Request) -> web.StreamResponse:
    body: dict[str, Any] = await request.json()
    prefix: str = request.app[_PREFIX]
    every, last = responses_input_text(body)
    text = f"{prefix} answer. You said: {last}"
    rid = "resp_" + _digest(body)
    tool = _responses_tool(body)
    fmt = (body.get("text") or {}).get("format") or {}
    if tool is None and fmt.get("type") in ("json_object", "json_schema"):
        text = json.dumps({"answer": text})
    if tool is not None:
        arguments = json.dumps({"text": last})
        item: dict[str, Any] = {"type": "function_call", "id": "fc_" + rid[5:], "call_id":
                                "call_" + rid[5:17], "name": tool, "arguments": arguments,
                                "status": "completed"}  # fmt: skip
    else:
        item = {"type": "message", "id": "msg_" + rid[5:], "status": "completed",
                "role": "assistant", "content": [{"type": "output_text", "text": text,
                                                  "annotations": []}]}  # fmt: skip
    out_tokens = _tokens(text)
    usage = {"input_tokens": _tokens(every), "output_tokens": out_tokens,
             "total_tokens": _tokens(every) + out_tokens,
             "input_tokens_details": {"cached_tokens": 0},
             "output_tokens_details": {"reasoning_tokens": 0}}  # fmt: skip
    response = {
        "id": rid, "object": "response", "created_at": int(time.time()), "status": "completed",
        "model": MODEL, "output": [item], "usage": usage, "error": None,
        "incomplete_details": None, "instructions": body.get("instructions"),
        "metadata": body.get("metadata") or {}, "parallel_tool_calls": True,
        "temperature": 1.0, "top_p": 1.0, "tool_choice": body.get("tool_choice", "auto"),
        "tools": body.get("tools") or [], "text": body.get("text") or {"format": {"type": "text"}},
    }  # fmt: skip
    if not body.get("stream"):
        return web.json_response(response)
    return await _sse(request, _responses_events(response, item))


def _responses_events(response: dict[str, Any], item: dict[str, Any]) -> list[dict[str, Any]]:
    start = {**response, "status": "in_progress", "output": [], "usage": None}
    events: list[dict[str, Any]] = [
        {"type": "response.created", "response": start},
        {"type": "response.in_progress", "response": start},
    ]
    ids = {"item_id": item["id"], "output_index": 0}
    if item["type"] == "function_call":
        events.append({"type": "response.output_item.added", "output_index": 0,
                       "item": {**item, "arguments": "", "status": "in_progress"}})  # fmt: skip
        for piece in _pieces(item["arguments"]):
            events.append({"type": "response.function_call_arguments.delta", **ids,
                           "delta": piece})  # fmt: skip
        events.append({"type": "response.function_call_arguments.done", **ids,
                       "arguments": item["arguments"]})  # fmt: skip
    else:
        text = item["content"][0]["text"]
        part = {"type": "output_text", "text": "", "annotations": []}
        events.append({"type": "response.output_item.added", "output_index": 0,
                       "item": {**item, "content": [], "status": "in_progress"}})  # fmt: skip
        events.append({"type": "response.content_part.added", **ids, "content_index": 0,
                       "part": part})  # fmt: skip
        for piece in _pieces(text):
            events.append({"type": "response.output_text.delta", **ids, "content_index": 0,
                           "delta": piece, "logprobs": []})  # fmt: skip
        events.append({"type": "response.output_text.done", **ids, "content_index": 0,
                       "text": text, "logprobs": []})  # fmt: skip
        events.append({"type": "response.content_part.done", **ids, "content_index": 0,
                       "part": {**part, "text": text}})  # fmt: skip
    events.append({"type": "response.output_item.done", "output_index": 0, "item": item})
    events.append({"type": "response.completed", "response": response})
    return [{**e, "sequence_number": n} for n, e in enumerate(events)]


# -- Messages --------------------------------------------------------------------------


def _anthropic_error(status: int, kind: str, message: str) -> web.Response:
    return web.json_response(
        {"type": "error", "error": {"type": kind, "message": message}}, status=status
    )


def _block_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    out = []
    for block in content or []:
        if not isinstance(block, dict):
            continue
        if block.get("type") == "text":
            out.append(str(block.get("text", "")))
        elif block.get("type") == "tool_result":
            out.append(_block_text(block.get("content")))
    return "\n".join(out)


def messages_text(body: dict[str, Any]) -> tuple[str, str]:
    """(all text, the last user turn's text) of a Messages request."""
    messages = [m for m in body.get("messages") or [] if isinstance(m, dict)]
    users = [m for m in messages if m.get("role") == "user"]
    every = "\n".join(_block_text(m.get("content")) for m in messages)
    system = body.get("system")
    every = (_block_text(system) + "\n" + every) if system else every
    return every, _block_text(users[-1].get("content")) if users else ""


def _messages_tool(body: dict[str, Any]) -> str | None:
    tools = [t for t in body.get("tools") or [] if isinstance(t, dict)]
    choice = body.get("tool_choice") or {}
    if choice.get("type") == "tool":
        return str(choice.get("name"))
    if choice.get("type") == "any" and tools:
        return str(tools[0].get("name"))
    return None


async def _messages(request: web.Request) -> web.StreamResponse:
    if not request.headers.get("anthropic-version"):
        return _anthropic_error(400, "invalid_request_error",
                                "anthropic-version: header is required")  # fmt: skip
    body: dict[str, Any] = await request.json()
    if not isinstance(body.get("max_tokens"), int):
        return _anthropic_error(400, "invalid_request_error", "max_tokens: Field required")
    prefix: str = request.app[_PREFIX]
    every, last = messages_text(body)
    mid = "msg_" + _digest(body)
    tool = _messages_tool(body)
    text = f"{prefix} answer. You said: {last}"
    if tool is not None:
        block: dict[str, Any] = {"type": "tool_use", "id": "toolu_" + mid[4:16], "name": tool,
                                 "input": {"text": last}}  # fmt: skip
        stop = "tool_use"
    else:
        block, stop = {"type": "text", "text": text}, "end_turn"
    output = _tokens(json.dumps(block))
    message = {"id": mid, "type": "message", "role": "assistant", "model": MODEL,
               "content": [block], "stop_reason": stop, "stop_sequence": None,
               "usage": {"input_tokens": _tokens(every), "output_tokens": output}}  # fmt: skip
    if not body.get("stream"):
        return web.json_response(message)
    return await _sse(request, _messages_events(message, block))


def _messages_events(message: dict[str, Any], block: dict[str, Any]) -> list[dict[str, Any]]:
    start = {**message, "content": [], "stop_reason": None,
             "usage": {**message["usage"], "output_tokens": 1}}  # fmt: skip
    events: list[dict[str, Any]] = [{"type": "message_start", "message": start},
                                    {"type": "ping"}]  # fmt: skip
    if block["type"] == "tool_use":
        events.append({"type": "content_block_start", "index": 0,
                       "content_block": {**block, "input": {}}})  # fmt: skip
        for piece in _pieces(json.dumps(block["input"])):
            delta = {"type": "input_json_delta", "partial_json": piece}
            events.append({"type": "content_block_delta", "index": 0, "delta": delta})
    else:
        events.append({"type": "content_block_start", "index": 0,
                       "content_block": {"type": "text", "text": ""}})  # fmt: skip
        for piece in _pieces(block["text"]):
            events.append({"type": "content_block_delta", "index": 0,
                           "delta": {"type": "text_delta", "text": piece}})  # fmt: skip
    events.append({"type": "content_block_stop", "index": 0})
    events.append({"type": "message_delta",
                   "delta": {"stop_reason": message["stop_reason"], "stop_sequence": None},
                   "usage": {"output_tokens": message["usage"]["output_tokens"]}})  # fmt: skip
    events.append({"type": "message_stop"})
    return events


# -- audio -----------------------------------------------------------------------------


async def _audio(request: web.Request) -> web.Response:
    form: dict[str, Any] = request.get(_FORM) or {}
    file = form.get("file")
    if not isinstance(file, dict):
        return web.json_response(
            {"error": {"message": "file: an audio file is required", "type":
                       "invalid_request_error", "param": "file", "code": None}}, status=400
        )  # fmt: skip
    prefix: str = request.app[_PREFIX]
    task = "translate" if request.path.endswith("/translations") else "transcribe"
    prompt = " ".join(form.get("prompt") or [])
    text = f"{prefix} {task} of {file['filename']} ({file['bytes']} bytes)."
    if prompt:
        text += f" Prompt: {prompt}"
    fmt = (form.get("response_format") or ["json"])[0]
    if fmt == "verbose_json":
        return web.json_response(
            {"task": task, "language": "english", "duration": 2.5, "text": text,
             "segments": [{"id": 0, "start": 0.0, "end": 1.2, "text": text[: len(text) // 2]},
                          {"id": 1, "start": 1.2, "end": 2.5, "text": text[len(text) // 2 :]}]}
        )  # fmt: skip
    if fmt == "text":
        return web.Response(text=text, content_type="text/plain")
    return web.json_response({"text": text, "usage": {"type": "duration", "seconds": 3}})


_PREFIX: Final = web.AppKey("prefix", str)


def add_routes(app: web.Application, *, prefix: str) -> None:
    """Serve the Responses, Messages and audio routes on ``app`` (answers say ``prefix``)."""
    app[_PREFIX] = prefix
    app.router.add_post("/v1/responses", _responses)
    app.router.add_post("/v1/messages", _messages)
    app.router.add_post("/v1/audio/transcriptions", _audio)
    app.router.add_post("/v1/audio/translations", _audio)


def build_speech_app() -> web.Application:
    """A stand-in for a local OpenAI-compatible speech server (not a speech model): the
    audio routes, no key, and ``GET /_stub/requests`` listing the forms it got."""
    requests: list[dict[str, Any]] = []

    @web.middleware
    async def record(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.method == "POST":
            try:
                body = await read_body(request)
            except ValueError:
                return web.json_response({"error": {"message": "not a form"}}, status=400)
            requests.append({"path": request.path, "body": body})
        return await handler(request)

    async def listed(request: web.Request) -> web.Response:
        return web.json_response(requests)

    app = web.Application(middlewares=[record])
    app[_PREFIX] = "Local"
    app.router.add_post("/v1/audio/transcriptions", _audio)
    app.router.add_post("/v1/audio/translations", _audio)
    app.router.add_get("/_stub/requests", listed)
    return app
