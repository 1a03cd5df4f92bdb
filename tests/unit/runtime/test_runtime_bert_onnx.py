"""A BERT sentence encoder built as ONNX from safetensors weights, checked and served.

The weights here are a small random BERT written as a safetensors file by the test (the
format: an 8-byte header length, a JSON header, raw little-endian arrays); the real
all-MiniLM-L6-v2 goes through the same code in ``make encoder`` and bench/semantic.py.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import onnxruntime as ort
import openai
import pytest
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors

from clawdbot_runtime import bert_onnx
from tests.support.servers import runtime_server

HIDDEN, LAYERS, HEADS, VOCAB = 32, 2, 4, 40
WORDS = ["the", "cat", "sat", "on", "a", "mat", "dog", "ran", "in", "park", "sun", "is", "hot"]


def write_safetensors(path: Path, tensors: dict[str, np.ndarray]) -> None:
    header, blobs, offset = {}, [], 0
    for name, array in tensors.items():
        raw = np.ascontiguousarray(array, dtype="<f4").tobytes()
        header[name] = {"dtype": "F32", "shape": list(array.shape),
                        "data_offsets": [offset, offset + len(raw)]}  # fmt: skip
        blobs.append(raw)
        offset += len(raw)
    encoded = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(encoded)) + encoded + b"".join(blobs))


def tiny_bert(folder: Path, seed: int = 5) -> None:
    rng = np.random.default_rng(seed)
    t: dict[str, np.ndarray] = {
        "embeddings.word_embeddings.weight": rng.normal(0, 0.5, (VOCAB, HIDDEN)),
        "embeddings.position_embeddings.weight": rng.normal(0, 0.1, (64, HIDDEN)),
        "embeddings.token_type_embeddings.weight": rng.normal(0, 0.1, (2, HIDDEN)),
        "embeddings.LayerNorm.weight": 1 + rng.normal(0, 0.1, HIDDEN),
        "embeddings.LayerNorm.bias": rng.normal(0, 0.1, HIDDEN),
    }
    for i in range(LAYERS):
        p = f"encoder.layer.{i}."
        square, up, down = (HIDDEN, HIDDEN), (4 * HIDDEN, HIDDEN), (HIDDEN, 4 * HIDDEN)
        for name, shape in (
            ("attention.self.query", square), ("attention.self.key", square),
            ("attention.self.value", square), ("attention.output.dense", square),
            ("intermediate.dense", up), ("output.dense", down),
        ):  # fmt: skip
            t[p + name + ".weight"] = rng.normal(0, 0.3, shape)
            t[p + name + ".bias"] = rng.normal(0, 0.1, shape[0])
        for ln in ("attention.output.LayerNorm", "output.LayerNorm"):
            t[p + ln + ".weight"] = 1 + rng.normal(0, 0.1, HIDDEN)
            t[p + ln + ".bias"] = rng.normal(0, 0.1, HIDDEN)
    folder.mkdir(parents=True)
    write_safetensors(folder / "model.safetensors", t)
    config = {"model_type": "bert", "hidden_size": HIDDEN, "num_hidden_layers": LAYERS,
              "num_attention_heads": HEADS, "intermediate_size": 4 * HIDDEN, "hidden_act": "gelu",
              "max_position_embeddings": 64, "vocab_size": VOCAB, "pad_token_id": 0,
              "layer_norm_eps": 1e-12, "type_vocab_size": 2}  # fmt: skip
    (folder / "config.json").write_text(json.dumps(config))
    vocab = {w: i for i, w in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", *WORDS])}
    tok = Tokenizer(models.WordPiece(vocab=vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)]
    )
    tok.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps({"model_max_length": 64}))


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
