"""``POST /v1/messages``: Anthropic's Messages API on the routing core's chat completions.

What Claude-style agents send (``ANTHROPIC_BASE_URL=http://127.0.0.1:8088``): ``system``,
messages of text, image, document, ``tool_use`` and ``tool_result`` blocks, tools with an
``input_schema``, ``tool_choice``, ``max_tokens``, ``stop_sequences``, sampling, and
``metadata.user_id``. The request is translated into a chat completions body and routed
like one (privacy, rules, cache, budgets, metrics and audit as endpoint ``messages``); the
answer comes back as a Message, or as Anthropic's event stream (``message_start``,
``content_block_start``/``delta``/``stop``, ``message_delta``, ``message_stop``, ``ping``).
A cloud endpoint with ``cloud.api: anthropic-messages`` gets the request as the app sent it,
redacted, with the key as ``x-api-key``. Errors use Anthropic's shape. ``POST
/v1/messages/count_tokens`` is answered in the pod, from the sidecar's own estimate.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from clawdbot_api.openai_wire import dumps
from clawdbot_api.v1alpha1 import CloudApi
from clawdbot_sidecar.errors import RequestError, StreamBroken, invalid
from clawdbot_sidecar.fronts.http import Request, Response, StreamingResponse
from clawdbot_sidecar.fronts.translate import (
    check_fields,
    decode_json,
    json_error,
    named_events,
    new_id,
    number,
    reply_headers,
)
from clawdbot_sidecar.redaction.walker import inspect_request
from clawdbot_sidecar.routing.core import RoutingCore
from clawdbot_sidecar.routing.features import estimate_tokens
from clawdbot_sidecar.routing.request import ApiKind, Inbound, Native

__all__ = ["MessagesEvents", "MessagesFront", "error_body", "message_of", "to_chat"]

# The Messages API version assumed when the app sends no anthropic-version header.
DEFAULT_VERSION: Final = "2023-06-01"
# Headers of Anthropic's API that go on to a native endpoint; no other header of the app's.
_FORWARDED: Final = ("anthropic-version", "anthropic-beta")
_KNOWN: Final = frozenset(
    {
        "model", "messages", "max_tokens", "system", "stop_sequences", "temperature",
        "top_p", "top_k", "metadata", "stream", "tools", "tool_choice", "thinking",
        "service_tier", "output_config", "cache_control", "speed", "inference_geo",
        "diagnostics", "user_profile_id", "workspace_id",
    }
)  # fmt: skip
_REFUSED: Final = {
    "container": "code-execution containers run on Anthropic's platform",
    "mcp_servers": "remote MCP servers are called by Anthropic's platform",
}
# Anthropic's effort levels as chat completions' reasoning_effort.
_EFFORT: Final = {"low": "low", "medium": "medium", "high": "high", "xhigh": "high", "max": "high"}
_STOP: Final = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "function_call": "tool_use",
    "content_filter": "refusal",
}
# HTTP status -> Anthropic's error type.
_ERROR_TYPES: Final = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    503: "overloaded_error",
}


def error_body(exc: RequestError) -> dict[str, Any]:
    """An error in Anthropic's shape: ``{"type": "error", "error": {"type", "message"}}``."""
    kind = _ERROR_TYPES.get(exc.status, "api_error")
    return {"type": "error", "error": {"type": kind, "message": exc.message}}


# -- the request -----------------------------------------------------------------------


def to_chat(body: Any) -> dict[str, Any]:
    """The chat completions body of a Messages request; a 400 names what can't be."""
    if not isinstance(body, dict):
        raise invalid("the request body must be a JSON object")
    for name, why in _REFUSED.items():
        if body.get(name) is not None:
            raise invalid(f"{name}: not supported here: {why}", name)
    check_fields(body, _KNOWN)
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise invalid("model: Field required", "model")
    max_tokens = body.get("max_tokens")
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
        raise invalid("max_tokens: Field required (a positive integer)", "max_tokens")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise invalid("messages: Field required (a non-empty array)", "messages")
    chat: dict[str, Any] = {"model": model, "max_tokens": max_tokens}
    chat["messages"] = _system(body.get("system")) + _messages(messages)
    _sampling(body, chat)
    _tools(body, chat)
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise invalid("stream: Input should be a valid boolean", "stream")
    if stream:
        chat["stream"] = True
        chat["stream_options"] = {"include_usage": True}  # usage for message_delta
    return chat


def _system(system: Any) -> list[dict[str, Any]]:
    if system is None:
        return []
    if isinstance(system, str):
        return [{"role": "system", "content": system}] if system else []
    if not isinstance(system, list):
        raise invalid("system: must be a string or an array of text blocks", "system")
    texts = []
    for i, block in enumerate(system):
        if not isinstance(block, dict) or block.get("type") != "text":
            raise invalid(f"system.{i}: only text blocks are allowed", f"system.{i}")
        texts.append(_text_of(block, f"system.{i}"))
    return [{"role": "system", "content": "\n\n".join(texts)}] if texts else []


def _sampling(body: Mapping[str, Any], chat: dict[str, Any]) -> None:
    for key in ("temperature", "top_p"):
        if number(body, key) is not None:
            chat[key] = body[key]
    number(body, "top_k")  # checked; chat completions has no top_k (docs/api.md)
    stops = body.get("stop_sequences")
    if stops is not None:
        if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
            raise invalid("stop_sequences: must be an array of strings", "stop_sequences")
        if stops:
            chat["stop"] = stops
    metadata = body.get("metadata")
    if metadata is not None:
        if not isinstance(metadata, dict):
            raise invalid("metadata: must be an object", "metadata")
        check_fields(metadata, ("user_id",), "metadata.")
        if isinstance(metadata.get("user_id"), str):
            chat["user"] = metadata["user_id"]
    config = body.get("output_config")
    if config is not None:
        _output_config(config, chat)


def _output_config(config: Any, chat: dict[str, Any]) -> None:
    if not isinstance(config, dict):
        raise invalid("output_config: must be an object", "output_config")
    check_fields(config, ("effort", "format"), "output_config.")
    effort = config.get("effort")
    if effort is not None:
        chat["reasoning_effort"] = _EFFORT.get(str(effort), "medium")
    fmt = config.get("format")
    if fmt is None:
        return
    if not isinstance(fmt, dict) or fmt.get("type") != "json_schema":
        raise invalid("output_config.format.type: must be json_schema", "output_config.format")
    if not isinstance(fmt.get("schema"), dict):
        raise invalid("output_config.format.schema: Field required", "output_config.format")
    chat["response_format"] = {
        "type": "json_schema",
        "json_schema": {"name": "output", "schema": fmt["schema"], "strict": True},
    }


def _tools(body: Mapping[str, Any], chat: dict[str, Any]) -> None:
    tools = body.get("tools")
    if tools is not None:
        if not isinstance(tools, list):
            raise invalid("tools: must be an array", "tools")
        if tools:
            chat["tools"] = [_tool(t, f"tools.{i}") for i, t in enumerate(tools)]
    choice = body.get("tool_choice")
    if choice is None:
        return
    if not isinstance(choice, dict):
        raise invalid("tool_choice: must be an object with a type", "tool_choice")
    kind = choice.get("type")
    if kind == "auto":
        chat["tool_choice"] = "auto"
    elif kind == "any":
        chat["tool_choice"] = "required"
    elif kind == "none":
        chat["tool_choice"] = "none"
    elif kind == "tool" and isinstance(choice.get("name"), str):
        chat["tool_choice"] = {"type": "function", "function": {"name": choice["name"]}}
    else:
        raise invalid("tool_choice.type: must be auto, any, tool (with a name) or none",
                      "tool_choice.type")  # fmt: skip
    if choice.get("disable_parallel_tool_use") is True and kind != "none":
        chat["parallel_tool_calls"] = False


def _tool(tool: Any, where: str) -> dict[str, Any]:
    if not isinstance(tool, dict) or tool.get("type", "custom") != "custom":
        kind = tool.get("type") if isinstance(tool, dict) else None
        raise invalid(
            f"{where}.type: only client tools (with an input_schema) can be translated; "
            f"{kind!r} is a server tool that runs on Anthropic's platform",
            f"{where}.type",
        )
    check_fields(tool, ("type", "name", "description", "input_schema", "cache_control",
                        "strict", "input_examples", "defer_loading", "eager_input_streaming",
                        "allowed_callers"), f"{where}.")  # fmt: skip
    if not isinstance(tool.get("name"), str) or not tool["name"]:
        raise invalid(f"{where}.name: Field required", f"{where}.name")
    if not isinstance(tool.get("input_schema"), dict):
        raise invalid(f"{where}.input_schema: Field required", f"{where}.input_schema")
    function: dict[str, Any] = {"name": tool["name"], "parameters": tool["input_schema"]}
    if isinstance(tool.get("description"), str):
        function["description"] = tool["description"]
    if isinstance(tool.get("strict"), bool):
        function["strict"] = tool["strict"]
    return {"type": "function", "function": function}


def _text_of(block: Mapping[str, Any], where: str) -> str:
    text = block.get("text")
    if not isinstance(text, str):
        raise invalid(f"{where}.text: Field required", f"{where}.text")
    return text


def _messages(messages: list[Any]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for i, msg in enumerate(messages):
        where = f"messages.{i}"
        if not isinstance(msg, dict) or msg.get("role") not in ("user", "assistant"):
            raise invalid(f"{where}.role: must be user or assistant", f"{where}.role")
        content = msg.get("content")
        if isinstance(content, str):
            out.append({"role": msg["role"], "content": content})
        elif isinstance(content, list):
            if msg["role"] == "assistant":
                out.append(_assistant(content, where))
            else:
                out += _user(content, where)
        else:
            raise invalid(f"{where}.content: must be a string or an array of blocks",
                          f"{where}.content")  # fmt: skip
    return out


def _assistant(blocks: list[Any], where: str) -> dict[str, Any]:
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    for j, block in enumerate(blocks):
        at = f"{where}.content.{j}"
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "text":
            texts.append(_text_of(block, at))
        elif kind == "tool_use":
            calls.append(_tool_use(block, at))
        elif kind in ("thinking", "redacted_thinking"):
            continue  # the model's earlier reasoning: a chat request has no place for it
        else:
            raise invalid(f"{at}.type: {kind!r} blocks can't be translated in an assistant "
                          "turn (text, tool_use and thinking can)", f"{at}.type")  # fmt: skip
    message: dict[str, Any] = {"role": "assistant", "content": "".join(texts) or None}
    if calls:
        message["tool_calls"] = calls
    return message


def _tool_use(block: Mapping[str, Any], where: str) -> dict[str, Any]:
    if not isinstance(block.get("id"), str) or not isinstance(block.get("name"), str):
        raise invalid(f"{where}: tool_use needs an id and a name", where)
    arguments = json.dumps(block.get("input") or {}, ensure_ascii=False)
    return {"id": block["id"], "type": "function",
            "function": {"name": block["name"], "arguments": arguments}}  # fmt: skip


def _user(blocks: list[Any], where: str) -> list[dict[str, Any]]:
    """One user turn: its tool results first (chat wants them right after the calls), then
    a user message with the rest."""
    results: list[dict[str, Any]] = []
    parts: list[dict[str, Any]] = []
    for j, block in enumerate(blocks):
        at = f"{where}.content.{j}"
        if not isinstance(block, dict):
            raise invalid(f"{at}: must be an object", at)
        if block.get("type") == "tool_result":
            results.append(_tool_result(block, at))
        else:
            parts.append(_user_part(block, at))
    if parts:
        if len(parts) == 1 and parts[0]["type"] == "text":
            results.append({"role": "user", "content": parts[0]["text"]})
        else:
            results.append({"role": "user", "content": parts})
    return results


def _user_part(block: Mapping[str, Any], where: str) -> dict[str, Any]:
    kind = block.get("type")
    if kind == "text":
        return {"type": "text", "text": _text_of(block, where)}
    source = block.get("source")
    if kind not in ("image", "document") or not isinstance(source, dict):
        raise invalid(f"{where}.type: {kind!r} blocks can't be translated (text, image, "
                      "document, tool_result can)", f"{where}.type")  # fmt: skip
    if kind == "image":
        return _image(source, where)
    return _document(block, source, where)


def _image(source: Mapping[str, Any], where: str) -> dict[str, Any]:
    if source.get("type") == "url" and isinstance(source.get("url"), str):
        return {"type": "image_url", "image_url": {"url": source["url"]}}
    if source.get("type") == "base64" and isinstance(source.get("data"), str):
        url = f"data:{source.get('media_type', 'image/png')};base64,{source['data']}"
        return {"type": "image_url", "image_url": {"url": url}}
    raise invalid(f"{where}.source: an image needs a base64 or url source", f"{where}.source")


def _document(block: Mapping[str, Any], source: Mapping[str, Any], where: str) -> dict[str, Any]:
    kind = source.get("type")
    title = block.get("title") if isinstance(block.get("title"), str) else None
    if kind == "text" and isinstance(source.get("data"), str):
        text = source["data"] if title is None else f"{title}\n\n{source['data']}"
        return {"type": "text", "text": text}
    if kind == "base64" and isinstance(source.get("data"), str):
        media = source.get("media_type", "application/pdf")
        data = f"data:{media};base64,{source['data']}"
        return {"type": "file", "file": {"file_data": data, "filename": title or "document.pdf"}}
    raise invalid(f"{where}.source: documents can be translated from base64 or text sources",
                  f"{where}.source")  # fmt: skip


def _tool_result(block: Mapping[str, Any], where: str) -> dict[str, Any]:
    if not isinstance(block.get("tool_use_id"), str):
        raise invalid(f"{where}.tool_use_id: Field required", f"{where}.tool_use_id")
    content = block.get("content", "")
    if isinstance(content, list):
        texts = []
        for k, inner in enumerate(content):
            if not isinstance(inner, dict) or inner.get("type") != "text":
                raise invalid(f"{where}.content.{k}: a tool result can only hold text in chat "
                              "completions", f"{where}.content.{k}")  # fmt: skip
            texts.append(_text_of(inner, f"{where}.content.{k}"))
        content = "\n".join(texts)
    if not isinstance(content, str):
        raise invalid(f"{where}.content: must be a string or text blocks", f"{where}.content")
    if block.get("is_error") is True:
        content = f"Error: {content}"  # chat has no is_error: the tool's message says it
    return {"role": "tool", "tool_call_id": block["tool_use_id"], "content": content}


# -- the answer ------------------------------------------------------------------------


def _usage(chat_usage: Any) -> dict[str, int]:
    usage = chat_usage if isinstance(chat_usage, dict) else {}
    cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0
    return {
        "input_tokens": int(usage.get("prompt_tokens") or 0),
        "output_tokens": int(usage.get("completion_tokens") or 0),
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": int(cached),
    }


def _input_of(arguments: Any) -> dict[str, Any]:
    """A tool call's arguments as the object tool_use carries."""
    try:
        value = json.loads(arguments) if isinstance(arguments, str) and arguments else {}
    except ValueError:
        return {"_arguments": arguments}  # not JSON (a small model's attempt): kept as text
    return value if isinstance(value, dict) else {"_arguments": value}


def message_of(chat: Mapping[str, Any], model: str, message_id: str) -> dict[str, Any]:
    """The Message of a chat completions answer."""
    choices = chat.get("choices") or [{}]
    choice = choices[0] if isinstance(choices[0], dict) else {}
    message = choice.get("message") or {}
    content: list[dict[str, Any]] = []
    text = message.get("content") or message.get("refusal")
    if text:
        content.append({"type": "text", "text": text})
    for call in message.get("tool_calls") or []:
        function = call.get("function") or {}
        content.append({"type": "tool_use", "id": str(call.get("id") or new_id("toolu")),
                        "name": str(function.get("name", "")),
                        "input": _input_of(function.get("arguments"))})  # fmt: skip
    finish = choice.get("finish_reason")
    return {
        "id": message_id,
        "type": "message",
        "role": "assistant",
        "model": chat.get("model") if isinstance(chat.get("model"), str) else model,
        "content": content,
        "stop_reason": _STOP.get(finish, "end_turn") if isinstance(finish, str) else "end_turn",
        "stop_sequence": None,
        "usage": _usage(chat.get("usage")),
    }


@dataclass
class MessagesEvents:
    """Chat completion chunks in, Anthropic's event stream out."""

    message_id: str
    model: str
    _block: tuple[int, str] | None = None
    """The open content block: its index and kind (text, or the chat tool call index)."""
    _blocks: int = 0
    _tools: dict[int, int] = field(default_factory=dict)
    _finish: Any = None
    _usage: Any = None

    def start(self) -> list[dict[str, Any]]:
        """``message_start`` (usage known at the end comes in ``message_delta``), ``ping``."""
        message: dict[str, Any] = {"id": self.message_id, "type": "message", "role": "assistant",
                   "model": self.model, "content": [], "stop_reason": None,
                   "stop_sequence": None, "usage": _usage(None)}  # fmt: skip
        return [{"type": "message_start", "message": message}, {"type": "ping"}]

    def feed(self, chunk: Mapping[str, Any]) -> list[dict[str, Any]]:
        """The events one chunk makes."""
        if chunk.get("usage"):
            self._usage = chunk["usage"]
        events: list[dict[str, Any]] = []
        for choice in chunk.get("choices") or []:
            if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta") or {}
            text = delta.get("content") or delta.get("refusal")
            if text:
                events += self._text(text)
            for call in delta.get("tool_calls") or []:
                if isinstance(call, dict):
                    events += self._call(call)
            if choice.get("finish_reason") is not None:
                self._finish = choice["finish_reason"]
        return events

    def _open(self, kind: str, block: dict[str, Any]) -> list[dict[str, Any]]:
        events = self._close()
        index = self._blocks
        self._blocks += 1
        self._block = (index, kind)
        events.append({"type": "content_block_start", "index": index, "content_block": block})
        return events

    def _close(self) -> list[dict[str, Any]]:
        if self._block is None:
            return []
        index, _ = self._block
        self._block = None
        return [{"type": "content_block_stop", "index": index}]

    def _text(self, text: str) -> list[dict[str, Any]]:
        events: list[dict[str, Any]] = []
        if self._block is None or self._block[1] != "text":
            events += self._open("text", {"type": "text", "text": ""})
        assert self._block is not None
        delta = {"type": "text_delta", "text": text}
        events.append({"type": "content_block_delta", "index": self._block[0], "delta": delta})
        return events

    def _call(self, call: Mapping[str, Any]) -> list[dict[str, Any]]:
        events: list[dict[str, Any]] = []
        key = call.get("index", 0)
        function = call.get("function") or {}
        if key not in self._tools:
            block = {"type": "tool_use", "id": str(call.get("id") or new_id("toolu")),
                     "name": str(function.get("name") or ""), "input": {}}  # fmt: skip
            events += self._open(f"tool:{key}", block)
            self._tools[key] = self._blocks - 1
        index = self._tools[key]
        arguments = function.get("arguments")
        if isinstance(arguments, str) and arguments:
            if self._block is None or self._block[0] != index:
                return events  # a late piece of a call already closed: nothing to attach it to
            delta = {"type": "input_json_delta", "partial_json": arguments}
            events.append({"type": "content_block_delta", "index": index, "delta": delta})
        return events

    def finish(self) -> list[dict[str, Any]]:
        """The open block's stop, ``message_delta`` (stop reason, usage), ``message_stop``."""
        events = self._close()
        finish = self._finish
        stop = _STOP.get(finish, "end_turn") if isinstance(finish, str) else "end_turn"
        events.append(
            {"type": "message_delta", "delta": {"stop_reason": stop, "stop_sequence": None},
             "usage": _usage(self._usage)}
        )  # fmt: skip
        events.append({"type": "message_stop"})
        return events

    @staticmethod
    def broken(exc: StreamBroken) -> list[dict[str, Any]]:
        """The ``error`` event of a stream that broke off."""
        return [{"type": "error", "error": {"type": "api_error", "message": exc.message}}]


# -- the route -------------------------------------------------------------------------


class MessagesFront:
    """The ``POST /v1/messages`` and ``/v1/messages/count_tokens`` routes of one core."""

    def __init__(self, core: RoutingCore) -> None:
        self.core = core

    async def handle(self, request: Request) -> Response | StreamingResponse:
        """Translate, route, translate back; errors in Anthropic's shape."""
        request_id = request.headers.get("x-request-id")
        try:
            body = decode_json(request.body)
            chat = to_chat(body)
            inbound = Inbound(ApiKind.CHAT, chat, request.headers, front="messages",
                              native=self._native(body, request.headers))  # fmt: skip
            answer = await self.core.handle(inbound)
        except RequestError as exc:
            return json_error(exc, error_body, request_id)
        headers = reply_headers(answer, {"request-id": answer.request_id})
        message_id = new_id("msg")
        if answer.chunks is None:
            assert answer.body is not None
            message = answer.body if answer.native else message_of(answer.body, chat["model"],
                                                                    message_id)  # fmt: skip
            return Response(200, dumps(message), headers=headers)
        events = (
            answer.chunks
            if answer.native
            else _translated(answer.chunks, MessagesEvents(message_id, chat["model"]))
        )
        return StreamingResponse(200, named_events(events, MessagesEvents.broken), headers=headers)

    async def count_tokens(self, request: Request) -> Response:
        """The prompt's tokens as the sidecar estimates them (nothing leaves the pod)."""
        try:
            body = decode_json(request.body)
            if not isinstance(body, dict):
                raise invalid("the request body must be a JSON object")
            # count_tokens takes a request without max_tokens.
            chat = to_chat({**body, "max_tokens": 1, "stream": False})
        except RequestError as exc:
            return json_error(exc, error_body, request.headers.get("x-request-id"))
        texts = inspect_request({k: v for k, v in chat.items() if k != "model"}).texts
        return Response(200, dumps({"input_tokens": estimate_tokens("\n".join(texts))}))

    def _native(self, body: dict[str, Any], headers: Mapping[str, str]) -> Native | None:
        cloud = self.core.config.policy.cloud
        if cloud is None or cloud.api != CloudApi.ANTHROPIC_MESSAGES:
            return None
        lowered = {k.lower(): v for k, v in headers.items()}
        sent: dict[str, str] = {k: lowered[k] for k in _FORWARDED if k in lowered}
        sent.setdefault("anthropic-version", DEFAULT_VERSION)
        return Native(CloudApi.ANTHROPIC_MESSAGES.value, "messages", body, sent)


async def _translated(
    chunks: AsyncIterator[dict[str, Any]], writer: MessagesEvents
) -> AsyncIterator[dict[str, Any]]:
    try:
        for event in writer.start():
            yield event
        async for chunk in chunks:
            for event in writer.feed(chunk):
                yield event
        for event in writer.finish():
            yield event
    finally:
        aclose = getattr(chunks, "aclose", None)
        if aclose is not None:
            await aclose()
