"""Putting original values back into answers, whole or streamed chunk by chunk.

Values restored into tool-call ``arguments`` (a JSON document in a string) are escaped as
JSON string content, so a value holding a quote or a backslash can't end the string early
or reshape the arguments; elsewhere they go back verbatim.
"""

from __future__ import annotations

import json
import re
from bisect import bisect_left
from collections.abc import Mapping
from typing import Any

from .engine import PLACEHOLDER_RE, PseudonymMap

__all__ = ["ChunkRestorer", "Restorer", "StreamRestorer"]


class Restorer:
    """Replaces the placeholders a PseudonymMap issued; unknown ones stay as they are."""

    def __init__(self, mapping: PseudonymMap, *, json_content: bool = False) -> None:
        """``json_content``: the answer's text is a JSON document (the request asked for
        JSON mode), so values restored into it are escaped like tool-call arguments."""
        self._mapping = mapping
        self._restored = 0
        self.json_content = json_content

    @property
    def mapping(self) -> PseudonymMap:
        """The map placeholders are looked up in."""
        return self._mapping

    def restore(self, text: str, *, in_json: bool = False) -> str:
        """`text` with every known placeholder replaced by its original value (escaped as
        JSON string content with `in_json`, for text inside a JSON document's strings)."""
        if "<" not in text or not len(self._mapping):
            return text
        return PLACEHOLDER_RE.sub(self._replace_json if in_json else self._replace, text)

    @property
    def restored(self) -> int:
        """Placeholders replaced so far; non-zero means the answer holds original values."""
        return self._restored

    def _replace(self, m: re.Match[str]) -> str:
        value = self._mapping.value_for(m.group())
        if value is None:
            return m.group()
        self._restored += 1
        return value

    def _replace_json(self, m: re.Match[str]) -> str:
        value = self._mapping.value_for(m.group())
        if value is None:
            return m.group()
        self._restored += 1
        return json.dumps(value, ensure_ascii=False)[1:-1]

    def is_partial(self, tail: str) -> bool:
        """True when `tail` is a proper prefix of a placeholder this map issued."""
        issued = self._mapping.sorted_placeholders()
        i = bisect_left(issued, tail)
        return i < len(issued) and issued[i] != tail and issued[i].startswith(tail)

    def stream(self, *, in_json: bool = False) -> StreamRestorer:
        """A restorer for one stream of text chunks (of a JSON document with `in_json`)."""
        return StreamRestorer(self, in_json=in_json)

    def chunks(self) -> ChunkRestorer:
        """A restorer for a stream of OpenAI `chat.completion.chunk`/completion chunks."""
        return ChunkRestorer(self)

    def restore_response(self, response: Mapping[str, Any]) -> dict[str, Any]:
        """A copy of a chat/completions response with its choices' texts restored.

        Only the objects on the way to a rewritten text are copied (the choices, their
        messages, tool calls and functions); the rest is shared with `response`, which is
        left as it was.
        """
        out, choices = _copy_choices(response)
        for choice in choices:
            message = choice.get("message")
            if isinstance(message, dict):
                message = choice["message"] = dict(message)
                if isinstance(message.get("content"), str):
                    message["content"] = self.restore(message["content"], in_json=self.json_content)
                for function in _copy_tool_calls(message):
                    function["arguments"] = self.restore(function["arguments"], in_json=True)
                legacy = _copy_function_call(message)
                if legacy is not None:
                    legacy["arguments"] = self.restore(legacy["arguments"], in_json=True)
            if isinstance(choice.get("text"), str):
                choice["text"] = self.restore(choice["text"])
        return out


class StreamRestorer:
    """Restores a text stream, holding back only what could be the start of a placeholder."""

    def __init__(self, restorer: Restorer, *, in_json: bool = False) -> None:
        self._restorer = restorer
        self._pending = ""
        self._in_json = in_json

    def feed(self, chunk: str) -> str:
        """Restored text that is safe to emit now."""
        text = self._pending + chunk
        # A placeholder has exactly one "<", at its start, so only the text from the last
        # "<" on can be an unfinished placeholder; everything before it is final.
        cut = text.rfind("<")
        if cut != -1 and self._restorer.is_partial(text[cut:]):
            self._pending = text[cut:]
            text = text[:cut]
        else:
            self._pending = ""
        return self._restorer.restore(text, in_json=self._in_json)

    def flush(self) -> str:
        """Whatever is still held back, at the end of the stream."""
        rest, self._pending = self._pending, ""
        return rest

    @property
    def pending(self) -> str:
        """Text held back until the next chunk shows whether it is a placeholder."""
        return self._pending


class ChunkRestorer:
    """Restores parsed SSE chunks; one text stream per choice, field and tool call."""

    def __init__(self, restorer: Restorer) -> None:
        self._restorer = restorer
        self._streams: dict[tuple[int, str, int], StreamRestorer] = {}

    def _stream(self, key: tuple[int, str, int]) -> StreamRestorer:
        found = self._streams.get(key)
        if found is None:
            in_json = key[1] in ("tool", "function_call") or (
                key[1] == "content" and self._restorer.json_content
            )
            found = self._streams[key] = self._restorer.stream(in_json=in_json)
        return found

    def feed(self, chunk: Mapping[str, Any]) -> dict[str, Any]:
        """A restored copy of one chunk; a choice's held-back text is released on finish.

        As with `Restorer.restore_response`, only what is rewritten is copied."""
        out, choices = _copy_choices(chunk)
        for choice in choices:
            index = choice.get("index", 0)
            if not isinstance(index, int):
                continue
            finished = choice.get("finish_reason") is not None
            delta = choice.get("delta")
            if isinstance(delta, dict):
                delta = choice["delta"] = dict(delta)
                self._feed_delta(index, delta, finished)
            if isinstance(choice.get("text"), str) or (
                finished and (index, "text", 0) in self._streams
            ):
                stream = self._stream((index, "text", 0))
                text = stream.feed(choice.get("text") or "")
                choice["text"] = text + stream.flush() if finished else text
        return out

    def _feed_delta(self, index: int, delta: dict[str, Any], finished: bool) -> None:
        key = (index, "content", 0)
        if isinstance(delta.get("content"), str) or (finished and key in self._streams):
            stream = self._stream(key)
            text = stream.feed(delta.get("content") or "")
            delta["content"] = text + stream.flush() if finished else text
        legacy = _copy_function_call(delta)
        legacy_key = (index, "function_call", 0)
        if legacy is not None or (finished and legacy_key in self._streams):
            stream = self._stream(legacy_key)
            text = stream.feed(legacy["arguments"] if legacy is not None else "")
            if legacy is None and finished and stream.pending:
                delta["function_call"] = {"arguments": text + stream.flush()}
            elif legacy is not None:
                legacy["arguments"] = text + stream.flush() if finished else text
        seen: set[int] = set()
        for call, function in _copy_tool_call_pairs(delta):
            tool_index = call.get("index", 0)
            if not isinstance(tool_index, int):
                continue
            seen.add(tool_index)
            stream = self._stream((index, "tool", tool_index))
            text = stream.feed(function["arguments"])
            function["arguments"] = text + stream.flush() if finished else text
        if finished:
            for (i, kind, tool_index), stream in self._streams.items():
                if i == index and kind == "tool" and tool_index not in seen and stream.pending:
                    delta.setdefault("tool_calls", []).append(
                        {"index": tool_index, "function": {"arguments": stream.flush()}}
                    )

    def flush(self, template: Mapping[str, Any] | None = None) -> dict[str, Any] | None:
        """A final chunk with all held-back text (for streams that end without finish_reason).

        `template` supplies the envelope (id, model, created...); None when nothing is held.
        """
        choices: dict[int, dict[str, Any]] = {}
        for (index, kind, tool_index), stream in self._streams.items():
            rest = stream.flush()
            if not rest:
                continue
            choice = choices.setdefault(index, {"index": index})
            if kind == "text":
                choice["text"] = rest
            elif kind == "content":
                choice.setdefault("delta", {})["content"] = rest
            elif kind == "function_call":
                choice.setdefault("delta", {})["function_call"] = {"arguments": rest}
            else:
                choice.setdefault("delta", {}).setdefault("tool_calls", []).append(
                    {"index": tool_index, "function": {"arguments": rest}}
                )
        if not choices:
            return None
        out = {k: v for k, v in (template or {}).items() if k != "choices"}
        out["choices"] = [choices[i] for i in sorted(choices)]
        return out


def _copy_choices(obj: Mapping[str, Any]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """A copy of `obj` whose choices list and choice objects are copies too (to rewrite),
    and those copied choices."""
    out = dict(obj)
    choices = obj.get("choices")
    if not isinstance(choices, list):
        return out, []
    copied = [dict(c) if isinstance(c, dict) else c for c in choices]
    out["choices"] = copied
    return out, [c for c in copied if isinstance(c, dict)]


def _copy_tool_call_pairs(message: dict[str, Any]) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """Replaces the tool calls of `message` (itself a copy) with copies down to each call's
    function; returns (call, function) for those whose arguments are text."""
    calls = message.get("tool_calls")
    if not isinstance(calls, list):
        return []
    pairs: list[tuple[dict[str, Any], dict[str, Any]]] = []
    copied: list[Any] = []
    for call in calls:
        if (
            isinstance(call, dict)
            and isinstance(call.get("function"), dict)
            and isinstance(call["function"].get("arguments"), str)
        ):
            function = dict(call["function"])
            copy = {**call, "function": function}
            pairs.append((copy, function))
            copied.append(copy)
        else:
            copied.append(call)
    message["tool_calls"] = copied
    return pairs


def _copy_function_call(message: dict[str, Any]) -> dict[str, Any] | None:
    """Replaces the legacy ``function_call`` of `message` (itself a copy) with a copy, and
    returns it when its arguments are text."""
    call = message.get("function_call")
    if not isinstance(call, dict) or not isinstance(call.get("arguments"), str):
        return None
    copy = message["function_call"] = dict(call)
    return copy


def _copy_tool_calls(message: dict[str, Any]) -> list[dict[str, Any]]:
    """The functions of `_copy_tool_call_pairs`."""
    return [function for _, function in _copy_tool_call_pairs(message)]
