"""Record every change to a set of pods, so a test can check what held at every moment.

Polling sees the state every so often and can miss a dip between two looks; a watch gets
each change the API server makes, in order. ``PodWatch`` runs ``kubectl get pods --watch``
(started and stopped by its pid) and keeps the pods as they were after each event.
"""

from __future__ import annotations

import json
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from e2e.harness.kube import Kubectl, is_true

Pods = Mapping[str, dict[str, Any]]
"""Pods by name, as they were after one event."""


def serving(pod: dict[str, Any]) -> bool:
    """Ready and not terminating: what a Service would send requests to."""
    return is_true(pod, "Ready") and not pod["metadata"].get("deletionTimestamp")


def revision_of(pod: dict[str, Any]) -> str:
    """The pod's ``clawdbot.io/revision`` label ("" without one)."""
    return str(pod["metadata"].get("labels", {}).get("clawdbot.io/revision", ""))


def serving_at(revision: int) -> Callable[[Pods], int]:
    """Counts the pods of ``revision`` that serve."""
    return lambda pods: sum(
        1 for p in pods.values() if revision_of(p) == str(revision) and serving(p)
    )


class PodWatch:
    """``kubectl get pods -l SELECTOR --watch`` in the background; use as a context manager.

    The first events are the pods that exist when the watch starts (kubectl lists, then
    watches from that list's resourceVersion), so no change after the start is missed.
    """

    def __init__(self, kube: Kubectl, selector: str) -> None:
        self._argv = kube.command(
            "get", "pods", "-l", selector, "--watch", "--output-watch-events", "-o", "json"
        )
        self._env = kube.environ()
        self._cond = threading.Condition()
        self._pods: dict[str, dict[str, Any]] = {}
        self._history: list[Pods] = []
        self._proc: subprocess.Popen[str] | None = None
        self._reader: threading.Thread | None = None
        self._ended = False

    def __enter__(self) -> PodWatch:
        self._proc = subprocess.Popen(
            self._argv,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=self._env,
        )
        self._reader = threading.Thread(target=self._read, name="pod-watch", daemon=True)
        self._reader.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        """Stop kubectl (by its pid) and the reader."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(timeout=5)
        if self._reader is not None:
            self._reader.join(timeout=5)

    def _objects(self) -> Iterator[dict[str, Any]]:
        # kubectl writes one event per line (compact JSON); gather lines until they parse, in
        # case a version indents them.
        assert self._proc is not None and self._proc.stdout is not None
        text = ""
        for line in self._proc.stdout:
            text += line
            try:
                event = json.loads(text)
            except json.JSONDecodeError:
                continue
            text = ""
            if isinstance(event, dict):
                yield event

    def _read(self) -> None:
        try:
            for event in self._objects():
                obj = event.get("object") or {}
                name = obj.get("metadata", {}).get("name")
                if not name:
                    continue
                with self._cond:
                    if event.get("type") == "DELETED":
                        self._pods.pop(name, None)
                    else:
                        self._pods[name] = obj
                    self._history.append(dict(self._pods))
                    self._cond.notify_all()
        finally:
            with self._cond:
                self._ended = True
                self._cond.notify_all()

    def _check_running(self) -> None:
        if self._ended:
            err = self._proc.stderr.read() if self._proc and self._proc.stderr else ""
            raise RuntimeError(f"the pod watch ended early: {err.strip() or 'no message'}")

    def mark(self) -> int:
        """A position in the history: what comes after it happened after this call."""
        with self._cond:
            self._check_running()
            return len(self._history)

    def wait_until(self, predicate: Callable[[Pods], bool], *, timeout: float, what: str) -> None:
        """Block until ``predicate(pods)`` holds after some event; TimeoutError otherwise."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not (self._history and predicate(self._history[-1])):
                self._check_running()
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"pods: {what} not seen within {timeout:.0f}s")
                self._cond.wait(left)

    def states(self, since: int = 0) -> list[Pods]:
        """The pods after each event from position ``since`` on (raises if the watch died,
        since then a change may have gone unseen)."""
        with self._cond:
            self._check_running()
            # The state at ``since`` held from then until the next event: include it.
            return list(self._history[max(0, since - 1) :])
