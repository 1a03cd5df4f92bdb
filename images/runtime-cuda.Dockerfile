# syntax=docker/dockerfile:1
# The ONNX model server for NVIDIA GPUs: `clawdbot-runtime serve` with onnxruntime-gpu (CUDA
# execution provider; the project's `gpu` extra). The operator picks it for `runtime: onnx`
# on `accelerator: nvidia` (CLAWDBOT_IMAGE_ONNX_NVIDIA).
# Build from the repository root:
#   docker build -f images/runtime-cuda.Dockerfile -t clawdbot/runtime-onnx-cuda:0.1.0 .

ARG PYTHON_IMAGE=python:3.11-slim-bookworm
# CUDA 12 with cuDNN 9: what the onnxruntime-gpu wheels on the package index are built for.
ARG CUDA_IMAGE=nvidia/cuda:12.4.1-cudnn-runtime-ubuntu22.04

# --- wheel: the repository's single `clawdbot` distribution (pure Python, any base can use it)
FROM ${PYTHON_IMAGE} AS wheel
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY api/ api/
COPY operator/ operator/
COPY sidecar/ sidecar/
COPY runtime/ runtime/
COPY cli/ cli/
RUN pip wheel --no-deps --wheel-dir /dist .

# --- build: a venv on the CUDA base's own Python 3.11 (Ubuntu 22.04's default is 3.10)
FROM ${CUDA_IMAGE} AS build
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 DEBIAN_FRONTEND=noninteractive
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3.11 python3.11-venv \
 && rm -rf /var/lib/apt/lists/*
COPY --from=wheel /dist /dist
# `clawdbot[gpu]` brings onnxruntime-gpu next to the CPU onnxruntime the base dependencies
# name; both ship the `onnxruntime` module, so the CPU one is removed and the GPU one
# reinstalled over the files they shared.
RUN python3.11 -m venv /opt/clawdbot \
 && wheel="$(ls /dist/clawdbot-*.whl)" \
 && /opt/clawdbot/bin/pip install "${wheel}[gpu]" \
 && ort="$(/opt/clawdbot/bin/pip show onnxruntime-gpu | awk '/^Version:/ {print $2}')" \
 && /opt/clawdbot/bin/pip uninstall --yes onnxruntime \
 && /opt/clawdbot/bin/pip install --no-deps --force-reinstall "onnxruntime-gpu==${ort}" \
 && /opt/clawdbot/bin/python -c "import onnxruntime as o; assert 'CUDAExecutionProvider' in o.get_available_providers(), o.get_available_providers()" \
 && /opt/clawdbot/bin/pip uninstall --yes pip

# --- final: the CUDA runtime, Python 3.11 and the venv
FROM ${CUDA_IMAGE}
ENV DEBIAN_FRONTEND=noninteractive
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3.11 \
 && rm -rf /var/lib/apt/lists/*
ENV PATH=/opt/clawdbot/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
COPY --from=build /opt/clawdbot /opt/clawdbot
USER 65532:65532
# HTTP (inference, health, metrics), gRPC.
EXPOSE 8000 8001
ENTRYPOINT ["/opt/clawdbot/bin/clawdbot-runtime"]
# The operator passes its own arguments; this default serves the repository at /models.
CMD ["serve", "--model-repository", "/models", "--accelerator", "nvidia"]
