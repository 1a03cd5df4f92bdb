"""The ``clawdbot-runtime`` command line: start-up refusals and flags; the demo models' command."""

from __future__ import annotations

import socket
from pathlib import Path

import onnxruntime as ort
import pytest

from clawdbot_runtime.config import RuntimeConfig
from clawdbot_runtime.main import EXIT_CONFIG, main
from clawdbot_runtime.model import MODEL_FILE
from clawdbot_testing.models.cli import main as demo_model


def test_serve_refuses_a_missing_gpu_provider(
    repo: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # This environment's onnxruntime is the CPU build: the real start-up path must refuse.
    assert "CUDAExecutionProvider" not in ort.get_available_providers()
    code = main(
        ["serve", "--model-repository", str(repo), "--accelerator", "nvidia", "--http-port", "0"]
    )
    assert code == EXIT_CONFIG
    err = capsys.readouterr().err
    assert "accelerator 'nvidia' needs CUDAExecutionProvider" in err


def test_serve_rejects_bad_flag_values(repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["serve", "--model-repository", str(repo), "--max-batch-size", "0"])
    assert code == EXIT_CONFIG
    assert "--max-batch-size" in capsys.readouterr().err


def test_serve_reports_a_taken_port(repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        code = main(
            ["serve", "--model-repository", str(repo), "--host", "127.0.0.1", "--http-port", port]
        )
    assert code == EXIT_CONFIG
    assert "error: cannot listen on 127.0.0.1" in capsys.readouterr().err


def test_build_demo_model_is_deterministic(tmp_path: Path) -> None:
    for name in ("a", "b"):
        assert demo_model([str(tmp_path / name)]) == 0
    first, second = tmp_path / "a/tiny-chat/1", tmp_path / "b/tiny-chat/1"
    assert (first / MODEL_FILE).read_bytes() == (second / MODEL_FILE).read_bytes()
    assert (first / "generation.json").read_text() == (second / "generation.json").read_text()
    assert (first / MODEL_FILE).stat().st_size < 4 * 1024 * 1024


def test_flags_override_the_environment() -> None:
    environ = {"CLAWDBOT_RUNTIME_HTTP_PORT": "7000", "CLAWDBOT_RUNTIME_CPU_THREADS": "2"}
    config = RuntimeConfig.load({"model_repository": "m", "http_port": 9000}, environ)
    assert (config.http_port, config.cpu_threads, config.grpc_port) == (9000, 2, 8001)
