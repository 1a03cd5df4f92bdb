"""The pod runner's options for in-cluster clients: the `kubernetes` Service variables a kubelet
sets, and volumes seen at their absolute path (a real process in a private mount namespace)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import pytest

from e2e.harness.podrunner import (
    PodRunnerError,
    absolute_mounts_unsupported,
    kubernetes_service_env,
    plan_pod_process,
    run_pod,
)

SA_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"


def operator_pod() -> dict[str, Any]:
    """A pod as the API server returns it after the ServiceAccount admission."""
    return {
        "metadata": {"name": "op-1", "namespace": "ops", "uid": "u-1"},
        "spec": {
            "serviceAccountName": "op",
            "containers": [
                {
                    "name": "operator",
                    "command": [sys.executable, "-c", "import sys; print(sys.argv)"],
                    "env": [{"name": "KUBERNETES_SERVICE_PORT", "value": "8443"}],
                    "volumeMounts": [{"name": "kube-api-access", "mountPath": SA_DIR}],
                }
            ],
            "volumes": [
                {
                    "name": "kube-api-access",
                    "projected": {
                        "sources": [
                            {"serviceAccountToken": {"path": "token", "expirationSeconds": 3607}},
                            {"configMap": {"name": "kube-root-ca.crt",
                                           "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
                            {"downwardAPI": {"items": [{"path": "namespace", "fieldRef": {
                                "fieldPath": "metadata.namespace"}}]}},
                        ]
                    },
                }
            ],
        },
        "status": {"podIP": "127.0.0.1"},
    }  # fmt: skip


def getter(kind: str, namespace: str, name: str) -> dict[str, Any] | None:
    if (kind, namespace, name) == ("configmap", "ops", "kube-root-ca.crt"):
        return {"data": {"ca.crt": "-----BEGIN CERTIFICATE-----\n"}}
    return None


def token(pod: dict[str, Any], audience: str | None, expiry: int) -> str:
    return f"token-for-{pod['metadata']['name']}-{audience}-{expiry}"


def test_kubernetes_service_variables_come_before_the_containers_own(tmp_path: Path) -> None:
    plan = plan_pod_process(
        operator_pod(), getter, tmp_path, token=token, kubernetes_service=("127.0.0.1", 6443)
    )
    assert plan.env["KUBERNETES_SERVICE_HOST"] == "127.0.0.1"
    assert plan.env["KUBERNETES_SERVICE_PORT"] == "8443"  # the container's env wins
    assert plan.env["KUBERNETES_PORT_6443_TCP_ADDR"] == "127.0.0.1"
    without = plan_pod_process(operator_pod(), getter, tmp_path / "b", token=token)
    assert "KUBERNETES_SERVICE_HOST" not in without.env
    assert kubernetes_service_env("fd00::1", 443)["KUBERNETES_PORT"] == "tcp://[fd00::1]:443"


def test_an_absolute_mount_must_be_one_of_the_containers(tmp_path: Path) -> None:
    with pytest.raises(PodRunnerError, match="mounts nothing at"):
        plan_pod_process(operator_pod(), getter, tmp_path, token=token, absolute_mounts=["/etc/x"])


@pytest.mark.skipif(
    absolute_mounts_unsupported() is not None,
    reason=f"no mount namespace for this user: {absolute_mounts_unsupported()}",
)
def test_the_service_account_files_are_read_at_their_absolute_path(tmp_path: Path) -> None:
    """What an in-cluster client does: open the fixed paths. The host's /run is untouched."""
    before = sorted(os.listdir("/run")) if os.path.isdir("/run") else []
    pod = operator_pod()
    reader = (
        "import os, sys; d = sys.argv[1]; "
        "print('|'.join(open(os.path.join(d, f)).read() for f in ('token', 'namespace'))); "
        "import json; print(json.dumps(os.listdir('/run')))"
    )
    pod["spec"]["containers"][0]["command"] = [sys.executable, "-c", reader, SA_DIR]
    with run_pod(pod, getter, token=token, wait_port=False, absolute_mounts=[SA_DIR]) as running:
        assert running.process.wait(timeout=30) == 0, running.log_tail()
        lines = running.log_path.read_text().splitlines()
    assert lines[0] == "token-for-op-1-None-3607|ops"
    # Inside: the host's entries of /run are all still there (bound back), plus secrets.
    inside = set(json.loads(lines[1]))
    assert set(before) <= inside and "secrets" in inside
    after = sorted(os.listdir("/run")) if os.path.isdir("/run") else []
    assert after == before
