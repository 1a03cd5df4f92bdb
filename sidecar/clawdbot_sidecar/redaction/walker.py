"""The one walk over an OpenAI request: every string that would leave for the cloud.

Routing features, the PII rules, detection, redaction and block all use this walk, so what
routing looked at is exactly what redaction rewrites. It descends into every field, known
or not, and visits every string value and every key of a free-form object (``metadata``, a
JSON schema's ``properties``, an unknown extension); it leaves alone only what carries no
user data:

* ``model`` (replaced by the target's model name anyway) and ``logit_bias`` (token ids);
* enumerated values in their own fields (``role: user``, ``type: text``, ``detail: low``,
  ``encoding_format: base64``...), and only when they are one of the enum's values: a
  ``role`` holding anything else is visited like any other string;
* numbers, booleans and null, which are not text;
* the keys of the API's own objects (``content``, ``tool_calls``...).

The same walk serves the other APIs a request may leave in: OpenAI's Responses (``input``
items, ``instructions``, ``input_image``/``input_file``/``input_audio`` parts) and Anthropic's
Messages (``system``, ``tool_use`` inputs, ``tool_result`` contents, ``image`` and
``document`` blocks with a base64 ``source``): their field names and enumerations are in the
tables below, and whatever is not there is visited as text.

Strings holding JSON (tool-call ``arguments``, tool results in ``content``) are decoded, so
an escaped ``\\u0040`` is seen as ``@``, their strings visited, and re-encoded when one
changed. Content that can't be inspected as text is reported, not visited: image, audio and
file parts (and ``file_id`` references), and prompts given as token ids. The caller keeps
such a request local or refuses it (see ``redaction.uninspectable``), never sends it on
silently.

Walking never changes the request: :func:`rewrite` returns a copy where the visited
strings went through a function, sharing everything else.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Final

__all__ = [
    "Inspection",
    "Uninspectable",
    "inspect_request",
    "rewrite",
    "uninspectable_kinds",
]


class Uninspectable(StrEnum):
    """Kinds of content the sidecar can't inspect as text."""

    IMAGE = "image"
    AUDIO = "audio"
    FILE = "file"
    TOKEN_IDS = "token-ids"


# Fields whose value is never user data.
_OPAQUE: Final = frozenset({"model", "logit_bias"})
# Fields whose values, when one of these, are enumerations of the API (not user text).
_ENUMS: Final[dict[str, frozenset[str]]] = {
    "role": frozenset({"system", "developer", "user", "assistant", "tool", "function"}),
    "type": frozenset(
        {
            "text", "input_text", "output_text", "refusal", "image_url", "input_image",
            "image", "input_audio", "audio", "file", "input_file", "function", "tool",
            "custom", "json_schema", "json_object", "content", "message", "function_call",
            "function_call_output", "approximate", "allowed_tools",
            # JSON schema types (response_format, tool parameters)
            "string", "number", "integer", "boolean", "object", "array", "null",
            # Responses: items, tool choices, text formats
            "reasoning", "summary_text", "item_reference",
            # Messages: blocks, their sources, tool choices, thinking, cache control
            "tool_use", "tool_result", "document", "thinking", "redacted_thinking",
            "base64", "url", "auto", "any", "none", "enabled", "disabled", "ephemeral",
        }
    ),
    "status": frozenset({"completed", "in_progress", "incomplete"}),
    "stop_reason": frozenset(
        {"end_turn", "max_tokens", "stop_sequence", "tool_use", "pause_turn", "refusal"}
    ),
    "truncation": frozenset({"auto", "disabled"}),
    "effort": frozenset({"minimal", "low", "medium", "high"}),
    "detail": frozenset({"auto", "low", "high"}),
    "format": frozenset({"wav", "mp3", "flac", "opus", "pcm16", "aac"}),
    "voice": frozenset(
        {"alloy", "ash", "ballad", "coral", "echo", "fable", "nova", "onyx", "sage",
         "shimmer", "verse", "marin", "cedar"}
    ),
    "encoding_format": frozenset({"float", "base64"}),
    "service_tier": frozenset({"auto", "default", "flex", "scale", "priority"}),
    "reasoning_effort": frozenset({"minimal", "low", "medium", "high"}),
    "verbosity": frozenset({"low", "medium", "high"}),
    "modalities": frozenset({"text", "audio"}),
    "tool_choice": frozenset({"none", "auto", "required"}),
    "finish_reason": frozenset({"stop", "length", "tool_calls", "content_filter"}),
    "object": frozenset({"chat.completion", "text_completion", "list"}),
}  # fmt: skip
# Keys of the API's own objects: field names, never user data, so not visited as text.
_FIELDS: Final = frozenset(
    {
        "model", "messages", "role", "content", "name", "tool_calls", "tool_call_id", "id",
        "type", "function", "arguments", "function_call", "functions", "refusal", "audio",
        "text", "image_url", "url", "detail", "input_audio", "data", "format", "file",
        "file_id", "file_data", "filename", "prompt", "suffix", "input", "user", "tools",
        "tool_choice", "parallel_tool_calls", "description", "parameters", "strict",
        "response_format", "json_schema", "schema", "stream", "stream_options",
        "include_usage", "temperature", "top_p", "n", "stop", "max_tokens",
        "max_completion_tokens", "presence_penalty", "frequency_penalty", "logit_bias",
        "logprobs", "top_logprobs", "seed", "service_tier", "store", "metadata",
        "reasoning_effort", "modalities", "prediction", "voice", "web_search_options",
        "user_location", "approximate", "city", "country", "region", "timezone",
        "search_context_size", "echo", "best_of", "encoding_format", "dimensions",
        "verbosity", "prompt_cache_key", "safety_identifier", "properties", "required",
        "items", "enum", "additionalProperties", "title", "default", "examples",
        # Responses
        "instructions", "call_id", "output", "previous_response_id", "max_output_tokens",
        "truncation", "include", "reasoning", "effort", "summary", "status", "file_url",
        "background", "max_tool_calls", "conversation", "language",
        "timestamp_granularities", "content_type", "chunking_strategy",
        # Messages
        "system", "tool_use_id", "is_error", "input_schema", "source", "media_type",
        "stop_sequences", "top_k", "thinking", "budget_tokens", "signature",
        "cache_control", "ttl", "disable_parallel_tool_use", "user_id", "stop_reason",
        "stop_sequence", "context", "citations",
    }
)  # fmt: skip
# Content part types whose payload is not text.
_PART_KINDS: Final[dict[str, Uninspectable]] = {
    "image_url": Uninspectable.IMAGE,
    "input_image": Uninspectable.IMAGE,
    "image": Uninspectable.IMAGE,
    "input_audio": Uninspectable.AUDIO,
    "audio": Uninspectable.AUDIO,
    "file": Uninspectable.FILE,
    "input_file": Uninspectable.FILE,
    "document": Uninspectable.FILE,
}
# Binary payloads inside such parts: not visited (the part as a whole is reported).
_PAYLOADS: Final = frozenset({"data", "file_data", "image_url", "url", "image", "b64_json"})
# A Messages ``document`` whose source is text (plain text, or content blocks) is text to
# inspect like any other, not a file.
_TEXT_SOURCES: Final = frozenset({"text", "content"})
# Strings longer than this are not tried as JSON (a tool result can be large; its text is
# still visited whole).
MAX_JSON_DECODE_CHARS: Final = 1 << 20
# Fields whose text is the conversation itself (size and complexity are measured on it).
_CONVERSATION: Final = frozenset(
    {"content", "text", "refusal", "prompt", "input", "suffix", "instructions", "system"}
)

Visit = Callable[[str], str]


@dataclass(frozen=True, slots=True)
class Inspection:
    """What one walk found."""

    texts: list[str]
    """Every visited string, in walk order (JSON inside strings: its inner strings)."""
    conversation: list[str]
    """The texts of the conversation (message content, prompt, input): what the request's
    size and complexity are measured on."""
    turns: int
    """Messages in a chat request; 1 for a prompt or input."""
    uninspectable: frozenset[Uninspectable]
    """Kinds of content found that can't be inspected."""


class _Walker:
    """One traversal; ``visit`` gets every inspectable string and returns its replacement."""

    __slots__ = ("conversation", "found", "uninspectable", "visit")

    def __init__(self, visit: Visit, *, collect: bool = False) -> None:
        self.visit = visit
        self.uninspectable: set[Uninspectable] = set()
        self.conversation: list[str] | None = [] if collect else None
        self.found = False

    def text(self, value: str, conversational: bool) -> str:
        if conversational and self.conversation is not None:
            self.conversation.append(value)
        decoded = _json_in(value)
        if decoded is not None:
            return self._json_text(value, decoded)
        return self.visit(value)

    def _json_text(self, original: str, decoded: Any) -> str:
        new = self.value(decoded, None)
        if new is decoded or new == decoded:
            return original  # nothing changed: the exact text the app sent
        return json.dumps(new, ensure_ascii=False, separators=(",", ":"))

    def value(self, value: Any, key: str | None, conversational: bool = False) -> Any:
        if isinstance(value, str):
            return self.text(value, conversational)
        if isinstance(value, Mapping):
            return self.mapping(value, key)
        if isinstance(value, list):
            return self.items(value, key, conversational)
        return value  # numbers, booleans, null

    def items(self, values: list[Any], key: str | None, conversational: bool) -> list[Any]:
        if key in ("prompt", "input") and _token_ids(values):
            self.uninspectable.add(Uninspectable.TOKEN_IDS)
            return values
        out = [self.value(v, key, conversational) for v in values]
        return values if all(a is b for a, b in zip(out, values, strict=True)) else out

    def mapping(self, obj: Mapping[str, Any], parent: str | None, in_part: bool = False) -> Any:
        payload_kind = _payload_kind(obj)
        if payload_kind is not None:
            self.uninspectable.add(payload_kind)
        # Inside a binary part: its own fields, the object named after its type (chat's
        # image_url, input_audio, file) and a Messages block's ``source``.
        in_payload = payload_kind is not None or parent in _PART_KINDS or in_part
        changed = False
        out: dict[str, Any] = {}
        for k, v in obj.items():
            if payload_kind is not None and k == "source" and isinstance(v, Mapping):
                new_v = self.mapping(v, k, in_part=True)
            else:
                new_v = self._field(k, v, in_payload)
            new_k = k if k in _FIELDS else self.visit(k)
            changed = changed or new_v is not v or new_k != k
            out[new_k] = new_v
        return out if changed else obj

    def _field(self, key: str, value: Any, in_payload: bool) -> Any:
        if key in _OPAQUE:
            return value
        if isinstance(value, str):
            allowed = _ENUMS.get(key)
            if allowed is not None and value in allowed:
                return value
            if in_payload and key in _PAYLOADS and not _is_web_url(value):
                return value  # base64 bytes or a data: URL: reported as uninspectable
        if key == "file_id" and isinstance(value, str):
            self.uninspectable.add(Uninspectable.FILE)
        if isinstance(value, list) and key == "modalities":
            allowed = _ENUMS["modalities"]
            if all(isinstance(v, str) and v in allowed for v in value):
                return value
        return self.value(value, key, key in _CONVERSATION)


def _payload_kind(obj: Mapping[str, Any]) -> Uninspectable | None:
    """The kind of binary content a part or block carries, if it is one."""
    kind = obj.get("type")
    found = _PART_KINDS.get(kind) if isinstance(kind, str) else None
    if found is Uninspectable.FILE and kind == "document":
        source = obj.get("source")
        if isinstance(source, Mapping) and source.get("type") in _TEXT_SOURCES:
            return None
    return found


def _is_web_url(value: str) -> bool:
    # A URL the cloud would fetch is text that leaves (it may name a person); a data URL
    # is the image itself.
    return value.startswith(("http://", "https://"))


def _token_ids(values: list[Any]) -> bool:
    """A prompt or input given as token ids: a list of ints, or a list of such lists."""
    if not values:
        return False
    first = values[0]
    if isinstance(first, int) and not isinstance(first, bool):
        return all(isinstance(v, int) for v in values)
    if isinstance(first, list):
        return all(isinstance(v, list) and all(isinstance(t, int) for t in v) for v in values)
    return False


def _json_in(text: str) -> Any:
    """The JSON object or array ``text`` holds, if it is one; else None."""
    if not text or text[0] not in "{[ \t\r\n":
        return None  # the common case, decided without copying the text
    stripped = text.strip()
    if len(stripped) < 2 or len(stripped) > MAX_JSON_DECODE_CHARS:
        return None
    if not (
        (stripped[0] == "{" and stripped[-1] == "}") or (stripped[0] == "[" and stripped[-1] == "]")
    ):
        return None
    try:
        decoded = json.loads(stripped)
    except (ValueError, RecursionError):
        return None
    return decoded if isinstance(decoded, dict | list) else None


def rewrite(request: Mapping[str, Any], visit: Visit) -> dict[str, Any]:
    """A copy of ``request`` with ``visit`` applied to every inspectable string."""
    out = _Walker(visit).mapping(request, None)
    return dict(out)


def inspect_request(request: Mapping[str, Any]) -> Inspection:
    """Every inspectable string of ``request``, its conversation and what can't be inspected."""
    texts: list[str] = []

    def collect(text: str) -> str:
        texts.append(text)
        return text

    walker = _Walker(collect, collect=True)
    walker.mapping(request, None)
    messages = request.get("messages")
    turns = len(messages) if isinstance(messages, list) else (1 if texts else 0)
    return Inspection(
        texts=texts,
        conversation=walker.conversation or [],
        turns=turns,
        uninspectable=frozenset(walker.uninspectable),
    )


def uninspectable_kinds(kinds: Iterable[Uninspectable]) -> str:
    """Kinds as a stable, comma-separated list (for reasons and messages)."""
    return ",".join(sorted(k.value for k in kinds))
