"""The semantic router with the real all-MiniLM-L6-v2 encoder: accuracy and latency.

- **Accuracy**: the sidecar's :class:`~clawdbot_sidecar.routing.semantic_model.LocalEnough` is
  fitted on the ``train`` prompts of ``bench/data/semantic_prompts.jsonl`` (labelled
  ``local``: a small local model answers this kind of prompt well; ``cloud``: it needs the
  bigger model) and scored on the ``test`` prompts, kept apart: other fillers of the trained
  prompt families, and whole families it never saw. Beside it, the keyword complexity score
  the router used before (``features.complexity``) with its best threshold on the train set.
- **Latency**: the encoder on one core (one onnxruntime thread), per prompt of 200 tokens,
  fp32 as built and int8 (dynamic quantisation of the MatMul weights, with the cosine to the
  fp32 embedding), median of ``--runs``.

The encoder is the ONNX graph ``make encoder`` builds from the published weights into
``.cache/models/all-minilm-l6-v2/1`` (checked there against a numpy reference).

    make encoder && .venv/bin/python bench/semantic.py
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from onnxruntime.quantization import QuantType, quantize_dynamic
from tokenizers import Tokenizer

from clawdbot_api.v1alpha1.routingpolicy import SemanticCache
from clawdbot_sidecar.routing.features import complexity
from clawdbot_sidecar.routing.semantic import guard
from clawdbot_sidecar.routing.semantic_model import LocalEnough, SimilarityStore

REPO = Path(__file__).resolve().parent.parent
DEFAULT_MODEL = REPO / ".cache" / "models" / "all-minilm-l6-v2" / "1"
DATA = Path(__file__).resolve().parent / "data" / "semantic_prompts.jsonl"
PAIRS = Path(__file__).resolve().parent / "data" / "semantic_cache_pairs.jsonl"


class Encoder:
    """The sentence encoder folder, run in-process on ``threads`` onnxruntime threads."""

    def __init__(self, folder: Path, model_file: str = "model.onnx", threads: int = 1) -> None:
        self.tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
        self.tokenizer.enable_truncation(max_length=256)
        self.tokenizer.enable_padding(pad_id=0)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(
            str(folder / model_file), options, providers=["CPUExecutionProvider"]
        )

    def feeds(self, texts: list[str]) -> dict[str, np.ndarray]:
        encoded = self.tokenizer.encode_batch(texts)
        ids = np.array([e.ids for e in encoded], dtype=np.int64)
        mask = np.array([e.attention_mask for e in encoded], dtype=np.int64)
        return {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}

    def embed(self, texts: list[str]) -> np.ndarray:
        out: list[np.ndarray] = []
        for i in range(0, len(texts), 32):
            (vectors,) = self.session.run(["sentence_embedding"], self.feeds(texts[i : i + 32]))
            out.append(vectors)
        return np.concatenate(out)


def load(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def accuracy(encoder: Encoder, rows: list[dict[str, Any]]) -> dict[str, float]:
    train = [r for r in rows if r["split"] == "train"]
    test = [r for r in rows if r["split"] == "test"]
    model = LocalEnough(dim=384)
    model.fit(encoder.embed([r["prompt"] for r in train]), [r["label"] == "local" for r in train])
    vectors = encoder.embed([r["prompt"] for r in test])
    hits = [
        (model.predict(v) >= 0.5) == (r["label"] == "local")
        for v, r in zip(vectors, test, strict=True)
    ]
    trained = {r["family"] for r in train}
    seen = [h for h, r in zip(hits, test, strict=True) if r["family"] in trained]
    unseen = [h for h, r in zip(hits, test, strict=True) if r["family"] not in trained]

    # The keyword score: "hard" (cloud) above the threshold that is best on the train set.
    def keyword_hits(part: list[dict[str, Any]], threshold: float) -> list[bool]:
        return [(complexity(r["prompt"], 1) <= threshold) == (r["label"] == "local") for r in part]

    thresholds = np.linspace(0, 1, 41)
    best = max(thresholds, key=lambda t: sum(keyword_hits(train, float(t))))
    keyword = keyword_hits(test, float(best))
    return {
        "train": len(train),
        "test": len(test),
        "semantic": float(np.mean(hits)),
        "semantic_seen_families": float(np.mean(seen)) if seen else float("nan"),
        "semantic_unseen_families": float(np.mean(unseen)) if unseen else float("nan"),
        "keyword": float(np.mean(keyword)),
        "keyword_threshold": float(best),
    }


def cache_table(encoder: Encoder, pairs: list[dict[str, Any]], min_similarity: float) -> None:
    """Each pair: the first question's answer stored, the second asked; through the
    sidecar's SimilarityStore and guard, and by similarity alone for comparison."""
    stored = encoder.embed([p["stored"] for p in pairs])
    asked = encoder.embed([p["asked"] for p in pairs])
    rows: dict[str, list[tuple[bool, bool]]] = {}
    for pair, a, b in zip(pairs, stored, asked, strict=True):
        store = SimilarityStore(len(a), 4, 300.0, min_similarity)
        store.put(a, guard(pair["stored"]), "answer", 0.0)
        hit = store.get(b, guard(pair["asked"]), 1.0) is not None
        by_similarity = float(np.dot(a, b)) >= min_similarity
        rows.setdefault(pair["kind"], []).append((hit, by_similarity))
    print(f"\nSemantic cache, minSimilarity {min_similarity:g}: the first question of each pair "
          "stored, the second asked:\n")  # fmt: skip
    print(f"{'pair kind':34s} {'pairs':>6s} {'hits':>6s} {'similarity alone':>17s}")
    print("-" * 66)
    labels = {
        "paraphrase": "paraphrase (a hit is right)",
        "negation": "negation (a hit is a false hit)",
        "number": "changed number (false hit)",
        "different": "another question (false hit)",
    }
    for kind, label in labels.items():
        got = rows.get(kind, [])
        hits = sum(h for h, _ in got)
        similar = sum(a for _, a in got)
        print(f"{label:34s} {len(got):6d} {hits:6d} {similar:17d}")


def latency(encoder: Encoder, feeds: dict[str, np.ndarray], runs: int) -> float:
    for _ in range(3):
        encoder.session.run(None, feeds)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        encoder.session.run(None, feeds)
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    p.add_argument("--model", type=Path, default=DEFAULT_MODEL, help="encoder version folder")
    p.add_argument("--data", type=Path, default=DATA)
    p.add_argument("--runs", type=int, default=30)
    p.add_argument("--tokens", type=int, default=200)
    args = p.parse_args()
    if not (args.model / "model.onnx").exists():
        raise SystemExit(f"no encoder at {args.model}: run `make encoder` first")
    encoder = Encoder(args.model)
    rows = load(args.data)
    acc = accuracy(encoder, rows)
    learnt, apart = acc["train"], acc["test"]
    print(f"Local/cloud prediction, {learnt:.0f} examples learnt, {apart:.0f} held apart:\n")
    print(f"{'predictor':44s} {'accuracy':>9s}")
    print("-" * 54)
    print(f"{'semantic (MiniLM + logistic regression)':44s} {acc['semantic']:9.1%}")
    print(f"{'  of trained families, other prompts':44s} {acc['semantic_seen_families']:9.1%}")
    print(f"{'  of families never seen':44s} {acc['semantic_unseen_families']:9.1%}")
    label = f"keyword complexity (threshold {acc['keyword_threshold']:.3f})"
    print(f"{label:44s} {acc['keyword']:9.1%}")

    text = " ".join(r["prompt"] for r in rows)
    ids = encoder.tokenizer.encode(text).ids[: args.tokens]
    feeds = {
        "input_ids": np.array([ids], dtype=np.int64),
        "attention_mask": np.ones((1, len(ids)), dtype=np.int64),
        "token_type_ids": np.zeros((1, len(ids)), dtype=np.int64),
    }
    fp32 = latency(encoder, feeds, args.runs)
    with tempfile.TemporaryDirectory() as tmp:
        quantized = Path(tmp) / "model.int8.onnx"
        quantize_dynamic(
            str(args.model / "model.onnx"), str(quantized), weight_type=QuantType.QInt8,
            op_types_to_quantize=["MatMul"],
        )  # fmt: skip
        int8 = Encoder(args.model, model_file=str(quantized))
        int8_ms = latency(int8, feeds, args.runs)
        sample = [r["prompt"] for r in rows[:64]]
        cosine = float(np.mean(np.sum(encoder.embed(sample) * int8.embed(sample), axis=1)))
    print(
        f"\nEncoder latency, one prompt of {len(ids)} tokens, one core (median of {args.runs}):\n"
    )
    print(f"{'encoder':10s} {'ms':>8s} {'cosine to fp32':>15s}")
    print("-" * 35)
    print(f"{'fp32':10s} {fp32:8.1f} {1.0:15.3f}")
    print(f"{'int8':10s} {int8_ms:8.1f} {cosine:15.3f}")
    cache_table(encoder, load(PAIRS), SemanticCache().min_similarity)


if __name__ == "__main__":
    main()
