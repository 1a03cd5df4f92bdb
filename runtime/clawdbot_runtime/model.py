"""One loaded model version: its onnxruntime session, tensor specs and input validation."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from clawdbot_runtime.decoder_spec import DECODER_FILES, DecoderSpec
from clawdbot_runtime.embedding_spec import EMBEDDING_FILES, EmbeddingSpec
from clawdbot_runtime.errors import InvalidInput, ModelLoadError
from clawdbot_runtime.hf_text import HfTokenizer
from clawdbot_runtime.lm_spec import GENERATION_FILE, LanguageModelSpec
from clawdbot_runtime.providers import ProviderChoice
from clawdbot_runtime.tensors import (
    NUMPY_DTYPES,
    Array,
    TensorSpec,
    datatype_from_onnx,
    datatype_of,
)

MODEL_FILE = "model.onnx"
PLATFORM = "onnxruntime_onnx"


def _spec(arg: Any) -> TensorSpec:
    datatype = datatype_from_onnx(arg.type)
    # onnxruntime reports a dynamic dimension as a symbol name (str) or None.
    shape = tuple(dim if isinstance(dim, int) and dim >= 0 else -1 for dim in arg.shape)
    return TensorSpec(name=arg.name, datatype=datatype, shape=shape)


@dataclass(frozen=True)
class SessionSettings:
    """What every session of this server shares: providers and CPU threads."""

    providers: ProviderChoice
    cpu_threads: int = 0

    def options(self) -> ort.SessionOptions:
        """Fresh onnxruntime session options for one model."""
        options = ort.SessionOptions()
        options.intra_op_num_threads = self.cpu_threads
        # Parallelism comes from batching and intra-op threads; inter-op threads would only
        # oversubscribe the cores the intra-op pool already uses.
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        return options


@dataclass(frozen=True)
class DecoderLM:
    """A decoder exported to ONNX (decoder_spec.py) with its tokenizer and chat template."""

    spec: DecoderSpec
    tokenizer: HfTokenizer


@dataclass(frozen=True)
class EncoderLM:
    """A text encoder exported to ONNX (embedding_spec.py) with its tokenizer."""

    spec: EmbeddingSpec
    tokenizer: HfTokenizer


class OnnxModel:
    """A model version ready to run: validated feeds in, named numpy outputs back.

    Which text contract a version speaks, if any, is decided from its folder at load:
    ``generation.json`` -> the project's char-level contract (``lm``); else ``config.json``
    + ``tokenizer.json`` of a causal LM -> the Optimum decoder contract (``decoder``); else
    the same two files and a feature-extraction graph -> the embedding contract
    (``embedding``); else none, and the model is served on the v2 tensor routes only.
    """

    def __init__(
        self,
        name: str,
        version: int,
        folder: Path,
        session: ort.InferenceSession,
        lm: LanguageModelSpec | None,
        *,
        decoder: DecoderLM | None = None,
        embedding: EncoderLM | None = None,
    ) -> None:
        self.name = name
        self.version = version
        self.folder = folder
        self.session = session
        self.lm = lm
        self.decoder = decoder
        self.embedding = embedding
        self.inputs = [_spec(arg) for arg in session.get_inputs()]
        self.outputs = [_spec(arg) for arg in session.get_outputs()]
        self._inputs = {spec.name: spec for spec in self.inputs}
        self._outputs = {spec.name: spec for spec in self.outputs}
        # Merging requests along dim 0 is only sound when every tensor has a dynamic dim 0.
        self.batchable = all(len(s.shape) >= 1 and s.shape[0] == -1 for s in self.inputs) and all(
            len(s.shape) >= 1 and s.shape[0] == -1 for s in self.outputs
        )

    @property
    def generates_text(self) -> bool:
        """Whether the /v1 text routes serve this model."""
        return self.lm is not None or self.decoder is not None

    @classmethod
    def load(cls, name: str, version: int, folder: Path, settings: SessionSettings) -> OnnxModel:
        """Open ``folder/model.onnx``; ModelLoadError with the cause if it cannot be served."""
        path = folder / MODEL_FILE
        where = f"model '{name}' version {version}"
        try:
            lm = LanguageModelSpec.read(folder)
        except ValueError as exc:
            raise ModelLoadError(f"{where}: bad generation.json: {exc}") from exc
        try:
            hf_config = None if lm is not None else DecoderSpec.read_config(folder)
        except ValueError as exc:
            raise ModelLoadError(f"{where}: {exc}") from exc
        try:
            session = ort.InferenceSession(
                str(path),
                sess_options=settings.options(),
                providers=settings.providers.providers,
            )
        except Exception as exc:
            # onnxruntime raises its own exception types for corrupt or unsupported graphs.
            raise ModelLoadError(
                f"model '{name}' version {version}: {MODEL_FILE} could not be loaded: {exc}"
            ) from exc
        try:
            model = cls(name, version, folder, session, lm)
        except ValueError as exc:
            raise ModelLoadError(f"model '{name}' version {version}: {exc}") from exc
        if lm is not None:
            _check_lm(model, lm)
        elif hf_config is not None and DecoderSpec.applies(hf_config, model.inputs):
            try:
                tokenizer = HfTokenizer(folder)
                spec = DecoderSpec.from_graph(
                    hf_config, model.inputs, model.outputs, tokenizer.eos_token_ids()
                )
            except ValueError as exc:
                raise ModelLoadError(f"{where}: {exc}") from exc
            model.decoder = DecoderLM(spec, tokenizer)
        elif hf_config is not None and EmbeddingSpec.applies(model.inputs, model.outputs):
            try:
                tokenizer = HfTokenizer(folder)
                embedding = EmbeddingSpec.from_folder(
                    folder, hf_config, model.inputs, model.outputs, tokenizer.vocab_size
                )
            except ValueError as exc:
                raise ModelLoadError(f"{where}: {exc}") from exc
            model.embedding = EncoderLM(embedding, tokenizer)
        return model

    def metadata(self, versions: Sequence[int]) -> dict[str, Any]:
        """The v2 model metadata document."""
        return {
            "name": self.name,
            "versions": [str(v) for v in versions],
            "platform": PLATFORM,
            "inputs": [s.metadata() for s in self.inputs],
            "outputs": [s.metadata() for s in self.outputs],
        }

    def output_names(self) -> list[str]:
        """All output names in model order."""
        return [spec.name for spec in self.outputs]

    def validate(
        self, inputs: Mapping[str, Array], requested: Sequence[str] | None
    ) -> tuple[dict[str, Array], tuple[str, ...]]:
        """Check names, datatypes and shapes against the model; return feeds and output names."""
        expected = ", ".join(self._inputs)
        for name in inputs:
            if name not in self._inputs:
                raise InvalidInput(
                    f"model '{self.name}' has no input '{name}'; its inputs are: {expected}",
                    param=name,
                )
        feeds: dict[str, Array] = {}
        for spec in self.inputs:
            if spec.name not in inputs:
                raise InvalidInput(
                    f"missing input '{spec.name}'; model '{self.name}' needs: {expected}",
                    param=spec.name,
                )
            array = inputs[spec.name]
            datatype = datatype_of(array)
            if datatype != spec.datatype:
                raise InvalidInput(
                    f"input '{spec.name}': datatype {datatype} does not match the model's "
                    f"{spec.datatype}",
                    param=spec.name,
                )
            if len(array.shape) != len(spec.shape) or any(
                want not in (-1, got) for want, got in zip(spec.shape, array.shape, strict=True)
            ):
                raise InvalidInput(
                    f"input '{spec.name}': shape {list(array.shape)} does not match the "
                    f"model's {list(spec.shape)} (-1 = any size)",
                    param=spec.name,
                )
            feeds[spec.name] = _to_onnx(spec.name, array)
        if requested is None:
            outputs = tuple(self._outputs)
        else:
            for name in requested:
                if name not in self._outputs:
                    raise InvalidInput(
                        f"model '{self.name}' has no output '{name}'; its outputs are: "
                        + ", ".join(self._outputs),
                        param=name,
                    )
            outputs = tuple(dict.fromkeys(requested))
        return feeds, outputs

    def run(self, feeds: Mapping[str, Array], outputs: Sequence[str]) -> dict[str, Array]:
        """Run the session (blocking: call it from an executor thread)."""
        results = self.session.run(list(outputs), dict(feeds))
        return {name: np.asarray(value) for name, value in zip(outputs, results, strict=True)}

    def warmup_feeds(self) -> dict[str, Array]:
        """Zero-filled inputs with every dynamic dimension set to 1 (a decoder: a prefill)."""
        if self.decoder is not None:
            return self.decoder.spec.warmup_feeds()
        if self.embedding is not None:
            return self.embedding.spec.warmup_feeds()
        feeds: dict[str, Array] = {}
        for spec in self.inputs:
            shape = tuple(1 if dim == -1 else dim for dim in spec.shape)
            if spec.datatype == "BYTES":
                feeds[spec.name] = np.full(shape, "", dtype=object)
            else:
                feeds[spec.name] = np.zeros(shape, dtype=NUMPY_DTYPES[spec.datatype])
        if self.lm is not None:
            feeds[self.lm.input_name] = np.full(
                (1, self.lm.context_length), self.lm.bos_token_id, dtype=np.int64
            )
        return feeds


def _to_onnx(name: str, array: Array) -> Array:
    """onnxruntime wants ``str`` elements for string tensors (it would repr() bytes)."""
    if array.dtype != object:
        return array
    out = np.empty(array.shape, dtype=object)
    flat_in, flat_out = array.ravel(), out.reshape(-1)
    for i, value in enumerate(flat_in):
        if isinstance(value, bytes):
            try:
                flat_out[i] = value.decode("utf-8")
            except UnicodeDecodeError:
                raise InvalidInput(f"input '{name}': BYTES element {i} is not UTF-8") from None
        else:
            flat_out[i] = str(value)
    return out


def _check_lm(model: OnnxModel, lm: LanguageModelSpec) -> None:
    inputs = {s.name: s for s in model.inputs}
    outputs = {s.name: s for s in model.outputs}
    ids, logits = inputs.get(lm.input_name), outputs.get(lm.output_name)
    where = f"model '{model.name}' version {model.version}"
    if ids is None or ids.datatype != "INT64" or len(ids.shape) != 2 or len(inputs) != 1:
        raise ModelLoadError(f"{where}: a language model takes one INT64 [batch, seq] input")
    if logits is None or logits.datatype != "FP32" or len(logits.shape) not in (2, 3):
        raise ModelLoadError(f"{where}: a language model returns FP32 logits of rank 2 or 3")
    if logits.shape[-1] not in (-1, len(lm.vocab)):
        raise ModelLoadError(
            f"{where}: logits have {logits.shape[-1]} entries but the vocabulary has "
            f"{len(lm.vocab)}"
        )


def fingerprint(folder: Path) -> str:
    """Changes whenever the model file or a file describing it changes (for hot reload)."""
    digest = hashlib.sha256()
    for name in (MODEL_FILE, GENERATION_FILE, *DECODER_FILES, *EMBEDDING_FILES):
        path = folder / name
        if path.exists():
            stat = path.stat()
            digest.update(f"{name}:{stat.st_size}:{stat.st_mtime_ns};".encode())
    return digest.hexdigest()[:16]
