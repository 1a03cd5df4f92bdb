"""What the Responses, Messages and audio fronts share: ids, named events, field checks.

These fronts translate another API into the chat completions body the routing core routes
(and its answers back); each lives in its own module (``responses.py``, ``messages.py``,
``audio.py``) and registers its routes on the REST front.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from typing import Any

from clawdbot_api.openai_wire import dumps, loads
from clawdbot_sidecar.errors import RequestError, StreamBroken, invalid
from clawdbot_sidecar.fronts.http import Response
from clawdbot_sidecar.routing.request import REQUEST_ID_HEADER, Answer

__all__ = [
    "RETRY_AFTER_S",
    "EventSource",
    "check_fields",
    "decode_json",
    "error_headers",
    "json_error",
    "named_events",
    "new_id",
    "number",
    "optional_str",
    "reply_headers",
]

# Seconds an app should wait before retrying a 429 (overloaded) or 503 (no target now).
RETRY_AFTER_S = "1"

EventSource = AsyncIterator[dict[str, Any]]


def new_id(prefix: str) -> str:
    """An id in the style of the API (``resp_...``, ``msg_...``): 24 random bytes, hex."""
    return f"{prefix}_{os.urandom(24).hex()}"


def decode_json(raw: bytes) -> Any:
    """A request body's JSON; a 400 saying why when it isn't JSON. (The one decoder of the
    Responses and Messages fronts: limits on what JSON is accepted belong here.)"""
    try:
        return loads(raw)
    except ValueError as exc:
        raise invalid(f"the request body is not valid JSON: {exc}") from exc


def check_fields(
    body: Mapping[str, Any], known: Iterable[str], where: str = "", code: str | None = None
) -> None:
    """Refuse a field the translation doesn't know (400 naming it), rather than drop it."""
    allowed = set(known)
    for key in body:
        if key not in allowed:
            name = f"{where}{key}"
            raise RequestError(
                400, f"Unknown parameter: '{name}'.", param=name, code=code or "unknown_parameter"
            )


def optional_str(body: Mapping[str, Any], key: str, where: str = "") -> str | None:
    """``body[key]`` when it is a string or absent; 400 otherwise."""
    value = body.get(key)
    if value is not None and not isinstance(value, str):
        raise invalid(f"{where}{key} must be a string", f"{where}{key}")
    return value


def number(body: Mapping[str, Any], key: str, where: str = "") -> float | int | None:
    """``body[key]`` when it is a number or absent; 400 otherwise."""
    value = body.get(key)
    if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
        raise invalid(f"{where}{key} must be a number", f"{where}{key}")
    return value


def reply_headers(answer: Answer, extra: Mapping[str, str] | None = None) -> list[tuple[str, str]]:
    """The decision's headers (``x-clawdbot-*``, ``x-request-id``) and ``extra``."""
    headers = dict(answer.headers)
    headers.update(extra or {})
    return list(headers.items())


def error_headers(exc: RequestError, request_id: str | None) -> dict[str, str]:
    """Retry-After for 429 and 503, and the request id when the front knows it."""
    out = {"Retry-After": RETRY_AFTER_S} if exc.status in (429, 503) else {}
    if request_id:
        out[REQUEST_ID_HEADER] = request_id
    return out


def json_error(
    exc: RequestError, body: Callable[[RequestError], dict[str, Any]], request_id: str | None
) -> Response:
    """An error answer in the API's own error shape (``body`` builds it)."""
    headers = error_headers(exc, request_id)
    return Response(exc.status, dumps(body(exc)), headers=headers.items())


async def named_events(
    events: EventSource, on_broken: Callable[[StreamBroken], Iterable[dict[str, Any]]]
) -> AsyncIterator[bytes]:
    """Events as server-sent events named by their ``type`` (``event: <type>``), as the
    Responses and Messages APIs send them: no ``[DONE]`` at the end. A stream that broke
    off ends with the events ``on_broken`` gives (the status line is sent already)."""
    try:
        async for event in events:
            yield _named(event)
    except StreamBroken as exc:
        for event in on_broken(exc):
            yield _named(event)
    finally:
        aclose = getattr(events, "aclose", None)
        if aclose is not None:  # also when the app left: the core accounts and closes
            await aclose()


def _named(event: Mapping[str, Any]) -> bytes:
    name = event.get("type")
    head = b"event: " + str(name).encode() + b"\n" if isinstance(name, str) else b""
    return head + b"data: " + dumps(event) + b"\n\n"
