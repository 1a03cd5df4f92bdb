"""Text in and out of a decoder: the Hugging Face tokenizer and the model's chat template.

``tokenizer.json`` is loaded with the ``tokenizers`` library (BPE, byte-level BPE,
SentencePiece-style Unigram: whatever the file describes). The chat template is, in order:
``chat_template.jinja`` in the folder, ``chat_template`` in ``tokenizer_config.json`` (a
string, or a list of named templates where ``default`` wins), else :data:`FALLBACK_TEMPLATE`.
Templates render in a sandboxed Jinja environment with what transformers gives them
(``messages``, ``add_generation_prompt``, the special tokens, ``raise_exception``,
``strftime_now``, ``tojson``), so templates written for transformers render the same here.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, NoReturn

import jinja2
import jinja2.ext
import jinja2.sandbox
from tokenizers import Tokenizer

from clawdbot_runtime.decoder_spec import (
    CHAT_TEMPLATE_FILE,
    TOKENIZER_CONFIG_FILE,
    TOKENIZER_FILE,
    read_json_object,
)

# For models whose files carry no chat template: ChatML, the format transformers used as its
# default template, and one that many instruction-tuned models were trained on.
FALLBACK_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
# Prompt tokens decoded along with the first generated ones: decoders such as
# SentencePiece's drop a word's leading space at the start of a text, so a completion
# decoded alone would lose it. A few tokens of context are enough.
_DECODE_CONTEXT = 6
_SPECIAL_KEYS = (
    "bos_token",
    "eos_token",
    "unk_token",
    "sep_token",
    "pad_token",
    "cls_token",
    "mask_token",
)


class ChatTemplateError(ValueError):
    """The chat template refused the messages (or failed while rendering them)."""


def _raise_exception(message: str) -> NoReturn:
    raise ChatTemplateError(f"the model's chat template rejected the messages: {message}")


def _tojson(value: Any, ensure_ascii: bool = False, indent: int | None = None) -> str:
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent)


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


def _environment() -> jinja2.sandbox.ImmutableSandboxedEnvironment:
    # The sandbox matters: a chat template comes with the model files, and a model's files
    # must not get to run arbitrary Python in the server.
    env = jinja2.sandbox.ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols]
    )
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    return env


def _token_text(value: Any) -> str | None:
    """A special token as tokenizer_config.json spells it: a string or an AddedToken dict."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and isinstance(value.get("content"), str):
        return str(value["content"])
    return None


def _pick_template(raw: Any) -> str | None:
    if isinstance(raw, str):
        return raw
    if isinstance(raw, list):
        named = {t.get("name"): t.get("template") for t in raw if isinstance(t, dict)}
        chosen = named.get("default", next(iter(named.values()), None))
        return chosen if isinstance(chosen, str) else None
    return None


class HfTokenizer:
    """A model folder's tokenizer, special tokens and compiled chat template."""

    def __init__(self, folder: Path) -> None:
        """Load the files; ValueError naming the file that is broken."""
        try:
            self._tokenizer = Tokenizer.from_file(str(folder / TOKENIZER_FILE))
        except Exception as exc:  # tokenizers raises its own Exception subclass
            raise ValueError(f"{TOKENIZER_FILE} could not be loaded: {exc}") from exc
        # Exports often save a truncation length and a padding strategy in tokenizer.json;
        # the server checks lengths itself (a 400 instead of silently dropped text) and pads
        # batches with the attention mask, so both are turned off here.
        self._tokenizer.no_truncation()
        self._tokenizer.no_padding()
        config = read_json_object(folder / TOKENIZER_CONFIG_FILE) or {}
        self.special_tokens: dict[str, str] = {}
        for key in _SPECIAL_KEYS:
            text = _token_text(config.get(key))
            if text is not None:
                self.special_tokens[key] = text
        template_file = folder / CHAT_TEMPLATE_FILE
        source = (
            template_file.read_text(encoding="utf-8")
            if template_file.is_file()
            else _pick_template(config.get("chat_template"))
        )
        self.has_chat_template = source is not None
        try:
            self._template = _environment().from_string(source or FALLBACK_TEMPLATE)
        except jinja2.TemplateSyntaxError as exc:
            where = CHAT_TEMPLATE_FILE if template_file.is_file() else TOKENIZER_CONFIG_FILE
            raise ValueError(f"the chat template in {where} does not parse: {exc}") from exc

    @property
    def vocab_size(self) -> int:
        """Token ids, added tokens included."""
        return int(self._tokenizer.get_vocab_size(with_added_tokens=True))

    def token_id(self, text: str) -> int | None:
        """The id of a token spelled ``text``, if the vocabulary has it."""
        found = self._tokenizer.token_to_id(text)
        return None if found is None else int(found)

    def eos_token_ids(self) -> list[int]:
        """The id of tokenizer_config.json's eos_token, when it names one the vocab has."""
        text = self.special_tokens.get("eos_token")
        found = None if text is None else self.token_id(text)
        return [] if found is None else [found]

    def encode(self, text: str, *, add_special_tokens: bool) -> list[int]:
        """Token ids of ``text``; ``add_special_tokens`` applies the tokenizer's post-processor
        (e.g. a leading BOS), which a rendered chat template already spells out itself."""
        return list(self._tokenizer.encode(text, add_special_tokens=add_special_tokens).ids)

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids of each text with the special tokens (e.g. BERT's [CLS] ... [SEP]);
        the tokenizer works on the texts in parallel, outside the GIL."""
        encodings = self._tokenizer.encode_batch(list(texts), add_special_tokens=True)
        return [list(encoding.ids) for encoding in encodings]

    def decode(self, ids: Sequence[int]) -> str:
        """Text of ``ids``, special tokens left out."""
        return str(self._tokenizer.decode(list(ids), skip_special_tokens=True))

    def render_chat(self, messages: Sequence[Mapping[str, str]]) -> str:
        """The prompt for ``messages``, ending where the assistant's reply begins.

        ChatTemplateError when the template refuses the conversation (e.g. roles that do not
        alternate) or fails on it.
        """
        try:
            return self._template.render(
                messages=[dict(m) for m in messages],
                add_generation_prompt=True,
                **self.special_tokens,
            )
        except ChatTemplateError:
            raise
        except jinja2.TemplateError as exc:
            raise ChatTemplateError(f"the model's chat template failed: {exc}") from exc

    def decoder(self, prompt_ids: Sequence[int]) -> IncrementalDecoder:
        """A decoder for the completion that follows ``prompt_ids``."""
        return IncrementalDecoder(self, list(prompt_ids[-_DECODE_CONTEXT:]))


class IncrementalDecoder:
    """Turns generated token ids into text piece by piece.

    A byte-level BPE token can hold half of a UTF-8 character, and some decoders join
    tokens with rules that depend on the neighbours; so each step decodes a short window
    and emits only the text that is final (no trailing U+FFFD of an incomplete character).
    """

    def __init__(self, tokenizer: HfTokenizer, context: list[int]) -> None:
        self._tokenizer = tokenizer
        self._ids = context
        self._prefix = 0  # the window starts here
        self._read = len(context)  # text of ids before this has been emitted

    def add(self, token: int) -> str:
        """Text that ``token`` completes ('' while a character is still incomplete)."""
        self._ids.append(token)
        done = self._tokenizer.decode(self._ids[self._prefix : self._read])
        text = self._tokenizer.decode(self._ids[self._prefix :])
        if len(text) > len(done) and not text.endswith("\ufffd"):
            self._prefix, self._read = self._read, len(self._ids)
            return text[len(done) :]
        return ""

    def flush(self) -> str:
        """Whatever is still held back when the generation ends."""
        done = self._tokenizer.decode(self._ids[self._prefix : self._read])
        text = self._tokenizer.decode(self._ids[self._prefix :])
        self._prefix = self._read = len(self._ids)
        return text[len(done) :] if len(text) > len(done) else ""
