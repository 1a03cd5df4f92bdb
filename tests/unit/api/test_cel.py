"""Each CEL rule in the CRDs agrees with its Python twin on every case we can enumerate.

The API server evaluates the CEL; the operator, sidecar and importer run the Python check.
A rule that says one thing in CEL and another in Python would let objects in through one
door that the other refuses, so both are evaluated here on the same objects.
"""

from __future__ import annotations

import itertools
from typing import Any

import celpy
import pytest
from pydantic import BaseModel

from clawdbot_api.v1alpha1 import RoutingPolicySpec
from clawdbot_api.v1alpha1.common import CEL_RULES_ATTR, CelRule
from clawdbot_api.v1alpha1.modeldeployment import (
    Accelerator,
    AcceleratorType,
    Autoscaling,
    Model,
    ModelDeploymentSpec,
    Precision,
    Runtime,
)
from clawdbot_api.v1alpha1.routingpolicy import (
    Cache,
    CacheBackend,
    CloudEndpoint,
    CustomEntity,
    LocalModelRef,
    Redaction,
    Rule,
    RuleMatch,
    Target,
)

ENV = celpy.Environment()


def cel(rule: CelRule, obj: BaseModel) -> bool:
    program = ENV.program(ENV.compile(rule.rule))
    doc = obj.model_dump(by_alias=True, exclude_none=True, mode="json")
    return bool(program.evaluate({"self": celpy.json_to_cel(doc)}))


def rules_of(model: type[BaseModel]) -> tuple[CelRule, ...]:
    rules: tuple[CelRule, ...] = model.__dict__[CEL_RULES_ATTR]
    return rules


def md_specs() -> list[ModelDeploymentSpec]:
    out = []
    for runtime, precision, accel in itertools.product(Runtime, Precision, AcceleratorType):
        out.append(
            ModelDeploymentSpec.model_construct(
                model=Model(name="m", uri="file:///m"),
                runtime=runtime,
                precision=precision,
                accelerator=Accelerator.model_construct(
                    type=accel, count=None, memory_fraction=0.9
                ),
            )
        )
    return out


def agreement(model: type[BaseModel], objects: list[Any]) -> tuple[int, int]:
    accepted = rejected = 0
    for rule in rules_of(model):
        for obj in objects:
            want = rule.check(obj)
            assert cel(rule, obj) == want, f"{rule.rule!r} disagrees with Python on {obj!r}"
            accepted += want
            rejected += not want
    return accepted, rejected


def test_model_deployment_spec_rules_agree() -> None:
    accepted, rejected = agreement(ModelDeploymentSpec, md_specs())
    # The enumeration must exercise both outcomes, or the comparison proves nothing.
    assert accepted > 0 and rejected > 0


def test_accelerator_rule_agrees() -> None:
    objs = [
        Accelerator.model_construct(type=t, count=c, memory_fraction=0.5)
        for t, c in itertools.product(AcceleratorType, [None, 1, 4])
    ]
    accepted, rejected = agreement(Accelerator, objs)
    assert accepted > 0 and rejected > 0


def test_autoscaling_rule_agrees() -> None:
    objs = [
        Autoscaling.model_construct(min_replicas=lo, max_replicas=hi, target_per_replica=1.0)
        for lo, hi in itertools.product([1, 2, 5], [1, 3, 5])
    ]
    accepted, rejected = agreement(Autoscaling, objs)
    assert accepted > 0 and rejected > 0


def test_cache_rule_agrees() -> None:
    objs = [
        Cache.model_construct(backend=b, redis_url=u)
        for b, u in itertools.product(CacheBackend, [None, "redis://r:6379"])
    ]
    accepted, rejected = agreement(Cache, objs)
    assert accepted > 0 and rejected > 0


def test_rule_token_bounds_agree() -> None:
    objs = [
        Rule.model_construct(
            name="r",
            target=Target.LOCAL,
            match=RuleMatch.model_construct(min_tokens=lo, max_tokens=hi),
        )
        for lo, hi in itertools.product([None, 10, 100], [None, 50])
    ]
    accepted, rejected = agreement(Rule, objs)
    assert accepted > 0 and rejected > 0


@pytest.mark.parametrize("cloud", [None, {"baseURL": "https://c.test/v1", "model": "m"}])
@pytest.mark.parametrize("local", [[], [{"name": "a"}]])
@pytest.mark.parametrize(
    "rules",
    [
        [],
        [{"name": "a", "target": "local"}],
        [{"name": "a", "target": "cloud"}],
        [{"name": "a", "target": "local"}, {"name": "a", "target": "adaptive"}],
        [{"name": "a", "target": "local"}, {"name": "b", "target": "cloud"}],
    ],
)
def test_routing_policy_spec_rules_agree(cloud: Any, local: Any, rules: Any) -> None:
    doc: dict[str, Any] = {"localModels": local, "rules": rules}
    if cloud is not None:
        doc["cloud"] = cloud
    # Parse the parts but not the whole, so the whole may break the rules under test.
    obj = RoutingPolicySpec.model_construct(
        cloud=None if cloud is None else CloudEndpoint.model_validate(cloud),
        local_models=[LocalModelRef.model_validate(m) for m in local],
        rules=[Rule.model_validate(r) for r in rules],
    )
    for rule in rules_of(RoutingPolicySpec):
        program = ENV.program(ENV.compile(rule.rule))
        got = bool(program.evaluate({"self": celpy.json_to_cel(doc)}))
        assert got == rule.check(obj), rule.rule


@pytest.mark.parametrize(
    "modes", [{}, {"EMAIL": "mask"}, {"TICKET": "block"}, {"EMIAL": "mask"}, {"ticket": "mask"}]
)
@pytest.mark.parametrize(
    "custom",
    [
        [],
        [{"name": "TICKET", "pattern": "T-[0-9]+"}],
        [{"name": "TICKET", "pattern": "T-[0-9]+"}, {"name": "TICKET", "pattern": "X"}],
        [{"name": "EMAIL", "pattern": "x@y"}],
    ],
)
def test_redaction_rules_agree(modes: Any, custom: Any) -> None:
    """perEntityMode keys, custom names: the API server refuses what the types refuse."""
    obj = Redaction.model_construct(
        per_entity_mode=modes, custom=[CustomEntity.model_validate(c) for c in custom]
    )
    doc: dict[str, Any] = {"perEntityMode": modes, "custom": custom}
    for rule in rules_of(Redaction):
        program = ENV.program(ENV.compile(rule.rule))
        got = bool(program.evaluate({"self": celpy.json_to_cel(doc)}))
        assert got == rule.check(obj), (rule.rule, doc)
    # The types' own validators say the same (with the entity named).
    valid = all(rule.check(obj) for rule in rules_of(Redaction))
    try:
        Redaction.model_validate(doc)
        assert valid, doc
    except ValueError:
        assert not valid, doc


@pytest.mark.parametrize("cloud", [None, {"baseURL": "https://c.test/v1", "model": "m"}])
@pytest.mark.parametrize("local", [[], [{"name": "a"}]])
@pytest.mark.parametrize(
    ("rules", "default"),
    [
        ([], None),
        ([], "cascade"),
        ([{"name": "a", "target": "cascade"}], None),
        ([{"name": "a", "target": "cascade"}], "local"),
        ([{"name": "a", "target": "adaptive"}], "adaptive"),
    ],
)
def test_cascade_needs_local_and_cloud(
    cloud: Any, local: Any, rules: Any, default: str | None
) -> None:
    """target: cascade (a rule's or the default) answers locally and may ask the cloud."""
    doc: dict[str, Any] = {"localModels": local, "rules": rules}
    if cloud is not None:
        doc["cloud"] = cloud
    if default is not None:
        doc["defaultTarget"] = default
    obj = RoutingPolicySpec.model_construct(
        cloud=None if cloud is None else CloudEndpoint.model_validate(cloud),
        local_models=[LocalModelRef.model_validate(m) for m in local],
        rules=[Rule.model_validate(r) for r in rules],
        default_target=Target(default or "adaptive"),
    )
    for rule in rules_of(RoutingPolicySpec):
        program = ENV.program(ENV.compile(rule.rule))
        got = bool(program.evaluate({"self": celpy.json_to_cel(doc)}))
        assert got == rule.check(obj), rule.rule
    uses_cascade = default == "cascade" or any(r["target"] == "cascade" for r in rules)
    if uses_cascade and not (cloud and local):
        with pytest.raises(ValueError, match="cascade needs both"):
            RoutingPolicySpec.model_validate(doc)
