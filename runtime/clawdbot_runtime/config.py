"""Server configuration: one typed model, filled from ``CLAWDBOT_RUNTIME_*`` and CLI flags.

Precedence is defaults < environment < command line, so a Deployment can set the
environment and an operator can still override a single flag.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

ENV_PREFIX = "CLAWDBOT_RUNTIME_"

Accelerator = Literal["nvidia", "amd", "cpu"]


class RuntimeConfig(BaseModel):
    """Every setting of the model server, with why each default is what it is."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model_repository: Path = Field(
        description=(
            "Folder laid out as <model>/<version>/model.onnx; the highest version is served."
        )
    )
    model: str | None = Field(
        default=None,
        description=(
            "Serve only this model of the repository (one model per pod, as the operator "
            "deploys it); None serves every model folder."
        ),
    )
    host: str = Field(
        default="0.0.0.0",
        description="Address both fronts bind; all interfaces, as a pod's server must be.",
    )
    http_port: int = Field(
        default=8000, ge=0, le=65535, description="REST port (v2, /v1, /metrics); 0 = any free."
    )
    grpc_port: int = Field(
        default=8001, ge=0, le=65535, description="gRPC port (v2 + health + reflection); 0 = any."
    )
    accelerator: Accelerator = Field(
        default="cpu", description="Picks the execution providers: nvidia, amd or cpu."
    )
    device_id: int = Field(default=0, ge=0, description="GPU index for the CUDA/ROCm provider.")
    allow_cpu_fallback: bool = Field(
        default=False,
        description=(
            "Serve on CPU when the accelerator's provider is missing, instead of failing: off "
            "by default so a mis-built image is caught at start-up, not as slow inference."
        ),
    )
    cpu_threads: int = Field(
        default=0,
        ge=0,
        description=(
            "onnxruntime intra-op threads per model (the seed's cpu_threads); 0 = all cores."
        ),
    )
    max_batch_size: int = Field(
        default=8,
        ge=1,
        description="Most rows merged into one run; 1 turns dynamic batching off.",
    )
    max_queue_delay_ms: float = Field(
        default=0.0,
        ge=0,
        description=(
            "How long the first request of a batch waits for company. 0 (Triton's default too) "
            "still merges whatever queued up while the previous batch ran, so batches grow "
            "with load at no latency cost when idle; a few ms fills batches further under "
            "heavy load at the price of that much latency when quiet (see bench/batching.py)."
        ),
    )
    max_queue: int = Field(
        default=256,
        ge=1,
        description="Requests waiting per model before new ones get 429 / RESOURCE_EXHAUSTED.",
    )
    inference_threads: int = Field(
        default=4,
        ge=1,
        description="Threads running onnxruntime; each model runs one batch at a time.",
    )
    repository_poll_interval_s: float = Field(
        default=5.0,
        ge=0,
        description="How often the repository is rescanned for new versions; 0 = only on request.",
    )
    drain_timeout_s: float = Field(
        default=25.0,
        gt=0,
        description=(
            "Longest wait for in-flight requests on SIGTERM; under Kubernetes' default 30 s "
            "grace period so the process exits cleanly before it would be killed."
        ),
    )
    max_request_bytes: int = Field(
        default=64 * 1024 * 1024,
        ge=1024,
        description=(
            "Largest request (REST body, gRPC message): tensors are bulky, memory is finite."
        ),
    )
    log_level: str = Field(default="INFO", description="Python logging level name.")
    log_format: Literal["json", "text"] = Field(
        default="json", description="json for log collectors, text for a terminal."
    )

    @classmethod
    def load(
        cls, cli: Mapping[str, Any] | None = None, environ: Mapping[str, str] | None = None
    ) -> RuntimeConfig:
        """Build the config from environment variables, overridden by non-None CLI values."""
        values: dict[str, Any] = {}
        for name in cls.model_fields:
            raw = (environ or {}).get(ENV_PREFIX + name.upper())
            if raw is not None:
                values[name] = raw
        for name, value in (cli or {}).items():
            if value is not None and name in cls.model_fields:
                values[name] = value
        return cls.model_validate(values)
