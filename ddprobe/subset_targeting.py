"""Grow the agreement probe's subset pool toward the accuracies it must match (paper A.6, issue 14).

The paper compares a distilled-trained model with the subset-trained models whose test accuracy lies in a narrow
band around its own. A random pool need not cover that band (on digits none does), and comparing with the closest
models instead compares with models of another accuracy, which can flip the finding. So when fewer than
``min_matched`` pool members fall in a target's band, :func:`grow_subset_pool` trains extra members at fractions
aimed at the target: it fits the pool's learning curve (logit accuracy linear in log fraction), inverts it at the
target, trains one member at that fraction per round and target (members at one fraction differ by seed, which
spreads their accuracies), and repeats with the refitted pool until every target is matched, the budget is spent, or
a target is out of reach (more or less accurate than subsets of one image per class, or than the whole training set,
can be). Targeted members are cached one by one under their fraction and replicate index, and the search is
deterministic, so a rerun loads them instead of training them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .batched import Mode
from .pools import SubsetMember, SubsetPool, _member_parts, match_subset, subset_members

if TYPE_CHECKING:
    import torch

    from .training import TrainRecipe

#: Targeted members that must already sit at a fraction bound (one image per class, or the whole set) before a
#: target beyond it is declared out of reach.
AT_BOUND = 4


#: How far beyond the fractions tried one aim may reach (a factor), so a poor fit cannot overshoot wildly.
REACH = 4.0


def _logit(a: float) -> float:
    a = min(0.995, max(0.005, a))
    return math.log(a / (1 - a))


@dataclass(frozen=True)
class LearningCurve:
    """logit(accuracy) = intercept + slope * log(fraction), fitted over the fractions ``low``..``high``."""

    slope: float
    intercept: float
    low: float
    high: float
    median_logit: float

    @classmethod
    def fit(cls, fractions: Sequence[float], accuracies: Sequence[float]) -> LearningCurve:
        """Theil-Sen: the median of pairwise slopes, so a few unlucky models move the fit little."""
        import statistics

        if not fractions:
            raise ValueError("no subset models to aim from")
        xs = [math.log(f) for f in fractions]
        ys = [_logit(a) for a in accuracies]
        slopes = [(ys[j] - ys[i]) / (xs[j] - xs[i]) for i in range(len(xs)) for j in range(i + 1, len(xs))
                  if abs(xs[j] - xs[i]) > 1e-9]
        slope = statistics.median(slopes) if slopes else 0.0
        icept = statistics.median(y - slope * x for x, y in zip(xs, ys, strict=True))
        return cls(slope, icept, min(fractions), max(fractions), statistics.median(ys))

    def aim(self, target: float, floor: float, ceil: float = 1.0) -> float:
        """The fraction predicted to reach ``target``, at most :data:`REACH` times beyond the fractions fitted,
        within [floor, ceil]; without a rising fit, half the smallest or twice the largest fraction."""
        if self.slope <= 0:
            f = self.low / 2 if _logit(target) < self.median_logit else self.high * 2
        else:
            f = math.exp((_logit(target) - self.intercept) / self.slope)
            f = min(self.high * REACH, max(self.low / REACH, f))
        return min(ceil, max(floor, f))


def aim_fraction(fractions: Sequence[float], accuracies: Sequence[float], target: float, floor: float,
                 ceil: float = 1.0) -> float:
    """The fraction at which a subset model is predicted to reach ``target`` accuracy (see :class:`LearningCurve`)."""
    return LearningCurve.fit(fractions, accuracies).aim(target, floor, ceil)


def _key_fraction(f: float) -> float:
    """Fractions are rounded to 4 significant digits: what a targeted member's cache key and seed stream hold."""
    return float(f"{f:.4g}")


def targeted_rows(ctx: Any, fraction: float, replicate: int) -> tuple[float, torch.Tensor]:
    """Training rows of a targeted member: the first max(1, int(n_c * fraction)) of a per-class shuffle drawn from
    the stream ``pool:subset:target:<fraction>:<replicate>``."""
    import torch

    gen = ctx.rng(f"pool:subset:target:{fraction:.4g}:{replicate}")
    picks = []
    for idx in ctx.real.train.class_indices():
        keep = max(1, int(idx.numel() * fraction))
        picks.append(idx[torch.randperm(idx.numel(), generator=gen)[:keep]])
    return fraction, torch.cat(picks).sort().values


@dataclass
class Growth:
    """What growing the pool did: members added (cached or trained), members trained, targets out of reach."""

    added: int = 0
    trained: int = 0
    rounds: int = 0
    budget: int = 0
    unreachable: dict[float, str] = field(default_factory=dict)  # target accuracy -> why

    def to_json(self) -> dict[str, Any]:
        return {"added": self.added, "trained": self.trained, "rounds": self.rounds, "budget": self.budget,
                "unreachable": {f"{k:.4f}": v for k, v in self.unreachable.items()}}


def grow_subset_pool(ctx: Any, model: str, pool: SubsetPool, targets: Sequence[float], recipe: TrainRecipe, *,
                     band: float, matching: str = "centered", min_matched: int = 3, budget: int = 0,
                     mode: Mode = "auto", chunk: int = 32) -> tuple[SubsetPool, Growth]:
    """``pool`` grown by at most ``budget`` targeted members until each target has ``min_matched`` in its band."""
    growth = Growth(budget=budget)
    counts = [len(c) for c in ctx.real.train.class_indices()]
    floor = 1.0 / max(counts)  # every fraction at or below this keeps one image per class
    replicates: dict[float, int] = {}
    while growth.added < budget:
        unmet = [t for t in sorted(set(targets)) if t not in growth.unreachable
                 and match_subset(pool.accuracy, t, band, matching)[0].numel() < min_matched]
        if not unmet:
            break
        proposals: list[float] = []
        handled: list[float] = []
        curve = LearningCurve.fit(pool.fraction.tolist(), pool.accuracy.tolist())
        for t in unmet:
            if any(abs(t - h) <= band / 2 for h in handled):  # a neighbour's proposals serve it too
                continue
            handled.append(t)
            f = curve.aim(t, floor)
            bound = "one image per class" if f <= floor else "the whole training set" if f >= 1.0 else None
            if bound is not None and replicates.get(_key_fraction(f), 0) >= AT_BOUND:
                got = match_subset(pool.accuracy, t, band, matching)[0].numel()
                near = float(pool.accuracy[(pool.accuracy.double() - t).abs().argmin()])
                growth.unreachable[t] = (f"subsets of {bound} do not reach it ({got} in the band; closest "
                                         f"accuracy {near:.3f})")
                continue
            # one model per unmatched target and round, so the budget is shared among targets and each round
            # aims from a refitted curve; replicates at one fraction differ by seed, which spreads their accuracies
            proposals.append(f)
        if not proposals:
            break
        proposals = proposals[: budget - growth.added]
        members = []
        for f in proposals:
            f = _key_fraction(f)
            r = replicates.get(f, 0)
            replicates[f] = r + 1
            parts = _member_parts(ctx, "subset-target", model, recipe, r, {"fraction": f})
            members.append(SubsetMember(parts, f"pool:subset:target:{f:.4g}:{r}",
                                        lambda f=f, r=r: targeted_rows(ctx, f, r)))
        extra = subset_members(ctx, model, members, recipe, mode=mode, chunk=chunk,
                               description=f"agreement: subset models aimed at distilled accuracies ({model})")
        growth.added += len(members)
        growth.trained += extra.trained
        growth.rounds += 1
        pool = pool.extend(extra)
    return pool, growth
