"""Routing simulator: local GPU vs cloud, per routing strategy, in simulated time.

A discrete-event simulation of one pod's traffic over ``--minutes`` of simulated time
(seeded; no wall clock, no network). The routing decisions are the sidecar's own code:
:func:`clawdbot_sidecar.routing.decision.decide` with a real ``RoutingPolicySpec``, the real
:class:`~clawdbot_sidecar.routing.decision.Bandit` fed
:func:`~clawdbot_sidecar.accounting.ledger.reward` as outcomes complete, the real circuit
breaker and the cloud's price from the real budget tracker. What is simulated are the
targets and the traffic:

- **traffic**: Poisson arrivals at ``--rate`` (2.5) req/s, with a burst at ``--burst-factor`` times
  that rate for ``--burst-s`` seconds every ``--burst-every-s``; prompt sizes lognormal
  (median ~400 tokens, a long tail to 8000), ``max_tokens`` 128/256/512, answers 30-100 %
  of that;
- **local GPU**: ``--local-slots`` requests served at once (continuous batching seen as a
  multi-server queue), FIFO beyond that; service time 0.08 s + 0.2 ms per prompt token +
  6 ms per generated token; no marginal price;
- **cloud**: 0.25 s + lognormal time to first token + 4 ms per generated token, 2 % of calls
  3x slower; ``outage`` windows where every call fails after 2 s (503); priced per token.

Strategies (each a policy for ``decide``, same trace): ``always-local``; ``always-cloud``;
``static`` (the seed's rules: up to 512 prompt tokens -> local, up to 2048 -> cloud, longer
ones cloud too); ``adaptive`` (``defaultTarget: adaptive``, linUCB) at two cost weights.
Every strategy but the two "always" ones keeps the policy's default fallbacks (a failed
cloud call is retried locally; a local queue over ``maxLocalQueue`` spills to the cloud).

    .venv/bin/python bench/router_sim.py [--minutes 60] [--seed 7] [--slo-ms 2000]
    .venv/bin/python bench/router_sim.py --trace FILE        # replay a JSON-lines trace
    .venv/bin/python bench/router_sim.py --write-trace FILE  # save the generated one

**Answer quality.** Each request has a hidden difficulty in [0, 1] (Beta(2, 2.5)); the
router sees only the keyword complexity score, modelled as the difficulty plus noise
(sd ``--complexity-noise``, 0.2). The local model's answer is good with probability
``0.97 - 0.75 d^1.3`` (95 % for easy prompts, 22 % for the hardest), the cloud's with
``0.97 - 0.15 d`` (82 % at worst); one uniform draw per request decides for every strategy.
The local answer's confidence (the geometric-mean token probability the sidecar measures)
is ``0.3 + 0.4 p_local(d) + 0.15 [good] + noise`` (sd ``--confidence-noise``, 0.08):
it follows how hard the prompt is for the model and, more weakly, whether this answer
was right. Feedback (the real :class:`~clawdbot_sidecar.accounting.feedback.FeedbackBook`,
scoring the answer 1 if good, 0 if not) arrives ``--feedback-delay-s`` (20) after the
answer for ``--feedback-fraction`` (0.3) of answers. Quality is the share of good
answers (a failure is not one).

Strategies added for quality: ``adaptive`` (the bandit as it learned before feedback
existed: ``qualityWeight: 0``), ``quality-aware bandit`` (``qualityWeight`` > 0, corrected by
feedback), ``cascade`` (``defaultTarget: cascade``: local first, the cloud when the local
answer's confidence is under the threshold; its latency is both calls). The last table
sweeps the cascade's threshold and the quality-aware bandit's ``qualityWeight`` and prints
the cheapest setting reaching 95 % of always-cloud quality (RouteLLM's "cost at equal
quality"), as a share of always-cloud's cost.

**Trace format** (``--trace FILE``): one JSON object per line, one request each, in arrival
order. Required: ``t`` (arrival, seconds from the start), ``prompt_tokens``,
``completion_tokens``. Optional (drawn from the seeded models above when absent):
``max_tokens`` (else ``completion_tokens``), ``complexity`` (the router's keyword score,
0-1), ``difficulty`` (0-1), ``local_good`` and ``cloud_good`` (booleans: whether each
target's answer to it is good), ``local_confidence`` (0-1), ``feedback`` (boolean: whether
the app scores this answer), ``cloud_latency_s`` (the cloud's time for it, overriding the
latency model). Example line::

    {"t": 0.84, "prompt_tokens": 412, "completion_tokens": 180, "max_tokens": 256,
     "complexity": 0.31, "local_good": true, "cloud_good": true, "local_confidence": 0.71}

Columns: share of requests sent to the cloud, total cloud spend, p50/p95 latency from
arrival to answer (answered requests), SLO misses (answers slower than the latency target,
plus failures), failures (requests refused or failed with no fallback).

The circuit breaker is read as the core reads it (``RoutingCore._signals``:
``CircuitBreaker.available``, so an open circuit past its cooldown is tried again).
"""

from __future__ import annotations

import argparse
import heapq
import json
import math
from collections import deque
from dataclasses import dataclass, field
from typing import Any, cast

import numpy as np

from clawdbot_api.v1alpha1.routingpolicy import RoutingPolicySpec
from clawdbot_sidecar.accounting.budgets import BudgetTracker
from clawdbot_sidecar.accounting.feedback import FeedbackBook, Remembered, quality_term
from clawdbot_sidecar.accounting.ledger import reward
from clawdbot_sidecar.routing.decision import Arm, Bandit, Decision, Signals, decide
from clawdbot_sidecar.routing.features import Features
from clawdbot_sidecar.upstream.breaker import CircuitBreaker

PRICING = {"inputPerMillionTokens": 2.5, "outputPerMillionTokens": 10.0}
CLOUD_FAIL_AFTER_S = 2.0
EWMA_ALPHA = 0.1  # the core's CLOUD_EWMA_ALPHA


@dataclass
class Request:
    rid: int
    arrival: float
    prompt_tokens: int
    max_tokens: int
    completion_tokens: int
    complexity: float
    cloud_jitter: float
    """Drawn once per request, so every strategy sees the same cloud latency for it."""
    cloud_slow: bool
    difficulty: float = 0.0
    local_good: bool = True
    cloud_good: bool = True
    local_confidence: float = 1.0
    feedback: bool = False
    cloud_latency: float | None = None
    """Replayed traces: the cloud's latency for this request, as recorded."""


def p_local(d: float) -> float:
    """Probability that the local model's answer to a prompt of difficulty d is good."""
    return 0.97 - 0.75 * math.pow(d, 1.3)


def p_cloud(d: float) -> float:
    return 0.97 - 0.15 * d


def add_quality(r: Request, rng: np.random.Generator, args: argparse.Namespace) -> Request:
    """The hidden quality model's draws for one request (see the module docstring)."""
    u = float(rng.random())
    r.local_good = u < p_local(r.difficulty)
    r.cloud_good = u < p_cloud(r.difficulty)
    noise = float(rng.normal(0.0, args.confidence_noise))
    conf = 0.3 + 0.4 * p_local(r.difficulty) + 0.15 * r.local_good + noise
    r.local_confidence = float(np.clip(conf, 0.0, 1.0))
    r.feedback = bool(rng.random() < args.feedback_fraction)
    return r


def make_trace(args: argparse.Namespace) -> list[Request]:
    rng = np.random.default_rng(args.seed)
    horizon = args.minutes * 60.0
    out: list[Request] = []
    t = 0.0
    while True:
        in_burst = (t % args.burst_every_s) >= args.burst_every_s - args.burst_s
        rate = args.rate * (args.burst_factor if in_burst else 1.0)
        t += float(rng.exponential(1.0 / rate))
        if t >= horizon:
            return out
        prompt = int(np.clip(rng.lognormal(math.log(400), 1.0), 10, 8000))
        max_tokens = int(rng.choice([128, 256, 512]))
        difficulty = float(rng.beta(2, 2.5))
        seen = difficulty + float(rng.normal(0.0, args.complexity_noise))
        r = Request(
            rid=len(out),
            arrival=t,
            prompt_tokens=prompt,
            max_tokens=max_tokens,
            completion_tokens=int(max_tokens * rng.uniform(0.3, 1.0)),
            complexity=float(np.clip(seen, 0.0, 1.0)),
            cloud_jitter=float(rng.lognormal(math.log(0.3), 0.5)),
            cloud_slow=bool(rng.random() < 0.02),
            difficulty=difficulty,
        )
        out.append(add_quality(r, rng, args))


def read_trace(path: str, args: argparse.Namespace) -> list[Request]:
    """A JSON-lines trace (format in the module docstring); absent fields are drawn."""
    rng = np.random.default_rng(args.seed)
    out: list[Request] = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
                t, prompt, completion = (
                    float(rec["t"]), int(rec["prompt_tokens"]), int(rec["completion_tokens"]),
                )  # fmt: skip
            except (ValueError, KeyError, TypeError) as exc:
                raise SystemExit(f"{path}:{n}: not a trace record ({exc})") from None
            difficulty = float(rec.get("difficulty", rng.beta(2, 2.5)))
            seen = difficulty + float(rng.normal(0.0, args.complexity_noise))
            r = Request(
                rid=len(out),
                arrival=t,
                prompt_tokens=prompt,
                max_tokens=int(rec.get("max_tokens", completion)),
                completion_tokens=completion,
                complexity=float(rec.get("complexity", np.clip(seen, 0.0, 1.0))),
                cloud_jitter=float(rng.lognormal(math.log(0.3), 0.5)),
                cloud_slow=False,
                difficulty=difficulty,
                cloud_latency=rec.get("cloud_latency_s"),
            )
            add_quality(r, rng, args)
            for name in ("local_good", "cloud_good", "feedback"):
                if name in rec:
                    setattr(r, name, bool(rec[name]))
            if "local_confidence" in rec:
                r.local_confidence = float(rec["local_confidence"])
            out.append(r)
    return out


def write_trace(path: str, trace: list[Request]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for r in trace:
            rec = {
                "t": round(r.arrival, 4), "prompt_tokens": r.prompt_tokens,
                "completion_tokens": r.completion_tokens, "max_tokens": r.max_tokens,
                "complexity": round(r.complexity, 4), "difficulty": round(r.difficulty, 4),
                "local_good": r.local_good, "cloud_good": r.cloud_good,
                "local_confidence": round(r.local_confidence, 4), "feedback": r.feedback,
                "cloud_latency_s": round(cloud_latency_s(r), 4),
            }  # fmt: skip
            f.write(json.dumps(rec) + "\n")


def local_service_s(r: Request) -> float:
    return 0.08 + 0.0002 * r.prompt_tokens + 0.006 * r.completion_tokens


def cloud_latency_s(r: Request) -> float:
    if r.cloud_latency is not None:
        return float(r.cloud_latency)
    base = 0.25 + r.cloud_jitter + 0.004 * r.completion_tokens
    return base * 3 if r.cloud_slow else base


@dataclass
class Outcome:
    latency_s: float
    ok: bool
    cloud: bool
    cost_usd: float
    good: bool = False
    """The answer was good (the quality model's draw for the target that answered)."""


@dataclass
class Sim:
    """One strategy over one trace."""

    policy: RoutingPolicySpec
    bandit: Bandit
    outages: list[tuple[float, float]]
    slots: int
    feedback_delay_s: float = 20.0
    events: list[tuple[float, int, str, Any]] = field(default_factory=list)
    seq: int = 0
    busy: int = 0
    waiting: deque[tuple[Request, Decision, bool]] = field(default_factory=deque)
    breaker: CircuitBreaker = field(default_factory=CircuitBreaker)
    cloud_latency_ewma: float = 0.0
    cloud_error_ewma: float = 0.0
    local_latency_ewma: float = 0.0
    results: dict[int, Outcome] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.budgets = BudgetTracker(self.policy.budgets, self.policy.cloud.pricing)  # type: ignore[union-attr]
        self.now = 0.0
        self.book = FeedbackBook(self.policy.quality.feedback, clock=lambda: self.now)
        self.escalated = 0

    def push(self, t: float, kind: str, payload: Any) -> None:
        self.seq += 1
        heapq.heappush(self.events, (t, self.seq, kind, payload))

    def in_outage(self, t: float) -> bool:
        return any(a <= t < b for a, b in self.outages)

    def signals(self, r: Request, now: float) -> Signals:
        return Signals(
            local_healthy=1,
            local_queue=self.busy + len(self.waiting),
            local_latency_s=self.local_latency_ewma,
            cloud_configured=True,
            # As the core computes it (RoutingCore._signals): closed, half-open with the
            # probe free, or open past its cooldown.
            cloud_allowed=self.breaker.available(now),
            cloud_latency_s=self.cloud_latency_ewma,
            cloud_error_rate=self.cloud_error_ewma,
            cloud_price_usd=self.budgets.cost_usd(r.prompt_tokens, r.max_tokens),
            budget_exhausted=None,
        )

    def run(self, trace: list[Request]) -> dict[int, Outcome]:
        for r in trace:
            self.push(r.arrival, "arrive", r)
        while self.events:
            now, _, kind, payload = heapq.heappop(self.events)
            self.now = now
            if kind == "arrive":
                self.arrive(payload, now)
            elif kind == "local-done":
                r, decision, fell_back = payload
                self.local_done(r, decision, fell_back, now)
            elif kind == "cloud-done":
                self.cloud_done(payload, now)
            elif kind == "feedback":
                answer_id, score = payload
                self.book.score(answer_id, score)
        return self.results

    def local_done(self, r: Request, decision: Decision, fell_back: bool, now: float) -> None:
        self.busy -= 1
        latency = now - r.arrival
        a = EWMA_ALPHA
        self.local_latency_ewma = (1 - a) * self.local_latency_ewma + a * latency
        if self.waiting:
            self.start_local(*self.waiting.popleft(), now)
        if self.escalate(r, decision, fell_back):
            self.escalated += 1
            self.call_cloud(r, decision, now, escalation=True)
        else:
            self.finish(r, decision, now, ok=True, cloud=False, fell_back=fell_back)

    def cloud_done(self, payload: tuple[Request, Decision, bool, float, bool], now: float) -> None:
        r, decision, ok, started, escalation = payload
        self.breaker.record(ok, now)
        a = EWMA_ALPHA
        if ok:
            self.cloud_latency_ewma = (1 - a) * self.cloud_latency_ewma + a * (now - started)
        self.cloud_error_ewma = (1 - a) * self.cloud_error_ewma + a * (0.0 if ok else 1.0)
        if ok:
            self.finish(r, decision, now, ok=True, cloud=True, fell_back=False)
        elif escalation:  # the cloud failed: the local answer stands
            self.finish(r, decision, now, ok=True, cloud=False, fell_back=False)
        elif self.policy.fallback.cloud_to_local:
            self.enqueue_local(r, decision, now, fell_back=True)
        else:
            self.finish(r, decision, now, ok=False, cloud=True, fell_back=False)

    def escalate(self, r: Request, decision: Decision, fell_back: bool) -> bool:
        """The cascade's choice once the local answer is in (as RoutingCore._cascade)."""
        if not decision.cascade or fell_back or decision.escalation_blocker is not None:
            return False
        threshold = self.policy.quality.cascade.threshold
        return r.local_confidence < threshold and self.breaker.available(self.now)

    def arrive(self, r: Request, now: float) -> None:
        features = Features(
            model="chat",
            tokens=r.prompt_tokens,
            complexity=r.complexity,
            pii={},
            headers={},
            stream=False,
        )
        decision = decide(self.policy, features, self.signals(r, now), self.bandit)
        if decision.target == "reject":
            self.results[r.rid] = Outcome(0.0, False, False, 0.0)
        elif decision.target == "local":
            self.enqueue_local(r, decision, now, fell_back=False)
        else:
            self.call_cloud(r, decision, now)

    def call_cloud(
        self, r: Request, decision: Decision, now: float, escalation: bool = False
    ) -> None:
        if not self.breaker.allow(now):  # open: the core falls back without calling
            if escalation:
                self.finish(r, decision, now, ok=True, cloud=False, fell_back=False)
            elif self.policy.fallback.cloud_to_local:
                self.enqueue_local(r, decision, now, fell_back=True)
            else:
                self.results[r.rid] = Outcome(now - r.arrival, False, True, 0.0)
            return
        ok = not self.in_outage(now)
        done = now + (cloud_latency_s(r) if ok else CLOUD_FAIL_AFTER_S)
        self.push(done, "cloud-done", (r, decision, ok, now, escalation))

    def enqueue_local(self, r: Request, decision: Decision, now: float, fell_back: bool) -> None:
        if self.busy < self.slots:
            self.start_local(r, decision, fell_back, now)
        else:
            self.waiting.append((r, decision, fell_back))

    def start_local(self, r: Request, decision: Decision, fell_back: bool, now: float) -> None:
        self.busy += 1
        self.push(now + local_service_s(r), "local-done", (r, decision, fell_back))

    def finish(
        self, r: Request, decision: Decision, now: float, *, ok: bool, cloud: bool, fell_back: bool
    ) -> None:
        latency = now - r.arrival
        cost = self.budgets.cost_usd(r.prompt_tokens, r.completion_tokens) if cloud and ok else 0.0
        good = ok and (r.cloud_good if cloud else r.local_good)
        self.results[r.rid] = Outcome(latency, ok, cloud, cost, good)
        learned = decision.context is not None and not fell_back
        if learned:
            # As the core does: the outcome of an adaptive choice, unless it fell back.
            assert decision.context is not None
            rw = reward(ok, latency, cost, self.policy.adaptive)
            self.bandit.update(cast(Arm, decision.target), decision.context, rw)
        if ok and r.feedback:
            answer_id = str(r.rid)
            weight = self.policy.adaptive.quality_weight
            self.book.remember(
                answer_id,
                Remembered(
                    at=now,
                    target="cloud" if cloud else "local",
                    reason=decision.reason,
                    arm=decision.target if learned else None,
                    context=decision.context if learned else None,
                    learner=self.bandit if learned else None,
                    quality_weight=weight,
                    applied=quality_term(None, weight),
                ),
            )
            self.push(now + self.feedback_delay_s, "feedback", (answer_id, float(good)))


def policy(spec: dict[str, Any], slo_ms: int) -> RoutingPolicySpec:
    base: dict[str, Any] = {
        "localModels": [{"name": "chat"}],
        "cloud": {"baseURL": "http://cloud.invalid/v1", "model": "chat", "pricing": PRICING},
        "audit": {"enabled": False},
    }
    base.update(spec)
    base.setdefault("adaptive", {})
    base["adaptive"] = {"latencyTargetMs": slo_ms, **base["adaptive"]}
    return RoutingPolicySpec.model_validate(base)


def strategies(slo_ms: int, weight: float) -> dict[str, RoutingPolicySpec]:
    no_fallback = {"localToCloud": False, "cloudToLocal": False, "maxLocalQueue": 1000000}
    return {
        "always-local": policy({"defaultTarget": "local", "fallback": no_fallback}, slo_ms),
        "always-cloud": policy({"defaultTarget": "cloud", "fallback": no_fallback}, slo_ms),
        "static": policy(
            {
                "rules": [
                    {"name": "short", "match": {"maxTokens": 512}, "target": "local"},
                    {"name": "medium", "match": {"maxTokens": 2048}, "target": "cloud"},
                ],
                "defaultTarget": "cloud",
            },
            slo_ms,
        ),
        "adaptive (costWeight 1)": policy(
            {"defaultTarget": "adaptive", "adaptive": {"costWeight": 1.0, "qualityWeight": 0}},
            slo_ms,
        ),
        f"adaptive (costWeight {weight:g})": policy(
            {"defaultTarget": "adaptive", "adaptive": {"costWeight": weight, "qualityWeight": 0}},
            slo_ms,
        ),
        f"quality bandit (cw {weight:g}, qw 2)": quality_bandit(slo_ms, weight, 2.0),
        "cascade (threshold 0.55)": cascade(slo_ms, 0.55),
    }


def quality_bandit(slo_ms: int, cost_weight: float, quality_weight: float) -> RoutingPolicySpec:
    """The bandit with feedback in its reward."""
    adaptive = {"costWeight": cost_weight, "qualityWeight": quality_weight}
    return policy({"defaultTarget": "adaptive", "adaptive": adaptive}, slo_ms)


def cascade(slo_ms: int, threshold: float) -> RoutingPolicySpec:
    return policy(
        {"defaultTarget": "cascade", "quality": {"cascade": {"threshold": threshold}}}, slo_ms
    )


def summarize(
    name: str, trace: list[Request], res: dict[int, Outcome], slo_s: float
) -> dict[str, Any]:
    lat = np.array([res[r.rid].latency_s for r in trace])
    ok = np.array([res[r.rid].ok for r in trace])
    answered = lat[ok] if ok.any() else np.array([math.nan])
    return {
        "name": name,
        "quality": float(np.mean([res[r.rid].good for r in trace])),
        "cloud": float(np.mean([res[r.rid].cloud for r in trace])),
        "cost": sum(o.cost_usd for o in res.values()),
        "p50": float(np.percentile(answered, 50)),
        "p95": float(np.percentile(answered, 95)),
        "miss": int(np.sum((lat > slo_s) | ~ok)),
        "failed": int(np.sum(~ok)),
    }


def run_one(
    spec: RoutingPolicySpec, trace: list[Request], args: argparse.Namespace
) -> dict[int, Outcome]:
    outages = [
        (float(a), float(b)) for a, b in (w.split("-") for w in args.outages.split(",") if w)
    ]
    sim = Sim(
        spec,
        Bandit(spec.adaptive, seed=1),
        outages,
        args.local_slots,
        feedback_delay_s=args.feedback_delay_s,
    )
    return sim.run(trace)


def equal_quality(
    trace: list[Request], args: argparse.Namespace, cloud: dict[str, Any], slo_s: float
) -> None:
    """The cheapest setting of each tunable strategy reaching 95 % of always-cloud quality."""
    target = 0.95 * cloud["quality"]
    sweeps: dict[str, list[tuple[str, RoutingPolicySpec]]] = {
        "cascade": [
            (f"threshold {t:.3f}", cascade(args.slo_ms, t)) for t in np.arange(0.40, 0.751, 0.025)
        ],
        "quality bandit": [
            (f"qualityWeight {w:g}", quality_bandit(args.slo_ms, args.cost_weight, w))
            for w in (0.5, 1, 2, 4, 8, 16)
        ],
    }
    print(
        f"\nCost at 95 % of always-cloud quality ({cloud['quality']:.1%} -> at least "
        f"{target:.1%}); always-cloud costs ${cloud['cost']:.2f}:\n"
    )
    print(f"{'strategy':16s} {'setting':22s} {'quality':>8s} {'cost $':>8s} {'of cloud':>9s}"
          f" {'p95 s':>7s} {'cloud':>6s}")  # fmt: skip
    print("-" * 82)
    for family, settings in sweeps.items():
        best: tuple[str, dict[str, Any]] | None = None
        for label, spec in settings:
            row = summarize(label, trace, run_one(spec, trace, args), slo_s)
            if row["quality"] >= target and (best is None or row["cost"] < best[1]["cost"]):
                best = (label, row)
        if best is None:
            print(f"{family:16s} {'(none reaches it)':22s}")
            continue
        label, row = best
        print(
            f"{family:16s} {label:22s} {row['quality']:8.1%} {row['cost']:8.2f}"
            f" {row['cost'] / cloud['cost']:9.1%} {row['p95']:7.2f} {row['cloud']:6.0%}"
        )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    p.add_argument("--minutes", type=float, default=60.0)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--rate", type=float, default=2.5, help="base arrivals per second")
    p.add_argument("--burst-factor", type=float, default=4.0)
    p.add_argument("--burst-s", type=float, default=60.0)
    p.add_argument("--burst-every-s", type=float, default=600.0)
    p.add_argument("--local-slots", type=int, default=6)
    p.add_argument("--slo-ms", type=int, default=2000, help="latency target (and the SLO)")
    p.add_argument("--cost-weight", type=float, default=100.0, help="second adaptive row")
    p.add_argument(
        "--outages",
        default="1170-1410,2970-3090",
        help="cloud outage windows, seconds from the start: a-b,c-d",
    )
    p.add_argument("--complexity-noise", type=float, default=0.2)
    p.add_argument("--confidence-noise", type=float, default=0.08)
    p.add_argument("--feedback-fraction", type=float, default=0.3)
    p.add_argument("--feedback-delay-s", type=float, default=20.0)
    p.add_argument("--trace", help="replay this JSON-lines trace instead of generating one")
    p.add_argument("--write-trace", help="write the trace used to this JSON-lines file")
    p.add_argument("--no-sweep", action="store_true", help="skip the equal-quality table")
    args = p.parse_args()
    trace = read_trace(args.trace, args) if args.trace else make_trace(args)
    if args.write_trace:
        write_trace(args.write_trace, trace)
    horizon = max((r.arrival for r in trace), default=0.0) or args.minutes * 60
    slo_s = args.slo_ms / 1000.0
    offered = sum(local_service_s(r) for r in trace) / (horizon * args.local_slots)
    source = args.trace or f"seed {args.seed}"
    print(
        f"{len(trace)} requests over {horizon / 60:.0f} simulated minutes ({source}); "
        f"all-local GPU utilisation would be {offered:.0%}; "
        f"cloud outages {args.outages} s; SLO {args.slo_ms} ms; "
        f"feedback on {args.feedback_fraction:.0%} of answers\n"
    )
    rows = []
    for name, spec in strategies(args.slo_ms, args.cost_weight).items():
        rows.append(summarize(name, trace, run_one(spec, trace, args), slo_s))
    print(
        f"{'strategy':32s} {'cloud':>6s} {'cost $':>8s} {'quality':>8s} {'p50 s':>7s}"
        f" {'p95 s':>8s} {'SLO miss':>9s} {'miss %':>7s} {'failed':>7s}"
    )
    print("-" * 99)
    for row in rows:
        print(
            f"{row['name']:32s} {row['cloud']:6.0%} {row['cost']:8.2f} {row['quality']:8.1%}"
            f" {row['p50']:7.2f} {row['p95']:8.2f} {row['miss']:9d}"
            f" {row['miss'] / len(trace):7.1%} {row['failed']:7d}"
        )
    if not args.no_sweep:
        cloud = next(r for r in rows if r["name"] == "always-cloud")
        equal_quality(trace, args, cloud, slo_s)


if __name__ == "__main__":
    main()
