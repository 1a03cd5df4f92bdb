"""Fixtures shared by the e2e test modules (the cluster's own are in e2e/conftest.py)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from e2e.harness import routing


@pytest.fixture
def cloud_stub(tmp_path: Path) -> Iterator[str]:
    """The loopback stand-in for the cloud endpoint; its base URL."""
    with contextlib.ExitStack() as stack:
        try:
            url = stack.enter_context(routing.cloud_stub(tmp_path / "cloud.log"))
        except RuntimeError as exc:
            pytest.fail(str(exc))
        yield url
