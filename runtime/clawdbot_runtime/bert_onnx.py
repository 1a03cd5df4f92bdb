"""A BERT sentence encoder as an ONNX graph, built from its safetensors weights.

For models published as a Hugging Face folder (``config.json``, ``model.safetensors``,
``tokenizer.json`` and the sentence-transformers modules) but not as ONNX, such as
all-MiniLM-L6-v2: :func:`build_encoder` reads the weights with numpy (the safetensors
format is a JSON header and raw little-endian arrays, no library needed), writes the
post-norm BERT encoder (absolute positions, token types, GELU, attention mask), mean
pooling over the mask and L2 normalisation as one graph with Optimum's feature-extraction
inputs and a ``sentence_embedding`` output, and copies the tokenizer and configuration
beside it, so the folder is a model version the runtime serves on ``/v1/embeddings``
(embedding_spec.py) and that the sidecar can also run in-process.

:func:`reference_embeddings` is the same computation in plain numpy (float64), written from
the architecture rather than from the graph; :func:`build_encoder` checks the graph
against it on a few texts and refuses to write a model that disagrees.

    python -m clawdbot_runtime.bert_onnx --source DIR --output REPO/NAME/1
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import struct
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper
from tokenizers import Tokenizer

__all__ = [
    "BertConfig",
    "build_encoder",
    "build_graph",
    "read_safetensors",
    "reference_embeddings",
]

INPUT_IDS, ATTENTION_MASK, TOKEN_TYPE_IDS = "input_ids", "attention_mask", "token_type_ids"
SENTENCE_EMBEDDING = "sentence_embedding"
# Files of a sentence-transformers folder the served version keeps (when present).
COPIED = (
    "config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.txt",
    "modules.json",
    "sentence_bert_config.json",
    "config_sentence_transformers.json",
    "1_Pooling/config.json",
)
CHECK_TEXTS = (
    "A man is eating food.",
    "The quarterly report shows revenue grew by 12 percent in Europe.",
    "Prove that the square root of two is irrational, step by step.",
)
# Largest difference between the graph's and the reference's embeddings (unit vectors).
CHECK_TOLERANCE = 1e-4

_DTYPES = {"F32": np.float32, "F16": np.float16, "BF16": None, "I64": np.int64, "F64": np.float64}


class BertConfig:
    """What the graph needs of a BERT ``config.json``."""

    def __init__(self, raw: dict[str, Any]) -> None:
        if raw.get("model_type") not in ("bert", None) or raw.get("hidden_act", "gelu") != "gelu":
            raise ValueError("only BERT encoders with GELU (erf) activations are supported")
        if raw.get("position_embedding_type", "absolute") != "absolute":
            raise ValueError("only absolute position embeddings are supported")
        self.hidden = int(raw["hidden_size"])
        self.layers = int(raw["num_hidden_layers"])
        self.heads = int(raw["num_attention_heads"])
        self.eps = float(raw.get("layer_norm_eps", 1e-12))
        self.max_positions = int(raw.get("max_position_embeddings", 512))
        if self.hidden % self.heads:
            raise ValueError("hidden_size must be a multiple of num_attention_heads")

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads


def read_safetensors(path: Path) -> dict[str, np.ndarray]:
    """Every tensor of a ``.safetensors`` file, as numpy arrays (bfloat16 widened)."""
    data = path.read_bytes()
    (size,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + size])
    body = memoryview(data)[8 + size :]
    out: dict[str, np.ndarray] = {}
    for name, meta in header.items():
        if name == "__metadata__":
            continue
        start, end = meta["data_offsets"]
        raw = body[start:end]
        dtype = meta["dtype"]
        if dtype == "BF16":
            bits = np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16
            array = bits.view(np.float32)
        elif dtype in _DTYPES and _DTYPES[dtype] is not None:
            array = np.frombuffer(raw, dtype=np.dtype(_DTYPES[dtype]).newbyteorder("<"))
        else:
            raise ValueError(f"{path}: tensor {name} has unsupported dtype {dtype}")
        out[name.removeprefix("bert.")] = array.reshape(meta["shape"])
    return out


def _w(weights: dict[str, np.ndarray], name: str) -> np.ndarray:
    try:
        return weights[name].astype(np.float32)
    except KeyError:
        raise ValueError(f"the weights have no tensor {name!r}: not a BERT encoder") from None


class _Graph:
    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self._n = 0

    def _name(self, hint: str) -> str:
        self._n += 1
        return f"{hint}_{self._n}"

    def const(self, hint: str, value: np.ndarray) -> str:
        name = self._name(hint)
        self.initializers.append(numpy_helper.from_array(value, name))
        return name

    def op(self, op_type: str, inputs: list[str], out: str = "", **attrs: Any) -> str:
        out = out or self._name(op_type.lower())
        self.nodes.append(helper.make_node(op_type, inputs, [out], **attrs))
        return out


def build_graph(weights: dict[str, np.ndarray], config: BertConfig) -> onnx.ModelProto:
    """The encoder, mean pooling and L2 normalisation: ids and mask in, unit vectors out."""
    g = _Graph()
    i64, f32 = np.int64, np.float32
    h, heads, dim = config.hidden, config.heads, config.head_dim

    def linear(x: str, prefix: str) -> str:
        # PyTorch keeps Linear weights as [out, in]: transposed once here.
        weight = g.const("w", np.ascontiguousarray(_w(weights, prefix + ".weight").T))
        return g.op(
            "Add", [g.op("MatMul", [x, weight]), g.const("b", _w(weights, prefix + ".bias"))]
        )

    def layer_norm(x: str, prefix: str) -> str:
        return g.op(
            "LayerNormalization",
            [x, g.const("ln_w", _w(weights, prefix + ".weight")),
             g.const("ln_b", _w(weights, prefix + ".bias"))],
            axis=-1,
            epsilon=config.eps,
        )  # fmt: skip

    seq = g.op("Gather", [g.op("Shape", [INPUT_IDS]), g.const("i1", np.array(1, dtype=i64))])
    positions = g.op(
        "Range", [g.const("zero", np.array(0, i64)), seq, g.const("one", np.array(1, i64))]
    )
    words = g.op("Gather", [g.const("word", _w(weights, "embeddings.word_embeddings.weight")),
                            INPUT_IDS])  # fmt: skip
    types = g.op("Gather", [g.const("type", _w(weights, "embeddings.token_type_embeddings.weight")),
                            TOKEN_TYPE_IDS])  # fmt: skip
    where = g.op("Gather", [g.const("pos", _w(weights, "embeddings.position_embeddings.weight")),
                            positions])  # fmt: skip
    hidden = layer_norm(g.op("Add", [g.op("Add", [words, types]), where]), "embeddings.LayerNorm")
    mask_f = g.op("Cast", [ATTENTION_MASK], to=TensorProto.FLOAT)  # [B, S]
    # Padding never receives attention: (1 - mask) * -1e4 on the scores, [B, 1, 1, S].
    drop = g.op("Mul", [g.op("Sub", [g.const("one_f", np.array(1.0, f32)), mask_f]),
                        g.const("neg", np.array(-1e4, f32))])  # fmt: skip
    bias = g.op("Unsqueeze", [drop, g.const("ax", np.array([1, 2], i64))])
    scale = g.const("scale", np.array(1.0 / math.sqrt(dim), f32))
    split_shape = g.const("split", np.array([0, 0, heads, dim], i64))
    merge_shape = g.const("merge", np.array([0, 0, h], i64))

    def split(x: str) -> str:
        return g.op("Transpose", [g.op("Reshape", [x, split_shape])], perm=[0, 2, 1, 3])

    for i in range(config.layers):
        p = f"encoder.layer.{i}."
        q = split(linear(hidden, p + "attention.self.query"))
        k = g.op("Transpose", [g.op("Reshape", [linear(hidden, p + "attention.self.key"),
                                                 split_shape])], perm=[0, 2, 3, 1])  # fmt: skip
        v = split(linear(hidden, p + "attention.self.value"))
        scores = g.op("Add", [g.op("Mul", [g.op("MatMul", [q, k]), scale]), bias])
        context = g.op("MatMul", [g.op("Softmax", [scores], axis=-1), v])
        context = g.op("Reshape", [g.op("Transpose", [context], perm=[0, 2, 1, 3]), merge_shape])
        attended = linear(context, p + "attention.output.dense")
        hidden = layer_norm(g.op("Add", [attended, hidden]), p + "attention.output.LayerNorm")
        up = linear(hidden, p + "intermediate.dense")
        erf = g.op("Erf", [g.op("Mul", [up, g.const("rsqrt2", np.array(1 / math.sqrt(2), f32))])])
        gate = g.op("Add", [erf, g.const("one", np.array(1.0, f32))])
        gelu = g.op("Mul", [g.op("Mul", [up, gate]), g.const("half", np.array(0.5, f32))])
        down = linear(gelu, p + "output.dense")
        hidden = layer_norm(g.op("Add", [down, hidden]), p + "output.LayerNorm")

    # Mean over the tokens the mask keeps, then unit length (sentence-transformers' modules).
    mask3 = g.op("Unsqueeze", [mask_f, g.const("ax2", np.array([2], i64))])  # [B, S, 1]
    total = g.op("ReduceSum", [g.op("Mul", [hidden, mask3]), g.const("ax1", np.array([1], i64))],
                 keepdims=0)  # fmt: skip
    count = g.op("ReduceSum", [mask3, g.const("ax1", np.array([1], i64))], keepdims=0)
    mean = g.op("Div", [total, g.op("Max", [count, g.const("tiny", np.array(1e-9, f32))])])
    norm = g.op("ReduceL2", [mean, g.const("axl", np.array([-1], i64))], keepdims=1)
    g.op("Div", [mean, g.op("Max", [norm, g.const("eps", np.array(1e-12, f32))])],
         SENTENCE_EMBEDDING)  # fmt: skip

    batch, seq_axis = "batch_size", "sequence_length"
    inputs = [
        helper.make_tensor_value_info(n, TensorProto.INT64, [batch, seq_axis])
        for n in (INPUT_IDS, ATTENTION_MASK, TOKEN_TYPE_IDS)
    ]
    outputs = [helper.make_tensor_value_info(SENTENCE_EMBEDDING, TensorProto.FLOAT, [batch, h])]
    graph = helper.make_graph(g.nodes, "bert_sentence_encoder", inputs, outputs,
                              initializer=g.initializers)  # fmt: skip
    # opset 18: ReduceSum and ReduceL2 take their axes as an input.
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 18)], producer_name="clawdbot-bert-onnx"
    )
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def reference_embeddings(
    weights: dict[str, np.ndarray], config: BertConfig, ids: np.ndarray, mask: np.ndarray
) -> np.ndarray:
    """The same encoder in float64 numpy, from BERT's definition: [B, hidden] unit vectors."""
    w = {k: v.astype(np.float64) for k, v in weights.items() if v.dtype.kind == "f"}

    def ln(x: np.ndarray, prefix: str) -> np.ndarray:
        mu = x.mean(-1, keepdims=True)
        var = ((x - mu) ** 2).mean(-1, keepdims=True)
        out: np.ndarray = (x - mu) / np.sqrt(var + config.eps) * w[prefix + ".weight"]
        return out + w[prefix + ".bias"]

    def dense(x: np.ndarray, prefix: str) -> np.ndarray:
        return x @ w[prefix + ".weight"].T + w[prefix + ".bias"]

    batch, seq = ids.shape
    x = (
        w["embeddings.word_embeddings.weight"][ids]
        + w["embeddings.token_type_embeddings.weight"][np.zeros_like(ids)]
        + w["embeddings.position_embeddings.weight"][np.arange(seq)][None]
    )
    x = ln(x, "embeddings.LayerNorm")
    heads, dim = config.heads, config.head_dim
    keep = mask.astype(np.float64)
    for i in range(config.layers):
        p = f"encoder.layer.{i}."

        def shaped(t: np.ndarray) -> np.ndarray:
            return t.reshape(batch, seq, heads, dim).transpose(0, 2, 1, 3)

        q = shaped(dense(x, p + "attention.self.query"))
        k = shaped(dense(x, p + "attention.self.key"))
        v = shaped(dense(x, p + "attention.self.value"))
        scores = q @ k.transpose(0, 1, 3, 2) / math.sqrt(dim)
        scores = np.where(keep[:, None, None, :] > 0, scores, -np.inf)
        scores = np.exp(scores - scores.max(-1, keepdims=True))
        attn = scores / scores.sum(-1, keepdims=True)
        context = (attn @ v).transpose(0, 2, 1, 3).reshape(batch, seq, heads * dim)
        x = ln(dense(context, p + "attention.output.dense") + x, p + "attention.output.LayerNorm")
        up = dense(x, p + "intermediate.dense")
        erf = np.vectorize(math.erf)(up / math.sqrt(2.0))
        x = ln(dense(0.5 * up * (1.0 + erf), p + "output.dense") + x, p + "output.LayerNorm")
    pooled = (x * keep[..., None]).sum(1) / np.maximum(keep.sum(1, keepdims=True), 1e-9)
    result: np.ndarray = pooled / np.linalg.norm(pooled, axis=-1, keepdims=True)
    return result


def _encode(tokenizer_path: Path, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    tokenizer = Tokenizer.from_file(str(tokenizer_path))
    tokenizer.no_truncation()
    tokenizer.enable_padding(pad_id=0)
    encoded = tokenizer.encode_batch(list(texts))
    ids = np.array([e.ids for e in encoded], dtype=np.int64)
    mask = np.array([e.attention_mask for e in encoded], dtype=np.int64)
    return ids, mask


def check_against_reference(folder: Path, texts: Sequence[str] = CHECK_TEXTS) -> float:
    """The largest difference between the graph's embeddings of ``texts`` and the numpy
    reference's (both from the folder's weights and tokenizer)."""
    source = folder / "model.safetensors"
    if not source.exists():
        raise ValueError(f"{folder}: no model.safetensors to check against")
    config = BertConfig(json.loads((folder / "config.json").read_text()))
    weights = read_safetensors(source)
    ids, mask = _encode(folder / "tokenizer.json", texts)
    session = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
    (got,) = session.run(
        [SENTENCE_EMBEDDING], {INPUT_IDS: ids, ATTENTION_MASK: mask, TOKEN_TYPE_IDS: ids * 0}
    )
    want = reference_embeddings(weights, config, ids, mask)
    return float(np.abs(got - want).max())


def build_encoder(source: Path, output: Path, *, keep_weights: bool = False) -> float:
    """Write the served model version for the Hugging Face folder ``source`` into ``output``
    (model.onnx and the tokenizer and configuration files); returns the largest difference
    from the numpy reference on :data:`CHECK_TEXTS`. Raises ValueError when it is over
    :data:`CHECK_TOLERANCE` (nothing is left in ``output`` then)."""
    config = BertConfig(json.loads((source / "config.json").read_text()))
    weights = read_safetensors(source / "model.safetensors")
    model = build_graph(weights, config)
    staging = output.with_name(output.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    onnx.save_model(model, str(staging / "model.onnx"))
    for name in COPIED:
        if (source / name).exists():
            (staging / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source / name, staging / name)
    shutil.copyfile(source / "model.safetensors", staging / "model.safetensors")
    try:
        diff = check_against_reference(staging)
        if not diff <= CHECK_TOLERANCE:
            raise ValueError(
                f"the ONNX graph's embeddings differ from the reference by {diff:.2e} "
                f"(more than {CHECK_TOLERANCE:g}): not written"
            )
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if not keep_weights:
        (staging / "model.safetensors").unlink()
    shutil.rmtree(output, ignore_errors=True)
    staging.rename(output)
    return diff


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("--source", type=Path, required=True, help="Hugging Face model folder")
    parser.add_argument("--output", type=Path, required=True, help="model version folder")
    args = parser.parse_args(argv)
    try:
        diff = build_encoder(args.source, args.output)
    except (OSError, ValueError, KeyError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {args.output}/model.onnx (max difference from the reference {diff:.1e})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
