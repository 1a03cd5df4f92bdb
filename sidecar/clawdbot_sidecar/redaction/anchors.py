"""What a detector's pattern needs before it can match, read from the pattern itself.

Two facts per pattern, each derived from the regex's parse tree (the standard library's
own parser), so they can't drift from the pattern:

- the characters a match can start with. Python's regex engine skips in C to the next
  such character only when the pattern opens with a consuming literal or class; a pattern
  that opens with a lookbehind, a lookahead or a case-insensitive word is tried at every
  position instead (most of the fast tier's time on prose). For those, a *finder*
  `[F](?<=(?=P)[F])` finds the same starts with the skip, and the pattern is then matched
  at the start the finder found;
- whether every match consumes an ASCII digit: texts without one skip the pattern.

Both are exact: a finder hit at p is `P` matching at p (a match at p is what `search`
would return when no earlier position matches), and a digit the pattern must consume is
in the text. Where the parse tree holds something the analysis doesn't know, it gives up
(no finder, digits not required), which costs speed, never findings.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# The parser behind re.compile; private, but the only way to see a compiled pattern's
# structure. A unit test checks that every built-in pattern still gets its finder.
from re import _constants as C  # type: ignore[attr-defined]
from re import _parser as P  # type: ignore[attr-defined]
from typing import Any, Final

__all__ = ["PatternFacts", "analyze"]

_ASCII_DIGITS: Final = frozenset(range(0x30, 0x3A))
# Characters outside ASCII that match an ASCII letter under re.IGNORECASE (the engine's
# simple case folding plus its equivalence table): capital I with a dot and dotless i match
# "i", the Kelvin sign matches "k", the long s matches "s".
_FOLDS_ONTO_ASCII: Final[dict[str, str]] = {"i": "\u0130\u0131", "k": "\u212a", "s": "\u017f"}


@dataclass(frozen=True, slots=True)
class PatternFacts:
    """What `analyze` found out about one pattern."""

    # Finds exactly the positions where the pattern matches, with a skip loop in C; None
    # where the pattern already opens with one (or its first characters are unknown).
    finder: re.Pattern[str] | None
    # Every match consumes an ASCII digit.
    needs_digit: bool


def analyze(pattern: re.Pattern[str]) -> PatternFacts:
    """The facts of `pattern` (see the module docstring)."""
    try:
        tree = P.parse(pattern.pattern, pattern.flags)
    except re.error:  # pragma: no cover - it compiled once already
        return PatternFacts(None, False)
    icase = bool(tree.state.flags & re.IGNORECASE)
    needs_digit = _needs(tree.data, _ASCII_DIGITS)
    finder = None
    if not icase and _opens_without_skip(tree.data):
        chars = _first_chars(tree.data, icase=False)
        if chars is not None and chars[0] and not chars[1]:
            cls = "[" + "".join(dict.fromkeys(chars[0])) + "]"
            # A lookbehind can't hold a back reference: the finder matches the group's
            # pattern again instead, a superset the engine then confirms.
            body = _without_backrefs(pattern.pattern)
            try:
                finder = re.compile(f"{cls}(?<=(?={body}){cls})", pattern.flags)
            except re.error:  # inline global flags, numbered back references
                finder = None
    return PatternFacts(finder, needs_digit)


# An escape (kept as it is) or a named back reference.
_BACKREF: Final = re.compile(r"(\\.)|\(\?P=(\w+)\)", re.DOTALL)


def _without_backrefs(source: str) -> str:
    """`source` with each `(?P=name)` replaced by the pattern of group `name`."""

    def group_body(name: str) -> str:
        start = source.index(f"(?P<{name}>") + len(name) + 5
        depth, i, in_class = 0, start, False
        while True:
            ch = source[i]
            if ch == "\\":
                i += 2
                continue
            if in_class:
                in_class = ch != "]"
            elif ch == "[":
                in_class = True
                if source[i + 1 : i + 2] == "]":
                    i += 1
            elif ch == "(":
                depth += 1
            elif ch == ")":
                if depth == 0:
                    return source[start:i]
                depth -= 1
            i += 1

    return _BACKREF.sub(lambda m: m[0] if m[1] else f"(?:{group_body(m[2])})", source)


def _opens_without_skip(items: Any) -> bool:
    """True when the engine can't skip to candidate starts: the pattern doesn't open with
    a case-sensitive literal or class (or a choice of literals), e.g. it opens with an
    assertion, an optional group or a case-insensitive word."""
    for op, av in items:
        if op is C.SUBPATTERN:
            _group, add, _delete, sub = av
            return bool(add & re.IGNORECASE) or _opens_without_skip(sub.data)
        if op is C.BRANCH:
            return not all(alt.data and alt.data[0][0] is C.LITERAL for alt in av[1])
        return op not in (C.LITERAL, C.IN)
    return False


# (class fragments, nullable) or None when any character may come first.
_First = tuple[list[str], bool] | None


def _first_chars(items: Any, icase: bool) -> _First:
    """The characters a match of the sequence `items` can start with, as fragments of a
    character class, and whether the sequence can match the empty string."""
    out: list[str] = []
    for op, av in items:
        found = _first_item(op, av, icase)
        if found is None:
            return None
        out += found[0]
        if not found[1]:
            return out, False
    return out, True


def _first_item(op: Any, av: Any, icase: bool) -> _First:
    if op is C.LITERAL:
        chars = _cased(av, icase)
        return (chars, False) if chars is not None else None
    if op is C.IN:
        return _first_class(av, icase)
    if op is C.BRANCH:
        out: list[str] = []
        nullable = False
        for alt in av[1]:
            found = _first_chars(alt.data, icase)
            if found is None:
                return None
            out += found[0]
            nullable |= found[1]
        return out, nullable
    if op is C.SUBPATTERN:
        _group, add, delete, sub = av
        sub_icase = (icase or bool(add & re.IGNORECASE)) and not delete & re.IGNORECASE
        return _first_chars(sub.data, sub_icase)
    if op in (C.MAX_REPEAT, C.MIN_REPEAT, C.POSSESSIVE_REPEAT):
        lo, _hi, sub = av
        found = _first_chars(sub.data, icase)
        if found is None:
            return None
        return found[0], found[1] or lo == 0
    if op is C.ATOMIC_GROUP:
        return _first_chars(av.data, icase)
    if op in (C.ASSERT, C.ASSERT_NOT, C.AT):
        return [], True  # zero width: the next item decides
    return None  # any character, back references, conditionals


def _escape(code: int) -> str:
    return re.escape(chr(code))


def _cased(code: int, icase: bool) -> list[str] | None:
    """Class fragments for one literal character, its case variants included."""
    ch = chr(code)
    if not icase or ch.lower() == ch.upper():
        return [_escape(code)]
    if not ch.isascii():
        return None  # non-ASCII case folding: not worth modelling
    low = ch.lower()
    return [_escape(ord(c)) for c in {low, ch.upper(), *_FOLDS_ONTO_ASCII.get(low, "")}]


def _first_class(items: Any, icase: bool) -> _First:
    out: list[str] = []
    for op, av in items:
        if op is C.LITERAL:
            chars = _cased(av, icase)
            if chars is None:
                return None
            out += chars
        elif op is C.RANGE:
            lo, hi = av
            if icase and any(chr(c).lower() != chr(c).upper() for c in range(lo, hi + 1)):
                if hi > 0x7F:
                    return None
                for c in range(lo, hi + 1):
                    chars = _cased(c, icase)
                    if chars is None:  # pragma: no cover - ASCII only here
                        return None
                    out += chars
            else:
                out.append(f"{_escape(lo)}-{_escape(hi)}")
        elif op is C.CATEGORY:
            category = _CATEGORIES.get(av)
            if category is None:
                return None
            out.append(category)
        else:  # NEGATE and the like: nearly every character
            return None
    return out, False


_CATEGORIES: Final = {
    C.CATEGORY_DIGIT: r"\d",
    C.CATEGORY_NOT_DIGIT: r"\D",
    C.CATEGORY_SPACE: r"\s",
    C.CATEGORY_NOT_SPACE: r"\S",
    C.CATEGORY_WORD: r"\w",
    C.CATEGORY_NOT_WORD: r"\W",
}


def _needs(items: Any, chars: frozenset[int]) -> bool:
    """True when every match of the sequence `items` consumes a character of `chars`."""
    return any(_needs_item(op, av, chars) for op, av in items)


def _needs_item(op: Any, av: Any, chars: frozenset[int]) -> bool:
    if op is C.LITERAL:
        return bool(av in chars)
    if op is C.IN:
        for item_op, item in av:
            if item_op is C.LITERAL:
                if item not in chars:
                    return False
            elif item_op is C.RANGE:
                if not all(c in chars for c in range(item[0], item[1] + 1)):
                    return False
            else:
                return False
        return bool(av)
    if op is C.BRANCH:
        return all(_needs(alt.data, chars) for alt in av[1])
    if op is C.SUBPATTERN:
        return _needs(av[3].data, chars)
    if op in (C.MAX_REPEAT, C.MIN_REPEAT, C.POSSESSIVE_REPEAT):
        return bool(av[0] >= 1) and _needs(av[2].data, chars)
    if op is C.ATOMIC_GROUP:
        return _needs(av.data, chars)
    return False  # lookarounds, anchors, back references: assume nothing


# --- lookaround-free over-approximations, for the native scanner -----------------------
#
# The native scanner (native/, built with the `regex` crate) runs one pass over a text for
# all detectors and tells, for each, where its *approximation* first matches. An
# approximation matches wherever the pattern does and maybe elsewhere: lookarounds and
# anchors become empty, back references repeat their group's pattern, counted repetitions
# lose their upper bounds, and classes the crate reads differently are widened. So a
# detector whose approximation matches nowhere has no match, and none of its matches starts
# before the approximation's first match: the engine starts its search there.

_ANY: Final = r"[\s\S]"
# Upper bounds above this are dropped and lower bounds capped at _MAX_LO: fewer automaton
# states, the same or a larger language.
_MAX_HI: Final = 4
_MAX_LO: Final = 16


def approximate(pattern: re.Pattern[str], budget: int = 12, ascii: bool = False) -> str | None:
    """A pattern for the `regex` crate that matches wherever `pattern` can start a match
    (see above), cut after about `budget` characters: a prefix of a pattern still matches
    at each of its starts, and a short one keeps the automaton small and fast.

    With `ascii`, the approximation holds for ASCII texts only, and every class in it is a
    set of ASCII characters (the crate then builds a byte automaton, far smaller than one
    over Unicode classes). None where the parse tree holds something this doesn't
    translate."""
    try:
        tree = P.parse(pattern.pattern, pattern.flags)
    except re.error:  # pragma: no cover - it compiled once already
        return None
    flags = tree.state.flags
    if flags & (re.VERBOSE | re.LOCALE | re.ASCII):
        return None
    try:
        approx = _Approx(dotall=bool(flags & re.DOTALL), budget=budget, ascii=ascii)
        return approx.seq(tree.data, icase=bool(flags & re.IGNORECASE))
    except _Untranslatable:
        return None


class _Untranslatable(Exception):
    pass


def _hex(code: int) -> str:
    return f"\\x{{{code:x}}}"


class _Approx:
    """Translates a parse tree, item by item, until `budget` characters are spent; then
    `done` is set and the rest is dropped (what remains is a prefix of the pattern)."""

    def __init__(self, dotall: bool, budget: int, ascii: bool) -> None:
        self.dotall = dotall
        self.budget = budget
        self.ascii = ascii
        self.done = False
        self.groups: dict[int, str] = {}

    def seq(self, items: Any, icase: bool) -> str:
        out = []
        for op, av in items:
            if self.done:
                break
            out.append(self.item(op, av, icase))
        return "".join(out)

    def char(self, cls: str) -> str:
        self.budget -= 1
        self.done = self.budget <= 0
        return cls

    def item(self, op: Any, av: Any, icase: bool) -> str:
        if op in (C.LITERAL, C.NOT_LITERAL, C.ANY, C.IN):
            return self.char(self.one_char(op, av, icase))
        if op is C.BRANCH:
            return self.branch(av[1], icase)
        if op is C.SUBPATTERN:
            return self.subpattern(av, icase)
        if op in (C.MAX_REPEAT, C.MIN_REPEAT, C.POSSESSIVE_REPEAT):
            return self.repeat(av, icase)
        if op is C.ATOMIC_GROUP:
            return f"(?:{self.seq(av.data, icase)})"
        if op in (C.ASSERT, C.ASSERT_NOT, C.AT):
            return ""
        if op is C.GROUPREF and av in self.groups:
            return self.char(f"(?:{self.groups[av]})")
        raise _Untranslatable

    def one_char(self, op: Any, av: Any, icase: bool) -> str:
        if self.ascii:
            return _ascii_class(_ascii_set(op, av, icase, self.dotall))
        if op is C.IN:
            return _approx_class(av, icase)
        if op is C.ANY:
            return _ANY if self.dotall else r"[^\n]"
        chars = _variants(av, icase)
        if chars is None:
            return _ANY
        return ("[" if op is C.LITERAL else "[^") + "".join(map(_hex, chars)) + "]"

    def branch(self, alts: Any, icase: bool) -> str:
        budget, out, done = self.budget, [], False
        left = budget
        for alt in alts:
            self.budget, self.done = budget, False
            out.append(self.seq(alt.data, icase))
            done |= self.done
            left = min(left, self.budget)
        # One alternative cut short ends the whole prefix here.
        self.budget, self.done = left, done or left <= 0
        return "(?:" + "|".join(out) + ")"

    def subpattern(self, av: Any, icase: bool) -> str:
        group, add, delete, sub = av
        sub_icase = (icase or bool(add & re.IGNORECASE)) and not delete & re.IGNORECASE
        if add & re.DOTALL or delete & re.DOTALL:
            raise _Untranslatable
        body = self.seq(sub.data, sub_icase)
        if group is not None and not self.done:
            self.groups[group] = body
        return f"(?:{body})"

    def repeat(self, av: Any, icase: bool) -> str:
        lo, hi, sub = av
        before = self.budget
        body = self.seq(sub.data, icase)
        if self.done:  # cut inside the body: one (partial) copy, and only if required
            return body if lo >= 1 else ""
        if lo == 0:
            self.budget = before  # an optional part spends nothing for sure
        else:
            self.budget -= (before - self.budget) * (min(lo, _MAX_LO) - 1)
            self.done = self.budget <= 0
        lo = min(lo, _MAX_LO)
        bound = f"{{{lo},{hi}}}" if hi <= _MAX_HI else f"{{{lo},}}"
        return f"(?:{body}){bound}"


def _variants(code: int, icase: bool) -> list[int] | None:
    """The characters a literal matches, or None for "don't know" (widened to any)."""
    ch = chr(code)
    if not icase or ch.lower() == ch.upper():
        return [code]
    if not ch.isascii():
        return None
    low = ch.lower()
    return sorted({ord(low), ord(ch.upper()), *map(ord, _FOLDS_ONTO_ASCII.get(low, ""))})


def _approx_class(items: Any, icase: bool) -> str:
    negated = bool(items) and items[0][0] is C.NEGATE
    parts: list[str] = []
    for op, av in items[1:] if negated else items:
        if op is C.LITERAL:
            chars = _variants(av, icase)
            if chars is None:
                return _ANY
            parts += map(_hex, chars)
        elif op is C.RANGE:
            lo, hi = av
            if icase and any(chr(c).lower() != chr(c).upper() for c in range(lo, hi + 1)):
                if hi > 0x7F:
                    return _ANY
                for c in range(lo, hi + 1):
                    parts += map(_hex, _variants(c, icase) or [c])
            else:
                parts.append(f"{_hex(lo)}-{_hex(hi)}")
        elif op is C.CATEGORY and not negated and av in _WIDE_CATEGORIES:
            parts.append(_WIDE_CATEGORIES[av])
        else:
            # Negated categories, and categories in a negated class, read differently in
            # the crate (Unicode versions, Python's own definitions): any character.
            return _ANY
    if not parts:
        return _ANY if negated else "[^\\s\\S]"
    return ("[^" if negated else "[") + "".join(parts) + "]"


# Python's classes, widened to what the crate's tables surely hold: Python's \w takes every
# letter and number (str.isalnum), its \s the four separators below 0x20 too.
_WIDE_CATEGORIES: Final = {
    C.CATEGORY_DIGIT: r"\d",
    C.CATEGORY_WORD: r"\w\p{L}\p{N}\p{M}_",
    C.CATEGORY_SPACE: r"\s\x{1c}-\x{1f}\x{85}",
}


_ASCII: Final = range(128)


def _ascii_set(op: Any, av: Any, icase: bool, dotall: bool) -> set[int]:
    """The ASCII characters one character item matches (exactly: a text of ASCII holds
    no others)."""
    if op is C.ANY:
        return set(_ASCII) if dotall else set(_ASCII) - {10}
    if op is C.LITERAL:
        return {c for c in _variants(av, icase) or [] if c < 128}
    if op is C.NOT_LITERAL:
        return set(_ASCII) - set(_variants(av, icase) or [])
    negated = bool(av) and av[0][0] is C.NEGATE
    members: set[int] = set()
    for item_op, item in av[1:] if negated else av:
        if item_op is C.LITERAL:
            members |= {c for c in _variants(item, icase) or [] if c < 128}
        elif item_op is C.RANGE:
            for c in range(item[0], min(item[1], 127) + 1):
                members |= {v for v in _variants(c, icase) or [c] if v < 128}
        elif item_op is C.CATEGORY:
            members |= _ASCII_CATEGORIES[item]
        else:
            raise _Untranslatable
    return set(_ASCII) - members if negated else members


def _category(pattern: str) -> frozenset[int]:
    return frozenset(c for c in _ASCII if re.match(pattern, chr(c)))


_ASCII_CATEGORIES: Final = {
    C.CATEGORY_DIGIT: _category(r"\d"),
    C.CATEGORY_NOT_DIGIT: _category(r"\D"),
    C.CATEGORY_SPACE: _category(r"\s"),
    C.CATEGORY_NOT_SPACE: _category(r"\S"),
    C.CATEGORY_WORD: _category(r"\w"),
    C.CATEGORY_NOT_WORD: _category(r"\W"),
}


def _ascii_class(codes: set[int]) -> str:
    if not codes:
        # Matches nothing in an ASCII text but NUL: a superset of "nothing" that every
        # version of the crate accepts.
        return r"\x00"
    ranges: list[str] = []
    run: list[int] = []
    for c in sorted(codes):
        if run and c == run[-1] + 1:
            run.append(c)
            continue
        if run:
            ranges.append(_range(run))
        run = [c]
    ranges.append(_range(run))
    return "[" + "".join(ranges) + "]"


def _range(run: list[int]) -> str:
    return _hex(run[0]) if len(run) == 1 else f"{_hex(run[0])}-{_hex(run[-1])}"
