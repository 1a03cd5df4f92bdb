"""The API reference is generated from the CRD schema and kept in sync."""

from __future__ import annotations

from pathlib import Path

from clawdbot_api import docgen

REPO = Path(__file__).resolve().parents[3]


def test_reference_lists_fields_defaults_constraints_and_rules() -> None:
    pages = docgen.files()
    md = pages["modeldeployment.md"]
    assert "| `spec.accelerator.memoryFraction` | number | `0.9` | > 0; <= 1 |" in md
    assert "`spec.runtime`" in md and "one of `vllm`, `onnx`" in md
    assert "minReplicas must not exceed maxReplicas" in md  # a CEL rule
    assert "## status" in md
    assert "`spec.cache.redisURL`" in pages["routingpolicy.md"]


def test_committed_reference_matches_the_types() -> None:
    assert docgen.drift(REPO / "docs" / "reference") == []


def test_drift_is_detected(tmp_path: Path) -> None:
    docgen.generate(tmp_path)
    page = tmp_path / "routingpolicy.md"
    page.write_text(page.read_text().replace("Short names", "Nick names"))
    assert docgen.drift(tmp_path) == [str(page)]
