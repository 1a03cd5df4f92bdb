"""What the API server's schema can't reject: combinations this operator can't run.

Each check names the offending field, so the status condition and the Warning Event tell
the user exactly what to change.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Final

from pydantic import ValidationError

from clawdbot_api.errors import describe, dotted
from clawdbot_api.v1alpha1 import ModelDeployment, Runtime
from clawdbot_operator.builders.meta import ANNOTATION_POD_ANNOTATIONS, pod_annotations
from clawdbot_operator.builders.runtimes import SUPPORTED_SCHEMES, VLLM_PRECISION_ARGS, uri_scheme
from clawdbot_operator.config import OperatorConfig

# Children share the ModelDeployment's name, and a Service name is a DNS-1035 label.
_DNS_1035: Final = re.compile(r"^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$")
_DNS_1123_SUBDOMAIN: Final = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")
# The ONNX server's model repository names (a folder, a URL segment, a metric label).
_ONNX_MODEL_NAME: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


@dataclass(frozen=True)
class InvalidSpec:
    """A reason the ModelDeployment can't be served as written."""

    field: str
    """Path of the offending field, e.g. ``spec.accelerator.count``."""
    message: str

    def __str__(self) -> str:
        return f"{self.field}: {self.message}"


def parse(body: dict[str, Any]) -> ModelDeployment | InvalidSpec:
    """The typed ModelDeployment, or the first validation error with its field path."""
    try:
        return ModelDeployment.model_validate(
            {k: v for k, v in body.items() if k in ("apiVersion", "kind", "metadata", "spec")}
        )
    except ValidationError as exc:
        err = exc.errors()[0]
        return InvalidSpec(dotted(err["loc"]) or "spec", describe(err))


def check_supported(md: ModelDeployment, config: OperatorConfig) -> InvalidSpec | None:
    """The first reason ``md`` can't be served by this operator, or None."""
    spec = md.spec
    name = md.metadata.name or ""
    if not _DNS_1035.match(name):
        return InvalidSpec(
            "metadata.name",
            "must be a DNS-1035 label (at most 63 lower-case letters, digits and '-', "
            "starting with a letter): the Service of the model is named after it",
        )
    scheme = uri_scheme(spec.model.uri)
    if scheme not in SUPPORTED_SCHEMES:
        return InvalidSpec(
            "spec.model.uri",
            f"{scheme}:// is not supported yet; use pvc://, hf://, s3://, gs://, https:// "
            "or file://",
        )
    if scheme == "pvc":
        claim = spec.model.uri.split("://", 1)[1].split("/", 1)[0]
        if not _DNS_1123_SUBDOMAIN.match(claim):
            return InvalidSpec("spec.model.uri", f"{claim!r} is not a valid claim name")
    accel = spec.accelerator.type
    if not (spec.image or config.image_for(spec.runtime, accel)):
        return InvalidSpec(
            "spec.runtime",
            f"runtime {spec.runtime.value} on accelerator {accel.value} has no image in the "
            "operator's configuration; set spec.image or choose another accelerator",
        )
    if spec.runtime == Runtime.VLLM and (spec.precision, accel) not in VLLM_PRECISION_ARGS:
        return InvalidSpec(
            "spec.precision",
            f"vllm supports no {spec.precision.value} kernels on {accel.value}",
        )
    if spec.runtime == Runtime.ONNX and (err := _check_onnx(md)) is not None:
        return err
    try:
        pod_annotations(md)
    except ValueError as exc:
        return InvalidSpec(f"metadata.annotations[{ANNOTATION_POD_ANNOTATIONS}]", str(exc))
    return None


def _check_onnx(md: ModelDeployment) -> InvalidSpec | None:
    """What the ONNX server can't do: several GPUs, vLLM's batching knobs, odd model names."""
    spec = md.spec
    if (spec.accelerator.count or 1) > 1:
        return InvalidSpec(
            "spec.accelerator.count",
            "runtime onnx uses one GPU per replica; scale with replicas instead",
        )
    if spec.batching.max_batched_tokens is not None:
        return InvalidSpec(
            "spec.batching.maxBatchedTokens", "applies to runtime vllm only; remove it"
        )
    if spec.batching.max_model_len is not None:
        return InvalidSpec("spec.batching.maxModelLen", "applies to runtime vllm only")
    if not _ONNX_MODEL_NAME.match(spec.model.name):
        return InvalidSpec(
            "spec.model.name",
            "runtime onnx serves models by folder name: letters, digits, '_', '.', '-'",
        )
    return None
