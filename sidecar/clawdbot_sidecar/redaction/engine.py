"""The redaction engine: detection, masking/pseudonymization/blocking of requests."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Final

from .anchors import analyze, approximate
from .config import BUILTIN_ENTITIES, RedactionConfig, RedactionMode
from .detectors import Detector, Span, builtin_detectors, custom_detector, resolve_overlaps
from .fastscan import Scanner, scanner_type
from .walker import inspect_request, rewrite

__all__ = [
    "PLACEHOLDER_RE",
    "Findings",
    "PseudonymMap",
    "RedactionResult",
    "Redactor",
    "TextRedaction",
    "contains_pii",
    "iter_request_texts",
    "map_request_texts",
]

# Placeholders look like <EMAIL_1>: unlikely in prose, kept intact by LLMs, and free of
# quotes and backslashes so they survive inside JSON strings (tool call arguments).
PLACEHOLDER_RE: Final = re.compile(r"<[A-Z][A-Z0-9_]*_[1-9][0-9]*>")


class PseudonymMap:
    """Placeholder <-> original value for one request or conversation; held in memory only."""

    __slots__ = ("_by_placeholder", "_by_value", "_counters", "_reserved", "_sorted")

    def __init__(self) -> None:
        self._by_value: dict[tuple[str, str], str] = {}
        self._by_placeholder: dict[str, str] = {}
        self._counters: dict[str, int] = {}
        self._reserved: set[str] = set()
        self._sorted: list[str] | None = None

    def __len__(self) -> int:
        return len(self._by_placeholder)

    def __repr__(self) -> str:
        # Never show values: this object may end up in a log line or a traceback.
        return f"PseudonymMap({len(self)} placeholders)"

    def reserve_literals(self, text: str) -> None:
        """Keep placeholder-shaped text already in the input from being reused as one."""
        if "<" in text:
            self._reserved.update(PLACEHOLDER_RE.findall(text))

    def placeholder_for(self, entity: str, value: str) -> str:
        """The placeholder of `value`, allocating the entity's next number the first time."""
        key = (entity, value)
        found = self._by_value.get(key)
        if found is not None:
            return found
        n = self._counters.get(entity, 0)
        while True:
            n += 1
            placeholder = f"<{entity}_{n}>"
            if placeholder not in self._reserved:
                break
        self._counters[entity] = n
        self._by_value[key] = placeholder
        self._by_placeholder[placeholder] = value
        self._sorted = None
        return placeholder

    def value_for(self, placeholder: str) -> str | None:
        """The original value behind a placeholder, or None for one this map never issued."""
        return self._by_placeholder.get(placeholder)

    def sorted_placeholders(self) -> list[str]:
        """All issued placeholders in sorted order (for prefix checks while streaming)."""
        if self._sorted is None:
            self._sorted = sorted(self._by_placeholder)
        return self._sorted


@dataclass(frozen=True, slots=True)
class TextRedaction:
    """One redacted string with the counts per entity and the entities that block it."""

    text: str
    counts: dict[str, int]
    blocked: frozenset[str]


@dataclass(frozen=True, slots=True)
class RedactionResult:
    """A redacted request copy, its placeholder map, counts per entity (never values)."""

    request: dict[str, Any]
    mapping: PseudonymMap
    counts: dict[str, int] = field(default_factory=dict)
    # Entities in block mode that were found; when non-empty the request must not leave.
    # They are masked in `request` as well, so a careless caller still leaks nothing.
    blocked: frozenset[str] = frozenset()

    @property
    def is_blocked(self) -> bool:
        """True when the request must stay local (or be refused)."""
        return bool(self.blocked)


@dataclass(frozen=True, slots=True)
class Findings:
    """What detection found in one text: the spans to rewrite (overlaps merged) and every
    entity with at least one confirmed match, nested ones included."""

    spans: list[Span]
    present: frozenset[str]


# Findings per text string, for one request: routing and redaction then look at each text
# once. Keyed by value, so equal texts (a repeated system prompt) are detected once too.
FindingsMemo = dict[str, Findings]

_NOTHING: Final = Findings([], frozenset())
_ANY_DIGIT: Final = re.compile(r"[0-9]")
# Characters that match an ASCII letter under re.IGNORECASE but lower-case to something
# else ("İ".lower() is two characters): mapped first, so a needle is found wherever a
# case-insensitive cue can match, at the same position as in the text.
_FOLD: Final = str.maketrans({"\u0130": "i", "\u0131": "i", "\u017f": "s", "\u212a": "k"})

Search = Callable[[str, int], "re.Match[str] | None"]


@dataclass(frozen=True, slots=True)
class _Run:
    """A detector ready to scan with: its search and the prefilters that gate it."""

    det: Detector
    search: Search
    # Texts without an ASCII digit skip it (declared, implied by a digit lead, or read
    # from the pattern).
    needs_digit: bool
    # Its index among the native scanner's detectors.
    slot: int


def _prepare(det: Detector, slot: int) -> _Run:
    facts = analyze(det.regex)
    needs_digit = det.needs_digit or det.digit_lead is not None or facts.needs_digit
    finder = facts.finder
    if finder is None:
        return _Run(det, det.regex.search, needs_digit, slot)
    match = det.regex.match

    def search(text: str, pos: int) -> re.Match[str] | None:
        # The finder skips to where the pattern can start; the pattern, matched there, is
        # what a plain search returns. A hit it does not confirm (finders with a back
        # reference widened) moves the search one character on.
        while True:
            hit = finder.search(text, pos)
            if hit is None:
                return None
            m = match(text, hit.start())
            if m is not None:
                return m
            pos = hit.start() + 1

    return _Run(det, search, needs_digit, slot)


@lru_cache(maxsize=4)
def _shared_scanner(unicode: tuple[str | None, ...], ascii: tuple[str | None, ...]) -> Scanner:
    # Redactors with the same detectors (the built-in one, a policy's, its reloads) share
    # one scanner: its compiled automata are the native path's memory.
    make = scanner_type()
    assert make is not None
    return make(list(unicode), list(ascii))


# How far into a pattern its approximation for the native scanner reaches (characters): a
# longer one skips more detectors, a shorter one scans faster; 10 measured best.
_APPROXIMATION_BUDGET: Final = 10


# The only built-in pattern that can match across a line break (a PEM block); texts joined
# by newlines hold the findings of their parts unless this opens one.
_MULTILINE_NEEDLE: Final = "-----BEGIN"


class Redactor:
    """Finds sensitive values and rewrites text and OpenAI requests per a RedactionConfig."""

    def __init__(self, config: RedactionConfig, native: bool | None = None) -> None:
        """`native`: use the native scanner (True: it must be installed), the pure-Python
        path (False), or the scanner where it is installed (None)."""
        self._config = config
        active = config.active_entities()
        # Every built-in gets a detector, active or not: a routing rule may ask about an
        # entity the policy does not redact. Only active ones are rewritten.
        detectors = builtin_detectors(BUILTIN_ENTITIES)
        detectors += [custom_detector(c.name, c.pattern) for c in config.custom]
        self._all_detectors = tuple(detectors)
        self._detectors = tuple(d for d in detectors if d.entity in active)
        self._all_runs = tuple(_prepare(d, slot) for slot, d in enumerate(detectors))
        self._runs = tuple(r for r in self._all_runs if r.det.entity in active)
        # Detectors of entities detection leaves out; routing rules may still ask about them.
        self._inactive = tuple(r for r in self._all_runs if r.det.entity not in active)
        self._has_custom = bool(config.custom)
        self._scanner = self._native_scanner(detectors, native)
        self._modes = {name: config.mode_for(name) for name in active}
        self._order = BUILTIN_ENTITIES + tuple(c.name for c in config.custom)

    @staticmethod
    def _native_scanner(detectors: Sequence[Detector], native: bool | None) -> Scanner | None:
        make = scanner_type()
        if native is False or (make is None and native is None):
            return None
        if make is None:
            raise RuntimeError("the native scanner is not installed (make venv builds it)")
        budget = _APPROXIMATION_BUDGET
        return _shared_scanner(
            tuple(approximate(d.regex, budget) for d in detectors),
            # Detectors of Chinese text never run on ASCII texts: nothing to look for.
            tuple(
                None if d.non_ascii else approximate(d.regex, budget, ascii=True) for d in detectors
            ),
        )

    @property
    def native(self) -> bool:
        """True when this redactor's fast tier runs the native scanner."""
        return self._scanner is not None

    @property
    def config(self) -> RedactionConfig:
        """The configuration this redactor was built from."""
        return self._config

    @property
    def active(self) -> frozenset[str]:
        """The entities this redactor rewrites."""
        return frozenset(self._modes)

    def detect(self, text: str) -> list[Span]:
        """Non-overlapping findings in `text`, sorted by position.

        Detection works whether or not redaction is enabled: routing rules on PII presence
        still need it when nothing is rewritten.
        """
        return self.inspect(text).spans

    def inspect(self, text: str, memo: FindingsMemo | None = None) -> Findings:
        """Spans and present entities of `text` (active entities), looked up in or added
        to `memo` when given."""
        if memo is not None:
            found = memo.get(text)
            if found is None:
                found = memo[text] = self._inspect(text, self._runs)
            return found
        return self._inspect(text, self._runs)

    def _inspect(self, text: str, runs: Iterable[_Run]) -> Findings:
        if not text:
            return _NOTHING
        found: list[tuple[int, int, int, str]] = []
        present: set[str] = set()
        for run, start in self._candidates(text, runs):
            m = run.search(text, start)
            if m is None:  # the common case: no match at all
                continue
            det = run.det
            for span in _findings(run, text, m):
                found.append((span[0], span[1], det.priority, det.entity))
                present.add(det.entity)
        if not found:
            return _NOTHING
        return Findings(resolve_overlaps(found), frozenset(present))

    def scan_parts(
        self,
        parts: Sequence[str],
        memo: FindingsMemo | None = None,
        also: Iterable[str] = (),
    ) -> dict[str, int]:
        """What `scan` gives for the newline-joined `parts`, from the parts' own findings
        (so redaction reuses them through `memo`), plus each entity of `also` present in
        the text as `contains_pii` sees it (counted as 1 when detection found none).

        Findings of the parts add up to those of the joined text because no built-in
        pattern but the PEM block crosses a line break, and a line break satisfies each
        pattern's boundary checks as the start or end of the text does. Texts that a custom
        pattern (it may cross lines) or a PEM header could join are scanned whole.
        """
        wanted = tuple(also)
        if len(parts) != 1 and (self._has_custom or any(_MULTILINE_NEEDLE in p for p in parts)):
            text = "\n".join(parts)
            counts = self.scan(text)
            if text and wanted:
                for entity in self.contains_pii(text, wanted):
                    counts.setdefault(entity, 1)
            return counts
        counts = {}
        present: set[str] = set()
        for part in parts:
            found = self.inspect(part, memo)
            for span in found.spans:
                counts[span.entity] = counts.get(span.entity, 0) + 1
            present |= found.present
        if wanted:
            chosen = set(wanted)
            inactive = [r for r in self._inactive if r.det.entity in chosen]
            if inactive:
                for part in parts:
                    present |= self._present(part, inactive, present)
            for entity in self._order:
                if entity in present and entity in chosen:
                    counts.setdefault(entity, 1)
        return counts

    def _present(
        self, text: str, runs: Iterable[_Run], known: AbstractSet[str] = frozenset()
    ) -> set[str]:
        """Entities of `runs` with a confirmed match in `text`, each stopping at its
        first; those in `known` are not looked for again."""
        present: set[str] = set()
        for run, start in self._candidates(text, runs):
            entity = run.det.entity
            if entity in present or entity in known:
                continue
            m = run.search(text, start)
            if m is not None and next(_findings(run, text, m), None) is not None:
                present.add(entity)
        return present

    def contains_pii(self, text: str, entities: Iterable[str] = ()) -> list[str]:
        """Names of the entities (of `entities`, or else all active ones) present in `text`.

        Cheaper than `detect`: each entity stops at its first confirmed match. A match
        nested inside a longer finding of another entity still counts, which errs on the
        side of privacy for routing.
        """
        wanted = set(entities) or set(self._modes)
        chosen = [r for r in self._all_runs if r.det.entity in wanted]
        present = self._present(text, chosen)
        return [name for name in self._order if name in present]

    def _candidates(self, text: str, runs: Iterable[_Run]) -> Iterator[tuple[_Run, int]]:
        """Those of `runs` whose prefilters pass on `text`, each with the position its
        search can start from.

        A detector runs only if one of its needles occurs, one of its required characters
        occurs and, for a pattern that needs one, a digit occurs: each is necessary for a
        match. No match can start earlier than the lead before the first needle or digit,
        so the search starts there; lookbehinds still see the text before that position.
        With the native scanner, its approximations' first matches take the needles'
        place (a text of ASCII without digits, prose, is cheaper without it).
        """
        scanner = self._scanner
        if scanner is None:
            return self._python_candidates(text, runs)
        m = _ANY_DIGIT.search(text)
        first_digit = m.start() if m is not None else -1
        ascii_only = text.isascii()
        if first_digit == -1 and ascii_only:
            return self._python_candidates(text, runs, first_digit, ascii_only)
        return self._native_candidates(scanner, text, runs, first_digit, ascii_only)

    @staticmethod
    def _native_candidates(
        scanner: Scanner, text: str, runs: Iterable[_Run], first_digit: int, ascii_only: bool
    ) -> Iterator[tuple[_Run, int]]:
        starts = scanner.first_starts(text)
        for run in runs:
            start = starts[run.slot]
            if start < 0:
                continue
            det = run.det
            if (det.non_ascii and ascii_only) or (run.needs_digit and first_digit == -1):
                continue
            if det.requires:
                for needle in det.requires:
                    if needle in text:
                        break
                else:
                    continue
            if det.digit_lead is not None:
                start = max(start, first_digit - det.digit_lead)
            yield run, start

    @staticmethod
    def _python_candidates(
        text: str, runs: Iterable[_Run], first_digit: int = -2, ascii_only: bool | None = None
    ) -> Iterator[tuple[_Run, int]]:
        # first_digit -2: not looked for yet (-1: none); ascii_only None: not known yet.
        folded: str | None = None
        for run in runs:
            det = run.det
            if det.non_ascii:
                if ascii_only is None:
                    ascii_only = text.isascii()
                if ascii_only:
                    continue
            if run.needs_digit:
                if first_digit == -2:
                    m = _ANY_DIGIT.search(text)
                    first_digit = m.start() if m is not None else -1
                if first_digit == -1:
                    continue
            start = 0
            if det.needles:
                if det.needles_casefold:
                    if folded is None:
                        if ascii_only is None:
                            ascii_only = text.isascii()
                        # Same length and positions as the text (see _FOLD).
                        folded = text.lower() if ascii_only else text.translate(_FOLD).lower()
                    haystack = folded
                else:
                    haystack = text
                first = -1
                for needle in det.needles:
                    i = haystack.find(needle)
                    if i != -1 and (first == -1 or i < first):
                        first = i
                if first == -1:
                    continue
                if det.needle_lead is not None:
                    start = max(0, first - det.needle_lead)
            if det.requires:
                for needle in det.requires:
                    if needle in text:
                        break
                else:
                    continue
            if det.digit_lead is not None:
                start = max(start, first_digit - det.digit_lead)
            yield run, start

    def scan(self, text: str) -> dict[str, int]:
        """Counts per entity found in `text`, without rewriting it."""
        return dict(Counter(s.entity for s in self.detect(text)))

    def scan_request(self, request: Mapping[str, Any]) -> dict[str, int]:
        """Counts per entity over every user-supplied text of an OpenAI request."""
        counts: Counter[str] = Counter()
        for text in iter_request_texts(request):
            counts.update(s.entity for s in self.detect(text))
        return dict(counts)

    def redact_text(self, text: str, mapping: PseudonymMap | None = None) -> TextRedaction:
        """Rewrite one string; pseudonyms go into `mapping` (a fresh one if omitted)."""
        mapping = PseudonymMap() if mapping is None else mapping
        if not self._config.enabled:
            return TextRedaction(text, {}, frozenset())
        mapping.reserve_literals(text)
        counts: Counter[str] = Counter()
        blocked: set[str] = set()
        out = self._apply(text, mapping, counts, blocked)
        return TextRedaction(out, dict(counts), frozenset(blocked))

    def redact_request(
        self,
        request: Mapping[str, Any],
        mapping: PseudonymMap | None = None,
        memo: FindingsMemo | None = None,
    ) -> RedactionResult:
        """Redact the texts of a chat, completions or embeddings request, returning a copy.

        Pass the conversation's `mapping` to keep placeholders stable across its requests,
        and the `memo` routing filled (`scan_parts`) to reuse its findings.
        """
        mapping = PseudonymMap() if mapping is None else mapping
        if not self._config.enabled:
            return RedactionResult(dict(request), mapping)
        # Reserve first: a literal "<EMAIL_1>" in a later message must not collide with a
        # placeholder issued for an earlier one.
        for text in iter_request_texts(request):
            mapping.reserve_literals(text)
        counts: Counter[str] = Counter()
        blocked: set[str] = set()
        copy = map_request_texts(request, lambda t: self._apply(t, mapping, counts, blocked, memo))
        return RedactionResult(copy, mapping, dict(counts), frozenset(blocked))

    def _apply(
        self,
        text: str,
        mapping: PseudonymMap,
        counts: Counter[str],
        blocked: set[str],
        memo: FindingsMemo | None = None,
    ) -> str:
        spans = self.inspect(text, memo).spans
        if not spans:
            return text
        parts: list[str] = []
        pos = 0
        for span in spans:
            entity = span.entity
            counts[entity] += 1
            mode = self._modes[entity]
            parts.append(text[pos : span.start])
            if mode is RedactionMode.PSEUDONYMIZE:
                parts.append(mapping.placeholder_for(entity, text[span.start : span.end]))
            else:
                if mode is RedactionMode.BLOCK:
                    blocked.add(entity)
                parts.append(f"[{entity}]")
            pos = span.end
        parts.append(text[pos:])
        return "".join(parts)


def _findings(
    run: _Run, text: str, first: re.Match[str] | None = None
) -> Iterator[tuple[int, int]]:
    """The confirmed (start, end) spans of one detector in `text`, lazily (`first`: the
    detector's first match in `text`, when the caller has it already).

    The search resumes where a confirmed span ends, not where the regex match ended: a
    check that trims a match (a phone number running into the next one) or rejects it
    must not hide a value inside the rest of that match.
    """
    check = run.det.check
    search = run.search
    pos = 0
    m = first
    while pos <= len(text):
        if m is None:
            m = search(text, pos)
            if m is None:
                return
        span = check(text, m) if check is not None else m.span()
        if span is not None and span[1] > span[0]:
            yield span
            pos = max(span[1], m.start() + 1)
        else:
            pos = m.start() + 1
        m = None


_BUILTIN_ONLY: Final = Redactor(RedactionConfig())


def contains_pii(text: str, entities: Iterable[str] = BUILTIN_ENTITIES) -> list[str]:
    """Built-in entity names (of `entities`) present in `text`, for callers without a policy.

    Custom entities need the policy's patterns: `Redactor.contains_pii` knows those.
    """
    names = tuple(entities)
    unknown = set(names) - set(BUILTIN_ENTITIES)
    if unknown:
        raise ValueError(f"not built-in entities: {sorted(unknown)}")
    return _BUILTIN_ONLY.contains_pii(text, names) if names else []


# --- walking OpenAI request bodies ----------------------------------------------------


def iter_request_texts(request: Mapping[str, Any]) -> Iterator[str]:
    """Every string of an OpenAI request that would leave for the cloud (see walker.py)."""
    yield from inspect_request(request).texts


def map_request_texts(request: Mapping[str, Any], fn: Callable[[str], str]) -> dict[str, Any]:
    """A copy of `request` with `fn` applied to each text of :func:`iter_request_texts`;
    other fields are shared."""
    return rewrite(request, fn)
