"""Compression benchmark: size ratio and output change per precision, on two kinds of model.

- ``tiny-chat``: the project's demo language model (an embedding table read by Gather, a
  small projection MatMul, n-gram lookup tables that no quantizer touches);
- ``mlp``: a 4-layer, 1024-wide dense network whose size is almost all MatMul weights,
  the shape of the bulk of a transformer.

Each model is compressed with ``clawdbot compress``'s code path (int8 dynamic, int4
weight-only) and compared with the original on the same held-out inputs; the CPU time of
one inference (8 rows) is measured for all three, in a bounded loop.

    .venv/bin/python bench/compression.py [--eval-inputs 256]
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from clawdbot_runtime.compress import PRECISIONS, compress, held_out_inputs
from clawdbot_runtime.lm_spec import LanguageModelSpec
from clawdbot_runtime.model import MODEL_FILE
from clawdbot_testing.models.tinylm import build_tiny_lm

TIMED_RUNS = 200


def build_mlp(path: Path, width: int = 1024, layers: int = 4) -> Path:
    """A ReLU MLP [batch, width] -> [batch, 10] with seeded weights, written to ``path``."""
    rng = np.random.default_rng(0)
    nodes, weights, current = [], [], "x"
    for i in range(layers):
        out = 10 if i == layers - 1 else width
        w = (rng.standard_normal((width, out)) / math.sqrt(width)).astype(np.float32)
        weights.append(numpy_helper.from_array(w, f"w{i}"))
        nodes.append(helper.make_node("MatMul", [current, f"w{i}"], [f"h{i}"]))
        current = f"h{i}"
        if i < layers - 1:
            nodes.append(helper.make_node("Relu", [current], [f"a{i}"]))
            current = f"a{i}"
    nodes.append(helper.make_node("Identity", [current], ["y"]))
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", width])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 10])],
        initializer=weights,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save_model(model, str(path))
    return path


def run_ms(path: Path, feeds: dict[str, np.ndarray]) -> float:
    """Mean milliseconds of one run on ``feeds`` (one intra-op thread)."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    session.run(None, feeds)
    started = time.perf_counter()
    for _ in range(TIMED_RUNS):
        session.run(None, feeds)
    return (time.perf_counter() - started) / TIMED_RUNS * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--eval-inputs", type=int, default=256, help="held-out inputs")
    args = parser.parse_args()
    header = (
        f"{'model':<10} {'precision':<9} {'bytes':>11} {'size':>7} {'saved':>7} "
        f"{'mean rel diff':>13} {'max |diff|':>10} {'top-1 same':>10} {'ms/run(8)':>9}"
    )
    print(header)
    print("-" * len(header))
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        sources = {
            "tiny-chat": build_tiny_lm(root / "repo") / MODEL_FILE,
            "mlp": build_mlp(root / "mlp" / MODEL_FILE),
        }
        for name, source in sources.items():
            reference = ort.InferenceSession(str(source), providers=["CPUExecutionProvider"])
            lm = LanguageModelSpec.read(source.parent)
            timing_feeds = held_out_inputs(reference, 8, seed=99, lm=lm)
            size = source.stat().st_size
            print(
                f"{name:<10} {'fp32':<9} {size:>11,} {'100%':>7} {'':>7} {'':>13} {'':>10} "
                f"{'':>10} {run_ms(source, timing_feeds):>9.3f}"
            )
            for precision in PRECISIONS:
                target = root / f"{name}-{precision}" / MODEL_FILE
                report = compress(source, target, precision, eval_inputs=args.eval_inputs, seed=1)
                (diff,) = report.diffs
                top1 = "" if diff.top1_agreement is None else f"{diff.top1_agreement:.1%}"
                print(
                    f"{'':<10} {precision:<9} {report.size_after:>11,} "
                    f"{report.size_ratio:>7.1%} {1 - report.size_ratio:>7.1%} "
                    f"{diff.relative:>13.2%} {diff.max_abs:>10.3g} {top1:>10} "
                    f"{run_ms(target, timing_feeds):>9.3f}"
                )
    print(
        f"differences are over {args.eval_inputs} held-out inputs: token windows the language "
        "model wrote itself, standard-normal rows for the MLP"
    )


if __name__ == "__main__":
    main()
