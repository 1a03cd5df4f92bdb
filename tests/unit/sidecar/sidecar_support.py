"""Helpers for tests that run a whole sidecar: a policy, the app's openai client, the stub."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import openai

from clawdbot_sidecar.routing.core import RoutingCore
from tests.support.servers import STUB_API_KEY

API_KEY = STUB_API_KEY
EMAIL = "jane.doe@example.com"
CARD = "4111 1111 1111 1111"
LONG_FILLER = "Please summarise the following quarterly report in detail. " * 60  # ~900 tokens


def policy(cloud_url: str, **overrides: Any) -> dict[str, Any]:
    """Short prompts local, medium ones to the cloud stub, the rest refused; no retries."""
    spec: dict[str, Any] = {
        "localModels": [{"name": "tiny-chat"}],
        "cloud": {"baseURL": f"{cloud_url}/v1", "model": "gpt-4o-mini", "maxRetries": 0,
                  "pricing": {"inputPerMillionTokens": 2.5, "outputPerMillionTokens": 10}},
        "rules": [
            {"name": "short", "match": {"maxTokens": 512}, "target": "local"},
            {"name": "medium", "match": {"maxTokens": 2048}, "target": "cloud"},
        ],
        "defaultTarget": "reject",
        "audit": {"enabled": False},
    }  # fmt: skip
    spec.update(overrides)
    return spec


class Sidecar:
    """A running sidecar and an AsyncOpenAI client pointed at it."""

    def __init__(self, url: str, core: RoutingCore) -> None:
        self.url = url
        self.core = core
        self.client = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)

    async def chat(self, content: str, **kw: Any) -> Any:
        return await self.client.chat.completions.with_raw_response.create(
            model="tiny-chat", messages=[{"role": "user", "content": content}], max_tokens=8, **kw
        )

    async def metrics(self) -> str:
        async with aiohttp.ClientSession() as s, s.get(f"{self.url}/metrics") as r:
            return await r.text()


# (policy spec, endpoint URLs, *, endpoint_model, **limits) -> a running sidecar, stopped
# after the test.
StartSidecar = Callable[..., Awaitable[Sidecar]]


async def received(cloud_url: str) -> list[dict[str, Any]]:
    """What the cloud stub received so far."""
    async with aiohttp.ClientSession() as s, s.get(f"{cloud_url}/_stub/requests") as r:
        data: list[dict[str, Any]] = await r.json()
        return data


async def inject(cloud_url: str, **faults: Any) -> None:
    """Make the cloud stub fail or stall (see cloudstub's faults)."""
    async with aiohttp.ClientSession() as s:
        await s.post(f"{cloud_url}/_stub/faults", json=faults)
