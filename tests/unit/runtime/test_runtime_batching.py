"""Dynamic batching and backpressure, observed through the server's metrics and responses.

Each test holds the model's first run in a gate, queues more requests behind it, and only
then lets it go, so what gets merged is decided by the queue's state, never by timing.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import numpy as np
import pytest
from runtime_support import StartServer, gate_model, linear_weights, wait_for

from clawdbot_api.protocol import grpc_predict_v2_pb2 as pb
from clawdbot_api.protocol import grpc_predict_v2_pb2_grpc as pb_grpc
from clawdbot_runtime.server import RuntimeServer


def rows_for(request: int, count: int) -> np.ndarray:
    """Distinct inputs per request, so a mix-up in splitting the batch would show."""
    base = np.arange(count * 4, dtype=np.float32).reshape(count, 4)
    return base + 100 * request


async def infer(http: aiohttp.ClientSession, x: np.ndarray) -> tuple[int, Any]:
    body = {
        "inputs": [{"name": "x", "shape": list(x.shape), "datatype": "FP32", "data": x.tolist()}]
    }
    async with http.post("/v2/models/linear/infer", json=body) as response:
        return response.status, await response.json()


def per_batch(server: RuntimeServer, name: str) -> tuple[float, float]:
    """(number of runs, requests served by them) from the requests-per-batch histogram."""
    registry = server.metrics.registry
    labels = {"model": name}
    count = registry.get_sample_value("clawdbot_runtime_requests_per_batch_count", labels)
    total = registry.get_sample_value("clawdbot_runtime_requests_per_batch_sum", labels)
    return count or 0.0, total or 0.0


async def run_held_burst(
    server: RuntimeServer, monkeypatch: pytest.MonkeyPatch, sizes: list[int]
) -> list[tuple[int, Any]]:
    """One gated request, then ``sizes`` requests queued behind it, then release."""
    gate = gate_model(server, "linear", monkeypatch)
    batcher = server.manager.get("linear").batcher
    async with aiohttp.ClientSession(f"http://127.0.0.1:{server.http_port}") as http:
        first = asyncio.create_task(infer(http, rows_for(0, 1)))
        await asyncio.to_thread(gate.entered.wait, 10)
        queued = [asyncio.create_task(infer(http, rows_for(i + 1, n))) for i, n in enumerate(sizes)]
        await wait_for(lambda: batcher.depth == len(sizes))
        gate.release.set()
        return await asyncio.gather(first, *queued)


def check_split(results: list[tuple[int, Any]], sizes: list[int]) -> None:
    w, b = linear_weights(0.1)
    for request, (status, body) in enumerate(results):
        assert status == 200, body
        x = rows_for(request, ([1, *sizes])[request])
        y = np.asarray(body["outputs"][0]["data"], dtype=np.float32).reshape(len(x), 3)
        np.testing.assert_allclose(y, x @ w + b, rtol=1e-5)


async def test_queued_requests_merge_into_one_run(
    start_server: StartServer, repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = await start_server(repo, max_batch_size=16, max_queue_delay_ms=0)
    sizes = [1, 2, 1, 3, 1, 2]
    results = await run_held_burst(server, monkeypatch, sizes)
    check_split(results, sizes)
    # The gated run, then all six queued requests (10 rows) in a single run.
    assert per_batch(server, "linear") == (2, 7)
    rows = server.metrics.registry.get_sample_value(
        "clawdbot_runtime_batch_size_sum", {"model": "linear"}
    )
    assert rows == 1 + sum(sizes)


async def test_batches_respect_the_max_batch_size(
    start_server: StartServer, repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = await start_server(repo, max_batch_size=4, max_queue_delay_ms=0)
    sizes = [2, 2, 2, 1]
    results = await run_held_burst(server, monkeypatch, sizes)
    check_split(results, sizes)
    # 2+2 fill one batch of 4; 2+1 the next.
    assert per_batch(server, "linear") == (3, 5)


async def test_batching_off_runs_each_request_alone(
    start_server: StartServer, repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = await start_server(repo, max_batch_size=1)
    sizes = [1, 2, 1]
    results = await run_held_burst(server, monkeypatch, sizes)
    check_split(results, sizes)
    assert per_batch(server, "linear") == (4, 4)


async def test_full_queue_answers_429_and_resource_exhausted(
    start_server: StartServer, repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = await start_server(repo, max_batch_size=1, max_queue=2)
    gate = gate_model(server, "linear", monkeypatch)
    batcher = server.manager.get("linear").batcher
    async with (
        aiohttp.ClientSession(f"http://127.0.0.1:{server.http_port}") as http,
        grpc.aio.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel,
    ):
        running = asyncio.create_task(infer(http, rows_for(0, 1)))
        await asyncio.to_thread(gate.entered.wait, 10)
        queued = [asyncio.create_task(infer(http, rows_for(i, 1))) for i in (1, 2)]
        await wait_for(lambda: batcher.depth == 2)
        assert (
            server.metrics.registry.get_sample_value(
                "clawdbot_runtime_queue_depth", {"model": "linear"}
            )
            == 2
        )

        status, body = await infer(http, rows_for(3, 1))
        assert status == 429
        assert "has 2 requests queued" in body["error"]

        request = pb.ModelInferRequest(model_name="linear")
        request.inputs.add(name="x", datatype="FP32", shape=[1, 4])
        request.raw_input_contents.append(rows_for(4, 1).tobytes())
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request)
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED

        gate.release.set()
        # Backpressure lost nothing that was accepted.
        assert [s for s, _ in await asyncio.gather(running, *queued)] == [200, 200, 200]
    assert (
        server.metrics.registry.get_sample_value(
            "clawdbot_runtime_requests_total",
            {"model": "linear", "protocol": "rest", "code": "429"},
        )
        == 1
    )
