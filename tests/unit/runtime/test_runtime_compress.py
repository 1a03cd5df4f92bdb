"""Compression: int8 dynamic and int4 weight-only quantization, and ``clawdbot compress``."""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest
from onnx import TensorProto, helper
from runtime_support import write_mlp

from clawdbot_cli.main import main as clawdbot
from clawdbot_runtime.compress import CompressionError, compress
from clawdbot_runtime.model import MODEL_FILE


def test_int8_shrinks_the_demo_model_and_keeps_its_predictions(
    demo_template: Path, tmp_path: Path
) -> None:
    target = tmp_path / "tiny-chat" / "2" / MODEL_FILE
    report = compress(demo_template / "1" / MODEL_FILE, target, "int8", eval_inputs=32)
    assert report.size_ratio < 0.5
    (logits,) = report.diffs
    assert logits.relative < 0.05
    assert logits.top1_agreement is not None and logits.top1_agreement >= 0.9
    # The generation spec travels along, so the new folder is a servable version.
    assert (target.parent / "generation.json").is_file()
    ops = {n.op_type for n in onnx.load_model(str(target)).graph.node}
    assert "MatMulInteger" in ops


def test_int4_packs_matmul_weights(tmp_path: Path) -> None:
    source = write_mlp(tmp_path / "mlp.onnx", width=128)
    report = compress(source, tmp_path / "mlp-int4.onnx", "int4", eval_inputs=64)
    assert report.quantized_nodes == 2
    assert report.size_ratio < 0.25
    (y,) = report.diffs
    assert y.relative < 0.2
    ops = {n.op_type for n in onnx.load_model(str(tmp_path / "mlp-int4.onnx")).graph.node}
    assert ops == {"MatMulNBits", "Relu"}


def test_int4_refuses_a_model_without_weights(tmp_path: Path) -> None:
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])],
        "relu",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save_model(model, str(tmp_path / "relu.onnx"))
    with pytest.raises(CompressionError, match="does not allow it"):
        compress(tmp_path / "relu.onnx", tmp_path / "out.onnx", "int4")


def test_cli_prints_the_report(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = write_mlp(tmp_path / "mlp.onnx")
    target = tmp_path / "mlp-int8.onnx"
    code = clawdbot(
        ["compress", str(source), str(target), "--precision", "int8", "--eval-inputs", "16"]
    )
    assert code == 0
    out = capsys.readouterr().out
    assert "size: " in out and "smaller" in out
    assert "output difference on 16 held-out inputs" in out
    assert target.stat().st_size < source.stat().st_size


def test_cli_reports_a_broken_model(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "broken.onnx").write_bytes(b"not a model")
    code = clawdbot(
        ["compress", str(tmp_path / "broken.onnx"), str(tmp_path / "o.onnx"), "--precision", "int8"]
    )
    assert code == 1
    assert "not a readable ONNX model" in capsys.readouterr().err
