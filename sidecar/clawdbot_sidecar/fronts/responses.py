"""``POST /v1/responses``: OpenAI's Responses API on the routing core's chat completions.

The request is translated into a chat completions body (input items into messages,
``instructions`` into a system message, function tools, ``tool_choice``, ``text.format``
into ``response_format``, ``max_output_tokens``...), which the core routes like any chat
request: privacy, rules, cache, budgets, metrics and audit (as endpoint ``responses``).
The chat answer, or its chunks, come back as a Response object, or as the Responses
event stream. A cloud endpoint that speaks the Responses API (``cloud.api:
openai-responses``) gets the request as the app sent it, redacted, and its answer is passed
back as it came, restored.

``previous_response_id`` needs state that a proxy in front of several model servers
doesn't have: with ``spec.responsesStore.enabled`` the sidecar keeps each answered
response's input and output items in memory (bounded) and expands the id into them;
without it the request is refused, naming the field. docs/api.md lists every field.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from clawdbot_api.openai_wire import dumps
from clawdbot_api.v1alpha1 import CloudApi, ResponsesStore
from clawdbot_sidecar.errors import RequestError, StreamBroken, invalid
from clawdbot_sidecar.fronts.http import Request, Response, StreamingResponse
from clawdbot_sidecar.fronts.translate import (
    check_fields,
    decode_json,
    json_error,
    named_events,
    new_id,
    number,
    optional_str,
    reply_headers,
)
from clawdbot_sidecar.routing.core import RoutingCore
from clawdbot_sidecar.routing.request import ApiKind, Inbound, Native

__all__ = [
    "ResponseStoreMemory",
    "ResponsesEvents",
    "ResponsesFront",
    "Turn",
    "response_of",
    "to_chat",
]

# Top-level fields of a Responses request the translation knows (docs/api.md).
_KNOWN: Final = frozenset(
    {
        "model", "input", "instructions", "tools", "tool_choice", "parallel_tool_calls",
        "text", "max_output_tokens", "temperature", "top_p", "metadata", "user", "stream",
        "stream_options", "store", "previous_response_id", "reasoning", "service_tier",
        "safety_identifier", "prompt_cache_key", "truncation", "include", "background",
        "top_logprobs", "max_tool_calls", "prompt_cache_retention",
    }
)  # fmt: skip
# Known, but state or features of OpenAI's own platform that a translation can't give.
_REFUSED: Final = {
    "conversation": "conversations are stored by OpenAI's platform; resend the input, or "
    "use previous_response_id with the sidecar's response store",
    "prompt": "reusable prompt templates are stored by OpenAI's platform",
}
# Passed on to the chat body as they are.
_SAME: Final = (
    "temperature", "top_p", "metadata", "user", "parallel_tool_calls", "service_tier",
    "safety_identifier", "prompt_cache_key",
)  # fmt: skip
_ROLES: Final = frozenset({"user", "assistant", "system", "developer"})
_TEXT_PARTS: Final = frozenset({"input_text", "output_text"})
# Bytes of stored items per pod, whatever maxEntries says: the store lives in the app's pod.
STORE_MAX_BYTES: Final = 64 * 1024 * 1024
_FINISH: Final = {"length": "max_output_tokens", "content_filter": "content_filter"}


@dataclass
class Turn:
    """What the answer needs from its request: ids, the fields a Response echoes, and the
    items a store keeps for the next turn."""

    response_id: str
    created_at: int
    model: str
    echo: dict[str, Any]
    items: list[dict[str, Any]]
    """The request's input items, a previous response's included."""
    store: bool


# -- the request -----------------------------------------------------------------------


def to_chat(body: Any, previous: list[dict[str, Any]] | None = None) -> tuple[dict[str, Any], Turn]:
    """The chat completions body of a Responses request, and its turn.

    ``previous``: the items ``previous_response_id`` stands for (the caller looked them up).
    Raises a 400 RequestError naming the field it can't translate.
    """
    if not isinstance(body, dict):
        raise invalid("the request body must be a JSON object")
    for name, why in _REFUSED.items():
        if body.get(name) is not None:
            raise RequestError(400, f"{name} is not supported here: {why}", param=name)
    check_fields(body, _KNOWN)
    if body.get("background"):
        raise RequestError(
            400, "background responses are not supported: the sidecar answers while the app "
            "waits", param="background",
        )  # fmt: skip
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise invalid("you must provide a model parameter", "model")
    items = (previous or []) + _input_items(body.get("input"))
    messages = _messages(items)
    instructions = optional_str(body, "instructions")
    if instructions:
        messages.insert(0, {"role": "system", "content": instructions})
    if not messages:
        raise invalid("input must hold at least one message", "input")
    chat: dict[str, Any] = {"model": model, "messages": messages}
    for key in _SAME:
        if key in body:
            chat[key] = body[key]
    _sampling(body, chat)
    _tools(body, chat)
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise invalid("stream must be a boolean", "stream")
    if stream:
        chat["stream"] = True
        chat["stream_options"] = {"include_usage": True}  # usage for response.completed
    turn = Turn(
        response_id=new_id("resp"),
        created_at=int(time.time()),
        model=model,
        echo=_echo(body),
        items=items,
        store=body.get("store") is not False,
    )
    return chat, turn


def _sampling(body: Mapping[str, Any], chat: dict[str, Any]) -> None:
    for key in ("temperature", "top_p"):
        number(body, key)
    limit = body.get("max_output_tokens")
    if limit is not None:
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise invalid("max_output_tokens must be a positive integer", "max_output_tokens")
        chat["max_completion_tokens"] = limit
    reasoning = body.get("reasoning")
    if isinstance(reasoning, dict) and isinstance(reasoning.get("effort"), str):
        chat["reasoning_effort"] = reasoning["effort"]
    text = body.get("text")
    if text is None:
        return
    if not isinstance(text, dict):
        raise invalid("text must be an object", "text")
    check_fields(text, ("format", "verbosity"), "text.")
    if text.get("verbosity") is not None:
        chat["verbosity"] = text["verbosity"]
    fmt = text.get("format")
    if fmt is not None:
        chat["response_format"] = _response_format(fmt)


def _response_format(fmt: Any) -> dict[str, Any]:
    if not isinstance(fmt, dict) or not isinstance(fmt.get("type"), str):
        raise invalid("text.format must be an object with a type", "text.format")
    kind = fmt["type"]
    if kind in ("text", "json_object"):
        return {"type": kind}
    if kind != "json_schema":
        raise invalid(f"text.format.type '{kind}' is not supported", "text.format.type")
    check_fields(fmt, ("type", "name", "schema", "description", "strict"), "text.format.")
    if not isinstance(fmt.get("name"), str) or not isinstance(fmt.get("schema"), dict):
        raise invalid("text.format needs a name and a schema object", "text.format")
    schema = {k: fmt[k] for k in ("name", "schema", "description", "strict") if k in fmt}
    return {"type": "json_schema", "json_schema": schema}


def _tools(body: Mapping[str, Any], chat: dict[str, Any]) -> None:
    tools = body.get("tools")
    if tools is not None:
        if not isinstance(tools, list):
            raise invalid("tools must be an array", "tools")
        if tools:
            chat["tools"] = [_tool(t, f"tools[{i}]") for i, t in enumerate(tools)]
    choice = body.get("tool_choice")
    if choice is not None:
        chat["tool_choice"] = _tool_choice(choice)


def _tool(tool: Any, where: str) -> dict[str, Any]:
    if not isinstance(tool, dict) or tool.get("type") != "function":
        kind = tool.get("type") if isinstance(tool, dict) else None
        raise invalid(
            f"{where}.type: only function tools can be translated (got {kind!r}); built-in "
            "tools (web search, file search, computer use...) run on OpenAI's platform",
            f"{where}.type",
        )
    check_fields(tool, ("type", "name", "description", "parameters", "strict"), f"{where}.")
    if not isinstance(tool.get("name"), str) or not tool["name"]:
        raise invalid(f"{where}.name must be a non-empty string", f"{where}.name")
    function = {k: tool[k] for k in ("name", "description", "parameters", "strict")
                if tool.get(k) is not None}  # fmt: skip
    return {"type": "function", "function": function}


def _tool_choice(choice: Any) -> Any:
    if choice in ("none", "auto", "required"):
        return choice
    if isinstance(choice, dict) and choice.get("type") == "function":
        if not isinstance(choice.get("name"), str):
            raise invalid("tool_choice.name must be a string", "tool_choice.name")
        return {"type": "function", "function": {"name": choice["name"]}}
    if isinstance(choice, dict) and choice.get("type") == "allowed_tools":
        tools = choice.get("tools")
        if not isinstance(tools, list) or not all(
            isinstance(t, dict) and t.get("type") == "function" for t in tools
        ):
            raise invalid("tool_choice.tools must be function tools", "tool_choice.tools")
        named = [{"type": "function", "function": {"name": t.get("name")}} for t in tools]
        mode = choice.get("mode", "auto")
        return {"type": "allowed_tools", "allowed_tools": {"mode": mode, "tools": named}}
    raise invalid(
        "tool_choice must be none, auto, required, a function or allowed_tools", "tool_choice"
    )


def _input_items(value: Any) -> list[dict[str, Any]]:
    """The request's input as items (a string is one user message)."""
    if value is None:
        return []
    if isinstance(value, str):
        return [{"type": "message", "role": "user", "content": value}]
    if not isinstance(value, list):
        raise invalid("input must be a string or an array of items", "input")
    for i, item in enumerate(value):
        if not isinstance(item, dict):
            raise invalid(f"input[{i}] must be an object", f"input[{i}]")
    return list(value)


def _messages(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for i, item in enumerate(items):
        where = f"input[{i}]"
        kind = item.get("type", "message" if "role" in item else None)
        if kind == "message":
            out.append(_message(item, where))
        elif kind == "function_call":
            _tool_call(out, item, where)
        elif kind == "function_call_output":
            out.append(_tool_output(item, where))
        elif kind == "reasoning":
            continue  # the model's own reasoning: nothing a chat request can carry
        else:
            raise invalid(
                f"{where}.type: {kind!r} items can't be translated (message, function_call "
                "and function_call_output can)",
                f"{where}.type",
            )
    return out


def _message(item: Mapping[str, Any], where: str) -> dict[str, Any]:
    role = item.get("role")
    if role not in _ROLES:
        raise invalid(f"{where}.role must be one of {sorted(_ROLES)}", f"{where}.role")
    content = item.get("content")
    if isinstance(content, str):
        return {"role": role, "content": content}
    if not isinstance(content, list):
        raise invalid(f"{where}.content must be a string or an array", f"{where}.content")
    parts = [_part(p, f"{where}.content[{j}]") for j, p in enumerate(content)]
    if len(parts) == 1 and parts[0]["type"] == "text":
        return {"role": role, "content": parts[0]["text"]}
    return {"role": role, "content": parts}


def _part(part: Any, where: str) -> dict[str, Any]:
    if not isinstance(part, dict):
        raise invalid(f"{where} must be an object", where)
    kind = part.get("type")
    if kind in _TEXT_PARTS:
        if not isinstance(part.get("text"), str):
            raise invalid(f"{where}.text must be a string", f"{where}.text")
        return {"type": "text", "text": part["text"]}
    if kind == "refusal":
        return {"type": "text", "text": str(part.get("refusal", ""))}
    if kind == "input_image":
        return _image(part, where)
    if kind == "input_file":
        if part.get("file_url") is not None:
            raise invalid(f"{where}.file_url: files by URL can't be translated", where)
        file = {k: part[k] for k in ("file_data", "file_id", "filename") if k in part}
        return {"type": "file", "file": file}
    if kind == "input_audio":
        return {"type": "input_audio", "input_audio": part.get("input_audio")}
    raise invalid(f"{where}.type: {kind!r} content can't be translated", f"{where}.type")


def _image(part: Mapping[str, Any], where: str) -> dict[str, Any]:
    url = part.get("image_url")
    if not isinstance(url, str):
        raise invalid(
            f"{where}: an image needs image_url (a URL or a data URL); images by file_id "
            "can't be translated",
            f"{where}.image_url",
        )
    return {"type": "image_url", "image_url": {"url": url, "detail": part.get("detail", "auto")}}


def _tool_call(out: list[dict[str, Any]], item: Mapping[str, Any], where: str) -> None:
    for key in ("call_id", "name", "arguments"):
        if not isinstance(item.get(key), str):
            raise invalid(f"{where}.{key} must be a string", f"{where}.{key}")
    call = {
        "id": item["call_id"],
        "type": "function",
        "function": {"name": item["name"], "arguments": item["arguments"]},
    }
    last = out[-1] if out else None
    # The items of one answer (text, then calls) are one assistant message in chat.
    if last is not None and last["role"] == "assistant":
        last.setdefault("tool_calls", []).append(call)
        return
    out.append({"role": "assistant", "content": None, "tool_calls": [call]})


def _tool_output(item: Mapping[str, Any], where: str) -> dict[str, Any]:
    if not isinstance(item.get("call_id"), str):
        raise invalid(f"{where}.call_id must be a string", f"{where}.call_id")
    output = item.get("output")
    if isinstance(output, list):
        parts = [_part(p, f"{where}.output[{j}]") for j, p in enumerate(output)]
        if any(p["type"] != "text" for p in parts):
            raise invalid(f"{where}.output: a tool's output can only be text in chat", where)
        output = "".join(p["text"] for p in parts)
    if not isinstance(output, str):
        raise invalid(f"{where}.output must be a string or text parts", f"{where}.output")
    return {"role": "tool", "tool_call_id": item["call_id"], "content": output}


def _echo(body: Mapping[str, Any]) -> dict[str, Any]:
    """The request fields a Response object repeats, with the API's defaults."""
    return {
        "instructions": body.get("instructions"),
        "max_output_tokens": body.get("max_output_tokens"),
        "metadata": body.get("metadata") or {},
        "parallel_tool_calls": body.get("parallel_tool_calls", True),
        "previous_response_id": body.get("previous_response_id"),
        "reasoning": body.get("reasoning") or {"effort": None, "summary": None},
        "service_tier": body.get("service_tier", "default"),
        "store": body.get("store", True),
        "temperature": body.get("temperature", 1.0),
        "text": body.get("text") or {"format": {"type": "text"}},
        "tool_choice": body.get("tool_choice", "auto"),
        "tools": body.get("tools") or [],
        "top_p": body.get("top_p", 1.0),
        "truncation": body.get("truncation", "disabled"),
        "user": body.get("user"),
    }


# -- the answer ------------------------------------------------------------------------


def _usage(chat_usage: Any) -> dict[str, Any] | None:
    if not isinstance(chat_usage, dict):
        return None
    prompt = chat_usage.get("prompt_tokens") or 0
    completion = chat_usage.get("completion_tokens") or 0
    cached = (chat_usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0
    reasoning = (chat_usage.get("completion_tokens_details") or {}).get("reasoning_tokens") or 0
    return {
        "input_tokens": prompt,
        "input_tokens_details": {"cached_tokens": cached},
        "output_tokens": completion,
        "output_tokens_details": {"reasoning_tokens": reasoning},
        "total_tokens": chat_usage.get("total_tokens") or prompt + completion,
    }


def _envelope(turn: Turn, status: str, model: str) -> dict[str, Any]:
    return {
        "id": turn.response_id,
        "object": "response",
        "created_at": turn.created_at,
        "status": status,
        "background": False,
        "error": None,
        "incomplete_details": None,
        "model": model,
        "output": [],
        "usage": None,
        **turn.echo,
    }


def _text_item(item_id: str, text: str, refusal: str | None, status: str) -> dict[str, Any]:
    content: list[dict[str, Any]] = []
    if text or not refusal:
        content.append({"type": "output_text", "text": text, "annotations": [], "logprobs": []})
    if refusal:
        content.append({"type": "refusal", "refusal": refusal})
    return {"type": "message", "id": item_id, "status": status, "role": "assistant",
            "content": content}  # fmt: skip


def _call_item(
    item_id: str, call_id: str, name: str, arguments: str, status: str
) -> dict[str, Any]:
    return {"type": "function_call", "id": item_id, "call_id": call_id, "name": name,
            "arguments": arguments, "status": status}  # fmt: skip


def _finish(response: dict[str, Any], finish_reason: Any) -> None:
    incomplete = _FINISH.get(finish_reason) if isinstance(finish_reason, str) else None
    if incomplete is not None:
        response["status"] = "incomplete"
        response["incomplete_details"] = {"reason": incomplete}


def response_of(chat: Mapping[str, Any], turn: Turn) -> dict[str, Any]:
    """The Response object of a chat completions answer."""
    model = chat.get("model") if isinstance(chat.get("model"), str) else turn.model
    response = _envelope(turn, "completed", str(model))
    choices = chat.get("choices") or [{}]
    choice = choices[0] if isinstance(choices[0], dict) else {}
    message = choice.get("message") or {}
    text, refusal = message.get("content"), message.get("refusal")
    calls = message.get("tool_calls") or []
    if text or refusal or not calls:
        item = _text_item(new_id("msg"), text or "", refusal, "completed")
        response["output"].append(item)
    for call in calls:
        function = call.get("function") or {}
        response["output"].append(
            _call_item(new_id("fc"), str(call.get("id") or new_id("call")),
                       str(function.get("name", "")), str(function.get("arguments", "")),
                       "completed")
        )  # fmt: skip
    _finish(response, choice.get("finish_reason"))
    response["usage"] = _usage(chat.get("usage"))
    return response


@dataclass
class _Call:
    index: int
    item_id: str
    call_id: str
    name: str
    arguments: str = ""


@dataclass
class ResponsesEvents:
    """Chat completion chunks in, the Responses event stream out."""

    turn: Turn
    model: str = ""
    sequence: int = 0
    output: list[dict[str, Any]] = field(default_factory=list)
    _text: tuple[int, str] | None = None
    _text_acc: list[str] = field(default_factory=list)
    _refusal: list[str] = field(default_factory=list)
    _calls: dict[int, _Call] = field(default_factory=dict)
    _open_calls: list[int] = field(default_factory=list)
    _finish_reason: Any = None
    _usage: Any = None
    _next_index: int = 0

    def _event(self, kind: str, **fields: Any) -> dict[str, Any]:
        event = {"type": kind, "sequence_number": self.sequence, **fields}
        self.sequence += 1
        return event

    def _response(self, status: str) -> dict[str, Any]:
        return _envelope(self.turn, status, self.model or self.turn.model)

    def start(self) -> list[dict[str, Any]]:
        """``response.created`` and ``response.in_progress``."""
        return [
            self._event("response.created", response=self._response("in_progress")),
            self._event("response.in_progress", response=self._response("in_progress")),
        ]

    def feed(self, chunk: Mapping[str, Any]) -> list[dict[str, Any]]:
        """The events one chunk makes."""
        if isinstance(chunk.get("model"), str):
            self.model = chunk["model"]
        if chunk.get("usage"):
            self._usage = chunk["usage"]
        events: list[dict[str, Any]] = []
        for choice in chunk.get("choices") or []:
            if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta") or {}
            if delta.get("content"):
                events += self._text_delta(delta["content"])
            if delta.get("refusal"):
                self._refusal.append(str(delta["refusal"]))
            for call in delta.get("tool_calls") or []:
                if isinstance(call, dict):
                    events += self._call_delta(call)
            if choice.get("finish_reason") is not None:
                self._finish_reason = choice["finish_reason"]
        return events

    def _text_delta(self, text: str) -> list[dict[str, Any]]:
        events: list[dict[str, Any]] = []
        if self._text is None:
            events += self._close_calls()
            events += self._open_text()
        assert self._text is not None
        index, item_id = self._text
        self._text_acc.append(text)
        events.append(
            self._event("response.output_text.delta", item_id=item_id, output_index=index,
                        content_index=0, delta=text, logprobs=[])
        )  # fmt: skip
        return events

    def _open_text(self) -> list[dict[str, Any]]:
        index, item_id = self._next_index, new_id("msg")
        self._next_index += 1
        self._text = (index, item_id)
        item = _text_item(item_id, "", None, "in_progress")
        item["content"] = []
        part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
        return [
            self._event("response.output_item.added", output_index=index, item=item),
            self._event("response.content_part.added", item_id=item_id, output_index=index,
                        content_index=0, part=part),
        ]  # fmt: skip

    def _close_text(self) -> list[dict[str, Any]]:
        if self._text is None:
            return []
        index, item_id = self._text
        self._text = None
        text = "".join(self._text_acc)
        item = _text_item(item_id, text, "".join(self._refusal) or None, "completed")
        self.output.append(item)
        part = item["content"][0]
        return [
            self._event("response.output_text.done", item_id=item_id, output_index=index,
                        content_index=0, text=text, logprobs=[]),
            self._event("response.content_part.done", item_id=item_id, output_index=index,
                        content_index=0, part=part),
            self._event("response.output_item.done", output_index=index, item=item),
        ]  # fmt: skip

    def _call_delta(self, delta: Mapping[str, Any]) -> list[dict[str, Any]]:
        events: list[dict[str, Any]] = []
        key = delta.get("index", 0)
        function = delta.get("function") or {}
        call = self._calls.get(key)
        if call is None:
            events += self._close_text()
            call_id = str(delta.get("id") or new_id("call"))
            call = _Call(self._next_index, new_id("fc"), call_id, str(function.get("name") or ""))
            self._next_index += 1
            self._calls[key] = call
            self._open_calls.append(key)
            item = _call_item(call.item_id, call.call_id, call.name, "", "in_progress")
            events.append(
                self._event("response.output_item.added", output_index=call.index, item=item)
            )
        arguments = function.get("arguments")
        if isinstance(arguments, str) and arguments:
            call.arguments += arguments
            events.append(
                self._event("response.function_call_arguments.delta", item_id=call.item_id,
                            output_index=call.index, delta=arguments)
            )  # fmt: skip
        return events

    def _close_calls(self) -> list[dict[str, Any]]:
        events: list[dict[str, Any]] = []
        for key in self._open_calls:
            call = self._calls[key]
            item = _call_item(call.item_id, call.call_id, call.name, call.arguments, "completed")
            self.output.append(item)
            events += [
                self._event("response.function_call_arguments.done", item_id=call.item_id,
                            output_index=call.index, name=call.name, arguments=call.arguments),
                self._event("response.output_item.done", output_index=call.index, item=item),
            ]  # fmt: skip
        self._open_calls = []
        return events

    def finish(self) -> list[dict[str, Any]]:
        """The closing events: open items done, then ``response.completed`` (or
        ``response.incomplete`` when the answer was cut short)."""
        events: list[dict[str, Any]] = []
        if self._text is None and not self._calls:
            events += self._open_text()  # an empty answer is still one message
        events += self._close_text() + self._close_calls()
        response = self._response("completed")
        # Opening an item closes the others, so items close in the order they opened.
        response["output"] = list(self.output)
        _finish(response, self._finish_reason)
        response["usage"] = _usage(self._usage)
        kind = "response.completed" if response["status"] == "completed" else "response.incomplete"
        events.append(self._event(kind, response=response))
        return events

    def broken(self, exc: StreamBroken) -> list[dict[str, Any]]:
        """An ``error`` event and ``response.failed``, for a stream that broke off."""
        response = self._response("failed")
        response["error"] = {"code": "server_error", "message": exc.message}
        response["output"] = list(self.output)
        return [
            self._event("error", code=exc.code, message=exc.message, param=None),
            self._event("response.failed", response=response),
        ]


# -- the store -------------------------------------------------------------------------


@dataclass
class _Stored:
    expires: float
    items: list[dict[str, Any]]
    size: int


class ResponseStoreMemory:
    """Answered responses' items by response id: LRU, with a time to live and a byte cap."""

    def __init__(self) -> None:
        self._entries: OrderedDict[str, _Stored] = OrderedDict()
        self._bytes = 0

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, response_id: str) -> list[dict[str, Any]] | None:
        """The items behind ``response_id`` (its input and output), if still kept."""
        entry = self._entries.get(response_id)
        if entry is None:
            return None
        if entry.expires <= time.monotonic():
            self._drop(response_id)
            return None
        self._entries.move_to_end(response_id)
        return list(entry.items)

    def put(self, response_id: str, items: list[dict[str, Any]], policy: ResponsesStore) -> None:
        """Keep ``items`` for ``policy.ttl_seconds``, evicting the oldest beyond the limits."""
        size = len(dumps(items))
        if size > STORE_MAX_BYTES:
            return
        if response_id in self._entries:
            self._drop(response_id)
        self._entries[response_id] = _Stored(time.monotonic() + policy.ttl_seconds, items, size)
        self._bytes += size
        while len(self._entries) > policy.max_entries or self._bytes > STORE_MAX_BYTES:
            self._drop(next(iter(self._entries)))

    def _drop(self, response_id: str) -> None:
        entry = self._entries.pop(response_id)
        self._bytes -= entry.size


# -- the route -------------------------------------------------------------------------


def _error_body(exc: RequestError) -> dict[str, Any]:
    return exc.body()


class ResponsesFront:
    """The ``POST /v1/responses`` route of one routing core."""

    def __init__(self, core: RoutingCore) -> None:
        self.core = core
        self.store = ResponseStoreMemory()

    async def handle(self, request: Request) -> Response | StreamingResponse:
        """Translate, route, translate back; errors in OpenAI's shape."""
        try:
            body = decode_json(request.body)
            previous = self._previous(body)
            chat, turn = to_chat(body, previous)
            native = self._native(body, turn)
            inbound = Inbound(ApiKind.CHAT, chat, request.headers, front="responses",
                              native=native)  # fmt: skip
            answer = await self.core.handle(inbound)
        except RequestError as exc:
            return json_error(exc, _error_body, request.headers.get("x-request-id"))
        headers = reply_headers(answer)
        if answer.chunks is None:
            assert answer.body is not None
            response = answer.body if answer.native else response_of(answer.body, turn)
            self._keep(turn, response)
            return Response(200, dumps(response), headers=headers)
        writer = ResponsesEvents(turn)
        if answer.native:
            events = self._native_events(answer.chunks, turn, writer)
            # The cloud's response has its own id: only the error event, no response.failed
            # of ours that would contradict it.
            return StreamingResponse(
                200, named_events(events, lambda exc: writer.broken(exc)[:1]), headers=headers
            )
        events = self._events(answer.chunks, turn, writer)
        return StreamingResponse(200, named_events(events, writer.broken), headers=headers)

    def _previous(self, body: Any) -> list[dict[str, Any]] | None:
        if not isinstance(body, dict) or body.get("previous_response_id") is None:
            return None
        previous_id = body["previous_response_id"]
        if not isinstance(previous_id, str):
            raise invalid("previous_response_id must be a string", "previous_response_id")
        if not self.core.config.policy.responses_store.enabled:
            raise RequestError(
                400,
                "previous_response_id needs the sidecar's response store, which this pod's "
                "routing policy doesn't enable (spec.responsesStore.enabled); resend the "
                "conversation in input instead",
                param="previous_response_id",
                code="previous_response_not_found",
            )
        items = self.store.get(previous_id)
        if items is None:
            raise RequestError(
                400,
                f"Previous response with id '{previous_id}' not found (it expired, was evicted, "
                "or was answered by another pod)",
                param="previous_response_id",
                code="previous_response_not_found",
            )
        return items

    def _native(self, body: dict[str, Any], turn: Turn) -> Native | None:
        cloud = self.core.config.policy.cloud
        if cloud is None or cloud.api != CloudApi.OPENAI_RESPONSES:
            return None
        # The sidecar resolved previous_response_id itself: the cloud gets the whole input.
        native = {k: v for k, v in body.items() if k != "previous_response_id"}
        if body.get("previous_response_id") is not None:
            native["input"] = turn.items
        return Native(CloudApi.OPENAI_RESPONSES.value, "responses", native, {})

    def _keep(self, turn: Turn, response: Mapping[str, Any]) -> None:
        policy = self.core.config.policy.responses_store
        response_id = response.get("id")
        output = response.get("output")
        if not (policy.enabled and turn.store and isinstance(response_id, str)):
            return
        if isinstance(output, list):
            self.store.put(response_id, turn.items + list(output), policy)

    async def _events(
        self, chunks: AsyncIterator[dict[str, Any]], turn: Turn, writer: ResponsesEvents
    ) -> AsyncIterator[dict[str, Any]]:
        try:
            for event in writer.start():
                yield event
            async for chunk in chunks:
                for event in writer.feed(chunk):
                    yield event
            for event in writer.finish():
                if event["type"] in _FINAL:
                    self._keep(turn, event["response"])
                yield event
        finally:
            await _close(chunks)

    async def _native_events(
        self, chunks: AsyncIterator[dict[str, Any]], turn: Turn, writer: ResponsesEvents
    ) -> AsyncIterator[dict[str, Any]]:
        try:
            async for event in chunks:
                number_ = event.get("sequence_number")
                if isinstance(number_, int):
                    writer.sequence = number_ + 1  # an error event after it comes next
                response = event.get("response")
                if event.get("type") in _FINAL and isinstance(response, dict):
                    self._keep(turn, response)
                yield event
        finally:
            await _close(chunks)


_FINAL: Final = ("response.completed", "response.incomplete")


async def _close(chunks: AsyncIterator[dict[str, Any]]) -> None:
    aclose = getattr(chunks, "aclose", None)
    if aclose is not None:
        await aclose()
