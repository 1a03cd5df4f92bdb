"""Sidecar authentication through the API server's TokenReview (audience "clawdbot").

A review says who a token belongs to now; it says nothing of how long that holds. The
stream asks again (``fresh``) when the token's own ``exp`` claim has passed, or at the
latest every ``server.REVIEW_S``: a pod-bound token stops passing review once its pod is
deleted, so a deleted pod's stream ends even if no watch event told the operator.
"""

from __future__ import annotations

import base64
import json
import time
from dataclasses import dataclass
from typing import Any

from kubernetes_asyncio import client

AUDIENCE = "clawdbot"
# Reviews are cached briefly: a sidecar reconnecting in a loop must not become a TokenReview
# storm. Short enough that a deleted pod's token stops working soon after.
CACHE_TTL_S = 60.0
CACHE_MAX = 4096
POD_NAME_EXTRA = "authentication.kubernetes.io/pod-name"
POD_UID_EXTRA = "authentication.kubernetes.io/pod-uid"


@dataclass(frozen=True)
class Identity:
    """Who a token belongs to, as the TokenReview says."""

    namespace: str
    service_account: str
    pod_name: str | None
    """From a pod-bound token (projected volume); None for other tokens."""
    pod_uid: str | None = None
    """The UID of that pod (a pod recreated under the same name is another pod)."""
    expires_at: float | None = None
    """Unix time of the token's ``exp`` claim; None when it has none."""


def token_expiry(token: str) -> float | None:
    """The ``exp`` claim of a JWT, unverified: read only from a token TokenReview accepted."""
    try:
        payload = token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        exp = claims.get("exp") if isinstance(claims, dict) else None
    except (IndexError, ValueError):
        return None
    return float(exp) if isinstance(exp, int | float) and not isinstance(exp, bool) else None


def identity_from_status(status: Any, audience: str = AUDIENCE, token: str = "") -> Identity | None:
    """The identity a TokenReview status grants, or None (unauthenticated, wrong audience,
    not a service account)."""
    if not status or not status.authenticated or audience not in (status.audiences or []):
        return None
    parts = (status.user.username or "").split(":")
    if len(parts) != 4 or parts[:2] != ["system", "serviceaccount"]:
        return None
    extra = status.user.extra or {}
    pod = extra.get(POD_NAME_EXTRA) or [None]
    uid = extra.get(POD_UID_EXTRA) or [None]
    return Identity(
        namespace=parts[2],
        service_account=parts[3],
        pod_name=pod[0],
        pod_uid=uid[0],
        expires_at=token_expiry(token) if token else None,
    )


class KubeTokenReviewer:
    """TokenReview through the operator's API client, with a small TTL cache."""

    def __init__(self, api: client.ApiClient, audience: str = AUDIENCE) -> None:
        self._api = client.AuthenticationV1Api(api)
        self._audience = audience
        self._cache: dict[str, tuple[float, Identity | None]] = {}

    async def review(self, token: str, *, fresh: bool = False) -> Identity | None:
        """The token's identity (None: rejected); ``fresh`` asks the API server even when
        a recent answer is cached."""
        now = time.monotonic()
        hit = self._cache.get(token)
        if not fresh and hit is not None and now - hit[0] < CACHE_TTL_S:
            return hit[1]
        body = client.V1TokenReview(
            spec=client.V1TokenReviewSpec(token=token, audiences=[self._audience])
        )
        result = await self._api.create_token_review(body)
        identity = identity_from_status(result.status, self._audience, token)
        if len(self._cache) >= CACHE_MAX:
            self._cache.clear()
        self._cache[token] = (now, identity)
        return identity
