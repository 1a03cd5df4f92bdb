"""The operator's command line."""

from __future__ import annotations

import pytest

from clawdbot_operator.main import parse_args


def test_defaults_watch_every_namespace() -> None:
    args = parse_args([])
    assert (args.namespace, args.all_namespaces, args.kubeconfig) == ([], False, None)
    assert (args.metrics_port, args.health_port) == (6443, 8080)
    assert (args.leader_elect, args.leader_election_namespace) == (False, None)
    assert args.leader_election_name == "clawdbot-operator"


def test_leader_election_flags() -> None:
    args = parse_args(
        ["--leader-elect", "--leader-election-namespace", "ops", "--leader-election-name", "x"]
    )
    assert (args.leader_elect, args.leader_election_namespace, args.leader_election_name) == (
        True,
        "ops",
        "x",
    )


def test_kopf_peering_is_gone(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        parse_args(["--peering=clawdbot"])
    assert "unrecognized arguments" in capsys.readouterr().err


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
