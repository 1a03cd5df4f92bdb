"""The operator's command line."""

from __future__ import annotations

import pytest

from clawdbot_operator.config import OperatorConfig
from clawdbot_operator.main import config_from_args, parse_args


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


def test_flags_and_environment_make_one_config() -> None:
    env = {"CLAWDBOT_RESYNC_SECONDS": "3", "POD_NAMESPACE": "ops", "POD_NAME": "op-0",
           "CLAWDBOT_ACCEPT_LOAD_REPORTS": "true"}  # fmt: skip
    config = config_from_args(
        parse_args(["-n", "a", "-n", "b", "--metrics-port", "0", "--leader-elect"]), env
    )
    assert (config.namespaces, config.metrics_port, config.leader_elect) == (("a", "b"), 0, True)
    assert (config.resync_seconds, config.namespace, config.pod_name) == (3.0, "ops", "op-0")
    # The flag names the setting, so the command line decides it.
    assert config.accept_load_reports is False
    defaults = config_from_args(parse_args([]), {})
    assert defaults.namespace == "clawdbot-system" and defaults.leader_election_namespace == ""


def test_a_boolean_setting_is_a_word_not_any_text() -> None:
    assert OperatorConfig.load({"CLAWDBOT_LEADER_ELECT": "false"}).leader_elect is False
    assert OperatorConfig.load({"CLAWDBOT_LEADER_ELECT": "yes"}).leader_elect is True
    with pytest.raises(ValueError, match="leader_elect"):
        OperatorConfig.load({"CLAWDBOT_LEADER_ELECT": "maybe"})
