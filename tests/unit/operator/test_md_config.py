"""Operator configuration from the environment and a file."""

from __future__ import annotations

from pathlib import Path

from clawdbot_api.v1alpha1 import AcceleratorType, Runtime
from clawdbot_operator.config import DEFAULT_IMAGES, OperatorConfig


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
