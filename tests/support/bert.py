"""A small random BERT as a Hugging Face folder (safetensors weights, tokenizer.json), for
tests of the ONNX encoder builder and of the semantic router: the same code paths as
all-MiniLM-L6-v2, in a few kilobytes."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors

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
