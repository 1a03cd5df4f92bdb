"""Describes how to drive an ONNX language model: vocabulary, special tokens, tensor names.

A model version folder that holds a ``generation.json`` next to ``model.onnx`` is served on
the OpenAI-compatible ``/v1`` routes as well as on the v2 tensor routes.
"""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, model_validator

GENERATION_FILE = "generation.json"


class LanguageModelSpec(BaseModel):
    """The contract: ``input_ids`` INT64 [batch, seq] in, next-token ``logits`` FP32 out.

    ``logits`` may be [batch, vocab] (last position only) or [batch, seq, vocab]; the
    generator feeds at most ``context_length`` most recent tokens, left-padded with BOS.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    format: str = Field(default="char-lm", description="Tokenizer kind; only char-lm so far.")
    vocab: list[str] = Field(description="Token id -> text; special tokens decode to nothing.")
    bos_token_id: int
    eos_token_id: int
    unk_token_id: int
    context_length: int = Field(ge=1)
    input_name: str = "input_ids"
    output_name: str = "logits"
    chat_template: str = Field(
        default="{role}: {content}\n",
        description="Per-message format; the prompt ends with the assistant's prefix.",
    )
    assistant_prefix: str = "assistant: "
    lowercase: bool = Field(
        default=False, description="Lower-case text before encoding (for lower-case vocabularies)."
    )
    description: str = ""

    @model_validator(mode="after")
    def _ids_in_vocab(self) -> LanguageModelSpec:
        for field in ("bos_token_id", "eos_token_id", "unk_token_id"):
            if not 0 <= getattr(self, field) < len(self.vocab):
                raise ValueError(f"{field} is outside the vocabulary")
        if self.format != "char-lm":
            raise ValueError(f"unsupported tokenizer format {self.format!r}")
        return self

    @classmethod
    def read(cls, folder: Path) -> LanguageModelSpec | None:
        """The spec in ``folder``, or None when the model is not a language model."""
        path = folder / GENERATION_FILE
        if not path.is_file():
            return None
        return cls.model_validate(json.loads(path.read_text(encoding="utf-8")))

    def write(self, folder: Path) -> None:
        """Write the spec as ``generation.json`` into ``folder``."""
        text = json.dumps(self.model_dump(), indent=2, ensure_ascii=False) + "\n"
        (folder / GENERATION_FILE).write_text(text, encoding="utf-8")


class CharTokenizer:
    """One token per character; characters outside the vocabulary become UNK."""

    def __init__(self, spec: LanguageModelSpec) -> None:
        self.spec = spec
        self._special = {spec.bos_token_id, spec.eos_token_id, spec.unk_token_id}
        self._ids = {
            text: i for i, text in enumerate(spec.vocab) if i not in self._special and text
        }

    @property
    def vocab_size(self) -> int:
        """Number of token ids."""
        return len(self.spec.vocab)

    def encode(self, text: str) -> list[int]:
        """Token ids for ``text``."""
        unk = self.spec.unk_token_id
        if self.spec.lowercase:
            text = text.lower()
        return [self._ids.get(ch, unk) for ch in text]

    def decode_token(self, token_id: int) -> str:
        """Text of one token id (empty for special tokens)."""
        if token_id in self._special or not 0 <= token_id < len(self.spec.vocab):
            return ""
        return self.spec.vocab[token_id]

    def decode(self, ids: list[int]) -> str:
        """Text of a token id sequence."""
        return "".join(self.decode_token(i) for i in ids)
