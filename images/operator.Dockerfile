# syntax=docker/dockerfile:1
# The operator: `clawdbot-operator` (kopf controller, external metrics API, webhook).
# Build from the repository root:  docker build -f images/operator.Dockerfile -t clawdbot/operator:0.1.0 .

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
# kopf liveness, HTTPS external metrics API, webhook, discovery stream.
EXPOSE 8080 6443 8443 9443
ENTRYPOINT ["/opt/clawdbot/bin/clawdbot-operator"]
