"""ModelDeployment: a model served by vLLM or ONNX Runtime pods on NVIDIA, AMD or CPU nodes."""

from __future__ import annotations

from enum import StrEnum
from typing import Literal

from pydantic import Field

from clawdbot_api.v1alpha1.common import (
    ApiModel,
    CelRule,
    CelValidated,
    ConditionList,
    IntOrString,
    ObjectMeta,
    ResourceRequirements,
    Timestamp,
    Toleration,
    cel_rules,
)


class Runtime(StrEnum):
    VLLM = "vllm"
    ONNX = "onnx"


class Precision(StrEnum):
    FP16 = "fp16"
    BF16 = "bf16"
    INT8 = "int8"
    INT4 = "int4"
    FP8 = "fp8"


class AcceleratorType(StrEnum):
    NVIDIA = "nvidia"
    AMD = "amd"
    CPU = "cpu"


class Model(ApiModel):
    """Which model to serve and where its weights are."""

    name: str = Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9._/:-]*$")
    """The model name clients ask for (the OpenAI "model" field), e.g. llama-7b."""
    uri: str = Field(
        min_length=1,
        max_length=2048,
        pattern=r"^(pvc|hf|s3|gs|oci|https?|file)://.+",
    )
    """Where the weights are: pvc://CLAIM/PATH, hf://ORG/NAME, s3://, gs://, oci://, https:// or
    file:// (a path inside the image)."""
    version: str = Field(default="1", min_length=1, max_length=64)
    """Model version; changing it starts a new revision and a rolling update."""


@cel_rules(
    CelRule(
        rule="self.type != 'cpu' || !has(self.count)",
        message="count is the number of GPUs per replica; leave it out when type is cpu",
        field_path=".count",
        check=lambda a: a.type != AcceleratorType.CPU or a.count is None,
    )
)
class Accelerator(CelValidated):
    """The hardware each replica runs on."""

    type: AcceleratorType = AcceleratorType.NVIDIA
    """nvidia (CUDA, nvidia.com/gpu), amd (ROCm, amd.com/gpu) or cpu."""
    count: int | None = Field(default=None, ge=1, le=16)
    """GPUs per replica (default 1); above 1, vLLM shards the model with tensor parallelism.
    Not allowed with type cpu."""
    memory_fraction: float = Field(default=0.9, gt=0, le=1)
    """Share of each GPU's memory the runtime may use, in (0, 1] (the seed's gpu_allocation);
    vLLM's --gpu-memory-utilization."""


class AutoscalingMetric(StrEnum):
    IN_FLIGHT = "inFlightRequests"
    QUEUE = "queueDepth"
    RPS = "requestsPerSecond"


@cel_rules(
    CelRule(
        rule="self.minReplicas <= self.maxReplicas",
        message="minReplicas must not exceed maxReplicas",
        field_path=".minReplicas",
        check=lambda a: a.min_replicas <= a.max_replicas,
    )
)
class Autoscaling(CelValidated):
    """Scale with load through a HorizontalPodAutoscaler on this resource's scale subresource."""

    min_replicas: int = Field(default=1, ge=1, le=1000)
    """Fewest replicas the autoscaler keeps."""
    max_replicas: int = Field(ge=1, le=1000)
    """Most replicas the autoscaler may create."""
    metric: AutoscalingMetric = AutoscalingMetric.IN_FLIGHT
    """Load metric, reported by the routing sidecars and served by the operator's metrics API."""
    target_per_replica: float = Field(default=8, gt=0)
    """Desired average of the metric per replica; the HPA adds replicas above it."""
    scale_down_stabilization_seconds: int = Field(default=300, ge=0, le=3600)
    """How long load must stay low before scaling down (model pods are slow to start)."""


class Batching(ApiModel):
    """How requests are batched on each replica (the seed's --batch_size)."""

    max_batch_size: int = Field(default=32, ge=1, le=4096)
    """Most requests merged into one batch (vLLM --max-num-seqs; ONNX dynamic batch size)."""
    max_queue_delay_ms: int = Field(default=5, ge=0, le=10000)
    """ONNX: longest a request waits for others to fill a batch."""
    max_batched_tokens: int | None = Field(default=None, ge=1)
    """vLLM: token budget per scheduler step (--max-num-batched-tokens)."""
    max_model_len: int | None = Field(default=None, ge=1)
    """Longest context served (vLLM --max-model-len); lower it to fit a small GPU."""


class AutoRollback(ApiModel):
    """When a new revision is judged bad and the previous healthy one restored."""

    enabled: bool = True
    """Roll back automatically; when false the operator only reports Degraded."""
    max_error_rate: float = Field(default=0.05, ge=0, le=1)
    """Error ratio of the new revision, from the sidecars' load reports, that triggers rollback."""
    max_p95_latency_ms: int | None = Field(default=None, ge=1)
    """p95 latency of the new revision that triggers rollback; unset disables the check."""
    min_requests: int = Field(default=20, ge=1)
    """Requests a revision must have served before its error rate and latency count."""
    max_restarts: int = Field(default=3, ge=1)
    """Container restarts of a new pod that count as a crash loop."""


class Rollout(ApiModel):
    """How a new revision replaces the old one."""

    max_surge: IntOrString = "25%"
    """Extra pods allowed during a rolling update (count or percentage)."""
    max_unavailable: IntOrString = 0
    """Pods that may be unavailable during a rolling update; 0 keeps full capacity."""
    progress_deadline_seconds: int = Field(default=600, ge=30, le=86400)
    """Time a new revision has to become ready before it is rolled back."""
    history_limit: int = Field(default=10, ge=1, le=100)
    """Revisions kept in status.revisions."""
    auto_rollback: AutoRollback = Field(default_factory=AutoRollback)
    """Thresholds for automatic rollback."""


def _onnx_precision_ok(s: ModelDeploymentSpec) -> bool:
    return s.runtime != Runtime.ONNX or s.precision in (
        Precision.FP16,
        Precision.INT8,
        Precision.INT4,
    )


def _vllm_cpu_precision_ok(s: ModelDeploymentSpec) -> bool:
    return not (
        s.runtime == Runtime.VLLM
        and s.accelerator.type == AcceleratorType.CPU
        and s.precision not in (Precision.BF16, Precision.FP16)
    )


def _fp8_on_gpu(s: ModelDeploymentSpec) -> bool:
    return s.precision != Precision.FP8 or s.accelerator.type != AcceleratorType.CPU


@cel_rules(
    CelRule(
        rule="self.runtime != 'onnx' || self.precision in ['fp16', 'int8', 'int4']",
        message="runtime onnx supports precision fp16, int8 or int4",
        field_path=".precision",
        check=_onnx_precision_ok,
    ),
    CelRule(
        rule=(
            "!(self.runtime == 'vllm' && self.accelerator.type == 'cpu')"
            " || self.precision in ['bf16', 'fp16']"
        ),
        message="vllm on cpu supports precision bf16 or fp16",
        field_path=".precision",
        check=_vllm_cpu_precision_ok,
    ),
    CelRule(
        rule="self.precision != 'fp8' || self.accelerator.type != 'cpu'",
        message="precision fp8 needs a GPU accelerator (nvidia or amd)",
        field_path=".precision",
        check=_fp8_on_gpu,
    ),
)
class ModelDeploymentSpec(CelValidated):
    """The desired state of a ModelDeployment."""

    model: Model
    """The model and its weights."""
    runtime: Runtime = Runtime.VLLM
    """Model server: vllm (OpenAI-compatible, GPU) or onnx (Clawdbot's ONNX Runtime server)."""
    precision: Precision = Precision.FP16
    """Numeric precision the model runs at; quantized precisions cut memory."""
    accelerator: Accelerator = Field(default_factory=Accelerator)
    """Hardware of each replica."""
    cpu_threads: int | None = Field(default=None, ge=1, le=256)
    """Threads for pre-processing and CPU inference (the seed's cpu_threads)."""
    replicas: int = Field(default=1, ge=0, le=1000)
    """Desired replicas; the HPA writes it when autoscaling is set (via the scale subresource)."""
    autoscaling: Autoscaling | None = None
    """Scale with load; when unset, replicas is fixed."""
    batching: Batching = Field(default_factory=Batching)
    """Request batching on each replica."""
    rollout: Rollout = Field(default_factory=Rollout)
    """Rolling update, revision history and automatic rollback."""
    rollback_to: int | None = Field(default=None, ge=1)
    """Roll back to this revision number from status.revisions."""
    image: str | None = Field(default=None, min_length=1, max_length=512)
    """Server image; by default the operator's image for this runtime and accelerator."""
    args: list[str] = Field(default_factory=list, max_length=64)
    """Extra arguments appended to the model server command."""
    resources: ResourceRequirements = Field(default_factory=ResourceRequirements)
    """CPU and memory of each replica."""
    node_selector: dict[str, str] = Field(default_factory=dict)
    """Extra node labels the pods must match."""
    tolerations: list[Toleration] = Field(default_factory=list, max_length=32)
    """Tolerations for tainted GPU nodes."""


class Phase(StrEnum):
    PENDING = "Pending"
    PROGRESSING = "Progressing"
    AVAILABLE = "Available"
    DEGRADED = "Degraded"
    FAILED = "Failed"


class RevisionPhase(StrEnum):
    PROGRESSING = "Progressing"
    HEALTHY = "Healthy"
    FAILED = "Failed"
    ROLLED_BACK = "RolledBack"
    SUPERSEDED = "Superseded"


class Revision(ApiModel):
    """One recorded revision: a version of the model and runtime settings."""

    revision: int = Field(ge=1)
    """Revision number, increasing by one per change."""
    hash: str = Field(max_length=64)
    """Hash of the settings that make up this revision."""
    model_version: str = Field(max_length=64)
    """spec.model.version at this revision."""
    image: str = Field(default="", max_length=512)
    """Server image at this revision."""
    phase: RevisionPhase
    """Progressing, Healthy, Failed, RolledBack or Superseded."""
    reason: str = Field(default="", max_length=1024)
    """Why the revision is in this phase (e.g. ProgressDeadlineExceeded)."""
    created_at: Timestamp
    """When the revision was created."""


class ModelDeploymentStatus(ApiModel):
    """The observed state of a ModelDeployment, written by the operator."""

    phase: Phase = Phase.PENDING
    """Pending, Progressing, Available, Degraded or Failed."""
    observed_generation: int | None = None
    """The .metadata.generation the status reflects."""
    conditions: ConditionList
    """Available, Progressing, Degraded and RolledBack."""
    replicas: int = 0
    """Pods created (the scale subresource's status replicas)."""
    ready_replicas: int = 0
    """Pods ready to serve."""
    updated_replicas: int = 0
    """Pods running the current revision."""
    selector: str = ""
    """Label selector of the pods, as a string (for the scale subresource and the HPA)."""
    current_revision: int | None = None
    """Revision the Deployment is rolling to or running."""
    stable_revision: int | None = None
    """Last revision that became healthy; the rollback target."""
    revisions: list[Revision] = Field(default_factory=list, max_length=100)
    """Revision history, newest last, bounded by rollout.historyLimit."""
    endpoint: str = ""
    """In-cluster URL of the OpenAI-compatible API, e.g. http://llama.ns.svc:8000/v1."""


class ModelDeployment(ApiModel):
    """A model served on the cluster by vLLM or ONNX Runtime pods."""

    api_version: Literal["clawdbot.io/v1alpha1"] = "clawdbot.io/v1alpha1"
    kind: Literal["ModelDeployment"] = "ModelDeployment"
    metadata: ObjectMeta = Field(default_factory=ObjectMeta)
    spec: ModelDeploymentSpec
    status: ModelDeploymentStatus | None = None
