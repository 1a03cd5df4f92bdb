"""A thin kubectl wrapper for e2e tests: one binary, one kubeconfig, errors that show stderr.

kubectl (rather than an API client library) keeps the tests close to what a user types and
gives apply/wait/validation messages exactly as users see them.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

# Default for `wait_for`: a kwok pod goes Ready in well under a second, controllers react in
# a few seconds (HPA sync period is 5s on the local cluster), so 60s is a generous ceiling.
DEFAULT_TIMEOUT_S = 60.0


class KubectlError(RuntimeError):
    """kubectl exited non-zero; `stderr` holds its message (what a user would see)."""

    def __init__(self, args: Sequence[str], returncode: int, stdout: str, stderr: str) -> None:
        self.args_ = list(args)
        self.returncode = returncode
        self.stdout = stdout
        self.stderr = stderr
        super().__init__(f"kubectl {' '.join(args)} failed ({returncode}): {stderr.strip()}")


@dataclass
class Kubectl:
    """Runs kubectl against one cluster; `namespace` is the default for namespaced calls."""

    binary: str
    kubeconfig: str | None = None
    context: str | None = None
    namespace: str | None = None
    env: dict[str, str] = field(default_factory=dict)

    def in_namespace(self, namespace: str) -> Kubectl:
        """The same client, defaulting to another namespace."""
        return Kubectl(self.binary, self.kubeconfig, self.context, namespace, self.env)

    def _base(self) -> list[str]:
        cmd = [self.binary]
        if self.kubeconfig:
            cmd.append(f"--kubeconfig={self.kubeconfig}")
        if self.context:
            cmd.append(f"--context={self.context}")
        if self.namespace:
            cmd.append(f"--namespace={self.namespace}")
        return cmd

    def command(self, *args: str) -> list[str]:
        """The argv of ``kubectl ARGS`` with this client's flags (for a long-running kubectl,
        e.g. a watch, started with :meth:`environ`)."""
        return [*self._base(), *args]

    def environ(self) -> dict[str, str]:
        """The environment kubectl runs with (never the developer's KUBECONFIG)."""
        return {**_inherited_env(), **self.env}

    def run(
        self, *args: str, input: str | None = None, check: bool = True, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        """Run `kubectl ARGS`; raise KubectlError on failure when `check`."""
        proc = subprocess.run(
            [*self._base(), *args],
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
            env={**_inherited_env(), **self.env},
            check=False,
        )
        if check and proc.returncode != 0:
            raise KubectlError(args, proc.returncode, proc.stdout, proc.stderr)
        return proc

    def apply(self, manifest: dict[str, Any] | list[dict[str, Any]] | str | Path) -> str:
        """`kubectl apply` a dict, a list of dicts, YAML text, or a file/directory path."""
        if isinstance(manifest, Path):
            return self.run("apply", "-f", str(manifest)).stdout
        text = manifest if isinstance(manifest, str) else to_yaml(manifest)
        return self.run("apply", "-f", "-", input=text).stdout

    def create(self, manifest: dict[str, Any] | list[dict[str, Any]] | str) -> str:
        """`kubectl create` (fails on conflicts, unlike apply)."""
        text = manifest if isinstance(manifest, str) else to_yaml(manifest)
        return self.run("create", "-f", "-", input=text).stdout

    def get(self, kind: str, name: str | None = None, *extra: str) -> dict[str, Any]:
        """`kubectl get -o json`; a list kind returns {"items": [...]}."""
        args = ["get", kind, *([name] if name else []), *extra, "-o", "json"]
        return json.loads(self.run(*args).stdout)  # type: ignore[no-any-return]

    def get_or_none(self, kind: str, name: str) -> dict[str, Any] | None:
        """Like `get`, but None when the object does not exist."""
        proc = self.run("get", kind, name, "-o", "json", check=False)
        if proc.returncode != 0:
            if "NotFound" in proc.stderr or "not found" in proc.stderr:
                return None
            raise KubectlError(["get", kind, name], proc.returncode, proc.stdout, proc.stderr)
        return json.loads(proc.stdout)  # type: ignore[no-any-return]

    def delete(self, kind: str, name: str, *extra: str) -> None:
        """Delete, ignoring NotFound, without waiting for finalizers."""
        self.run("delete", kind, name, "--ignore-not-found", "--wait=false", *extra)

    def wait_for(
        self,
        kind: str,
        name: str,
        predicate: Callable[[dict[str, Any]], bool],
        *,
        timeout: float = DEFAULT_TIMEOUT_S,
        interval: float = 0.5,
        what: str = "condition",
    ) -> dict[str, Any]:
        """Poll `get kind name` until predicate(obj) holds; return the object or raise with it."""
        deadline = time.monotonic() + timeout
        last: dict[str, Any] | None = None
        while True:
            last = self.get_or_none(kind, name)
            if last is not None and predicate(last):
                return last
            if time.monotonic() > deadline:
                state = json.dumps(last.get("status") if last else None, indent=1)[:3000]
                raise TimeoutError(
                    f"{kind}/{name}: {what} not met after {timeout:.0f}s; last status: {state}"
                )
            time.sleep(interval)


def to_yaml(manifest: dict[str, Any] | list[dict[str, Any]]) -> str:
    """Render one manifest or several as a YAML stream."""
    docs = manifest if isinstance(manifest, list) else [manifest]
    return yaml.safe_dump_all(docs, sort_keys=False)


def _inherited_env() -> dict[str, str]:
    # kubectl's own config comes only from the flags above; drop a KUBECONFIG the developer
    # has exported so a test can never touch their real cluster by accident.
    return {k: v for k, v in os.environ.items() if k != "KUBECONFIG"}


def condition(obj: dict[str, Any], type_: str) -> dict[str, Any] | None:
    """The status condition of `type_`, or None."""
    for cond in obj.get("status", {}).get("conditions", []) or []:
        if cond.get("type") == type_:
            return cond  # type: ignore[no-any-return]
    return None


def is_true(obj: dict[str, Any], type_: str) -> bool:
    """Whether condition `type_` has status "True"."""
    cond = condition(obj, type_)
    return bool(cond and cond.get("status") == "True")
