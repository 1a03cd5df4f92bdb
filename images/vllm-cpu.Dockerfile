# syntax=docker/dockerfile:1
# vLLM for CPU nodes (x86-64): vLLM built from source the way its CPU installation guide
# does (VLLM_TARGET_DEVICE=cpu, gcc 12, PyTorch's CPU wheels), the same release as the GPU
# image the operator uses (vllm/vllm-openai:v0.11.0), so every node speaks one vLLM API. The
# operator picks it for `runtime: vllm` on `accelerator: cpu` (CLAWDBOT_IMAGE_VLLM_CPU) and
# runs `python3 -m vllm.entrypoints.openai.api_server` with its own arguments.
# Build from the repository root; two build arguments say where the sources come from:
#   docker build -f images/vllm-cpu.Dockerfile \
#     --build-arg VLLM_REPOSITORY=<git URL of vLLM> \
#     --build-arg TORCH_INDEX_URL=<PyTorch CPU wheel index> \
#     -t clawdbot/vllm-cpu:0.1.0 .

# Ubuntu 24.04: Python 3.12 (vLLM 0.11 supports 3.10 to 3.13) and gcc 12.3, the compiler
# version vLLM's guide asks for at least.
ARG UBUNTU_IMAGE=ubuntu:24.04

# --- build: vLLM compiled for CPUs into a venv
FROM ${UBUNTU_IMAGE} AS build
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# The pinned release: the tag that is cloned, and what the build checks it got.
ARG VLLM_VERSION=0.11.0
# Where vLLM's source is cloned from (the project's repository or a mirror of it).
ARG VLLM_REPOSITORY=
# The index with PyTorch's `+cpu` wheels, which vLLM's requirements pin on x86-64.
ARG TORCH_INDEX_URL=
# Compile jobs: each takes a few GB of memory on vLLM's CPU attention kernels.
ARG MAX_JOBS=4
# Instruction sets: by default vLLM builds for the build machine's CPU. Set
# VLLM_CPU_DISABLE_AVX512=true to build for AVX2-only nodes, or VLLM_CPU_AVX512BF16=1 /
# VLLM_CPU_AVX512VNNI=1 to build those kernels on a machine that lacks them.
ARG VLLM_CPU_DISABLE_AVX512=
ARG VLLM_CPU_AVX512BF16=
ARG VLLM_CPU_AVX512VNNI=
# PATH: vLLM's setup.py runs the cmake and ninja its build requirements put in the venv.
ENV DEBIAN_FRONTEND=noninteractive \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/vllm/bin:$PATH \
    CC=gcc-12 \
    CXX=g++-12
RUN if [ "$(uname -m)" != "x86_64" ]; then \
      echo "error: this image is built for x86-64 (vLLM's arm64 CPU build differs)" >&2; exit 1; \
    fi \
 && if [ -z "${VLLM_REPOSITORY}" ] || [ -z "${TORCH_INDEX_URL}" ]; then \
      echo "error: pass --build-arg VLLM_REPOSITORY=<git URL of vLLM> and" \
           "--build-arg TORCH_INDEX_URL=<PyTorch CPU wheel index> (see images/README.md)" >&2; \
      exit 1; \
    fi
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates git gcc-12 g++-12 libnuma-dev \
      python3 python3-dev python3-venv \
 && rm -rf /var/lib/apt/lists/*
RUN git clone --depth 1 --branch "v${VLLM_VERSION}" "${VLLM_REPOSITORY}" /src/vllm
WORKDIR /src/vllm
# vLLM's guide: its CPU build requirements, its CPU runtime requirements (both from PyTorch's
# CPU index as well), then the build with VLLM_TARGET_DEVICE=cpu, here as a wheel.
# The ISA switches reach vLLM's build only when set, never as empty variables.
RUN python3 -m venv /opt/vllm \
 && /opt/vllm/bin/pip install --extra-index-url "${TORCH_INDEX_URL}" -r requirements/cpu-build.txt \
 && /opt/vllm/bin/pip install --extra-index-url "${TORCH_INDEX_URL}" -r requirements/cpu.txt \
 && if [ -z "${VLLM_CPU_DISABLE_AVX512}" ]; then unset VLLM_CPU_DISABLE_AVX512; fi \
 && if [ -z "${VLLM_CPU_AVX512BF16}" ]; then unset VLLM_CPU_AVX512BF16; fi \
 && if [ -z "${VLLM_CPU_AVX512VNNI}" ]; then unset VLLM_CPU_AVX512VNNI; fi \
 && VLLM_TARGET_DEVICE=cpu MAX_JOBS="${MAX_JOBS}" \
    /opt/vllm/bin/python setup.py bdist_wheel --dist-dir /dist \
 && /opt/vllm/bin/pip install --extra-index-url "${TORCH_INDEX_URL}" /dist/vllm-*.whl \
 && /opt/vllm/bin/python -c "import sys, vllm; v = vllm.__version__; print('vllm', v); sys.exit(0 if v.startswith('${VLLM_VERSION}') else 'expected vLLM ${VLLM_VERSION}, built ' + v)" \
 && /opt/vllm/bin/python -c "from vllm.platforms import current_platform as p; assert p.is_cpu(), p" \
 && /opt/vllm/bin/pip uninstall --yes pip

# --- final: Ubuntu's Python, the libraries vLLM's CPU kernels load, and the venv. Unlike the
# other images this one keeps a C++ compiler and Python's headers: on CPUs vLLM runs the
# model through torch.compile, whose inductor backend compiles C++ kernels at start-up
# (vLLM's own CPU image keeps its build tools for the same reason).
FROM ${UBUNTU_IMAGE}
ENV DEBIAN_FRONTEND=noninteractive
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-dev g++-12 libnuma1 \
      libtcmalloc-minimal4 \
 && rm -rf /var/lib/apt/lists/*
# `python3` (the operator's command) is the venv's. tcmalloc: what vLLM's guide preloads for
# builds from source on x86. USER: torch names its caches after the user, and uid 65532 has
# no passwd entry to look up.
ENV PATH=/opt/vllm/bin:$PATH \
    CC=gcc-12 \
    CXX=g++-12 \
    LD_PRELOAD=/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    USER=vllm \
    VLLM_TARGET_DEVICE=cpu
COPY --from=build /opt/vllm /opt/vllm
# The `restricted` Pod Security profile wants a numeric non-root user.
USER 65532:65532
# HTTP: the OpenAI-compatible API, health and metrics.
EXPOSE 8000
ENTRYPOINT ["python3", "-m", "vllm.entrypoints.openai.api_server"]
# The operator passes its own arguments (--model, --served-model-name, --port 8000, ...).
CMD ["--host", "0.0.0.0", "--port", "8000"]
