"""The operator's configuration: images per runtime and accelerator, timings, names, and the
process's own settings (ports, namespaces, leader election).

One :class:`OperatorConfig` is what the composition root (``manager``) reads. Values come
from ``CLAWDBOT_*`` environment variables, optionally on top of a YAML file named by
``CLAWDBOT_OPERATOR_CONFIG`` (same keys, lower case, without the prefix), and the command
line's flags (``main``) override the settings they name::

    image_vllm_nvidia: vllm/vllm-openai:v0.11.0
    resync_seconds: 10
    metrics_port: 6443

An image set to the empty string marks that runtime/accelerator pair as unsupported: a
ModelDeployment asking for it gets ``Ready=False, reason InvalidSpec`` instead of pods.

A list setting (``gpu_node_labels``, ``namespaces``) is a YAML list in the file, or
comma-separated in the environment: ``CLAWDBOT_GPU_NODE_LABELS=nvidia.com/gpu.present,x/gpu``.
A boolean is ``true``/``false`` (also ``1``/``0``, ``yes``/``no``).

The pod's own name and namespace come from ``POD_NAME`` and ``POD_NAMESPACE`` (the downward
API), as every in-cluster controller reads them.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from enum import StrEnum
from pathlib import Path
from typing import Any, Final

import yaml

from clawdbot_api.v1alpha1 import AcceleratorType, Runtime

ENV_PREFIX: Final = "CLAWDBOT_"
CONFIG_FILE_ENV: Final = "CLAWDBOT_OPERATOR_CONFIG"
# Where the operator runs when POD_NAMESPACE (the downward API) doesn't say.
DEFAULT_NAMESPACE: Final = "clawdbot-system"
_TRUE: Final = frozenset({"1", "true", "yes", "on"})
_FALSE: Final = frozenset({"0", "false", "no", "off", ""})

# Image names carry no registry host: the cluster's own registry mirror or pull-through
# cache decides where they come from. Pin them per site with the environment variables.
DEFAULT_IMAGES: Final[Mapping[tuple[Runtime, AcceleratorType], str]] = {
    (Runtime.VLLM, AcceleratorType.NVIDIA): "vllm/vllm-openai:v0.11.0",
    (Runtime.VLLM, AcceleratorType.AMD): "rocm/vllm:latest",
    # vLLM publishes no CPU image under a neutral name; the project builds one.
    (Runtime.VLLM, AcceleratorType.CPU): "clawdbot/vllm-cpu:0.1.0",
    (Runtime.ONNX, AcceleratorType.NVIDIA): "clawdbot/runtime-onnx-cuda:0.1.0",
    (Runtime.ONNX, AcceleratorType.AMD): "clawdbot/runtime-onnx-rocm:0.1.0",
    (Runtime.ONNX, AcceleratorType.CPU): "clawdbot/runtime-onnx:0.1.0",
}


DEFAULT_GPU_NODE_LABELS: Final = (
    # NVIDIA GPU feature discovery (part of the GPU operator and of the device plugin's chart).
    "nvidia.com/gpu.present",
    # Node Feature Discovery: a PCI display or accelerator device of NVIDIA (10de) or AMD (1002).
    "feature.node.kubernetes.io/pci-10de.present",
    "feature.node.kubernetes.io/pci-1002.present",
    # AMD's node labeller (ROCm k8s-device-plugin).
    "amd.com/gpu.family",
)
"""Node labels that mark a GPU node, as the usual discovery add-ons set them."""


class GpuNodeAvoidance(StrEnum):
    """How pods of ``accelerator: cpu`` models keep off GPU nodes."""

    PREFERRED = "preferred"
    """A preferred node affinity: GPU nodes score lower, and still take CPU pods when nothing
    else fits (better a running model than a Pending one)."""
    REQUIRED = "required"
    """A required node affinity: CPU pods never run on a node with a GPU label."""
    OFF = "off"
    """No affinity: the scheduler places CPU pods anywhere (taints alone keep them off)."""


def image_key(runtime: Runtime, accelerator: AcceleratorType) -> str:
    """The config key of one runtime/accelerator image, e.g. ``image_vllm_nvidia``."""
    return f"image_{runtime.value}_{accelerator.value}"


@dataclass(frozen=True)
class OperatorConfig:
    """Everything the builders and the reconciler need besides the ModelDeployment itself."""

    images: Mapping[tuple[Runtime, AcceleratorType], str] = field(
        default_factory=lambda: dict(DEFAULT_IMAGES)
    )
    """Model server image per runtime and accelerator; "" = unsupported pair."""
    image_fetch_hf: str = "vllm/vllm-openai:v0.11.0"
    """Init container image for hf:// models: it must ship the huggingface_hub package
    (vLLM's image does, and GPU nodes have it cached already)."""
    image_fetch_rclone: str = "rclone/rclone:1.68"
    """Init container image for s3://, gs:// and http(s):// models (rclone)."""
    field_manager: str = "clawdbot-operator"
    """Server-side apply field manager; also the managed-by label value."""
    resync_seconds: float = 10.0
    """Period of the level-based resync of every ModelDeployment: drift correction, progress
    deadlines and crash-loop checks run at least this often (child events run sooner)."""
    drain_seconds: int = 10
    """preStop sleep: time for endpoint removal to reach every client before SIGTERM."""
    termination_grace_seconds: int = 60
    """Pod grace period: the drain plus the longest generation allowed to finish."""
    load_report_window_seconds: float = 300.0
    """Load reports older than this are ignored (autoscaling metrics and rollback checks)."""
    image_sidecar: str = "clawdbot/sidecar:0.1.0"
    """Image of the routing sidecar the webhook injects into opted-in pods."""
    webhook_port: int = 8443
    """HTTPS port of the sidecar injection webhook; 0 disables it."""
    webhook_path: str = "/inject-sidecar"
    """Path the webhook configuration calls."""
    webhook_configuration: str = "clawdbot-sidecar-injector"
    """MutatingWebhookConfiguration whose caBundle the operator keeps current."""
    webhook_service: str = "clawdbot-webhook"
    """Service in front of the webhook (a DNS name of the serving certificate)."""
    webhook_cert_dir: str = ""
    """tls.crt/tls.key/ca.crt from elsewhere (cert-manager); empty: the operator issues them."""
    webhook_cert_secret: str = ""
    """Secret where the operator keeps its self-issued certificate, shared by its replicas;
    empty: kept in memory (one replica, local runs)."""
    discovery_port: int = 9443
    """gRPC (TLS) port of the discovery stream the sidecars subscribe to; 0 disables it."""
    discovery_service: str = "clawdbot-discovery"
    """Service in front of the discovery stream (what injected sidecars dial)."""
    peer_selector: str = ""
    """Label selector of the operator's own pods (in its namespace): each replica relays the
    load reports its sidecars send to the others, so every replica's metrics API and the
    leader's rollback check see them all. Empty: no relay (one replica)."""
    peer_token_file: str = "/var/run/secrets/clawdbot/token"
    """Projected service-account token (audience ``clawdbot``) presented to peers."""
    gpu_node_avoidance: GpuNodeAvoidance = GpuNodeAvoidance.PREFERRED
    """Whether CPU model pods avoid nodes with any of ``gpu_node_labels`` (``preferred``,
    ``required`` or ``off``). GPUs are scarce: a CPU model on a GPU node takes the CPU and
    memory a GPU model there needs. GPU nodes tainted ``nvidia.com/gpu`` or ``amd.com/gpu``
    keep CPU pods off anyway; this covers clusters that only label them."""
    gpu_node_labels: tuple[str, ...] = DEFAULT_GPU_NODE_LABELS
    """Node labels (keys) that mark a GPU node, for ``gpu_node_avoidance``."""

    # -- the process (flags of ``clawdbot-operator`` override these) ----------------------
    namespaces: tuple[str, ...] = ()
    """Namespaces to watch; empty: every namespace."""
    kubeconfig: str = ""
    """kubeconfig file; empty: in-cluster, then the default kubeconfig."""
    namespace: str = DEFAULT_NAMESPACE
    """The operator's own namespace (``POD_NAMESPACE``): its Services, Secret and Lease."""
    pod_name: str = ""
    """This replica's pod name (``POD_NAME``): its Lease identity and its name to peers."""
    bind_address: str = "0.0.0.0"
    """Address every server listens on."""
    metrics_port: int = 6443
    """HTTPS port of the external.metrics.k8s.io API; 0 disables it."""
    metrics_cert_file: str = ""
    """Serving certificate of the metrics API; empty: the operator's own (see ``tls``)."""
    metrics_key_file: str = ""
    """Key of ``metrics_cert_file``."""
    metrics_service: str = "clawdbot-metrics"
    """Service in front of the metrics API (a name of the self-issued certificate)."""
    metrics_api_service: str = ""
    """APIService whose caBundle the operator keeps set to its CA; empty: none."""
    accept_load_reports: bool = False
    """Accept load reports by HTTP POST /loadreports on the metrics port."""
    health_port: int = 8080
    """Port of kopf's liveness endpoint."""
    prometheus_port: int = 9090
    """Plain-HTTP port of the operator's own Prometheus /metrics; 0 disables it."""
    owner_deployment: str = ""
    """The operator's own Deployment: it owns the Secret and Lease the operator creates."""
    leader_elect: bool = False
    """Elect a leader among replicas through a Lease; only the leader writes."""
    leader_election_namespace: str = ""
    """Namespace of the Lease; empty: ``namespace``."""
    leader_election_name: str = "clawdbot-operator"
    """Name of the Lease."""
    log_level: str = "INFO"
    """Python logging level."""

    @property
    def own_metrics_certificate(self) -> bool:
        """The metrics API serves certificate files of its own, not the operator's."""
        return bool(self.metrics_cert_file and self.metrics_key_file)

    def image_for(self, runtime: Runtime, accelerator: AcceleratorType) -> str:
        """The configured image, or "" when the pair is unsupported."""
        return self.images.get((runtime, accelerator), "")

    @classmethod
    def load(cls, env: Mapping[str, str] | None = None) -> OperatorConfig:
        """Defaults, then the YAML file of ``CLAWDBOT_OPERATOR_CONFIG``, then the environment."""
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        path = env.get(CONFIG_FILE_ENV)
        if path:
            loaded = yaml.safe_load(Path(path).read_text()) or {}
            if not isinstance(loaded, dict):
                raise ValueError(f"{path}: expected a mapping of settings")
            values.update({str(k).lower(): v for k, v in loaded.items()})
        for key, value in env.items():
            if key.startswith(ENV_PREFIX) and key != CONFIG_FILE_ENV:
                values[key.removeprefix(ENV_PREFIX).lower()] = value
        for variable, setting in (("POD_NAMESPACE", "namespace"), ("POD_NAME", "pod_name")):
            if env.get(variable):
                values[setting] = env[variable]
        return cls.from_mapping(values)

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> OperatorConfig:
        """Build from flat ``key: value`` settings; unknown keys are ignored."""
        config = cls()
        images = dict(config.images)
        for runtime in Runtime:
            for accel in AcceleratorType:
                key = image_key(runtime, accel)
                if key in values:
                    images[(runtime, accel)] = str(values[key])
        changes: dict[str, Any] = {"images": images}
        for f in fields(cls):
            if f.name == "images" or f.name not in values:
                continue
            changes[f.name] = _convert(f.name, getattr(config, f.name), values[f.name])
        return replace(config, **changes)


def _convert(key: str, default: Any, value: Any) -> Any:
    """``value`` as the type of the setting's default; ValueError naming the setting."""
    if isinstance(default, tuple):
        items = value.split(",") if isinstance(value, str) else value
        if not isinstance(items, list | tuple):
            raise ValueError(f"setting {key}: expected a list or comma-separated text")
        return tuple(str(i).strip() for i in items if str(i).strip())
    if isinstance(default, bool):
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in _TRUE or text in _FALSE:
            return text in _TRUE
        raise ValueError(f"setting {key}: {value!r} is not a boolean; use true or false")
    try:
        return type(default)(value)
    except ValueError as exc:
        choices = ""
        if isinstance(default, StrEnum):
            choices = f"; use one of {', '.join(m.value for m in type(default))}"
        raise ValueError(f"setting {key}: {value!r} is not valid ({exc}){choices}") from exc
