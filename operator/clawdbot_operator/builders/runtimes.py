"""The model server container per runtime, and where its weights come from.

vLLM precision mapping (``spec.precision`` -> flags; an ``--dtype`` or ``--quantization`` in
``spec.args`` replaces the operator's choice, e.g. ``--quantization gptq`` for GPTQ weights):

========  ===========================================  ====================================
fp16      ``--dtype float16``                            all accelerators
bf16      ``--dtype bfloat16``                           all accelerators
fp8       ``--quantization fp8``                         nvidia, amd (dynamic FP8 of fp16 weights)
int8      ``--quantization compressed-tensors``          nvidia, amd (W8A8 INT8 checkpoints, e.g.
                                                         made with llm-compressor)
int4      ``--quantization awq_marlin`` (nvidia);        AWQ checkpoints; on ROCm with
          ``--quantization awq`` (amd)                   ``VLLM_USE_TRITON_AWQ=1``
========  ===========================================  ====================================

The ONNX runtime has no precision flag. ``fp16`` serves the model repository as stored.
``int8`` and ``int4`` compress at start: an init container (the runtime image, which ships
the ``clawdbot`` CLI) runs ``clawdbot compress --repository`` on the served model into an
``emptyDir`` at ``/compressed-models``, and the server's ``--model-repository`` points
there. A stored model that is already quantized (int8/int4 operators in its graph) is copied
as it is (``--keep-quantized``), so repositories compressed ahead of time keep working.

Model URIs:

* ``pvc://CLAIM/PATH``: the claim is mounted read-only at ``/models``; the model is
  ``/models/PATH`` (for onnx, PATH is the model repository: ``<model.name>/<version>/model.onnx``).
* ``file:///PATH``: a path inside the image.
* ``hf://ORG/NAME``: an init container (``image_fetch_hf``, with huggingface_hub) downloads
  the snapshot into an ``emptyDir`` at ``/models``; the server mounts it read-only.
* ``s3://BUCKET/KEY``, ``gs://BUCKET/KEY``, ``http(s)://...``: the same with rclone
  (``image_fetch_rclone``); credentials come from the pod's environment (workload identity).
  These are the only sources for which model pods get egress beyond DNS (see networkpolicy).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final
from urllib.parse import urlsplit

from clawdbot_api.v1alpha1 import AcceleratorType, ModelDeployment, Precision, Runtime
from clawdbot_operator.builders.meta import GRPC_PORT, HTTP_PORT, Manifest
from clawdbot_operator.config import OperatorConfig

MODEL_DIR: Final = "/models"
CACHE_DIR: Final = "/cache"
SERVER_CONTAINER: Final = "server"
FETCH_CONTAINER: Final = "fetch-model"
COMPRESS_CONTAINER: Final = "compress-model"
COMPRESS_VOLUME: Final = "compressed-model"
COMPRESSED_DIR: Final = "/compressed-models"
"""Where the compress init container writes the quantized repository (an emptyDir)."""
COMPRESS_EVAL_INPUTS: Final = 16
"""Held-out inputs the init container compares the original and compressed model on (the
report goes to its log); small, so that it adds little to start-up."""
COMPRESSED_PRECISIONS: Final = frozenset({Precision.INT8, Precision.INT4})
"""ONNX precisions produced at start by the compress init container."""
REMOTE_SCHEMES: Final = frozenset({"hf", "s3", "gs", "http", "https"})
SUPPORTED_SCHEMES: Final = REMOTE_SCHEMES | {"pvc", "file"}

GPU_RESOURCE: Final[dict[AcceleratorType, str]] = {
    AcceleratorType.NVIDIA: "nvidia.com/gpu",
    AcceleratorType.AMD: "amd.com/gpu",
}

VLLM_PRECISION_ARGS: Final[dict[tuple[Precision, AcceleratorType], list[str]]] = {
    **{(Precision.FP16, a): ["--dtype", "float16"] for a in AcceleratorType},
    **{(Precision.BF16, a): ["--dtype", "bfloat16"] for a in AcceleratorType},
    (Precision.FP8, AcceleratorType.NVIDIA): ["--quantization", "fp8"],
    (Precision.FP8, AcceleratorType.AMD): ["--quantization", "fp8"],
    (Precision.INT8, AcceleratorType.NVIDIA): ["--quantization", "compressed-tensors"],
    (Precision.INT8, AcceleratorType.AMD): ["--quantization", "compressed-tensors"],
    (Precision.INT4, AcceleratorType.NVIDIA): ["--quantization", "awq_marlin"],
    (Precision.INT4, AcceleratorType.AMD): ["--quantization", "awq"],
}
"""vLLM flags per precision and accelerator; a missing pair is unsupported."""


@dataclass(frozen=True)
class Probes:
    """HTTP paths the kubelet probes on the serving port."""

    ready: str
    live: str


PROBES: Final[dict[Runtime, Probes]] = {
    Runtime.VLLM: Probes(ready="/health", live="/health"),
    Runtime.ONNX: Probes(ready="/v2/health/ready", live="/v2/health/live"),
}


@dataclass(frozen=True)
class ModelSource:
    """How the weights reach the server: volumes, an optional fetch step, the local path."""

    scheme: str
    path: str
    """Where the server finds the model (vLLM --model; ONNX --model-repository)."""
    volumes: list[Manifest] = field(default_factory=list)
    server_mounts: list[Manifest] = field(default_factory=list)
    fetch_command: list[str] | None = None
    fetch_image: str = ""
    egress_ports: tuple[int, ...] = ()
    """TCP ports the pod must reach outside the cluster (the download)."""

    @property
    def remote(self) -> bool:
        return self.fetch_command is not None


def uri_scheme(uri: str) -> str:
    """The scheme of a model URI (``pvc``, ``hf``, ...)."""
    return uri.split("://", 1)[0]


def model_source(md: ModelDeployment, config: OperatorConfig) -> ModelSource:
    """Volumes and download step for ``spec.model.uri`` (the scheme is already validated)."""
    uri = md.spec.model.uri
    scheme = uri_scheme(uri)
    rest = uri.split("://", 1)[1]
    if scheme == "file":
        return ModelSource(scheme, "/" + rest.lstrip("/"))
    if scheme == "pvc":
        claim, _, sub = rest.partition("/")
        return ModelSource(
            scheme,
            _join(MODEL_DIR, sub),
            volumes=[
                {"name": "model", "persistentVolumeClaim": {"claimName": claim, "readOnly": True}}
            ],
            server_mounts=[{"name": "model", "mountPath": MODEL_DIR, "readOnly": True}],
        )
    dest = _join(MODEL_DIR, "data")
    volumes: list[Manifest] = [{"name": "model", "emptyDir": {}}]
    mounts: list[Manifest] = [{"name": "model", "mountPath": MODEL_DIR, "readOnly": True}]
    if scheme == "hf":
        command = [
            "python3",
            "-c",
            "import sys; from huggingface_hub import snapshot_download; "
            "snapshot_download(repo_id=sys.argv[1], local_dir=sys.argv[2])",
            rest,
            dest,
        ]
        return ModelSource(
            scheme, dest, volumes, mounts, command, config.image_fetch_hf, egress_ports=(443,)
        )
    if scheme in ("s3", "gs"):
        backend = {"s3": "s3", "gs": "gcs"}[scheme]
        command = ["rclone", "copy", f":{backend}:{rest}", dest, f"--{backend}-env-auth"]
        return ModelSource(
            scheme, dest, volumes, mounts, command, config.image_fetch_rclone, egress_ports=(443,)
        )
    # http(s): a directory listing (or a single file) fetched with rclone's http backend.
    parts = urlsplit(uri)
    port = parts.port or (443 if scheme == "https" else 80)
    command = ["rclone", "copy", "--http-url", uri, ":http:", dest]
    return ModelSource(
        scheme, dest, volumes, mounts, command, config.image_fetch_rclone, egress_ports=(port,)
    )


def _join(base: str, sub: str) -> str:
    sub = sub.strip("/")
    return f"{base}/{sub}" if sub else base


def _has_flag(args: list[str], flag: str) -> bool:
    return any(a == flag or a.startswith(flag + "=") for a in args)


def vllm_args(md: ModelDeployment, model_path: str) -> list[str]:
    """Arguments of ``python3 -m vllm.entrypoints.openai.api_server``."""
    spec = md.spec
    accel = spec.accelerator.type
    args = [
        "--model", model_path,
        "--served-model-name", spec.model.name,
        "--host", "0.0.0.0",
        "--port", str(HTTP_PORT),
    ]  # fmt: skip
    precision = VLLM_PRECISION_ARGS[(spec.precision, accel)]
    if not _has_flag(spec.args, precision[0]):
        args += precision
    if accel != AcceleratorType.CPU:
        args += ["--gpu-memory-utilization", f"{spec.accelerator.memory_fraction:g}"]
        args += ["--tensor-parallel-size", str(spec.accelerator.count or 1)]
    args += ["--max-num-seqs", str(spec.batching.max_batch_size)]
    if spec.batching.max_batched_tokens is not None:
        args += ["--max-num-batched-tokens", str(spec.batching.max_batched_tokens)]
    if spec.batching.max_model_len is not None:
        args += ["--max-model-len", str(spec.batching.max_model_len)]
    return args + list(spec.args)


def onnx_cpu_threads(md: ModelDeployment) -> int:
    """spec.cpuThreads, else the whole CPUs of the container's limit/request, else 0 (all)."""
    if md.spec.cpu_threads is not None:
        return md.spec.cpu_threads
    for group in (md.spec.resources.limits, md.spec.resources.requests):
        cpus = cpu_quantity(group.get("cpu"))
        if cpus is not None:
            return max(1, int(cpus))
    return 0


def cpu_quantity(value: int | str | None) -> float | None:
    """A CPU quantity (``2``, ``"1500m"``, ``"0.5"``) in cores; None when unset or unreadable."""
    if value is None:
        return None
    text = str(value)
    try:
        return float(text[:-1]) / 1000 if text.endswith("m") else float(text)
    except ValueError:
        return None


def onnx_args(md: ModelDeployment, repository: str) -> list[str]:
    """Arguments of ``clawdbot-runtime serve``."""
    spec = md.spec
    return [
        "serve",
        "--model-repository", repository,
        "--model", spec.model.name,
        "--host", "0.0.0.0",
        "--http-port", str(HTTP_PORT),
        "--grpc-port", str(GRPC_PORT),
        "--accelerator", spec.accelerator.type.value,
        "--cpu-threads", str(onnx_cpu_threads(md)),
        "--max-batch-size", str(spec.batching.max_batch_size),
        "--max-queue-delay-ms", str(spec.batching.max_queue_delay_ms),
        *spec.args,
    ]  # fmt: skip


def compresses_at_start(md: ModelDeployment) -> bool:
    """Whether the pod quantizes the stored model before serving it (onnx, int8 or int4)."""
    return md.spec.runtime == Runtime.ONNX and md.spec.precision in COMPRESSED_PRECISIONS


def compress_command(md: ModelDeployment, repository: str) -> list[str]:
    """The compress init container's command: ``repository`` -> :data:`COMPRESSED_DIR`."""
    return [
        "clawdbot", "compress", repository, COMPRESSED_DIR,
        "--repository",
        "--model", md.spec.model.name,
        "--precision", md.spec.precision.value,
        "--keep-quantized",
        "--eval-inputs", str(COMPRESS_EVAL_INPUTS),
    ]  # fmt: skip


def server_env(md: ModelDeployment) -> list[Manifest]:
    """Environment of the server: caches on the writable volume, no phoning home."""
    env = [
        {"name": "HOME", "value": CACHE_DIR},
        {"name": "XDG_CACHE_HOME", "value": CACHE_DIR},
        {"name": "HF_HOME", "value": f"{CACHE_DIR}/huggingface"},
        # Weights are local (volume, image or init download): the server never needs the Hub.
        {"name": "HF_HUB_OFFLINE", "value": "1"},
        {"name": "DO_NOT_TRACK", "value": "1"},
    ]
    if md.spec.runtime == Runtime.VLLM:
        env += [
            {"name": "VLLM_NO_USAGE_STATS", "value": "1"},
            {"name": "VLLM_CACHE_ROOT", "value": f"{CACHE_DIR}/vllm"},
        ]
        if (
            md.spec.precision == Precision.INT4
            and md.spec.accelerator.type == AcceleratorType.AMD
            and not _has_flag(md.spec.args, "--quantization")
        ):
            env.append({"name": "VLLM_USE_TRITON_AWQ", "value": "1"})
    if md.spec.cpu_threads is not None:
        env.append({"name": "OMP_NUM_THREADS", "value": str(md.spec.cpu_threads)})
    return env


def server_command(md: ModelDeployment, model_path: str) -> tuple[list[str], list[str]]:
    """(command, args) of the model server."""
    if md.spec.runtime == Runtime.VLLM:
        return ["python3", "-m", "vllm.entrypoints.openai.api_server"], vllm_args(md, model_path)
    return ["clawdbot-runtime"], onnx_args(md, model_path)


def server_ports(md: ModelDeployment) -> list[Manifest]:
    """Container ports: HTTP (OpenAI, health, metrics), plus gRPC for the ONNX server."""
    ports: list[Manifest] = [{"name": "http", "containerPort": HTTP_PORT, "protocol": "TCP"}]
    if md.spec.runtime == Runtime.ONNX:
        ports.append({"name": "grpc", "containerPort": GRPC_PORT, "protocol": "TCP"})
    return ports
