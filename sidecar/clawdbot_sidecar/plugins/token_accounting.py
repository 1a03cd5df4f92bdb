"""Token and energy accounting per tenant: the example plugin.

Counts tokens by tenant (the ``x-tenant`` header, else the OpenAI ``user`` field, else
"unknown") and target, and estimates the energy of local inference from the tokens served
(joules per token, default 0.4 J: the order of magnitude of a 7-8B model on a current data
center GPU; set ``CLAWDBOT_ENERGY_JOULES_PER_TOKEN`` for your hardware). Cloud energy is
not estimated: the provider's is unknown.
"""

from __future__ import annotations

import os

from prometheus_client import CollectorRegistry, Counter

from clawdbot_sidecar.plugins import PluginRequest, PluginResult

DEFAULT_JOULES_PER_TOKEN = 0.4
# Tenant label values are bounded: anything beyond this many distinct tenants is "other".
MAX_TENANTS = 100


class TokenAccounting:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.joules_per_token = float(
            os.environ.get("CLAWDBOT_ENERGY_JOULES_PER_TOKEN", DEFAULT_JOULES_PER_TOKEN)
        )
        self.tokens = Counter(
            "clawdbot_sidecar_tenant_tokens",
            "Tokens by tenant (x-tenant header or the request's user field), target and kind.",
            ["tenant", "target", "kind"],
            registry=registry,
        )
        self.energy = Counter(
            "clawdbot_sidecar_local_energy_joules",
            "Estimated energy of local inference, by tenant.",
            ["tenant"],
            registry=registry,
        )
        self._tenants: set[str] = set()

    def tenant(self, request: PluginRequest) -> str:
        name = request.headers.get("x-tenant") or request.body.get("user") or "unknown"
        name = str(name)[:63]
        if name not in self._tenants and len(self._tenants) >= MAX_TENANTS:
            return "other"
        self._tenants.add(name)
        return name

    def after_response(self, request: PluginRequest, result: PluginResult) -> None:
        if result.status >= 400:
            return
        tenant = self.tenant(request)
        self.tokens.labels(tenant, result.target, "prompt").inc(result.prompt_tokens)
        self.tokens.labels(tenant, result.target, "completion").inc(result.completion_tokens)
        if result.target == "local":
            served = result.prompt_tokens + result.completion_tokens
            self.energy.labels(tenant).inc(served * self.joules_per_token)
