"""The routing decision: rules first, the bandit for what they leave open, then guards."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import pytest

from clawdbot_api.v1alpha1.routingpolicy import (
    Adaptive,
    AdaptiveAlgorithm,
    RoutingPolicySpec,
)
from clawdbot_sidecar.accounting.ledger import reward
from clawdbot_sidecar.routing.decision import (
    Bandit,
    Signals,
    context_vector,
    decide,
    rule_matches,
)
from clawdbot_sidecar.routing.features import Features

SEED_POLICY: dict[str, Any] = {
    "localModels": [{"name": "llama-7b"}],
    "cloud": {"baseURL": "http://127.0.0.1:1/v1", "model": "gpt-4o-mini"},
    "rules": [
        {"name": "pii-local", "match": {"containsPII": True}, "target": "local"},
        {"name": "tenant-gold", "match": {"headers": [{"name": "X-Tenant", "value": "gold"}]},
         "target": "cloud"},
        {"name": "short", "match": {"maxTokens": 512}, "target": "local"},
        {"name": "long", "match": {"minTokens": 2049}, "target": "reject"},
        {"name": "medium", "match": {"maxTokens": 2048}, "target": "cloud"},
    ],
    "defaultTarget": "adaptive",
}  # fmt: skip


def policy(**overrides: Any) -> RoutingPolicySpec:
    return RoutingPolicySpec.model_validate({**SEED_POLICY, **overrides})


def features(tokens: int = 10, **kw: Any) -> Features:
    base: dict[str, Any] = {
        "model": "llama-7b",
        "tokens": tokens,
        "complexity": 0.0,
        "pii": {},
        "headers": {},
        "stream": False,
    }
    base.update(kw)
    return Features(**base)


HEALTHY = Signals(
    local_healthy=2,
    local_queue=0,
    local_latency_s=0.2,
    cloud_configured=True,
    cloud_allowed=True,
    cloud_latency_s=0.5,
    cloud_error_rate=0.0,
    cloud_price_usd=0.001,
    budget_exhausted=None,
)


def signals(**kw: Any) -> Signals:
    return dataclasses.replace(HEALTHY, **kw)


@pytest.fixture
def bandit() -> Bandit:
    return Bandit(Adaptive(), seed=1)


@pytest.mark.parametrize(
    ("tokens", "target", "reason"),
    [
        (1, "local", "rule:short"),
        (512, "local", "rule:short"),
        (513, "cloud", "rule:medium"),
        (2048, "cloud", "rule:medium"),
        (2049, "reject", "rule:long"),
    ],
)
def test_seed_thresholds(tokens: int, target: str, reason: str, bandit: Bandit) -> None:
    d = decide(policy(), features(tokens), HEALTHY, bandit)
    assert (d.target, d.reason) == (target, reason)
    assert not d.adaptive


def test_first_matching_rule_wins_pii_over_size(bandit: Bandit) -> None:
    d = decide(policy(), features(1000, pii={"EMAIL": 1}), HEALTHY, bandit)
    assert (d.target, d.reason) == ("local", "rule:pii-local")


def test_header_rule_matches_case_insensitively_and_by_value(bandit: Bandit) -> None:
    gold = features(10, headers={"x-tenant": "gold"})
    silver = features(10, headers={"x-tenant": "silver"})
    assert decide(policy(), gold, HEALTHY, bandit).reason == "rule:tenant-gold"
    assert decide(policy(), silver, HEALTHY, bandit).reason == "rule:short"


def test_pii_entities_narrow_the_match() -> None:
    spec = policy(
        rules=[
            {"name": "ids", "match": {"containsPII": True, "piiEntities": ["US_SSN"]},
             "target": "local"}
        ]
    )  # fmt: skip
    rule = spec.rules[0].match
    assert rule_matches(rule, features(pii={"US_SSN": 1}))
    assert not rule_matches(rule, features(pii={"EMAIL": 2}))
    no_pii = spec.model_copy(
        update={"rules": [spec.rules[0].model_copy(update={"match": rule.model_copy(
            update={"contains_pii": False, "pii_entities": []})})]}
    )  # fmt: skip
    assert rule_matches(no_pii.rules[0].match, features(pii={}))
    assert not rule_matches(no_pii.rules[0].match, features(pii={"EMAIL": 1}))


def test_model_rule() -> None:
    spec = policy(rules=[{"name": "big", "match": {"models": ["gpt-4o"]}, "target": "cloud"}])
    assert rule_matches(spec.rules[0].match, features(model="gpt-4o"))
    assert not rule_matches(spec.rules[0].match, features(model="llama-7b"))


def test_cloud_guards_fall_back_to_local(bandit: Bandit) -> None:
    medium = features(1000)
    d = decide(policy(), medium, signals(budget_exhausted="cloudTokensPerMinute"), bandit)
    assert (d.target, d.reason) == ("local", "budget:cloudTokensPerMinute")
    d = decide(policy(), medium, signals(cloud_allowed=False), bandit)
    assert (d.target, d.reason) == ("local", "cloud-unavailable")
    no_fallback = policy(fallback={"cloudToLocal": False})
    d = decide(no_fallback, medium, signals(cloud_allowed=False), bandit)
    assert (d.target, d.reason) == ("reject", "cloud-unavailable")


def test_blocked_entity_never_goes_to_the_cloud(bandit: Bandit) -> None:
    # Even with cloud->local fallback off, a blocked entity forces local.
    spec = policy(fallback={"cloudToLocal": False})
    d = decide(spec, features(1000), HEALTHY, bandit, blocked_entities={"US_SSN": 1})
    assert (d.target, d.reason) == ("local", "redaction-block:US_SSN")


def test_local_guards_fall_back_to_cloud(bandit: Bandit) -> None:
    short = features(10)
    d = decide(policy(), short, signals(local_healthy=0), bandit)
    assert (d.target, d.reason) == ("cloud", "local-unavailable")
    d = decide(policy(), short, signals(local_queue=32), bandit)
    assert (d.target, d.reason) == ("cloud", "local-overloaded")
    local_only = policy(fallback={"localToCloud": False})
    assert decide(local_only, short, signals(local_queue=99), bandit).target == "local"
    assert decide(local_only, short, signals(local_healthy=0), bandit).target == "reject"


def test_adaptive_uses_the_bandit_and_records_context(bandit: Bandit) -> None:
    spec = policy(rules=[])
    d = decide(spec, features(100), HEALTHY, bandit)
    assert d.reason == "adaptive:linUCB"
    assert d.target in ("local", "cloud")
    assert d.context is not None and len(d.context) == 8


def test_adaptive_with_one_usable_target(bandit: Bandit) -> None:
    spec = policy(rules=[])
    d = decide(spec, features(100), signals(cloud_allowed=False), bandit)
    assert (d.target, d.reason) == ("local", "cloud-unavailable")
    d = decide(spec, features(100), signals(local_healthy=0), bandit)
    assert (d.target, d.reason) == ("cloud", "adaptive:only-cloud")
    no_cloud = policy(rules=[], cloud=None)
    d = decide(
        no_cloud, features(100), signals(cloud_configured=False, cloud_allowed=False), bandit
    )
    assert (d.target, d.reason) == ("local", "adaptive:only-local")


def embeddings_policy(**cloud: Any) -> RoutingPolicySpec:
    return policy(cloud={**SEED_POLICY["cloud"], **cloud})


@pytest.mark.parametrize(
    ("tokens", "sig", "expected"),
    [
        (1000, {}, ("reject", "embeddings:no-cloud-model")),  # rule:medium says cloud
        (10, {}, ("local", "rule:short")),
        (10, {"local_queue": 99}, ("local", "rule:short")),  # busy: queue, no cloud
        (10, {"local_healthy": 0}, ("reject", "local-unavailable")),  # not the cloud
    ],
)
def test_embeddings_without_a_cloud_embedding_model(
    tokens: int, sig: dict[str, Any], expected: tuple[str, str], bandit: Bandit
) -> None:
    d = decide(policy(), features(tokens), signals(**sig), bandit, embeddings=True)
    assert (d.target, d.reason) == expected


def test_embeddings_are_never_moved_to_the_other_side(bandit: Bandit) -> None:
    spec = embeddings_policy(embeddingModel="text-embedding-3-large")
    medium = features(1000)
    assert decide(spec, medium, HEALTHY, bandit, embeddings=True).target == "cloud"
    for sig, reason in [
        ({"budget_exhausted": "cloudTokensPerMinute"}, "budget:cloudTokensPerMinute"),
        ({"cloud_allowed": False}, "cloud-unavailable"),
    ]:
        d = decide(spec, medium, signals(**sig), bandit, embeddings=True)
        assert (d.target, d.reason) == ("reject", reason)
    d = decide(spec, medium, HEALTHY, bandit, {"US_SSN": 1}, embeddings=True)
    assert (d.target, d.reason) == ("reject", "redaction-block:US_SSN")


def test_adaptive_embeddings_have_a_fixed_side(bandit: Bandit) -> None:
    spec = embeddings_policy(embeddingModel="text-embedding-3-large").model_copy(
        update={"rules": []}
    )
    for _ in range(20):  # the bandit is not asked: no context, the same side each time
        d = decide(spec, features(100), HEALTHY, bandit, embeddings=True)
        assert (d.target, d.reason, d.context) == ("local", "embeddings:local", None)
    cloud_only = spec.model_copy(update={"local_models": []})
    d = decide(cloud_only, features(100), HEALTHY, bandit, embeddings=True)
    assert (d.target, d.reason) == ("cloud", "embeddings:cloud")
    no_embeddings = policy(rules=[], localModels=[])
    d = decide(no_embeddings, features(100), HEALTHY, bandit, embeddings=True)
    assert (d.target, d.reason) == ("local", "embeddings:local")


def test_reward_orders_outcomes() -> None:
    a = Adaptive(latency_target_ms=1000, cost_weight=10.0)
    fast_free = reward(True, 0.1, 0.0, a)
    slow_free = reward(True, 1.5, 0.0, a)
    fast_paid = reward(True, 0.1, 0.05, a)
    failed = reward(False, 0.1, 0.0, a)
    assert fast_free > slow_free > failed
    assert fast_free > fast_paid > failed


@pytest.mark.parametrize("algorithm", list(AdaptiveAlgorithm))
def test_bandit_learns_the_context_dependent_best_arm(algorithm: AdaptiveAlgorithm) -> None:
    """Local is fast for short prompts and slow for long ones; the cloud costs the same for all.

    After online learning the bandit must send short prompts local and long ones to the cloud.
    """
    adaptive = Adaptive(algorithm=algorithm, latency_target_ms=1000, cost_weight=20.0)
    bandit = Bandit(adaptive, seed=7)
    rng = np.random.default_rng(3)
    spec = policy(rules=[], adaptive=adaptive.model_dump(by_alias=True))

    def outcome(arm: str, tokens: int) -> float:
        if arm == "local":
            return reward(True, 0.1 + tokens / 1000.0, 0.0, adaptive)  # slow when long
        return reward(True, 0.6, 0.01, adaptive)

    for _ in range(600):  # bounded training loop
        tokens = int(rng.integers(10, 4000))
        d = decide(spec, features(tokens), HEALTHY, bandit)
        assert d.context is not None
        bandit.update(d.target, d.context, outcome(d.target, tokens))  # type: ignore[arg-type]

    greedy = Bandit(adaptive.model_copy(update={"algorithm": AdaptiveAlgorithm.EPSILON_GREEDY,
                                               "exploration": 0.0}))  # fmt: skip
    greedy.arms = bandit.arms
    short = context_vector(features(50), HEALTHY)
    long = context_vector(features(3500), HEALTHY)
    assert greedy.choose(short) == "local"
    assert greedy.choose(long) == "cloud"
