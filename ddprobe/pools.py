"""Cached bags of trainings: distilled-trained models and the real-data pools of the agreement probe (paper A.6).

* :func:`trained_models` is :meth:`StudyContext.trained` for many jobs at once: each model is looked up under the
  same cache key ``ctx.trained`` uses (kind ``models``), the missing ones train together through
  :func:`ddprobe.batched.train_many`, and every result is stored, so no checkpoint is ever trained twice.
* :func:`subset_pool` and :func:`early_pool` keep only what the agreement analysis needs from each pool member
  (test predictions and accuracy, per step for early-stopped runs). Members are cached one by one under keys that
  hold the member's index but not the pool's size or the distilled sets, so every set and every later study with the
  same real data, seed, architecture and recipe shares them, and growing a pool from 100 to 520 trains 420 models.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .batched import Mode, TrainJob, train_bag

if TYPE_CHECKING:
    import torch

    from .training import TrainRecipe


def model_parts(ctx: Any, model: str, data_id: Any, recipe: TrainRecipe, seed_name: str,
                learned_lr: float | None) -> dict:
    """The cache parts :meth:`StudyContext.trained` uses, so both paths find each other's models."""
    return ctx.model_cache_parts(model, data_id, recipe, seed_name, learned_lr)


def trained_models(ctx: Any, model: str, jobs: Sequence[TrainJob], recipe: TrainRecipe, data_ids: Sequence[Any],
                   *, mode: Mode = "auto", chunk: int = 32, description: str = "training") -> list[torch.nn.Module]:
    """Trained models for ``jobs`` (eval mode, on ``ctx.device``): from the cache, or trained together and stored."""
    cache = ctx.cache
    out: list[Any] = [None] * len(jobs)
    missing = []
    keys = []
    for i, (job, data_id) in enumerate(zip(jobs, data_ids, strict=True)):
        key = cache.key("models", model_parts(ctx, model, data_id, recipe, job.seed_name, job.learned_lr))
        keys.append(key)
        found = cache.load_tensors("models", key)
        if found is not None:
            net = ctx.build_model(model, job.seed_name)
            try:
                net.load_state_dict(found)
            except Exception as exc:  # sealed, but not a state of this model: recompute it
                cache.discard("models", key, f"not a state of this model ({type(exc).__name__}: {exc})")
                found = None
        if found is not None:
            cache.hits["models"] += 1
            out[i] = net.eval()
        else:
            cache.misses["models"] += 1
            missing.append(i)
    if missing:
        with ctx.progress.task(f"{description} ({model})", total=len(missing)) as task:
            def done(j: int, state: dict[str, torch.Tensor]) -> None:
                i = missing[j]
                cache.save_tensors("models", keys[i], state,
                                   model_parts(ctx, model, data_ids[i], recipe, jobs[i].seed_name,
                                               jobs[i].learned_lr))
                net = ctx.build_model(model, jobs[i].seed_name)
                net.load_state_dict(state)
                out[i] = net.eval()

            train_bag(ctx, model, [jobs[i] for i in missing], recipe, StateCollector(), done, mode=mode, chunk=chunk,
                      task=task)
    return out


class StateCollector:
    """Keeps a trained model's state dict (on the CPU)."""

    observes = False

    def done(self, i: int, net: torch.nn.Module) -> dict[str, torch.Tensor]:
        return {k: v.detach().cpu().clone() for k, v in net.state_dict().items()}


class PredictCollector:
    """Keeps a trained model's test-set predictions and accuracy (a subset-pool member)."""

    observes = False

    def __init__(self, test_x: torch.Tensor, test_y: torch.Tensor, num_classes: int) -> None:
        self.test_x, self.test_y, self.num_classes = test_x, test_y, num_classes

    def done(self, i: int, net: torch.nn.Module) -> dict[str, torch.Tensor]:
        import torch

        from .training import accuracy, predict

        logits = predict(net, self.test_x)
        return {"pred": logits.argmax(1).cpu().to(_pred_dtype(self.num_classes)),
                "acc": torch.tensor([accuracy(logits, self.test_y)])}


class EarlyCollector:
    """Keeps an early-stopped run's test predictions and accuracy after every step."""

    observes = True

    def __init__(self, steps: int, test_x: torch.Tensor, test_y: torch.Tensor, num_classes: int) -> None:
        self.steps, self.test_x, self.test_y, self.num_classes = steps, test_x, test_y, num_classes
        self.preds: dict[int, torch.Tensor] = {}
        self.accs: dict[int, torch.Tensor] = {}

    def observe(self, step: int, ids: list[int], logits_fn) -> None:
        import torch

        if step == 0:
            return
        test_x, test_y = self.test_x, self.test_y
        p = logits_fn(test_x).argmax(2)
        correct = (p == test_y.to(p.device).unsqueeze(0)).float().mean(1).cpu()
        for row, j in enumerate(ids):
            if j not in self.preds:
                self.preds[j] = torch.zeros(self.steps, len(test_y), dtype=_pred_dtype(self.num_classes))
                self.accs[j] = torch.zeros(self.steps)
            self.preds[j][step - 1] = p[row].cpu().to(self.preds[j].dtype)
            self.accs[j][step - 1] = correct[row]

    def done(self, j: int, net: torch.nn.Module) -> dict[str, torch.Tensor]:
        import torch

        if j not in self.preds:  # a run with no steps
            return {"pred": torch.zeros(self.steps, len(self.test_y), dtype=_pred_dtype(self.num_classes)),
                    "acc": torch.zeros(self.steps)}
        return {"pred": self.preds.pop(j), "acc": self.accs.pop(j)}


def distilled_jobs(ctx, sets, seeds: int, recipe, model: str):
    """TrainJobs (and cache data ids) for every set and seed; a set without a learned lr falls back to 0.01.

    The seed streams are the ``evaluate`` probe's (``evaluate:<set>:<model>:<seed>``): with the same recipe the
    cache keys are the same, so a study that runs ``evaluate`` and ``agreement``/``sensitivity`` trains each
    distilled-trained model once.
    """
    jobs, ids, keys, recipes = [], [], [], {}
    for set_name, ds in sets.items():
        use = recipe.for_set(ds.manifest.learned_lr)
        recipes[set_name] = use
        for s in range(seeds):
            jobs.append(TrainJob(f"evaluate:{set_name}:{model}:{s}", ds, None, ds.manifest.learned_lr))
            ids.append(ds.manifest.sha256)
            keys.append((set_name, s))
    return jobs, ids, keys, recipes


# -- agreement pools ----------------------------------------------------------------------------------------------

@dataclass
class SubsetPool:
    predictions: torch.Tensor  # [members, test] predicted labels
    accuracy: torch.Tensor  # [members]
    fraction: torch.Tensor  # [members] fraction of each class kept
    size: torch.Tensor  # [members] training images
    trained: int  # members trained in this call (0 when all came from the cache)

    def __len__(self) -> int:
        return int(self.accuracy.numel())

    def extend(self, other: SubsetPool) -> SubsetPool:
        """This pool followed by ``other``'s members."""
        import torch

        return SubsetPool(torch.cat([self.predictions, other.predictions]), torch.cat([self.accuracy, other.accuracy]),
                          torch.cat([self.fraction, other.fraction]), torch.cat([self.size, other.size]),
                          self.trained + other.trained)


@dataclass
class EarlyPool:
    predictions: torch.Tensor  # [runs, steps, test] predictions after steps 1..steps (uint8 up to 256 classes)
    accuracy: torch.Tensor  # [runs, steps]
    trained: int


def subset_indices(ctx: Any, member: int, low: float, high: float) -> tuple[float, torch.Tensor]:
    """Member ``member``'s fraction s ~ U(low, high) and its training rows: the first max(1, int(n_c * s)) of a
    per-class shuffle, for every class (paper A.6). Depends only on the study seed and the member index."""
    import torch

    gen = ctx.rng(f"pool:subset:{member}")
    frac = low + (high - low) * float(torch.rand((), generator=gen))
    picks = []
    for idx in ctx.real.train.class_indices():
        keep = max(1, int(idx.numel() * frac))
        picks.append(idx[torch.randperm(idx.numel(), generator=gen)[:keep]])
    return frac, torch.cat(picks).sort().values


def _cached_members(ctx: Any, pool: str, model: str, recipe: TrainRecipe, count: int,
                    extra: dict) -> tuple[dict[int, dict], list[int]]:
    """Pool members 0..count-1 already in the cache, and the indices still to train."""
    return _lookup_members(ctx.cache, [_member_parts(ctx, pool, model, recipe, m, extra) for m in range(count)])


def _lookup_members(cache: Any, parts: Sequence[dict]) -> tuple[dict[int, dict], list[int]]:
    """The members whose tensors are cached (counted hits), and the indices still to train (counted misses)."""
    found: dict[int, dict] = {}
    missing = []
    for m, member_parts in enumerate(parts):
        got = cache.lookup_tensors("pool-members", member_parts)
        if got is not None:
            found[m] = got
        else:
            missing.append(m)
    return found, missing


def _member_parts(ctx: Any, pool: str, model: str, recipe: TrainRecipe, member: int, extra: dict) -> dict:
    return {"pool": pool, "model": ctx.models[model].key(), "recipe": recipe.key(), "seed": ctx.seed,
            "member": member, "real": ctx.data_key, **extra}


def _pred_dtype(num_classes: int):
    import torch

    return torch.uint8 if num_classes <= 256 else torch.int32


def subset_pool(ctx: Any, model: str, count: int, fraction: tuple[float, float], recipe: TrainRecipe, *,
                mode: Mode = "auto", chunk: int = 32) -> SubsetPool:
    """``count`` models each trained on a random per-class fraction of the real training set; test predictions."""
    low, high = fraction
    extra = {"fraction": [low, high]}
    members = [SubsetMember(_member_parts(ctx, "subset", model, recipe, m, extra), f"pool:subset:{m}",
                            lambda m=m: subset_indices(ctx, m, low, high)) for m in range(count)]
    return subset_members(ctx, model, members, recipe, mode=mode, chunk=chunk,
                          description=f"agreement subset pool ({model})")


@dataclass
class SubsetMember:
    """One subset-trained model: its cache key parts, its seed stream, and (fraction, rows) when it must train."""

    parts: dict
    seed_name: str
    rows: Any  # () -> (fraction, training rows)


def subset_members(ctx: Any, model: str, members: Sequence[SubsetMember], recipe: TrainRecipe, *,
                   mode: Mode = "auto", chunk: int = 32, description: str = "subset models") -> SubsetPool:
    """Subset-trained models' test predictions and accuracies: from the cache (kind ``pool-members``), or trained
    together and stored member by member."""
    import torch


    cache, test = ctx.cache, ctx.real.test
    found, missing = _lookup_members(cache, [member.parts for member in members])
    if missing:
        jobs, fracs = [], {}
        for m in missing:
            frac, rows = members[m].rows()
            fracs[m] = frac
            jobs.append(TrainJob(members[m].seed_name, ctx.real.train, rows))
        collector = PredictCollector(test.images.to(ctx.device), test.labels, test.num_classes)

        def done(j: int, got: dict[str, torch.Tensor]) -> None:
            m = missing[j]
            entry = {**got, "fraction": torch.tensor([fracs[m]]), "size": torch.tensor([jobs[j].size])}
            parts = members[m].parts
            cache.save_tensors("pool-members", cache.key("pool-members", parts), entry, parts)
            found[m] = entry

        with ctx.progress.task(description, total=len(members)) as task:
            task.advance(len(members) - len(missing))
            train_bag(ctx, model, jobs, recipe, collector, done, mode=mode, chunk=chunk, task=task)
    entries = [found[m] for m in range(len(members))]
    if not entries:
        return SubsetPool(torch.zeros(0, len(test), dtype=torch.long), torch.zeros(0), torch.zeros(0),
                          torch.zeros(0, dtype=torch.long), 0)
    return SubsetPool(torch.stack([e["pred"].long() for e in entries]), torch.cat([e["acc"] for e in entries]),
                      torch.cat([e["fraction"] for e in entries]), torch.cat([e["size"] for e in entries]),
                      len(missing))


def early_pool(ctx: Any, model: str, runs: int, recipe: TrainRecipe, *, mode: Mode = "auto",
               chunk: int = 32) -> EarlyPool:
    """``runs`` models trained on the full real training set under ``recipe``; test predictions after every step."""
    import torch

    cache, test = ctx.cache, ctx.real.test
    found, missing = _cached_members(ctx, "early", model, recipe, runs, {})
    if missing:
        steps = recipe.total_steps(len(ctx.real.train))
        collector = EarlyCollector(steps, test.images.to(ctx.device), test.labels.to(ctx.device), test.num_classes)

        def done(j: int, entry: dict[str, torch.Tensor]) -> None:
            m = missing[j]
            parts = _member_parts(ctx, "early", model, recipe, m, {})
            cache.save_tensors("pool-members", cache.key("pool-members", parts), entry, parts)
            found[m] = entry

        jobs = [TrainJob(f"pool:early:{m}", ctx.real.train) for m in missing]
        with ctx.progress.task(f"agreement early-stopped pool ({model})", total=runs) as task:
            task.advance(runs - len(missing))
            train_bag(ctx, model, jobs, recipe, collector, done, mode=mode, chunk=chunk, task=task)
    members = [found[m] for m in range(runs)]
    # kept in their stored dtype (uint8 for up to 256 classes): at the paper's scale 30 x 196 x 10,000 predictions
    return EarlyPool(torch.stack([e["pred"] for e in members]), torch.stack([e["acc"] for e in members]),
                     len(missing))


# -- agreement arithmetic -------------------------------------------------------------------------------------------

def agreement(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Fraction of positions where predicted labels are equal; ``b`` may carry leading pool dimensions."""
    return (a.to(b.device).long() == b.long()).float().mean(-1)


def match_step(mean_accuracy: Sequence[float] | torch.Tensor, target: float) -> int:
    """The step (1-based) whose mean early-stopped accuracy is closest to ``target``; the earliest on ties."""
    import torch

    acc = torch.as_tensor(mean_accuracy, dtype=torch.float64)
    return int(torch.argmin((acc - target).abs())) + 1


def match_subset(accuracy: torch.Tensor, target: float, band: float, how: str = "centered",
                 nearest: int = 0) -> tuple[torch.Tensor, str]:
    """Indices of subset models matched to a distilled model of accuracy ``target``.

    ``centered``: |acc - target| <= band / 2. ``paper``: the notebook's buckets, round(acc, 2) in {q, q + 0.01} with
    q = floor(100 * target) / 100 (``band`` unused). When nothing matches, the ``nearest`` closest (or none).
    """
    import torch

    acc = accuracy.double()
    if how == "paper":
        q = math.floor(100 * target + 1e-9)
        rounded = torch.round(acc * 100)
        mask = (rounded == q) | (rounded == q + 1)
    else:
        mask = (acc - target).abs() <= band / 2 + 1e-12
    idx = torch.nonzero(mask).flatten()
    if idx.numel() or nearest <= 0:
        return idx, "band"
    return torch.argsort((acc - target).abs())[:nearest].sort().values, "nearest"

