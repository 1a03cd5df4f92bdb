"""The native scanner of the fast tier (`native/`, a Rust extension), where it is installed.

It tells in one call, for every detector, where the detector's lookaround-free
over-approximation first matches (`anchors.approximate`): detectors that can't match are
skipped and the others start their search there. The pure-Python path (needles, digits,
search leads) is the reference and runs wherever the extension is not installed; both give
the same findings, which the property tests check. Which path runs is logged when the
sidecar starts and exported as a metric.
"""

from __future__ import annotations

import os
from importlib import import_module
from importlib.util import find_spec
from typing import Final, Protocol, cast

__all__ = ["ENV", "MODULE", "Scanner", "fast_tier_path", "scanner_type"]

MODULE: Final = "clawdbot_fastscan"
# "0" runs the pure-Python path although the extension is installed (to compare the two).
ENV: Final = "CLAWDBOT_REDACTION_NATIVE"


class Scanner(Protocol):
    """What the extension's `Scanner` offers."""

    def first_starts(self, text: str) -> list[int]:
        """Per detector: where its approximation first matches (characters), -1 for
        nowhere, 0 for a detector without an approximation."""
        ...

    def refused(self) -> list[int]:
        """Detectors whose approximation the crate could not compile (searched from the
        start of every text instead)."""
        ...

    def __len__(self) -> int: ...


class ScannerType(Protocol):
    def __call__(self, unicode: list[str | None], ascii: list[str | None]) -> Scanner: ...


def _load() -> tuple[ScannerType | None, str]:
    if os.environ.get(ENV, "1") == "0":
        return None, f"python ({ENV}=0)"
    if find_spec(MODULE) is None:
        return None, "python (native scanner not installed)"
    # Installed but broken is an error, not a quiet fallback.
    module = import_module(MODULE)
    return cast(ScannerType, module.Scanner), f"native ({MODULE} {module.__version__})"


_SCANNER, _PATH = _load()


def scanner_type() -> ScannerType | None:
    """The extension's Scanner class, or None where the pure-Python path runs."""
    return _SCANNER


def fast_tier_path() -> str:
    """Which path the fast tier runs in this process, in words (for logs and metrics)."""
    return _PATH
