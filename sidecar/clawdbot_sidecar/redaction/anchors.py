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
