"""The protocol-neutral request and answer the routing core works on.

A front (REST, gRPC) turns what it received into an :class:`Inbound` (the API it asks
for, the decoded JSON body in OpenAI's shape, the headers or call metadata) and gets an
:class:`Answer` back: a JSON body, or an async iterator of chunk dicts, with the decision
that produced it. Encoding (HTTP headers, SSE framing, gRPC messages, error bodies) happens
only in the fronts.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from clawdbot_sidecar.errors import invalid

__all__ = [
    "REASON_HEADER",
    "REQUEST_ID_HEADER",
    "TARGET_HEADER",
    "Answer",
    "ApiKind",
    "Inbound",
    "Request",
    "validate",
]

# Headers (HTTP) and metadata keys (gRPC) through which the app sees the decision.
TARGET_HEADER = "x-clawdbot-target"
REASON_HEADER = "x-clawdbot-reason"
REQUEST_ID_HEADER = "x-request-id"


class ApiKind(StrEnum):
    """The OpenAI endpoints the core routes; the value is the path below /v1."""

    CHAT = "chat/completions"
    COMPLETIONS = "completions"
    EMBEDDINGS = "embeddings"


@dataclass(slots=True)
class Inbound:
    """A request as a front received it: not validated yet."""

    kind: ApiKind
    body: Any
    """The decoded JSON body (OpenAI's shape for ``kind``)."""
    headers: Mapping[str, str]
    """Request headers or call metadata; names in any case."""


@dataclass(slots=True)
class Request:
    """A validated request: its body is an object with a model and the API's fields."""

    kind: ApiKind
    body: dict[str, Any]
    headers: dict[str, str]
    """Lower-cased names."""
    model: str
    stream: bool


def validate(inbound: Inbound) -> Request:
    """The request an inbound body makes; raises a 400 RequestError naming the field."""
    kind, body = inbound.kind, inbound.body
    if not isinstance(body, dict):
        raise invalid("the request body must be a JSON object")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise invalid("you must provide a model parameter", "model")
    if kind == ApiKind.CHAT:
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise invalid("messages must be a non-empty array of messages", "messages")
        for i, msg in enumerate(messages):
            if not isinstance(msg, dict) or not isinstance(msg.get("role"), str):
                raise invalid(f"messages[{i}] must be an object with a role", f"messages[{i}]")
    elif kind == ApiKind.COMPLETIONS:
        if not isinstance(body.get("prompt"), str | list):
            raise invalid("prompt must be a string or an array", "prompt")
    elif not isinstance(body.get("input"), str | list):
        raise invalid("input must be a string or an array", "input")
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise invalid("stream must be a boolean", "stream")
    if stream and kind == ApiKind.EMBEDDINGS:
        raise invalid("embeddings can't be streamed", "stream")
    headers = {k.lower(): v for k, v in inbound.headers.items()}
    return Request(kind, body, headers, model, stream)


@dataclass(slots=True)
class Answer:
    """What the core answers: a body or a stream of chunk dicts, and where it came from.

    A stream raises :class:`clawdbot_sidecar.errors.StreamBroken` if the upstream breaks
    off after it began; the front reports that in-band.
    """

    request_id: str
    target: str
    reason: str | None
    body: dict[str, Any] | None = None
    chunks: AsyncIterator[dict[str, Any]] | None = None

    @property
    def headers(self) -> dict[str, str]:
        """The decision as headers (HTTP) or metadata (gRPC)."""
        out = {REQUEST_ID_HEADER: self.request_id, TARGET_HEADER: self.target}
        if self.reason is not None:
            out[REASON_HEADER] = self.reason
        return out
