"""``POST /v1/audio/transcriptions`` and ``/v1/audio/translations`` (multipart forms).

Audio is content the sidecar can't inspect, let alone redact: the core's walk reports it,
so while redaction is enabled it stays local (the policy's ``localSpeech`` server, any
OpenAI-compatible one) or is refused, as ``redaction.uninspectable`` says; it reaches the
cloud (``cloud.audioModel``) only with redaction disabled or ``uninspectable: allow``. The
form is parsed by :mod:`clawdbot_sidecar.fronts.multipart` (bounded), routed like any
request (rules, guards, budgets, metrics, audit), and answered in the format the app asked
for: the upstream is asked for ``json`` or ``verbose_json`` and ``text``, ``srt`` and
``vtt`` are written here from it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from clawdbot_api.openai_wire import dumps
from clawdbot_sidecar.errors import RequestError, invalid
from clawdbot_sidecar.fronts.http import Request, Response
from clawdbot_sidecar.fronts.multipart import FormError, Part, boundary_of, parse_form
from clawdbot_sidecar.fronts.translate import json_error, reply_headers
from clawdbot_sidecar.routing.core import RoutingCore
from clawdbot_sidecar.routing.request import ApiKind, Inbound
from clawdbot_sidecar.upstream.form import audio_file

__all__ = ["AudioFront", "audio_body", "render"]

_FORMATS: Final = frozenset({"json", "text", "srt", "verbose_json", "vtt"})
# What the upstream is asked for, per format the app asked for.
_UPSTREAM_FORMAT: Final = {
    "json": "json",
    "text": "json",
    "verbose_json": "verbose_json",
    "srt": "verbose_json",
    "vtt": "verbose_json",
}
_FIELDS: Final = {
    ApiKind.TRANSCRIPTIONS: frozenset(
        {"file", "model", "language", "prompt", "response_format", "temperature",
         "timestamp_granularities[]", "include[]", "stream", "chunking_strategy"}
    ),
    ApiKind.TRANSLATIONS: frozenset(
        {"file", "model", "prompt", "response_format", "temperature"}
    ),
}  # fmt: skip
_TEXT: Final = "text/plain; charset=utf-8"


def audio_body(request: Request, kind: ApiKind) -> tuple[dict[str, Any], str]:
    """The core's body of an audio form, and the response format the app asked for."""
    try:
        parts = parse_form(request.body, boundary_of(request.headers.get("content-type")))
        return _body(parts, kind)
    except FormError as exc:
        raise invalid(str(exc)) from exc


def _body(parts: list[Part], kind: ApiKind) -> tuple[dict[str, Any], str]:
    allowed = _FIELDS[kind]
    body: dict[str, Any] = {}
    files = [p for p in parts if p.name == "file"]
    if len(files) != 1 or files[0].filename is None:
        raise invalid("file: exactly one audio file is required", "file")
    for part in parts:
        if part.name not in allowed:
            raise RequestError(400, f"Unknown parameter: '{part.name}'.", param=part.name,
                               code="unknown_parameter")  # fmt: skip
        if part.name == "file":
            continue
        if part.name.endswith("[]"):
            body.setdefault(part.name[:-2], []).append(part.text())
        else:
            body[part.name] = part.text()
    file = files[0]
    body["file"] = audio_file(file.data, file.filename or "audio", file.content_type)
    if not body.get("model"):
        raise invalid("you must provide a model parameter", "model")
    wanted = body.get("response_format", "json")
    if wanted not in _FORMATS:
        raise invalid(f"response_format must be one of {sorted(_FORMATS)}", "response_format")
    body["response_format"] = _UPSTREAM_FORMAT[wanted]
    if "temperature" in body:
        try:
            body["temperature"] = float(body["temperature"])
        except ValueError:
            raise invalid("temperature must be a number", "temperature") from None
    if "stream" in body:
        if body["stream"] not in ("true", "false"):
            raise invalid("stream must be true or false", "stream")
        body["stream"] = body["stream"] == "true"
    return body, wanted


def render(answer: Mapping[str, Any], wanted: str) -> tuple[str, bytes]:
    """(Content-Type, body) of the upstream's JSON answer in the format the app asked for."""
    text = answer.get("text")
    text = text if isinstance(text, str) else ""
    if wanted in ("json", "verbose_json"):
        return "application/json", dumps(answer)
    if wanted == "text":
        return _TEXT, text.encode()
    segments = _segments(answer, text)
    if wanted == "srt":
        cues = [f"{i}\n{_time(s, ',')} --> {_time(e, ',')}\n{t}\n"
                for i, (s, e, t) in enumerate(segments, 1)]  # fmt: skip
        return _TEXT, "\n".join(cues).encode()
    cues = [f"{_time(s, '.')} --> {_time(e, '.')}\n{t}\n" for s, e, t in segments]
    return "text/vtt; charset=utf-8", ("WEBVTT\n\n" + "\n".join(cues)).encode()


def _segments(answer: Mapping[str, Any], text: str) -> list[tuple[float, float, str]]:
    out = []
    for seg in answer.get("segments") or []:
        if isinstance(seg, dict) and isinstance(seg.get("text"), str):
            start, end = seg.get("start", 0.0), seg.get("end", 0.0)
            out.append((float(start or 0), float(end or 0), seg["text"].strip()))
    if not out:  # a server without segments: one cue over the whole audio
        duration = answer.get("duration")
        end = float(duration) if isinstance(duration, int | float) else 0.0
        out.append((0.0, end, text.strip()))
    return out


def _time(seconds: float, separator: str) -> str:
    millis = max(0, round(seconds * 1000))
    hours, rest = divmod(millis, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    secs, millis = divmod(rest, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{separator}{millis:03d}"


def _error_body(exc: RequestError) -> dict[str, Any]:
    return exc.body()


class AudioFront:
    """The audio routes of one routing core."""

    def __init__(self, core: RoutingCore) -> None:
        self.core = core

    async def transcriptions(self, request: Request) -> Response:
        """``POST /v1/audio/transcriptions``."""
        return await self._handle(request, ApiKind.TRANSCRIPTIONS)

    async def translations(self, request: Request) -> Response:
        """``POST /v1/audio/translations``."""
        return await self._handle(request, ApiKind.TRANSLATIONS)

    async def _handle(self, request: Request, kind: ApiKind) -> Response:
        try:
            body, wanted = audio_body(request, kind)
            answer = await self.core.handle(Inbound(kind, body, request.headers))
        except RequestError as exc:
            return json_error(exc, _error_body, request.headers.get("x-request-id"))
        upstream = answer.body
        if upstream is None:  # audio is never streamed (the core refuses stream: true)
            upstream = {}
        content_type, payload = render(upstream, wanted)
        return Response(200, payload, content_type, headers=reply_headers(answer))
