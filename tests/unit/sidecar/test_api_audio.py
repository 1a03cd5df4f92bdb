"""The audio routes: transcriptions and translations through the sidecar, and their forms.

Two local speech servers speak the OpenAI audio API on loopback. A real recognizer
(``clawdbot_testing.asr``: PocketSphinx and the US-English model its wheel ships) gets a
recorded sentence (``tests/support/speech-en.wav``, espeak-ng's voice) and must hear its
words, through the sidecar, in every format. A stand-in
(``clawdbot_testing.cloud_native.build_speech_app``) that names the file it got and echoes
the prompt checks the form's fields and the routing cheaply. The privacy behaviour is real:
with redaction on, audio never reaches the cloud stand-in.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest
from sidecar_support import EMAIL, StartSidecar, policy, received

from clawdbot_sidecar.fronts.multipart import (
    MAX_FIELD_BYTES,
    MAX_PART_HEADER_BYTES,
    MAX_PARTS,
    FormError,
    boundary_of,
    parse_form,
)
from clawdbot_testing.asr import build_asr_app, pcm16_mono_16k
from clawdbot_testing.cloud_native import build_speech_app
from tests.support.servers import serve_app

# A WAV header and a little silence: the stand-ins don't decode it, they count it.
WAV = b"RIFF$\x00\x00\x00WAVEfmt " + b"\x00" * 2000
# "please call me tomorrow morning about the order", spoken by espeak-ng (en-us, 140 words
# a minute), 16 kHz mono; regenerate with `espeak-ng -w` and resample if it must change.
SPEECH = (Path(__file__).resolve().parents[3] / "tests/support/speech-en.wav").read_bytes()
# Words PocketSphinx hears in it (it mishears the first half of the sentence).
HEARD = ("tomorrow", "order")


@pytest.fixture
async def asr() -> AsyncIterator[str]:
    """The real recognizer's base URL (``.../v1``); its model loads on the first request."""
    async with serve_app(build_asr_app()) as url:
        yield f"{url}/v1"


@pytest.fixture
async def speech() -> AsyncIterator[str]:
    """The local speech server stand-in's base URL (``.../v1``)."""
    async with serve_app(build_speech_app()) as url:
        yield f"{url}/v1"


async def speech_requests(speech_url: str) -> list[dict[str, Any]]:
    async with (
        aiohttp.ClientSession() as s,
        s.get(f"{speech_url.removesuffix('/v1')}/_stub/requests") as r,
    ):
        data: list[dict[str, Any]] = await r.json()
        return data


def audio_policy(cloud: str, speech: str | None, **extra: Any) -> dict[str, Any]:
    spec = policy(cloud, rules=[], defaultTarget="cloud", **extra)
    spec["cloud"]["audioModel"] = "whisper-1"
    if speech is not None:
        spec["localSpeech"] = {"baseURL": speech, "model": "local-whisper"}
    return spec


_clients: list[openai.AsyncOpenAI] = []


def client_of(url: str) -> openai.AsyncOpenAI:
    client = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
    _clients.append(client)
    return client


@pytest.fixture(autouse=True)
async def _close_clients() -> AsyncIterator[None]:
    yield
    while _clients:
        await _clients.pop().close()


async def test_with_redaction_on_audio_is_transcribed_locally_never_in_the_cloud(
    cloud: str, speech: str, make_sidecar: StartSidecar
) -> None:
    sc = await make_sidecar(audio_policy(cloud, speech), [])
    client = client_of(sc.url)
    raw = await client.audio.transcriptions.with_raw_response.create(
        file=("call.wav", WAV, "audio/wav"), model="whisper-1", language="en",
        prompt="names: Ada", temperature=0.0, timestamp_granularities=["segment"],
        response_format="verbose_json",
    )  # fmt: skip
    assert raw.headers["x-clawdbot-target"] == "local"
    assert raw.headers["x-clawdbot-reason"] == "uninspectable:audio"
    result = raw.parse()
    assert result.text == f"Local transcribe of call.wav ({len(WAV)} bytes). Prompt: names: Ada"
    assert result.segments is not None and len(result.segments) == 2
    (got,) = await speech_requests(speech)
    assert got["path"] == "/v1/audio/transcriptions"
    form = got["body"]
    assert form["model"] == "local-whisper"  # the policy's name for its server's model
    assert form["file"]["bytes"] == len(WAV) and form["file"]["filename"] == "call.wav"
    assert (form["language"], form["prompt"], form["timestamp_granularities[]"]) == (
        "en", "names: Ada", "segment")  # fmt: skip
    assert form["response_format"] == "verbose_json"
    assert await received(cloud) == []
    assert 'endpoint="audio/transcriptions",target="local"' in await sc.metrics()


async def test_a_real_recognizer_transcribes_speech_through_the_sidecar(
    cloud: str, asr: str, make_sidecar: StartSidecar
) -> None:
    sc = await make_sidecar(audio_policy(cloud, asr), [])
    client = client_of(sc.url)
    raw = await client.audio.transcriptions.with_raw_response.create(
        file=("order.wav", SPEECH, "audio/wav"), model="whisper-1"
    )
    assert raw.headers["x-clawdbot-target"] == "local"
    text = raw.parse().text
    for words in HEARD:
        assert words in text, text
    srt = await client.audio.translations.create(
        file=("order.wav", SPEECH), model="whisper-1", response_format="srt"
    )
    cue, timing, said = srt.strip().split("\n")
    assert cue == "1" and timing == "00:00:00,000 --> 00:00:03,337"
    assert said == text  # the same audio, the same decoder: the same words
    assert await received(cloud) == []


def test_the_recognizer_reads_wav_at_any_rate_and_refuses_other_audio() -> None:
    pcm, duration = pcm16_mono_16k(SPEECH)
    assert duration == pytest.approx(3.337, abs=0.001) and len(pcm) == len(SPEECH) - 44
    with pytest.raises(ValueError, match="not a WAV"):
        pcm16_mono_16k(b"ID3 an mp3")


@pytest.mark.parametrize("fmt", ["json", "text", "srt", "vtt"])
async def test_every_response_format_is_answered(
    cloud: str, speech: str, make_sidecar: StartSidecar, fmt: str
) -> None:
    sc = await make_sidecar(audio_policy(cloud, speech), [])
    client = client_of(sc.url)
    result: Any = await client.audio.translations.create(
        file=("note.mp3", WAV),
        model="whisper-1",
        response_format=fmt,  # type: ignore[arg-type]
    )
    expected = f"Local translate of note.mp3 ({len(WAV)} bytes)."
    if fmt == "json":
        assert result.text == expected
    elif fmt == "text":
        assert result == expected
    elif fmt == "srt":
        assert result.startswith("1\n00:00:00,000 --> 00:00:01,200\n")
        assert "\n\n2\n00:00:01,200 --> 00:00:02,500\n" in result
    else:
        assert result.startswith("WEBVTT\n\n00:00:00.000 --> 00:00:01.200\n")
    (got,) = await speech_requests(speech)
    assert got["path"] == "/v1/audio/translations"
    assert got["body"]["response_format"] == ("json" if fmt in ("json", "text") else "verbose_json")


async def test_without_a_local_speech_server_audio_is_refused_not_sent_out(
    cloud: str, make_sidecar: StartSidecar
) -> None:
    sc = await make_sidecar(audio_policy(cloud, None), [])
    client = client_of(sc.url)
    with pytest.raises(openai.BadRequestError) as err:
        await client.audio.transcriptions.create(file=("a.wav", WAV), model="whisper-1")
    assert err.value.code == "speech_not_configured"
    assert "spec.localSpeech" in err.value.message
    assert await received(cloud) == []


async def test_uninspectable_reject_refuses_audio_even_with_a_local_server(
    cloud: str, speech: str, make_sidecar: StartSidecar
) -> None:
    sc = await make_sidecar(audio_policy(cloud, speech, redaction={"uninspectable": "reject"}), [])
    client = client_of(sc.url)
    with pytest.raises(openai.BadRequestError) as err:
        await client.audio.transcriptions.create(file=("a.wav", WAV), model="whisper-1")
    assert err.value.code == "uninspectable_content"
    assert await received(cloud) == [] and await speech_requests(speech) == []


async def test_with_uninspectable_allow_audio_goes_out_and_its_text_is_redacted(
    cloud: str, make_sidecar: StartSidecar
) -> None:
    """The policy lets audio leave: the cloud gets its audio model; the form's text fields
    are still redacted, and restored in the answer."""
    sc = await make_sidecar(audio_policy(cloud, None, redaction={"uninspectable": "allow"}), [])
    client = client_of(sc.url)
    raw = await client.audio.transcriptions.with_raw_response.create(
        file=("a.wav", WAV), model="whisper-1", prompt=f"mail {EMAIL}"
    )
    assert raw.headers["x-clawdbot-target"] == "cloud"
    assert raw.parse().text == f"Cloud transcribe of a.wav ({len(WAV)} bytes). Prompt: mail {EMAIL}"
    (sent,) = await received(cloud)
    assert sent["path"] == "/v1/audio/transcriptions"
    assert sent["body"]["model"] == "whisper-1" and sent["body"]["file"]["bytes"] == len(WAV)
    assert sent["body"]["prompt"] == "mail <EMAIL_1>"


async def test_redaction_off_sends_audio_to_the_cloud_model_only_when_one_is_named(
    cloud: str, make_sidecar: StartSidecar
) -> None:
    spec = audio_policy(cloud, None, redaction={"enabled": False}, fallback={"cloudToLocal": False})
    del spec["cloud"]["audioModel"]
    sc = await make_sidecar(spec, [])
    client = client_of(sc.url)
    with pytest.raises(openai.APIStatusError) as err:
        await client.audio.transcriptions.create(file=("a.wav", WAV), model="whisper-1")
    assert err.value.status_code == 503 and "audioModel" in err.value.message
    assert await received(cloud) == []


async def test_streamed_transcriptions_and_bad_forms_are_refused(
    cloud: str, speech: str, make_sidecar: StartSidecar
) -> None:
    sc = await make_sidecar(audio_policy(cloud, speech), [], max_body_bytes=64 * 1024)
    url = f"{sc.url}/v1/audio/transcriptions"
    async with aiohttp.ClientSession() as s:
        form = aiohttp.FormData()
        form.add_field("model", "whisper-1")
        form.add_field("stream", "true")
        form.add_field("file", WAV, filename="a.wav")
        async with s.post(url, data=form) as r:
            assert r.status == 400 and (await r.json())["error"]["param"] == "stream"
        async with s.post(url, json={"model": "whisper-1"}) as r:
            assert r.status == 400
            assert "multipart/form-data" in (await r.json())["error"]["message"]
        form = aiohttp.FormData()
        form.add_field("model", "whisper-1")
        form.add_field("voice", "x")
        form.add_field("file", WAV, filename="a.wav")
        async with s.post(url, data=form) as r:
            assert r.status == 400 and (await r.json())["error"]["param"] == "voice"
        big = aiohttp.FormData()
        big.add_field("model", "whisper-1")
        big.add_field("file", b"\x00" * (65 * 1024), filename="a.wav")
        async with s.post(url, data=big) as r:
            assert r.status == 413
    assert await received(cloud) == [] and await speech_requests(speech) == []


# -- the parser ------------------------------------------------------------------------

B = "XyZ-boundary"


def form(*parts: bytes, end: bytes = b"--XyZ-boundary--\r\n") -> bytes:
    return b"".join(b"--XyZ-boundary\r\n" + p + b"\r\n" for p in parts) + end


def field(name: str, value: bytes, extra: str = "") -> bytes:
    return f'Content-Disposition: form-data; name="{name}"{extra}\r\n\r\n'.encode() + value


def test_a_form_is_parsed_with_its_files_and_quoted_names() -> None:
    body = b"preamble\r\n" + form(
        field("model", b"whisper-1"),
        field("file", b"\x00\r\n--not-the-boundary\r\n\x01",
              '; filename="my \\"call\\".wav"\r\nContent-Type: audio/wav'),
        field("x", b"", "; filename*=UTF-8''%C3%A9t%C3%A9.wav"),
    ) + b"epilogue"  # fmt: skip
    parts = parse_form(body, boundary_of(f'multipart/form-data; boundary="{B}"'))
    assert [(p.name, p.filename) for p in parts] == [
        ("model", None), ("file", 'my "call".wav'), ("x", "été.wav")]  # fmt: skip
    assert parts[0].text() == "whisper-1"
    assert parts[1].data == b"\x00\r\n--not-the-boundary\r\n\x01"
    assert parts[1].content_type == "audio/wav"


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"no boundary at all", "no part"),
        (form(field("a", b"1"), end=b""), "not terminated"),
        (b"--XyZ-boundary\r\nContent-Disposition: form-data; name=\"a\"\r\n" + b"x" * 9000,
         "headers are not terminated"),
        (form(b"Content-Type: text/plain\r\n\r\nx"), "form-data"),
        (form(b"Content-Disposition: form-data\r\n\r\nx"), "no name"),
        (form(field("a", b"x" * (MAX_FIELD_BYTES + 1))), "longer than"),
        (form(*[field(f"f{i}", b"1") for i in range(MAX_PARTS + 1)]), "more than"),
        (form(b"Content-Disposition form-data\r\n\r\nx"), "malformed header"),
        (b"--XyZ-boundaryjunk\r\n" + field("a", b"1") + b"\r\n--XyZ-boundary--", "line break"),
    ],
)  # fmt: skip
def test_hostile_or_broken_forms_are_refused_naming_the_problem(body: bytes, message: str) -> None:
    with pytest.raises(FormError, match=message):
        parse_form(body, B)


@pytest.mark.parametrize(
    ("content_type", "message"),
    [
        (None, "needs Content-Type"),
        ("application/json", "must be multipart"),
        ("multipart/form-data", "no boundary"),
        ("multipart/form-data; boundary=" + "a" * 71, "not a valid"),
        ("multipart/form-data; boundary=bad\x00char", "not a valid"),
    ],
)
def test_the_boundary_is_checked(content_type: str | None, message: str) -> None:
    with pytest.raises(FormError, match=message):
        boundary_of(content_type)


def test_a_part_header_block_is_bounded() -> None:
    head = b'Content-Disposition: form-data; name="a"\r\nX-Pad: ' + b"p" * MAX_PART_HEADER_BYTES
    with pytest.raises(FormError, match="headers are not terminated"):
        parse_form(form(head + b"\r\n\r\nx"), B)


def test_a_large_file_is_parsed_in_linear_time() -> None:
    """A body of many near-boundaries: one scan, not one per candidate."""
    data = b"\r\n--XyZ-boundar" * 200_000  # 3.2 MB of almost-delimiters
    parts = parse_form(form(field("file", data, '; filename="a.wav"')), B)
    assert len(parts) == 1 and parts[0].data == data
