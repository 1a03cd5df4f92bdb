"""A small OpenAI-compatible speech server on a real recognizer, for tests and trials.

It serves ``/v1/audio/transcriptions`` and ``/v1/audio/translations`` with CMU
PocketSphinx, whose Python wheel ships a US-English acoustic model, language model and
dictionary: a real, if small and old-fashioned, speech recognizer that runs offline on a
CPU. English only (a translation is the English transcript). It takes WAV files (PCM,
16-bit, any rate and channel count: downmixed and resampled to 16 kHz) and answers
``json``, ``text`` or ``verbose_json`` (one segment). Not a production server: one
decoder, one request at a time, on a worker thread.

    clawdbot-cloud-standin --asr --port 9100      # then spec.localSpeech.baseURL: .../v1

It is what the sidecar's audio tests reach as a local speech server besides the stand-in
(:func:`clawdbot_testing.cloud_native.build_speech_app`), so the audio path is tested
against real recognition, not only against an echo.
"""

from __future__ import annotations

import asyncio
import io
import threading
import wave
from typing import Any, Final

import numpy as np
from aiohttp import BodyPartReader, web

__all__ = ["SAMPLE_RATE", "build_asr_app", "pcm16_mono_16k"]

SAMPLE_RATE: Final = 16000
# A speech file longer than this is refused (PocketSphinx decodes slower than real time on
# a busy core; the tests send a few seconds).
MAX_SECONDS: Final = 60


def pcm16_mono_16k(data: bytes) -> tuple[bytes, float]:
    """A WAV file's audio as 16 kHz mono 16-bit PCM, and its duration; ValueError if it is
    not a 16-bit PCM WAV file."""
    try:
        with wave.open(io.BytesIO(data)) as w:
            if w.getsampwidth() != 2 or w.getcomptype() != "NONE":
                raise ValueError("only 16-bit PCM WAV files are supported")
            rate, channels = w.getframerate(), w.getnchannels()
            frames = w.readframes(w.getnframes())
    except (wave.Error, EOFError) as exc:
        raise ValueError(f"not a WAV file: {exc}") from exc
    samples = np.frombuffer(frames, dtype="<i2").astype(np.float64)
    if channels > 1:
        samples = samples.reshape(-1, channels).mean(axis=1)
    duration = len(samples) / rate if rate else 0.0
    if duration > MAX_SECONDS:
        raise ValueError(f"the audio is longer than {MAX_SECONDS} s")
    if rate != SAMPLE_RATE and len(samples):
        n = round(len(samples) * SAMPLE_RATE / rate)
        samples = np.interp(np.linspace(0, len(samples) - 1, n), np.arange(len(samples)), samples)
    return samples.astype("<i2").tobytes(), duration


class _Recognizer:
    """One PocketSphinx decoder (loaded on first use), used by one request at a time."""

    def __init__(self) -> None:
        self._decoder: Any = None
        self._lock = threading.Lock()

    def transcribe(self, pcm: bytes) -> str:
        from pocketsphinx import Decoder  # noqa: PLC0415 - the model loads only when used

        with self._lock:
            if self._decoder is None:
                self._decoder = Decoder(samprate=SAMPLE_RATE)
            decoder = self._decoder
            decoder.start_utt()
            decoder.process_raw(pcm, full_utt=True)
            decoder.end_utt()
            hyp = decoder.hyp()
            return str(hyp.hypstr) if hyp is not None else ""


_RECOGNIZER: Final = web.AppKey("recognizer", _Recognizer)
_REQUESTS: Final = web.AppKey("requests", list)


def _error(message: str, param: str | None = None) -> web.Response:
    body = {"error": {"message": message, "type": "invalid_request_error", "param": param,
                      "code": None}}  # fmt: skip
    return web.json_response(body, status=400)


async def _form(request: web.Request) -> dict[str, Any]:
    fields: dict[str, Any] = {}
    reader = await request.multipart()
    while (part := await reader.next()) is not None:
        if not isinstance(part, BodyPartReader) or part.name is None:
            raise ValueError("a nested multipart body")
        data = await part.read()
        fields[part.name] = bytes(data) if part.filename is not None else data.decode()
    return fields


async def _audio(request: web.Request) -> web.Response:
    try:
        fields = await _form(request)
    except ValueError as exc:
        return _error(str(exc))
    file = fields.get("file")
    if not isinstance(file, bytes):
        return _error("file: an audio file is required", "file")
    try:
        pcm, duration = pcm16_mono_16k(file)
    except ValueError as exc:
        return _error(str(exc), "file")
    request.app[_REQUESTS].append({"path": request.path, "model": fields.get("model")})
    loop = asyncio.get_running_loop()
    text = await loop.run_in_executor(None, request.app[_RECOGNIZER].transcribe, pcm)
    fmt = fields.get("response_format", "json")
    if fmt == "text":
        return web.Response(text=text, content_type="text/plain")
    if fmt == "verbose_json":
        task = "translate" if request.path.endswith("/translations") else "transcribe"
        segment = {"id": 0, "start": 0.0, "end": round(duration, 3), "text": text}
        return web.json_response({"task": task, "language": "english",
                                  "duration": round(duration, 3), "text": text,
                                  "segments": [segment]})  # fmt: skip
    return web.json_response({"text": text})


async def _requests(request: web.Request) -> web.Response:
    return web.json_response(request.app[_REQUESTS])


def build_asr_app() -> web.Application:
    """The server as an aiohttp app; ``GET /_stub/requests`` lists the requests it got."""
    app = web.Application(client_max_size=32 * 1024 * 1024)
    app[_RECOGNIZER] = _Recognizer()
    app[_REQUESTS] = []
    app.router.add_post("/v1/audio/transcriptions", _audio)
    app.router.add_post("/v1/audio/translations", _audio)
    app.router.add_get("/_stub/requests", _requests)
    return app
