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
    "ANSWER_ID_HEADER",
    "AUDIO_KINDS",
    "CONFIDENCE_HEADER",
    "REASON_HEADER",
    "REQUEST_ID_HEADER",
    "SIMILARITY_HEADER",
    "TARGET_HEADER",
    "Answer",
    "ApiKind",
    "Inbound",
    "Native",
    "Request",
    "validate",
]

# Headers (HTTP) and metadata keys (gRPC) through which the app sees the decision.
TARGET_HEADER = "x-clawdbot-target"
REASON_HEADER = "x-clawdbot-reason"
REQUEST_ID_HEADER = "x-request-id"
# The sidecar's own id of each answer, which POST /v1/feedback names.
ANSWER_ID_HEADER = "x-clawdbot-request-id"
# The local answer's confidence (0 to 1, from its token log-probabilities), when measured.
CONFIDENCE_HEADER = "x-clawdbot-confidence"
# A semantic-cache hit's similarity to the conversation whose answer it is.
SIMILARITY_HEADER = "x-clawdbot-semantic-similarity"


class ApiKind(StrEnum):
    """The OpenAI endpoints the core routes; the value is the path below /v1."""

    CHAT = "chat/completions"
    COMPLETIONS = "completions"
    EMBEDDINGS = "embeddings"
    TRANSCRIPTIONS = "audio/transcriptions"
    TRANSLATIONS = "audio/translations"


AUDIO_KINDS = frozenset({ApiKind.TRANSCRIPTIONS, ApiKind.TRANSLATIONS})


@dataclass(frozen=True, slots=True)
class Native:
    """The app's request in the API it called, for a cloud endpoint that speaks that API.

    The core routes the chat translation of it; when the cloud it calls speaks ``api``
    (a ``CloudApi`` value), this body is what is redacted and sent instead, and the answer
    comes back in that API's shape (:attr:`Answer.native`)."""

    api: str
    """The CloudApi that takes it as it is: ``openai-responses`` or ``anthropic-messages``."""
    path: str
    """Its path below the endpoint's base URL: ``responses`` or ``messages``."""
    body: dict[str, Any]
    headers: Mapping[str, str]
    """Headers of the API to send on (``anthropic-version``, ``anthropic-beta``)."""


@dataclass(slots=True)
class Inbound:
    """A request as a front received it: not validated yet."""

    kind: ApiKind
    body: Any
    """The decoded JSON body (OpenAI's shape for ``kind``)."""
    headers: Mapping[str, str]
    """Request headers or call metadata; names in any case."""
    front: str | None = None
    """The API the app called when a front translated it into ``kind`` (``responses``,
    ``messages``): what metrics and the audit record name as the endpoint."""
    native: Native | None = None
    """The request as the app sent it, for a cloud endpoint that speaks its API."""


@dataclass(slots=True)
class Request:
    """A validated request: its body is an object with a model and the API's fields."""

    kind: ApiKind
    body: dict[str, Any]
    headers: dict[str, str]
    """Lower-cased names."""
    model: str
    stream: bool
    native: Native | None = None


def validate(inbound: Inbound) -> Request:
    """The request an inbound body makes; raises a 400 RequestError naming the field."""
    kind, body = inbound.kind, inbound.body
    if not isinstance(body, dict):
        raise invalid("the request body must be a JSON object")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise invalid("you must provide a model parameter", "model")
    _validate_fields(kind, body)
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise invalid("stream must be a boolean", "stream")
    if stream and (kind == ApiKind.EMBEDDINGS or kind in AUDIO_KINDS):
        raise invalid(f"{kind.value} can't be streamed", "stream")
    headers = {k.lower(): v for k, v in inbound.headers.items()}
    return Request(kind, body, headers, model, stream, inbound.native)


def _validate_fields(kind: ApiKind, body: dict[str, Any]) -> None:
    """The fields each API requires."""
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
    elif kind in AUDIO_KINDS:
        if not isinstance(body.get("file"), dict):
            raise invalid("file must be an audio file", "file")
    elif not isinstance(body.get("input"), str | list):
        raise invalid("input must be a string or an array", "input")


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
    native: bool = False
    """The body or chunks are in the shape of the request's :class:`Native` API (the cloud
    took it as it was), not chat completions'."""
    answer_id: str = ""
    """The sidecar's id of this answer (``x-clawdbot-request-id``), for feedback."""
    confidence: float | None = None
    """The local answer's confidence, when it was measured (a cascade's first answer)."""
    similarity: float | None = None
    """A semantic-cache hit's similarity."""

    @property
    def headers(self) -> dict[str, str]:
        """The decision as headers (HTTP) or metadata (gRPC)."""
        out = {REQUEST_ID_HEADER: self.request_id, TARGET_HEADER: self.target}
        if self.reason is not None:
            out[REASON_HEADER] = self.reason
        if self.answer_id:
            out[ANSWER_ID_HEADER] = self.answer_id
        if self.confidence is not None:
            out[CONFIDENCE_HEADER] = f"{self.confidence:.4f}"
        if self.similarity is not None:
            out[SIMILARITY_HEADER] = f"{self.similarity:.4f}"
        return out
