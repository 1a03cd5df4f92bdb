"""Bounded waits shared by the e2e tests and the demo."""

from __future__ import annotations

import contextlib
import time
import urllib.request
from collections.abc import Callable
from typing import Any

from e2e.harness.kube import Kubectl, is_true


def wait_http_ok(
    url: str, *, timeout: float = 30, log_tail: Callable[[], str] | None = None
) -> None:
    """Poll ``url`` until it answers 2xx; TimeoutError with ``log_tail()`` otherwise."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=1):
            return
        time.sleep(0.2)
    tail = f"\n{log_tail()}" if log_tail else ""
    raise TimeoutError(f"{url} did not answer within {timeout:.0f}s{tail}")


def wait_ready_pod(kube: Kubectl, selector: str, *, timeout: float = 60) -> dict[str, Any]:
    """The first Ready pod matching the label ``selector``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pods = kube.get("pods", None, "-l", selector)["items"]
        ready = [p for p in pods if is_true(p, "Ready")]
        if ready:
            return dict(ready[0])
        time.sleep(0.5)
    raise TimeoutError(f"no Ready pod for {selector} within {timeout:.0f}s")
