"""Execution provider choice per accelerator, and the start-up error when one is missing."""

from __future__ import annotations

import pytest

from clawdbot_runtime.errors import ProviderUnavailable
from clawdbot_runtime.model import SessionSettings
from clawdbot_runtime.providers import select_providers

CPU_ONLY = ["CPUExecutionProvider"]


def test_nvidia_prefers_tensorrt_then_cuda_then_cpu() -> None:
    available = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    choice = select_providers("nvidia", available, device_id=1)
    assert choice.names == available
    assert choice.providers[0] == ("TensorrtExecutionProvider", {"device_id": 1})
    assert not choice.fell_back_to_cpu


def test_nvidia_without_tensorrt_uses_cuda() -> None:
    choice = select_providers("nvidia", ["CUDAExecutionProvider", "CPUExecutionProvider"])
    assert choice.names == ["CUDAExecutionProvider", "CPUExecutionProvider"]


def test_amd_accepts_rocm_or_migraphx() -> None:
    assert select_providers("amd", ["ROCMExecutionProvider", *CPU_ONLY]).names[0] == (
        "ROCMExecutionProvider"
    )
    assert select_providers("amd", ["MIGraphXExecutionProvider", *CPU_ONLY]).names[0] == (
        "MIGraphXExecutionProvider"
    )


@pytest.mark.parametrize(
    ("accelerator", "wanted", "package"),
    [
        ("nvidia", "CUDAExecutionProvider", "onnxruntime-gpu"),
        ("amd", "ROCMExecutionProvider or MIGraphXExecutionProvider", "onnxruntime-rocm"),
    ],
)
def test_missing_provider_says_what_to_install(accelerator: str, wanted: str, package: str) -> None:
    with pytest.raises(ProviderUnavailable) as error:
        select_providers(accelerator, CPU_ONLY)  # type: ignore[arg-type]
    message = str(error.value)
    assert wanted in message
    assert package in message
    assert "--allow-cpu-fallback" in message


def test_cpu_fallback_when_allowed() -> None:
    choice = select_providers("nvidia", CPU_ONLY, allow_cpu_fallback=True)
    assert choice.names == CPU_ONLY
    assert choice.fell_back_to_cpu


def test_cpu_threads_become_intra_op_threads() -> None:
    settings = SessionSettings(providers=select_providers("cpu", CPU_ONLY), cpu_threads=3)
    assert settings.options().intra_op_num_threads == 3
