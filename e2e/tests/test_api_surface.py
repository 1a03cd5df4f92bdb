"""The APIs apps use besides chat completions, end to end through an injected sidecar.

The same cluster as test_routing.py (the operator's webhook injects the sidecar, which gets
its policy over the discovery stream; the ONNX runtime serves the tiny model at its pod
IP), and a policy that also names a local speech server and a cloud audio model. The real
``openai`` client calls ``/v1/responses`` and ``/v1/audio/transcriptions`` and
``/v1/audio/translations``, the real ``anthropic`` client ``/v1/messages``: short prompts
are answered by the local ONNX model, long ones by the cloud stand-in with the planted
e-mail redacted on the way out and restored on the way back, streamed and not; audio goes
to the local speech server, never to the cloud. The speech server is a real recognizer
(``clawdbot-cloud-standin --asr``: PocketSphinx with the US-English model its wheel ships)
hearing a recorded sentence.
"""

from __future__ import annotations

import json
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import openai
import pytest

from e2e.conftest import REPO_ROOT, E2ECluster
from e2e.harness.kube import Kubectl
from e2e.harness.operator import Operator, free_port
from e2e.harness.routing import (
    BIN,
    EMAIL,
    LONG,
    deploy,
    metric,
    model_server,
    sidecar_of,
    stub_requests,
)

pytestmark = pytest.mark.e2e

# "please call me tomorrow morning about the order" (see tests/unit/sidecar/test_api_audio.py)
SPEECH = (REPO_ROOT / "tests" / "support" / "speech-en.wav").read_bytes()
# How long the patched policy may take to reach the sidecar over the discovery stream.
POLICY_PROPAGATION_S = 30.0


@pytest.fixture
def operator(routed_operator: Operator) -> Operator:
    return routed_operator


@pytest.fixture
def speech_server(tmp_path: Path) -> Iterator[str]:
    """The local speech server (a real recognizer); its base URL (``.../v1``)."""
    port = free_port()
    with (tmp_path / "speech.log").open("wb") as log:
        proc = subprocess.Popen(
            [str(BIN / "clawdbot-cloud-standin"), "--asr", "--port", str(port)],
            stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                urllib.request.urlopen(f"{url}/_stub/requests", timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline and proc.poll() is None, "no speech server"
                time.sleep(0.2)
        yield f"{url}/v1"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def speech_requests(url: str) -> list[dict[str, Any]]:
    with urllib.request.urlopen(f"{url.removesuffix('/v1')}/_stub/requests", timeout=5) as r:
        data: list[dict[str, Any]] = json.loads(r.read())
        return data


def audio_answered(client: openai.OpenAI, log_tail: Any) -> openai.types.audio.Transcription:
    """A transcription, once the policy naming the speech server reached the sidecar."""
    deadline = time.monotonic() + POLICY_PROPAGATION_S
    while True:
        try:
            return client.audio.transcriptions.create(file=("call.wav", SPEECH), model="whisper-1")
        except openai.BadRequestError as exc:  # the policy without localSpeech, still
            assert exc.code == "speech_not_configured", exc
            assert time.monotonic() < deadline, log_tail()
            time.sleep(0.5)


def test_responses_messages_and_audio_through_the_injected_sidecar(
    *,
    local_cluster: E2ECluster,
    kube: Kubectl,
    operator: Operator,
    cloud_stub: str,
    speech_server: str,
    tmp_path: Path,
) -> None:
    models = tmp_path / "models"
    model_pod, client_pod = deploy(kube, cloud_stub, models)
    patch = {"spec": {"localSpeech": {"baseURL": speech_server},
                      "cloud": {"audioModel": "whisper-1"}}}  # fmt: skip
    kube.run("patch", "routingpolicy", "chat", "--type=merge", "-p", json.dumps(patch))
    with (
        model_server(local_cluster, model_pod, models, timeout=60),
        sidecar_of(local_cluster, client_pod, operator) as (base, sidecar),
    ):
        oai = openai.OpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0)
        claude = anthropic.Anthropic(base_url=base, api_key="unused", max_retries=0)

        # Audio first: it waits for the patched policy. Local speech server, not the cloud.
        transcript = audio_answered(oai, sidecar.log_tail)
        assert "tomorrow" in transcript.text and "order" in transcript.text, transcript.text
        translated = oai.audio.translations.with_raw_response.create(
            file=("note.wav", SPEECH), model="whisper-1", response_format="text"
        )
        assert translated.headers["x-clawdbot-target"] == "local"
        assert translated.parse() == transcript.text
        assert [r["path"] for r in speech_requests(speech_server)] == [
            "/v1/audio/transcriptions", "/v1/audio/translations"]  # fmt: skip

        # The Responses API: short -> the local ONNX model, long -> the cloud, restored.
        short = oai.responses.with_raw_response.create(
            model="tiny-chat", input="hello", max_output_tokens=8
        )
        assert short.headers["x-clawdbot-target"] == "local", sidecar.log_tail()
        assert short.parse().model == "tiny-chat"
        long = oai.responses.create(model="tiny-chat", input=f"{LONG} Reply to {EMAIL}.")
        assert EMAIL in long.output_text
        with oai.responses.stream(model="tiny-chat", input=f"{LONG} Mail {EMAIL}.") as stream:
            streamed = stream.get_final_response()
        assert streamed.output_text.endswith(f"Mail {EMAIL}.")

        # The Messages API, the same way.
        local = claude.messages.with_raw_response.create(
            model="tiny-chat", max_tokens=8, messages=[{"role": "user", "content": "hi"}]
        )
        assert local.headers["x-clawdbot-target"] == "local"
        assert local.parse().content[0].type == "text"
        with claude.messages.stream(
            model="tiny-chat", max_tokens=100,
            messages=[{"role": "user", "content": f"{LONG} Write to {EMAIL}."}],
        ) as stream:  # fmt: skip
            text = "".join(stream.text_stream)
        assert text.endswith(f"Write to {EMAIL}.")

        requests = 'clawdbot_sidecar_requests_total{code="200",endpoint="%s",target="%s"}'
        assert metric(base, requests % ("responses", "local")) == 1
        assert metric(base, requests % ("responses", "cloud")) == 2
        assert metric(base, requests % ("messages", "cloud")) == 1
        assert metric(base, requests % ("audio/transcriptions", "local")) >= 1

    sent = stub_requests(cloud_stub)
    assert [r["path"] for r in sent] == ["/v1/chat/completions"] * 3
    assert EMAIL not in json.dumps(sent) and "<EMAIL_1>" in json.dumps(sent)
    assert not any("audio" in r["path"] for r in sent)
