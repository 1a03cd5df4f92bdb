"""Model lifecycle: hot load of new versions, broken model files, readiness and drain."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import aiohttp
import numpy as np
import pytest
from runtime_support import StartServer, gate_model, linear_weights, wait_for, write_linear

from clawdbot_runtime.model import MODEL_FILE
from clawdbot_testing.models.tinylm import DEMO_MODEL_NAME

X = [[1.0, 2.0, 3.0, 4.0]]


async def infer(port: int, model: str = "linear") -> tuple[int, dict[str, object]]:
    body = {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": X}]}
    async with (
        aiohttp.ClientSession(f"http://127.0.0.1:{port}") as http,
        http.post(f"/v2/models/{model}/infer", json=body) as response,
    ):
        return response.status, await response.json()


def output(body: dict[str, object]) -> np.ndarray:
    outputs = body["outputs"]
    assert isinstance(outputs, list)
    return np.asarray(outputs[0]["data"], dtype=np.float32)


def expected(scale: float) -> np.ndarray:
    w, b = linear_weights(scale)
    return (np.asarray(X, dtype=np.float32) @ w + b).ravel()


async def test_polling_hot_loads_a_new_version(start_server: StartServer, repo: Path) -> None:
    server = await start_server(repo, repository_poll_interval_s=0.05)
    status, body = await infer(server.http_port)
    np.testing.assert_allclose(output(body), expected(0.1), rtol=1e-5)

    write_linear(repo, "linear", 2, scale=0.2)
    await wait_for(lambda: server.manager.get("linear").model.version == 2)

    status, body = await infer(server.http_port)
    assert status == 200
    assert body["model_version"] == "2"
    np.testing.assert_allclose(output(body), expected(0.2), rtol=1e-5)
    meta = server.dataplane.model_metadata("linear")
    assert meta["versions"] == ["1", "2"]
    registry = server.metrics.registry
    assert (
        registry.get_sample_value(
            "clawdbot_runtime_model_ready", {"model": "linear", "version": "1"}
        )
        == 0
    )
    assert (
        registry.get_sample_value(
            "clawdbot_runtime_model_ready", {"model": "linear", "version": "2"}
        )
        == 1
    )


async def test_explicit_load_endpoint(start_server: StartServer, repo: Path) -> None:
    server = await start_server(repo)
    write_linear(repo, "linear", 3, scale=0.3)
    async with (
        aiohttp.ClientSession(f"http://127.0.0.1:{server.http_port}") as http,
        http.post("/v2/repository/models/linear/load") as response,
    ):
        assert await response.json() == {"name": "linear", "version": "3"}
    _, body = await infer(server.http_port)
    np.testing.assert_allclose(output(body), expected(0.3), rtol=1e-5)


async def test_a_running_generation_finishes_on_its_version(
    start_server: StartServer, repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = await start_server(repo)
    gate = gate_model(server, DEMO_MODEL_NAME, monkeypatch)
    body = {"model": DEMO_MODEL_NAME, "prompt": "the ", "max_tokens": 20, "temperature": 0}
    async with aiohttp.ClientSession(f"http://127.0.0.1:{server.http_port}") as http:

        async def complete() -> tuple[int, dict[str, object]]:
            async with http.post("/v1/completions", json=body) as response:
                return response.status, await response.json()

        generation = asyncio.create_task(complete())
        await asyncio.to_thread(gate.entered.wait, 10)
        shutil.copytree(repo / DEMO_MODEL_NAME / "1", repo / DEMO_MODEL_NAME / "2")
        rescan = asyncio.create_task(server.manager.rescan())
        # Version 2 is loaded and takes new requests, while version 1 waits for its lease.
        await wait_for(lambda: server.manager.get(DEMO_MODEL_NAME).model.version == 2)
        assert not rescan.done()
        gate.release.set()
        status, result = await generation
        await asyncio.wait_for(rescan, 20)
    assert status == 200
    assert result["usage"] == {"prompt_tokens": 4, "completion_tokens": 20, "total_tokens": 24}


async def test_a_client_hanging_up_mid_stream_frees_its_request(
    start_server: StartServer, repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = await start_server(repo)
    served = server.manager.get(DEMO_MODEL_NAME)
    gate = gate_model(server, DEMO_MODEL_NAME, monkeypatch)
    body = {
        "model": DEMO_MODEL_NAME,
        "messages": [{"role": "user", "content": "hello"}],
        "max_tokens": 4000,
        "stream": True,
    }
    async with aiohttp.ClientSession(f"http://127.0.0.1:{server.http_port}") as http:
        response = await http.post("/v1/chat/completions", json=body)
        assert response.status == 200
        await asyncio.to_thread(gate.entered.wait, 10)
        assert server.dataplane.in_flight == 1
        response.close()  # hang up while the generation is running
    gate.release.set()
    await wait_for(lambda: server.dataplane.in_flight == 0)
    assert await served.wait_released(10)


async def test_broken_new_version_keeps_the_old_one_serving(
    start_server: StartServer, repo: Path
) -> None:
    server = await start_server(repo)
    broken = repo / "linear" / "2"
    broken.mkdir()
    (broken / MODEL_FILE).write_bytes(b"this is not an onnx model")
    await server.manager.rescan()

    status, body = await infer(server.http_port)
    assert status == 200 and body["model_version"] == "1"
    (row,) = [r for r in server.manager.index() if r["name"] == "linear"]
    assert row["state"] == "READY" and row["version"] == "1"
    assert "version 2: model.onnx could not be loaded" in row["reason"]
    assert server.dataplane.ready()
    async with (
        aiohttp.ClientSession(f"http://127.0.0.1:{server.http_port}") as http,
        http.post("/v2/repository/models/linear/load") as response,
    ):
        assert response.status == 400
        assert "could not be loaded" in (await response.json())["error"]


async def test_broken_model_is_reported_and_the_server_stays_up(
    start_server: StartServer, repo: Path
) -> None:
    folder = repo / "corrupt" / "1"
    folder.mkdir(parents=True)
    (folder / MODEL_FILE).write_bytes(b"\x08\x07garbage")
    server = await start_server(repo)

    status, body = await infer(server.http_port, "corrupt")
    assert status == 503
    message = str(body["error"])
    assert "model 'corrupt' is not ready" in message
    assert "model.onnx could not be loaded" in message
    async with aiohttp.ClientSession(f"http://127.0.0.1:{server.http_port}") as http:
        async with http.get("/v2/models/corrupt/ready") as response:
            assert response.status == 503
        async with http.get("/v2/health/live") as response:
            assert response.status == 200
    # The other models are unaffected.
    assert (await infer(server.http_port))[0] == 200
    assert (
        server.metrics.registry.get_sample_value(
            "clawdbot_runtime_model_load_failures_total", {"model": "corrupt"}
        )
        == 1
    )


async def test_only_the_named_model_is_served(start_server: StartServer, repo: Path) -> None:
    server = await start_server(repo, model=DEMO_MODEL_NAME)
    assert server.manager.names() == [DEMO_MODEL_NAME]
    assert server.dataplane.ready()
    assert (await infer(server.http_port))[0] == 404


async def test_not_ready_without_a_servable_model(start_server: StartServer, repo: Path) -> None:
    server = await start_server(repo, model="absent")
    assert not server.dataplane.ready()
    async with (
        aiohttp.ClientSession(f"http://127.0.0.1:{server.http_port}") as http,
        http.get("/v2/health/ready") as response,
    ):
        assert response.status == 503
        assert await response.json() == {"ready": False}


async def test_drain_finishes_in_flight_work_and_refuses_new(
    start_server: StartServer, repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = await start_server(repo)
    gate = gate_model(server, "linear", monkeypatch)
    in_flight = asyncio.create_task(infer(server.http_port))
    await asyncio.to_thread(gate.entered.wait, 10)

    shutdown = asyncio.create_task(server.shutdown())
    await wait_for(lambda: server.dataplane.draining)
    async with (
        aiohttp.ClientSession(f"http://127.0.0.1:{server.http_port}") as http,
        http.get("/v2/health/ready") as response,
    ):
        assert response.status == 503
    status, body = await infer(server.http_port)
    assert status == 503
    assert "shutting down" in str(body["error"])
    assert not shutdown.done()

    gate.release.set()
    status, _ = await in_flight
    assert status == 200
    await asyncio.wait_for(shutdown, 20)
    with pytest.raises(aiohttp.ClientConnectionError):
        await infer(server.http_port)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_sigterm_drains_and_exits_cleanly(repo: Path) -> None:
    port = _free_port()
    command = [
        sys.executable,
        "-m",
        "clawdbot_runtime.main",
        "serve",
        "--model-repository",
        str(repo),
        "--host",
        "127.0.0.1",
        "--http-port",
        str(port),
        "--grpc-port",
        str(_free_port()),
        "--cpu-threads",
        "1",
    ]
    process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)  # noqa: ASYNC220
    try:
        async with aiohttp.ClientSession(f"http://127.0.0.1:{port}") as http:
            for _ in range(300):
                try:
                    async with http.get("/v2/health/ready") as response:
                        if response.status == 200:
                            break
                except aiohttp.ClientConnectionError:
                    pass
                assert process.poll() is None, process.stderr.read() if process.stderr else ""
                await asyncio.sleep(0.05)
            else:
                pytest.fail("server never became ready")
        os.kill(process.pid, signal.SIGTERM)
        _, logs = await asyncio.to_thread(process.communicate, timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 0
    assert '"message": "draining"' in logs
    assert '"message": "stopped"' in logs
