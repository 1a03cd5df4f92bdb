"""Run one fuzz target under atheris (coverage-guided, libFuzzer): ``make fuzz`` does.

    python tests/fuzz/run.py TARGET [libFuzzer options] [corpus directories...]

The targets and their invariants are in ``targets.py``; a finding is an uncaught
exception, which atheris reports with the input (``crash-*`` under -artifact_prefix).
"""

from __future__ import annotations

import sys
from pathlib import Path

import atheris

# The repository root, so the targets import as in the tests.
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

with atheris.instrument_imports(include=["clawdbot_api", "clawdbot_sidecar", "tests.fuzz"]):
    from tests.fuzz.targets import TARGETS


def main() -> None:
    """Fuzz the target named by the first argument; the rest go to libFuzzer."""
    if len(sys.argv) < 2 or sys.argv[1] not in TARGETS:
        sys.exit(f"usage: {sys.argv[0]} {{{','.join(TARGETS)}}} [libFuzzer options] [corpus]")
    target = TARGETS[sys.argv.pop(1)]
    atheris.Setup(sys.argv, target)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
