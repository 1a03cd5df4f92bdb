"""Execution providers per accelerator, and the start-up check that they are really there.

A GPU pod whose image carries the CPU-only onnxruntime would otherwise serve silently on
CPU at a fraction of the speed; failing at start-up with the package to install is kinder.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from clawdbot_runtime.config import Accelerator
from clawdbot_runtime.errors import ProviderUnavailable

CPU = "CPUExecutionProvider"

# Preferred providers first. Optional ones are used when present (TensorRT and MIGraphX
# compile graphs ahead and are faster, but are separate builds); at least one required one
# must be there.
_OPTIONAL: dict[str, tuple[str, ...]] = {
    "nvidia": ("TensorrtExecutionProvider",),
    "amd": ("MIGraphXExecutionProvider",),
    "cpu": (),
}
_REQUIRED: dict[str, tuple[str, ...]] = {
    "nvidia": ("CUDAExecutionProvider",),
    # Newer onnxruntime releases ship AMD support as MIGraphX only; either one will do.
    "amd": ("ROCMExecutionProvider", "MIGraphXExecutionProvider"),
    "cpu": (CPU,),
}
_PACKAGE: dict[str, str] = {
    "nvidia": "onnxruntime-gpu (with CUDA and cuDNN on the node)",
    "amd": "onnxruntime-rocm or onnxruntime-migraphx (with ROCm on the node)",
    "cpu": "onnxruntime",
}


@dataclass(frozen=True)
class ProviderChoice:
    """The providers handed to every InferenceSession, with options, and whether we fell back."""

    providers: list[tuple[str, dict[str, Any]]]
    fell_back_to_cpu: bool

    @property
    def names(self) -> list[str]:
        """Provider names in priority order."""
        return [name for name, _ in self.providers]


def select_providers(
    accelerator: Accelerator,
    available: Sequence[str],
    *,
    allow_cpu_fallback: bool = False,
    device_id: int = 0,
) -> ProviderChoice:
    """Providers for ``accelerator`` among ``available``; ProviderUnavailable if none fit."""
    required = [p for p in _REQUIRED[accelerator] if p in available]
    if not required:
        wanted = " or ".join(_REQUIRED[accelerator])
        if not allow_cpu_fallback:
            raise ProviderUnavailable(
                f"accelerator '{accelerator}' needs {wanted}, but this onnxruntime build only "
                f"has {', '.join(available) or 'no providers'}; install "
                f"{_PACKAGE[accelerator]} in place of onnxruntime, or start with "
                "--allow-cpu-fallback to serve on CPU"
            )
        return ProviderChoice(providers=[(CPU, {})], fell_back_to_cpu=True)
    chosen = [p for p in _OPTIONAL[accelerator] if p in available]
    chosen += [p for p in required if p not in chosen]
    options: list[tuple[str, dict[str, Any]]] = []
    for name in chosen:
        options.append((name, {} if name == CPU else {"device_id": device_id}))
    if CPU not in chosen:
        # Operators a GPU provider lacks fall back to CPU node by node, as onnxruntime intends.
        options.append((CPU, {}))
    return ProviderChoice(providers=options, fell_back_to_cpu=False)
