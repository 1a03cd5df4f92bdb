"""RoutingPolicy conditions, as a pure function of what the operator found.

* ``Ready``: the policy is in force: its spec is valid, the cloud Secret and every local
  ModelDeployment it names exist. False with ``InvalidSpec`` when the spec can't be applied
  (the message names the field; the spec is not sent to the sidecars), else
  ``InvalidReference`` listing what is missing.
* ``Degraded``: it is in force but some local model has no Ready endpoint, so its requests
  go to the cloud (``fallback.localToCloud``) or fail. Unknown while the policy is not Ready.

``lastTransitionTime`` moves only when a condition's status changes, as Kubernetes
conventions ask, so a status rewritten with the same verdict does not look like news.
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Final

from clawdbot_api.v1alpha1 import RoutingPolicySpec

INLINE_PASSWORD_REASON: Final = "RedisPasswordInSpec"


def inline_redis_password(spec: RoutingPolicySpec) -> str | None:
    """The warning for a password written into ``cache.redisURL`` (readable by anyone who
    can read the policy), or None."""
    url = spec.cache.redis_url
    if not url:
        return None
    try:
        password = urllib.parse.urlsplit(url).password
    except ValueError:
        return None
    if not password:
        return None
    return (
        "cache.redisURL holds a password, readable by anyone who can read this RoutingPolicy: "
        "put it in a Secret and name it in cache.redisPasswordSecretRef"
    )


def models_without_endpoints(
    spec: RoutingPolicySpec, models_with_endpoints: Iterable[str]
) -> list[str]:
    """The policy's local ModelDeployments that have no Ready endpoint, in spec order."""
    serving = set(models_with_endpoints)
    return [m.name for m in spec.local_models if m.name not in serving]


def policy_conditions(
    *,
    spec: RoutingPolicySpec | None,
    problems: Sequence[str],
    idle_models: Sequence[str],
    invalid: str | None = None,
    generation: int | None,
    previous: Iterable[Mapping[str, Any]],
    now: str,
) -> list[dict[str, Any]]:
    """Ready and Degraded for a policy whose spec is ``invalid`` (why, naming the field),
    or has these ``problems`` (missing references) and ``idle_models`` (local models without
    a Ready endpoint)."""
    reasons = [invalid] if invalid is not None else list(problems)
    ready = not reasons
    if ready:
        verdict = ("True", "Resolved", "policy in force")
    else:
        kind = "InvalidSpec" if invalid is not None else "InvalidReference"
        verdict = ("False", kind, "; ".join(reasons))
    conditions: list[dict[str, Any]] = [
        {"type": "Ready", "status": verdict[0], "reason": verdict[1], "message": verdict[2]}
    ]
    if not ready:
        degraded = ("Unknown", "NotReady", "the policy is not in force (see Ready)")
    elif idle_models:
        where = (
            "go to the cloud (fallback.localToCloud)"
            if spec is not None and spec.cloud is not None and spec.fallback.local_to_cloud
            else "fail until one is Ready"
        )
        names = ", ".join(idle_models)
        message = f"no Ready endpoint for local model(s) {names}: their requests {where}"
        degraded = ("True", "NoReadyEndpoints", message)
    else:
        degraded = ("False", "EndpointsReady", "every local model has a Ready endpoint")
    status, reason, message = degraded
    conditions.append({"type": "Degraded", "status": status, "reason": reason,
                       "message": message})  # fmt: skip
    before = {c.get("type"): c for c in previous}
    for c in conditions:
        c["observedGeneration"] = generation
        old = before.get(c["type"])
        same = old is not None and old.get("status") == c["status"]
        c["lastTransitionTime"] = old.get("lastTransitionTime") if old and same else now
    return conditions
