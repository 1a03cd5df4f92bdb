# syntax=docker/dockerfile:1
# The routing sidecar: `clawdbot-sidecar serve` (OpenAI-compatible HTTP on 8088, gRPC on 8089).
# Build from the repository root:  docker build -f images/sidecar.Dockerfile -t clawdbot/sidecar:0.1.0 .

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
# EXTRAS: the optional features the image carries; `dicom` (pydicom and numpy) lets the
# sidecar de-identify DICOM for the cloud (spec.dicom). EXTRAS="" builds a sidecar without
# it, which keeps DICOM parts local.
ARG EXTRAS=dicom
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
RUN pip wheel --no-deps --wheel-dir /dist . \
 && python -m venv /opt/clawdbot \
 && wheel="$(ls /dist/clawdbot-*.whl)" \
 && /opt/clawdbot/bin/pip install "${wheel}${EXTRAS:+[${EXTRAS}]}" \
 && /opt/clawdbot/bin/pip uninstall --yes pip

# --- final: the slim base and the venv, nothing else
FROM ${PYTHON_IMAGE}
ENV PATH=/opt/clawdbot/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
COPY --from=build /opt/clawdbot /opt/clawdbot
# The `restricted` Pod Security profile wants a numeric non-root user.
USER 65532:65532
# HTTP (OpenAI API, /healthz, /readyz, /metrics), gRPC.
EXPOSE 8088 8089
ENTRYPOINT ["/opt/clawdbot/bin/clawdbot-sidecar"]
CMD ["serve"]
