"""Print the third-party requirements of the ``clawdbot`` distribution for some extras.

    python3 requirements.py [PYPROJECT] EXTRA[,EXTRA...]...

The image builds install these first, from pyproject.toml alone, in a layer of their own: a
change to the source then rebuilds only the small layer that installs the project's wheel.
Self-references (``clawdbot[runtime]`` inside another extra) are followed.
"""

from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path

SELF = re.compile(r"^clawdbot\[([^\]]+)\]\s*$")


def requirements(pyproject: Path, extras: list[str]) -> list[str]:
    project = tomllib.loads(pyproject.read_text())["project"]
    optional: dict[str, list[str]] = project.get("optional-dependencies", {})
    out: list[str] = list(project.get("dependencies", []))
    seen: set[str] = set()
    todo = list(extras)
    while todo:
        extra = todo.pop()
        if extra in seen:
            continue
        if extra not in optional:
            raise SystemExit(f"requirements.py: no extra {extra!r} in {pyproject}")
        seen.add(extra)
        for req in optional[extra]:
            match = SELF.match(req)
            if match:
                todo += [e.strip() for e in match.group(1).split(",")]
            elif req not in out:
                out.append(req)
    return out


def main(argv: list[str]) -> int:
    path = Path("pyproject.toml")
    if argv and argv[0].endswith(".toml"):
        path, argv = Path(argv[0]), argv[1:]
    extras = [e for arg in argv for e in arg.split(",") if e]
    print("\n".join(requirements(path, extras)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
