"""`clawdbot-sidecar serve` as a process: hot reload of its config file (the last good one
kept when a new one is invalid) and a graceful drain on SIGTERM that loses no request."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp
import openai
import yaml

from clawdbot_testing import cloud as cloud_standin
from tests.support.servers import STUB_API_KEY, free_port, serve_app, stop_process, wait_ready

SIDECAR = Path(sys.executable).parent / "clawdbot-sidecar"
# The serve command re-reads its config every 2 s; a change shows within a few seconds.
RELOAD_WAIT_S = 10.0


def config(local_url: str, cloud: str, short_rule: str) -> dict[str, Any]:
    return {
        "policy": {
            "localModels": [{"name": "tiny-chat"}],
            "cloud": {"baseURL": f"{cloud}/v1", "model": "gpt-4o-mini", "maxRetries": 0},
            "rules": [{"name": short_rule, "match": {"maxTokens": 512}, "target": "local"}],
            "defaultTarget": "cloud",
            "audit": {"enabled": False},
        },
        "endpoints": [{"url": local_url, "model": "tiny-chat"}],
    }


def start(path: Path, port: int, log: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "CLAWDBOT_CLOUD_API_KEY": STUB_API_KEY}
    with log.open("wb") as out:
        return subprocess.Popen(
            [str(SIDECAR), "serve", "--config", str(path), "--port", str(port), "--grpc-port", "0"],
            stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True,
        )  # fmt: skip


async def test_config_file_reloads_and_bad_files_are_ignored(
    local_url: str, cloud: str, tmp_path: Path
) -> None:
    path, port, log = tmp_path / "sidecar.yaml", free_port(), tmp_path / "sidecar.log"
    path.write_text(yaml.safe_dump(config(local_url, cloud, "short-v1")))
    proc = start(path, port, log)
    try:
        await asyncio.to_thread(wait_ready, f"http://127.0.0.1:{port}/readyz", proc, log)
        client = openai.AsyncOpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="x")

        async def reason() -> str:
            raw = await client.chat.completions.with_raw_response.create(
                model="tiny-chat", messages=[{"role": "user", "content": "hi"}], max_tokens=2
            )
            return raw.headers["x-clawdbot-reason"]

        assert await reason() == "rule:short-v1"
        path.write_text(yaml.safe_dump(config(local_url, cloud, "short-v2")))
        seen = []
        for _ in range(int(RELOAD_WAIT_S / 0.3)):  # bounded poll for the reload
            seen.append(await reason())
            if seen[-1] == "rule:short-v2":
                break
            await asyncio.sleep(0.3)
        assert seen[-1] == "rule:short-v2", seen

        # An invalid file: logged, the previous configuration stays in force.
        path.write_text("policy: {rules: [{name: BAD NAME, target: local}]}\n")
        await asyncio.sleep(3)
        assert await reason() == "rule:short-v2"
        assert "keeping the previous configuration" in log.read_text()

        # A file whose redaction the engine refuses (a pattern Python can't compile), with
        # another cloud: nothing of it applies, and the watch survives to take the next one.
        bad = config(local_url, "http://127.0.0.1:9", "short-bad")
        bad["policy"]["redaction"] = {"custom": [{"name": "TICKET", "pattern": "(unclosed"}]}
        path.write_text(yaml.safe_dump(bad))
        await asyncio.sleep(3)
        assert await reason() == "rule:short-v2"
        assert log.read_text().count("keeping the previous configuration") >= 2
        path.write_text(yaml.safe_dump(config(local_url, cloud, "short-v3")))
        for _ in range(int(RELOAD_WAIT_S / 0.3)):
            if await reason() == "rule:short-v3":
                break
            await asyncio.sleep(0.3)
        assert await reason() == "rule:short-v3"
    finally:
        stop_process(proc)


async def test_sigterm_drains_requests_in_progress(local_url: str, tmp_path: Path) -> None:
    async with serve_app(cloud_standin.build_app(STUB_API_KEY)) as cloud:
        path, port, log = tmp_path / "sidecar.yaml", free_port(), tmp_path / "sidecar.log"
        path.write_text(yaml.safe_dump(config(local_url, cloud, "short")))
        proc = start(path, port, log)
        await asyncio.to_thread(wait_ready, f"http://127.0.0.1:{port}/readyz", proc, log)
        client = openai.AsyncOpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="x")
        async with aiohttp.ClientSession() as s:
            await s.post(f"{cloud}/_stub/faults", json={"status": 0, "count": 1, "delayS": 1.5})
        slow = asyncio.create_task(
            client.chat.completions.create(
                model="tiny-chat", messages=[{"role": "user", "content": "x " * 3000}]
            )
        )
        await asyncio.sleep(0.5)
        proc.send_signal(signal.SIGTERM)
        answer = await slow  # answered although the process was told to stop
        assert answer.choices[0].message.content
        assert await asyncio.to_thread(proc.wait, 20) == 0
