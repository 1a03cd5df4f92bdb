"""The embedding contract: text encoders exported the way Hugging Face Optimum exports them.

A model version folder is served on ``/v1/embeddings`` under this contract when it holds,
next to ``model.onnx``, a ``config.json`` and a ``tokenizer.json``, is no decoder (see
decoder_spec.py), and its graph speaks the ``feature-extraction`` contract:

- inputs ``input_ids`` and ``attention_mask`` INT64 [batch, seq], optionally
  ``token_type_ids`` (fed zeros) and ``position_ids`` (fed 0 ... seq - 1), nothing else;
- outputs, any of: ``sentence_embedding`` [batch, dim] (a sentence-transformers export,
  ``optimum-cli export onnx --library sentence_transformers``: pooling, dense layers and
  normalisation already in the graph), ``last_hidden_state`` or ``token_embeddings``
  [batch, seq, hidden] (pooled here), ``pooler_output`` [batch, hidden].

An encoder's export that keeps none of that (a BERT *classifier* with its ``logits``, a
graph with other inputs such as ``pixel_values``) stays a plain v2 tensor model.

Token outputs are pooled as sentence-transformers does, from the Pooling module's
``config.json`` (``modules.json`` says where it is, else ``1_Pooling/``), mean pooling over
the attention mask when there is none. Every embedding leaves the server with unit length,
as OpenAI's do (whether or not the folder has a ``Normalize`` module).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from clawdbot_runtime.decoder_spec import (
    ATTENTION_MASK,
    CONFIG_FILE,
    INPUT_IDS,
    POSITION_IDS,
    TOKENIZER_CONFIG_FILE,
    read_json,
)
from clawdbot_runtime.tensors import Array, TensorSpec

TOKEN_TYPE_IDS = "token_type_ids"
LAST_HIDDEN_STATE = "last_hidden_state"
TOKEN_EMBEDDINGS = "token_embeddings"  # sentence-transformers' name for the same tensor
SENTENCE_EMBEDDING = "sentence_embedding"
POOLER_OUTPUT = "pooler_output"

MODULES_FILE = "modules.json"
SENTENCE_CONFIG_FILE = "sentence_bert_config.json"
POOLING_FOLDER = "1_Pooling"
# Every file of an embedding folder whose change must reload the model (model.fingerprint).
EMBEDDING_FILES = (
    MODULES_FILE,
    SENTENCE_CONFIG_FILE,
    f"{POOLING_FOLDER}/config.json",
)

# Per-token outputs have a sequence axis (1) that padding lengthens; pooled ones do not.
TOKEN_OUTPUTS = (LAST_HIDDEN_STATE, TOKEN_EMBEDDINGS)
POOLED_OUTPUTS = (SENTENCE_EMBEDDING, POOLER_OUTPUT)
_INPUTS = (INPUT_IDS, ATTENTION_MASK, TOKEN_TYPE_IDS, POSITION_IDS)
EXPORT_HINT = (
    "export the model with `optimum-cli export onnx --task feature-extraction` "
    "(or remove config.json to serve it as a plain tensor model)"
)

PoolingMode = Literal["cls", "max", "mean", "mean_sqrt_len_tokens", "weightedmean", "lasttoken"]
# sentence-transformers' config keys, in the order its Pooling module concatenates them.
_POOLING_KEYS: tuple[tuple[str, PoolingMode], ...] = (
    ("pooling_mode_cls_token", "cls"),
    ("pooling_mode_max_tokens", "max"),
    ("pooling_mode_mean_tokens", "mean"),
    ("pooling_mode_mean_sqrt_len_tokens", "mean_sqrt_len_tokens"),
    ("pooling_mode_weightedmean_tokens", "weightedmean"),
    ("pooling_mode_lasttoken", "lasttoken"),
)
# Families that number positions from pad_token_id + 1 (RoBERTa's scheme): their position
# table holds max_position_embeddings - pad_token_id - 1 usable positions.
_OFFSET_POSITIONS = ("roberta", "xlm-roberta", "camembert", "mpnet")
# tokenizer_config.json's "no limit" is a huge number (transformers writes 1e30).
_NO_LIMIT = 1_000_000


def _int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return None


def read_modules(folder: Path) -> tuple[Path | None, bool]:
    """Where the Pooling module's config.json is (it may be missing), and whether a Dense
    module follows it.

    ``modules.json`` lists a sentence-transformers pipeline (Transformer, Pooling, Dense,
    Normalize...) with each module's folder; without it, ``1_Pooling/`` is looked for.
    """
    modules = read_json(folder / MODULES_FILE)
    if modules is None:
        default = folder / POOLING_FOLDER / "config.json"
        return (default if default.is_file() else None), False
    if not isinstance(modules, list):
        raise ValueError(f"{MODULES_FILE} must hold a list of modules")
    pooling: Path | None = None
    dense = False
    for module in modules:
        kind = str(module.get("type", "")) if isinstance(module, dict) else ""
        if kind.endswith(".Pooling"):
            pooling = folder / str(module.get("path", "")) / "config.json"
        elif kind.endswith(".Dense"):
            dense = True
    return pooling, dense


def read_pooling(path: Path | None) -> tuple[PoolingMode, ...]:
    """Pooling modes from a Pooling module's config (sentence-transformers' defaults apply);
    mean pooling when there is no Pooling module."""
    if path is None:
        return ("mean",)
    where = f"{path.parent.name}/{path.name}"
    if not path.is_file():
        raise ValueError(
            f"{MODULES_FILE} lists a Pooling module whose {where} is missing; copy the "
            "module's folder from the sentence-transformers model"
        )
    config = read_json(path)
    if not isinstance(config, dict):
        raise ValueError(f"{where} must hold a JSON object")
    chosen = config.get("pooling_mode")
    if isinstance(chosen, str):
        modes = {mode for _, mode in _POOLING_KEYS}
        if chosen.lower() not in modes:
            raise ValueError(
                f"pooling mode '{chosen}' in {where} is not one of: " + ", ".join(sorted(modes))
            )
        return (next(mode for _, mode in _POOLING_KEYS if mode == chosen.lower()),)
    # The Pooling module's own default is mean pooling on, everything else off.
    picked = tuple(mode for key, mode in _POOLING_KEYS if config.get(key, mode == "mean") is True)
    if not picked:
        raise ValueError(f"{where} turns every pooling mode off")
    return picked


def pool(tokens: Array, mask: Array, modes: Sequence[PoolingMode]) -> Array:
    """Sentence vectors [batch, len(modes) * hidden] from token vectors, as sentence-transformers
    pools them: each mode over the tokens the attention mask keeps, concatenated in order."""
    hidden = tokens.astype(np.float32, copy=False)
    keep = mask.astype(np.float32)[:, :, None]  # [batch, seq, 1]
    counts = np.maximum(keep.sum(axis=1), 1e-9)  # [batch, 1]
    parts: list[Array] = []
    for mode in modes:
        if mode == "cls":
            parts.append(hidden[:, 0])
        elif mode == "max":
            parts.append(np.where(keep > 0, hidden, np.float32(-1e9)).max(axis=1))
        elif mode == "mean":
            parts.append((hidden * keep).sum(axis=1) / counts)
        elif mode == "mean_sqrt_len_tokens":
            parts.append((hidden * keep).sum(axis=1) / np.sqrt(counts))
        elif mode == "weightedmean":
            positions = np.arange(1, hidden.shape[1] + 1, dtype=np.float32)[None, :, None]
            weights = keep * positions
            parts.append((hidden * weights).sum(axis=1) / np.maximum(weights.sum(axis=1), 1e-9))
        else:  # lasttoken: the last position the mask keeps
            last = mask.shape[1] - 1 - np.argmax(mask[:, ::-1] > 0, axis=1)
            parts.append(hidden[np.arange(hidden.shape[0]), last])
    return np.concatenate(parts, axis=1).astype(np.float32, copy=False)


def normalize(vectors: Array) -> Array:
    """Rows scaled to unit L2 length (an all-zero row stays zero)."""
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    scaled: Array = vectors / np.maximum(norms, 1e-12)
    return scaled.astype(np.float32, copy=False)


class EmbeddingSpec(BaseModel):
    """What the embedding path needs to know of an encoder, from its files and graph."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model_type: str = Field(description="config.json's model_type, for logs.")
    max_tokens: int = Field(ge=1, description="Most tokens of one input, special ones included.")
    vocab_size: int = Field(ge=1, description="Token ids must be below this.")
    pad_token_id: int = Field(ge=0, description="Fills the padding the attention mask hides.")
    inputs: tuple[str, ...] = Field(description="The graph's inputs, of the four known ones.")
    source: str = Field(description="The output embeddings come from.")
    pooling: tuple[PoolingMode, ...] = Field(
        description="How a token output is pooled (unused for a pooled output)."
    )
    dimension: int | None = Field(
        default=None, description="Length of an embedding, when the graph or config fixes it."
    )
    token_outputs: tuple[str, ...] = Field(description="Outputs with a sequence axis.")
    pooled_outputs: tuple[str, ...] = Field(description="Outputs with one vector per row.")

    @property
    def pools(self) -> bool:
        """Whether the server pools ``source`` (a token output) itself."""
        return self.source in self.token_outputs

    # -- feeds ----------------------------------------------------------------------------

    def feeds(self, rows: Sequence[Sequence[int]]) -> dict[str, Array]:
        """One run's inputs: ``rows`` right-padded to the longest, the padding masked out."""
        length = max(len(row) for row in rows)
        ids = np.full((len(rows), length), self.pad_token_id, dtype=np.int64)
        mask = np.zeros((len(rows), length), dtype=np.int64)
        for i, row in enumerate(rows):
            ids[i, : len(row)] = row
            mask[i, : len(row)] = 1
        feeds: dict[str, Array] = {INPUT_IDS: ids, ATTENTION_MASK: mask}
        if TOKEN_TYPE_IDS in self.inputs:
            feeds[TOKEN_TYPE_IDS] = np.zeros_like(ids)
        if POSITION_IDS in self.inputs:
            feeds[POSITION_IDS] = np.broadcast_to(
                np.arange(length, dtype=np.int64), ids.shape
            ).copy()
        return feeds

    def warmup_feeds(self) -> dict[str, Array]:
        """A one-token input: what the first request runs, minus its length."""
        return self.feeds([[self.pad_token_id]])

    def embed(self, outputs: Mapping[str, Array], mask: Array) -> Array:
        """Unit-length embeddings [batch, dim] from one run's outputs and its attention mask."""
        value = outputs[self.source]
        vectors = pool(value, mask, self.pooling) if self.pools else value.astype(np.float32)
        return normalize(vectors)

    # -- merging requests of different lengths (batching.py) --------------------------------

    def merge_signature(
        self, feeds: Mapping[str, Array], outputs: Sequence[str]
    ) -> tuple[tuple[str, str, tuple[int, ...]], ...]:
        """What runs must share to merge; -1 for a sequence length that padding may change.

        Right padding leaves an encoder's results at the real positions as they were (the
        attention mask hides the padding from every token), so requests of any length merge
        when every input is [rows, seq] with one seq and only outputs this spec can cut back
        are asked for. Anything else merges only with requests of exactly its shapes.
        """
        lengths = {a.shape[1] if a.ndim == 2 else -2 for a in feeds.values()}
        known = set(self.token_outputs) | set(self.pooled_outputs)
        padded = len(lengths) == 1 and -2 not in lengths and set(outputs) <= known
        return tuple(
            (name, str(a.dtype), (-1,) if padded else tuple(a.shape[1:]))
            for name, a in sorted(feeds.items())
        )

    def merge_steps(self, steps: list[dict[str, Array]]) -> tuple[dict[str, Array], list[int]]:
        """Stack runs right-padded to the longest; each run's padding, for :meth:`unpad`.

        Position ids of the padding continue the row's count, so the real positions keep
        their numbers; every other input is padded with what :meth:`feeds` pads with.
        """
        own = [int(step[INPUT_IDS].shape[1]) for step in steps]
        longest = max(own)
        merged: dict[str, Array] = {}
        for name in steps[0]:
            parts = []
            for step, length in zip(steps, own, strict=True):
                array, pad = step[name], longest - length
                if pad and name == POSITION_IDS:
                    tail = array[:, -1:] + np.arange(1, pad + 1, dtype=array.dtype)
                    array = np.concatenate([array, tail], axis=1)
                elif pad:
                    fill = self.pad_token_id if name == INPUT_IDS else 0
                    array = np.pad(array, ((0, 0), (0, pad)), constant_values=fill)
                parts.append(array)
            merged[name] = np.concatenate(parts)
        return merged, [longest - length for length in own]

    def unpad(self, outputs: dict[str, Array], pad: int) -> dict[str, Array]:
        """One run's outputs without the padding :meth:`merge_steps` gave it."""
        if pad == 0:
            return outputs
        cut = set(self.token_outputs)
        return {
            name: value[:, : value.shape[1] - pad] if name in cut else value
            for name, value in outputs.items()
        }

    # -- reading a folder -----------------------------------------------------------------

    @staticmethod
    def applies(inputs: list[TensorSpec], outputs: list[TensorSpec]) -> bool:
        """Whether a folder with config.json and tokenizer.json, no decoder, is an encoder to
        embed with: the feature-extraction inputs only, and an output embeddings come from."""
        names = {s.name for s in inputs}
        return (
            {INPUT_IDS, ATTENTION_MASK} <= names
            and names <= set(_INPUTS)
            and any(s.name in TOKEN_OUTPUTS + POOLED_OUTPUTS for s in outputs)
        )

    @classmethod
    def from_folder(
        cls,
        folder: Path,
        config: dict[str, Any],
        inputs: list[TensorSpec],
        outputs: list[TensorSpec],
        tokenizer_vocab: int,
    ) -> EmbeddingSpec:
        """Check the graph and the sentence-transformers files; ValueError naming what is amiss."""
        for spec in inputs:
            if spec.datatype != "INT64" or len(spec.shape) != 2:
                raise ValueError(
                    f"input '{spec.name}' is {spec.datatype} {list(spec.shape)}; it must be "
                    f"INT64 [batch, sequence]; {EXPORT_HINT}"
                )
        by_output = {s.name: s for s in outputs}
        token_outputs = tuple(n for n in TOKEN_OUTPUTS if n in by_output)
        pooled_outputs = tuple(n for n in POOLED_OUTPUTS if n in by_output)
        for name in token_outputs + pooled_outputs:
            spec = by_output[name]
            rank = 3 if name in token_outputs else 2
            if spec.datatype not in ("FP32", "FP16") or len(spec.shape) != rank:
                axes = "[batch, sequence, hidden]" if rank == 3 else "[batch, dimension]"
                raise ValueError(f"output '{name}' must be float {axes}")
        pooling_file, dense = read_modules(folder)
        # The export's own sentence vector wins: it has whatever the pipeline adds (dense
        # layers, normalisation); then token vectors pooled here; BERT's pooler last.
        if SENTENCE_EMBEDDING in by_output:
            source = SENTENCE_EMBEDDING
        elif token_outputs:
            source = token_outputs[0]
        else:
            source = POOLER_OUTPUT
        pooling = read_pooling(pooling_file) if source in token_outputs else ("mean",)
        if dense and source != SENTENCE_EMBEDDING:
            raise ValueError(
                f"{MODULES_FILE} lists a Dense module, which only a graph with a "
                f"'{SENTENCE_EMBEDDING}' output includes; export the model with "
                "`optimum-cli export onnx --library sentence_transformers`"
            )
        last = by_output[source].shape[-1]
        hidden = _int(config.get("hidden_size") or config.get("d_model") or config.get("dim"))
        if source == SENTENCE_EMBEDDING:
            dimension = last if last > 0 else None
        else:
            width = last if last > 0 else hidden
            dimension = (
                None if width is None else width * (len(pooling) if source in token_outputs else 1)
            )
        vocab = _int(config.get("vocab_size")) or tokenizer_vocab
        model_type = str(config.get("model_type") or "unknown")
        pad = _int(config.get("pad_token_id"))
        return cls(
            model_type=model_type,
            max_tokens=_max_tokens(folder, config, model_type, pad),
            vocab_size=vocab,
            pad_token_id=pad if pad is not None and 0 <= pad < vocab else 0,
            inputs=tuple(s.name for s in inputs),
            source=source,
            pooling=pooling,
            dimension=dimension,
            token_outputs=token_outputs,
            pooled_outputs=pooled_outputs,
        )


def _max_tokens(folder: Path, config: dict[str, Any], model_type: str, pad: int | None) -> int:
    """Most tokens per input: the position table's size, lowered to what sentence-transformers
    would truncate to (``max_seq_length``, else the tokenizer's ``model_max_length``)."""
    positions = _int(config.get("max_position_embeddings") or config.get("n_positions"))
    if positions is not None and model_type in _OFFSET_POSITIONS:
        positions -= (pad if pad is not None else 1) + 1
    sentence = read_json(folder / SENTENCE_CONFIG_FILE)
    tokenizer = read_json(folder / TOKENIZER_CONFIG_FILE)
    declared = _int(sentence.get("max_seq_length")) if isinstance(sentence, dict) else None
    if declared is None and isinstance(tokenizer, dict):
        declared = _int(tokenizer.get("model_max_length"))
        if declared is not None and declared >= _NO_LIMIT:
            declared = None
    limits = [n for n in (positions, declared) if n is not None and n > 0]
    if not limits:
        raise ValueError(
            f"{CONFIG_FILE} has no max_position_embeddings and neither {SENTENCE_CONFIG_FILE} "
            f"nor {TOKENIZER_CONFIG_FILE} gives a maximum length, so inputs could not be "
            "checked against the model's positions"
        )
    return min(limits)
