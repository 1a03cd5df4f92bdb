"""The CloudEndpoint rule (an anthropic-messages endpoint serves neither embeddings nor
audio) says the same in CEL and in Python, on every combination of its fields."""

from __future__ import annotations

import itertools

import celpy
import pytest
from pydantic import ValidationError

from clawdbot_api.v1alpha1.common import CEL_RULES_ATTR, CelRule
from clawdbot_api.v1alpha1.routingpolicy import CloudApi, CloudEndpoint

ENV = celpy.Environment()


@pytest.mark.parametrize(
    ("api", "embedding", "audio"),
    list(itertools.product([None, *CloudApi], [None, "e"], [None, "w"])),
)
def test_cel_and_python_agree(
    api: CloudApi | None, embedding: str | None, audio: str | None
) -> None:
    (rule,) = CloudEndpoint.__dict__[CEL_RULES_ATTR]
    assert isinstance(rule, CelRule)
    fields = {"baseURL": "https://x/v1", "model": "m"}
    optional = {"api": api, "embeddingModel": embedding, "audioModel": audio}
    fields |= {k: v for k, v in optional.items() if v}
    program = ENV.program(ENV.compile(rule.rule))
    cel_ok = bool(program.evaluate({"self": celpy.json_to_cel(fields)}))
    try:
        CloudEndpoint.model_validate(fields)
        python_ok = True
    except ValidationError as exc:
        assert "anthropic-messages endpoint" in str(exc)
        python_ok = False
    assert cel_ok == python_ok
    assert python_ok == (api != CloudApi.ANTHROPIC_MESSAGES or not (embedding or audio))
