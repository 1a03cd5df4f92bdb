"""``clawdbot compress --repository``: a model repository in, a servable one out."""

from __future__ import annotations

import shutil
from pathlib import Path

import onnx
import openai
import pytest
from runtime_support import StartServer

from clawdbot_cli.main import main as clawdbot
from clawdbot_runtime.compress import CompressionError, compress_repository, stored_precision
from clawdbot_runtime.lm_spec import GENERATION_FILE
from clawdbot_runtime.model import MODEL_FILE
from clawdbot_testing.models.tinylm import DEMO_MODEL_NAME, build_tiny_lm


@pytest.fixture
def stored(tmp_path: Path, demo_template: Path) -> Path:
    """A repository holding the tiny model at version 1 and 3 (the server serves 3)."""
    root = tmp_path / "stored"
    shutil.copytree(demo_template, root / DEMO_MODEL_NAME)
    build_tiny_lm(root, version=3)
    (root / DEMO_MODEL_NAME / "3" / "README.txt").write_text("notes travel along\n")
    return root


@pytest.mark.parametrize(("precision", "op"), [("int8", "MatMulInteger"), ("int4", "MatMulNBits")])
def test_compresses_the_served_version_with_its_files(
    stored: Path, tmp_path: Path, precision: str, op: str
) -> None:
    out = tmp_path / "out"
    (result,) = compress_repository(stored, out, precision, model=DEMO_MODEL_NAME, eval_inputs=8)  # type: ignore[arg-type]
    folder = out / DEMO_MODEL_NAME / "3"
    assert (result.model, result.version, result.target) == (
        DEMO_MODEL_NAME,
        3,
        folder / MODEL_FILE,
    )
    assert result.report is not None and result.report.size_ratio < 0.6
    assert sorted(p.name for p in folder.iterdir()) == ["README.txt", GENERATION_FILE, MODEL_FILE]
    assert not (out / DEMO_MODEL_NAME / "1").exists()
    assert op in {n.op_type for n in onnx.load_model(str(folder / MODEL_FILE)).graph.node}
    assert stored_precision(folder / MODEL_FILE) == precision
    assert stored_precision(stored / DEMO_MODEL_NAME / "3" / MODEL_FILE) is None


def test_version_and_every_model(stored: Path, tmp_path: Path) -> None:
    build_tiny_lm(stored, name="other")
    results = compress_repository(stored, tmp_path / "a", "int8", eval_inputs=4)
    assert sorted((r.model, r.version) for r in results) == [("other", 1), (DEMO_MODEL_NAME, 3)]
    (one,) = compress_repository(
        stored, tmp_path / "b", "int8", model=DEMO_MODEL_NAME, version=1, eval_inputs=4
    )
    assert one.version == 1 and (tmp_path / "b" / DEMO_MODEL_NAME / "1" / MODEL_FILE).is_file()


def test_missing_model_or_version(stored: Path, tmp_path: Path) -> None:
    with pytest.raises(CompressionError, match=r"model 'nope' has no <version>/model\.onnx"):
        compress_repository(stored, tmp_path / "o", "int8", model="nope")
    with pytest.raises(CompressionError, match=r"has no version 2 \(versions: 1, 3\)"):
        compress_repository(stored, tmp_path / "o", "int8", model=DEMO_MODEL_NAME, version=2)
    with pytest.raises(CompressionError, match="not a model repository"):
        compress_repository(tmp_path / "absent", tmp_path / "o", "int8")


def test_keep_quantized_copies_a_model_compressed_ahead_of_time(
    stored: Path, tmp_path: Path
) -> None:
    first = tmp_path / "int8"
    compress_repository(stored, first, "int8", model=DEMO_MODEL_NAME, eval_inputs=4)
    # Asked for int4 of an int8 repository: served as stored, not quantized twice.
    (again,) = compress_repository(
        first, tmp_path / "again", "int4", model=DEMO_MODEL_NAME, keep_quantized=True
    )
    assert again.report is None and again.stored == "int8"
    assert "copied as stored" in "\n".join(again.lines())
    model = DEMO_MODEL_NAME + "/3/" + MODEL_FILE
    assert (tmp_path / "again" / model).read_bytes() == (first / model).read_bytes()


async def test_cli_output_loads_and_serves(
    stored: Path, tmp_path: Path, start_server: StartServer, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "served"
    argv = [
        "compress", str(stored), str(out), "--repository", "--model", DEMO_MODEL_NAME,
        "--precision", "int4", "--keep-quantized", "--eval-inputs", "8",
    ]  # fmt: skip
    assert clawdbot(argv) == 0
    printed = capsys.readouterr().out
    assert f"{DEMO_MODEL_NAME}/3 -> " in printed and "precision: int4" in printed

    server = await start_server(out, model=DEMO_MODEL_NAME)
    served = server.manager.get(DEMO_MODEL_NAME)
    assert served.model.version == 3 and served.model.lm is not None
    async with openai.AsyncOpenAI(
        base_url=f"http://127.0.0.1:{server.http_port}/v1", api_key="unused", max_retries=0
    ) as client:
        reply = await client.chat.completions.create(
            model=DEMO_MODEL_NAME,
            messages=[{"role": "user", "content": "hello"}],
            max_tokens=16,
            temperature=0,
        )
    assert reply.choices[0].message.content


def test_cli_flags_need_repository(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = clawdbot(["compress", "a.onnx", "b.onnx", "--precision", "int8", "--model", "m"])
    assert code == 2
    assert "--model and --version need --repository" in capsys.readouterr().err


def test_cli_keep_quantized_single_file(
    stored: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    compress_repository(stored, tmp_path / "q", "int8", model=DEMO_MODEL_NAME, eval_inputs=4)
    source = tmp_path / "q" / DEMO_MODEL_NAME / "3" / MODEL_FILE
    target = tmp_path / "copy" / MODEL_FILE
    argv = ["compress", str(source), str(target), "--precision", "int8", "--keep-quantized"]
    assert clawdbot(argv) == 0
    assert "already quantized (int8); copied as stored" in capsys.readouterr().out
    assert target.read_bytes() == source.read_bytes()
