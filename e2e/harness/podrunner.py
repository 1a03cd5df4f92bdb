"""Run a pod's container as a local process at the pod's (loopback) IP.

On the local control plane kwok plays the kubelet: pods get Running/Ready and an IP from
their node's podCIDR (inside 127.0.0.0/8) but nothing runs. This module reads a pod through
the API and starts its container's command locally, the way a kubelet would have:

* argv: `command` + `args`, with `$(VAR)` expanded from the container's env (`$$` escapes);
  `argv0_map` swaps an executable that only exists in the image (e.g. "python") for a
  local one (e.g. `sys.executable`);
* env: literal `value`s, `valueFrom` secretKeyRef / configMapKeyRef / fieldRef
  (status.podIP, status.podIPs, status.hostIP, metadata.name, metadata.namespace,
  metadata.uid, metadata.labels['k'], metadata.annotations['k'], spec.nodeName,
  spec.serviceAccountName) and `envFrom` configMapRef / secretRef (with prefix); on top of a
  minimal host env (PATH, HOME, LANG, ...) so local interpreters work;
* volumes: configMap, secret, projected (configMap/secret sources), emptyDir are
  materialized under a temp dir. A process can't see them at their absolute mountPath, so
  every argv item and env value that starts with a mountPath (or holds `=<mountPath>`, as in
  `--config=/etc/x/cfg.yaml`) is rewritten to the local directory; the full mapping is in
  `RunningPod.mounts` and in the env var CLAWDBOT_E2E_MOUNTS (JSON, mountPath -> local dir).

The process must bind to the pod IP: a wildcard bind address in argv (`0.0.0.0`) is
replaced by the pod IP (pods share the host's network here), or it binds `$(POD_IP)` from a
fieldRef env. `image_files` maps paths the image would hold (a baked-in model) to local
ones, rewritten like mounts. Limits are listed in
e2e/README.md.

A process that talks to the API server from inside its pod (an operator) needs two more
things a kubelet gives every container:

* `kubernetes_service=(host, port)`: KUBERNETES_SERVICE_HOST/_PORT (and the KUBERNETES_PORT*
  links), which a kubelet sets from the `kubernetes` Service's ClusterIP. Nothing serves
  ClusterIPs here (no kube-proxy), so pass the API server's own address;
* `absolute_mounts=[mountPath, ...]`: those volumes are seen at their absolute path, not only
  through rewritten argv/env, because in-cluster clients read fixed paths
  (/var/run/secrets/kubernetes.io/serviceaccount/{token,ca.crt,namespace}: the projected
  volume the ServiceAccount admission adds, with a real pod-bound token from `token` and the
  kube-root-ca.crt ConfigMap). The process runs in a private mount namespace (root, or an
  unprivileged user namespace) where each volume is bind-mounted there; a missing parent
  directory is made on a tmpfs laid over its nearest existing ancestor, whose entries are
  bound back, so nothing on the host changes and nothing else disappears.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Host variables a local process needs to find its interpreter and libraries; the rest of
# the developer's environment is left out, as a container would not have it.
HOST_ENV_KEEP = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "VIRTUAL_ENV", "PYTHONPATH")
MOUNTS_ENV = "CLAWDBOT_E2E_MOUNTS"
# Stop: SIGTERM, then SIGKILL after this long (a pod's default grace period is 30s; a test
# process that ignores SIGTERM for 10s is broken enough to just kill).
STOP_GRACE_S = 10.0
# Wait for a server's port to accept connections; a Python server starts in ~1s.
PORT_TIMEOUT_S = 30.0

# `get(kind, namespace, name)` -> the object (dict), or None when it does not exist.
ObjectGetter = Callable[[str, str, str], "dict[str, Any] | None"]
# `token(pod, audience, expiration_seconds)` -> a token bound to the pod, as the kubelet gets
# one through the TokenRequest API for a projected serviceAccountToken volume.
TokenRequester = Callable[[dict[str, Any], "str | None", int], str]


class PodRunnerError(RuntimeError):
    """The pod can't be run locally (missing reference, unsupported field, early exit)."""


@dataclass
class PodProcessPlan:
    """Everything needed to start the process: what `plan_pod_process` derived from the pod."""

    pod_name: str
    namespace: str
    container: str
    pod_ip: str
    argv: list[str]
    env: dict[str, str]
    cwd: Path
    mounts: dict[str, Path]
    ports: list[int]
    # mountPath -> local dir, bound at the mountPath in the process's own mount namespace.
    absolute_mounts: dict[str, Path] = field(default_factory=dict)


@dataclass
class RunningPod:
    """A started pod process; `log_path` gets its stdout and stderr."""

    plan: PodProcessPlan
    process: subprocess.Popen[bytes]
    log_path: Path
    workdir: Path
    stopped: bool = field(default=False)

    @property
    def pod_ip(self) -> str:
        return self.plan.pod_ip

    @property
    def mounts(self) -> dict[str, Path]:
        return self.plan.mounts

    def log_tail(self, lines: int = 40) -> str:
        """The last lines of the process output."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def wait_for_port(self, port: int | None = None, timeout: float = PORT_TIMEOUT_S) -> None:
        """Block until pod_ip:port accepts TCP connections (default: first containerPort)."""
        if port is None:
            if not self.plan.ports:
                raise PodRunnerError(f"pod {self.plan.pod_name} declares no containerPort")
            port = self.plan.ports[0]
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise PodRunnerError(
                    f"pod {self.plan.pod_name} process exited with {self.process.returncode} "
                    f"before {self.pod_ip}:{port} opened; output:\n{self.log_tail()}"
                )
            try:
                with socket.create_connection((self.pod_ip, port), timeout=0.5):
                    return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise PodRunnerError(
                    f"{self.pod_ip}:{port} not open after {timeout:.0f}s; "
                    f"output:\n{self.log_tail()}"
                )
            time.sleep(0.1)

    def stop(self, grace: float = STOP_GRACE_S) -> int | None:
        """SIGTERM the process group, SIGKILL it after `grace`; return the exit code."""
        if self.stopped:
            return self.process.returncode
        self.stopped = True
        pgid = self.process.pid  # started with start_new_session: pid == pgid
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGTERM)
        try:
            self.process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, signal.SIGKILL)
            self.process.wait(timeout=5)
        # Children that outlived the leader are still in its group.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)
        return self.process.returncode


# ---------------------------------------------------------------------------------------
# planning (pure apart from reading referenced objects and writing volume files)

_FIELD_LABEL = re.compile(r"^metadata\.(labels|annotations)\['(.+)'\]$")
_VAR_REF = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")


def expand_vars(text: str, env: Mapping[str, str]) -> str:
    """Kubernetes `$(VAR)` expansion: known vars expand, unknown stay as-is, `$$` -> `$`."""

    def repl(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        name = m.group(1)
        return env.get(name, m.group(0))

    return _VAR_REF.sub(repl, text)


# This machine's own paths (the checkout, the venv, the interpreter): a value naming one is
# the host's, never a pod's mount, even when a mount such as /tmp is a prefix of it (a
# checkout under /tmp is common).
HOST_PATHS = tuple(
    sorted(
        {str(Path(__file__).resolve().parents[2]), sys.prefix, sys.base_prefix, sys.executable},
        key=len,
        reverse=True,
    )
)


def _host_path(text: str, start: int) -> bool:
    rest = text[start:]
    return any(rest == p or rest.startswith(p.rstrip("/") + "/") for p in HOST_PATHS)


def rewrite_paths(text: str, mounts: Mapping[str, Path]) -> str:
    """Rewrite a value that starts with a mountPath (or has `=mountPath`) to the local dir;
    a value naming one of this machine's own paths (:data:`HOST_PATHS`) is left alone."""
    # Longest mountPath first, so /etc/a/b wins over /etc/a.
    for mount_path in sorted(mounts, key=len, reverse=True):
        prefix = mount_path.rstrip("/")
        starts = [0] if text.startswith(prefix) else []
        eq = text.find("=" + prefix)
        if eq >= 0:
            starts.append(eq + 1)
        for start in starts:
            rest = text[start + len(prefix) :]
            if (rest == "" or rest.startswith("/")) and not _host_path(text, start):
                return text[:start] + str(mounts[mount_path]) + rest
    return text


def _field_value(pod: dict[str, Any], path: str) -> str:
    meta = pod.get("metadata", {})
    spec = pod.get("spec", {})
    status = pod.get("status", {})
    simple = {
        "metadata.name": meta.get("name"),
        "metadata.namespace": meta.get("namespace"),
        "metadata.uid": meta.get("uid"),
        "spec.nodeName": spec.get("nodeName"),
        "spec.serviceAccountName": spec.get("serviceAccountName"),
        "status.podIP": status.get("podIP"),
        "status.hostIP": status.get("hostIP"),
        "status.podIPs": ",".join(ip["ip"] for ip in status.get("podIPs", []) or []),
    }
    if path in simple:
        return str(simple[path] or "")
    m = _FIELD_LABEL.match(path)
    if m:
        return str((meta.get(m.group(1)) or {}).get(m.group(2), ""))
    raise PodRunnerError(f"fieldRef {path!r} is not supported by the local pod runner")


def _data_of(obj: dict[str, Any], kind: str) -> dict[str, bytes]:
    """ConfigMap/Secret data as bytes (Secret `data` is base64; stringData is never stored)."""
    out: dict[str, bytes] = {}
    if kind == "secret":
        for k, v in (obj.get("data") or {}).items():
            out[k] = base64.b64decode(v)
    else:
        for k, v in (obj.get("data") or {}).items():
            out[k] = v.encode()
        for k, v in (obj.get("binaryData") or {}).items():
            out[k] = base64.b64decode(v)
    return out


class _Refs:
    """Reads and caches ConfigMaps/Secrets the pod refers to; requests its tokens."""

    def __init__(
        self, get: ObjectGetter, pod: dict[str, Any], token: TokenRequester | None = None
    ) -> None:
        self._get = get
        self.pod = pod
        self._ns = pod["metadata"].get("namespace", "default")
        self._token = token
        self._cache: dict[tuple[str, str], dict[str, bytes] | None] = {}

    def data(self, kind: str, name: str, optional: bool) -> dict[str, bytes] | None:
        key = (kind, name)
        if key not in self._cache:
            obj = self._get(kind, self._ns, name)
            self._cache[key] = _data_of(obj, kind) if obj is not None else None
        found = self._cache[key]
        if found is None and not optional:
            raise PodRunnerError(f"{kind} {self._ns}/{name} referenced by the pod does not exist")
        return found

    def token(self, source: dict[str, Any]) -> bytes:
        """A real token for a projected serviceAccountToken source."""
        if self._token is None:
            raise PodRunnerError(
                "the pod mounts a service account token; pass token=kubectl_token_requester(...)"
            )
        expiry = int(source.get("expirationSeconds", 3600))
        return self._token(self.pod, source.get("audience"), expiry).encode()

    def key(self, kind: str, name: str, key: str, optional: bool) -> str | None:
        data = self.data(kind, name, optional)
        if data is None or key not in data:
            if optional:
                return None
            raise PodRunnerError(f"{kind} {self._ns}/{name} has no key {key!r}")
        return data[key].decode()


def _write_items(
    target: Path, data: dict[str, bytes], items: list[dict[str, Any]] | None, what: str
) -> None:
    target.mkdir(parents=True, exist_ok=True)
    if items:
        for item in items:
            if item["key"] not in data:
                raise PodRunnerError(f"{what} has no key {item['key']!r}")
            dest = target / item["path"]
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes(data[item["key"]])
    else:
        for k, v in data.items():
            (target / k).write_bytes(v)


def _materialize_volume(vol: dict[str, Any], refs: _Refs, target: Path) -> None:
    if "emptyDir" in vol:
        target.mkdir(parents=True, exist_ok=True)
        return
    if "configMap" in vol or "secret" in vol:
        kind = "configmap" if "configMap" in vol else "secret"
        src = vol.get("configMap") or vol.get("secret") or {}
        name = str(src.get("name") or src.get("secretName"))
        data = refs.data(kind, name, bool(src.get("optional")))
        _write_items(target, data or {}, src.get("items"), f"{kind} {name}")
        return
    if "projected" in vol:
        target.mkdir(parents=True, exist_ok=True)
        for source in vol["projected"].get("sources", []):
            if "serviceAccountToken" in source:
                token = source["serviceAccountToken"]
                (target / token["path"]).write_bytes(refs.token(token))
                continue
            if "downwardAPI" in source:
                for item in source["downwardAPI"].get("items", []):
                    field_path = item.get("fieldRef", {}).get("fieldPath")
                    if not field_path:
                        raise PodRunnerError(
                            "downwardAPI items other than fieldRef are not supported"
                        )
                    dest = target / item["path"]
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    dest.write_text(_field_value(refs.pod, field_path))
                continue
            for kind, key in (("configmap", "configMap"), ("secret", "secret")):
                if key in source:
                    src = source[key]
                    data = refs.data(kind, src["name"], bool(src.get("optional")))
                    _write_items(target, data or {}, src.get("items"), f"{kind} {src['name']}")
                    break
            else:
                raise PodRunnerError(
                    f"projected source {sorted(source)} is not supported by the local pod runner"
                )
        return
    raise PodRunnerError(
        f"volume {vol.get('name')!r} of type {sorted(set(vol) - {'name'})} "
        "is not supported by the local pod runner"
    )


# The wrapper that binds a pod's volumes at their absolute paths (see its docstring); run
# with `python -I`, it imports nothing of the project.
MOUNTNS_SCRIPT = Path(__file__).with_name("mountns.py")


@functools.cache
def absolute_mounts_unsupported() -> str | None:
    """Why `absolute_mounts` can't work on this machine (no mount namespace for this user),
    or None when it can: a real bind through the same wrapper, inside a temp dir."""
    with tempfile.TemporaryDirectory(prefix="podrunner-probe-") as tmp:
        root = Path(tmp)
        (root / "source").mkdir()
        (root / "source" / "probe").write_text("ok")
        (root / "stash").mkdir()
        (root / "parent").mkdir()
        target = root / "parent" / "made" / "here"
        binds = json.dumps({str(target): str(root / "source")})
        probe = [sys.executable, "-I", str(MOUNTNS_SCRIPT), binds, str(root / "stash"),
                 "cat", str(target / "probe")]  # fmt: skip
        try:
            done = subprocess.run(probe, capture_output=True, text=True, timeout=30, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return str(exc)
        if done.returncode != 0 or done.stdout != "ok":
            return done.stderr.strip() or f"the probe exited with {done.returncode}"
    return None


def kubernetes_service_env(host: str, port: int) -> dict[str, str]:
    """The variables a kubelet gives every container for the `kubernetes` Service."""
    hostport = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    link = f"tcp://{hostport}"
    return {
        "KUBERNETES_SERVICE_HOST": host,
        "KUBERNETES_SERVICE_PORT": str(port),
        "KUBERNETES_SERVICE_PORT_HTTPS": str(port),
        "KUBERNETES_PORT": link,
        f"KUBERNETES_PORT_{port}_TCP": link,
        f"KUBERNETES_PORT_{port}_TCP_PROTO": "tcp",
        f"KUBERNETES_PORT_{port}_TCP_PORT": str(port),
        f"KUBERNETES_PORT_{port}_TCP_ADDR": host,
    }


WILDCARD_ADDRESSES = ("0.0.0.0", "::", "[::]")
# With `pod_loopback`, the pod's own loopback address means its pod IP (all pods share the
# host's loopback here): how a sidecar and its app reach each other.
LOOPBACK = "127.0.0.1"


def bind_pod_ip(arg: str, pod_ip: str) -> str:
    """A wildcard bind address in argv (``0.0.0.0``, ``--host=0.0.0.0``) becomes the pod IP.

    In a cluster each pod has its own network namespace, so every replica can bind
    0.0.0.0:8000; here all pods share the host's, so each must bind its own (loopback) IP.
    """
    for wildcard in WILDCARD_ADDRESSES:
        if arg == wildcard:
            return pod_ip
        if arg.endswith(f"={wildcard}"):
            return arg[: -len(wildcard)] + pod_ip
    return arg


def plan_pod_process(
    pod: dict[str, Any],
    get: ObjectGetter,
    workdir: Path,
    *,
    container: str | None = None,
    argv0_map: Mapping[str, str] | None = None,
    extra_env: Mapping[str, str] | None = None,
    token: TokenRequester | None = None,
    image_files: Mapping[str, Path] | None = None,
    entrypoint: Sequence[str] | None = None,
    pod_loopback: bool = False,
    kubernetes_service: tuple[str, int] | None = None,
    absolute_mounts: Sequence[str] = (),
) -> PodProcessPlan:
    """Derive argv/env/mounts of `container` (default: the first) and write its volumes."""
    meta, spec, status = pod["metadata"], pod["spec"], pod.get("status", {})
    ns, name = meta.get("namespace", "default"), meta["name"]
    pod_ip = status.get("podIP")
    if not pod_ip:
        raise PodRunnerError(f"pod {ns}/{name} has no IP yet (not scheduled or not started)")
    containers = spec["containers"]
    if container is None:
        ctr = containers[0]
    else:
        # Native sidecars are init containers that keep running: look there too.
        everything = [*(spec.get("initContainers") or []), *containers]
        matches = [c for c in everything if c["name"] == container]
        if not matches:
            raise PodRunnerError(f"pod {ns}/{name} has no container {container!r}")
        ctr = matches[0]
    argv = [*(ctr.get("command") or list(entrypoint or [])), *(ctr.get("args") or [])]
    if not argv:
        raise PodRunnerError(
            f"container {ctr['name']!r} has no command/args; the image's entrypoint is unknown "
            "locally, so give the container an explicit command"
        )
    refs = _Refs(get, pod, token)

    # Volumes first: env and argv rewriting need the mount mapping.
    volumes = {v["name"]: v for v in spec.get("volumes", []) or []}
    mounts: dict[str, Path] = {}
    vol_root = workdir / "volumes"
    for vm in ctr.get("volumeMounts", []) or []:
        vol = volumes.get(vm["name"])
        if vol is None:
            raise PodRunnerError(f"volumeMount {vm['name']!r} names no volume of the pod")
        local = vol_root / vm["name"]
        if not local.exists():
            _materialize_volume(vol, refs, local)
        if vm.get("subPath"):
            local = local / vm["subPath"]
        mounts[vm["mountPath"]] = local
    # Paths the image would hold (a baked-in model, say): rewritten like mounts.
    for image_path, local in (image_files or {}).items():
        mounts.setdefault(image_path, Path(local))

    env: dict[str, str] = {k: os.environ[k] for k in HOST_ENV_KEEP if k in os.environ}
    env["HOSTNAME"] = name
    if kubernetes_service is not None:
        # Before the container's own env, which may override them (as with a kubelet).
        env.update(kubernetes_service_env(*kubernetes_service))
    for src in ctr.get("envFrom", []) or []:
        prefix = src.get("prefix", "")
        for kind, key in (("configmap", "configMapRef"), ("secret", "secretRef")):
            if key in src:
                ref = src[key]
                data = refs.data(kind, ref["name"], bool(ref.get("optional"))) or {}
                env.update({prefix + k: v.decode() for k, v in data.items()})
    for var in ctr.get("env", []) or []:
        value: str | None
        if "valueFrom" not in var:
            value = expand_vars(var.get("value", ""), env)
        else:
            vf = var["valueFrom"]
            if "fieldRef" in vf:
                value = _field_value(pod, vf["fieldRef"]["fieldPath"])
            elif "secretKeyRef" in vf:
                r = vf["secretKeyRef"]
                value = refs.key("secret", r["name"], r["key"], bool(r.get("optional")))
            elif "configMapKeyRef" in vf:
                r = vf["configMapKeyRef"]
                value = refs.key("configmap", r["name"], r["key"], bool(r.get("optional")))
            else:
                raise PodRunnerError(
                    f"env {var['name']}: valueFrom {sorted(vf)} is not supported locally"
                )
        if value is not None:
            value = rewrite_paths(value, mounts)
            env[var["name"]] = value.replace(LOOPBACK, pod_ip) if pod_loopback else value
    env.update(extra_env or {})
    env[MOUNTS_ENV] = json.dumps({k: str(v) for k, v in mounts.items()})

    argv = [bind_pod_ip(rewrite_paths(expand_vars(a, env), mounts), pod_ip) for a in argv]
    if pod_loopback:
        argv = [a.replace(LOOPBACK, pod_ip) for a in argv]
    if argv0_map and argv[0] in argv0_map:
        argv[0] = argv0_map[argv[0]]
    if shutil.which(argv[0], path=env.get("PATH")) is None and not Path(argv[0]).is_file():
        raise PodRunnerError(
            f"executable {argv[0]!r} of pod {ns}/{name} is not on this machine; "
            "map it with argv0_map (e.g. {'python': sys.executable})"
        )

    cwd = workdir / "cwd"
    if ctr.get("workingDir"):
        rewritten = rewrite_paths(ctr["workingDir"], mounts)
        if rewritten != ctr["workingDir"]:
            cwd = Path(rewritten)
    cwd.mkdir(parents=True, exist_ok=True)
    ports = [p["containerPort"] for p in ctr.get("ports", []) or [] if "containerPort" in p]
    unknown = [m for m in absolute_mounts if m not in mounts]
    if unknown:
        raise PodRunnerError(
            f"container {ctr['name']!r} of pod {ns}/{name} mounts nothing at {unknown}; "
            f"its mounts: {sorted(mounts)}"
        )
    bound = {m: mounts[m] for m in absolute_mounts}
    return PodProcessPlan(name, ns, ctr["name"], pod_ip, argv, env, cwd, mounts, ports, bound)


def start_pod_process(plan: PodProcessPlan, workdir: Path) -> RunningPod:
    """Start the planned process in its own process group, output to workdir/output.log."""
    log_path = workdir / "output.log"
    argv = plan.argv
    if plan.absolute_mounts:
        stash = workdir / "mountns-stash"
        stash.mkdir(exist_ok=True)
        binds = json.dumps({k: str(v) for k, v in plan.absolute_mounts.items()})
        argv = [sys.executable, "-I", str(MOUNTNS_SCRIPT), binds, str(stash), *plan.argv]
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            argv,
            env=plan.env,
            cwd=plan.cwd,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return RunningPod(plan, proc, log_path, workdir)


@contextlib.contextmanager
def run_pod(
    pod: dict[str, Any],
    get: ObjectGetter,
    *,
    container: str | None = None,
    argv0_map: Mapping[str, str] | None = None,
    extra_env: Mapping[str, str] | None = None,
    wait_port: int | bool | None = True,
    timeout: float = PORT_TIMEOUT_S,
    keep_dir: bool = False,
    token: TokenRequester | None = None,
    image_files: Mapping[str, Path] | None = None,
    entrypoint: Sequence[str] | None = None,
    pod_loopback: bool = False,
    kubernetes_service: tuple[str, int] | None = None,
    absolute_mounts: Sequence[str] = (),
) -> Iterator[RunningPod]:
    """Run the pod's container locally for the duration of the block.

    `wait_port`: True waits for the first containerPort, an int for that port, False/None
    for nothing. The temp dir (volumes, output.log) is removed afterwards unless `keep_dir`.
    `kubernetes_service` and `absolute_mounts`: see the module docstring (in-cluster clients).
    """
    workdir = Path(tempfile.mkdtemp(prefix=f"pod-{pod['metadata']['name']}-"))
    running: RunningPod | None = None
    try:
        plan = plan_pod_process(
            pod,
            get,
            workdir,
            container=container,
            argv0_map=argv0_map,
            extra_env=extra_env,
            token=token,
            image_files=image_files,
            entrypoint=entrypoint,
            pod_loopback=pod_loopback,
            kubernetes_service=kubernetes_service,
            absolute_mounts=absolute_mounts,
        )
        running = start_pod_process(plan, workdir)
        if wait_port is True:
            running.wait_for_port(timeout=timeout)
        elif wait_port:
            running.wait_for_port(int(wait_port), timeout=timeout)
        yield running
    finally:
        if running is not None:
            running.stop()
        if not keep_dir:
            shutil.rmtree(workdir, ignore_errors=True)


def kubectl_getter(kubectl: Any) -> ObjectGetter:
    """An ObjectGetter over an e2e.harness.kube.Kubectl."""

    def get(kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        result: dict[str, Any] | None = kubectl.in_namespace(namespace).get_or_none(kind, name)
        return result

    return get


def kubectl_token_requester(kubectl: Any) -> TokenRequester:
    """A TokenRequester over an e2e.harness.kube.Kubectl (`kubectl create token`)."""

    def token(pod: dict[str, Any], audience: str | None, expiry: int) -> str:
        meta = pod["metadata"]
        sa = pod["spec"].get("serviceAccountName") or "default"
        args = [
            *("create", "token", sa, f"--duration={expiry}s", "--bound-object-kind=Pod"),
            f"--bound-object-name={meta['name']}",
            f"--bound-object-uid={meta['uid']}",
        ]
        if audience:
            args.append(f"--audience={audience}")
        return str(kubectl.in_namespace(meta["namespace"]).run(*args).stdout.strip())

    return token
