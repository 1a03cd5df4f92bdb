"""kopf handlers: thin adapters from watch events to the reconciler."""

from clawdbot_operator.handlers.modeldeployment import register

__all__ = ["register"]
