"""``clawdbot dicom``: the sidecar's DICOM de-identification, on files and folders.

``clawdbot dicom deidentify IN OUT [--option ...] [--date-shift-days N] [--uid-key-file F]``
de-identifies a file, or every file under a folder (the tree is mirrored under OUT), per
DICOM PS3.15 Annex E's Basic Profile and the options named, drawing a progress bar on a
terminal and printing one report line per file (counts per action code; ``--report
FILE.jsonl`` writes them as JSON). ``clawdbot dicom inspect FILE`` lists each attribute
the profile acts on and what it would do, never a value.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, TextIO

from clawdbot_sidecar.dicom import convert as dicom_convert
from clawdbot_sidecar.dicom.pixels import burned_in_risk
from clawdbot_sidecar.dicom.profile import ALL_OPTIONS, PrivateTag, Settings, deidentify

__all__ = ["add_parser"]


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("dicom", help="de-identify DICOM files (PS3.15 Annex E, Basic Profile)")
    dsub = p.add_subparsers(dest="dicom_command", required=True)
    d = dsub.add_parser("deidentify", help="de-identify a file or a folder of files into OUT")
    d.add_argument("input", type=Path, help="a DICOM file or a folder")
    d.add_argument("output", type=Path, help="the output file (or folder, for a folder)")
    _profile_args(d)
    d.add_argument("--report", type=Path, help="write the per-file reports here (JSON lines)")
    d.set_defaults(func=_deidentify)
    i = dsub.add_parser("inspect", help="show what the profile would do to each attribute")
    i.add_argument("file", type=Path)
    _profile_args(i)
    i.set_defaults(func=_inspect)


def _profile_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--profile", choices=["basic"], default="basic")
    p.add_argument(
        "--option", action="append", default=[], choices=ALL_OPTIONS, help="a profile option"
    )
    p.add_argument("--date-shift-days", type=int, default=0)
    p.add_argument(
        "--keep-private",
        action="append",
        default=[],
        metavar="GGGG:CREATOR:EE",
        help="keep a private attribute, e.g. 0019:SIEMENS MR HEADER:08",
    )
    p.add_argument(
        "--uid-key-file",
        type=Path,
        help="key of the UID mapping (the same key maps a study's UIDs the same way across "
        "runs); default: a random key per run",
    )


def _settings(args: argparse.Namespace) -> Settings:
    key = args.uid_key_file.read_bytes().strip() if args.uid_key_file else os.urandom(32)
    keep = []
    for spec in args.keep_private:
        group, creator, element = spec.split(":", 2)
        keep.append(PrivateTag(int(group, 16), creator, int(element, 16)))
    modified = "retainLongitudinalTemporalInformationModifiedDates"
    if modified in args.option and not args.date_shift_days:
        raise SystemExit(f"--option {modified} needs a non-zero --date-shift-days")
    return Settings(
        uid_key=key,
        options=frozenset(args.option),
        date_shift_days=args.date_shift_days,
        keep_private=tuple(keep),
    )


def _files(root: Path) -> list[Path]:
    if root.is_file():
        return [root]
    return sorted(p for p in root.rglob("*") if p.is_file())


def _bar(out: TextIO, done: int, total: int, started: float) -> None:
    if not out.isatty():
        return
    width = 30
    filled = width * done // max(total, 1)
    rate = done / max(time.monotonic() - started, 1e-9)
    out.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {done}/{total} {rate:.0f} files/s")
    out.flush()


def _deidentify(args: argparse.Namespace) -> int:
    settings = _settings(args)
    files = _files(args.input)
    reports = args.report.open("w") if args.report else None
    failed = 0
    started = time.monotonic()
    for n, path in enumerate(files, 1):
        target = args.output if args.input.is_file() else args.output / path.relative_to(args.input)
        record = _one(path, target, settings)
        failed += record["status"] != "ok"
        counts = " ".join(f"{k}={v}" for k, v in sorted(record.get("actions", {}).items()))
        line = f"{path}: {record['status']} {counts}".rstrip()
        if record.get("private_removed"):
            line += f" private-removed={record['private_removed']}"
        if record.get("burned_in"):
            line += f" WARNING pixels may carry text ({record['burned_in']})"
        if sys.stderr.isatty():
            sys.stderr.write("\r\033[K")
        print(line)
        if reports is not None:
            reports.write(json.dumps(record) + "\n")
        _bar(sys.stderr, n, len(files), started)
    if sys.stderr.isatty():
        sys.stderr.write("\n")
    if reports is not None:
        reports.close()
    elapsed = time.monotonic() - started
    print(f"{len(files) - failed} of {len(files)} files de-identified in {elapsed:.2f}s")
    return 1 if failed else 0


def _one(path: Path, target: Path, settings: Settings) -> dict[str, Any]:
    data = path.read_bytes()
    record: dict[str, Any] = {"file": str(path), "sha256": hashlib.sha256(data).hexdigest()}
    try:
        ds = dicom_convert.read(data)
        burned = burned_in_risk(ds)
        out, report = dicom_convert.deidentify_bytes(data, settings)
    except dicom_convert.DicomRefused as exc:
        return record | {"status": exc.reason}
    except Exception as exc:  # one broken file does not stop the batch
        return record | {"status": f"error:{type(exc).__name__}"}
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(out)
    return record | {
        "status": "ok",
        "output": str(target),
        "actions": dict(report.counts),
        "private_removed": report.private_removed,
        "burned_in": burned,
    }


def _inspect(args: argparse.Namespace) -> int:
    ds = dicom_convert.read(args.file.read_bytes())
    report = deidentify(ds, _settings(args))
    print(f"{'ATTRIBUTE':60} {'TAG':11} {'VR':3} ACTION  RULE")
    for a in report.actions:
        tag = f"({a.tag >> 16:04X},{a.tag & 0xFFFF:04X})"
        print(f"{a.path[:60]:60} {tag:11} {a.vr:3} {a.code:7} {a.rule}")
    counts = ", ".join(f"{k}: {v}" for k, v in sorted(report.counts.items()))
    print(f"\n{len(report.actions)} attributes acted on ({counts}); every other attribute is kept")
    risk = burned_in_risk(ds)
    if risk is not None:
        print(f"pixels may carry burned-in text ({risk}): the sidecar keeps this image local")
    return 0
