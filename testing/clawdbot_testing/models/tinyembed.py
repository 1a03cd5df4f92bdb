"""A tiny BERT-style text encoder, built as an ONNX graph like a sentence-transformers export.

What it is, plainly: a 2-layer, 64-wide post-norm transformer encoder (4 heads, learned
position and token-type embeddings, LayerNorm, GELU MLP, the attention mask hiding padding)
over a lower-cased WordPiece vocabulary of the words in the short text of
:data:`tinylm.CORPUS`. Its token embeddings are the rank-64 SVD factors of the corpus's
positive pointwise mutual information between words that appear near each other, mixed with
a seeded random vector per token; so words that appear near each other in the corpus get
related vectors, and, mean-pooled, texts that share words point in similar directions
while unrelated texts do not. The attention and MLP weights are small seeded
random numbers that make each token's vector depend on its neighbours without drowning
the word signal. A test and demo model, not a real embedding model; building it takes
about a second, downloads nothing, and gives the same bytes each time.

The folder it writes is laid out like ``optimum-cli export onnx --task feature-extraction``
of a sentence-transformers model: ``model.onnx`` with ``input_ids``, ``attention_mask`` and
``token_type_ids`` in and ``last_hidden_state`` out (Optimum's names and dynamic axes),
``config.json``, ``tokenizer.json`` (with the truncation and padding settings such exports
carry, which the server ignores), ``tokenizer_config.json``, ``modules.json``,
``sentence_bert_config.json``, ``1_Pooling/config.json`` (mean pooling) and ``2_Normalize/``.
See embedding_spec.py for the contract the server checks.
"""

from __future__ import annotations

import itertools
import math
import string
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper
from tokenizers import (
    Tokenizer,
    decoders,
    models,
    normalizers,
    pre_tokenizers,
    processors,
)

from clawdbot_runtime.decoder_spec import (
    ATTENTION_MASK,
    CONFIG_FILE,
    INPUT_IDS,
    TOKENIZER_CONFIG_FILE,
    TOKENIZER_FILE,
)
from clawdbot_runtime.embedding_spec import (
    LAST_HIDDEN_STATE,
    MODULES_FILE,
    POOLING_FOLDER,
    SENTENCE_CONFIG_FILE,
    TOKEN_TYPE_IDS,
)
from clawdbot_runtime.model import MODEL_FILE
from clawdbot_testing.models.tinygpt import GraphBuilder, write_json
from clawdbot_testing.models.tinylm import corpus_documents

DEMO_EMBED_NAME = "tiny-embed"
LAYERS = 2
HIDDEN = 64
HEADS = 4
HEAD_DIM = HIDDEN // HEADS
INTERMEDIATE = 2 * HIDDEN
CONTEXT = 128
PAD, UNK, CLS, SEP, MASK = "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"
SPECIAL_TOKENS = [PAD, UNK, CLS, SEP, MASK]
LN_EPS = 1e-12
SEED = 20240611
# Words within this many tokens of each other count as keeping company.
WINDOW = 4
# Share of each token vector that is its own random direction rather than corpus company:
# enough that two texts sharing a word stand out from texts that are merely on one topic.
OWN_SHARE = 0.4
# Standard deviation of the attention/MLP output weights relative to the residual stream.
LAYER_SCALE = 0.25


def build_tokenizer(documents: list[str]) -> Tokenizer:
    """A lower-cased WordPiece tokenizer (BERT style: [CLS] text [SEP]) whose vocabulary is
    every word of ``documents`` plus single letters and digits, bare and as ``##`` pieces,
    so unknown words split into pieces instead of [UNK].

    The vocabulary is listed rather than trained: ``tokenizers``' WordPiece trainer numbers
    ``##`` pieces in hash order, which would change the file from one build to the next.
    """
    normalizer = normalizers.BertNormalizer(lowercase=True)
    splitter = pre_tokenizers.BertPreTokenizer()
    words: set[str] = set()
    chars = set(string.ascii_lowercase + string.digits)
    for doc in documents:
        for word, _ in splitter.pre_tokenize_str(normalizer.normalize_str(doc)):
            words.add(word)
            chars.update(word)
    pieces = [*sorted(chars), *sorted(f"##{c}" for c in chars)]
    listed = [*SPECIAL_TOKENS, *pieces, *sorted(words - chars)]
    vocab = {token: i for i, token in enumerate(listed)}
    tokenizer = Tokenizer(
        models.WordPiece(vocab=vocab, unk_token=UNK, max_input_chars_per_word=100)
    )
    tokenizer.normalizer = normalizer
    tokenizer.pre_tokenizer = splitter
    tokenizer.decoder = decoders.WordPiece(prefix="##")
    tokenizer.add_special_tokens(SPECIAL_TOKENS)
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{CLS}:0 $A:0 {SEP}:0",
        pair=f"{CLS}:0 $A:0 {SEP}:0 $B:1 {SEP}:1",
        special_tokens=[(CLS, vocab[CLS]), (SEP, vocab[SEP])],
    )
    # What sentence-transformers exports save; the server turns both off.
    tokenizer.enable_truncation(max_length=CONTEXT)
    tokenizer.enable_padding(pad_id=vocab[PAD], pad_token=PAD)
    return tokenizer


def company_vectors(sequences: list[list[int]], vocab: int) -> np.ndarray:
    """Unit vectors [vocab, HIDDEN] from the corpus's PPMI between tokens near each other
    (rank-HIDDEN SVD factors, centred); tokens that never occur get zero rows."""
    counts: Counter[tuple[int, int]] = Counter()
    for ids in sequences:
        for i, j in itertools.combinations(range(len(ids)), 2):
            if j - i <= WINDOW and ids[i] != ids[j]:
                counts[ids[i], ids[j]] += 1
                counts[ids[j], ids[i]] += 1
    table = np.zeros((vocab, vocab))
    for (a, b), n in counts.items():
        table[a, b] = n
    total = table.sum()
    row = table.sum(axis=1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        pmi = np.log(table * total / (row @ row.T))
    ppmi = np.where(np.isfinite(pmi) & (pmi > 0), pmi, 0.0)
    u, s, _ = np.linalg.svd(ppmi)
    vectors = u[:, :HIDDEN] * np.sqrt(s[:HIDDEN])
    # Centred over the tokens that occur: the direction every word shares says nothing
    # about any of them, and would make every pair of texts look alike.
    seen = np.abs(vectors).sum(axis=1) > 0
    vectors[seen] -= vectors[seen].mean(axis=0)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return np.where(norms > 0, vectors / np.maximum(norms, 1e-12), 0.0)


def fit_weights(tokenizer: Tokenizer, documents: list[str]) -> dict[str, np.ndarray]:
    """Corpus-derived token embeddings, seeded random layers (all float32)."""
    vocab = tokenizer.get_vocab_size()
    sequences = [tokenizer.encode(doc, add_special_tokens=False).ids for doc in documents]
    rng = np.random.default_rng(SEED)

    def normal(*shape: int, std: float) -> np.ndarray:
        return rng.standard_normal(shape) * std

    own = normal(vocab, HIDDEN, std=1.0)
    own /= np.linalg.norm(own, axis=1, keepdims=True)
    company = company_vectors(sequences, vocab)
    # Tokens never seen in the corpus (single characters, ## pieces) are their own direction.
    seen = np.linalg.norm(company, axis=1, keepdims=True) > 0
    mix = np.where(seen, math.sqrt(OWN_SHARE) * own + math.sqrt(1 - OWN_SHARE) * company, own)
    weights: dict[str, np.ndarray] = {
        "word_emb": mix * math.sqrt(HIDDEN),  # LayerNorm's scale: unit variance per entry
        "pos_emb": normal(CONTEXT, HIDDEN, std=0.1),
        "type_emb": normal(2, HIDDEN, std=0.02),
        "emb_ln_w": np.ones(HIDDEN),
        "emb_ln_b": np.zeros(HIDDEN),
    }
    for layer in range(LAYERS):
        p = f"l{layer}."
        for name in ("wq", "wk", "wv"):
            weights[p + name] = normal(HIDDEN, HIDDEN, std=1.0 / math.sqrt(HIDDEN))
        weights[p + "wo"] = normal(HIDDEN, HIDDEN, std=LAYER_SCALE / math.sqrt(HIDDEN))
        weights[p + "w_up"] = normal(HIDDEN, INTERMEDIATE, std=1.0 / math.sqrt(HIDDEN))
        weights[p + "b_up"] = np.zeros(INTERMEDIATE)
        weights[p + "w_down"] = normal(
            INTERMEDIATE, HIDDEN, std=LAYER_SCALE / math.sqrt(INTERMEDIATE)
        )
        for norm in ("ln1", "ln2"):
            weights[p + norm + "_w"] = np.ones(HIDDEN)
            weights[p + norm + "_b"] = np.zeros(HIDDEN)
    return {name: value.astype(np.float32) for name, value in weights.items()}


def build_graph(weights: dict[str, np.ndarray]) -> onnx.ModelProto:
    """The encoder graph: Optimum's feature-extraction inputs and ``last_hidden_state``."""
    g = GraphBuilder()
    i64, f32 = np.int64, np.float32

    def layer_norm(x: str, prefix: str) -> str:
        return g.op(
            "LayerNormalization",
            [x, g.const("ln_w", weights[prefix + "_w"]), g.const("ln_b", weights[prefix + "_b"])],
            axis=-1,
            epsilon=LN_EPS,
        )

    seq = g.op("Gather", [g.op("Shape", [INPUT_IDS]), g.const("i1", np.array(1, dtype=i64))])
    positions = g.op(
        "Range",
        [g.const("zero", np.array(0, dtype=i64)), seq, g.const("one", np.array(1, dtype=i64))],
    )
    hidden = g.op(
        "Add",
        [
            g.op(
                "Add",
                [
                    g.op("Gather", [g.const("word_emb", weights["word_emb"]), INPUT_IDS]),
                    g.op("Gather", [g.const("type_emb", weights["type_emb"]), TOKEN_TYPE_IDS]),
                ],
            ),
            g.op("Gather", [g.const("pos_emb", weights["pos_emb"]), positions]),
        ],
        "embed",
    )
    hidden = g.op(
        "LayerNormalization",
        [hidden, g.const("ln_w", weights["emb_ln_w"]), g.const("ln_b", weights["emb_ln_b"])],
        axis=-1,
        epsilon=LN_EPS,
    )
    # Padding never receives attention: [B, 1, 1, T] of 0 (keep) or -1e9 (drop).
    keep = g.op(
        "Unsqueeze",
        [
            g.op("Cast", [ATTENTION_MASK], to=TensorProto.BOOL),
            g.const("ax", np.array([1, 2], dtype=i64)),
        ],
    )
    bias = g.op(
        "Where",
        [
            keep,
            g.const("keep", np.array(0.0, dtype=f32)),
            g.const("drop", np.array(-1e9, dtype=f32)),
        ],
        "mask_bias",
    )
    scale = g.const("scale", np.array(1.0 / math.sqrt(HEAD_DIM), dtype=f32))

    def heads(x: str, w: np.ndarray) -> str:  # [B,S,H] -> [B,heads,S,D]
        flat = g.op("MatMul", [x, g.const("w", w)])
        split = g.op("Reshape", [flat, g.const("shape", np.array([0, 0, HEADS, HEAD_DIM], i64))])
        return g.op("Transpose", [split], perm=[0, 2, 1, 3])

    for layer in range(LAYERS):
        p = f"l{layer}."
        q, k, v = (heads(hidden, weights[p + name]) for name in ("wq", "wk", "wv"))
        scores = g.op("MatMul", [q, g.op("Transpose", [k], perm=[0, 1, 3, 2])])
        scores = g.op("Add", [g.op("Mul", [scores, scale]), bias])
        context = g.op("MatMul", [g.op("Softmax", [scores], axis=-1), v])  # [B,heads,S,D]
        context = g.op("Transpose", [context], perm=[0, 2, 1, 3])
        context = g.op("Reshape", [context, g.const("shape", np.array([0, 0, HIDDEN], i64))])
        attended = g.op("MatMul", [context, g.const("wo", weights[p + "wo"])])
        hidden = layer_norm(g.op("Add", [hidden, attended]), p + "ln1")
        up = g.op(
            "Add",
            [
                g.op("MatMul", [hidden, g.const("w_up", weights[p + "w_up"])]),
                g.const("b_up", weights[p + "b_up"]),
            ],
        )
        # GELU, erf form (BERT's).
        gate = g.op(
            "Add",
            [
                g.const("one_f", np.array(1.0, dtype=f32)),
                g.op(
                    "Erf", [g.op("Mul", [up, g.const("rsqrt2", np.array(1 / math.sqrt(2), f32))])]
                ),
            ],
        )
        act = g.op("Mul", [g.op("Mul", [up, gate]), g.const("half", np.array(0.5, dtype=f32))])
        down = g.op("MatMul", [act, g.const("w_down", weights[p + "w_down"])])
        out = LAST_HIDDEN_STATE if layer == LAYERS - 1 else ""
        summed = g.op("Add", [hidden, down])
        if out:
            g.to(
                "LayerNormalization",
                [
                    summed,
                    g.const("ln_w", weights[p + "ln2_w"]),
                    g.const("ln_b", weights[p + "ln2_b"]),
                ],
                out,
                axis=-1,
                epsilon=LN_EPS,
            )
        else:
            hidden = layer_norm(summed, p + "ln2")

    batch, seq_axis = "batch_size", "sequence_length"
    inputs = [
        helper.make_tensor_value_info(name, TensorProto.INT64, [batch, seq_axis])
        for name in (INPUT_IDS, ATTENTION_MASK, TOKEN_TYPE_IDS)
    ]
    outputs = [
        helper.make_tensor_value_info(
            LAST_HIDDEN_STATE, TensorProto.FLOAT, [batch, seq_axis, HIDDEN]
        )
    ]
    return g.model("clawdbot_tiny_embed", inputs, outputs, "clawdbot-tinyembed")


def build_tiny_embed(repository: Path, name: str = DEMO_EMBED_NAME, version: int = 1) -> Path:
    """Write ``<repository>/<name>/<version>/`` as a sentence-transformers style export."""
    documents = corpus_documents()
    tokenizer = build_tokenizer(documents)
    vocab = tokenizer.get_vocab_size()
    weights = fit_weights(tokenizer, documents)
    folder = repository / name / str(version)
    folder.mkdir(parents=True, exist_ok=True)
    onnx.save_model(build_graph(weights), str(folder / MODEL_FILE))
    tokenizer.save(str(folder / TOKENIZER_FILE))
    pad = tokenizer.token_to_id(PAD)
    write_json(
        folder / CONFIG_FILE,
        {
            "architectures": ["BertModel"],
            "model_type": "bert",
            "hidden_size": HIDDEN,
            "num_hidden_layers": LAYERS,
            "num_attention_heads": HEADS,
            "intermediate_size": INTERMEDIATE,
            "hidden_act": "gelu",
            "max_position_embeddings": CONTEXT,
            "type_vocab_size": 2,
            "vocab_size": vocab,
            "layer_norm_eps": LN_EPS,
            "pad_token_id": pad,
            "position_embedding_type": "absolute",
            "torch_dtype": "float32",
        },
    )
    write_json(
        folder / TOKENIZER_CONFIG_FILE,
        {
            "tokenizer_class": "BertTokenizer",
            "do_lower_case": True,
            "model_max_length": CONTEXT,
            "pad_token": PAD,
            "unk_token": UNK,
            "cls_token": CLS,
            "sep_token": SEP,
            "mask_token": MASK,
        },
    )
    write_json(
        folder / MODULES_FILE,
        [
            {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
            {
                "idx": 1,
                "name": "1",
                "path": POOLING_FOLDER,
                "type": "sentence_transformers.models.Pooling",
            },
            {
                "idx": 2,
                "name": "2",
                "path": "2_Normalize",
                "type": "sentence_transformers.models.Normalize",
            },
        ],
    )
    write_json(folder / SENTENCE_CONFIG_FILE, {"max_seq_length": CONTEXT, "do_lower_case": False})
    write_json(
        folder / POOLING_FOLDER / "config.json",
        {
            "word_embedding_dimension": HIDDEN,
            "pooling_mode_cls_token": False,
            "pooling_mode_mean_tokens": True,
            "pooling_mode_max_tokens": False,
            "pooling_mode_mean_sqrt_len_tokens": False,
            "pooling_mode_weightedmean_tokens": False,
            "pooling_mode_lasttoken": False,
            "include_prompt": True,
        },
    )
    (folder / "2_Normalize").mkdir(exist_ok=True)
    return folder
