"""The decoder contract: LLMs exported to ONNX the way Hugging Face Optimum exports them.

A model version folder is served on the ``/v1`` text routes under this contract when it
holds, next to ``model.onnx``, a ``config.json`` and a ``tokenizer.json`` (what
``optimum-cli export onnx --task text-generation-with-past`` writes), and either the config
names a causal LM (``architectures`` ending in ``ForCausalLM`` or ``LMHeadModel``) or the
graph takes ``past_key_values.*`` inputs. An encoder's export (a BERT classifier also has
those two files) stays a plain v2 tensor model.

The graph must then speak the "text-generation-with-past" contract:

- inputs ``input_ids`` INT64 [batch, seq], ``attention_mask`` INT64 [batch, past + seq],
  optionally ``position_ids`` INT64 [batch, seq], and for each layer ``i``
  ``past_key_values.{i}.key`` / ``.value`` [batch, kv_heads, past, head_dim];
- outputs ``logits`` [batch, seq, vocab] and ``present.{i}.key`` / ``.value``
  [batch, kv_heads, past + seq, head_dim].

The generator runs the prompt once with an empty past (past = 0), then one token per step,
feeding the presents back as the next step's past: the KV cache.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from clawdbot_runtime.tensors import NUMPY_DTYPES, Array, TensorSpec

CONFIG_FILE = "config.json"
GENERATION_CONFIG_FILE = "generation_config.json"
TOKENIZER_FILE = "tokenizer.json"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
CHAT_TEMPLATE_FILE = "chat_template.jinja"
# Every file of a decoder folder whose change must reload the model (see model.fingerprint).
DECODER_FILES = (
    CONFIG_FILE,
    GENERATION_CONFIG_FILE,
    TOKENIZER_FILE,
    TOKENIZER_CONFIG_FILE,
    CHAT_TEMPLATE_FILE,
    "model.onnx_data",
)

INPUT_IDS = "input_ids"
ATTENTION_MASK = "attention_mask"
POSITION_IDS = "position_ids"
LOGITS = "logits"
EXPORT_HINT = (
    "export the model with `optimum-cli export onnx --task text-generation-with-past` "
    "(or remove config.json to serve it as a plain tensor model)"
)
# Architecture name endings of Hugging Face causal LMs (LlamaForCausalLM, GPT2LMHeadModel).
_CAUSAL_SUFFIXES = ("ForCausalLM", "LMHeadModel")
# Config keys for the same quantity across model families (Llama/Mistral/Qwen, GPT-2, MPT).
_LAYERS = ("num_hidden_layers", "n_layer", "num_layers", "n_layers")
_HEADS = ("num_attention_heads", "n_head", "num_heads", "n_heads")
_HIDDEN = ("hidden_size", "n_embd", "d_model")
_CONTEXT = ("max_position_embeddings", "n_positions", "max_seq_len", "seq_length", "n_ctx")


def past_name(layer: int, kind: str) -> str:
    """Input name of one layer's cached keys or values (``kind`` is key or value)."""
    return f"past_key_values.{layer}.{kind}"


def present_name(layer: int, kind: str) -> str:
    """Output name of one layer's keys or values after the step."""
    return f"present.{layer}.{kind}"


def read_json(path: Path) -> Any:
    """A model folder's JSON file; None when it is absent, ValueError naming it when broken."""
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path.name} is not valid JSON: {exc}") from exc


def read_json_object(path: Path) -> dict[str, Any] | None:
    """``read_json`` for files that hold one JSON object (config.json and the like)."""
    value = read_json(path)
    if value is not None and not isinstance(value, dict):
        raise ValueError(f"{path.name} must hold a JSON object")
    return value


def _first_int(config: dict[str, Any], keys: tuple[str, ...]) -> int | None:
    for key in keys:
        value = config.get(key)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return None


def _token_ids(value: Any) -> list[int]:
    if isinstance(value, int) and not isinstance(value, bool):
        return [value]
    if isinstance(value, list):
        return [v for v in value if isinstance(v, int) and not isinstance(v, bool)]
    return []


class DecoderSpec(BaseModel):
    """What the generator needs to know of a decoder, from config.json and the graph."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model_type: str = Field(description="config.json's model_type, for logs and /v1/models.")
    num_layers: int = Field(ge=1)
    kv_heads: int = Field(ge=1, description="Key/value heads (fewer than query heads for GQA).")
    head_dim: int = Field(ge=1)
    kv_datatype: str = Field(description="v2 datatype of the cache tensors (FP32, FP16...).")
    context_length: int = Field(ge=2, description="Most tokens of prompt plus completion.")
    eos_token_ids: tuple[int, ...] = Field(description="Tokens that end a generation.")
    bos_token_id: int | None = None
    vocab_size: int | None = None
    has_position_ids: bool = Field(description="Whether the graph takes position_ids.")

    @property
    def past_names(self) -> list[str]:
        """Cache inputs in layer order, key before value."""
        return [past_name(i, kind) for i in range(self.num_layers) for kind in ("key", "value")]

    @property
    def present_names(self) -> list[str]:
        """Cache outputs in the order of :attr:`past_names`."""
        return [present_name(i, kind) for i in range(self.num_layers) for kind in ("key", "value")]

    @property
    def output_names(self) -> list[str]:
        """What each step asks of the graph: logits and every present."""
        return [LOGITS, *self.present_names]

    def empty_past(self, rows: int = 1) -> list[Array]:
        """The cache before the prompt: every layer with a past length of 0."""
        dtype = NUMPY_DTYPES[self.kv_datatype]
        shape = (rows, self.kv_heads, 0, self.head_dim)
        return [np.zeros(shape, dtype=dtype) for _ in self.past_names]

    def feeds(self, tokens: list[int], past: list[Array], past_length: int) -> dict[str, Array]:
        """One step's inputs for a single sequence: new ``tokens`` after ``past_length``."""
        total = past_length + len(tokens)
        feeds: dict[str, Array] = {
            INPUT_IDS: np.array([tokens], dtype=np.int64),
            ATTENTION_MASK: np.ones((1, total), dtype=np.int64),
        }
        if self.has_position_ids:
            feeds[POSITION_IDS] = np.arange(past_length, total, dtype=np.int64)[None, :]
        feeds.update(zip(self.past_names, past, strict=True))
        return feeds

    @property
    def pads_cache(self) -> bool:
        """Whether steps with different cache lengths may merge into one run.

        Left padding (zero cache entries the attention mask hides) leaves every row's result
        as it was alone only when positions come from ``position_ids``; a graph that derives
        them from the cache length would shift the padded rows' positions.
        """
        return self.has_position_ids

    def merge_signature(
        self, feeds: dict[str, Array], outputs: Sequence[str] = ()
    ) -> tuple[tuple[str, str, tuple[int, ...]], ...]:
        """What steps must share to merge: everything but the cache length (every step asks
        for the same outputs, so they do not count)."""
        ids = feeds[INPUT_IDS]
        cache = feeds[self.past_names[0]]
        return (
            (INPUT_IDS, str(ids.dtype), tuple(ids.shape[1:])),
            ("past", str(cache.dtype), (cache.shape[1], cache.shape[3])),
        )

    def merge_steps(self, steps: list[dict[str, Array]]) -> tuple[dict[str, Array], list[int]]:
        """Stack steps whose caches differ in length: each is left-padded to the longest.

        Returns the merged feeds and each step's padding, for :meth:`unpad`.
        """
        totals = [int(step[ATTENTION_MASK].shape[1]) for step in steps]
        pads = [max(totals) - total for total in totals]
        merged: dict[str, Array] = {
            name: np.concatenate([step[name] for step in steps])
            for name in (INPUT_IDS, POSITION_IDS)
            if name in steps[0]
        }
        merged[ATTENTION_MASK] = np.concatenate(
            [
                np.pad(s[ATTENTION_MASK], ((0, 0), (pad, 0)))
                for s, pad in zip(steps, pads, strict=True)
            ]
        )
        for name in self.past_names:
            merged[name] = np.concatenate(
                [
                    np.pad(s[name], ((0, 0), (0, 0), (pad, 0), (0, 0)))
                    for s, pad in zip(steps, pads, strict=True)
                ]
            )
        return merged, pads

    def unpad(self, outputs: dict[str, Array], pad: int) -> dict[str, Array]:
        """One step's outputs without the padding :meth:`merge_steps` gave its cache."""
        if pad == 0:
            return outputs
        present = set(self.present_names)
        # Contiguous copies: the next step feeds them to onnxruntime as they are.
        return {
            name: np.ascontiguousarray(value[:, :, pad:, :]) if name in present else value
            for name, value in outputs.items()
        }

    def warmup_feeds(self) -> dict[str, Array]:
        """A one-token prefill: what the first request will run, minus its length."""
        return self.feeds([self.bos_token_id or 0], self.empty_past(), 0)

    @classmethod
    def read_config(cls, folder: Path) -> dict[str, Any] | None:
        """config.json merged with generation_config.json's eos, or None when absent.

        ValueError when either file is not a JSON object.
        """
        config = read_json_object(folder / CONFIG_FILE)
        if config is None or not (folder / TOKENIZER_FILE).is_file():
            return None
        generation = read_json_object(folder / GENERATION_CONFIG_FILE) or {}
        # generation_config.json is what transformers' generate() reads: its eos list wins
        # (chat models list the end-of-turn token there, e.g. Llama 3's <|eot_id|>).
        merged = dict(config)
        for key in ("eos_token_id", "bos_token_id"):
            if generation.get(key) is not None:
                merged[key] = generation[key]
        return merged

    @staticmethod
    def applies(config: dict[str, Any], inputs: list[TensorSpec]) -> bool:
        """Whether a folder with config.json and tokenizer.json is a decoder to generate with."""
        architectures = config.get("architectures") or []
        causal = isinstance(architectures, list) and any(
            isinstance(a, str) and a.endswith(_CAUSAL_SUFFIXES) for a in architectures
        )
        return causal or any(s.name.startswith("past_key_values.") for s in inputs)

    @classmethod
    def from_graph(
        cls,
        config: dict[str, Any],
        inputs: list[TensorSpec],
        outputs: list[TensorSpec],
        extra_eos: list[int],
    ) -> DecoderSpec:
        """Check the graph against the contract; ValueError naming the first thing amiss."""
        by_input = {s.name: s for s in inputs}
        layers, names = _check_inputs(config, inputs, by_input)
        _check_outputs({s.name: s for s in outputs}, layers)
        kv_heads, head_dim, datatype = _check_cache(config, by_input, names)
        context = _first_int(config, _CONTEXT)
        if context is None or context < 2:
            raise ValueError(
                f"{CONFIG_FILE} has no max_position_embeddings (the model's context length)"
            )
        eos = list(dict.fromkeys(_token_ids(config.get("eos_token_id")) + extra_eos))
        if not eos:
            raise ValueError(
                f"neither {CONFIG_FILE}, {GENERATION_CONFIG_FILE} nor the tokenizer names an "
                "eos_token_id, so a generation could never stop on its own"
            )
        bos = _token_ids(config.get("bos_token_id"))
        vocab = config.get("vocab_size")
        return cls(
            model_type=str(config.get("model_type") or "unknown"),
            num_layers=layers,
            kv_heads=kv_heads,
            head_dim=head_dim,
            kv_datatype=datatype,
            context_length=context,
            eos_token_ids=tuple(eos),
            bos_token_id=bos[0] if bos else None,
            vocab_size=vocab if isinstance(vocab, int) else None,
            has_position_ids=POSITION_IDS in by_input,
        )


def _cache_geometry(config: dict[str, Any], first: TensorSpec) -> tuple[int, int, str]:
    """KV heads, head size and datatype: the graph's static dims, else config.json's."""
    if len(first.shape) != 4:
        raise ValueError(
            f"input '{first.name}' has rank {len(first.shape)}; cache inputs are "
            "[batch, kv_heads, past, head_dim]"
        )
    heads = _first_int(config, _HEADS)
    kv_heads = _first_int(config, ("num_key_value_heads", "n_head_kv", "num_kv_heads")) or heads
    head_dim = _first_int(config, ("head_dim",))
    hidden = _first_int(config, _HIDDEN)
    if head_dim is None and hidden is not None and heads:
        head_dim = hidden // heads
    if first.datatype not in ("FP32", "FP16"):
        raise ValueError(
            f"input '{first.name}' is {first.datatype}; the cache must be FP32 or FP16"
        )
    graph_heads, graph_dim = first.shape[1], first.shape[3]
    for what, graph, configured in (
        ("key/value heads", graph_heads, kv_heads),
        ("head_dim", graph_dim, head_dim),
    ):
        if graph != -1 and configured is not None and graph != configured:
            raise ValueError(
                f"input '{first.name}' has {graph} {what} but {CONFIG_FILE} says {configured}"
            )
    kv_heads = graph_heads if graph_heads != -1 else kv_heads
    head_dim = graph_dim if graph_dim != -1 else head_dim
    if kv_heads is None or head_dim is None:
        raise ValueError(
            f"neither the graph nor {CONFIG_FILE} gives the cache's key/value heads and head_dim"
        )
    return kv_heads, head_dim, first.datatype


def _check_inputs(
    config: dict[str, Any], inputs: list[TensorSpec], by_input: dict[str, TensorSpec]
) -> tuple[int, list[str]]:
    """The number of layers and the cache input names; ValueError for a wrong input."""
    for name in (INPUT_IDS, ATTENTION_MASK):
        spec = by_input.get(name)
        if spec is None:
            raise ValueError(f"the ONNX graph has no input '{name}'; {EXPORT_HINT}")
        if spec.datatype != "INT64" or len(spec.shape) != 2:
            raise ValueError(f"input '{name}' must be INT64 [batch, sequence]")
    layers = _first_int(config, _LAYERS)
    if layers is None:
        layers = sum(1 for s in inputs if s.name.startswith("past_key_values.")) // 2
    if layers < 1:
        raise ValueError(
            f"{CONFIG_FILE} has no num_hidden_layers and the ONNX graph no "
            f"past_key_values inputs; {EXPORT_HINT}"
        )
    position = by_input.get(POSITION_IDS)
    if position is not None and (position.datatype != "INT64" or len(position.shape) != 2):
        raise ValueError(f"input '{POSITION_IDS}' must be INT64 [batch, sequence]")
    names = [past_name(i, k) for i in range(layers) for k in ("key", "value")]
    known = {INPUT_IDS, ATTENTION_MASK, POSITION_IDS, *names}
    for name in names:
        if name not in by_input:
            raise ValueError(
                f"the ONNX graph has no input '{name}' ({CONFIG_FILE} says {layers} "
                f"layers); {EXPORT_HINT}"
            )
    unknown = [s.name for s in inputs if s.name not in known]
    if unknown:
        raise ValueError(
            f"the ONNX graph takes input '{unknown[0]}', which the text-generation-with-past "
            f"contract has no value for (its inputs: {INPUT_IDS}, {ATTENTION_MASK}, "
            f"[{POSITION_IDS}], past_key_values.<layer>.key/value)"
        )
    return layers, names


def _check_outputs(by_output: dict[str, TensorSpec], layers: int) -> None:
    """ValueError when the logits or a present output is missing or mis-shaped."""
    logits = by_output.get(LOGITS)
    if logits is None:
        raise ValueError(f"the ONNX graph has no output '{LOGITS}'; {EXPORT_HINT}")
    if logits.datatype not in ("FP32", "FP16") or len(logits.shape) not in (2, 3):
        raise ValueError(f"output '{LOGITS}' must be float [batch, sequence, vocab]")
    for i in range(layers):
        for kind in ("key", "value"):
            if present_name(i, kind) not in by_output:
                raise ValueError(
                    f"the ONNX graph has no output '{present_name(i, kind)}'; {EXPORT_HINT}"
                )


def _check_cache(
    config: dict[str, Any], by_input: dict[str, TensorSpec], names: list[str]
) -> tuple[int, int, str]:
    """(kv heads, head dim, datatype) every cache input agrees on; ValueError otherwise."""
    kv_heads, head_dim, datatype = _cache_geometry(config, by_input[names[0]])
    for name in names:
        spec = by_input[name]
        if spec.datatype != datatype or spec.shape[1:2] + spec.shape[3:] not in (
            (kv_heads, head_dim),
            (-1, head_dim),
            (kv_heads, -1),
            (-1, -1),
        ):
            raise ValueError(
                f"input '{name}' is {spec.datatype} {list(spec.shape)}; every cache input "
                f"must be {datatype} [batch, {kv_heads}, past, {head_dim}]"
            )
    return kv_heads, head_dim, datatype
