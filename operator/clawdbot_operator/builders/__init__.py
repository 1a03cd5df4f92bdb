"""Pure functions from a typed ModelDeployment (and the operator config) to manifests."""

from __future__ import annotations

from clawdbot_api.v1alpha1 import ModelDeployment
from clawdbot_operator.builders.deployment import build_deployment
from clawdbot_operator.builders.hpa import build_hpa
from clawdbot_operator.builders.meta import Manifest
from clawdbot_operator.builders.networkpolicy import build_network_policy
from clawdbot_operator.builders.pdb import build_pdb
from clawdbot_operator.builders.service import build_service
from clawdbot_operator.config import OperatorConfig

__all__ = ["build_children"]


def build_children(
    md: ModelDeployment, config: OperatorConfig, revision: int, revision_hash: str
) -> list[Manifest]:
    """Every child of ``md`` at ``revision``, in apply order (the HPA only with autoscaling)."""
    children = [
        build_deployment(md, config, revision, revision_hash),
        build_service(md, revision),
        build_pdb(md, revision),
        build_network_policy(md, config, revision),
    ]
    hpa = build_hpa(md, revision)
    if hpa is not None:
        children.append(hpa)
    return children
