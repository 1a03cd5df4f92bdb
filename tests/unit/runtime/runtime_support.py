"""Helpers of the runtime tests: small ONNX models built on the fly, a gate that holds a
model run, and a bounded wait."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from clawdbot_runtime.model import MODEL_FILE, OnnxModel
from clawdbot_runtime.server import RuntimeServer
from clawdbot_runtime.tensors import Array

StartServer = Callable[..., Awaitable[RuntimeServer]]


def linear_weights(scale: float, k: int = 4, n: int = 3) -> tuple[Array, Array]:
    """Deterministic weight and bias of the linear test model."""
    w = (np.arange(k * n, dtype=np.float32).reshape(k, n) - k * n / 2) * scale
    b = np.arange(n, dtype=np.float32) * scale
    return w, b


def write_linear(repo: Path, name: str, version: int, *, scale: float = 0.1) -> Path:
    """``y = x @ W + b`` with x FP32 [batch, 4] and y FP32 [batch, 3]; returns the folder."""
    w, b = linear_weights(scale)
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "W"], ["xw"]),
            helper.make_node("Add", ["xw", "b"], ["y"]),
        ],
        "linear",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3])],
        initializer=[numpy_helper.from_array(w, "W"), numpy_helper.from_array(b, "b")],
    )
    return _save(repo, name, version, graph)


def write_mlp(path: Path, *, width: int = 64, seed: int = 0) -> Path:
    """A two-layer float MLP [batch, width] -> [batch, 10] with random weights, at ``path``."""
    rng = np.random.default_rng(seed)
    w1 = (rng.standard_normal((width, width)) / np.sqrt(width)).astype(np.float32)
    w2 = (rng.standard_normal((width, 10)) / np.sqrt(width)).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "W1"], ["h"]),
            helper.make_node("Relu", ["h"], ["a"]),
            helper.make_node("MatMul", ["a", "W2"], ["y"]),
        ],
        "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", width])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 10])],
        initializer=[numpy_helper.from_array(w1, "W1"), numpy_helper.from_array(w2, "W2")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save_model(model, str(path))
    return path


def _save(repo: Path, name: str, version: int, graph: onnx.GraphProto) -> Path:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    folder = repo / name / str(version)
    folder.mkdir(parents=True, exist_ok=True)
    onnx.save_model(model, str(folder / MODEL_FILE))
    return folder


class Gate:
    """Holds the first run of a model inside the executor until released.

    Lets a test put requests into a known state (one running, others queued) without
    relying on timing: the run announces itself on ``entered`` and waits for ``release``.
    """

    def __init__(self, model: OnnxModel) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()
        self._run = model.run

    def run(self, feeds: Any, outputs: Any) -> dict[str, Array]:
        """Stand-in for OnnxModel.run."""
        self.entered.set()
        # Bounded, so a failing test cannot hang the suite.
        self.release.wait(timeout=30)
        return self._run(feeds, outputs)


def gate_model(server: RuntimeServer, name: str, monkeypatch: pytest.MonkeyPatch) -> Gate:
    """Hold the next run of ``name`` on ``server`` until the gate is released."""
    model = server.manager.get(name).model
    gate = Gate(model)
    monkeypatch.setattr(model, "run", gate.run)
    return gate


async def wait_for(condition: Callable[[], bool], *, attempts: int = 500) -> None:
    """Poll ``condition`` every 10 ms, a bounded number of times; fail if it never holds."""
    for _ in range(attempts):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition never became true")


def decoder_session(folder: Path) -> ort.InferenceSession:
    """A plain onnxruntime session over a decoder folder's model.onnx (CPU)."""
    return ort.InferenceSession(str(folder / MODEL_FILE), providers=["CPUExecutionProvider"])


def full_sequence_logits(
    session: ort.InferenceSession, ids: list[int], layers: int, kv_heads: int, dim: int
) -> Array:
    """Logits [seq, vocab] of ``ids`` run from scratch: an empty cache, every position fed."""
    total = len(ids)
    feeds: dict[str, Array] = {
        "input_ids": np.array([ids], dtype=np.int64),
        "attention_mask": np.ones((1, total), dtype=np.int64),
        "position_ids": np.arange(total, dtype=np.int64)[None, :],
    }
    for layer in range(layers):
        for kind in ("key", "value"):
            feeds[f"past_key_values.{layer}.{kind}"] = np.zeros(
                (1, kv_heads, 0, dim), dtype=np.float32
            )
    logits: Array = session.run(["logits"], feeds)[0][0]
    return logits


def greedy_without_cache(
    session: ort.InferenceSession,
    ids: list[int],
    steps: int,
    eos: int,
    geometry: tuple[int, int, int],
) -> tuple[list[int], list[Array]]:
    """The reference: each token recomputes the whole sequence; tokens and their logits."""
    sequence, tokens, all_logits = list(ids), [], []
    for _ in range(steps):
        logits = full_sequence_logits(session, sequence, *geometry)[-1]
        token = int(np.argmax(logits))
        tokens.append(token)
        all_logits.append(logits)
        if token == eos:
            break
        sequence.append(token)
    return tokens, all_logits


def encoder_reference(session: ort.InferenceSession, ids: list[int]) -> Array:
    """One input's embedding computed by hand: the encoder run on it alone (no padding),
    its last_hidden_state mean-pooled over every token, scaled to unit length."""
    feeds = {
        "input_ids": np.array([ids], dtype=np.int64),
        "attention_mask": np.ones((1, len(ids)), dtype=np.int64),
        "token_type_ids": np.zeros((1, len(ids)), dtype=np.int64),
    }
    hidden = session.run(["last_hidden_state"], feeds)[0][0]
    mean = hidden.mean(axis=0)
    result: Array = (mean / np.linalg.norm(mean)).astype(np.float32)
    return result
