"""The clawdbot command line: exit codes and messages people see."""

from __future__ import annotations

from pathlib import Path

import pytest

from clawdbot_cli.main import main

REPO = Path(__file__).resolve().parents[3]


def test_import_config_prints_manifests(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["import-config", str(REPO / "examples/seed/clawdbot-config.yaml"), "-n", "ai"])
    out = capsys.readouterr().out
    assert code == 0
    assert "kind: ModelDeployment" in out and "kind: RoutingPolicy" in out
    assert "namespace: ai" in out


def test_import_config_error_exits_1_naming_the_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "c.yaml"
    bad.write_text("models:\n  - name: m\n    path: /m\n    precision: int3\n")
    assert main(["import-config", str(bad)]) == 1
    assert f"{bad}:4: models[0].precision" in capsys.readouterr().err


def test_validate_accepts_examples_and_names_bad_fields(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    examples = sorted(str(p) for p in (REPO / "examples").glob("*.yaml"))
    assert examples, "examples/ has manifests"
    assert main(["validate", *examples]) == 0
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "apiVersion: clawdbot.io/v1alpha1\nkind: ModelDeployment\nmetadata: {name: m}\n"
        "spec:\n  model: {name: m, uri: 'file:///m'}\n  accelerator:\n    memoryFraction: 1.5\n"
    )
    assert main(["validate", str(bad)]) == 1
    assert f"{bad}:7: spec.accelerator.memoryFraction" in capsys.readouterr().err


def test_crds_check_fails_on_drift(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["crds", "--output-dir", str(tmp_path)]) == 0
    assert main(["crds", "--output-dir", str(tmp_path), "--check"]) == 0
    target = next(tmp_path.glob("*.yaml"))
    target.write_text(target.read_text() + "# edited\n")
    assert main(["crds", "--output-dir", str(tmp_path), "--check"]) == 1
    assert "run 'make crds'" in capsys.readouterr().err


def test_validate_refuses_a_redaction_the_sidecar_could_not_apply(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """What the API server's CEL can't check (Python's re) the types check, so
    ``clawdbot validate`` refuses it before anyone applies it, naming the field."""
    bad = tmp_path / "policy.yaml"
    bad.write_text(
        "apiVersion: clawdbot.io/v1alpha1\nkind: RoutingPolicy\nmetadata: {name: p}\n"
        "spec:\n  redaction:\n    custom:\n"
        "      - {name: TICKET, pattern: '(?<=a+)T-[0-9]+'}\n"  # variable-width look-behind
        "    perEntityMode: {EMIAL: mask}\n"
    )
    assert main(["validate", str(bad)]) == 1
    err = capsys.readouterr().err
    assert "spec.redaction.custom[0].pattern: custom entity 'TICKET': invalid regular" in err
    assert "look-behind requires fixed-width pattern" in err
