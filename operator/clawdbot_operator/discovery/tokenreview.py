"""Sidecar authentication through the API server's TokenReview (audience "clawdbot")."""

from __future__ import annotations

import time
from typing import Any

from kubernetes_asyncio import client

from clawdbot_operator.discovery.server import Identity

AUDIENCE = "clawdbot"
# Reviews are cached briefly: a sidecar reconnecting in a loop must not become a TokenReview
# storm. Short enough that a deleted pod's token stops working soon after.
CACHE_TTL_S = 60.0
CACHE_MAX = 4096
POD_NAME_EXTRA = "authentication.kubernetes.io/pod-name"


def identity_from_status(status: Any, audience: str = AUDIENCE) -> Identity | None:
    """The identity a TokenReview status grants, or None (unauthenticated, wrong audience,
    not a service account)."""
    if not status or not status.authenticated or audience not in (status.audiences or []):
        return None
    parts = (status.user.username or "").split(":")
    if len(parts) != 4 or parts[:2] != ["system", "serviceaccount"]:
        return None
    pod = (status.user.extra or {}).get(POD_NAME_EXTRA) or [None]
    return Identity(namespace=parts[2], service_account=parts[3], pod_name=pod[0])


class KubeTokenReviewer:
    """TokenReview through the operator's API client, with a small TTL cache."""

    def __init__(self, api: client.ApiClient, audience: str = AUDIENCE) -> None:
        self._api = client.AuthenticationV1Api(api)
        self._audience = audience
        self._cache: dict[str, tuple[float, Identity | None]] = {}

    async def review(self, token: str) -> Identity | None:
        now = time.monotonic()
        hit = self._cache.get(token)
        if hit is not None and now - hit[0] < CACHE_TTL_S:
            return hit[1]
        body = client.V1TokenReview(
            spec=client.V1TokenReviewSpec(token=token, audiences=[self._audience])
        )
        result = await self._api.create_token_review(body)
        identity = identity_from_status(result.status, self._audience)
        if len(self._cache) >= CACHE_MAX:
            self._cache.clear()
        self._cache[token] = (now, identity)
        return identity
