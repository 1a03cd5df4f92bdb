"""The model tier: a real spaCy pipeline finds what the patterns miss, merges with the fast
tier's findings, and fails closed with ModelTierError."""

from __future__ import annotations

import importlib.util
from typing import Any

import pytest
from pydantic import ValidationError

from clawdbot_api.v1alpha1 import RoutingPolicySpec
from clawdbot_api.v1alpha1.routingpolicy import RedactionModel
from clawdbot_sidecar.redaction import RedactionConfig, Redactor, Span
from clawdbot_sidecar.redaction.model_tier import ModelTier, ModelTierError, merge_findings

needs_spacy = pytest.mark.skipif(
    importlib.util.find_spec("spacy") is None,
    reason="spaCy is not installed (the 'ner' extra, part of 'dev', installs it)",
)


@pytest.fixture(scope="module")
def tier() -> ModelTier:
    return ModelTier.load(RedactionModel(enabled=True))


def test_the_policy_field_is_validated_and_off_by_default() -> None:
    spec = RoutingPolicySpec.model_validate({})
    assert spec.redaction.model.enabled is False
    spec = RoutingPolicySpec.model_validate(
        {"redaction": {"model": {"enabled": True, "entities": ["PERSON"]}}}
    )
    assert spec.redaction.model.pipeline == "en_core_web_sm"
    with pytest.raises(ValidationError, match="entities"):
        RoutingPolicySpec.model_validate({"redaction": {"model": {"entities": ["NAME"]}}})
    with pytest.raises(ValidationError, match="pipeline"):
        RoutingPolicySpec.model_validate({"redaction": {"model": {"pipeline": "../x y"}}})
    with pytest.raises(ValidationError, match="pipelines"):
        RoutingPolicySpec.model_validate({"redaction": {"model": {"pipelines": "x"}}})


@needs_spacy
def test_finds_names_places_and_birth_dates_the_patterns_miss(tier: ModelTier) -> None:
    # No cue and a name the census lists lack, a birth date in words: the patterns leave
    # these alone.
    text = (
        "Yesterday Oluwaseun Adeyemi-Bakare came back with a cough. "
        "She was born on the fourth of July, 1983. Patient Maria Lopez lives at "
        "12 Oak Lane, Springfield."
    )
    fast = Redactor(RedactionConfig()).inspect(text)
    [spans] = tier.find([text])
    values = {(s.entity, text[s.start : s.end]) for s in spans}
    assert ("PERSON", "Oluwaseun Adeyemi-Bakare") in values
    assert any(e == "DATE_OF_BIRTH" and "1983" in v for e, v in values)
    assert any(e == "ADDRESS" and "Springfield" in v for e, v in values)
    assert ("PERSON", "Oluwaseun Adeyemi-Bakare") not in {
        (s.entity, text[s.start : s.end]) for s in fast.spans
    }
    merged = merge_findings(fast, spans)
    assert "PERSON" in merged.present
    for value in ("Oluwaseun Adeyemi-Bakare", "1983", "Springfield"):
        i = text.index(value)
        assert any(s.start <= i and i + len(value) <= s.end for s in merged.spans), value


@needs_spacy
def test_dates_and_places_alone_are_not_identifiers(tier: ModelTier) -> None:
    text = "The appointment moved to March 3, 2025. Our team flew to Boston for the meeting."
    [spans] = tier.find([text])
    assert [s.entity for s in spans if s.entity != "PERSON"] == []


@needs_spacy
def test_find_takes_a_batch_and_keeps_its_order(tier: ModelTier) -> None:
    texts = ["Nothing to see here.", "", "Yesterday Oluwaseun Adeyemi-Bakare came back."]
    results = tier.find(texts)
    assert len(results) == 3
    assert results[0] == [] and results[1] == []
    assert [texts[2][s.start : s.end] for s in results[2]] == ["Oluwaseun Adeyemi-Bakare"]


@needs_spacy
def test_entities_outside_the_configured_ones_are_dropped() -> None:
    only_dates = ModelTier.load(RedactionModel(enabled=True, entities=["DATE_OF_BIRTH"]))
    [spans] = only_dates.find(["Dr Anneliese Vogt saw him; he was born 12 May 1950."])
    assert {s.entity for s in spans} == {"DATE_OF_BIRTH"}


def test_a_missing_pipeline_raises_model_tier_error() -> None:
    with pytest.raises(ModelTierError, match="'xx_no_such_pipeline' is not installed"):
        ModelTier.load(RedactionModel(enabled=True, pipeline="xx_no_such_pipeline"))


class _Broken:
    """A pipeline whose run fails, as a corrupt model or an exhausted machine would."""

    def pipe(self, texts: Any, batch_size: int = 0) -> Any:
        raise MemoryError("out of memory")


def test_a_failing_pipeline_raises_model_tier_error_without_the_text() -> None:
    tier = ModelTier(_Broken(), RedactionModel(enabled=True))
    with pytest.raises(ModelTierError, match="failed: MemoryError") as info:
        tier.find(["Patient Jane Roe, secret value"])
    assert "Jane" not in str(info.value)


def test_merge_keeps_every_character_and_the_fast_tier_label() -> None:
    fast = Redactor(RedactionConfig()).inspect("MRN 00482913 for Kwabena")
    merged = merge_findings(fast, [Span(4, 12, "PERSON"), Span(17, 24, "PERSON")])
    assert [(s.start, s.end, s.entity) for s in merged.spans] == [
        (4, 12, "MEDICAL_RECORD_NUMBER"),
        (17, 24, "PERSON"),
    ]
    assert merge_findings(fast, []) is fast
