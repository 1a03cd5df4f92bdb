# syntax=docker/dockerfile:1
# The ONNX model server for CPUs: `clawdbot-runtime serve` (Open Inference Protocol v2 and
# OpenAI-compatible HTTP on 8000, gRPC on 8001), onnxruntime with the CPU execution provider,
# and `clawdbot compress` (the operator's init step for int8/int4).
# Build from the repository root:  images/build.sh runtime-cpu   (or: make images)
#   docker build -f images/runtime-cpu.Dockerfile -t clawdbot/runtime-onnx:0.1.0 .   works as well.

# The final stage's base and the build stage's (which needs python3 -m venv and pip).
# Defaults: the public Python image; images/build.sh passes the local Debian bases that
# images/base.sh makes.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm
ARG BUILD_IMAGE=python:3.11-slim-bookworm

# --- deps: a venv with the runtime's dependencies (the `runtime` extra), from pyproject.toml alone:
# rebuilt only when pyproject.toml changes.
FROM ${BUILD_IMAGE} AS deps
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml images/requirements.py ./
RUN python3 requirements.py runtime > /tmp/requirements.txt \
 && python3 -m venv /opt/clawdbot \
 && /opt/clawdbot/bin/pip install --requirement /tmp/requirements.txt "setuptools>=77" wheel

# --- deps-slim: the venv as the image ships it: no pip or setuptools, extension modules
# without debug symbols where binutils is there (not those auditwheel relinked: strip would
# break them), bytecode compiled (the root filesystem is read-only at run time).
FROM deps AS deps-slim
RUN /opt/clawdbot/bin/pip uninstall --yes pip setuptools wheel \
 && rm -f /opt/clawdbot/bin/activate* \
 && if command -v strip >/dev/null; then \
      find /opt/clawdbot -name '*.so' -type f -not -path '*.libs/*' -exec sh -c \
        'for f; do readelf -d "$f" | grep -q PATH || strip --strip-unneeded "$f"; done' sh {} +; \
    fi \
 && find /opt/clawdbot -name '__pycache__' -type d -prune -exec rm -rf {} + \
 && /opt/clawdbot/bin/python -m compileall -q --invalidation-mode unchecked-hash /opt/clawdbot/lib

# --- app: the project's wheel, installed under /out; a change to the source rebuilds from here.
FROM deps AS app
COPY README.md ./
COPY api/ api/
COPY operator/ operator/
COPY sidecar/ sidecar/
COPY runtime/ runtime/
COPY cli/ cli/
COPY testing/ testing/
# The wheel holds every component; this image keeps clawdbot_api, clawdbot_runtime and
# clawdbot_cli (for `clawdbot compress`), and the `clawdbot-runtime` and `clawdbot` scripts.
RUN /opt/clawdbot/bin/pip wheel --no-deps --no-build-isolation --wheel-dir /dist . \
 && /opt/clawdbot/bin/pip install --no-deps --no-compile --prefix /out/opt/clawdbot /dist/clawdbot-*.whl \
 && for p in clawdbot_operator clawdbot_sidecar clawdbot_testing; do \
      rm -rf /out/opt/clawdbot/lib/python3.11/site-packages/$p; done \
 && for s in clawdbot-operator clawdbot-sidecar clawdbot-cloud-standin clawdbot-demo-model; do \
      rm -f /out/opt/clawdbot/bin/$s; done \
 && /opt/clawdbot/bin/python -m compileall -q --invalidation-mode unchecked-hash -s /out -p / /out \
 && PYTHONPATH=/out/opt/clawdbot/lib/python3.11/site-packages /opt/clawdbot/bin/python -c \
      'import clawdbot_runtime.main, clawdbot_cli.main, onnxruntime'

# --- final: the base, the venv, the project's files
FROM ${PYTHON_IMAGE}
ENV PATH=/opt/clawdbot/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
COPY --from=deps-slim /opt/clawdbot /opt/clawdbot
COPY --from=app /out/ /
# The `restricted` Pod Security profile wants a numeric non-root user.
USER 65532:65532
# HTTP (inference, health, metrics), gRPC.
EXPOSE 8000 8001
ENTRYPOINT ["/opt/clawdbot/bin/clawdbot-runtime"]
# The operator passes its own arguments; this default serves the repository at /models.
CMD ["serve", "--model-repository", "/models"]
