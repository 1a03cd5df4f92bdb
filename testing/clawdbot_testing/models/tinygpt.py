"""A tiny GPT-style decoder with a KV cache, built as an ONNX graph like an Optimum export.

What it is, plainly: a 2-layer, 64-wide pre-norm transformer (4 query heads sharing 2
key/value heads, learned position embeddings, RMSNorm, SiLU MLP) over a byte-level BPE
vocabulary trained with ``tokenizers`` on the short text of :data:`tinylm.CORPUS`. Its token
embedding and output head are the rank-64 SVD factors of the corpus's smoothed bigram
log-probabilities, so it writes corpus-like fragments; the attention and MLP weights are
small seeded random numbers, which make every position's output depend on the whole prefix
(what a KV cache test needs) without drowning the bigram signal. It is a test and demo
model, not a real language model; building it takes about a second, downloads nothing, and
gives the same bytes each time.

The folder it writes is laid out like ``optimum-cli export onnx --task
text-generation-with-past``'s output: ``model.onnx`` with ``input_ids``,
``attention_mask``, ``position_ids`` and ``past_key_values.{i}.key/value`` in,
``logits`` and ``present.{i}.key/value`` out (Optimum's names and dynamic axes), plus
``config.json``, ``generation_config.json``, ``tokenizer.json`` and
``tokenizer_config.json`` (with a Jinja ``chat_template``). See decoder_spec.py for the
contract the server checks.
"""

from __future__ import annotations

import itertools
import json
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from clawdbot_runtime.decoder_spec import (
    ATTENTION_MASK,
    CONFIG_FILE,
    GENERATION_CONFIG_FILE,
    INPUT_IDS,
    LOGITS,
    POSITION_IDS,
    TOKENIZER_CONFIG_FILE,
    TOKENIZER_FILE,
    past_name,
    present_name,
)
from clawdbot_runtime.model import MODEL_FILE
from clawdbot_testing.models.tinylm import CORPUS, corpus_documents

DEMO_GPT_NAME = "tiny-gpt"
LAYERS = 2
HIDDEN = 64
HEADS = 4
KV_HEADS = 2
HEAD_DIM = HIDDEN // HEADS
INTERMEDIATE = 4 * HIDDEN
CONTEXT = 256
VOCAB_TARGET = 512
EOS_TOKEN = "<|endoftext|>"
# Turn markers: one token each, so the token right after "<|assistant|>" is a reply's first
# word (a bigram model can tell a reply from a question only by its first token).
ROLE_TOKENS = ["<|system|>", "<|user|>", "<|assistant|>"]
SPECIAL_TOKENS = [EOS_TOKEN, *ROLE_TOKENS]
RMS_EPS = 1e-5
SEED = 20240607
# Standard deviation of the attention/MLP weights: large enough that a token's logits move
# with every earlier token, small enough that the bigram head still decides most tokens.
LAYER_SCALE = 0.35
# Logits come out of the bigram factors at about natural-log scale; doubling them (a baked-in
# temperature of 0.5) keeps sampling at temperature 1 on the corpus's own continuations.
SHARPEN = 2.0

# Zephyr-style turns: "<|user|>hello<|assistant|>" after BOS; a past reply ends with EOS.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>' + message['content'] }}"
    "{% if message['role'] == 'assistant' %}{{ eos_token }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}"
)


def training_documents(text: str = CORPUS) -> list[str]:
    """The corpus's documents, chat exchanges rewritten with the chat template's markers."""
    documents = []
    for doc in corpus_documents(text):
        if doc.startswith("user:"):
            turns = [line.split(": ", 1) for line in doc.splitlines()]
            documents.append("".join(f"<|{role}|>{content}" for role, content in turns))
        else:
            documents.append(doc)
    return documents


def train_tokenizer(documents: list[str]) -> Tokenizer:
    """A byte-level BPE (GPT-2 style) trained on ``documents``; EOS doubles as BOS."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_TARGET,
        min_frequency=2,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(documents, trainer)
    return tokenizer


def bigram_table(sequences: list[list[int]], vocab: int) -> tuple[np.ndarray, np.ndarray]:
    """Smoothed log P(next | token) [vocab, vocab] over the tokens that ever come next, and
    the mask of those tokens; the others (unused byte tokens...) are left at 0.

    The smoothing is light (add-0.01) so that seen continuations stand well above unseen
    ones even for tokens seen a handful of times.
    """
    counts: Counter[tuple[int, int]] = Counter()
    for ids in sequences:
        counts.update(itertools.pairwise(ids))
    follows = np.zeros(vocab, dtype=bool)
    follows[[b for _, b in counts]] = True
    table = np.full((vocab, vocab), 0.01)
    for (a, b), n in counts.items():
        table[a, b] += n
    table[:, ~follows] = 0.0
    table /= table.sum(axis=1, keepdims=True)
    logp = np.zeros((vocab, vocab))
    logp[:, follows] = np.log(table[:, follows])
    # Centred per row (softmax does not care), so the SVD spends no rank on row offsets.
    logp[:, follows] -= logp[:, follows].mean(axis=1, keepdims=True)
    return logp, follows


class GraphBuilder:
    """Accumulates nodes and initializers with unique names (the tiny models share it)."""

    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self._count = 0

    def name(self, hint: str) -> str:
        self._count += 1
        return f"{hint}_{self._count}"

    def const(self, hint: str, value: np.ndarray) -> str:
        name = self.name(hint)
        self.initializers.append(numpy_helper.from_array(value, name))
        return name

    def op(self, op_type: str, inputs: list[str], hint: str = "", **attrs: Any) -> str:
        out = self.name(hint or op_type.lower())
        self.nodes.append(helper.make_node(op_type, inputs, [out], **attrs))
        return out

    def to(self, op_type: str, inputs: list[str], output: str, **attrs: Any) -> str:
        self.nodes.append(helper.make_node(op_type, inputs, [output], **attrs))
        return output

    def model(
        self,
        graph_name: str,
        inputs: list[onnx.ValueInfoProto],
        outputs: list[onnx.ValueInfoProto],
        producer: str,
    ) -> onnx.ModelProto:
        """The finished model (opset 17), checked in full."""
        graph = helper.make_graph(
            self.nodes, graph_name, inputs, outputs, initializer=self.initializers
        )
        model = helper.make_model(
            graph, opset_imports=[helper.make_opsetid("", 17)], producer_name=producer
        )
        model.ir_version = 8  # loads on every onnxruntime release this project supports
        onnx.checker.check_model(model, full_check=True)
        return model


def _rms_norm(g: GraphBuilder, x: str, weight: np.ndarray) -> str:
    square = g.op("Mul", [x, x])
    mean = g.op("ReduceMean", [square], axes=[-1], keepdims=1)
    eps = g.const("eps", np.array(RMS_EPS, dtype=np.float32))
    root = g.op("Sqrt", [g.op("Add", [mean, eps])])
    return g.op("Mul", [g.op("Div", [x, root]), g.const("norm_w", weight)])


def build_graph(
    weights: dict[str, np.ndarray], vocab: int, *, with_past: bool = True
) -> onnx.ModelProto:
    """The decoder graph; ``with_past=False`` gives the cache-less export (no past inputs)."""
    g = GraphBuilder()
    i64, f32 = np.int64, np.float32
    rep = HEADS // KV_HEADS
    # Sizes: S new tokens, T = past + S attended positions, P = T - S cached ones.
    seq = g.op("Gather", [g.op("Shape", [INPUT_IDS]), g.const("i1", np.array(1, dtype=i64))])
    total = g.op("Gather", [g.op("Shape", [ATTENTION_MASK]), g.const("i1", np.array(1, dtype=i64))])
    past = g.op("Sub", [total, seq], "past_len")
    zero, one = g.const("zero", np.array(0, dtype=i64)), g.const("one", np.array(1, dtype=i64))
    key_pos = g.op("Range", [zero, total, one], "key_pos")  # [T]
    query_pos = g.op("Range", [past, total, one], "query_pos")  # [S], absolute positions
    causal = g.op(
        "LessOrEqual",
        [
            g.op("Unsqueeze", [key_pos, g.const("ax", np.array([0], dtype=i64))]),
            g.op("Unsqueeze", [query_pos, g.const("ax", np.array([1], dtype=i64))]),
        ],
        "causal",
    )  # [S, T]
    padding = g.op(
        "Unsqueeze",
        [
            g.op("Cast", [ATTENTION_MASK], to=TensorProto.BOOL),
            g.const("ax", np.array([1, 2], dtype=i64)),
        ],
    )  # [B, 1, 1, T]
    allowed = g.op(
        "And", [g.op("Unsqueeze", [causal, g.const("ax", np.array([0, 1], dtype=i64))]), padding]
    )  # [B, 1, S, T]
    bias = g.op(
        "Where",
        [
            allowed,
            g.const("keep", np.array(0.0, dtype=f32)),
            g.const("drop", np.array(-1e9, dtype=f32)),
        ],
    )
    # Query heads sharing a KV head are laid out one after the other along the query axis
    # ([B, kv_heads, rep * S, D]), so the mask is tiled to match and K/V are never copied.
    bias = g.op("Tile", [bias, g.const("reps", np.array([1, 1, rep, 1], dtype=i64))], "mask_bias")

    hidden = g.op(
        "Add",
        [
            g.op("Gather", [g.const("tok_emb", weights["tok_emb"]), INPUT_IDS]),
            g.op("Gather", [g.const("pos_emb", weights["pos_emb"]), POSITION_IDS]),
        ],
        "embed",
    )
    scale = g.const("scale", np.array(1.0 / np.sqrt(HEAD_DIM), dtype=f32))

    def heads(x: str, w: np.ndarray, count: int) -> str:  # [B,S,H] -> [B,count,S,D]
        flat = g.op("MatMul", [x, g.const("w", w)])
        split = g.op(
            "Reshape", [flat, g.const("shape", np.array([0, 0, count, HEAD_DIM], dtype=i64))]
        )
        return g.op("Transpose", [split], perm=[0, 2, 1, 3])

    for layer in range(LAYERS):
        w = {k.split(".", 1)[1]: v for k, v in weights.items() if k.startswith(f"l{layer}.")}
        x = _rms_norm(g, hidden, w["attn_norm"])
        q = heads(x, w["wq"], HEADS)
        q = g.op("Reshape", [q, g.const("shape", np.array([0, KV_HEADS, -1, HEAD_DIM], dtype=i64))])
        k, v = heads(x, w["wk"], KV_HEADS), heads(x, w["wv"], KV_HEADS)
        if with_past:
            k = g.to("Concat", [past_name(layer, "key"), k], present_name(layer, "key"), axis=2)
            v = g.to("Concat", [past_name(layer, "value"), v], present_name(layer, "value"), axis=2)
        scores = g.op("MatMul", [q, g.op("Transpose", [k], perm=[0, 1, 3, 2])])
        scores = g.op("Add", [g.op("Mul", [scores, scale]), bias])
        context = g.op("MatMul", [g.op("Softmax", [scores], axis=-1), v])  # [B,kv,rep*S,D]
        context = g.op(
            "Reshape", [context, g.const("shape", np.array([0, HEADS, -1, HEAD_DIM], dtype=i64))]
        )
        context = g.op("Transpose", [context], perm=[0, 2, 1, 3])
        context = g.op("Reshape", [context, g.const("shape", np.array([0, 0, HIDDEN], dtype=i64))])
        hidden = g.op("Add", [hidden, g.op("MatMul", [context, g.const("wo", w["wo"])])])
        x = _rms_norm(g, hidden, w["mlp_norm"])
        up = g.op("MatMul", [x, g.const("w_up", w["w_up"])])
        act = g.op("Mul", [up, g.op("Sigmoid", [up])])  # SiLU
        hidden = g.op("Add", [hidden, g.op("MatMul", [act, g.const("w_down", w["w_down"])])])
    normed = _rms_norm(g, hidden, weights["final_norm"])
    scores = g.op("MatMul", [normed, g.const("lm_head", weights["lm_head"])])
    g.to("Add", [scores, g.const("lm_bias", weights["lm_bias"])], LOGITS)

    batch, seq_axis = "batch_size", "sequence_length"
    total_axis = "past_sequence_length + sequence_length"
    inputs = [
        helper.make_tensor_value_info(INPUT_IDS, TensorProto.INT64, [batch, seq_axis]),
        helper.make_tensor_value_info(ATTENTION_MASK, TensorProto.INT64, [batch, total_axis]),
        helper.make_tensor_value_info(POSITION_IDS, TensorProto.INT64, [batch, seq_axis]),
    ]
    outputs = [helper.make_tensor_value_info(LOGITS, TensorProto.FLOAT, [batch, seq_axis, vocab])]
    if with_past:
        for layer in range(LAYERS):
            for kind in ("key", "value"):
                inputs.append(
                    helper.make_tensor_value_info(
                        past_name(layer, kind),
                        TensorProto.FLOAT,
                        [batch, KV_HEADS, "past_sequence_length", HEAD_DIM],
                    )
                )
                outputs.append(
                    helper.make_tensor_value_info(
                        present_name(layer, kind),
                        TensorProto.FLOAT,
                        [batch, KV_HEADS, total_axis, HEAD_DIM],
                    )
                )
    return g.model("clawdbot_tiny_gpt", inputs, outputs, "clawdbot-tinygpt")


def _token_id(tokenizer: Tokenizer, token: str) -> int:
    found = tokenizer.token_to_id(token)
    if found is None:  # train_tokenizer always adds the special tokens
        raise ValueError(f"the tokenizer has no {token} token")
    return int(found)


def _eos_id(tokenizer: Tokenizer) -> int:
    return _token_id(tokenizer, EOS_TOKEN)


def fit_weights(tokenizer: Tokenizer, documents: list[str]) -> dict[str, np.ndarray]:
    """Bigram-derived embedding and head, seeded random layers (all float32)."""
    vocab = tokenizer.get_vocab_size()
    eos = _eos_id(tokenizer)
    sequences = [[eos, *tokenizer.encode(doc).ids, eos] for doc in documents]
    logp, follows = bigram_table(sequences, vocab)
    u, s, vt = np.linalg.svd(logp, full_matrices=False)
    embedding = u[:, :HIDDEN] * s[:HIDDEN]
    head = vt[:HIDDEN]
    # RMSNorm before the head rescales each row to unit RMS: put back the typical scale of
    # the tokens the corpus uses (unused byte tokens have near-zero rows).
    used = sorted({token for ids in sequences for token in ids})
    rms = float(np.sqrt((embedding[used] ** 2).mean(axis=1)).mean())
    rng = np.random.default_rng(SEED)

    def normal(*shape: int, std: float) -> np.ndarray:
        return rng.standard_normal(shape) * std

    weights: dict[str, np.ndarray] = {
        "tok_emb": embedding,
        "pos_emb": normal(CONTEXT, HIDDEN, std=0.1 * rms),
        "final_norm": np.full(HIDDEN, rms * SHARPEN),
        "lm_head": head,
        # Tokens that never come next in the corpus (most of the 256 byte tokens) are ruled
        # out exactly by the head's bias rather than approximately by the low-rank factors.
        "lm_bias": np.where(follows, 0.0, -30.0),
    }
    for layer in range(LAYERS):
        p = f"l{layer}."
        weights[p + "attn_norm"] = np.ones(HIDDEN)
        weights[p + "mlp_norm"] = np.ones(HIDDEN)
        weights[p + "wq"] = normal(HIDDEN, HIDDEN, std=1.0 / np.sqrt(HIDDEN))
        weights[p + "wk"] = normal(HIDDEN, KV_HEADS * HEAD_DIM, std=1.0 / np.sqrt(HIDDEN))
        weights[p + "wv"] = normal(HIDDEN, KV_HEADS * HEAD_DIM, std=1.0 / np.sqrt(HIDDEN))
        weights[p + "wo"] = normal(HIDDEN, HIDDEN, std=LAYER_SCALE * rms / np.sqrt(HIDDEN))
        weights[p + "w_up"] = normal(HIDDEN, INTERMEDIATE, std=1.0 / np.sqrt(HIDDEN))
        weights[p + "w_down"] = normal(
            INTERMEDIATE, HIDDEN, std=LAYER_SCALE * rms / np.sqrt(INTERMEDIATE)
        )
    return {name: value.astype(np.float32) for name, value in weights.items()}


def write_json(path: Path, value: Any) -> None:
    """A model folder's JSON file, as Hugging Face writes them (indented, UTF-8)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def build_tiny_gpt(
    repository: Path, name: str = DEMO_GPT_NAME, version: int = 1, *, with_past: bool = True
) -> Path:
    """Write ``<repository>/<name>/<version>/`` as an Optimum-style export; return it.

    ``with_past=False`` writes the cache-less graph (Optimum's ``text-generation`` task),
    which the server refuses to generate with: tests use it for that error.
    """
    documents = training_documents()
    # The merges are learnt from the plain text; the markers are added tokens, never split.
    tokenizer = train_tokenizer(corpus_documents())
    vocab = tokenizer.get_vocab_size()
    eos = _eos_id(tokenizer)
    weights = fit_weights(tokenizer, documents)
    folder = repository / name / str(version)
    folder.mkdir(parents=True, exist_ok=True)
    onnx.save_model(build_graph(weights, vocab, with_past=with_past), str(folder / MODEL_FILE))
    tokenizer.save(str(folder / TOKENIZER_FILE))
    write_json(
        folder / CONFIG_FILE,
        {
            "architectures": ["TinyGptForCausalLM"],
            "model_type": "tinygpt",
            "num_hidden_layers": LAYERS,
            "hidden_size": HIDDEN,
            "num_attention_heads": HEADS,
            "num_key_value_heads": KV_HEADS,
            "head_dim": HEAD_DIM,
            "intermediate_size": INTERMEDIATE,
            "max_position_embeddings": CONTEXT,
            "vocab_size": vocab,
            "rms_norm_eps": RMS_EPS,
            "bos_token_id": eos,
            "eos_token_id": eos,
            "torch_dtype": "float32",
            "use_cache": with_past,
        },
    )
    # As Llama 3 and Zephyr-style models do, the next turn's marker also ends a reply.
    stops = [eos, _token_id(tokenizer, "<|user|>")]
    write_json(folder / GENERATION_CONFIG_FILE, {"bos_token_id": eos, "eos_token_id": stops})
    write_json(
        folder / TOKENIZER_CONFIG_FILE,
        {
            "tokenizer_class": "PreTrainedTokenizerFast",
            "bos_token": EOS_TOKEN,
            "eos_token": EOS_TOKEN,
            "unk_token": EOS_TOKEN,
            "model_max_length": CONTEXT,
            "clean_up_tokenization_spaces": False,
            "chat_template": CHAT_TEMPLATE,
        },
    )
    return folder
