"""Restoring placeholders in the answers of APIs a request is sent in natively.

A cloud that speaks OpenAI's Responses API or Anthropic's Messages API gets the app's own
request, redacted, and answers in that API's shapes: a Response or Message object, or
their event streams. Restoration there is generic: every string of an answer goes through
the restorer (JSON-escaped inside ``arguments`` and ``partial_json``, which hold JSON
documents), and every text delta of a stream is restored as a stream of its own, keyed by
the item or block it extends, holding back only what could be the start of a placeholder.
Held-back text is released as one more delta just before the event that closes its item
(``*.done``, ``content_block_stop``), so the app's accumulated text matches the done
event's. Thinking blocks are left as they came: their signature covers the text the model
saw, placeholders included.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from .restore import Restorer, StreamRestorer

__all__ = ["NativeEventRestorer", "native_usage", "restore_document"]

# Fields holding a JSON document as text: values restored into them are JSON-escaped.
_JSON_TEXT: Final = frozenset({"arguments", "partial_json"})
# Blocks whose text is signed by the model's provider: restoring them would break it.
_SIGNED: Final = frozenset({"thinking", "redacted_thinking"})


def restore_document(restorer: Restorer, value: Any, key: str | None = None) -> Any:
    """A copy of ``value`` with every string restored; unchanged parts are shared."""
    if isinstance(value, str):
        return restorer.restore(value, in_json=key in _JSON_TEXT)
    if isinstance(value, Mapping):
        if value.get("type") in _SIGNED:
            return value
        out = {k: restore_document(restorer, v, k) for k, v in value.items()}
        return out if any(out[k] is not v for k, v in value.items()) else value
    if isinstance(value, list):
        items = [restore_document(restorer, v, key) for v in value]
        return items if any(a is not b for a, b in zip(items, value, strict=True)) else value
    return value


def native_usage(event: Mapping[str, Any]) -> tuple[int | None, int | None]:
    """(input tokens, output tokens) a Responses or Messages answer or event reports;
    None where it says nothing (Messages reports input at the start, output at the end)."""
    for holder in (event, event.get("response"), event.get("message")):
        if isinstance(holder, Mapping) and isinstance(holder.get("usage"), Mapping):
            usage = holder["usage"]
            return _count(usage.get("input_tokens")), _count(usage.get("output_tokens"))
    return None, None


def _count(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


class NativeEventRestorer:
    """Restores a Responses or Messages event stream, event by event."""

    def __init__(self, restorer: Restorer) -> None:
        self._restorer = restorer
        # key -> (its stream, the last delta event of it, as a template for the tail)
        self._streams: dict[tuple[Any, ...], tuple[StreamRestorer, dict[str, Any]]] = {}
        self._sequence: int | None = None

    def feed(self, event: Mapping[str, Any]) -> list[dict[str, Any]]:
        """The restored events for one received event (a released tail may come first)."""
        kind = event.get("type")
        out: list[dict[str, Any]]
        if kind == "content_block_delta":
            out = [self._block_delta(event)]
        elif kind == "content_block_stop":
            out = [*self._tails(lambda k: k[0] == "block" and k[1] == event.get("index")),
                   dict(event)]  # fmt: skip
        elif (
            isinstance(kind, str)
            and kind.endswith(".delta")
            and isinstance(event.get("delta"), str)
        ):
            out = [self._item_delta(event, kind)]
        elif isinstance(kind, str) and kind.endswith(".done"):
            key = _item_key(event, kind[: -len(".done")] + ".delta")
            out = [*self._tails(lambda k: k == key), restore_document(self._restorer, event)]
        else:
            out = [restore_document(self._restorer, event)]
        return [self._numbered(e) for e in out]

    def flush(self) -> list[dict[str, Any]]:
        """Every tail still held (a stream that ended without closing its items)."""
        return [self._numbered(e) for e in self._tails(lambda k: True)]

    def _item_delta(self, event: Mapping[str, Any], kind: str) -> dict[str, Any]:
        key = _item_key(event, kind)
        stream = self._stream(key, event, in_json="arguments" in kind)
        return {**event, "delta": stream.feed(event["delta"])}

    def _block_delta(self, event: Mapping[str, Any]) -> dict[str, Any]:
        delta = event.get("delta")
        if not isinstance(delta, Mapping):
            return dict(event)
        field = {"text_delta": "text", "input_json_delta": "partial_json"}.get(
            str(delta.get("type"))
        )
        if field is None or not isinstance(delta.get(field), str):
            return dict(event)  # thinking and signature deltas: as they came
        key = ("block", event.get("index"), field)
        stream = self._stream(key, event, in_json=field == "partial_json")
        return {**event, "delta": {**delta, field: stream.feed(delta[field])}}

    def _stream(
        self, key: tuple[Any, ...], event: Mapping[str, Any], *, in_json: bool
    ) -> StreamRestorer:
        found = self._streams.get(key)
        stream = found[0] if found is not None else self._restorer.stream(in_json=in_json)
        self._streams[key] = (stream, dict(event))
        return stream

    def _tails(self, wanted: Any) -> list[dict[str, Any]]:
        out = []
        for key in [k for k in self._streams if wanted(k)]:
            stream, template = self._streams.pop(key)
            rest = stream.flush()
            if not rest:
                continue
            if key[0] == "block":
                delta = {**template["delta"], key[2]: rest}
                out.append({**template, "delta": delta})
            else:
                out.append({**template, "delta": rest})
        return out

    def _numbered(self, event: dict[str, Any]) -> dict[str, Any]:
        """Responses events are numbered; a released tail takes a number, so renumber."""
        number = event.get("sequence_number")
        if not isinstance(number, int):
            return event
        if self._sequence is None:
            self._sequence = number
        event = {**event, "sequence_number": self._sequence}
        self._sequence += 1
        return event


def _item_key(event: Mapping[str, Any], kind: str) -> tuple[Any, ...]:
    index = event.get("content_index", event.get("summary_index"))
    return (kind, event.get("item_id"), event.get("output_index"), index)
