"""``clawdbot dicom deidentify`` and ``inspect`` on a folder of planted files."""

from __future__ import annotations

import json
from pathlib import Path

import pydicom
import pytest

from clawdbot_cli.main import main
from clawdbot_testing.dicom import planted_file, search_encodings


def test_deidentify_a_folder_mirrors_it_and_reports_each_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src, out = tmp_path / "in", tmp_path / "out"
    (src / "series").mkdir(parents=True)
    planted = [planted_file(study_uid="1.2.826.0.1.3680043.10.999.30", instance=i) for i in (1, 2)]
    for i, p in enumerate(planted):
        (src / "series" / f"{i}.dcm").write_bytes(p.data)
    (src / "notes.txt").write_text("not dicom")
    key = tmp_path / "key"
    key.write_bytes(b"a study key")
    argv = ["dicom", "deidentify", str(src), str(out), "--uid-key-file", str(key),
            "--report", str(tmp_path / "r.jsonl")]  # fmt: skip
    assert main(argv) == 1  # the text file is not DICOM: reported, the batch goes on
    printed = capsys.readouterr().out
    assert "2 of 3 files de-identified" in printed
    records = [json.loads(line) for line in (tmp_path / "r.jsonl").read_text().splitlines()]
    assert [r["status"] for r in records].count("ok") == 2
    outputs = [(out / "series" / f"{i}.dcm").read_bytes() for i in (0, 1)]
    for p, data in zip(planted, outputs, strict=True):
        assert [k for k, v in p.values.items() if any(e in data for e in search_encodings(v))] == []
    a, b = (pydicom.dcmread(out / "series" / f"{i}.dcm") for i in (0, 1))
    assert a.StudyInstanceUID == b.StudyInstanceUID != "1.2.826.0.1.3680043.10.999.30"


def test_inspect_names_attributes_and_actions_never_values(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    p = planted_file(study_uid="1.2.826.0.1.3680043.10.999.31")
    path = tmp_path / "a.dcm"
    path.write_bytes(p.data)
    assert main(["dicom", "inspect", str(path)]) == 0
    printed = capsys.readouterr().out
    assert "PatientName" in printed and "(0010,0010)" in printed
    assert not [v for v in p.values.values() if v in printed]
