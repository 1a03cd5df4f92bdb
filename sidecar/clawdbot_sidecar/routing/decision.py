"""Where a request goes: the policy's ordered rules, then a contextual bandit, then guards.

The decision is a pure function of the request's features, the current signals (local load,
cloud health, budgets) and the bandit's learned state, so it is unit-testable without any
server. Every decision carries a reason that ends up in the ``x-clawdbot-reason`` header, the
``clawdbot_sidecar_decisions_total`` metric and the audit log:

=============================  =============================================================
``rule:<name>``                the first matching rule chose the target
``default``                    no rule matched; ``defaultTarget`` chose it
``adaptive:<algorithm>``       the bandit chose between local and cloud
``adaptive:only-<target>``     adaptive, but only one target can answer now
``redaction-block:<ENT>``      cloud was chosen, but the prompt holds an entity in block mode
``unredacted:<ENT>``           cloud was chosen, but the prompt holds an entity a PII rule
                               names that redaction does not cover
``uninspectable:<kinds>``      cloud was chosen, but the request holds content redaction
                               can't inspect (image, audio, file, token-ids)
``budget:<name>``              cloud was chosen, but a budget is spent
``cloud-unavailable``          cloud was chosen, but it is not configured or its circuit is open
``local-unavailable``          local was chosen, but no local endpoint is healthy
``local-overloaded``           local was chosen, but every endpoint's queue is over the limit
``embeddings:<target>``        embeddings left to adaptive: the policy's side for them
``embeddings:no-cloud-model``  embeddings bound for a cloud without ``embeddingModel``
=============================  =============================================================

Embeddings are pinned to one side: vectors from the local model and from the cloud's are
not comparable, so the bandit does not choose for them and no guard moves them across.

A decision is *private* when the request must not leave the pod: the rule that decided
(a local or cascade one) matched on PII (``containsPII: true``), or the prompt holds a
blocked or unredacted entity or uninspectable content. No guard, fallback or cascade
escalation sends a private request to the cloud; it is queued locally or refused instead.

``cascade`` decides like ``local`` (the same guards); the decision says whether the cloud
may be asked when the local answer turns out unsure, and if not, why.
"""

from __future__ import annotations

import dataclasses
import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

from clawdbot_api.v1alpha1.routingpolicy import (
    Adaptive,
    AdaptiveAlgorithm,
    RoutingPolicySpec,
    RuleMatch,
    Target,
)
from clawdbot_sidecar.routing.features import Features

Route = Literal["local", "cloud", "reject"]
Arm = Literal["local", "cloud"]
ARMS: tuple[Arm, Arm] = ("local", "cloud")
Vector = tuple[float, ...]

# Feature scales: each context value is squashed to about [0, 1] so that one exploration
# strength suits all of them.
TOKENS_SCALE = 2000.0
QUEUE_SCALE = 16.0
LATENCY_SCALE_S = 5.0
PRICE_SCALE_USD = 0.01


@dataclass(frozen=True)
class Signals:
    """The state of the targets at decision time."""

    local_healthy: int
    """Local endpoints not ejected."""
    local_queue: int
    """In-flight requests on the least loaded healthy local endpoint."""
    local_latency_s: float
    """Recent local latency (moving average; 0 when unknown)."""
    cloud_configured: bool
    cloud_allowed: bool
    """Configured and the circuit breaker lets a call through."""
    cloud_latency_s: float
    cloud_error_rate: float
    cloud_price_usd: float
    """Estimated price of this request at the cloud's rates."""
    budget_exhausted: str | None
    """Name of the spent cloud budget, if any."""


@dataclass(frozen=True)
class Decision:
    """A routing decision and why it was made."""

    target: Route
    reason: str
    context: tuple[float, ...] | None = None
    """The bandit's context when it chose, so the outcome can be fed back; else None."""
    private: bool = False
    """The request must not leave for the cloud, by any guard or fallback."""
    cascade: bool = False
    """A cascade: the local answer first, the cloud's if local's confidence is low."""
    escalation_blocker: str | None = None
    """For a cascade, why the cloud may not be asked (a guard reason, ``private``)."""

    @property
    def adaptive(self) -> bool:
        return self.context is not None


def rule_matches(match: RuleMatch, f: Features) -> bool:
    """Whether every condition of ``match`` holds for the request."""
    if match.max_tokens is not None and f.tokens > match.max_tokens:
        return False
    if match.min_tokens is not None and f.tokens < match.min_tokens:
        return False
    if match.contains_pii is not None:
        wanted = {e.value for e in match.pii_entities} or set(f.pii)
        present = any(f.pii.get(e, 0) > 0 for e in wanted)
        if present != match.contains_pii:
            return False
    if match.models and f.model not in match.models:
        return False
    for header in match.headers:
        value = f.headers.get(header.name.lower())
        if value is None or (header.value is not None and value != header.value):
            return False
    return True


def context_vector(f: Features, s: Signals) -> Vector:
    """The bandit's context: a bias term plus request and target state, each about [0, 1]."""
    return (
        1.0,
        min(f.tokens / TOKENS_SCALE, 4.0),
        f.complexity,
        min(s.local_queue / QUEUE_SCALE, 2.0),
        min(s.local_latency_s / LATENCY_SCALE_S, 2.0),
        min(s.cloud_latency_s / LATENCY_SCALE_S, 2.0),
        s.cloud_error_rate,
        min(s.cloud_price_usd / PRICE_SCALE_USD, 4.0),
    )


CONTEXT_DIM = 8
MAX_REWARD = 1.0


def _dot(a: Sequence[float], b: Sequence[float]) -> float:
    return math.fsum(x * y for x, y in zip(a, b, strict=True))


def _matvec(m: list[list[float]], x: Sequence[float]) -> list[float]:
    return [_dot(row, x) for row in m]


def _cholesky(m: list[list[float]]) -> list[list[float]]:
    """The lower-triangular L with L @ L.T == m, for a symmetric positive-definite m."""
    n = len(m)
    low = [[0.0] * n for _ in range(n)]
    for i in range(n):
        for j in range(i + 1):
            acc = m[i][j] - math.fsum(low[i][k] * low[j][k] for k in range(j))
            if i == j:
                # Rounding can leave a tiny negative pivot on a near-singular A^-1.
                low[i][j] = math.sqrt(max(acc, 1e-12))
            else:
                low[i][j] = acc / low[j][j]
    return low


def _identity(n: int) -> list[list[float]]:
    return [[1.0 if i == j else 0.0 for j in range(n)] for i in range(n)]


@dataclass
class _ArmModel:
    """Ridge regression of reward on context, kept as A^-1 (Sherman-Morrison updates).

    Eight dimensions: plain Python lists cost a few microseconds per update, less than
    importing an array library into every client pod would cost in memory.
    """

    a_inv: list[list[float]] = field(default_factory=lambda: _identity(CONTEXT_DIM))
    # Optimistic prior: the bias weight starts at the best possible reward, so an arm that
    # had one bad draw early is still tried until the data say otherwise (a small
    # exploration setting alone would let the first lucky arm take all traffic).
    b: list[float] = field(default_factory=lambda: [MAX_REWARD] + [0.0] * (CONTEXT_DIM - 1))
    pulls: int = 0

    @property
    def theta(self) -> list[float]:
        return _matvec(self.a_inv, self.b)

    def update(self, x: Sequence[float], r: float) -> None:
        ax = _matvec(self.a_inv, x)
        denominator = 1.0 + _dot(x, ax)
        for i, row in enumerate(self.a_inv):
            scale = ax[i] / denominator
            for j in range(CONTEXT_DIM):
                row[j] -= scale * ax[j]
        for i, v in enumerate(x):
            self.b[i] += r * v
        self.pulls += 1


class Bandit:
    """A contextual bandit over the two targets; learns online from observed rewards.

    linUCB (Li et al., 2010) picks the arm with the highest upper confidence bound on the
    predicted reward; thompsonSampling samples the weights from their posterior;
    epsilonGreedy exploits the mean and explores uniformly with probability ``exploration``.
    Arms start from the same optimistic prior, so early traffic explores both.
    """

    def __init__(self, adaptive: Adaptive, *, seed: int | None = None) -> None:
        self.adaptive = adaptive
        self.arms: dict[Arm, _ArmModel] = {arm: _ArmModel() for arm in ARMS}
        self._rng = random.Random(seed)

    def scores(self, x: Vector) -> dict[Arm, float]:
        """The score each arm gets for context ``x`` under the configured algorithm."""
        alpha = self.adaptive.exploration
        algorithm = self.adaptive.algorithm
        out: dict[Arm, float] = {}
        for arm, m in self.arms.items():
            theta = m.theta
            if algorithm == AdaptiveAlgorithm.LINUCB:
                spread = _dot(x, _matvec(m.a_inv, x))
                out[arm] = _dot(theta, x) + alpha * math.sqrt(max(spread, 0.0))
            elif algorithm == AdaptiveAlgorithm.THOMPSON:
                # theta + alpha * L z, z standard normal: a draw from N(theta, alpha^2 A^-1).
                low = _cholesky(m.a_inv)
                z = [self._rng.gauss(0.0, 1.0) for _ in range(CONTEXT_DIM)]
                noise = _matvec(low, z)
                out[arm] = _dot([t + alpha * e for t, e in zip(theta, noise, strict=True)], x)
            else:
                out[arm] = _dot(theta, x)
        return out

    def choose(self, x: Vector) -> Arm:
        if (
            self.adaptive.algorithm == AdaptiveAlgorithm.EPSILON_GREEDY
            and self._rng.random() < self.adaptive.exploration
        ):
            return ARMS[self._rng.randrange(2)]
        scores = self.scores(x)
        return max(ARMS, key=lambda arm: scores[arm])

    def update(self, arm: Arm, context: Sequence[float], r: float) -> None:
        self.arms[arm].update(context, r)

    def correct(self, arm: Arm, context: Sequence[float], delta: float) -> None:
        """Replace an observed reward r by r + delta for ``context``, as if it had been
        observed so: in ridge regression only b moves (b += delta x), A is unchanged."""
        model = self.arms[arm]
        for i, v in enumerate(context):
            model.b[i] += delta * v


def _rule_target(policy: RoutingPolicySpec, f: Features) -> tuple[Target, str, bool]:
    """The target, its reason, and whether the deciding rule matched on PII."""
    for rule in policy.rules:
        if rule_matches(rule.match, f):
            return rule.target, f"rule:{rule.name}", rule.match.contains_pii is True
    return policy.default_target, "default", False


def decide(
    policy: RoutingPolicySpec,
    f: Features,
    s: Signals,
    bandit: Bandit,
    blocked_entities: Mapping[str, int] | None = None,
    *,
    embeddings: bool = False,
    keep_local: str | None = None,
) -> Decision:
    """Route one request (see the module docstring for the reasons).

    ``blocked_entities``: entities found in the prompt whose redaction mode is block; such a
    prompt never goes to the cloud. ``keep_local``: another reason the request must not
    leave (``unredacted:<ENT>``, ``uninspectable:<kinds>``), or None. ``embeddings``: the
    request asks for embeddings, which stay on one side (see :func:`_decide_embeddings`).
    """
    target, reason, pii_rule = _rule_target(policy, f)
    if target == Target.REJECT:
        return Decision("reject", reason)
    blocked = sorted(e for e, n in (blocked_entities or {}).items() if n > 0)
    must_stay = f"redaction-block:{blocked[0]}" if blocked else keep_local
    # A rule that keeps PII local means it: no guard, fallback or escalation sends it out.
    private = must_stay is not None or (pii_rule and target in (Target.LOCAL, Target.CASCADE))
    cloud_blocker = (
        must_stay
        if must_stay is not None
        else f"budget:{s.budget_exhausted}"
        if s.budget_exhausted
        else None
        if s.cloud_allowed
        else "cloud-unavailable"
    )  # fmt: skip
    if embeddings:
        local_ok = s.local_healthy > 0
        return _decide_embeddings(policy, target, reason, local_ok, cloud_blocker)
    cascade = target == Target.CASCADE
    decision = _route(
        policy,
        f,
        s,
        bandit,
        (Target.LOCAL if cascade else target, reason),
        cloud_blocker=cloud_blocker,
        private=private,
    )
    if cascade and decision.target == "local":
        blocker = cloud_blocker or ("private" if private else None)
        decision = dataclasses.replace(decision, cascade=True, escalation_blocker=blocker)
    return dataclasses.replace(decision, private=True) if private else decision


def _route(
    policy: RoutingPolicySpec,
    f: Features,
    s: Signals,
    bandit: Bandit,
    chosen: tuple[Target, str],
    *,
    cloud_blocker: str | None,
    private: bool,
) -> Decision:
    """The guards after the rules: health, load, budgets, and what may not leave."""
    target, reason = chosen
    local_ok = s.local_healthy > 0
    local_free = local_ok and s.local_queue < policy.fallback.max_local_queue
    if target == Target.ADAPTIVE:
        if cloud_blocker is not None:
            return Decision("local", cloud_blocker if s.cloud_configured else "adaptive:only-local")
        if not local_free:
            return Decision("cloud", "adaptive:only-cloud")
        x = context_vector(f, s)
        arm = bandit.choose(x)
        return Decision(arm, f"adaptive:{policy.adaptive.algorithm.value}", x)

    if target == Target.CLOUD:
        if cloud_blocker is None:
            return Decision("cloud", reason)
        if private or policy.fallback.cloud_to_local:
            # What must not leave goes local whatever the fallback setting.
            return Decision("local", cloud_blocker)
        return Decision("reject", cloud_blocker)

    # target == local
    if local_free:
        return Decision("local", reason)
    why = "local-overloaded" if local_ok else "local-unavailable"
    if policy.fallback.local_to_cloud and cloud_blocker is None and not private:
        return Decision("cloud", why)
    if local_ok:
        # Overloaded but up: queue locally rather than refuse.
        return Decision("local", why)
    return Decision("reject", why)


def _decide_embeddings(
    policy: RoutingPolicySpec,
    target: Target,
    reason: str,
    local_ok: bool,
    cloud_blocker: str | None,
) -> Decision:
    """Embeddings go where the rules say, or refused; never to the other side instead.

    An app compares the vectors it stores with the vectors of later queries; a vector from
    another model is not comparable (different space, often another dimension), so an
    answer from the other side would be silently wrong. Left to ``adaptive``, they go local
    when the policy has local models (else to the cloud's embedding model): a fixed side,
    not a learned one.
    """
    cloud_embeds = policy.cloud is not None and policy.cloud.embedding_model is not None
    if target == Target.ADAPTIVE:
        side = Target.LOCAL if policy.local_models or not cloud_embeds else Target.CLOUD
        target, reason = side, f"embeddings:{side.value}"
    if target == Target.CLOUD:
        if not cloud_embeds:
            return Decision("reject", "embeddings:no-cloud-model")
        if cloud_blocker is not None:
            return Decision("reject", cloud_blocker)
        return Decision("cloud", reason)
    if local_ok:
        return Decision("local", reason)  # busy or not: queueing beats another model
    return Decision("reject", "local-unavailable")
