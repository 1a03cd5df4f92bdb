"""Operator configuration from the environment and a file."""

from __future__ import annotations

from pathlib import Path

import pytest

from clawdbot_api.v1alpha1 import AcceleratorType, Runtime
from clawdbot_operator.config import DEFAULT_IMAGES, GpuNodeAvoidance, OperatorConfig


def test_defaults_name_no_registry_host() -> None:
    config = OperatorConfig.load({})
    assert config.images == DEFAULT_IMAGES
    for image in [*DEFAULT_IMAGES.values(), config.image_fetch_hf, config.image_fetch_rclone]:
        first = image.split("/")[0]
        assert "." not in first and ":" not in first, image


def test_file_then_environment(tmp_path: Path) -> None:
    path = tmp_path / "operator.yaml"
    path.write_text("image_onnx_cpu: site/onnx:1\nresync_seconds: 30\nimage_vllm_amd: site/a:1\n")
    config = OperatorConfig.load(
        {
            "CLAWDBOT_OPERATOR_CONFIG": str(path),
            "CLAWDBOT_IMAGE_VLLM_AMD": "env/a:2",
            "CLAWDBOT_DRAIN_SECONDS": "5",
            "UNRELATED": "x",
        }
    )
    assert config.image_for(Runtime.ONNX, AcceleratorType.CPU) == "site/onnx:1"
    assert config.image_for(Runtime.VLLM, AcceleratorType.AMD) == "env/a:2"
    assert config.resync_seconds == 30.0
    assert config.drain_seconds == 5


def test_gpu_node_settings_from_a_file_and_the_environment(tmp_path: Path) -> None:
    path = tmp_path / "operator.yaml"
    path.write_text("gpu_node_labels: [example.com/gpu, nvidia.com/gpu.present]\n")
    from_file = OperatorConfig.load({"CLAWDBOT_OPERATOR_CONFIG": str(path)})
    assert from_file.gpu_node_labels == ("example.com/gpu", "nvidia.com/gpu.present")
    assert from_file.gpu_node_avoidance == GpuNodeAvoidance.PREFERRED
    from_env = OperatorConfig.load(
        {
            "CLAWDBOT_GPU_NODE_AVOIDANCE": "required",
            "CLAWDBOT_GPU_NODE_LABELS": "a.example/gpu, ,b.example/gpu",
        }
    )
    assert from_env.gpu_node_avoidance == GpuNodeAvoidance.REQUIRED
    assert from_env.gpu_node_labels == ("a.example/gpu", "b.example/gpu")


def test_a_bad_setting_is_named_with_the_values_it_takes() -> None:
    with pytest.raises(ValueError, match="gpu_node_avoidance") as err:
        OperatorConfig.load({"CLAWDBOT_GPU_NODE_AVOIDANCE": "sometimes"})
    assert "preferred, required, off" in str(err.value)
    with pytest.raises(ValueError, match="drain_seconds"):
        OperatorConfig.load({"CLAWDBOT_DRAIN_SECONDS": "soon"})
