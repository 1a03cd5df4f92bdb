"""A tiny, deterministic character-level language model, built as a real ONNX graph.

What it is, plainly: an 8-gram character model with back-off, fitted in a fraction of a
second by counting over the short text in :data:`CORPUS`, and stored as an ONNX graph that
onnxruntime runs like any other model. It exists so the ``/v1`` text-generation path, the
OpenAI client tests and the compression tool exercise real ONNX inference without
downloading a model. It writes plausible fragments of its training text; it does not
understand anything.

The graph, for ``input_ids`` INT64 [batch, seq]:

1. left-pad with BOS and keep the last 7 tokens (the context window);
2. for each context length 1 to 7 compute an integer key and look it up with the
   ``ai.onnx.ml`` LabelEncoder (seen contexts -> table row, unseen -> -1); the longest
   context seen in training wins (back-off), the unigram row catches everything else;
3. ``Gather`` the row's context embedding [batch, V] and project it with ``MatMul`` + ``Add``
   to next-token ``logits`` [batch, V].

The embedding and projection are the exact SVD factorisation of the table of smoothed
(Witten-Bell) log-probabilities, so the graph has the embedding -> linear head shape of a
real decoder and its MatMul is something int8/int4 weight quantization can act on.

The project's second demo model, a GPT-style decoder with a KV cache laid out like a
Hugging Face Optimum export, is in tinygpt.py; docs/runtime.md says why generation runs on
plain onnxruntime sessions rather than onnxruntime-genai.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from clawdbot_runtime.lm_spec import LanguageModelSpec
from clawdbot_runtime.model import MODEL_FILE

DEMO_MODEL_NAME = "tiny-chat"
ORDER = 8  # n-gram order: the model conditions on the previous ORDER - 1 characters
CONTEXT = ORDER - 1
SPECIALS = ["<bos>", "<eos>", "<unk>"]
BOS, EOS, UNK = 0, 1, 2
# Log-probability given to tokens that must never be generated (BOS, UNK).
_NEVER = -30.0

# Documents are separated by blank lines; each one ends with EOS when fitted. The chat
# documents teach the "user:/assistant:" turn format the chat template produces.
CORPUS = """\
the local model answers short questions quickly, and the cloud model takes the long ones.
a request that carries private data stays on the cluster, and only clean text leaves it.
the router looks at the size of the prompt, the queue on the local pods and the price of \
the cloud, and then it decides where the request should go.
every decision is written to the audit log with its reason, but never with the private \
values themselves.
the operator watches the model deployments and creates the pods, the services and the \
autoscalers that keep them running.
when a new version of a model is ready, the old one keeps serving until the new one has \
warmed up.
small models run well on the processor, and large models need a graphics card with enough \
memory.
batching puts many small requests together, so the accelerator does more work in each step.
the sidecar speaks the same language as the cloud, so an application does not need to \
change a single line.
if the cloud is slow or down, the request falls back to the local model, and the other way \
around.
the weather is mild today, with a light wind from the west and a little rain in the evening.
the garden is green after the rain, and the bees are busy among the flowers.
a good map shows the roads, the rivers and the hills, and it fits in a pocket.
the train leaves at nine in the morning and arrives before noon.
she read the letter twice, smiled, and put it back into the envelope.
the kettle is on, the bread is warm, and there is honey on the table.

user: hello
assistant: hello! i am a small local model. how can i help you today?

user: what are you?
assistant: i am a tiny language model that runs on the local cluster.

user: where does my request go?
assistant: short requests stay on the local model, and long ones may go to the cloud.

user: is my data safe?
assistant: private data is removed before anything is sent to the cloud.

user: tell me about the weather.
assistant: the weather is mild today, with a light wind and a little rain in the evening.

user: thank you
assistant: you are welcome. have a good day!
"""


def corpus_documents(text: str = CORPUS) -> list[str]:
    """The training documents: blank-line separated, prose lines split into sentences."""
    documents: list[str] = []
    for raw in text.split("\n\n"):
        block = raw.strip("\n")
        if block.startswith("user:"):
            documents.append(block)
        else:
            documents.extend(line for line in block.splitlines() if line.strip())
    return documents


def build_vocab(documents: list[str]) -> list[str]:
    """Special tokens followed by every character of the corpus, sorted."""
    return SPECIALS + sorted({ch for doc in documents for ch in doc})


def fit_table(
    documents: list[str], vocab: list[str]
) -> tuple[list[dict[tuple[int, ...], int]], np.ndarray]:
    """Count n-grams and return per-order context -> row maps and the log-prob table.

    Row 0 is the unigram distribution; each longer context's distribution is Witten-Bell
    interpolated with that of its one-shorter suffix, so every row is a proper smoothed
    distribution and back-off in the graph only has to pick the longest known context.
    """
    ids = {ch: i for i, ch in enumerate(vocab)}
    size = len(vocab)
    counts: list[defaultdict[tuple[int, ...], Counter[int]]] = [
        defaultdict(Counter) for _ in range(ORDER)
    ]
    for doc in documents:
        tokens = [BOS] * CONTEXT + [ids[ch] for ch in doc] + [EOS]
        for pos in range(CONTEXT, len(tokens)):
            for k in range(ORDER):  # k = context length
                counts[k][tuple(tokens[pos - k : pos])][tokens[pos]] += 1

    never = np.zeros(size, dtype=bool)
    never[[BOS, UNK]] = True

    def normalise(p: np.ndarray) -> np.ndarray:
        kept: np.ndarray = np.where(never, 0.0, p)
        return kept / float(kept.sum())

    unigram = np.ones(size)  # add-one, so every real token stays possible
    for token, n in counts[0][()].items():
        unigram[token] += n
    rows: list[np.ndarray] = [normalise(unigram)]
    row_of: list[dict[tuple[int, ...], int]] = [{(): 0}]
    for k in range(1, ORDER):
        row_of.append({})
        for context in sorted(counts[k]):
            followers = counts[k][context]
            total, distinct = sum(followers.values()), len(followers)
            ml = np.zeros(size)
            for token, n in followers.items():
                ml[token] = n / total
            lower = rows[row_of[k - 1][context[1:]]]
            weight = total / (total + distinct)
            row_of[k][context] = len(rows)
            rows.append(normalise(weight * ml + (1.0 - weight) * lower))
    table = np.log(np.maximum(np.stack(rows), 1e-30))
    table[:, never] = _NEVER
    return row_of, table.astype(np.float32)


def _context_key(context: tuple[int, ...], size: int) -> int:
    key = 0
    for token in context:
        key = key * size + token
    return key


def build_graph(row_of: list[dict[tuple[int, ...], int]], table: np.ndarray) -> onnx.ModelProto:
    """The ONNX model: context window -> back-off row lookup -> embedding -> logits."""
    size = table.shape[1]
    u, s, vt = np.linalg.svd(table.astype(np.float64), full_matrices=False)
    embedding = (u * s).astype(np.float32)  # [rows, rank]
    projection = vt.astype(np.float32)  # [rank, vocab]
    # The SVD centres nothing, so no bias is needed; an explicit zero bias keeps the head's
    # usual MatMul + Add shape for tools that look for it.
    bias = np.zeros(size, dtype=np.float32)

    def const(name: str, value: np.ndarray) -> onnx.NodeProto:
        return helper.make_node("Constant", [], [name], value=numpy_helper.from_array(value, name))

    i64 = np.int64
    nodes: list[onnx.NodeProto] = [
        # Left-pad with CONTEXT BOS tokens so short prompts still fill the window.
        helper.make_node("Shape", ["input_ids"], ["ids_shape"]),
        const("zero_idx", np.array([0], dtype=i64)),
        helper.make_node("Gather", ["ids_shape", "zero_idx"], ["batch"], axis=0),
        const("pad_width", np.array([CONTEXT], dtype=i64)),
        helper.make_node("Concat", ["batch", "pad_width"], ["pad_shape"], axis=0),
        const("bos", np.array([[BOS]], dtype=i64)),
        helper.make_node("Expand", ["bos", "pad_shape"], ["pad"]),
        helper.make_node("Concat", ["pad", "input_ids"], ["padded"], axis=1),
        const("win_start", np.array([-CONTEXT], dtype=i64)),
        const("win_end", np.array([np.iinfo(i64).max], dtype=i64)),
        const("axis1", np.array([1], dtype=i64)),
        helper.make_node("Slice", ["padded", "win_start", "win_end", "axis1"], ["window_raw"]),
        # Ids outside the vocabulary would make Gather fail; treat them as UNK.
        const("lo", np.array(0, dtype=i64)),
        const("hi", np.array(size - 1, dtype=i64)),
        const("unk", np.array(UNK, dtype=i64)),
        helper.make_node("Less", ["window_raw", "lo"], ["below"]),
        helper.make_node("Greater", ["window_raw", "hi"], ["above"]),
        helper.make_node("Or", ["below", "above"], ["outside"]),
        helper.make_node("Where", ["outside", "unk", "window_raw"], ["window"]),
        const("vocab_size", np.array(size, dtype=i64)),
    ]
    # Longest context first; each order's key is the context read as a base-V number.
    row = "unigram_row"
    nodes.append(const(row, np.zeros(1, dtype=i64)))
    for k in range(1, ORDER):
        tokens = []
        for j in range(k):
            col = f"c{k}_{j}"
            nodes.append(const(f"{col}_idx", np.array(CONTEXT - k + j, dtype=i64)))
            nodes.append(helper.make_node("Gather", ["window", f"{col}_idx"], [col], axis=1))
            tokens.append(col)
        key = tokens[0]
        for j, col in enumerate(tokens[1:], start=1):
            nodes.append(helper.make_node("Mul", [key, "vocab_size"], [f"k{k}_m{j}"]))
            nodes.append(helper.make_node("Add", [f"k{k}_m{j}", col], [f"k{k}_a{j}"]))
            key = f"k{k}_a{j}"
        contexts = sorted(row_of[k].items())
        nodes.append(
            helper.make_node(
                "LabelEncoder",
                [key],
                [f"row{k}"],
                domain="ai.onnx.ml",
                keys_int64s=[_context_key(c, size) for c, _ in contexts],
                values_int64s=[r for _, r in contexts],
                default_int64=-1,
            )
        )
        nodes.append(helper.make_node("Less", [f"row{k}", "lo"], [f"miss{k}"]))
        nodes.append(helper.make_node("Where", [f"miss{k}", row, f"row{k}"], [f"best{k}"]))
        row = f"best{k}"
    nodes += [
        helper.make_node("Gather", ["embedding", row], ["hidden"], axis=0),
        helper.make_node("MatMul", ["hidden", "projection"], ["scores"]),
        helper.make_node("Add", ["scores", "bias"], ["logits"]),
    ]
    graph = helper.make_graph(
        nodes,
        "clawdbot_tiny_lm",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "sequence"])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", size])],
        initializer=[
            numpy_helper.from_array(embedding, "embedding"),
            numpy_helper.from_array(projection, "projection"),
            numpy_helper.from_array(bias, "bias"),
        ],
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("ai.onnx.ml", 3)],
        producer_name="clawdbot-tinylm",
    )
    # IR 8 loads on every onnxruntime release this project supports.
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


def build_tiny_lm(repository: Path, name: str = DEMO_MODEL_NAME, version: int = 1) -> Path:
    """Fit the model and write ``<repository>/<name>/<version>/`` (model + generation.json)."""
    documents = corpus_documents()
    vocab = build_vocab(documents)
    row_of, table = fit_table(documents, vocab)
    folder = repository / name / str(version)
    folder.mkdir(parents=True, exist_ok=True)
    onnx.save_model(build_graph(row_of, table), str(folder / MODEL_FILE))
    LanguageModelSpec(
        vocab=vocab,
        bos_token_id=BOS,
        eos_token_id=EOS,
        unk_token_id=UNK,
        context_length=CONTEXT,
        lowercase=True,
        description=(
            f"character {ORDER}-gram model with back-off fitted on a built-in text; a test "
            "and demo model, not a real language model"
        ),
    ).write(folder)
    return folder
