"""OpenAI's wire format, written and read in one place: error bodies, SSE framing, usage.

The sidecar's fronts and upstream client, the ONNX runtime's OpenAI API and the cloud
stand-in all speak it; each used to carry its own copy of these few rules. Only encoding
lives here, no I/O: callers write the bytes, and feed what they read to :class:`SseDecoder`.

    sse_event({"choices": [...]})    -> b'data: {"choices":[...]}\\n\\n'
    SSE_DONE                         -> b"data: [DONE]\\n\\n"
    error_body("bad model", param="model")
    decoder = SseDecoder(); decoder.feed(chunk) -> [event, ...]; decoder.done
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, Final

import orjson

__all__ = [
    "MAX_JSON_DEPTH",
    "MAX_SSE_LINE_BYTES",
    "SSE_DONE",
    "SseDecoder",
    "SseError",
    "dumps",
    "error_body",
    "loads",
    "sse_event",
    "usage_of",
]

# The end of every OpenAI event stream.
SSE_DONE: Final = b"data: [DONE]\n\n"
# An SSE line from a well-behaved server is a few kilobytes at most (one chunk of tokens);
# a longer one is a broken or hostile peer, and buffering it would cost unbounded memory.
MAX_SSE_LINE_BYTES: Final = 1 << 20
# Arrays and objects nested deeper than this are refused. OpenAI bodies nest a handful of
# levels (a tool's JSON Schema a few more), while everything that walks a body (redaction,
# cache keys, the encoder: orjson's stops at 254) recurses once or more per level, and
# Python's stack ends near 1,000 frames: a body 900 deep parsed, then failed in a walker.
MAX_JSON_DEPTH: Final = 128


def loads(data: bytes | str, *, max_depth: int | None = MAX_JSON_DEPTH) -> Any:
    """Parse JSON with orjson; what only the standard library accepts (NaN, integers beyond
    64 bits) still parses, through it. Raises ValueError, also for arrays and objects
    nested deeper than ``max_depth`` (None: as deep as the parsers allow)."""
    try:
        value = orjson.loads(data)
    except orjson.JSONDecodeError:
        try:
            value = json.loads(data)
        except RecursionError as exc:  # nested deeper than the interpreter's stack allows
            raise ValueError("JSON nested too deeply") from exc
    if max_depth is not None and _brackets(data) > max_depth and _nested_deeper(value, max_depth):
        raise ValueError(f"JSON nested deeper than {max_depth} levels")
    return value


def _brackets(data: bytes | str) -> int:
    """Opening brackets in ``data``, at C speed: a document with fewer of them than the
    depth limit can't nest past it, and needs no walk."""
    if isinstance(data, str):
        return data.count("[") + data.count("{")
    return data.count(b"[") + data.count(b"{")


def _nested_deeper(value: Any, limit: int) -> bool:
    """Whether arrays and objects in ``value`` nest deeper than ``limit``, level by level
    (not recursing: the point is to refuse what recursion can't handle)."""
    if type(value) is not dict and type(value) is not list:
        return False  # a string full of brackets
    level = [value]
    for _ in range(limit):
        deeper = []
        for node in level:
            for child in node.values() if type(node) is dict else node:
                kind = type(child)
                if kind is dict or kind is list:
                    deeper.append(child)
        if not deeper:
            return False
        level = deeper
    return True


def dumps(value: Any) -> bytes:
    """Serialize JSON compactly as UTF-8 with orjson; integers beyond 64 bits go through the
    standard library, which orjson refuses."""
    try:
        return orjson.dumps(value)
    except TypeError:
        return json.dumps(value, separators=(",", ":")).encode()


def error_body(
    message: str,
    *,
    type_: str = "invalid_request_error",
    param: str | None = None,
    code: str | None = None,
) -> dict[str, Any]:
    """OpenAI's error document, ``{"error": {"message", "type", "param", "code"}}``, which
    the OpenAI SDKs turn into their usual exceptions."""
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def sse_event(event: Mapping[str, Any]) -> bytes:
    """One server-sent event carrying ``event`` as JSON."""
    return b"data: " + dumps(event) + b"\n\n"


def usage_of(body: Mapping[str, Any]) -> tuple[int, int]:
    """(prompt_tokens, completion_tokens) of an answer or chunk; zeros where absent."""
    usage = body.get("usage")
    if not isinstance(usage, dict):
        return 0, 0
    prompt = usage.get("prompt_tokens")
    completion = usage.get("completion_tokens")
    return (
        prompt if isinstance(prompt, int) and not isinstance(prompt, bool) else 0,
        completion if isinstance(completion, int) and not isinstance(completion, bool) else 0,
    )


class SseError(ValueError):
    """The peer's event stream is not a valid OpenAI stream (bad JSON, an oversized line)."""


class SseDecoder:
    """Incremental reader of an OpenAI event stream: ``data:`` payloads as dicts.

    Bytes arrive in arbitrary pieces; complete lines are decoded as they come. Comments,
    event names and keep-alives are skipped; ``data: [DONE]`` sets :attr:`done`, after which
    everything is ignored. Payloads that are JSON but not objects are skipped too.
    """

    __slots__ = ("_buffer", "done")

    def __init__(self) -> None:
        self._buffer = b""
        self.done = False

    def feed(self, data: bytes) -> list[dict[str, Any]]:
        """The events completed by ``data``; raises SseError on a malformed stream."""
        if self.done:
            return []
        buffer = self._buffer + data if self._buffer else data
        events: list[dict[str, Any]] = []
        start = 0
        while True:
            end = buffer.find(b"\n", start)
            if end == -1:
                break
            line = buffer[start:end]
            start = end + 1
            event = self._line(line)
            if event is not None:
                events.append(event)
            if self.done:
                self._buffer = b""
                return events
        rest = buffer[start:]
        if len(rest) > MAX_SSE_LINE_BYTES:
            raise SseError(f"an event stream line is longer than {MAX_SSE_LINE_BYTES} bytes")
        self._buffer = rest
        return events

    def close(self) -> list[dict[str, Any]]:
        """Events of a last line that ended without a newline (the body ended)."""
        rest, self._buffer = self._buffer, b""
        if self.done or not rest:
            return []
        event = self._line(rest)
        return [event] if event is not None else []

    def _line(self, raw: bytes) -> dict[str, Any] | None:
        line = raw.strip()
        if not line.startswith(b"data:"):
            return None  # comments, event names, ids, keep-alives, blank separators
        payload = line[5:].strip()
        if payload == b"[DONE]":
            self.done = True
            return None
        try:
            event = loads(payload)
        except ValueError as exc:
            raise SseError("the peer sent an event that is not valid JSON") from exc
        return event if isinstance(event, dict) else None
