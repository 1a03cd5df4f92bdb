"""Embeddings stay on one side: the cloud gets its own embedding model or nothing, and no
fallback, guard or learned choice answers them with the other side's model (its vectors are
not comparable with the ones the app already stored). The openai client against a sidecar;
the local side is a second stub without a key, serving embeddings the way a model pod would.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import openai
import pytest
from sidecar_support import StartSidecar, inject, received

from clawdbot_sidecar.config import SidecarConfig
from clawdbot_testing import cloud as cloud_standin
from tests.support.servers import free_port, serve_app

APP_MODEL = "text-embedding-3-small"  # what the app asks for
LOCAL_MODEL = "bge-small"  # what the local pods serve
CLOUD_EMBEDDINGS = "cloud-embed-1"  # the policy's cloud.embeddingModel


@pytest.fixture
async def local_embed() -> AsyncIterator[str]:
    """The stub's root URL (``/v1`` below it), standing for a local embedding model pod."""
    async with serve_app(cloud_standin.build_app(None)) as url:
        yield url


def spec(cloud: str, target: str | None = "cloud", **cloud_fields: Any) -> dict[str, Any]:
    """Embeddings of APP_MODEL to ``target`` by a rule (None: left to the adaptive router)."""
    rules = [{"name": "embed", "match": {"models": [APP_MODEL]}, "target": target}]
    return {
        "localModels": [{"name": "bge"}],
        "cloud": {"baseURL": f"{cloud}/v1", "model": "gpt-4o-mini", "maxRetries": 0,
                  **cloud_fields},
        "rules": rules if target else [],
        "defaultTarget": "adaptive",
        "audit": {"enabled": False},
    }  # fmt: skip


async def embed(client: openai.AsyncOpenAI, text: str = "a sentence to index") -> Any:
    return await client.embeddings.with_raw_response.create(model=APP_MODEL, input=text)


async def test_embeddings_go_to_the_clouds_embedding_model(
    cloud: str, local_embed: str, make_sidecar: StartSidecar
) -> None:
    sc = await make_sidecar(
        spec(cloud, embeddingModel=CLOUD_EMBEDDINGS),
        [f"{local_embed}/v1"],
        endpoint_model=LOCAL_MODEL,
    )
    raw = await embed(sc.client)
    assert raw.headers["x-clawdbot-target"] == "cloud"
    assert raw.headers["x-clawdbot-reason"] == "rule:embed"
    assert len(raw.parse().data[0].embedding) == cloud_standin.EMBEDDING_DIM
    sent = await received(cloud)
    assert [r["body"]["model"] for r in sent] == [CLOUD_EMBEDDINGS]  # not the app's, nor chat's
    assert CLOUD_EMBEDDINGS in {m.id for m in (await sc.client.models.list()).data}


async def test_without_an_embedding_model_the_cloud_gets_no_embeddings(
    cloud: str, local_embed: str, make_sidecar: StartSidecar
) -> None:
    sc = await make_sidecar(spec(cloud), [f"{local_embed}/v1"], endpoint_model=LOCAL_MODEL)
    with pytest.raises(openai.BadRequestError) as err:
        await embed(sc.client)
    assert err.value.code == "embeddings_not_routable"
    assert "spec.cloud.embeddingModel" in err.value.message
    assert await received(cloud) == [] and await received(local_embed) == []
    # Chat still goes to the cloud as the policy says.
    chat = await sc.client.chat.completions.with_raw_response.create(
        model=APP_MODEL, messages=[{"role": "user", "content": "hi"}]
    )
    assert chat.headers["x-clawdbot-target"] == "cloud"


async def test_a_failed_cloud_is_not_replaced_by_the_local_model(
    cloud: str, local_embed: str, make_sidecar: StartSidecar
) -> None:
    sc = await make_sidecar(
        spec(cloud, embeddingModel=CLOUD_EMBEDDINGS),
        [f"{local_embed}/v1"],
        endpoint_model=LOCAL_MODEL,
    )
    assert sc.core.config.policy.fallback.cloud_to_local  # allowed for chat, not here
    await inject(cloud, status=503, count=1)
    with pytest.raises(openai.APIStatusError) as err:
        await embed(sc.client)
    assert err.value.status_code == 502
    assert await received(local_embed) == []


async def test_a_failed_local_model_is_not_replaced_by_the_cloud(
    cloud: str, make_sidecar: StartSidecar
) -> None:
    dead = f"http://127.0.0.1:{free_port()}/v1"
    sc = await make_sidecar(
        spec(cloud, target="local", embeddingModel=CLOUD_EMBEDDINGS),
        [dead],
        endpoint_model=LOCAL_MODEL,
    )
    with pytest.raises(openai.APIStatusError) as err:
        await embed(sc.client)
    assert err.value.status_code == 503
    assert await received(cloud) == []
    # Ejected after repeated failures: "local-unavailable", still not the cloud.
    for _ in range(3):
        with pytest.raises(openai.APIStatusError):
            await embed(sc.client)
    with pytest.raises(openai.InternalServerError) as gone:
        await embed(sc.client)
    assert gone.value.code == "unavailable" and "local-unavailable" in gone.value.message
    assert await received(cloud) == []


async def test_guards_refuse_embeddings_instead_of_moving_them_across(
    cloud: str, local_embed: str, make_sidecar: StartSidecar
) -> None:
    policy = spec(cloud, embeddingModel=CLOUD_EMBEDDINGS)
    policy["budgets"] = {"cloudRequestsPerMinute": 1}
    policy["redaction"] = {"perEntityMode": {"US_SSN": "block"}}
    sc = await make_sidecar(policy, [f"{local_embed}/v1"], endpoint_model=LOCAL_MODEL)
    with pytest.raises(openai.BadRequestError) as blocked:
        await embed(sc.client, "customer 123-45-6789 called")
    assert blocked.value.code == "sensitive_data_blocked"
    assert (await embed(sc.client)).headers["x-clawdbot-target"] == "cloud"
    with pytest.raises(openai.InternalServerError) as spent:  # 503: the budget is spent
        await embed(sc.client)
    assert "budget:cloudRequestsPerMinute" in spent.value.message
    assert spent.value.response.headers["retry-after"] == "1"
    assert await received(local_embed) == []
    assert len(await received(cloud)) == 1


async def test_adaptive_routing_pins_embeddings_to_the_local_side(
    cloud: str, local_embed: str, make_sidecar: StartSidecar
) -> None:
    sc = await make_sidecar(
        spec(cloud, target=None, embeddingModel=CLOUD_EMBEDDINGS),
        [f"{local_embed}/v1"],
        endpoint_model=LOCAL_MODEL,
    )
    for i in range(12):  # bounded; a learned router explores both arms in this many
        raw = await embed(sc.client, f"document {i}")
        assert raw.headers["x-clawdbot-target"] == "local"
        assert raw.headers["x-clawdbot-reason"] == "embeddings:local"
    assert [r["body"]["model"] for r in await received(local_embed)] == [LOCAL_MODEL] * 12
    assert await received(cloud) == []


async def test_adaptive_embeddings_without_local_models_use_the_cloud(
    cloud: str, make_sidecar: StartSidecar
) -> None:
    policy = spec(cloud, target=None, embeddingModel=CLOUD_EMBEDDINGS)
    policy["localModels"] = []
    sc = await make_sidecar(policy, [])
    raw = await embed(sc.client)
    assert (raw.headers["x-clawdbot-target"], raw.headers["x-clawdbot-reason"]) == (
        "cloud",
        "embeddings:cloud",
    )


async def test_a_cached_vector_of_the_other_side_is_not_served(
    cloud: str, local_embed: str, make_sidecar: StartSidecar
) -> None:
    policy = spec(cloud, embeddingModel=CLOUD_EMBEDDINGS)
    policy["cache"] = {"enabled": True}
    sc = await make_sidecar(policy, [f"{local_embed}/v1"], endpoint_model=LOCAL_MODEL)
    assert (await embed(sc.client)).headers["x-clawdbot-target"] == "cloud"
    assert (await embed(sc.client)).headers["x-clawdbot-target"] == "cache"
    # The policy now keeps embeddings local (same cache settings: the cache is kept).
    local = {**policy, "rules": [{"name": "embed", "match": {"models": [APP_MODEL]},
                                  "target": "local"}]}  # fmt: skip
    config = SidecarConfig.model_validate(
        {"policy": local, "endpoints": [e.model_dump() for e in sc.core.config.endpoints]}
    )
    sc.core.apply(config)
    raw = await embed(sc.client)
    assert raw.headers["x-clawdbot-target"] == "local"  # not the cloud's cached vector
    assert len(await received(local_embed)) == 1
