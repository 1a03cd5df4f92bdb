"""A BERT sentence encoder built as ONNX from safetensors weights, checked and served.

The weights here are a small random BERT written as a safetensors file
(tests/support/bert.py: an 8-byte header length, a JSON header, raw little-endian arrays); the real
all-MiniLM-L6-v2 goes through the same code in ``make encoder`` and bench/semantic.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import openai
import pytest

from clawdbot_runtime import bert_onnx
from tests.support.bert import tiny_bert
from tests.support.servers import runtime_server


def test_the_graph_matches_the_numpy_reference_and_the_runtime_serves_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source, repo = tmp_path / "hf", tmp_path / "repo"
    tiny_bert(source)
    version = repo / "tiny-bert" / "1"
    diff = bert_onnx.build_encoder(source, version)
    assert diff < 1e-5
    assert (version / "model.onnx").exists() and not (version / "model.safetensors").exists()

    # Padding must not move a text's embedding: the same text alone and next to a longer one.
    texts = ["the cat sat on a mat", "sun is hot", "the dog ran in the park in the rain"]
    ids, mask = bert_onnx._encode(version / "tokenizer.json", texts)
    session = ort.InferenceSession(str(version / "model.onnx"), providers=["CPUExecutionProvider"])
    feeds = {"input_ids": ids, "attention_mask": mask, "token_type_ids": ids * 0}
    (batch,) = session.run(None, feeds)
    alone_ids, alone_mask = bert_onnx._encode(version / "tokenizer.json", texts[1:2])
    (alone,) = session.run(
        None, {"input_ids": alone_ids, "attention_mask": alone_mask,
               "token_type_ids": alone_ids * 0},
    )  # fmt: skip
    assert np.allclose(batch[1], alone[0], atol=1e-5)
    assert np.allclose(np.linalg.norm(batch, axis=1), 1.0, atol=1e-5)
    weights = bert_onnx.read_safetensors(source / "model.safetensors")
    config = bert_onnx.BertConfig(json.loads((source / "config.json").read_text()))
    want = bert_onnx.reference_embeddings(weights, config, ids, mask)
    assert np.abs(batch - want).max() < 1e-5

    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    with runtime_server(repo) as url:
        client = openai.OpenAI(base_url=url, api_key="unused", max_retries=0)
        got = client.embeddings.create(model="tiny-bert", input=texts)
    served = np.array([d.embedding for d in got.data])
    assert np.abs(served - want).max() < 1e-4


def test_a_graph_that_disagrees_with_the_reference_is_not_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = tmp_path / "hf"
    tiny_bert(source)

    def broken(weights: dict[str, np.ndarray], config: bert_onnx.BertConfig) -> object:
        bad = dict(weights)
        name = "encoder.layer.1.intermediate.dense.weight"
        bad[name] = weights[name][::-1].copy()  # rows swapped: another network
        return real(bad, config)

    real = bert_onnx.build_graph
    monkeypatch.setattr(bert_onnx, "build_graph", broken)
    with pytest.raises(ValueError, match="differ from the reference"):
        bert_onnx.build_encoder(source, tmp_path / "out" / "1")
    assert not (tmp_path / "out" / "1").exists()
