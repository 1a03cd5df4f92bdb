"""The Deployment that runs the model server pods of the current revision."""

from __future__ import annotations

import math
from typing import Any, Final

from clawdbot_api.v1alpha1 import AcceleratorType, ModelDeployment, Runtime
from clawdbot_operator.builders.meta import (
    ANNOTATION_REVISION_HASH,
    Manifest,
    labels,
    object_meta,
    pod_annotations,
    selector_labels,
)
from clawdbot_operator.builders.runtimes import (
    CACHE_DIR,
    COMPRESS_CONTAINER,
    COMPRESS_VOLUME,
    COMPRESSED_DIR,
    FETCH_CONTAINER,
    GPU_RESOURCE,
    PROBES,
    SERVER_CONTAINER,
    ModelSource,
    compress_command,
    compresses_at_start,
    model_source,
    server_command,
    server_env,
    server_ports,
)
from clawdbot_operator.config import GpuNodeAvoidance, OperatorConfig

# Model pods run as this unprivileged user; the images don't need root (caches and
# temporary files go to emptyDirs), and runAsNonRoot can't verify a named user.
RUN_AS_USER: Final = 1000
STARTUP_PERIOD_S: Final = 10
# Kept small: the operator keeps its own revision history (ControllerRevisions).
DEPLOYMENT_HISTORY: Final = 2
# The most a preferred scheduling term can weigh: avoiding GPU nodes outweighs spreading.
MAX_PREFERENCE_WEIGHT: Final = 100
DEFAULT_MEMORY: Final[dict[Runtime, str]] = {Runtime.VLLM: "16Gi", Runtime.ONNX: "2Gi"}
DEFAULT_CPU: Final[dict[Runtime, int]] = {Runtime.VLLM: 2, Runtime.ONNX: 1}
FETCH_RESOURCES: Final[Manifest] = {
    "requests": {"cpu": "500m", "memory": "512Mi"},
    "limits": {"memory": "4Gi"},
}


def resolved_image(md: ModelDeployment, config: OperatorConfig) -> str:
    """spec.image, else the configured image for the runtime and accelerator."""
    return md.spec.image or config.image_for(md.spec.runtime, md.spec.accelerator.type)


def pod_security_context() -> Manifest:
    """Pod-level settings of the ``restricted`` Pod Security Standard."""
    return {
        "runAsNonRoot": True,
        "runAsUser": RUN_AS_USER,
        "runAsGroup": RUN_AS_USER,
        "fsGroup": RUN_AS_USER,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def container_security_context() -> Manifest:
    """Container-level settings of the ``restricted`` Pod Security Standard, plus a
    read-only root filesystem."""
    return {
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "privileged": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def desired_replicas(md: ModelDeployment) -> int:
    """spec.replicas, kept within the autoscaler's bounds when autoscaling is on."""
    auto = md.spec.autoscaling
    if auto is None:
        return md.spec.replicas
    return min(max(md.spec.replicas, auto.min_replicas), auto.max_replicas)


def server_resources(md: ModelDeployment) -> Manifest:
    """Requests and limits: the spec's, sensible defaults, and the GPUs of the accelerator."""
    spec = md.spec
    requests: dict[str, Any] = dict(spec.resources.requests)
    limits: dict[str, Any] = dict(spec.resources.limits)
    requests.setdefault("cpu", str(spec.cpu_threads or DEFAULT_CPU[spec.runtime]))
    requests.setdefault("memory", limits.get("memory", DEFAULT_MEMORY[spec.runtime]))
    limits.setdefault("memory", requests["memory"])
    gpu = GPU_RESOURCE.get(spec.accelerator.type)
    if gpu:
        # Extended resources: the request defaults to the limit, and they can't overcommit.
        limits[gpu] = str(spec.accelerator.count or 1)
    return {"requests": requests, "limits": limits}


def compress_resources(md: ModelDeployment) -> Manifest:
    """The server's CPU and memory, without GPUs: compressing holds the model in memory as
    serving does (and init containers don't add to the pod's request)."""
    server = server_resources(md)
    gpus = set(GPU_RESOURCE.values())
    return {
        group: {k: v for k, v in values.items() if k not in gpus}
        for group, values in server.items()
    }


def compress_container(
    md: ModelDeployment, config: OperatorConfig, source: ModelSource
) -> Manifest:
    """The init container that quantizes the stored model into the compressed emptyDir."""
    return {
        "name": COMPRESS_CONTAINER,
        "image": resolved_image(md, config),
        "imagePullPolicy": "IfNotPresent",
        "command": compress_command(md, source.path),
        "env": server_env(md),
        "resources": compress_resources(md),
        "securityContext": container_security_context(),
        "volumeMounts": [
            *source.server_mounts,
            {"name": COMPRESS_VOLUME, "mountPath": COMPRESSED_DIR},
            {"name": "cache", "mountPath": CACHE_DIR},
            {"name": "tmp", "mountPath": "/tmp"},
        ],
    }


def probes(md: ModelDeployment) -> Manifest:
    """Startup, readiness and liveness probes on the serving port."""
    paths = PROBES[md.spec.runtime]
    deadline = md.spec.rollout.progress_deadline_seconds

    def http(path: str) -> Manifest:
        return {"httpGet": {"path": path, "port": "http", "scheme": "HTTP"}}

    return {
        # Loading weights can take minutes; liveness only starts counting once this passes,
        # and the rollout's progress deadline bounds it.
        "startupProbe": {
            **http(paths.live),
            "periodSeconds": STARTUP_PERIOD_S,
            "timeoutSeconds": 5,
            "failureThreshold": max(3, math.ceil(deadline / STARTUP_PERIOD_S)),
        },
        "readinessProbe": {
            **http(paths.ready),
            "periodSeconds": 5,
            "timeoutSeconds": 5,
            "failureThreshold": 3,
        },
        "livenessProbe": {
            **http(paths.live),
            "periodSeconds": 10,
            "timeoutSeconds": 5,
            "failureThreshold": 6,
        },
    }


def tolerations(md: ModelDeployment) -> list[Manifest]:
    """The spec's tolerations, plus the usual taint of the accelerator's GPU nodes: the
    resource name with any value, NoSchedule (``nvidia.com/gpu=present:NoSchedule`` as GKE
    sets it, or what the ExtendedResourceToleration admission plugin tolerates)."""
    out = [t.to_manifest() for t in md.spec.tolerations]
    gpu = GPU_RESOURCE.get(md.spec.accelerator.type)
    if gpu and not any(t.get("key") == gpu for t in out):
        out.append({"key": gpu, "operator": "Exists", "effect": "NoSchedule"})
    return out


def node_affinity(md: ModelDeployment, config: OperatorConfig) -> Manifest | None:
    """For a CPU model: keep off nodes labelled as GPU nodes (``config.gpu_node_avoidance``).

    GPU pods need nothing here: their GPU request already limits them to GPU nodes, and
    :func:`tolerations` lets them onto tainted ones. A CPU pod fits a GPU node's CPU and
    memory, and would take what the GPU models there need. One term whose expressions are
    ANDed: the node has none of the labels.
    """
    mode = config.gpu_node_avoidance
    if (
        md.spec.accelerator.type != AcceleratorType.CPU
        or mode == GpuNodeAvoidance.OFF
        or not config.gpu_node_labels
    ):
        return None
    term = {
        "matchExpressions": [
            {"key": key, "operator": "DoesNotExist"} for key in config.gpu_node_labels
        ]
    }
    if mode == GpuNodeAvoidance.REQUIRED:
        return {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [term]}}
    return {
        "preferredDuringSchedulingIgnoredDuringExecution": [
            {"weight": MAX_PREFERENCE_WEIGHT, "preference": term}
        ]
    }


def pod_spec(md: ModelDeployment, config: OperatorConfig) -> Manifest:
    """The model server pod."""
    source = model_source(md, config)
    compressing = compresses_at_start(md)
    command, args = server_command(md, COMPRESSED_DIR if compressing else source.path)
    volumes: list[Manifest] = [
        {"name": "cache", "emptyDir": {}},
        {"name": "tmp", "emptyDir": {}},
        *source.volumes,
    ]
    mounts: list[Manifest] = [
        {"name": "cache", "mountPath": CACHE_DIR},
        {"name": "tmp", "mountPath": "/tmp"},
        *source.server_mounts,
    ]
    if md.spec.runtime == Runtime.VLLM and md.spec.accelerator.type != AcceleratorType.CPU:
        # Tensor-parallel workers exchange tensors through shared memory.
        volumes.append({"name": "shm", "emptyDir": {"medium": "Memory", "sizeLimit": "8Gi"}})
        mounts.append({"name": "shm", "mountPath": "/dev/shm"})
    if compressing:
        volumes.append({"name": COMPRESS_VOLUME, "emptyDir": {}})
        mounts.append({"name": COMPRESS_VOLUME, "mountPath": COMPRESSED_DIR, "readOnly": True})
    server: Manifest = {
        "name": SERVER_CONTAINER,
        "image": resolved_image(md, config),
        "imagePullPolicy": "IfNotPresent",
        "command": command,
        "args": args,
        "ports": server_ports(md),
        "env": server_env(md),
        "resources": server_resources(md),
        **probes(md),
        "lifecycle": {"preStop": {"sleep": {"seconds": config.drain_seconds}}},
        "securityContext": container_security_context(),
        "volumeMounts": mounts,
    }
    spec: Manifest = {
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "securityContext": pod_security_context(),
        "terminationGracePeriodSeconds": config.termination_grace_seconds,
        "containers": [server],
        "volumes": volumes,
    }
    init_containers: list[Manifest] = []
    if source.fetch_command is not None:
        init_containers.append(
            {
                "name": FETCH_CONTAINER,
                "image": source.fetch_image,
                "imagePullPolicy": "IfNotPresent",
                "command": source.fetch_command,
                "env": [{"name": "HOME", "value": CACHE_DIR}],
                "resources": FETCH_RESOURCES,
                "securityContext": container_security_context(),
                "volumeMounts": [
                    {"name": "model", "mountPath": "/models"},
                    {"name": "cache", "mountPath": CACHE_DIR},
                    {"name": "tmp", "mountPath": "/tmp"},
                ],
            }
        )
    if compressing:
        # After the download (if any): it reads what fetch-model wrote.
        init_containers.append(compress_container(md, config, source))
    if init_containers:
        spec["initContainers"] = init_containers
    if md.spec.node_selector:
        spec["nodeSelector"] = dict(md.spec.node_selector)
    tols = tolerations(md)
    if tols:
        spec["tolerations"] = tols
    affinity = node_affinity(md, config)
    if affinity is not None:
        spec["affinity"] = {"nodeAffinity": affinity}
    return spec


def build_deployment(
    md: ModelDeployment, config: OperatorConfig, revision: int, revision_hash: str
) -> Manifest:
    """The apps/v1 Deployment for ``md`` at ``revision`` (its template fields already set)."""
    rollout = md.spec.rollout
    meta = object_meta(md, revision)
    meta["annotations"] = {ANNOTATION_REVISION_HASH: revision_hash}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": meta,
        "spec": {
            "replicas": desired_replicas(md),
            "selector": {"matchLabels": selector_labels(md)},
            "strategy": {
                "type": "RollingUpdate",
                "rollingUpdate": {
                    "maxSurge": rollout.max_surge,
                    "maxUnavailable": rollout.max_unavailable,
                },
            },
            "progressDeadlineSeconds": rollout.progress_deadline_seconds,
            "revisionHistoryLimit": DEPLOYMENT_HISTORY,
            "template": {
                "metadata": {
                    "labels": labels(md, revision),
                    "annotations": {
                        **pod_annotations(md),
                        ANNOTATION_REVISION_HASH: revision_hash,
                    },
                },
                "spec": pod_spec(md, config),
            },
        },
    }
