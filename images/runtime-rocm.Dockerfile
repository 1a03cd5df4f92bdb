# syntax=docker/dockerfile:1
# The ONNX model server for AMD GPUs: `clawdbot-runtime serve` with onnxruntime-rocm (ROCm
# execution provider). The operator picks it for `runtime: onnx` on `accelerator: amd`
# (CLAWDBOT_IMAGE_ONNX_AMD).
#
# onnxruntime-rocm is not on the Python package index: AMD publishes its wheels with each ROCm
# release. Put one built for this ROCm version and CPython 3.11 (onnxruntime_rocm-*-cp311-*.whl)
# in images/wheels/ before building; the build stops with a message when there is none.
# Build from the repository root:
#   docker build -f images/runtime-rocm.Dockerfile -t clawdbot/runtime-onnx-rocm:0.1.0 .

ARG PYTHON_IMAGE=python:3.11-slim-bookworm
# The "-complete" variant carries the ROCm math libraries (rocBLAS, MIOpen, hipFFT...) that the
# ROCm execution provider loads; the plain tag has the HIP runtime only.
ARG ROCM_IMAGE=rocm/dev-ubuntu-22.04:6.2-complete

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

# --- build: a venv on the ROCm base's own Python 3.11 (Ubuntu 22.04's default is 3.10)
FROM ${ROCM_IMAGE} AS build
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 DEBIAN_FRONTEND=noninteractive
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3.11 python3.11-venv \
 && rm -rf /var/lib/apt/lists/*
COPY --from=wheel /dist /dist
COPY images/wheels/ /wheels/
# The base dependencies name the CPU onnxruntime; the ROCm build replaces it (same module).
RUN if ! ls /wheels/onnxruntime_rocm-*-cp311-*.whl >/dev/null 2>&1; then \
      echo "images/wheels/ has no onnxruntime_rocm-*-cp311-*.whl; see images/README.md" >&2; \
      exit 1; \
    fi \
 && python3.11 -m venv /opt/clawdbot \
 && /opt/clawdbot/bin/pip install /dist/clawdbot-*.whl \
 && /opt/clawdbot/bin/pip uninstall --yes onnxruntime \
 && /opt/clawdbot/bin/pip install --no-deps /wheels/onnxruntime_rocm-*-cp311-*.whl \
 && /opt/clawdbot/bin/python -c "import onnxruntime as o; assert 'ROCMExecutionProvider' in o.get_available_providers(), o.get_available_providers()" \
 && /opt/clawdbot/bin/pip uninstall --yes pip

# --- final: the ROCm libraries, Python 3.11 and the venv
FROM ${ROCM_IMAGE}
ENV DEBIAN_FRONTEND=noninteractive
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3.11 \
 && rm -rf /var/lib/apt/lists/*
ENV PATH=/opt/clawdbot/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
COPY --from=build /opt/clawdbot /opt/clawdbot
# Non-root: the pod needs the GPU device nodes' groups (video, render) as supplementalGroups.
USER 65532:65532
# HTTP (inference, health, metrics), gRPC.
EXPOSE 8000 8001
ENTRYPOINT ["/opt/clawdbot/bin/clawdbot-runtime"]
# The operator passes its own arguments; this default serves the repository at /models.
CMD ["serve", "--model-repository", "/models", "--accelerator", "amd"]
