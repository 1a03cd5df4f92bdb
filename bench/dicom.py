"""DICOM de-identification next to dicognito: what each leaves behind, and files per second.

The same files go through both de-identifiers:

- ``planted``: ``--files`` CT slices of one study (``clawdbot_testing.dicom.planted_file``),
  each with a distinct value planted in every attribute of PS3.15 Annex E's table, in the
  overlay and curve groups and in two private blocks;
- ``pydicom``: the DICOM files pydicom's wheel ships (test and character-set files).

``clawdbot`` is the sidecar's de-identifier (``clawdbot_sidecar.dicom``, the Basic Profile,
no options); ``dicognito`` is the PyPI package of that name with its defaults, installed by
this script into its own virtual environment under ``.cache/bench-venvs/dicognito`` on first
use (the row is skipped when that fails). Each runs in its own process over the same files,
read from and written to a temporary folder, and times its loop alone (read, de-identify,
write), not the interpreter's start.

``left`` counts, over the planted files, the planted values still found in the output (any
of their encodings): the attributes the profile removes, empties or replaces that the tool
kept. ``left in pydicom files`` counts values of identifying attributes (the patient's name,
ID, birth date, the study's UIDs, dates, institution, physicians) of the original files
found again in the output. ``files/s`` is files de-identified per second of that loop (the
best of ``--rounds``).

    .venv/bin/python bench/dicom.py [--files 200] [--rounds 3] [--no-dicognito]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / ".cache" / "bench-venvs" / "dicognito"
STUDY = "1.2.826.0.1.3680043.10.999.100"
# Identifying attributes whose original values are looked for in the output of pydicom's files.
IDENTIFYING = (
    "PatientName", "PatientID", "PatientBirthDate", "OtherPatientIDs", "StudyInstanceUID",
    "SeriesInstanceUID", "SOPInstanceUID", "FrameOfReferenceUID", "StudyDate", "SeriesDate",
    "AcquisitionDate", "ContentDate", "InstitutionName", "InstitutionAddress",
    "ReferringPhysicianName", "PerformingPhysicianName", "OperatorsName", "StudyID",
    "AccessionNumber", "StationName", "DeviceSerialNumber",
)  # fmt: skip

# The worker each tool runs in its own interpreter: argv[1] the tool, argv[2] a JSON list of
# (input, output) pairs; prints the seconds its loop took.
WORKER = r"""
import json, sys, time
pairs = json.loads(open(sys.argv[2]).read())
tool = sys.argv[1]
import pydicom
if tool == "dicognito":
    from dicognito.anonymizer import Anonymizer
    anonymizer = Anonymizer()
    def run(src, dst):
        ds = pydicom.dcmread(src)
        anonymizer.anonymize(ds)
        ds.save_as(dst)
else:
    from clawdbot_sidecar.dicom.convert import deidentify_bytes
    from clawdbot_sidecar.dicom.profile import Settings
    settings = Settings(uid_key=b"bench key")
    def run(src, dst):
        with open(src, "rb") as f:
            data = f.read()
        out, _ = deidentify_bytes(data, settings)
        with open(dst, "wb") as f:
            f.write(out)
failed = 0
start = time.perf_counter()
for src, dst in pairs:
    try:
        run(src, dst)
    except Exception:
        failed += 1
print(json.dumps({"seconds": time.perf_counter() - start, "failed": failed}))
"""


def ensure_dicognito() -> Path | None:
    """dicognito's interpreter, installed into its venv on first use; None if that fails."""
    python = VENV / "bin" / "python"
    check = [str(python), "-c", "import dicognito"]
    if python.exists() and subprocess.run(check, capture_output=True, check=False).returncode == 0:
        return python
    print(f"dicognito: installing into {VENV.relative_to(ROOT)}", flush=True)
    try:
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
        pip = [str(VENV / "bin" / "pip"), "install", "-q", "dicognito"]
        subprocess.run(pip, check=True, timeout=900)
    except (subprocess.SubprocessError, OSError) as exc:
        print(f"dicognito: install failed ({exc}); row skipped", flush=True)
        return None
    return python


def _version(python: Path, package: str) -> str:
    code = f"import importlib.metadata as m;print(m.version('{package}'))"
    got = subprocess.run([str(python), "-c", code], capture_output=True, text=True, check=False)
    return got.stdout.strip() or "?"


def _inputs(work: Path, files: int) -> tuple[list[Path], dict[Path, dict[str, str]], list[Path]]:
    from pydicom.data import DATA_ROOT  # noqa: PLC0415 - the wheel's files, no download

    from clawdbot_testing.dicom import planted_file  # noqa: PLC0415

    planted_dir = work / "in" / "planted"
    planted_dir.mkdir(parents=True)
    planted: dict[Path, dict[str, str]] = {}
    for i in range(files):
        p = planted_file(study_uid=STUDY, instance=i + 1)
        path = planted_dir / f"{i:04d}.dcm"
        path.write_bytes(p.data)
        planted[path] = p.values
    shipped = [
        Path(f)
        for folder in ("test_files", "charset_files")
        for f in sorted((Path(DATA_ROOT) / folder).glob("*.dcm"))
        if f.read_bytes()[128:132] == b"DICM"
    ]
    return sorted(planted), planted, shipped


def _run(python: Path, tool: str, pairs: list[tuple[Path, Path]], work: Path) -> dict[str, float]:
    job = work / f"{tool}.json"
    job.write_text(json.dumps([[str(a), str(b)] for a, b in pairs]))
    script = work / "worker.py"
    script.write_text(WORKER)
    env_path = str(ROOT / "sidecar") + ":" + str(ROOT / "api")
    got = subprocess.run(
        [str(python), str(script), tool, str(job)],
        capture_output=True,
        text=True,
        check=True,
        env={"PYTHONPATH": env_path, "PATH": "/usr/bin:/bin"},
    )
    result: dict[str, float] = json.loads(got.stdout.strip().splitlines()[-1])
    return result


def _encodings(value: str) -> list[bytes]:
    from clawdbot_testing.dicom import search_encodings  # noqa: PLC0415

    return list(search_encodings(value))


def _left_planted(planted: dict[Path, dict[str, str]], out_dir: Path) -> Counter[str]:
    left: Counter[str] = Counter()
    for path, values in planted.items():
        out = out_dir / path.name
        data = out.read_bytes() if out.exists() else b""
        for keyword, value in values.items():
            if any(e in data for e in _encodings(value)):
                left[keyword] += 1
    return left


def _left_shipped(shipped: list[Path], out_dir: Path) -> Counter[str]:
    import pydicom  # noqa: PLC0415

    left: Counter[str] = Counter()
    for i, path in enumerate(shipped):
        out = out_dir / f"{i:04d}-{path.name}"
        if not out.exists():
            continue
        original = pydicom.dcmread(path)
        data = out.read_bytes()
        manufacturer = str(original.get("Manufacturer", ""))
        for keyword in IDENTIFYING:
            value = str(original.get(keyword, "") or "").strip()
            if len(value) < 3 or value in manufacturer:
                continue
            if any(e in data for e in _encodings(value)):
                left[keyword] += 1
    return left


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--files", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--no-dicognito", action="store_true")
    args = parser.parse_args()
    tools: dict[str, Path] = {"clawdbot": Path(sys.executable)}
    if not args.no_dicognito:
        python = ensure_dicognito()
        if python is not None:
            tools["dicognito"] = python
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        planted_files, planted, shipped = _inputs(work, args.files)
        rows = []
        for tool, python in tools.items():
            out_p, out_s = work / tool / "planted", work / tool / "shipped"
            out_p.mkdir(parents=True)
            out_s.mkdir(parents=True)
            pairs = [(p, out_p / p.name) for p in planted_files]
            shipped_pairs = [(p, out_s / f"{i:04d}-{p.name}") for i, p in enumerate(shipped)]
            best = min(
                _run(python, tool, pairs, work)["seconds"] for _ in range(max(args.rounds, 1))
            )
            shipped_run = min(
                (_run(python, tool, shipped_pairs, work) for _ in range(max(args.rounds, 1))),
                key=lambda r: r["seconds"],
            )
            failed = int(shipped_run["failed"])
            shipped_rate = (len(shipped_pairs) - failed) / shipped_run["seconds"]
            left = _left_planted(planted, out_p)
            left_s = _left_shipped(shipped, out_s)
            version = "dev" if tool == "clawdbot" else _version(python, "dicognito")
            rows.append((tool, version, left, left_s, len(pairs) / best, shipped_rate, failed))
    print(
        f"{args.files} planted files ({len(planted[planted_files[0]])} values each), "
        f"{len(shipped)} pydicom files\n"
    )
    print("| tool | version | attributes left (planted) | values left (pydicom files) | "
          "files/s (planted) | files/s (pydicom files) | pydicom files failed |")  # fmt: skip
    print("|---|---|---|---|---|---|---|")
    for tool, version, left, left_s, rate, shipped_rate, failed in rows:
        print(f"| {tool} | {version} | {len(left)} | {sum(left_s.values())} | {rate:.0f} | "
              f"{shipped_rate:.0f} | {failed} |")  # fmt: skip
    for tool, _, left, left_s, *_ in rows:
        print(f"\n{tool} left (planted): {', '.join(sorted(left)) or 'none'}")
        shipped_left = ", ".join(f"{k} x{v}" for k, v in sorted(left_s.items())) or "none"
        print(f"{tool} left (pydicom files): {shipped_left}")
    if len(rows) == 2:
        ours, theirs = set(rows[0][2]), set(rows[1][2])
        print(f"\nleft by dicognito only: {', '.join(sorted(theirs - ours)) or 'none'}")
        print(f"left by clawdbot only: {', '.join(sorted(ours - theirs)) or 'none'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
