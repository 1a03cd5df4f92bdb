"""Dynamic batching benchmark: throughput and p99 latency, batching off vs on, side by side.

One model (a dense MLP, the shape where batching pays: each run reads every weight once,
however many rows it carries), one run of this script, one server per setting (batching
off, and on with each queue delay), all with the same flags otherwise. For each
concurrency level a fixed number of REST v2 inference requests is sent over loopback; the
table shows requests per second, p99 latency, the mean number of requests the server merged
per model run (from its own ``/metrics``), and the ratios against batching off.

    .venv/bin/python bench/batching.py [--requests 1500] [--levels 1,2,4,8,16,32,64]

The load generator shares the machine with the servers; each server gets ``--cpu-threads``
intra-op threads (default 1), so on a small machine the client keeps a core to itself.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

MODEL = "mlp"
WIDTH = 512
LAYERS = 3
# Longest wait for a server to come up; a cold start with imports is a few seconds.
READY_ATTEMPTS = 600


def build_model(repository: Path) -> None:
    """A LAYERS-deep ReLU MLP [batch, WIDTH] -> [batch, WIDTH], seeded weights."""
    rng = np.random.default_rng(0)
    nodes, weights = [], []
    current = "x"
    for i in range(LAYERS):
        w = (rng.standard_normal((WIDTH, WIDTH)) / math.sqrt(WIDTH)).astype(np.float32)
        weights.append(numpy_helper.from_array(w, f"w{i}"))
        nodes.append(helper.make_node("MatMul", [current, f"w{i}"], [f"h{i}"]))
        nodes.append(helper.make_node("Relu", [f"h{i}"], [f"a{i}"]))
        current = f"a{i}"
    nodes.append(helper.make_node("Identity", [current], ["y"]))
    graph = helper.make_graph(
        nodes,
        MODEL,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", WIDTH])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", WIDTH])],
        initializer=weights,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    folder = repository / MODEL / "1"
    folder.mkdir(parents=True)
    onnx.save_model(model, str(folder / "model.onnx"))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Server:
    """A ``clawdbot-runtime serve`` child process."""

    process: subprocess.Popen[bytes]
    port: int

    @classmethod
    async def start(cls, repository: Path, flags: list[str]) -> Server:
        port = free_port()
        command = [
            sys.executable,
            "-m",
            "clawdbot_runtime.main",
            "serve",
            "--model-repository",
            str(repository),
            "--host",
            "127.0.0.1",
            "--http-port",
            str(port),
            "--grpc-port",
            str(free_port()),
            "--log-level",
            "WARNING",
            *flags,
        ]
        server = cls(subprocess.Popen(command), port)  # noqa: ASYNC220 (a child, not awaited)
        async with aiohttp.ClientSession() as http:
            for _ in range(READY_ATTEMPTS):
                if server.process.poll() is not None:
                    raise RuntimeError(f"server exited with {server.process.returncode}")
                try:
                    async with http.get(f"{server.url}/v2/health/ready") as response:
                        if response.status == 200:
                            return server
                except aiohttp.ClientConnectionError:
                    pass
                await asyncio.sleep(0.05)
        server.stop()
        raise RuntimeError("server did not become ready")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=60)


async def merged_per_run(http: aiohttp.ClientSession, url: str) -> tuple[float, float]:
    """(model runs, requests served by them) so far, from the server's /metrics."""
    async with http.get(f"{url}/metrics") as response:
        text = await response.text()
    values = {}
    for kind in ("count", "sum"):
        match = re.search(
            rf'^clawdbot_runtime_requests_per_batch_{kind}{{model="{MODEL}"}} (\S+)$',
            text,
            re.MULTILINE,
        )
        values[kind] = float(match.group(1)) if match else 0.0
    return values["count"], values["sum"]


@dataclass
class Level:
    """The result of one concurrency level."""

    concurrency: int
    throughput: float
    p50_ms: float
    p99_ms: float
    merged: float
    errors: int


async def run_level(
    http: aiohttp.ClientSession, url: str, concurrency: int, requests: int, body: bytes
) -> Level:
    """``requests`` requests from ``concurrency`` workers; every loop is bounded by a count."""
    latencies: list[float] = []
    errors = 0
    share = [requests // concurrency + (i < requests % concurrency) for i in range(concurrency)]
    endpoint = f"{url}/v2/models/{MODEL}/infer"
    headers = {"Content-Type": "application/json"}

    async def worker(count: int) -> None:
        nonlocal errors
        for _ in range(count):
            started = time.perf_counter()
            async with http.post(endpoint, data=body, headers=headers) as response:
                await response.read()
                if response.status != 200:
                    errors += 1
            latencies.append(time.perf_counter() - started)

    runs_before, served_before = await merged_per_run(http, url)
    started = time.perf_counter()
    await asyncio.gather(*(worker(n) for n in share))
    elapsed = time.perf_counter() - started
    runs_after, served_after = await merged_per_run(http, url)
    latencies.sort()
    runs = runs_after - runs_before
    return Level(
        concurrency=concurrency,
        throughput=len(latencies) / elapsed,
        p50_ms=statistics.median(latencies) * 1000,
        p99_ms=latencies[min(len(latencies) - 1, math.ceil(0.99 * len(latencies)) - 1)] * 1000,
        merged=(served_after - served_before) / runs if runs else 0.0,
        errors=errors,
    )


async def sweep(
    repository: Path, settings: list[list[str]], levels: list[int], requests: int, body: bytes
) -> list[list[Level]]:
    """Start one server per setting, then measure each level on every server in turn.

    Interleaving by level (rather than one whole sweep per server) exposes all settings to
    the same background load, which on a shared machine drifts over a minute.
    """
    servers: list[Server] = []
    try:
        for flags in settings:
            servers.append(await Server.start(repository, flags))
        results: list[list[Level]] = [[] for _ in servers]
        connector = aiohttp.TCPConnector(limit=max(levels))
        async with aiohttp.ClientSession(connector=connector) as http:
            for server in servers:
                # Warm-up: connections opened, allocator arenas grown, caches hot.
                await run_level(http, server.url, max(levels), max(levels) * 2, body)
            for level in levels:
                for server, result in zip(servers, results, strict=True):
                    result.append(await run_level(http, server.url, level, requests, body))
        return results
    finally:
        for server in servers:
            server.stop()


@dataclass(frozen=True)
class Setting:
    """One server configuration of the comparison."""

    label: str
    flags: list[str]


def print_table(settings: list[Setting], results: list[list[Level]]) -> None:
    """One row per concurrency level; ratios are against the first setting (batching off)."""
    head = f"{'conc':>4}"
    for setting in settings:
        head += f" | {setting.label + ' req/s':>18} {'p99 ms':>7} {'req/run':>7}"
    for setting in settings[1:]:
        head += f" | {setting.label + ' thr x':>16} {'p99 x':>6}"
    print(head)
    print("-" * len(head))
    base = results[0]
    for row, level in enumerate(base):
        line = f"{level.concurrency:>4}"
        for levels in results:
            r = levels[row]
            line += f" | {r.throughput:>18.0f} {r.p99_ms:>7.2f} {r.merged:>7.1f}"
        for levels in results[1:]:
            r = levels[row]
            line += f" | {r.throughput / level.throughput:>16.2f} {r.p99_ms / level.p99_ms:>6.2f}"
        print(line)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=1500, help="requests per level")
    parser.add_argument("--levels", default="1,2,4,8,16,32,64", help="concurrency levels")
    parser.add_argument("--max-batch-size", type=int, default=32)
    parser.add_argument(
        "--delays-ms", default="0,2", help="queue delays to compare with batching on"
    )
    parser.add_argument("--cpu-threads", type=int, default=1)
    args = parser.parse_args()
    levels = [int(v) for v in args.levels.split(",")]
    x = np.random.default_rng(1).standard_normal((1, WIDTH)).astype(np.float32)
    tensor = {"name": "x", "shape": [1, WIDTH], "datatype": "FP32", "data": x.ravel().tolist()}
    body = json.dumps({"inputs": [tensor]}).encode()
    common = ["--cpu-threads", str(args.cpu_threads), "--max-queue", "1024"]
    settings = [Setting("off", [*common, "--max-batch-size", "1"])]
    for delay in args.delays_ms.split(","):
        settings.append(
            Setting(
                f"on/{delay}ms",
                [
                    *common,
                    "--max-batch-size",
                    str(args.max_batch_size),
                    "--max-queue-delay-ms",
                    delay,
                ],
            )
        )
    with tempfile.TemporaryDirectory() as scratch:
        repository = Path(scratch)
        build_model(repository)
        flags = [s.flags for s in settings]
        results = asyncio.run(sweep(repository, flags, levels, args.requests, body))

    print(
        f"model: {LAYERS}-layer MLP, {WIDTH} wide, FP32, one row per request; "
        f"{args.requests} REST requests per level; --cpu-threads {args.cpu_threads}; "
        f"on = --max-batch-size {args.max_batch_size} with the queue delay shown"
    )
    print_table(settings, results)
    failed = sum(level.errors for levels in results for level in levels)
    if failed:
        print(f"warning: {failed} requests failed", file=sys.stderr)


if __name__ == "__main__":
    main()
