"""The sidecar's gRPC front end to end on loopback: a real grpc.aio client -> the front ->
the routing core -> the real ONNX runtime or the cloud stub. Asserts the answer, where it
went and why, what left the pod, and how refusals become gRPC status codes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import struct
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pytest
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from clawdbot_api.protocol import grpc_predict_v2_pb2 as pb
from clawdbot_api.protocol import grpc_predict_v2_pb2_grpc as pb_grpc
from clawdbot_sidecar.config import SidecarConfig
from clawdbot_sidecar.fronts.grpc import GENERATE_SERVICE, INFERENCE_SERVICE, GrpcFront
from clawdbot_sidecar.protocol import generate_pb2 as gen
from clawdbot_sidecar.protocol import generate_pb2_grpc as gen_grpc
from clawdbot_sidecar.routing.core import RoutingCore
from clawdbot_sidecar.upstream import Upstream
from tests.support.servers import STUB_API_KEY, free_port, stop_process

API_KEY = STUB_API_KEY
EMAIL = "jane.doe@example.com"
LONG_FILLER = "Please summarise the following quarterly report in detail. " * 60  # ~900 tokens
# The serve command imports grpc, aiohttp and the core: a second or two on a slow machine.
SERVE_START_TIMEOUT_S = 30.0


def policy(cloud_url: str, **overrides: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "localModels": [{"name": "tiny-chat"}],
        "cloud": {"baseURL": f"{cloud_url}/v1", "model": "gpt-4o-mini", "maxRetries": 0},
        "rules": [
            {"name": "tenant-acme", "match": {"headers": [{"name": "X-Tenant", "value": "acme"}]},
             "target": "cloud"},
            {"name": "short", "match": {"maxTokens": 512}, "target": "local"},
            {"name": "medium", "match": {"maxTokens": 2048}, "target": "cloud"},
        ],
        "defaultTarget": "reject",
    }  # fmt: skip
    spec.update(overrides)
    return spec


@dataclass
class Front:
    """A running gRPC front and stubs on a channel to it."""

    front: GrpcFront
    channel: grpc.aio.Channel

    @property
    def infer(self) -> pb_grpc.GRPCInferenceServiceStub:
        return pb_grpc.GRPCInferenceServiceStub(self.channel)  # type: ignore[no-untyped-call]

    @property
    def generate(self) -> gen_grpc.GenerateStub:
        return gen_grpc.GenerateStub(self.channel)  # type: ignore[no-untyped-call]


StartFront = Callable[..., Awaitable[Front]]


@pytest.fixture
async def make_front() -> AsyncIterator[StartFront]:
    """Start gRPC fronts for a policy and endpoint list; all stop after the test."""
    async with contextlib.AsyncExitStack() as stack:

        async def start(spec: dict[str, Any], endpoints: list[str], **limits: Any) -> Front:
            config = SidecarConfig.model_validate(
                {
                    "policy": spec,
                    "endpoints": [{"url": u, "model": "tiny-chat"} for u in endpoints],
                    "limits": limits,
                }
            ).model_copy(update={"cloud_api_key": API_KEY})
            upstream = Upstream.create(connect_timeout_s=1.0)
            stack.push_async_callback(upstream.close)
            front = GrpcFront(RoutingCore(config, upstream, seed=1), "127.0.0.1", 0)
            await front.start()
            stack.push_async_callback(front.stop, 0)
            channel = grpc.aio.insecure_channel(f"127.0.0.1:{front.port}")
            stack.push_async_callback(channel.close)
            return Front(front, channel)

        yield start


async def received(cloud_url: str) -> list[dict[str, Any]]:
    async with aiohttp.ClientSession() as s, s.get(f"{cloud_url}/_stub/requests") as r:
        data: list[dict[str, Any]] = await r.json()
        return data


def text_request(prompt: str, *, raw: bool = False, **params: Any) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name="tiny-chat", id="r1")
    tensor = request.inputs.add(name="text_input", datatype="BYTES", shape=[1])
    if raw:
        encoded = prompt.encode()
        request.raw_input_contents.append(struct.pack("<I", len(encoded)) + encoded)
    else:
        tensor.contents.bytes_contents.append(prompt.encode())
    for key, value in params.items():
        field = {bool: "bool_param", int: "int64_param", float: "double_param"}[type(value)]
        setattr(request.parameters[key], field, value)
    return request


def output_text(response: pb.ModelInferResponse) -> str:
    (output,) = response.outputs
    assert (output.name, output.datatype, list(output.shape)) == ("text_output", "BYTES", [1])
    if response.raw_output_contents:
        raw: bytes = response.raw_output_contents[0]
        (length,) = struct.unpack_from("<I", raw)
        return raw[4 : 4 + length].decode()
    typed: bytes = output.contents.bytes_contents[0]
    return typed.decode()


def params(response: pb.ModelInferResponse) -> dict[str, Any]:
    return {k: getattr(v, v.WhichOneof("parameter_choice")) for k, v in response.parameters.items()}


def chat_request(content: str, **kw: Any) -> gen.ChatRequest:
    return gen.ChatRequest(
        model="tiny-chat", messages=[gen.Message(role="user", content=content)], **kw
    )


async def test_model_infer_short_prompt_is_answered_locally(
    local_url: str, cloud: str, make_front: StartFront
) -> None:
    fr = await make_front(policy(cloud), [local_url])
    call = fr.infer.ModelInfer(text_request("Once upon", max_tokens=5, temperature=0.0))
    response = await call
    assert response.id == "r1" and response.model_name == "tiny-chat"
    assert output_text(response)
    got = params(response)
    assert got["clawdbot_target"] == "local"
    assert got["clawdbot_reason"] == "rule:short"
    assert 0 < got["completion_tokens"] <= 5
    trailing = dict(await call.trailing_metadata())
    assert trailing["x-clawdbot-target"] == "local"
    assert trailing["x-clawdbot-reason"] == "rule:short"
    assert await received(cloud) == []  # nothing left the pod

    # A chat as a JSON 'messages' tensor is routed as a chat completion.
    chat = pb.ModelInferRequest(model_name="tiny-chat")
    chat.inputs.add(name="messages", datatype="BYTES", shape=[1]).contents.bytes_contents.append(
        json.dumps([{"role": "user", "content": "hi"}]).encode()
    )
    chat.parameters["max_tokens"].int64_param = 4
    answer = await fr.infer.ModelInfer(chat)
    assert output_text(answer)
    assert params(answer)["clawdbot_target"] == "local"


async def test_model_infer_long_prompt_with_email_goes_to_the_cloud_redacted(
    local_url: str, cloud: str, make_front: StartFront
) -> None:
    fr = await make_front(policy(cloud), [local_url])
    prompt = f"{LONG_FILLER} Contact {EMAIL} please."
    call = fr.infer.ModelInfer(text_request(prompt, raw=True, max_tokens=64))
    response = await call
    got = params(response)
    assert (got["clawdbot_target"], got["clawdbot_reason"]) == ("cloud", "rule:medium")
    assert dict(await call.trailing_metadata())["x-clawdbot-target"] == "cloud"
    # The stub echoes what it received; the client sees the original value again, in the
    # raw form it sent.
    assert response.raw_output_contents
    assert EMAIL in output_text(response)
    sent = await received(cloud)
    assert EMAIL not in json.dumps(sent)
    assert "<EMAIL_1>" in sent[0]["body"]["prompt"]
    assert sent[0]["path"] == "/v1/completions"


async def test_chat_streams_chunks_with_the_decision_first(
    local_url: str, cloud: str, make_front: StartFront
) -> None:
    fr = await make_front(policy(cloud), [local_url])
    call = fr.generate.Chat(chat_request("hello there", max_tokens=6, temperature=0.0))
    chunks = [chunk async for chunk in call]
    assert len(chunks) >= 2
    first = chunks[0]
    assert (first.target, first.reason) == ("local", "rule:short")
    assert first.request_id
    assert all(not c.target and not c.reason for c in chunks[1:])
    assert "".join(c.delta for c in chunks)
    assert any(c.finish_reason for c in chunks)
    assert {c.model for c in chunks if c.delta} == {"tiny-chat"}
    assert chunks[-1].usage.completion_tokens > 0
    assert dict(await call.trailing_metadata())["x-clawdbot-target"] == "local"
    assert await call.code() == grpc.StatusCode.OK


async def test_feedback_scores_a_chat_answer_by_its_answer_id(
    local_url: str, cloud: str, make_front: StartFront
) -> None:
    fr = await make_front(policy(cloud), [local_url])
    chunks = [c async for c in fr.generate.Chat(chat_request("hello there", max_tokens=4))]
    answer_id = chunks[0].answer_id
    assert len(answer_id) == 32 and all(not c.answer_id for c in chunks[1:])
    reply = await fr.generate.Feedback(gen.FeedbackRequest(answer_id=answer_id, score=0.25))
    assert reply.status == "recorded"
    with pytest.raises(grpc.aio.AioRpcError) as again:
        await fr.generate.Feedback(gen.FeedbackRequest(answer_id=answer_id, score=1))
    assert again.value.code() == grpc.StatusCode.ALREADY_EXISTS
    with pytest.raises(grpc.aio.AioRpcError) as unknown:
        await fr.generate.Feedback(gen.FeedbackRequest(answer_id="0" * 32, score=1))
    assert unknown.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.aio.AioRpcError) as bad:
        await fr.generate.Feedback(gen.FeedbackRequest(answer_id=answer_id, score=2))
    assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_chat_headers_pick_a_tenant_rule_and_the_stream_is_restored(
    local_url: str, cloud: str, make_front: StartFront
) -> None:
    fr = await make_front(policy(cloud), [local_url])
    call = fr.generate.Chat(
        chat_request(f"Mail {EMAIL} please.", headers={"X-Tenant": "acme"}),
        metadata=(("x-request-id", "req-42"),),
    )
    chunks = [chunk async for chunk in call]
    assert (chunks[0].target, chunks[0].reason) == ("cloud", "rule:tenant-acme")
    assert chunks[0].request_id == "req-42"
    text = "".join(c.delta for c in chunks)
    # The stub streams 3-character pieces, so the placeholder was split across events.
    assert EMAIL in text and "<EMAIL" not in text
    assert len(chunks) > 5
    assert EMAIL not in json.dumps(await received(cloud))


async def test_reflection_health_metadata_and_drain(
    local_url: str, cloud: str, make_front: StartFront
) -> None:
    fr = await make_front(policy(cloud), [local_url])
    reflection = reflection_pb2_grpc.ServerReflectionStub(fr.channel)
    call = reflection.ServerReflectionInfo(
        iter([reflection_pb2.ServerReflectionRequest(list_services="")])
    )
    names = set()
    async for reply in call:
        names |= {s.name for s in reply.list_services_response.service}
    assert {INFERENCE_SERVICE, GENERATE_SERVICE, "grpc.health.v1.Health"} <= names
    assert GENERATE_SERVICE == "clawdbot.sidecar.v1.Generate"

    health = health_pb2_grpc.HealthStub(fr.channel)
    serving = health_pb2.HealthCheckResponse.SERVING
    for service in ("", INFERENCE_SERVICE, GENERATE_SERVICE):
        reply = await health.Check(health_pb2.HealthCheckRequest(service=service))
        assert reply.status == serving

    assert (await fr.infer.ServerLive(pb.ServerLiveRequest())).live
    assert (await fr.infer.ServerReady(pb.ServerReadyRequest())).ready
    assert (await fr.infer.ServerMetadata(pb.ServerMetadataRequest())).name == "clawdbot-sidecar"
    for model, platform in (("tiny-chat", "clawdbot-local"), ("gpt-4o-mini", "clawdbot-cloud")):
        assert (await fr.infer.ModelReady(pb.ModelReadyRequest(name=model))).ready
        meta = await fr.infer.ModelMetadata(pb.ModelMetadataRequest(name=model))
        assert meta.platform == platform
        assert [t.name for t in meta.outputs] == ["text_output"]
    assert not (await fr.infer.ModelReady(pb.ModelReadyRequest(name="nope"))).ready
    with pytest.raises(grpc.aio.AioRpcError) as unknown:
        await fr.infer.ModelMetadata(pb.ModelMetadataRequest(name="nope"))
    assert unknown.value.code() == grpc.StatusCode.NOT_FOUND
    assert "tiny-chat" in (unknown.value.details() or "")

    await fr.front.drain()
    reply = await health.Check(health_pb2.HealthCheckRequest(service=""))
    assert reply.status == health_pb2.HealthCheckResponse.NOT_SERVING
    assert not (await fr.infer.ServerReady(pb.ServerReadyRequest())).ready
    # Draining still answers the calls that arrive.
    answer = await fr.infer.ModelInfer(text_request("hi", max_tokens=2))
    assert params(answer)["clawdbot_target"] == "local"


async def test_invalid_requests_are_invalid_argument_with_a_message(
    local_url: str, cloud: str, make_front: StartFront
) -> None:
    fr = await make_front(policy(cloud), [local_url], max_body_bytes=4096)
    no_input = pb.ModelInferRequest(model_name="tiny-chat")
    wrong_name = text_request("hi")
    wrong_name.inputs[0].name = "image"
    cases: list[tuple[Any, str]] = [
        (fr.infer.ModelInfer(no_input), "exactly one of the inputs"),
        (fr.infer.ModelInfer(wrong_name), "unknown input 'image'"),
        (fr.infer.ModelInfer(text_request("hi", stream=True)), "Generate/Chat"),
        (fr.infer.ModelInfer(text_request("hi", max_tokens=-1)), "max_tokens"),
    ]
    for call, message in cases:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await call
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert message in (err.value.details() or "")
    with pytest.raises(grpc.aio.AioRpcError) as empty:
        _ = [c async for c in fr.generate.Chat(gen.ChatRequest(model="tiny-chat"))]
    assert empty.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "messages must be a non-empty array" in (empty.value.details() or "")
    # Above limits.max_body_bytes, gRPC refuses the message before it is decoded.
    with pytest.raises(grpc.aio.AioRpcError) as big:
        await fr.infer.ModelInfer(text_request("a" * 8000))
    assert big.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert await received(cloud) == []


async def test_policy_reject_is_permission_denied(
    local_url: str, cloud: str, make_front: StartFront
) -> None:
    fr = await make_front(policy(cloud), [local_url])
    beyond_every_rule = "x " * 9000  # defaultTarget: reject
    call = fr.infer.ModelInfer(text_request(beyond_every_rule))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "refused" in (err.value.details() or "")
    assert dict(err.value.trailing_metadata() or ())["x-clawdbot-reason"] == "default"
    with pytest.raises(grpc.aio.AioRpcError) as chat:
        _ = [c async for c in fr.generate.Chat(chat_request(beyond_every_rule))]
    assert chat.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert await received(cloud) == []


async def inject(cloud_url: str, **faults: Any) -> None:
    async with aiohttp.ClientSession() as s:
        await s.post(f"{cloud_url}/_stub/faults", json=faults)


async def test_overload_is_resource_exhausted_and_a_cancelled_stream_is_released(
    local_url: str, cloud: str, make_front: StartFront
) -> None:
    fr = await make_front(policy(cloud), [local_url], max_concurrency=1)
    await inject(cloud, status=0, count=1, delayS=1.0)
    slow = asyncio.ensure_future(fr.infer.ModelInfer(text_request(LONG_FILLER)))
    await asyncio.sleep(0.3)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await fr.infer.ModelInfer(text_request("hi"))
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "limit of 1" in (err.value.details() or "")
    assert params(await slow)["clawdbot_target"] == "cloud"

    # A client that walks away mid-stream frees its slot for the next request.
    call = fr.generate.Chat(chat_request(f"{LONG_FILLER} {EMAIL}"))
    first = await call.read()
    assert first.target == "cloud"
    call.cancel()
    for _ in range(50):  # bounded: the server sees the cancellation within a few ms
        if fr.front.core.in_flight == 0:
            break
        await asyncio.sleep(0.05)
    assert fr.front.core.in_flight == 0
    assert params(await fr.infer.ModelInfer(text_request("hi", max_tokens=2)))


@contextlib.contextmanager
def sidecar_process(config: Path, grpc_port: int) -> Iterator[subprocess.Popen[bytes]]:
    log_path = config.with_suffix(".log")
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [str(Path(sys.executable).parent / "clawdbot-sidecar"), "serve",
             "--config", str(config), "--host", "127.0.0.1", "--port", str(free_port()),
             "--log-level", "warning"],
            env={**os.environ, "CLAWDBOT_SIDECAR_GRPC_PORT": str(grpc_port)},
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    try:
        yield proc
    finally:
        stop_process(proc)
        if proc.returncode:
            print(log_path.read_text()[-3000:])


async def test_serve_command_starts_and_drains_the_grpc_front(
    local_url: str, tmp_path: Path
) -> None:
    spec = {"localModels": [{"name": "tiny-chat"}], "defaultTarget": "local"}
    config = tmp_path / "sidecar.yaml"
    config.write_text(
        yaml.safe_dump({"policy": spec, "endpoints": [{"url": local_url, "model": "tiny-chat"}]})
    )
    port = free_port()
    with sidecar_process(config, port) as proc:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            health = health_pb2_grpc.HealthStub(channel)
            deadline = time.monotonic() + SERVE_START_TIMEOUT_S
            while True:  # bounded by the deadline
                assert proc.poll() is None, "the sidecar exited early"
                with contextlib.suppress(grpc.aio.AioRpcError):
                    reply = await health.Check(health_pb2.HealthCheckRequest(), timeout=1)
                    if reply.status == health_pb2.HealthCheckResponse.SERVING:
                        break
                assert time.monotonic() < deadline, "the gRPC front did not come up"
                await asyncio.sleep(0.2)
            stub = pb_grpc.GRPCInferenceServiceStub(channel)  # type: ignore[no-untyped-call]
            response = await stub.ModelInfer(text_request("hi", max_tokens=2))
            assert params(response)["clawdbot_reason"] == "default"
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(proc.wait, SERVE_START_TIMEOUT_S) == 0
