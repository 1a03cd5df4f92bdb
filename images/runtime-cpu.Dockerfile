# syntax=docker/dockerfile:1
# The ONNX model server for CPUs: `clawdbot-runtime serve` (Open Inference Protocol v2 and
# OpenAI-compatible HTTP on 8000, gRPC on 8001), onnxruntime with the CPU execution provider.
# Build from the repository root:  docker build -f images/runtime-cpu.Dockerfile -t clawdbot/runtime-onnx:0.1.0 .

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# --- build: one wheel of the repository's single `clawdbot` distribution, and a venv with it
FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY api/ api/
COPY operator/ operator/
COPY sidecar/ sidecar/
COPY runtime/ runtime/
COPY cli/ cli/
RUN pip wheel --no-deps --wheel-dir /dist . \
 && python -m venv /opt/clawdbot \
 && /opt/clawdbot/bin/pip install /dist/clawdbot-*.whl \
 && /opt/clawdbot/bin/pip uninstall --yes pip

# --- final: the slim base and the venv, nothing else
FROM ${PYTHON_IMAGE}
ENV PATH=/opt/clawdbot/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
COPY --from=build /opt/clawdbot /opt/clawdbot
# The `restricted` Pod Security profile wants a numeric non-root user.
USER 65532:65532
# HTTP (inference, health, metrics), gRPC.
EXPOSE 8000 8001
ENTRYPOINT ["/opt/clawdbot/bin/clawdbot-runtime"]
# The operator passes its own arguments; this default serves the repository at /models.
CMD ["serve", "--model-repository", "/models"]
