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

Columns: share of requests sent to the cloud, total cloud spend, p50/p95 latency from
arrival to answer (answered requests), SLO misses (answers slower than the latency target,
plus failures), failures (requests refused or failed with no fallback).

The circuit breaker is read as the core reads it (``RoutingCore._signals``: open means
"cloud not allowed" until a cloud call moves it to half-open); ``--probe-after-cooldown``
lets an open circuit past its cooldown be tried again.
"""

from __future__ import annotations

import argparse
import heapq
import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast

import numpy as np

from clawdbot_api.v1alpha1.routingpolicy import RoutingPolicySpec
from clawdbot_sidecar.accounting.budgets import BudgetTracker
from clawdbot_sidecar.accounting.ledger import reward
from clawdbot_sidecar.routing.decision import Arm, Bandit, Decision, Signals, decide
from clawdbot_sidecar.routing.features import Features
from clawdbot_sidecar.upstream.breaker import BreakerState, CircuitBreaker

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
        out.append(
            Request(
                rid=len(out),
                arrival=t,
                prompt_tokens=prompt,
                max_tokens=max_tokens,
                completion_tokens=int(max_tokens * rng.uniform(0.3, 1.0)),
                complexity=float(rng.beta(2, 5)),
                cloud_jitter=float(rng.lognormal(math.log(0.3), 0.5)),
                cloud_slow=bool(rng.random() < 0.02),
            )
        )


def local_service_s(r: Request) -> float:
    return 0.08 + 0.0002 * r.prompt_tokens + 0.006 * r.completion_tokens


def cloud_latency_s(r: Request) -> float:
    base = 0.25 + r.cloud_jitter + 0.004 * r.completion_tokens
    return base * 3 if r.cloud_slow else base


@dataclass
class Outcome:
    latency_s: float
    ok: bool
    cloud: bool
    cost_usd: float


@dataclass
class Sim:
    """One strategy over one trace."""

    policy: RoutingPolicySpec
    bandit: Bandit
    outages: list[tuple[float, float]]
    slots: int
    probe_after_cooldown: bool = False
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
            # As the core computes it (RoutingCore._signals): open means not allowed, even
            # past the cooldown. With probe_after_cooldown, an open circuit whose cooldown
            # has run counts as allowed, so the next cloud-bound request is the probe.
            cloud_allowed=self.breaker.state != BreakerState.OPEN
            or (
                self.probe_after_cooldown
                and now - self.breaker.opened_at >= self.breaker.cooldown_s
            ),
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
            if kind == "arrive":
                self.arrive(payload, now)
            elif kind == "local-done":
                r, decision, fell_back = payload
                self.busy -= 1
                latency = now - r.arrival
                a = EWMA_ALPHA
                self.local_latency_ewma = (1 - a) * self.local_latency_ewma + a * latency
                self.finish(r, decision, now, ok=True, cloud=False, fell_back=fell_back)
                if self.waiting:
                    self.start_local(*self.waiting.popleft(), now)
            elif kind == "cloud-done":
                r, decision, ok, started = payload
                self.breaker.record(ok, now)
                a = EWMA_ALPHA
                if ok:
                    self.cloud_latency_ewma = (1 - a) * self.cloud_latency_ewma + a * (
                        now - started
                    )
                self.cloud_error_ewma = (1 - a) * self.cloud_error_ewma + a * (0.0 if ok else 1.0)
                if ok:
                    self.finish(r, decision, now, ok=True, cloud=True, fell_back=False)
                elif self.policy.fallback.cloud_to_local:
                    self.enqueue_local(r, decision, now, fell_back=True)
                else:
                    self.finish(r, decision, now, ok=False, cloud=True, fell_back=False)
        return self.results

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

    def call_cloud(self, r: Request, decision: Decision, now: float) -> None:
        if not self.breaker.allow(now):  # open: the core falls back without calling
            if self.policy.fallback.cloud_to_local:
                self.enqueue_local(r, decision, now, fell_back=True)
            else:
                self.results[r.rid] = Outcome(now - r.arrival, False, True, 0.0)
            return
        ok = not self.in_outage(now)
        done = now + (cloud_latency_s(r) if ok else CLOUD_FAIL_AFTER_S)
        self.push(done, "cloud-done", (r, decision, ok, now))

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
        self.results[r.rid] = Outcome(latency, ok, cloud, cost)
        if decision.context is not None and not fell_back:
            # As the core does: the outcome of an adaptive choice, unless it fell back.
            rw = reward(ok, latency, cost, self.policy.adaptive)
            self.bandit.update(cast(Arm, decision.target), decision.context, rw)


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
            {"defaultTarget": "adaptive", "adaptive": {"costWeight": 1.0}}, slo_ms
        ),
        f"adaptive (costWeight {weight:g})": policy(
            {"defaultTarget": "adaptive", "adaptive": {"costWeight": weight}}, slo_ms
        ),
    }


def summarize(
    name: str, trace: list[Request], res: dict[int, Outcome], slo_s: float
) -> dict[str, Any]:
    lat = np.array([res[r.rid].latency_s for r in trace])
    ok = np.array([res[r.rid].ok for r in trace])
    answered = lat[ok] if ok.any() else np.array([math.nan])
    return {
        "name": name,
        "cloud": float(np.mean([res[r.rid].cloud for r in trace])),
        "cost": sum(o.cost_usd for o in res.values()),
        "p50": float(np.percentile(answered, 50)),
        "p95": float(np.percentile(answered, 95)),
        "miss": int(np.sum((lat > slo_s) | ~ok)),
        "failed": int(np.sum(~ok)),
    }


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
    p.add_argument(
        "--probe-after-cooldown",
        action="store_true",
        help="treat an open circuit past its cooldown as allowed (the core does not, yet)",
    )
    args = p.parse_args()
    outages = [
        (float(a), float(b)) for a, b in (w.split("-") for w in args.outages.split(",") if w)
    ]
    trace = make_trace(args)
    slo_s = args.slo_ms / 1000.0
    offered = sum(local_service_s(r) for r in trace) / (args.minutes * 60 * args.local_slots)
    print(
        f"{len(trace)} requests over {args.minutes:g} simulated minutes (seed {args.seed}); "
        f"all-local GPU utilisation would be {offered:.0%}; "
        f"cloud outages {args.outages} s; SLO {args.slo_ms} ms\n"
    )
    rows = []
    make_bandit: Callable[[RoutingPolicySpec], Bandit] = lambda s: Bandit(s.adaptive, seed=1)  # noqa: E731
    for name, spec in strategies(args.slo_ms, args.cost_weight).items():
        sim = Sim(spec, make_bandit(spec), outages, args.local_slots, args.probe_after_cooldown)
        rows.append(summarize(name, trace, sim.run(trace), slo_s))
    print(
        f"{'strategy':26s} {'cloud':>6s} {'cost $':>8s} {'p50 s':>7s} {'p95 s':>8s}"
        f" {'SLO miss':>9s} {'miss %':>7s} {'failed':>7s}"
    )
    print("-" * 84)
    for row in rows:
        print(
            f"{row['name']:26s} {row['cloud']:6.0%} {row['cost']:8.2f} {row['p50']:7.2f}"
            f" {row['p95']:8.2f} {row['miss']:9d} {row['miss'] / len(trace):7.1%}"
            f" {row['failed']:7d}"
        )


if __name__ == "__main__":
    main()
