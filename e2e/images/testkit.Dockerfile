# syntax=docker/dockerfile:1
# The real-node e2e suite's test image (not a product image): the `openai` client the
# client pods run, and the cloud stand-in (clawdbot_testing.cloud) that plays the paid LLM.
# images/build.sh builds it as clawdbot-e2e/testkit:$IMAGE_TAG (make images-e2e).

ARG PYTHON_IMAGE=python:3.11-slim-bookworm
ARG BUILD_IMAGE=python:3.11-slim-bookworm

FROM ${BUILD_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml images/requirements.py ./
RUN python3 requirements.py > /tmp/requirements.txt \
 && python3 -m venv /opt/testkit \
 && /opt/testkit/bin/pip install --requirement /tmp/requirements.txt "openai>=1.40" "aiohttp>=3.9" \
 && python3 -m venv /opt/wheel \
 && /opt/wheel/bin/pip install "setuptools>=77" wheel
COPY README.md ./
COPY api/ api/
COPY operator/ operator/
COPY sidecar/ sidecar/
COPY runtime/ runtime/
COPY cli/ cli/
COPY testing/ testing/
RUN /opt/wheel/bin/pip wheel --no-deps --no-build-isolation --wheel-dir /dist . \
 && /opt/testkit/bin/pip install --no-deps /dist/clawdbot-*.whl \
 && /opt/testkit/bin/pip uninstall --yes pip setuptools \
 && for p in clawdbot_operator clawdbot_sidecar clawdbot_runtime clawdbot_cli; do \
      rm -rf /opt/testkit/lib/python3.11/site-packages/$p; done \
 && /opt/testkit/bin/python -m compileall -q --invalidation-mode unchecked-hash /opt/testkit/lib \
 && /opt/testkit/bin/python -c 'import openai, clawdbot_testing.cloud'

FROM ${PYTHON_IMAGE}
ENV PATH=/opt/testkit/bin:$PATH PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
COPY --from=build /opt/testkit /opt/testkit
USER 65532:65532
ENTRYPOINT ["/opt/testkit/bin/python"]
