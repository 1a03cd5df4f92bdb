"""The operator's command line."""

from __future__ import annotations

import pytest

from clawdbot_operator.main import parse_args


def test_defaults_watch_every_namespace() -> None:
    args = parse_args([])
    assert (args.namespace, args.all_namespaces, args.kubeconfig) == ([], False, None)
    assert (args.metrics_port, args.health_port, args.peering) == (6443, 8080, None)


def test_namespaces_and_ports() -> None:
    args = parse_args(
        ["--namespace", "a", "-n", "b", "--kubeconfig", "kc", "--metrics-port", "0",
         "--health-port", "9000"]
    )  # fmt: skip
    assert (args.namespace, args.kubeconfig, args.metrics_port, args.health_port) == (
        ["a", "b"],
        "kc",
        0,
        9000,
    )


def test_namespace_and_all_namespaces_exclude_each_other(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit):
        parse_args(["--namespace", "a", "--all-namespaces"])
    assert "not allowed with" in capsys.readouterr().err
