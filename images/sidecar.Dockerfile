# syntax=docker/dockerfile:1
# The routing sidecar: `clawdbot-sidecar serve` (OpenAI-compatible HTTP on 8088, gRPC on 8089,
# the kubelet's probes on 8087).
# Build from the repository root:  images/build.sh sidecar   (or: make images)
#   docker build -f images/sidecar.Dockerfile -t clawdbot/sidecar:0.1.0 .   works as well.

# The final stage's base and the build stage's (which needs python3 -m venv and pip).
# Defaults: the public Python image; images/build.sh passes the local Debian bases that
# images/base.sh makes.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm
ARG BUILD_IMAGE=python:3.11-slim-bookworm

# --- deps: a venv with the sidecar's dependencies (the `sidecar` extra), from pyproject.toml alone:
# rebuilt only when pyproject.toml changes.
FROM ${BUILD_IMAGE} AS deps
# EXTRAS: the optional features the image carries besides the sidecar itself; `dicom`
# (pydicom and numpy) lets the sidecar de-identify DICOM for the cloud (spec.dicom), and its
# numpy serves the semantic router too (a policy's quality.semantic; `semantic` alone brings
# numpy only). The default, EXTRAS="", is the smallest sidecar, which keeps DICOM parts local
# and routes such policies on the keyword score; `--build-arg EXTRAS=dicom` builds the
# variant for clusters that send DICOM to the cloud.
ARG EXTRAS=""
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml images/requirements.py ./
RUN python3 requirements.py sidecar "$EXTRAS" > /tmp/requirements.txt \
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
# The wheel holds every component; this image keeps clawdbot_api and clawdbot_sidecar and the
# `clawdbot-sidecar` script.
RUN /opt/clawdbot/bin/pip wheel --no-deps --no-build-isolation --wheel-dir /dist . \
 && /opt/clawdbot/bin/pip install --no-deps --no-compile --prefix /out/opt/clawdbot /dist/clawdbot-*.whl \
 && for p in clawdbot_operator clawdbot_runtime clawdbot_cli clawdbot_testing; do \
      rm -rf /out/opt/clawdbot/lib/python3.11/site-packages/$p; done \
 && for s in clawdbot clawdbot-operator clawdbot-runtime clawdbot-cloud-standin clawdbot-demo-model; do \
      rm -f /out/opt/clawdbot/bin/$s; done \
 && /opt/clawdbot/bin/python -m compileall -q --invalidation-mode unchecked-hash -s /out -p / /out \
 && PYTHONPATH=/out/opt/clawdbot/lib/python3.11/site-packages /opt/clawdbot/bin/python -c \
      'import clawdbot_sidecar.main, clawdbot_sidecar.fronts.grpc'

# --- final: the base, the venv, the project's files
FROM ${PYTHON_IMAGE}
ENV PATH=/opt/clawdbot/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
COPY --from=deps-slim /opt/clawdbot /opt/clawdbot
COPY --from=app /out/ /
# The `restricted` Pod Security profile wants a numeric non-root user.
USER 65532:65532
# HTTP (OpenAI API, /healthz, /readyz, /metrics), gRPC, the probe port.
EXPOSE 8088 8089 8087
ENTRYPOINT ["/opt/clawdbot/bin/clawdbot-sidecar"]
CMD ["serve"]
