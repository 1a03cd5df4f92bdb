"""The Open Inference Protocol v2 REST front, against a real server and real ONNX inference."""

from __future__ import annotations

from pathlib import Path

import aiohttp
import numpy as np
from runtime_support import StartServer, linear_weights

ROWS = [[1.0, 2.0, 3.0, 4.0], [-1.0, 0.5, 0.0, 2.0]]


def expected(rows: list[list[float]], scale: float = 0.1) -> np.ndarray:
    w, b = linear_weights(scale)
    return np.asarray(rows, dtype=np.float32) @ w + b


def infer_body(rows: list[list[float]], datatype: str = "FP32") -> dict[str, object]:
    return {
        "id": "req-1",
        "inputs": [{"name": "x", "shape": [len(rows), 4], "datatype": datatype, "data": rows}],
    }


async def test_health_and_server_metadata(http: aiohttp.ClientSession) -> None:
    async with http.get("/v2/health/live") as r:
        assert r.status == 200
        assert await r.json() == {"live": True}
    async with http.get("/v2/health/ready") as r:
        assert r.status == 200
        assert await r.json() == {"ready": True}
    async with http.get("/v2") as r:
        meta = await r.json()
    assert meta["name"] == "clawdbot-runtime"
    assert "model_repository" in meta["extensions"]


async def test_model_metadata_and_readiness(http: aiohttp.ClientSession) -> None:
    async with http.get("/v2/models/linear") as r:
        meta = await r.json()
    assert meta["versions"] == ["1"]
    assert meta["platform"] == "onnxruntime_onnx"
    assert meta["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}]
    assert meta["outputs"] == [{"name": "y", "datatype": "FP32", "shape": [-1, 3]}]
    async with http.get("/v2/models/linear/versions/1/ready") as r:
        assert r.status == 200
        assert (await r.json())["ready"] is True
    async with http.get("/v2/models/linear/versions/7") as r:
        assert r.status == 404
        assert "no version 7" in (await r.json())["error"]


async def test_infer_runs_the_model(http: aiohttp.ClientSession) -> None:
    async with http.post("/v2/models/linear/infer", json=infer_body(ROWS)) as r:
        assert r.status == 200
        body = await r.json()
    assert body["model_name"] == "linear"
    assert body["model_version"] == "1"
    assert body["id"] == "req-1"
    (output,) = body["outputs"]
    assert output["name"] == "y"
    assert output["shape"] == [2, 3]
    np.testing.assert_allclose(np.asarray(output["data"]).reshape(2, 3), expected(ROWS), rtol=1e-5)


async def test_infer_on_versioned_route(http: aiohttp.ClientSession) -> None:
    async with http.post("/v2/models/linear/versions/1/infer", json=infer_body(ROWS[:1])) as r:
        assert r.status == 200
        assert (await r.json())["outputs"][0]["shape"] == [1, 3]


async def test_wrong_shape_is_a_clear_400(http: aiohttp.ClientSession) -> None:
    body = {"inputs": [{"name": "x", "shape": [1, 3], "datatype": "FP32", "data": [1, 2, 3]}]}
    async with http.post("/v2/models/linear/infer", json=body) as r:
        assert r.status == 400
        message = (await r.json())["error"]
    assert "input 'x'" in message
    assert "[1, 3]" in message and "[-1, 4]" in message


async def test_wrong_datatype_is_a_clear_400(http: aiohttp.ClientSession) -> None:
    async with http.post("/v2/models/linear/infer", json=infer_body(ROWS, "INT64")) as r:
        assert r.status == 400
        message = (await r.json())["error"]
    # Float data in an INT64 tensor is refused before the model is even consulted.
    assert "input 'x'" in message and "INT64" in message


async def test_datatype_mismatch_names_the_model_type(http: aiohttp.ClientSession) -> None:
    rows = [[1, 2, 3, 4]]
    async with http.post("/v2/models/linear/infer", json=infer_body(rows, "INT64")) as r:
        assert r.status == 400
        assert "does not match the model's FP32" in (await r.json())["error"]


async def test_bad_requests_leave_the_server_serving(http: aiohttp.ClientSession) -> None:
    async with http.post("/v2/models/linear/infer", data=b"{not json") as r:
        assert r.status == 400
        assert "not valid JSON" in (await r.json())["error"]
    async with http.post("/v2/models/linear/infer", json={"inputs": []}) as r:
        assert r.status == 400
    missing = {"inputs": [{"name": "z", "shape": [1], "datatype": "FP32", "data": [1]}]}
    async with http.post("/v2/models/linear/infer", json=missing) as r:
        assert r.status == 400
        assert "has no input 'z'" in (await r.json())["error"]
    async with http.post("/v2/models/nope/infer", json=infer_body(ROWS)) as r:
        assert r.status == 404
    async with http.post("/v2/models/linear/infer", json=infer_body(ROWS)) as r:
        assert r.status == 200


async def test_oversized_request_is_refused_with_413(start_server: StartServer, repo: Path) -> None:
    server = await start_server(repo, max_request_bytes=4096)
    rows = [[0.5, 0.5, 0.5, 0.5]] * 400  # ~8 KB of JSON
    async with aiohttp.ClientSession(f"http://127.0.0.1:{server.http_port}") as http:
        async with http.post("/v2/models/linear/infer", json=infer_body(rows)) as r:
            assert r.status == 413
            assert "larger than this server's limit of 4096 bytes" in (await r.json())["error"]
        async with http.post("/v2/models/linear/infer", json=infer_body(ROWS)) as r:
            assert r.status == 200


async def test_metrics_expose_queue_batches_and_latency(http: aiohttp.ClientSession) -> None:
    async with http.post("/v2/models/linear/infer", json=infer_body(ROWS)) as r:
        assert r.status == 200
    async with http.get("/metrics") as r:
        text = await r.text()
    assert 'clawdbot_runtime_queue_depth{model="linear"}' in text
    assert 'clawdbot_runtime_batch_size_count{model="linear"}' in text
    assert (
        'clawdbot_runtime_request_duration_seconds_count{model="linear",protocol="rest"} 1.0'
        in text
    )
    assert 'clawdbot_runtime_requests_total{code="200",model="linear",protocol="rest"} 1.0' in text
