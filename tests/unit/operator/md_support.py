"""Helpers of the ModelDeployment operator tests: typed objects and a `restricted` checker."""

from __future__ import annotations

from typing import Any

from clawdbot_api.v1alpha1 import ModelDeployment

UID = "0f5e3c9a-6b1d-4b8e-9c55-1d2f3a4b5c6d"

# Pod Security Standards, "restricted" profile (which includes "baseline"), as documented at
# kubernetes.io/docs/concepts/security/pod-security-standards for the latest version.
RESTRICTED_VOLUME_TYPES = frozenset(
    {
        "configMap",
        "csi",
        "downwardAPI",
        "emptyDir",
        "ephemeral",
        "image",
        "persistentVolumeClaim",
        "projected",
        "secret",
    }
)
BASELINE_CAPABILITIES = frozenset(
    {
        "AUDIT_WRITE", "CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "KILL", "MKNOD",
        "NET_BIND_SERVICE", "SETFCAP", "SETGID", "SETPCAP", "SETUID", "SYS_CHROOT",
    }
)  # fmt: skip
SAFE_SYSCTLS = frozenset(
    {
        "kernel.shm_rmid_forced",
        "net.ipv4.ip_local_port_range",
        "net.ipv4.ip_unprivileged_port_start",
        "net.ipv4.tcp_syncookies",
        "net.ipv4.ping_group_range",
        "net.ipv4.ip_local_reserved_ports",
        "net.ipv4.tcp_keepalive_time",
        "net.ipv4.tcp_fin_timeout",
        "net.ipv4.tcp_keepalive_intvl",
        "net.ipv4.tcp_keepalive_probes",
    }
)


def restricted_violations(pod_spec: dict[str, Any]) -> list[str]:
    """Every way ``pod_spec`` breaks the ``restricted`` Pod Security Standard ([] = passes)."""
    out: list[str] = []
    psc = pod_spec.get("securityContext") or {}
    for flag in ("hostNetwork", "hostPID", "hostIPC"):
        if pod_spec.get(flag):
            out.append(f"{flag} must not be set")
    for vol in pod_spec.get("volumes") or []:
        kinds = set(vol) - {"name"}
        if not kinds <= RESTRICTED_VOLUME_TYPES:
            out.append(f"volume {vol['name']}: type {sorted(kinds)} not allowed")
    for sysctl in psc.get("sysctls") or []:
        if sysctl["name"] not in SAFE_SYSCTLS:
            out.append(f"sysctl {sysctl['name']} not allowed")
    if (psc.get("windowsOptions") or {}).get("hostProcess"):
        out.append("hostProcess must not be set")
    if psc.get("runAsUser") == 0:
        out.append("pod runAsUser must not be 0")
    if (psc.get("seLinuxOptions") or {}).get("user") or (psc.get("seLinuxOptions") or {}).get(
        "role"
    ):
        out.append("pod seLinuxOptions user/role must not be set")
    pod_seccomp = (psc.get("seccompProfile") or {}).get("type")
    if pod_seccomp == "Unconfined":
        out.append("pod seccompProfile must not be Unconfined")
    containers = [
        *(pod_spec.get("initContainers") or []),
        *(pod_spec.get("containers") or []),
        *(pod_spec.get("ephemeralContainers") or []),
    ]
    for c in containers:
        name = c["name"]
        sc = c.get("securityContext") or {}
        if sc.get("privileged"):
            out.append(f"{name}: privileged")
        if sc.get("allowPrivilegeEscalation") is not False:
            out.append(f"{name}: allowPrivilegeEscalation must be false")
        caps = sc.get("capabilities") or {}
        if "ALL" not in (caps.get("drop") or []):
            out.append(f"{name}: capabilities must drop ALL")
        added = set(caps.get("add") or [])
        if not added <= {"NET_BIND_SERVICE"} or not added <= BASELINE_CAPABILITIES:
            out.append(f"{name}: capabilities.add {sorted(added)} not allowed")
        non_root = sc.get("runAsNonRoot", psc.get("runAsNonRoot"))
        if non_root is not True or sc.get("runAsNonRoot") is False:
            out.append(f"{name}: runAsNonRoot must be true")
        if sc.get("runAsUser") == 0:
            out.append(f"{name}: runAsUser must not be 0")
        seccomp = (sc.get("seccompProfile") or {}).get("type") or pod_seccomp
        if seccomp not in ("RuntimeDefault", "Localhost"):
            out.append(f"{name}: seccompProfile must be RuntimeDefault or Localhost")
        if sc.get("procMount") not in (None, "Default"):
            out.append(f"{name}: procMount must be Default")
        for port in c.get("ports") or []:
            if port.get("hostPort"):
                out.append(f"{name}: hostPort not allowed")
        if (sc.get("appArmorProfile") or {}).get("type") == "Unconfined":
            out.append(f"{name}: AppArmor must not be Unconfined")
    return out


def model_deployment(
    name: str = "llama",
    namespace: str = "ai",
    annotations: dict[str, str] | None = None,
    generation: int = 1,
    **spec: Any,
) -> ModelDeployment:
    """A ModelDeployment as the API server would hand it over (name, uid, defaults)."""
    base: dict[str, Any] = {
        "model": {"name": "llama-7b", "uri": "pvc://models/llama-7b", "version": "1"},
    }
    base.update(spec)
    return ModelDeployment.model_validate(
        {
            "metadata": {
                "name": name,
                "namespace": namespace,
                "uid": UID,
                "generation": generation,
                "annotations": annotations or {},
            },
            "spec": base,
        }
    )


def flag(args: list[str], name: str) -> str | None:
    """The value following ``name`` in an argument list, if present."""
    return args[args.index(name) + 1] if name in args else None
