"""Builders are pure: every runtime x accelerator x precision the API accepts, checked."""

from __future__ import annotations

import itertools
from typing import Any

import pytest
from md_support import UID, flag, model_deployment, restricted_violations
from pydantic import ValidationError

from clawdbot_api.v1alpha1 import AcceleratorType, Precision, Runtime
from clawdbot_operator.builders import build_children
from clawdbot_operator.builders.deployment import build_deployment
from clawdbot_operator.builders.pdb import build_pdb
from clawdbot_operator.builders.service import build_service, endpoint_url
from clawdbot_operator.config import (
    DEFAULT_GPU_NODE_LABELS,
    DEFAULT_IMAGES,
    GpuNodeAvoidance,
    OperatorConfig,
)
from clawdbot_operator.validation import check_supported

CONFIG = OperatorConfig()


def _accepted_combos() -> list[tuple[Runtime, AcceleratorType, Precision]]:
    combos = []
    for runtime, accel, precision in itertools.product(Runtime, AcceleratorType, Precision):
        try:
            md = model_deployment(
                runtime=runtime.value,
                accelerator={"type": accel.value},
                precision=precision.value,
            )
        except ValidationError:
            continue  # rejected by the API's own rules (CEL), never reaches the operator
        if check_supported(md, CONFIG) is None:
            combos.append((runtime, accel, precision))
    return combos


COMBOS = _accepted_combos()


def test_the_table_covers_every_combination_the_api_accepts() -> None:
    # vllm: 5 precisions on nvidia and amd, 2 on cpu; onnx: 3 precisions on 3 accelerators.
    assert len(COMBOS) == 5 + 5 + 2 + 9


def _server(dep: dict[str, Any]) -> dict[str, Any]:
    container: dict[str, Any] = dep["spec"]["template"]["spec"]["containers"][0]
    return container


@pytest.mark.parametrize(("runtime", "accel", "precision"), COMBOS, ids=str)
def test_deployment_per_runtime_accelerator_precision(
    runtime: Runtime, accel: AcceleratorType, precision: Precision
) -> None:
    md = model_deployment(
        runtime=runtime.value,
        accelerator={"type": accel.value},
        precision=precision.value,
        batching={"maxBatchSize": 48},
    )
    dep = build_deployment(md, CONFIG, 3, "abc")
    pod = dep["spec"]["template"]["spec"]
    server = _server(dep)
    args = server["args"]

    assert server["image"] == DEFAULT_IMAGES[(runtime, accel)]
    assert restricted_violations(pod) == []
    limits = server["resources"]["limits"]
    gpu = {"nvidia": "nvidia.com/gpu", "amd": "amd.com/gpu"}.get(accel.value)
    if gpu:
        assert limits[gpu] == "1"
        assert {"key": gpu, "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
        # The GPU request already limits the pod to GPU nodes.
        assert "affinity" not in pod
    else:
        assert not any(k.endswith("/gpu") for k in limits)
        # Off GPU nodes: no GPU toleration, and GPU-labelled nodes avoided.
        assert "tolerations" not in pod
        affinity = pod["affinity"]["nodeAffinity"]
        assert [
            p["weight"] for p in affinity["preferredDuringSchedulingIgnoredDuringExecution"]
        ] == [100]
    assert server["resources"]["requests"]["cpu"] and limits["memory"]

    if runtime == Runtime.VLLM:
        assert server["command"] == ["python3", "-m", "vllm.entrypoints.openai.api_server"]
        assert flag(args, "--model") == "/models/llama-7b"
        assert flag(args, "--served-model-name") == "llama-7b"
        assert flag(args, "--max-num-seqs") == "48"
        expected = {
            Precision.FP16: ("--dtype", "float16"),
            Precision.BF16: ("--dtype", "bfloat16"),
            Precision.FP8: ("--quantization", "fp8"),
            Precision.INT8: ("--quantization", "compressed-tensors"),
            Precision.INT4: (
                "--quantization",
                "awq_marlin" if accel == AcceleratorType.NVIDIA else "awq",
            ),
        }[precision]
        assert flag(args, expected[0]) == expected[1]
        if accel == AcceleratorType.CPU:
            assert "--gpu-memory-utilization" not in args
        else:
            assert flag(args, "--gpu-memory-utilization") == "0.9"
            assert flag(args, "--tensor-parallel-size") == "1"
        for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
            assert server[probe]["httpGet"]["path"] == "/health"
    else:
        assert server["command"] == ["clawdbot-runtime"]
        assert args[:1] == ["serve"]
        # int8/int4: the init container compresses the stored model into /compressed-models.
        compressed = precision in (Precision.INT8, Precision.INT4)
        repository = "/compressed-models" if compressed else "/models/llama-7b"
        assert flag(args, "--model-repository") == repository
        assert flag(args, "--model") == "llama-7b"
        assert flag(args, "--accelerator") == accel.value
        assert flag(args, "--http-port") == "8000" and flag(args, "--grpc-port") == "8001"
        assert flag(args, "--max-batch-size") == "48"
        assert flag(args, "--max-queue-delay-ms") == "5"
        assert flag(args, "--cpu-threads") == "0"
        assert server["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
        assert server["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    assert (
        server["startupProbe"]["failureThreshold"] * server["startupProbe"]["periodSeconds"]
        >= md.spec.rollout.progress_deadline_seconds
    )


def test_vllm_flags_from_the_spec() -> None:
    md = model_deployment(
        accelerator={"type": "nvidia", "count": 4, "memoryFraction": 0.7},
        batching={"maxBatchSize": 64, "maxBatchedTokens": 8192, "maxModelLen": 4096},
        cpuThreads=8,
        args=["--enable-prefix-caching"],
    )
    server = _server(build_deployment(md, CONFIG, 1, "h"))
    args = server["args"]
    assert flag(args, "--tensor-parallel-size") == "4"
    assert flag(args, "--gpu-memory-utilization") == "0.7"
    assert flag(args, "--max-num-batched-tokens") == "8192"
    assert flag(args, "--max-model-len") == "4096"
    assert args[-1] == "--enable-prefix-caching"
    assert server["resources"]["limits"]["nvidia.com/gpu"] == "4"
    assert {"name": "OMP_NUM_THREADS", "value": "8"} in server["env"]
    assert {"name": "HF_HUB_OFFLINE", "value": "1"} in server["env"]


def test_user_quantization_flag_replaces_the_operators() -> None:
    md = model_deployment(precision="int4", args=["--quantization", "gptq"])
    args = _server(build_deployment(md, CONFIG, 1, "h"))["args"]
    assert args.count("--quantization") == 1 and flag(args, "--quantization") == "gptq"


def test_image_override_and_operator_config() -> None:
    md = model_deployment(image="example/vllm:custom")
    assert _server(build_deployment(md, CONFIG, 1, "h"))["image"] == "example/vllm:custom"
    config = OperatorConfig.from_mapping({"image_vllm_nvidia": "site/vllm:1"})
    assert _server(build_deployment(model_deployment(), config, 1, "h"))["image"] == "site/vllm:1"


def test_onnx_threads_from_resources_when_not_given() -> None:
    md = model_deployment(
        runtime="onnx",
        precision="int8",
        accelerator={"type": "cpu"},
        resources={"requests": {"cpu": "2500m", "memory": "4Gi"}},
    )
    server = _server(build_deployment(md, CONFIG, 1, "h"))
    assert flag(server["args"], "--cpu-threads") == "2"
    assert server["resources"]["requests"] == {"cpu": "2500m", "memory": "4Gi"}
    assert server["resources"]["limits"] == {"memory": "4Gi"}


def test_model_sources() -> None:
    pvc = build_deployment(model_deployment(), CONFIG, 1, "h")["spec"]["template"]["spec"]
    assert {
        "name": "model",
        "persistentVolumeClaim": {"claimName": "models", "readOnly": True},
    } in pvc["volumes"]
    assert "initContainers" not in pvc

    md = model_deployment(model={"name": "m", "uri": "hf://meta-llama/Llama-3-8B"})
    pod = build_deployment(md, CONFIG, 1, "h")["spec"]["template"]["spec"]
    fetch = pod["initContainers"][0]
    assert fetch["name"] == "fetch-model" and fetch["image"] == CONFIG.image_fetch_hf
    assert "meta-llama/Llama-3-8B" in fetch["command"]
    assert {"name": "model", "emptyDir": {}} in pod["volumes"]
    mount = next(m for m in pod["containers"][0]["volumeMounts"] if m["name"] == "model")
    assert mount["readOnly"] is True
    assert restricted_violations(pod) == []

    s3 = model_deployment(model={"name": "m", "uri": "s3://bucket/models/m"})
    fetch = build_deployment(s3, CONFIG, 1, "h")["spec"]["template"]["spec"]["initContainers"][0]
    assert fetch["command"][:3] == ["rclone", "copy", ":s3:bucket/models/m"]

    image = model_deployment(model={"name": "m", "uri": "file:///opt/model"})
    server = _server(build_deployment(image, CONFIG, 1, "h"))
    assert flag(server["args"], "--model") == "/opt/model"


def test_deployment_shape() -> None:
    md = model_deployment(
        replicas=3,
        rollout={"maxSurge": 1, "maxUnavailable": 0, "progressDeadlineSeconds": 120},
        nodeSelector={"pool": "gpu"},
        annotations={"clawdbot.io/pod-annotations": '{"example.com/scrape": "true"}'},
    )
    dep = build_deployment(md, CONFIG, 2, "hash2")
    spec = dep["spec"]
    assert spec["replicas"] == 3
    assert spec["progressDeadlineSeconds"] == 120
    assert spec["strategy"]["rollingUpdate"] == {"maxSurge": 1, "maxUnavailable": 0}
    template = spec["template"]
    assert template["metadata"]["labels"]["clawdbot.io/revision"] == "2"
    assert template["metadata"]["annotations"] == {
        "example.com/scrape": "true",
        "clawdbot.io/revision-hash": "hash2",
    }
    # The selector never changes with the revision (Deployment selectors are immutable).
    assert "clawdbot.io/revision" not in spec["selector"]["matchLabels"]
    assert spec["selector"]["matchLabels"].items() <= template["metadata"]["labels"].items()
    pod = template["spec"]
    assert pod["nodeSelector"] == {"pool": "gpu"}
    assert pod["terminationGracePeriodSeconds"] == CONFIG.termination_grace_seconds
    assert pod["automountServiceAccountToken"] is False
    server = pod["containers"][0]
    assert server["lifecycle"]["preStop"] == {"sleep": {"seconds": CONFIG.drain_seconds}}


def test_replicas_stay_within_autoscaling_bounds() -> None:
    md = model_deployment(replicas=1, autoscaling={"minReplicas": 2, "maxReplicas": 5})
    assert build_deployment(md, CONFIG, 1, "h")["spec"]["replicas"] == 2


def test_every_child_is_owned_and_labelled() -> None:
    md = model_deployment(autoscaling={"maxReplicas": 4})
    children = build_children(md, CONFIG, 7, "h")
    assert [c["kind"] for c in children] == [
        "Deployment",
        "Service",
        "PodDisruptionBudget",
        "NetworkPolicy",
        "HorizontalPodAutoscaler",
    ]
    for child in children:
        meta = child["metadata"]
        assert meta["name"] == "llama" and meta["namespace"] == "ai"
        assert meta["ownerReferences"] == [
            {
                "apiVersion": "clawdbot.io/v1alpha1",
                "kind": "ModelDeployment",
                "name": "llama",
                "uid": UID,
                "controller": True,
                "blockOwnerDeletion": True,
            }
        ]
        labels = meta["labels"]
        assert labels["app.kubernetes.io/managed-by"] == "clawdbot-operator"
        assert labels["app.kubernetes.io/instance"] == "llama"
        assert labels["app.kubernetes.io/name"] == "vllm-server"
        assert labels["app.kubernetes.io/component"] == "model-server"
        assert labels["app.kubernetes.io/version"] == "1"
        assert labels["clawdbot.io/model-deployment"] == "llama"
        assert labels["clawdbot.io/revision"] == "7"


def test_service_and_pdb() -> None:
    onnx = model_deployment(runtime="onnx", precision="int8", accelerator={"type": "cpu"})
    svc = build_service(onnx, 1)
    assert [(p["name"], p["port"]) for p in svc["spec"]["ports"]] == [
        ("http", 8000),
        ("grpc", 8001),
    ]
    vllm = build_service(model_deployment(), 1)
    assert [p["name"] for p in vllm["spec"]["ports"]] == ["http"]
    assert endpoint_url(onnx) == "http://llama.ai.svc:8000/v1"
    pdb = build_pdb(onnx, 1)
    assert pdb["spec"]["maxUnavailable"] == 1
    assert pdb["spec"]["selector"]["matchLabels"] == svc["spec"]["selector"]


@pytest.mark.parametrize("accel", ["cpu", "nvidia", "amd"])
def test_onnx_command_line_is_what_the_runtime_parses(accel: str) -> None:
    """The serve flags are a contract with clawdbot-runtime: check them with its own parser."""
    runtime_main = pytest.importorskip("clawdbot_runtime.main")
    md = model_deployment(
        runtime="onnx",
        precision="int8",
        accelerator={"type": accel},
        cpuThreads=4,
        batching={"maxBatchSize": 16, "maxQueueDelayMs": 7},
    )
    server = _server(build_deployment(md, CONFIG, 1, "h"))
    parsed = runtime_main.build_parser().parse_args(server["args"])
    assert parsed.command == "serve"
    # int8: served from the compress init container's output.
    assert (parsed.model_repository, parsed.model) == ("/compressed-models", "llama-7b")
    assert (parsed.host, parsed.http_port, parsed.grpc_port) == ("0.0.0.0", 8000, 8001)
    assert (parsed.accelerator, parsed.cpu_threads) == (accel, 4)
    assert (parsed.max_batch_size, parsed.max_queue_delay_ms) == (16, 7.0)


def _pod(md: Any, config: OperatorConfig = CONFIG) -> dict[str, Any]:
    pod: dict[str, Any] = build_deployment(md, config, 1, "h")["spec"]["template"]["spec"]
    return pod


CPU_MODELS = [
    {"runtime": "onnx", "precision": "fp16", "accelerator": {"type": "cpu"}},
    {"runtime": "vllm", "precision": "bf16", "accelerator": {"type": "cpu"}},
]


@pytest.mark.parametrize("spec", CPU_MODELS, ids=lambda s: s["runtime"])
def test_cpu_pods_prefer_nodes_without_gpu_labels(spec: dict[str, Any]) -> None:
    pod = _pod(model_deployment(**spec))
    assert pod["affinity"] == {
        "nodeAffinity": {
            "preferredDuringSchedulingIgnoredDuringExecution": [
                {
                    "weight": 100,
                    "preference": {
                        "matchExpressions": [
                            {"key": "nvidia.com/gpu.present", "operator": "DoesNotExist"},
                            {
                                "key": "feature.node.kubernetes.io/pci-10de.present",
                                "operator": "DoesNotExist",
                            },
                            {
                                "key": "feature.node.kubernetes.io/pci-1002.present",
                                "operator": "DoesNotExist",
                            },
                            {"key": "amd.com/gpu.family", "operator": "DoesNotExist"},
                        ]
                    },
                }
            ]
        }
    }
    assert "tolerations" not in pod
    assert restricted_violations(pod) == []


def test_gpu_node_avoidance_can_be_required_or_off() -> None:
    md = model_deployment(**CPU_MODELS[0])
    required = OperatorConfig.from_mapping(
        {"gpu_node_avoidance": "required", "gpu_node_labels": "example.com/gpu, other/gpu"}
    )
    affinity = _pod(md, required)["affinity"]["nodeAffinity"]
    assert affinity == {
        "requiredDuringSchedulingIgnoredDuringExecution": {
            "nodeSelectorTerms": [
                {
                    "matchExpressions": [
                        {"key": "example.com/gpu", "operator": "DoesNotExist"},
                        {"key": "other/gpu", "operator": "DoesNotExist"},
                    ]
                }
            ]
        }
    }
    off = OperatorConfig.from_mapping({"gpu_node_avoidance": "off"})
    assert "affinity" not in _pod(md, off)
    no_labels = OperatorConfig.from_mapping({"gpu_node_labels": ""})
    assert no_labels.gpu_node_labels == ()
    assert "affinity" not in _pod(md, no_labels)
    # A GPU model gets no affinity whatever the setting: its GPU request places it.
    assert "affinity" not in _pod(model_deployment(), required)


def test_the_spec_node_selector_and_tolerations_stay_with_the_affinity() -> None:
    md = model_deployment(
        **CPU_MODELS[0],
        nodeSelector={"pool": "inference"},
        tolerations=[{"key": "dedicated", "operator": "Equal", "value": "ai"}],
    )
    pod = _pod(md)
    assert pod["nodeSelector"] == {"pool": "inference"}
    assert pod["tolerations"] == [{"key": "dedicated", "operator": "Equal", "value": "ai"}]
    assert "nodeAffinity" in pod["affinity"]


def test_default_gpu_labels_and_avoidance() -> None:
    assert CONFIG.gpu_node_avoidance == GpuNodeAvoidance.PREFERRED
    assert CONFIG.gpu_node_labels == DEFAULT_GPU_NODE_LABELS
