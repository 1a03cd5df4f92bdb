"""Model compression: int8 dynamic or int4 weight-only quantization, with its cost measured.

``int8`` is onnxruntime's dynamic quantization: weights of MatMul/Gather/Conv... stored as
8-bit integers, activations quantized on the fly, no calibration data needed.

``int4`` is weight-only, block-wise (``block_size`` values share one scale) and symmetric:
constant MatMul weights become the ``com.microsoft.MatMulNBits`` operator and constant
Gather tables (embeddings) ``GatherBlockQuantized``; activations stay in float. The packing
is done here with numpy rather than by onnxruntime's ``MatMulNBitsQuantizer``, because that
class needs the ``onnx-ir`` package, which the project does not depend on; the operators,
and so the kernels that run the result, are onnxruntime's own.

Every compressed model is checked the same way: the original and the compressed model run
on the same held-out inputs and the report gives the size change and how far the outputs
moved (largest and mean absolute difference, and for score-like outputs how often the
top-1 entry is unchanged).

:func:`compress_repository` works on a model repository
(``<repository>/<model>/<version>/model.onnx``, see :mod:`clawdbot_runtime.repository`): it
writes the served (highest) version of each model, or of the one named, into a second
repository under the same name and version, with the version folder's other files
(``generation.json``...) copied alongside, so the result is servable as it is. The operator
runs it as an init container when a ModelDeployment asks the ONNX runtime for int8 or int4.
With ``keep_quantized`` a model that already holds quantized operators is copied unchanged
instead of being quantized a second time.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper
from onnxruntime.quantization import QuantType, quantize_dynamic

from clawdbot_runtime.lm_spec import GENERATION_FILE, LanguageModelSpec
from clawdbot_runtime.model import MODEL_FILE
from clawdbot_runtime.repository import scan_models, scan_versions
from clawdbot_runtime.tensors import NUMPY_DTYPES, Array, datatype_from_onnx

Precision = Literal["int8", "int4"]
PRECISIONS: tuple[Precision, ...] = ("int8", "int4")

# 32 values per scale is the common int4 choice (GPTQ/AWQ exports, onnxruntime's default):
# small enough to track outliers, large enough that scales cost ~1 bit per weight.
INT4_BLOCK_SIZE = 32
# Integer inputs of models that are not language models are drawn from [0, this): small
# non-negative ids, as index-like inputs usually are.
_INT_INPUT_RANGE = 100
_MS_DOMAIN = "com.microsoft"
# Operators that only appear in a quantized graph, and the precision they stand for.
_QUANTIZED_OPS: dict[str, Precision] = {
    "MatMulNBits": "int4",
    "GatherBlockQuantized": "int4",
    "MatMulInteger": "int8",
    "DynamicQuantizeLinear": "int8",
    "DynamicQuantizeMatMul": "int8",
    "QLinearMatMul": "int8",
    "ConvInteger": "int8",
    "QLinearConv": "int8",
    "QGemm": "int8",
    "QAttention": "int8",
}


class CompressionError(Exception):
    """The model cannot be compressed as asked; the message says why."""


@dataclass(frozen=True)
class OutputDiff:
    """How far one output moved on the held-out inputs."""

    name: str
    max_abs: float
    mean_abs: float
    # mean |compressed - original| / mean |original|: comparable across outputs.
    relative: float
    # Share of rows whose largest entry (argmax over the last axis) is unchanged; None for
    # outputs where that means nothing (rank < 2, integer outputs).
    top1_agreement: float | None


@dataclass(frozen=True)
class CompressionReport:
    """Size before/after and output change of one compression."""

    precision: Precision
    size_before: int
    size_after: int
    quantized_nodes: int
    eval_inputs: int
    diffs: list[OutputDiff]

    @property
    def size_ratio(self) -> float:
        """Compressed size over original size (0.25 = four times smaller)."""
        return self.size_after / self.size_before

    def lines(self) -> list[str]:
        """The report as lines of text for a terminal."""
        out = [
            f"precision: {self.precision} ({self.quantized_nodes} nodes quantized)",
            f"size: {self.size_before:,} -> {self.size_after:,} bytes "
            f"({self.size_ratio:.1%} of the original, {1 - self.size_ratio:.1%} smaller)",
            f"output difference on {self.eval_inputs} held-out inputs:",
        ]
        for d in self.diffs:
            line = (
                f"  {d.name}: max |diff| {d.max_abs:.4g}, mean |diff| {d.mean_abs:.4g} "
                f"(relative {d.relative:.2%})"
            )
            if d.top1_agreement is not None:
                line += f", top-1 agreement {d.top1_agreement:.1%}"
            out.append(line)
        return out


def compress(
    source: Path,
    target: Path,
    precision: Precision,
    *,
    eval_inputs: int = 64,
    seed: int = 0,
) -> CompressionReport:
    """Quantize ``source`` into ``target`` and measure the size and output change.

    A ``generation.json`` next to ``source`` is copied next to ``target`` (unless one is
    there), so compressing into a new version folder of a repository makes it servable.
    """
    if eval_inputs < 1:
        raise CompressionError("--eval-inputs must be at least 1")
    original = _load(source)
    target.parent.mkdir(parents=True, exist_ok=True)
    if precision == "int8":
        count = _quantize_int8(source, target)
    elif precision == "int4":
        quantized, count = quantize_int4(original)
        onnx.save_model(quantized, str(target))
    else:
        raise CompressionError(f"unknown precision {precision!r}; choose one of {PRECISIONS}")
    spec_file = source.parent / GENERATION_FILE
    if spec_file.is_file() and not (target.parent / GENERATION_FILE).exists():
        shutil.copyfile(spec_file, target.parent / GENERATION_FILE)
    reference = _session(source, "original")
    compressed = _session(target, f"{precision} model")
    lm = LanguageModelSpec.read(source.parent) if spec_file.is_file() else None
    feeds = held_out_inputs(reference, eval_inputs, seed=seed, lm=lm)
    return CompressionReport(
        precision=precision,
        size_before=source.stat().st_size,
        size_after=target.stat().st_size,
        quantized_nodes=count,
        eval_inputs=eval_inputs,
        diffs=compare(reference, compressed, feeds),
    )


def stored_precision(path: Path) -> Precision | None:
    """int4 or int8 when the model at ``path`` already holds quantized operators, else None.

    Only the graph is read (no external weight files), so this is cheap on large models.
    """
    try:
        model = onnx.load_model(str(path), load_external_data=False)
    except Exception as exc:  # protobuf's DecodeError, OSError...
        raise CompressionError(f"{path}: not a readable ONNX model: {exc}") from exc
    found = {_QUANTIZED_OPS[n.op_type] for n in model.graph.node if n.op_type in _QUANTIZED_OPS}
    if "int4" in found:
        return "int4"
    return "int8" if found else None


@dataclass(frozen=True)
class VersionResult:
    """What :func:`compress_repository` did with one model version."""

    model: str
    version: int
    target: Path
    """The written ``model.onnx``."""
    report: CompressionReport | None
    """None when the model was copied as stored (already quantized)."""
    stored: Precision | None
    """The quantized precision the source already had; None for a float model."""

    def lines(self) -> list[str]:
        """The outcome as lines of text for a terminal (or a container log)."""
        head = f"{self.model}/{self.version} -> {self.target}"
        if self.report is None:
            return [f"{head}", f"already quantized ({self.stored}); copied as stored"]
        return [head, *self.report.lines()]


def compress_repository(
    source: Path,
    target: Path,
    precision: Precision,
    *,
    model: str | None = None,
    version: int | None = None,
    keep_quantized: bool = False,
    eval_inputs: int = 64,
    seed: int = 0,
) -> list[VersionResult]:
    """Compress model versions of the repository ``source`` into the repository ``target``.

    ``model`` picks one model (default: every model folder); ``version`` one version
    (default: the highest, the one a server serves). Each result is written to
    ``<target>/<model>/<version>/``: the compressed ``model.onnx`` and a copy of every other
    file of the source version folder. With ``keep_quantized`` a source model that is already
    quantized (int8 or int4 operators) is copied unchanged.
    """
    if not source.is_dir():
        raise CompressionError(f"{source}: not a model repository (no such folder)")
    names = [model] if model is not None else scan_models(source)
    if not names:
        raise CompressionError(f"{source}: the repository holds no model folders")
    results: list[VersionResult] = []
    for name in names:
        versions = scan_versions(source / name)
        if not versions:
            raise CompressionError(
                f"{source}: model '{name}' has no <version>/{MODEL_FILE} in the repository"
            )
        chosen = max(versions) if version is None else version
        if chosen not in versions:
            raise CompressionError(
                f"{source}: model '{name}' has no version {chosen} "
                f"(versions: {', '.join(map(str, sorted(versions)))})"
            )
        results.append(
            _compress_version(
                versions[chosen],
                target / name / str(chosen),
                precision,
                name=name,
                version=chosen,
                keep_quantized=keep_quantized,
                eval_inputs=eval_inputs,
                seed=seed,
            )
        )
    return results


def _compress_version(
    source: Path,
    target: Path,
    precision: Precision,
    *,
    name: str,
    version: int,
    keep_quantized: bool,
    eval_inputs: int,
    seed: int,
) -> VersionResult:
    target.mkdir(parents=True, exist_ok=True)
    # Sidecar files first (generation.json, tokenizer files...), so the version is complete.
    for entry in source.iterdir():
        if entry.name == MODEL_FILE:
            continue
        if entry.is_dir():
            shutil.copytree(entry, target / entry.name, dirs_exist_ok=True)
        else:
            shutil.copyfile(entry, target / entry.name)
    model_file = source / MODEL_FILE
    stored = stored_precision(model_file)
    if stored is not None and keep_quantized:
        shutil.copyfile(model_file, target / MODEL_FILE)
        return VersionResult(name, version, target / MODEL_FILE, None, stored)
    report = compress(
        model_file, target / MODEL_FILE, precision, eval_inputs=eval_inputs, seed=seed
    )
    return VersionResult(name, version, target / MODEL_FILE, report, stored)


def _load(path: Path) -> onnx.ModelProto:
    try:
        return onnx.load_model(str(path))
    except Exception as exc:  # protobuf's DecodeError, OSError...
        raise CompressionError(f"{path}: not a readable ONNX model: {exc}") from exc


def _session(path: Path, what: str) -> ort.InferenceSession:
    try:
        return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as exc:
        # A build without the com.microsoft int4 kernels fails here, naming the operator.
        raise CompressionError(f"onnxruntime cannot load the {what} ({path}): {exc}") from exc


@contextlib.contextmanager
def _quiet_root_logger() -> Iterator[None]:
    """onnxruntime's quantizer logs advice on the root logger; keep the report readable."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def _quantize_int8(source: Path, target: Path) -> int:
    with tempfile.TemporaryDirectory() as scratch, _quiet_root_logger():
        # The quantizer writes intermediate files next to its working copy; keep them out
        # of the user's folders.
        work = Path(scratch) / "model.onnx"
        shutil.copyfile(source, work)
        try:
            quantize_dynamic(work, target, weight_type=QuantType.QInt8)
        except Exception as exc:  # the quantizer raises ValueError, KeyError... on odd graphs
            raise CompressionError(f"int8 dynamic quantization failed: {exc}") from exc
    quantized = onnx.load_model(str(target), load_external_data=False)
    # The quantizer stores each weight it converted as "<weight>_quantized".
    count = sum(1 for t in quantized.graph.initializer if t.name.endswith("_quantized"))
    if count == 0:
        raise CompressionError(
            "int8 dynamic quantization found nothing to quantize (no MatMul, Gather, Conv... "
            "with constant float weights)"
        )
    return count


def _int4_blocks(weights: Array, block_size: int) -> tuple[Array, Array]:
    """Symmetric block-wise int4 over the last axis: values in [-8, 7] and one scale per block.

    The last axis is zero-padded to whole blocks; returns (q [..., blocks, block_size],
    scales [..., blocks]).
    """
    rows, length = weights.shape
    blocks = -(-length // block_size)
    padded = np.zeros((rows, blocks * block_size), dtype=np.float32)
    padded[:, :length] = weights
    grouped = padded.reshape(rows, blocks, block_size)
    scales = np.abs(grouped).max(axis=2) / 7.0
    safe = np.where(scales == 0, 1.0, scales)
    q = np.clip(np.rint(grouped / safe[..., None]), -8, 7).astype(np.int8)
    return q, scales.astype(np.float32)


def _matmul_nbits(node: onnx.NodeProto, weight: Array, block_size: int) -> tuple[Any, ...]:
    """MatMulNBits replacing ``node`` (A @ W, W [K, N]), and its new initializers."""
    k, n = weight.shape
    q, scales = _int4_blocks(weight.T, block_size)  # blocks run along K, per output column
    # Stored unsigned with the implicit zero point 8; two values per byte, low nibble first.
    u = (q.astype(np.int16) + 8).astype(np.uint8).reshape(n, q.shape[1], block_size // 2, 2)
    packed = (u[..., 0] | (u[..., 1] << 4)).astype(np.uint8)
    base = node.input[1]
    b = numpy_helper.from_array(packed, f"{base}_int4")
    s = numpy_helper.from_array(scales.reshape(-1), f"{base}_int4_scales")
    new = helper.make_node(
        "MatMulNBits",
        [node.input[0], b.name, s.name],
        list(node.output),
        name=(node.name or base) + "_int4",
        domain=_MS_DOMAIN,
        K=k,
        N=n,
        bits=4,
        block_size=block_size,
    )
    return new, b, s


def _gather_block_quantized(node: onnx.NodeProto, table: Array, block_size: int) -> tuple[Any, ...]:
    """GatherBlockQuantized replacing a row lookup in ``table`` [rows, dim], and initializers."""
    rows, dim = table.shape
    q, scales = _int4_blocks(table, block_size)
    values = q.reshape(rows, -1)[:, :dim]
    scale_cols = scales.shape[1]
    base = node.input[0]
    data = helper.make_tensor(
        f"{base}_int4", TensorProto.INT4, [rows, dim], values.ravel().tolist()
    )
    s = numpy_helper.from_array(scales.reshape(rows, scale_cols), f"{base}_int4_scales")
    new = helper.make_node(
        "GatherBlockQuantized",
        [data.name, node.input[1], s.name],
        list(node.output),
        name=(node.name or base) + "_int4",
        domain=_MS_DOMAIN,
        gather_axis=0,
        quantize_axis=1,
        block_size=block_size,
    )
    return new, data, s


def quantize_int4(
    model: onnx.ModelProto, block_size: int = INT4_BLOCK_SIZE
) -> tuple[onnx.ModelProto, int]:
    """Weight-only int4 copy of ``model`` and the number of nodes replaced.

    Acts on MatMuls whose second input is a constant 2-D float32 weight and on axis-0
    Gathers from a constant 2-D float32 table; everything else is left alone. Raises
    CompressionError when the model has neither, as int4 weight-only has nothing to do then.
    """
    model = onnx.ModelProto.FromString(model.SerializeToString())
    graph = model.graph
    weights = {t.name: t for t in graph.initializer}
    consumers: dict[str, int] = {}
    for node in graph.node:
        for name in node.input:
            consumers[name] = consumers.get(name, 0) + 1

    def constant(name: str) -> Array | None:
        tensor = weights.get(name)
        # A weight shared by several nodes stays float: replacing it once would keep both.
        if tensor is None or tensor.data_type != TensorProto.FLOAT or consumers[name] != 1:
            return None
        array = numpy_helper.to_array(tensor)
        return array if array.ndim == 2 else None

    nodes: list[onnx.NodeProto] = []
    replaced: set[str] = set()
    for node in graph.node:
        found = _int4_replacement(node, constant, block_size)
        if found is None:
            nodes.append(node)
            continue
        new, weight_name = found
        replaced.add(weight_name)
        nodes.append(new[0])
        graph.initializer.extend(new[1:])
    if not replaced:
        raise CompressionError(
            "int4 weight-only quantization found no MatMul with a constant float weight "
            f"(at least {block_size} rows) and no Gather from a constant float table; "
            "this model does not allow it (try --precision int8)"
        )
    del graph.node[:]
    graph.node.extend(nodes)
    kept = [t for t in graph.initializer if t.name not in replaced]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    if not any(o.domain == _MS_DOMAIN for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid(_MS_DOMAIN, 1))
    return model, len(replaced)


def _int4_replacement(
    node: onnx.NodeProto, constant: Callable[[str], Array | None], block_size: int
) -> tuple[tuple[Any, ...], str] | None:
    """The int4 nodes and initializers replacing ``node`` and the weight it replaces, or
    None for a node int4 weight-only quantization leaves alone."""
    if node.domain not in ("", "ai.onnx"):
        return None
    if node.op_type == "MatMul":
        weight = constant(node.input[1])
        if weight is not None and weight.shape[0] >= block_size:
            return _matmul_nbits(node, weight, block_size), node.input[1]
    elif node.op_type == "Gather":
        axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
        table = constant(node.input[0])
        if table is not None and axis == 0:
            return _gather_block_quantized(node, table, block_size), node.input[0]
    return None


def held_out_inputs(
    session: ort.InferenceSession, count: int, *, seed: int, lm: LanguageModelSpec | None
) -> dict[str, Array]:
    """``count`` rows of inputs for comparing two versions of the model behind ``session``.

    A language model gets token windows it produced itself (sampled from its own next-token
    distribution, so the contexts are ones it meets when generating); other models get
    standard-normal floats and small non-negative integers. Dynamic leading dimensions take
    ``count`` rows, other dynamic dimensions 1.
    """
    rng = np.random.default_rng(seed)
    if lm is not None:
        return {lm.input_name: _sampled_windows(session, lm, count, rng)}
    feeds: dict[str, Array] = {}
    for arg in session.get_inputs():
        dims = [d if isinstance(d, int) and d > 0 else None for d in arg.shape]
        shape = [count if i == 0 and d is None else (d or 1) for i, d in enumerate(dims)]
        dtype = NUMPY_DTYPES[datatype_from_onnx(arg.type)]
        if dtype.kind == "f":
            feeds[arg.name] = rng.standard_normal(shape).astype(dtype)
        elif dtype.kind in ("i", "u"):
            feeds[arg.name] = rng.integers(0, _INT_INPUT_RANGE, size=shape).astype(dtype)
        elif dtype.kind == "b":
            feeds[arg.name] = rng.integers(0, 2, size=shape).astype(bool)
        else:
            raise CompressionError(f"input '{arg.name}' ({arg.type}): cannot generate values")
    return feeds


def _sampled_windows(
    session: ort.InferenceSession, lm: LanguageModelSpec, count: int, rng: np.random.Generator
) -> Array:
    """Let the model write ``count`` texts; the final context window of each is one input."""
    width = lm.context_length
    ids = np.full((count, width), lm.bos_token_id, dtype=np.int64)
    # Writing 2 windows' worth fills each window with generated text, not BOS padding.
    for _ in range(2 * width):
        logits = session.run([lm.output_name], {lm.input_name: ids[:, -width:]})[0]
        if logits.ndim == 3:
            logits = logits[:, -1, :]
        scores = logits.astype(np.float64)
        probs = np.exp(scores - scores.max(axis=1, keepdims=True))
        probs /= probs.sum(axis=1, keepdims=True)
        picks = np.array([rng.choice(probs.shape[1], p=row) for row in probs], dtype=np.int64)
        ids = np.concatenate([ids, picks[:, None]], axis=1)
    return ids[:, -width:]


def compare(
    reference: ort.InferenceSession, candidate: ort.InferenceSession, feeds: dict[str, Array]
) -> list[OutputDiff]:
    """Run both sessions on ``feeds`` and describe how far each output moved."""
    try:
        expected = reference.run(None, feeds)
    except Exception as exc:
        raise CompressionError(
            f"the original model does not run on generated inputs: {exc}"
        ) from exc
    actual = candidate.run(None, feeds)
    diffs: list[OutputDiff] = []
    for arg, want, got in zip(reference.get_outputs(), expected, actual, strict=True):
        want64, got64 = np.asarray(want, dtype=np.float64), np.asarray(got, dtype=np.float64)
        delta = np.abs(got64 - want64)
        scale = float(np.abs(want64).mean()) or 1.0
        top1 = None
        if want64.ndim >= 2 and np.issubdtype(np.asarray(want).dtype, np.floating):
            top1 = float((want64.argmax(axis=-1) == got64.argmax(axis=-1)).mean())
        diffs.append(
            OutputDiff(
                name=arg.name,
                max_abs=float(delta.max()) if delta.size else 0.0,
                mean_abs=float(delta.mean()) if delta.size else 0.0,
                relative=(float(delta.mean()) / scale) if delta.size else 0.0,
                top1_agreement=top1,
            )
        )
    return diffs
