"""The `restricted` checker itself catches what the profile forbids."""

from __future__ import annotations

from md_support import restricted_violations


def _ok_container(**sc: object) -> dict[str, object]:
    base = {
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "runAsNonRoot": True,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    base.update(sc)
    return {"name": "c", "securityContext": base}


def test_compliant_pod_passes() -> None:
    assert restricted_violations({"containers": [_ok_container()]}) == []


def test_each_rule_is_caught() -> None:
    cases = [
        {"containers": [_ok_container(allowPrivilegeEscalation=True)]},
        {"containers": [_ok_container(capabilities={"drop": []})]},
        {"containers": [_ok_container(capabilities={"drop": ["ALL"], "add": ["SYS_ADMIN"]})]},
        {"containers": [_ok_container(runAsNonRoot=False)]},
        {"containers": [_ok_container(seccompProfile={"type": "Unconfined"})]},
        {"containers": [_ok_container(privileged=True)]},
        {"containers": [_ok_container(runAsUser=0)]},
        {"containers": [_ok_container()], "hostNetwork": True},
        {"containers": [_ok_container()], "volumes": [{"name": "h", "hostPath": {"path": "/"}}]},
        {"containers": [{**_ok_container(), "ports": [{"containerPort": 80, "hostPort": 80}]}]},
    ]
    for spec in cases:
        assert restricted_violations(spec), spec
