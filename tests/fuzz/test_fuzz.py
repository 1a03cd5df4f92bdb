"""The fuzz targets in make test, bounded: every seed of the corpus, then byte-level
mutations of the seeds under hypothesis, then (where atheris is installed) a few seconds
of coverage-guided fuzzing per target in a subprocess. ``make fuzz`` runs atheris longer.

A failure names the input: hypothesis prints the shrunk bytes, atheris writes the
``crash-*`` file under the test's temporary directory and the output shows its path.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.fuzz.targets import TARGETS, HttpFront

CORPUS = Path(__file__).parent / "corpus"
RUN_PY = Path(__file__).parent / "run.py"
REPO = Path(__file__).resolve().parents[2]
# Hypothesis inputs per target; the mutation strategy reaches most branches in these.
EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "300"))
# Seconds of atheris per target in make test (make fuzz: FUZZ_SECONDS, 60 by default).
ATHERIS_SECONDS = int(os.environ.get("FUZZ_TEST_SECONDS", "3"))
# What a target may take to start and stop around its fuzzing time (imports, servers).
ATHERIS_OVERHEAD_S = 60


def seeds(name: str) -> list[bytes]:
    return [p.read_bytes() for p in sorted((CORPUS / name).iterdir())]


@pytest.fixture(scope="module")
def http_front() -> Iterator[HttpFront]:
    front = HttpFront()
    yield front
    front.close()


def target_of(name: str, http_front: HttpFront) -> Callable[[bytes], None]:
    return http_front if name == "http_front" else TARGETS[name]


@st.composite
def mutated(draw: st.DrawFn, name: str) -> bytes:
    """A seed of ``name``'s corpus with a few random edits (flip, insert, delete, splice),
    or plain random bytes."""
    if draw(st.integers(0, 9)) == 0:
        return draw(st.binary(max_size=512))
    corpus = seeds(name)
    data = bytearray(draw(st.sampled_from(corpus)))
    for _ in range(draw(st.integers(1, 8))):
        op = draw(st.sampled_from(["flip", "insert", "delete", "splice", "repeat"]))
        at = draw(st.integers(0, len(data)))
        if op == "flip" and at < len(data):
            data[at] = draw(st.integers(0, 255))
        elif op == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=16))
        elif op == "delete":
            del data[at : at + draw(st.integers(1, 16))]
        elif op == "splice":
            other = draw(st.sampled_from(corpus))
            start = draw(st.integers(0, len(other)))
            data[at:] = other[start:]
        elif op == "repeat" and at < len(data):
            data[at:at] = data[at : at + draw(st.integers(1, 32))] * draw(st.integers(2, 50))
    return bytes(data)


@pytest.mark.parametrize("name", sorted(TARGETS))
def test_every_seed_holds_the_invariants(name: str, http_front: HttpFront) -> None:
    target = target_of(name, http_front)
    for seed in seeds(name):
        target(seed)


@pytest.mark.parametrize("name", sorted(TARGETS))
def test_mutated_seeds_hold_the_invariants(name: str, http_front: HttpFront) -> None:
    target = target_of(name, http_front)

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(data=mutated(name))
    def run(data: bytes) -> None:
        target(data)

    run()


@pytest.mark.skipif(
    importlib.util.find_spec("atheris") is None, reason="atheris is not installed here"
)
@pytest.mark.parametrize("name", sorted(TARGETS))
def test_a_few_seconds_of_coverage_guided_fuzzing_find_nothing(
    name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    work = tmp_path / "corpus"
    work.mkdir()
    done = subprocess.run(
        [sys.executable, str(RUN_PY), name, f"-max_total_time={ATHERIS_SECONDS}",
         f"-artifact_prefix={tmp_path}/", "-print_final_stats=1", str(work), str(CORPUS / name)],
        cwd=REPO, capture_output=True, text=True, timeout=ATHERIS_SECONDS + ATHERIS_OVERHEAD_S,
        check=False,
    )  # fmt: skip
    runs = re.search(r"Done (\d+) runs in (\d+) second", done.stderr)
    with capsys.disabled():
        print(f"\n  atheris {name}: {runs.group(1) if runs else '?'} runs")
    assert done.returncode == 0, done.stderr[-4000:]
    assert runs is not None and int(runs.group(1)) > 0, done.stderr[-2000:]
