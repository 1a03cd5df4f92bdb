"""JSON and YAML that nest too deep, from every side the sidecar reads them: an app's REST
body, the gRPC ``messages`` tensor, an upstream's answer and event stream, and a config
file. Each is refused with a clear error (400, INVALID_ARGUMENT, a protocol error, a
ConfigError) and no traceback in the logs; nothing reaches a recursive walker."""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pytest
from aiohttp import web
from sidecar_support import API_KEY, StartSidecar, policy

from clawdbot_api.openai_wire import MAX_JSON_DEPTH
from clawdbot_api.protocol import grpc_predict_v2_pb2 as pb
from clawdbot_api.protocol import grpc_predict_v2_pb2_grpc as pb_grpc
from clawdbot_sidecar.config import (
    MAX_CONFIG_DEPTH,
    MAX_REPORTED_ERRORS,
    ConfigError,
    SidecarConfig,
    load_config,
    parse_config,
)
from clawdbot_sidecar.fronts.grpc import GrpcFront
from clawdbot_sidecar.routing.core import RoutingCore
from clawdbot_sidecar.upstream import Upstream, UpstreamError
from tests.support.servers import serve_app

# What the issue found: a body nested this deep parsed, then failed in a walker (500).
DEEP = 900


def nested(depth: int) -> Any:
    value: Any = []
    for _ in range(depth - 1):
        value = [value]
    return value


def deep_json(depth: int) -> str:
    return "[" * depth + "]" * depth


def cloud_only(cloud_url: str) -> dict[str, Any]:
    """Everything to the cloud, through the cache: the path whose walkers recursed."""
    return policy(
        cloud_url, rules=[], localModels=[], defaultTarget="cloud", cache={"enabled": True}
    )


def no_tracebacks(caplog: pytest.LogCaptureFixture) -> None:
    # The sidecar's own loggers ("clawdbot.sidecar", "clawdbot_sidecar.<module>"); other
    # libraries' leftovers of earlier tests are not this test's business.
    failures = [
        r
        for r in caplog.records
        if r.name.startswith("clawdbot") and (r.levelno >= logging.ERROR or r.exc_info)
    ]
    assert failures == [], [r.getMessage() for r in failures]


@pytest.mark.parametrize("where", ["extra-field", "content", "tool-schema"])
async def test_a_rest_body_nested_too_deep_is_a_400_naming_the_problem(
    make_sidecar: StartSidecar, cloud: str, caplog: pytest.LogCaptureFixture, where: str
) -> None:
    sc = await make_sidecar(cloud_only(cloud), [])
    deep = deep_json(DEEP)
    message = '{"role":"user","content":"hi"}'
    body = {
        "extra-field": f'{{"model":"m","messages":[{message}],"x":{deep}}}',
        "content": f'{{"model":"m","messages":[{{"role":"user","content":{deep}}}]}}',
        "tool-schema": f'{{"model":"m","messages":[{message}],"tools":[{{"type":"function",'
        f'"function":{{"name":"f","parameters":{deep}}}}}]}}',
    }[where]
    caplog.set_level(logging.INFO)
    async with (
        aiohttp.ClientSession() as s,
        s.post(f"{sc.url}/v1/chat/completions", data=body.encode()) as r,
    ):
        status, answer = r.status, await r.json()
    assert status == 400
    assert set(answer["error"]) == {"message", "type", "param", "code"}
    assert answer["error"]["type"] == "invalid_request_error"
    assert f"nested deeper than {MAX_JSON_DEPTH} levels" in answer["error"]["message"]
    no_tracebacks(caplog)
    # The sidecar goes on serving.
    ok = await sc.chat("hello")
    assert ok.http_response.status_code == 200


async def test_a_body_at_the_depth_limit_is_served(make_sidecar: StartSidecar, cloud: str) -> None:
    sc = await make_sidecar(cloud_only(cloud), [])
    # A tool schema nested to the limit (the body's own levels count: 5 above it).
    schema = json.loads(deep_json(MAX_JSON_DEPTH - 5))
    answer = await sc.client.chat.completions.with_raw_response.create(
        model="m",
        messages=[{"role": "user", "content": "hi"}],
        tools=[{"type": "function", "function": {"name": "f", "parameters": {"x": schema}}}],
    )
    assert answer.http_response.status_code == 200


async def test_a_grpc_messages_tensor_nested_too_deep_is_invalid_argument(
    cloud: str, caplog: pytest.LogCaptureFixture
) -> None:
    config = SidecarConfig.model_validate({"policy": cloud_only(cloud)}).model_copy(
        update={"cloud_api_key": API_KEY}
    )
    upstream = Upstream.create(connect_timeout_s=1.0)
    front = GrpcFront(RoutingCore(config, upstream, seed=1), "127.0.0.1", 0)
    await front.start()
    caplog.set_level(logging.INFO)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{front.port}") as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)  # type: ignore[no-untyped-call]
            request = pb.ModelInferRequest(model_name="m")
            tensor = request.inputs.add(name="messages", datatype="BYTES", shape=[1])
            messages = f'[{{"role":"user","content":{deep_json(DEEP)}}}]'
            tensor.contents.bytes_contents.append(messages.encode())
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await stub.ModelInfer(request)
    finally:
        await front.stop(0)
        await upstream.close()
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert f"nested deeper than {MAX_JSON_DEPTH} levels" in str(refused.value.details())
    no_tracebacks(caplog)


@contextlib.asynccontextmanager
async def deep_upstream() -> AsyncIterator[str]:
    """An OpenAI-compatible upstream whose answers and events nest 900 deep."""
    choice = {"index": 0, "message": {"role": "assistant", "content": "x"}}

    async def chat(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        if body.get("stream"):
            resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await resp.prepare(request)
            event = {"choices": [{"index": 0, "delta": {"content": "x"}}], "x": nested(DEEP)}
            await resp.write(b"data: " + json.dumps(event).encode() + b"\n\n")
            await resp.write(b"data: [DONE]\n\n")
            return resp
        answer = {"choices": [{**choice, "finish_reason": "stop"}], "x": nested(DEEP)}
        return web.Response(body=json.dumps(answer), content_type="application/json")

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    async with serve_app(app) as url:
        yield url


async def test_an_upstream_answer_nested_too_deep_is_a_protocol_error() -> None:
    async with deep_upstream() as url:
        upstream = Upstream.create(connect_timeout_s=1.0)
        try:
            with pytest.raises(UpstreamError) as refused:
                await upstream.post_json(f"{url}/v1/chat/completions", {"model": "m"}, {}, 5.0)
            assert refused.value.kind == "protocol"
            handle = await upstream.open_stream(
                f"{url}/v1/chat/completions", {"model": "m", "stream": True}, {}, 5.0
            )
            with pytest.raises(UpstreamError) as broken:
                async for _ in handle.events():
                    pass
            assert broken.value.kind == "protocol"
        finally:
            await upstream.close()


async def test_the_app_gets_an_upstream_error_when_the_upstream_nests_too_deep(
    make_sidecar: StartSidecar, caplog: pytest.LogCaptureFixture
) -> None:
    async with deep_upstream() as url:
        sc = await make_sidecar(cloud_only(url), [])
        caplog.set_level(logging.INFO)
        async with (
            aiohttp.ClientSession() as s,
            s.post(
                f"{sc.url}/v1/chat/completions",
                json={"model": "m", "messages": [{"role": "user", "content": "hi"}]},
            ) as r,
        ):
            status, answer = r.status, await r.json()
    # The cloud's answer is unusable, and the fallback (local) has no endpoint: 503.
    assert status in (502, 503) and answer["error"]["type"] == "upstream_error", answer
    no_tracebacks(caplog)


@pytest.mark.parametrize(
    "text",
    [
        "policy: " + "[" * 5000 + "]" * 5000,  # flow style
        "policy:\n" + "".join(" " * i + "-\n" for i in range(2000)),  # block style
        '{"policy": {"rules": ' + deep_json(DEEP) + "}}",  # JSON is YAML too
    ],
    ids=["flow", "block", "json"],
)
def test_a_config_nested_too_deep_is_a_config_error(text: str) -> None:
    with pytest.raises(ConfigError, match=f"nested deeper than {MAX_CONFIG_DEPTH} levels"):
        parse_config(text, "sidecar.yaml")


def test_a_config_with_thousands_of_errors_reports_a_bounded_few() -> None:
    with pytest.raises(ConfigError) as refused:
        parse_config("endpoints: [" + ",".join(["1"] * 5000) + "]", "sidecar.yaml")
    lines = str(refused.value).splitlines()
    assert len(lines) == MAX_REPORTED_ERRORS + 1
    assert lines[0].startswith("sidecar.yaml:1: endpoints[0]:")
    assert lines[-1] == f"... and {5000 - MAX_REPORTED_ERRORS} more errors"


def test_a_config_file_that_is_not_text_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "sidecar.yaml"
    path.write_bytes(b"policy: \xff\xfe\x00")
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_config(path)
