"""Evolutionary search for the most accurate subnet under a target's latency budget.

Fitness is weight-sharing val top-1 (the supernet run at the arch, no training);
latency comes from the target's latency model, so an arch over budget is never
evaluated. Every evaluated arch is kept, and with it the Pareto front (lower
latency, higher top-1).

Inherited accuracy is a noisy ranking signal on small data, so the pick does not
rest on it alone (RF-DETR fine-tunes after its search): the ``top_k`` most
accurate front archs are measured for real on the target, those within budget
are briefly fine-tuned, and the best val top-1 after fine-tuning wins. Kendall's
tau between inherited and fine-tuned accuracy says how far the inherited ranking
could be trusted.
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace

from pipeline.errors import InputError
from pipeline.models.supernet import Arch, SearchSpace

log = logging.getLogger(__name__)


class BudgetError(InputError, ValueError):
    """The target's budget cannot be met by any arch of the space: a tighter space or a looser budget is needed."""


@dataclass
class Candidate:
    arch: Arch
    top1: float
    predicted_ms: float

    def to_dict(self) -> dict:
        return {"arch": self.arch.to_dict(), "name": self.arch.short(), "top1": self.top1,
                "predicted_ms": self.predicted_ms}


@dataclass
class SearchSettings:
    population: int
    generations: int
    parents: int
    mutations_per_gen: int
    crossovers_per_gen: int
    mutation_prob: float
    seed: int

    @classmethod
    def from_params(cls, p: dict, seed: int) -> SearchSettings:
        return cls(**{k: p[k] for k in cls.__dataclass_fields__ if k != "seed"}, seed=seed)


def pareto_front(cands: list[Candidate]) -> list[Candidate]:
    """Candidates no other beats on both latency and top-1, by rising latency (and so rising top-1)."""
    front: list[Candidate] = []
    for c in sorted(cands, key=lambda c: (c.predicted_ms, -c.top1)):
        if not front or c.top1 > front[-1].top1:
            front.append(c)
    return front


def mutate(arch: Arch, space: SearchSpace, rng: random.Random, prob: float) -> Arch:
    genes = {"depth": space.depths, "embed_dim": space.embed_dims, "mlp_ratio": space.mlp_ratios,
             "img_size": space.img_sizes}
    new = arch
    for name, choices in genes.items():
        if rng.random() < prob:
            new = replace(new, **{name: rng.choice(choices)})
    return new


def crossover(a: Arch, b: Arch, rng: random.Random) -> Arch:
    return Arch(**{k: rng.choice([getattr(a, k), getattr(b, k)]) for k in asdict(a)})


def evolutionary_search(
    space: SearchSpace,
    evaluate: Callable[[Arch], float],
    predict_ms: Callable[[Arch], float],
    budget_ms: float,
    settings: SearchSettings,
    allowed: Callable[[Arch], bool] = lambda a: True,
) -> tuple[list[Candidate], list[Candidate]]:
    """Return (every evaluated candidate, the Pareto front of those within budget)."""
    rng = random.Random(settings.seed)
    seen: dict[Arch, Candidate] = {}

    def feasible(a: Arch) -> bool:
        return space.valid(a) and allowed(a) and predict_ms(a) <= budget_ms

    def score(a: Arch) -> Candidate:
        if a not in seen:
            seen[a] = Candidate(a, evaluate(a), predict_ms(a))
        return seen[a]

    def draw(make: Callable[[], Arch], n: int, pool: set[Arch]) -> None:
        tries = 0
        target = len(pool) + n
        while len(pool) < target and tries < 50 * n:
            tries += 1
            a = make()
            if a not in pool and feasible(a):
                pool.add(a)

    population: set[Arch] = set()
    if feasible(space.smallest()):
        population.add(space.smallest())
    draw(lambda: space.sample(rng), settings.population - len(population), population)
    if not population:
        raise BudgetError(f"no arch of the space is predicted to meet the budget of {budget_ms} ms")
    for gen in range(settings.generations):
        ranked = sorted((score(a) for a in population), key=lambda c: (-c.top1, c.predicted_ms))
        parents = [c.arch for c in ranked[: settings.parents]]
        log.info("generation %d: best %s top-1 %.4f (%.3f ms predicted)", gen, ranked[0].arch.short(),
                 ranked[0].top1, ranked[0].predicted_ms)
        children: set[Arch] = set(parents)
        draw(lambda ps=parents: mutate(rng.choice(ps), space, rng, settings.mutation_prob),
             settings.mutations_per_gen, children)
        draw(lambda ps=parents: crossover(rng.choice(ps), rng.choice(ps), rng),
             settings.crossovers_per_gen, children)
        draw(lambda: space.sample(rng), max(0, settings.population - len(children)), children)
        population = children
    for a in population:
        score(a)
    evaluated = list(seen.values())
    return evaluated, pareto_front(evaluated)


def kendall_tau(a: list[float], b: list[float]) -> float | None:
    """Rank agreement of two scorings of the same archs (tau-b, ties allowed); None below 3 archs."""
    from scipy.stats import kendalltau

    if len(a) < 3:
        return None
    tau = kendalltau(a, b).statistic
    return None if tau != tau else float(tau)  # NaN when one side is constant


@dataclass
class Choice:
    candidate: Candidate
    measured_ms: float
    tried: list[dict]  # every front arch measured: inherited top-1, p50, within budget, fine-tuned val top-1
    tau: float | None  # Kendall tau, inherited vs fine-tuned val top-1, over the fine-tuned archs


FULLEST_MARGIN = 0.9  # the budget-spending candidate is predicted within 90 % of the budget: timing noise


def shortlist(front: list[Candidate], evaluated: list[Candidate], k: int, budget_ms: float) -> list[Candidate]:
    """The archs worth measuring, in order: the front by inherited top-1, then the other evaluated archs
    by inherited top-1, with the arch predicted closest to the budget moved up to the k-th place.

    Sandwich training fits the largest and smallest subnets best, so in-between archs, the big ones
    near the budget in particular, look worse inherited than they fine-tune; one of the k brief
    fine-tunes always goes to the arch that spends the budget (with a margin, so that it still
    measures within it).
    """
    by_top1 = sorted(front, key=lambda c: (-c.top1, c.predicted_ms))
    by_top1 += sorted((c for c in evaluated if c not in front), key=lambda c: (-c.top1, c.predicted_ms))
    inside = [c for c in evaluated if c.predicted_ms <= FULLEST_MARGIN * budget_ms] or evaluated
    fullest = max(inside, key=lambda c: (c.predicted_ms, c.top1))
    if k > 1 and fullest in by_top1[k - 1:]:
        by_top1.remove(fullest)
        by_top1.insert(k - 1, fullest)
    return by_top1


def within_noise(a: float, b: float, n: int) -> bool:
    """Whether top-1 ``a`` and ``b`` on the same ``n`` images differ by at most two standard errors of the
    difference (binomial, sqrt(p(1-p)/n) each): the val split cannot tell them apart."""
    se = math.hypot(math.sqrt(max(a * (1 - a), 0.0) / n), math.sqrt(max(b * (1 - b), 0.0) / n))
    return abs(a - b) <= 2 * se


def choose(front: list[Candidate], measure_ms: Callable[[Arch], float], budget_ms: float, *, top_k: int = 1,
           finetune_top1: Callable[[Arch, int], float] | None = None, evaluated: list[Candidate] | None = None,
           n_val: int | None = None) -> Choice:
    """Measure the shortlisted archs until ``top_k`` meet the budget; pick among those.

    With ``finetune_top1(arch, n)`` (a brief fine-tune, scored on val; ``n`` archs will be fine-tuned)
    the pick is the best fine-tuned arch; without it, the most accurate inherited one. With ``n_val`` (the
    val images behind those scores), every arch within two standard errors of the best counts as tied,
    and the pick is the slowest of them within budget: the val split gives no evidence against the arch
    with the most capacity, and a brief fine-tune underrates it most (bigger archs converge later).
    Without ``n_val``, ties go to the faster.
    """
    tried: list[dict] = []
    within: list[tuple[Candidate, float, dict]] = []
    for cand in shortlist(front, evaluated or front, top_k, budget_ms):
        measured = measure_ms(cand.arch)
        row = {**cand.to_dict(), "measured_ms": measured, "within_budget": measured <= budget_ms}
        tried.append(row)
        if measured <= budget_ms:
            within.append((cand, measured, row))
            if len(within) == top_k:
                break
        else:
            log.info("%s measured %.3f ms > budget %.3f ms; trying the next", cand.arch.short(), measured, budget_ms)
    if not within:
        raise BudgetError(f"no arch of the Pareto front meets the budget of {budget_ms} ms when measured: {tried}")
    if finetune_top1 is None or len(within) == 1:
        cand, measured, _ = within[0]
        return Choice(cand, measured, tried, None)
    # the most expensive first: under a time budget its step count becomes everyone's (pipeline.stages.search)
    for cand, _, row in sorted(within, key=lambda w: -w[0].predicted_ms):
        row["finetuned_top1"] = finetune_top1(cand.arch, len(within))
        log.info("%s: inherited %.4f, fine-tuned %.4f", cand.arch.short(), cand.top1, row["finetuned_top1"])
    cand, measured, _ = max(within, key=lambda w: (w[2]["finetuned_top1"], -w[1]))
    if n_val:
        best = max(w[2]["finetuned_top1"] for w in within)
        tied = [w for w in within if within_noise(best, w[2]["finetuned_top1"], n_val)]
        cand, measured, _ = max(tied, key=lambda w: (w[1], w[2]["finetuned_top1"]))
        for w in within:
            w[2]["tied_with_best"] = w in tied
    tau = kendall_tau([w[0].top1 for w in within], [w[2]["finetuned_top1"] for w in within])
    return Choice(cand, measured, tried, tau)
