"""The gRPC front: GRPCInferenceService, health and reflection, through a real grpc.aio client."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from runtime_support import StartServer, linear_weights

from clawdbot_api.protocol import grpc_predict_v2_pb2 as pb
from clawdbot_api.protocol import grpc_predict_v2_pb2_grpc as pb_grpc
from clawdbot_runtime.grpc_server import SERVICE_NAME
from clawdbot_runtime.server import RuntimeServer


@pytest.fixture
async def channel(server: RuntimeServer) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
        yield channel


@pytest.fixture
def stub(channel: grpc.aio.Channel) -> pb_grpc.GRPCInferenceServiceStub:
    return pb_grpc.GRPCInferenceServiceStub(channel)


def x_rows() -> np.ndarray:
    return np.array([[1, 2, 3, 4], [0.5, -1, 0, 2], [3, 3, 3, 3]], dtype=np.float32)


def expected(x: np.ndarray) -> np.ndarray:
    w, b = linear_weights(0.1)
    return x @ w + b


async def test_health_and_metadata(stub: pb_grpc.GRPCInferenceServiceStub) -> None:
    assert (await stub.ServerLive(pb.ServerLiveRequest())).live
    assert (await stub.ServerReady(pb.ServerReadyRequest())).ready
    assert (await stub.ModelReady(pb.ModelReadyRequest(name="linear"))).ready
    server_meta = await stub.ServerMetadata(pb.ServerMetadataRequest())
    assert server_meta.name == "clawdbot-runtime"
    meta = await stub.ModelMetadata(pb.ModelMetadataRequest(name="linear"))
    assert list(meta.versions) == ["1"]
    assert [(t.name, t.datatype, list(t.shape)) for t in meta.inputs] == [("x", "FP32", [-1, 4])]


async def test_infer_with_raw_contents(stub: pb_grpc.GRPCInferenceServiceStub) -> None:
    x = x_rows()
    request = pb.ModelInferRequest(model_name="linear", id="g1")
    request.inputs.add(name="x", datatype="FP32", shape=list(x.shape))
    request.raw_input_contents.append(x.tobytes())
    response = await stub.ModelInfer(request)
    assert response.id == "g1"
    assert response.model_version == "1"
    (output,) = response.outputs
    assert (output.name, output.datatype, list(output.shape)) == ("y", "FP32", [3, 3])
    y = np.frombuffer(response.raw_output_contents[0], dtype="<f4").reshape(3, 3)
    np.testing.assert_allclose(y, expected(x), rtol=1e-5)


async def test_infer_with_typed_contents(stub: pb_grpc.GRPCInferenceServiceStub) -> None:
    x = x_rows()[:1]
    request = pb.ModelInferRequest(model_name="linear", model_version="1")
    tensor = request.inputs.add(name="x", datatype="FP32", shape=[1, 4])
    tensor.contents.fp32_contents.extend(x.ravel().tolist())
    response = await stub.ModelInfer(request)
    y = np.frombuffer(response.raw_output_contents[0], dtype="<f4").reshape(1, 3)
    np.testing.assert_allclose(y, expected(x), rtol=1e-5)


async def test_errors_map_to_status_codes(stub: pb_grpc.GRPCInferenceServiceStub) -> None:
    wrong_shape = pb.ModelInferRequest(model_name="linear")
    wrong_shape.inputs.add(name="x", datatype="FP32", shape=[1, 3])
    wrong_shape.raw_input_contents.append(np.zeros(3, dtype=np.float32).tobytes())
    with pytest.raises(grpc.aio.AioRpcError) as shape_error:
        await stub.ModelInfer(wrong_shape)
    assert shape_error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "input 'x'" in (shape_error.value.details() or "")

    short_raw = pb.ModelInferRequest(model_name="linear")
    short_raw.inputs.add(name="x", datatype="FP32", shape=[1, 4])
    short_raw.raw_input_contents.append(b"\0" * 7)
    with pytest.raises(grpc.aio.AioRpcError) as raw_error:
        await stub.ModelInfer(short_raw)
    assert raw_error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "needs 16 raw bytes, got 7" in (raw_error.value.details() or "")

    with pytest.raises(grpc.aio.AioRpcError) as missing:
        await stub.ModelMetadata(pb.ModelMetadataRequest(name="absent"))
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND
    # The server is still serving after all of that.
    assert (await stub.ServerReady(pb.ServerReadyRequest())).ready


async def test_standard_health_service(channel: grpc.aio.Channel) -> None:
    health = health_pb2_grpc.HealthStub(channel)
    for service in ("", SERVICE_NAME):
        reply = await health.Check(health_pb2.HealthCheckRequest(service=service))
        assert reply.status == health_pb2.HealthCheckResponse.SERVING


async def test_reflection_lists_the_services(channel: grpc.aio.Channel) -> None:
    reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
    call = reflection.ServerReflectionInfo(
        iter([reflection_pb2.ServerReflectionRequest(list_services="")])
    )
    names = set()
    async for reply in call:
        names |= {s.name for s in reply.list_services_response.service}
    assert {SERVICE_NAME, "grpc.health.v1.Health"} <= names


async def test_oversized_message_is_resource_exhausted(
    start_server: StartServer, repo: Path
) -> None:
    server = await start_server(repo, max_request_bytes=4096)
    x = np.zeros((400, 4), dtype=np.float32)  # 6.4 KB of raw tensor data
    request = pb.ModelInferRequest(model_name="linear")
    request.inputs.add(name="x", datatype="FP32", shape=list(x.shape))
    request.raw_input_contents.append(x.tobytes())
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.ModelInfer(request)
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert (await stub.ServerReady(pb.ServerReadyRequest())).ready
