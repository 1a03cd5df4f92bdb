"""The configuration in force and every component built from it, swapped in one step.

A new configuration (a file reload, a discovery snapshot) is applied whole or not at all:
:func:`build` constructs each component a changed setting needs (the redactor, the bandit,
the audit log, the cache, the budgets) before anything is switched, reusing the previous
snapshot's components where their settings did not change; only then does the core replace
its snapshot, in one assignment. A component that can't be built (a custom pattern Python
can't compile, an audit file that can't be opened) raises, and the previous snapshot stays in
force, cloud URL and redaction included.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from clawdbot_api.v1alpha1.routingpolicy import Pricing, Target
from clawdbot_sidecar.accounting.audit import AuditLog
from clawdbot_sidecar.accounting.budgets import BudgetTracker
from clawdbot_sidecar.accounting.feedback import FeedbackBook
from clawdbot_sidecar.accounting.ledger import Books
from clawdbot_sidecar.cache import ResponseCache, build_cache
from clawdbot_sidecar.config import SidecarConfig
from clawdbot_sidecar.redaction import BUILTIN_ENTITIES, RedactionConfig, Redactor
from clawdbot_sidecar.redaction.model_tier import ModelTier, ModelTierError, ModelTierRunner
from clawdbot_sidecar.routing.decision import Bandit
from clawdbot_sidecar.routing.semantic import SemanticCacheState, SemanticState, parse_examples

__all__ = ["Snapshot", "build"]

log = logging.getLogger("clawdbot.sidecar")


@dataclass(frozen=True)
class Snapshot:
    """One configuration and the components built from it."""

    config: SidecarConfig
    redactor: Redactor
    bandit: Bandit
    audit: AuditLog | None
    audit_key: bytes | None
    cache: ResponseCache | None
    budgets: BudgetTracker
    rules_check_pii: bool
    """Some rule matches on PII presence: detection looks for every entity, not only the
    redacted ones."""
    pii_entities: tuple[str, ...]
    """Every entity the policy knows (built-in and custom)."""
    pii_rule_entities: frozenset[str]
    """Entities some ``containsPII: true`` rule asks about (all, for one naming none)."""
    redacted_entities: frozenset[str]
    """Entities redaction rewrites (none while it is disabled)."""
    model_tier: ModelTierRunner | None = None
    """The model tier, when the policy enables it and it loaded."""
    model_tier_error: str | None = None
    """Why the enabled model tier can't run: then nothing is sent to the cloud."""
    feedback: FeedbackBook | None = None
    """Answers awaiting feedback, and recent conversations (re-asks)."""
    semantic: SemanticState | None = None
    """The semantic router, when the policy enables it and has examples."""
    may_adapt: bool = False
    """Some rule, or the default, is adaptive: the bandit's context may be needed."""
    semantic_cache: SemanticCacheState | None = None
    """The semantic cache, when the policy enables it."""

    @property
    def books(self) -> Books:
        """The accounting state of this snapshot."""
        return Books(
            self.budgets, self.bandit, self.config.policy.adaptive, self.audit, self.feedback
        )


def cache_prefix(scope: str, policy_name: str) -> str:
    """Pods of one policy share answers (through Redis); different policies never do."""
    return f"clawdbot:cache:{scope}/{policy_name or 'default'}:"


def build(
    config: SidecarConfig,
    previous: Snapshot | None,
    *,
    audit_key: bytes | None,
    cache_scope: str,
    seed: int | None,
) -> Snapshot:
    """Every component of ``config`` (raises if one can't be built; nothing is switched).

    Components whose settings are unchanged from ``previous`` are taken over as they are
    (the bandit keeps what it learned, the cache its entries, the audit chain its file).
    The caller closes what the new snapshot no longer holds, once it is in force.
    """
    policy = config.policy
    old = previous.config if previous is not None else None

    def same(pick: Callable[[SidecarConfig], object]) -> bool:
        return old is not None and pick(old) == pick(config)

    redactor = Redactor(RedactionConfig.from_api(policy.redaction))
    if previous is not None and same(lambda c: c.policy.adaptive):
        bandit = previous.bandit
    else:
        bandit = Bandit(policy.adaptive, seed=seed)
    cloud = policy.cloud
    if previous is not None and same(lambda c: (c.policy.budgets, c.policy.cloud)):
        budgets = previous.budgets
    else:
        budgets = BudgetTracker(policy.budgets, cloud.pricing if cloud else Pricing())
    key = config.audit_hmac_key or audit_key
    new_audit = previous is None or not same(lambda c: c.policy.audit) or previous.audit_key != key
    if previous is not None and not new_audit:
        audit = previous.audit
    else:
        # Records after a key change are sealed with the new key: verify each part of the
        # log with the key that was in force (clawdbot audit verify --hmac-key-file).
        audit = AuditLog.from_api(policy.audit, hmac_key=key) if policy.audit.enabled else None
    if previous is not None and same(
        lambda c: (c.policy.cache, c.policy_name, c.cache_redis_password)
    ):
        cache = previous.cache
    else:
        try:
            prefix = cache_prefix(cache_scope, config.policy_name)
            cache = build_cache(
                policy.cache, key_prefix=prefix, redis_password=config.cache_redis_password
            )
        except Exception:
            if audit is not None and new_audit:
                audit.close()  # this snapshot never comes into force
            raise
    if (
        previous is not None
        and previous.feedback is not None
        and same(lambda c: c.policy.quality.feedback)
    ):
        feedback = previous.feedback
    else:
        feedback = FeedbackBook(policy.quality.feedback)
    semantic = _semantic(config, previous)
    semantic_cache = _semantic_cache(config, previous)
    known = (*BUILTIN_ENTITIES, *(c.name for c in policy.redaction.custom))
    redaction = redactor.config
    tier, tier_error = _model_tier(config, previous)
    return Snapshot(
        config=config,
        redactor=redactor,
        bandit=bandit,
        audit=audit,
        audit_key=key,
        cache=cache,
        budgets=budgets,
        rules_check_pii=any(r.match.contains_pii is not None for r in policy.rules),
        pii_entities=known,
        pii_rule_entities=_rule_entities(config, known),
        redacted_entities=frozenset(redaction.active_entities() if redaction.enabled else ()),
        model_tier=tier,
        model_tier_error=tier_error,
        feedback=feedback,
        semantic=semantic,
        semantic_cache=semantic_cache,
        may_adapt=policy.default_target == Target.ADAPTIVE
        or any(r.target == Target.ADAPTIVE for r in policy.rules),
    )


def _semantic_cache(config: SidecarConfig, previous: Snapshot | None) -> SemanticCacheState | None:
    """The semantic cache ``config`` asks for: the previous one (its entries kept) when its
    settings and encoder are unchanged."""
    settings = config.policy.quality.semantic
    if not settings.cache.enabled:
        return None
    if previous is not None and previous.semantic_cache is not None:
        before = previous.config.policy.quality.semantic
        if (before.cache, before.embedding_model) == (settings.cache, settings.embedding_model):
            return previous.semantic_cache
    return SemanticCacheState(settings.embedding_model, settings.cache)


def _semantic(config: SidecarConfig, previous: Snapshot | None) -> SemanticState | None:
    """The semantic router ``config`` asks for: the previous one (what it learned kept) when
    its settings and examples are unchanged."""
    settings = config.policy.quality.semantic
    if not settings.enabled:
        return None
    if (
        previous is not None
        and previous.semantic is not None
        and previous.config.policy.quality.semantic == settings
        and previous.config.semantic_examples == config.semantic_examples
    ):
        return previous.semantic
    if not config.semantic_examples:
        log.warning(
            "quality.semantic is enabled but no labelled examples arrived "
            "(examplesConfigMapRef); the keyword complexity score is used"
        )
        return None
    try:
        examples = parse_examples(config.semantic_examples)
    except ValueError as exc:
        log.error("quality.semantic: the examples can't be read (%s); keywords are used", exc)
        return None
    return SemanticState(settings.embedding_model, examples)


def _model_tier(
    config: SidecarConfig, previous: Snapshot | None
) -> tuple[ModelTierRunner | None, str | None]:
    """The model tier ``config`` asks for: reused when its settings are unchanged, loaded
    otherwise (a pipeline takes a second or two); the error when it can't load."""
    settings = config.policy.redaction.model
    if not (config.policy.redaction.enabled and settings.enabled):
        return None, None
    if previous is not None:
        before = previous.config.policy.redaction
        if before.enabled and before.model == settings:
            return previous.model_tier, previous.model_tier_error
    try:
        return ModelTierRunner.load(ModelTier.load(settings)), None
    except ModelTierError as exc:
        # The policy still applies, with the cloud closed to it: fail closed, loudly.
        log.error("%s; no request leaves for the cloud until it loads", exc)
        return None, str(exc)


def _rule_entities(config: SidecarConfig, known: tuple[str, ...]) -> frozenset[str]:
    """Entities the ``containsPII: true`` rules ask about (a rule naming none: all)."""
    found: set[str] = set()
    for rule in config.policy.rules:
        if rule.match.contains_pii is True:
            found.update([e.value for e in rule.match.pii_entities] or known)
    return frozenset(found)
