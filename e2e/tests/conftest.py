"""Fixtures shared by the e2e test modules (the cluster's own are in e2e/conftest.py)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from e2e.conftest import E2ECluster
from e2e.harness import routing
from e2e.harness.operator import Operator


@pytest.fixture
def cloud_stub(tmp_path: Path) -> Iterator[str]:
    """The loopback stand-in for the cloud endpoint; its base URL."""
    with contextlib.ExitStack() as stack:
        try:
            url = stack.enter_context(routing.cloud_stub(tmp_path / "cloud.log"))
        except RuntimeError as exc:
            pytest.fail(str(exc))
        yield url


@pytest.fixture
def routed_operator(
    local_cluster: E2ECluster, crds: None, namespace: str, tmp_path: Path
) -> Iterator[Operator]:
    """The operator with its routing plane (webhook, discovery) for the test's namespace,
    stopped by its pid; a test module takes it as its ``operator``."""
    with contextlib.ExitStack() as stack:
        try:
            op = stack.enter_context(
                routing.routing_operator(local_cluster, namespace, tmp_path / "operator.log")
            )
        except RuntimeError as exc:
            pytest.fail(str(exc))
        yield op
