"""Embeddings of texts or token ids with a served encoder (the embedding contract).

Inputs are tokenized with the folder's ``tokenizer.json`` (special tokens added, as
sentence-transformers does) or taken as token ids as they are, checked against the model's
length and vocabulary, then run through the model's dynamic batcher: sorted by length,
in runs of at most ``--max-batch-size`` rows right-padded to their longest (the attention
mask hides the padding), one run at a time, so a large request holds one queue slot and
the runs of concurrent requests merge with each other (the batcher pads them again). The
outputs are pooled (embedding_spec.py), normalised to unit length and, for ``dimensions``,
cut to their first ``dimensions`` entries and normalised again (Matryoshka-style, as
OpenAI's text-embedding-3 models shorten theirs).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from clawdbot_runtime.dataplane import DataPlane
from clawdbot_runtime.decoder_spec import ATTENTION_MASK
from clawdbot_runtime.embedding_spec import normalize
from clawdbot_runtime.errors import ContextLengthExceeded, InvalidInput
from clawdbot_runtime.model import EncoderLM
from clawdbot_runtime.repository import ServedModel
from clawdbot_runtime.tensors import Array

# OpenAI's limit on inputs per request; each input is a row of some run.
MAX_INPUTS = 2048
PARAM = "input"


@dataclass
class EmbeddingResult:
    """One request's embeddings [inputs, dim] in input order, and its token count."""

    vectors: Array
    prompt_tokens: int


def encoder_of(served: ServedModel) -> EncoderLM:
    """The model's encoder side; InvalidInput if it is not an embedding model."""
    model = served.model
    if model.embedding is not None:
        return model.embedding
    if model.generates_text:
        raise InvalidInput(
            f"model '{model.name}' is a text generation model, not an embedding model; send "
            "its requests to /v1/completions or /v1/chat/completions",
            param="model",
        )
    raise InvalidInput(
        f"model '{model.name}' is not an embedding model (its version folder needs "
        "config.json, tokenizer.json and a feature-extraction graph: input_ids and "
        "attention_mask in; last_hidden_state, token_embeddings or sentence_embedding out)",
        param="model",
    )


def parse_input(raw: Any) -> list[str] | list[list[int]]:
    """OpenAI's ``input``: a string, strings, token ids, or lists of token ids."""
    if isinstance(raw, str):
        raw = [raw]
    if not isinstance(raw, list) or not raw:
        raise InvalidInput(
            "input must be a non-empty string, list of strings, list of token ids or list of "
            "lists of token ids",
            param=PARAM,
        )
    if len(raw) > MAX_INPUTS:
        raise InvalidInput(
            f"input has {len(raw)} entries; at most {MAX_INPUTS} are allowed per request, so "
            "split it into several requests",
            param=PARAM,
        )
    if all(isinstance(item, str) for item in raw):
        for i, text in enumerate(raw):
            if not text:
                raise InvalidInput(
                    f"input[{i}] is an empty string; every input needs some text", param=PARAM
                )
        return list(raw)
    if all(_is_token(item) for item in raw):
        return [list(raw)]
    if all(isinstance(item, list) for item in raw):
        rows: list[list[int]] = []
        for i, row in enumerate(raw):
            if not row:
                raise InvalidInput(
                    f"input[{i}] is an empty list of token ids; every input needs a token",
                    param=PARAM,
                )
            if not all(_is_token(token) for token in row):
                raise InvalidInput(f"input[{i}] must be a list of integer token ids", param=PARAM)
            rows.append(list(row))
        return rows
    raise InvalidInput(
        "input mixes kinds of entries; send only strings, only token ids, or only lists of "
        "token ids",
        param=PARAM,
    )


def _is_token(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_dimensions(dimensions: int | None, size: int) -> None:
    """InvalidInput when ``dimensions`` asks for more entries than an embedding has."""
    if dimensions is not None and dimensions > size:
        raise InvalidInput(
            f"dimensions is {dimensions}, but this model's embeddings have {size}; ask for "
            f"at most {size}",
            param="dimensions",
        )


def truncate(vectors: Array, dimensions: int | None) -> Array:
    """The first ``dimensions`` entries of each unit vector, at unit length again."""
    check_dimensions(dimensions, vectors.shape[1])
    if dimensions is None or dimensions == vectors.shape[1]:
        return vectors
    return normalize(vectors[:, :dimensions])


class Embedder:
    """Runs embedding requests for the /v1 front."""

    def __init__(self, dataplane: DataPlane) -> None:
        self._dataplane = dataplane

    async def embed(
        self,
        served: ServedModel,
        inputs: list[str] | list[list[int]],
        dimensions: int | None,
    ) -> EmbeddingResult:
        """Unit-length embeddings of ``inputs`` (see :func:`parse_input`), in their order."""
        encoder = encoder_of(served)
        if encoder.spec.dimension is not None:  # else known once the model has run
            check_dimensions(dimensions, encoder.spec.dimension)
        # One version for the whole request, even if a new one is swapped in meanwhile.
        with served.lease():
            rows = await self._tokenize(encoder, inputs)
            vectors = await self._run(served, encoder, rows)
        tokens = sum(len(row) for row in rows)
        self._dataplane.metrics.prompt_tokens.labels(model=served.model.name).inc(tokens)
        return EmbeddingResult(truncate(vectors, dimensions), tokens)

    async def _tokenize(
        self, encoder: EncoderLM, inputs: list[str] | list[list[int]]
    ) -> list[list[int]]:
        """Token ids of every input, checked against the model's length and vocabulary."""
        spec = encoder.spec
        if inputs and isinstance(inputs[0], str):
            texts = [text for text in inputs if isinstance(text, str)]
            # Off the event loop: a request may carry megabytes of text.
            rows = await asyncio.to_thread(encoder.tokenizer.encode_batch, texts)
        else:
            rows = [row for row in inputs if isinstance(row, list)]
            for i, row in enumerate(rows):
                bad = next((t for t in row if not 0 <= t < spec.vocab_size), None)
                if bad is not None:
                    raise InvalidInput(
                        f"input[{i}] has token id {bad}, outside this model's vocabulary of "
                        f"{spec.vocab_size} (ids 0 to {spec.vocab_size - 1})",
                        param=PARAM,
                    )
        for i, row in enumerate(rows):
            if len(row) > spec.max_tokens:
                raise ContextLengthExceeded(
                    f"this model's maximum context length is {spec.max_tokens} tokens, and "
                    f"input[{i}] has {len(row)}; shorten it or split it into several inputs",
                    param=PARAM,
                )
            if not row:
                raise InvalidInput(
                    f"input[{i}] has no tokens once tokenized; send some text", param=PARAM
                )
        return rows

    async def _run(
        self, served: ServedModel, encoder: EncoderLM, rows: Sequence[Sequence[int]]
    ) -> Array:
        """Unit-length embeddings [len(rows), dim] of tokenized inputs, in their order."""
        spec = encoder.spec
        chunk = max(1, served.batcher.max_batch_size)
        # Similar lengths share a run, so little of each run is padding.
        order = sorted(range(len(rows)), key=lambda i: len(rows[i]))
        vectors: Array | None = None
        for start in range(0, len(order), chunk):
            picked = order[start : start + chunk]
            feeds = spec.feeds([rows[i] for i in picked])
            outputs = await self._dataplane.run(served, feeds, [spec.source])
            part = spec.embed(outputs, feeds[ATTENTION_MASK])
            if vectors is None:
                vectors = np.empty((len(rows), part.shape[1]), dtype=np.float32)
            vectors[picked] = part
        assert vectors is not None  # parse_input refuses an empty input
        return vectors
