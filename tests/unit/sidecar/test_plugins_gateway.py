"""Plugins (entry points, both hooks, failures isolated) and the one-box gateway."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import openai
import pytest
from prometheus_client import CollectorRegistry, generate_latest

from clawdbot_sidecar.accounting.metrics import SidecarMetrics
from clawdbot_sidecar.config import SidecarConfig
from clawdbot_sidecar.errors import RequestError
from clawdbot_sidecar.plugins import PluginError, PluginRequest, load_plugins
from clawdbot_sidecar.routing.core import RoutingCore
from clawdbot_sidecar.upstream import Upstream
from tests.support.servers import (
    STUB_API_KEY,
    free_port,
    stop_process,
    wait_ready,
)

REPO = Path(__file__).resolve().parents[3]
ServeFront = Callable[[RoutingCore], contextlib.AbstractAsyncContextManager[str]]
LONG = "Summarise this in detail, please, paragraph by paragraph. " * 60


def spec(cloud: str) -> dict[str, Any]:
    return {
        "localModels": [{"name": "tiny-chat"}],
        "cloud": {"baseURL": f"{cloud}/v1", "model": "gpt-4o-mini", "maxRetries": 0},
        "rules": [
            {"name": "vip-cloud", "match": {"headers": [{"name": "x-tier", "value": "vip"}]},
             "target": "cloud"},
            {"name": "short", "match": {"maxTokens": 512}, "target": "local"},
        ],
        "defaultTarget": "cloud",
        "audit": {"enabled": False},
    }  # fmt: skip


class TierFromUser:
    """Tags requests from user "alice" as vip: a header rule then sends them to the cloud."""

    async def before_route(self, request: PluginRequest) -> None:
        if request.body.get("user") == "alice":
            request.headers["x-tier"] = "vip"


class Quota:
    async def before_route(self, request: PluginRequest) -> None:
        if request.body.get("user") == "mallory":
            raise RequestError(403, "mallory is over quota", type_="quota_exceeded")


class Broken:
    async def before_route(self, request: PluginRequest) -> None:
        raise RuntimeError("bug in a plugin")

    def after_response(self, request: PluginRequest, result: Any) -> None:
        raise RuntimeError("another bug")


@contextlib.asynccontextmanager
async def sidecar(
    local_url: str, cloud: str, plugins: list[object], serve_front: ServeFront
) -> AsyncIterator[Any]:
    metrics = SidecarMetrics()
    config = SidecarConfig.model_validate(
        {"policy": spec(cloud), "endpoints": [{"url": local_url, "model": "tiny-chat"}]}
    ).model_copy(update={"cloud_api_key": STUB_API_KEY})
    upstream = Upstream.create(connect_timeout_s=1.0)
    core = RoutingCore(config, upstream, metrics=metrics, plugins=plugins)
    try:
        async with serve_front(core) as url:
            yield openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0), metrics
    finally:
        await core.close()
        await upstream.close()


async def chat(client: openai.AsyncOpenAI, user: str, **kw: Any) -> Any:
    return await client.chat.completions.with_raw_response.create(
        model="tiny-chat", messages=[{"role": "user", "content": "hi"}], max_tokens=4, user=user,
        **kw,
    )  # fmt: skip


def test_unknown_plugin_names_the_installed_ones() -> None:
    with pytest.raises(PluginError) as err:
        load_plugins(["nope"], CollectorRegistry())
    assert "token-accounting" in str(err.value)


async def test_before_route_hooks_add_headers_refuse_and_fail_safely(
    local_url: str, cloud: str, serve_front: ServeFront
) -> None:
    async with sidecar(local_url, cloud, [Broken(), TierFromUser(), Quota()], serve_front) as (
        client,
        _,
    ):
        assert (await chat(client, "bob")).headers["x-clawdbot-target"] == "local"
        vip = await chat(client, "alice")
        assert vip.headers["x-clawdbot-reason"] == "rule:vip-cloud"
        with pytest.raises(openai.PermissionDeniedError) as err:
            await chat(client, "mallory")
        assert "over quota" in err.value.message


async def test_token_accounting_plugin_from_its_entry_point(
    local_url: str, cloud: str, serve_front: ServeFront
) -> None:
    metrics_registry = SidecarMetrics()
    (plugin,) = load_plugins(["token-accounting"], metrics_registry.registry)
    async with sidecar(local_url, cloud, [plugin], serve_front) as (client, _):
        await chat(client, "carol", extra_headers={"x-tenant": "team-a"})
        await client.chat.completions.create(
            model="tiny-chat", messages=[{"role": "user", "content": LONG}], user="dave"
        )
    text = generate_latest(metrics_registry.registry).decode()
    local = 'clawdbot_sidecar_tenant_tokens_total{kind="completion",target="local",tenant="team-a"}'
    assert local in text
    assert 'tenant="dave"' in text and 'target="cloud"' in text
    lines = text.splitlines()
    energy = [
        line for line in lines if line.startswith("clawdbot_sidecar_local_energy_joules_total")
    ]
    assert energy and 'tenant="team-a"' in energy[0] and float(energy[0].split()[-1]) > 0


def test_gateway_runs_the_seed_config_on_one_box(local_url: str, tmp_path: Path) -> None:
    """`clawdbot gateway -c clawdbot-config.yaml`: the seed's rules, a local model, the cloud."""
    stub_port, port = free_port(), free_port()
    stub = subprocess.Popen(
        [str(Path(sys.executable).parent / "clawdbot-cloud-standin"),
         "--port", str(stub_port), "--api-key", STUB_API_KEY],
        stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    log = tmp_path / "gateway.log"
    env = {**os.environ, "CLAWDBOT_CLOUD_API_KEY": STUB_API_KEY}
    with log.open("wb") as out:
        gateway = subprocess.Popen(
            [str(Path(sys.executable).parent / "clawdbot"), "gateway",
             "-c", str(REPO / "examples" / "seed" / "clawdbot-config.yaml"),
             "--local-url", local_url, "--local-model", "tiny-chat",
             "--cloud-url", f"http://127.0.0.1:{stub_port}/v1",
             "--port", str(port), "--grpc-port", "0", "--plugin", "token-accounting"],
            stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True,
        )  # fmt: skip
    try:
        wait_ready(f"http://127.0.0.1:{port}/readyz", gateway, log)
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="x", max_retries=0)
        short = client.chat.completions.with_raw_response.create(
            model="llama-7b", messages=[{"role": "user", "content": "hi"}], max_tokens=4
        )
        assert short.headers["x-clawdbot-target"] == "local"
        assert short.headers["x-clawdbot-reason"] == "rule:max-tokens-512-local"
        long = client.chat.completions.with_raw_response.create(
            model="llama-7b", messages=[{"role": "user", "content": LONG}]
        )
        assert long.headers["x-clawdbot-target"] == "cloud"
        assert long.headers["x-clawdbot-reason"] == "rule:max-tokens-2048-cloud"
    finally:
        stop_process(gateway)
        stop_process(stub)
    assert gateway.returncode == 0, log.read_text()[-2000:]
