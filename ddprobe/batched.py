"""Train many models of one architecture under one recipe, together (vmap) or one by one.

``train_many`` is the engine behind agreement pools, mixing, sensitivity cells and recognition curves. Each
:class:`TrainJob` is one model: its initialization comes from the seed stream ``init:<seed_name>`` and its batch
order and augmentation from ``train:<seed_name>``, exactly as :meth:`StudyContext.train` does, so a job gives the
same model (up to floating-point rounding) whichever way it is trained.

Batched mode stacks the parameters of up to ``chunk`` models and runs forward and backward for all of them in one
call (``torch.func.functional_call`` + ``vmap`` + ``grad``). Jobs may have different data sizes: each step every
model draws its own batch, batches are padded to a common size and padded examples carry zero weight; a model whose
schedule has ended stops updating. The optimizer (SGD with momentum, or Adam; weight decay; step or cosine
schedule) is applied functionally to the stacked parameters with the same formulas as ``torch.optim``.

Models with buffers (BatchNorm running statistics) train one by one. ``mode="auto"`` measures a few steps both
ways on the device at hand and keeps the faster; the choice is remembered per device, architecture and batch shape.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Protocol

from . import compiled

if TYPE_CHECKING:
    import torch

    from .data import LabeledData
    from .training import TrainRecipe

Mode = Literal["auto", "batched", "sequential"]
# observe(step, job_indices, logits_fn): logits_fn(images) -> [len(job_indices), N, classes], no gradients.
Observer = Callable[[int, list[int], Callable[["torch.Tensor"], "torch.Tensor"]], None]

_CHOICES: dict[str, str] = {}
LAST_CHOICE: dict[str, Any] = {}
_EAGER_STEP: dict[str, float] = {}
LAST_COMPILE: dict[str, Any] = {}  # the last bag's compile decision ([study] compile), for probe info
_BAGS = [0]  # bags planned so far in this process (compile_mark)


@dataclass
class TrainJob:
    """One model to train: the seed stream, the data and optionally the rows of it to use."""

    seed_name: str
    data: LabeledData
    indices: torch.Tensor | None = None
    learned_lr: float | None = None

    @property
    def size(self) -> int:
        return int(self.indices.numel()) if self.indices is not None else len(self.data)

    def materialize(self) -> LabeledData:
        return self.data if self.indices is None else self.data.subset(self.indices)


def supports_batching(model: torch.nn.Module) -> bool:
    """Stacked training needs stateless layers: no buffers (BatchNorm statistics), no dropout."""
    import torch

    if any(True for _ in model.buffers()):
        return False
    return not any(isinstance(m, torch.nn.modules.dropout._DropoutNd) for m in model.modules())


def lr_factor(schedule: str, step: int, total: int) -> float:
    """The schedule's multiplier for optimizer step ``step`` (1-based), matching torch's schedulers in train()."""
    if schedule == "step":
        return 0.1 if step - 1 >= max(1, total // 2) else 1.0
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * (step - 1) / max(1, total)))
    return 1.0


def train_many(ctx: Any, model_name: str, jobs: Sequence[TrainJob], recipe: TrainRecipe, *,
               observe: Observer | None = None, every: int = 1,
               on_done: Callable[[int, torch.nn.Module], Any] | None = None,
               mode: Mode = "auto", chunk: int = 32, task: Any = None) -> list[Any]:
    """Train every job; return ``on_done(i, model)`` (default: the model, in eval mode) for each, in order.

    ``observe`` is called at step 0 and after every ``every``-th step (and the last) with the indices of the jobs
    still training and a function giving their logits. ``task`` (a progress task) advances once per model done.
    """
    jobs = list(jobs)
    if not jobs:
        return []
    chosen = choose_mode(ctx, model_name, jobs, recipe, mode, chunk)
    out: list[Any] = [None] * len(jobs)
    if chosen == "sequential":
        key = plan_compile(ctx, model_name, jobs, recipe, chosen)
        t_rest = steps_rest = 0.0
        for i, job in enumerate(jobs):
            t0 = time.perf_counter()
            out[i] = _train_one(ctx, model_name, i, job, recipe, observe, every, on_done, compile_key=key)
            if i > 0:  # the steady state: job 0 carries the first calls
                t_rest += time.perf_counter() - t0
                steps_rest += recipe.total_steps(job.size)
            if task is not None:
                task.advance()
        if key is not None and compiled.failure(key) is not None:  # compiled code raised during the bag: eager
            LAST_COMPILE.update(failed=compiled.failure(key))
        elif key is not None and steps_rest and LAST_COMPILE.get("eager_step_s"):
            compiled.record(key, gain=LAST_COMPILE["eager_step_s"] / (t_rest / steps_rest))
            LAST_COMPILE["measured_gain"] = round(compiled.measured(key)["gain"], 3)
        return out
    plan_compile(ctx, model_name, jobs, recipe, chosen)  # records that stacked training is not compiled
    for group in stacks(jobs, recipe, chunk):
        for i, res in zip(group, _train_stacked(ctx, model_name, [jobs[i] for i in group], group, recipe,
                                                observe, every, on_done), strict=True):
            out[i] = res
        if task is not None:
            task.advance(len(group))
    return out


class Collector(Protocol):
    """What a bag trained through the executor keeps of each model, computed where the model was trained.

    ``done(i, model)`` returns job ``i``'s (small, picklable) result; ``observe``, when ``observes`` is true, is the
    :data:`Observer` of :func:`train_many`. One instance is shipped to each worker and serves all the jobs it trains:
    keep any per-job state keyed by the job index and drop it in ``done``.
    """

    observes: bool

    def observe(self, step: int, ids: list[int], logits_fn: Callable[[torch.Tensor], torch.Tensor]) -> None: ...

    def done(self, i: int, model: torch.nn.Module) -> Any: ...


def train_bag(ctx: Any, model_name: str, jobs: Sequence[TrainJob], recipe: TrainRecipe, collector: Collector,
              on_result: Callable[[int, Any], None], *, every: int = 1, mode: Mode = "auto", chunk: int = 32,
              task: Any = None) -> None:
    """Train every job on ``ctx.executor``; ``on_result(i, collector.done(i, model))`` on the driver for each.

    The driver chooses the mode and the stacks exactly as :func:`train_many` does; each stack (or, one by one, each
    run of consecutive jobs) is one task, so every job trains with the same companions, seeds and arithmetic
    whichever executor runs it, and the results equal the serial run's. Data is shipped once per worker.
    """
    jobs = list(jobs)
    if not jobs:
        return
    ex = ctx.executor
    observe = collector.observe if collector.observes else None
    if len(jobs) < 2 or not ex.parallel(ctx.device):
        train_many(ctx, model_name, jobs, recipe, observe=observe, every=every,
                   on_done=lambda i, net: on_result(i, collector.done(i, net)), mode=mode, chunk=chunk, task=task)
        return
    chosen = choose_mode(ctx, model_name, jobs, recipe, mode, chunk)
    if chosen == "batched":
        groups = stacks(jobs, recipe, chunk)
    else:
        per = max(1, math.ceil(len(jobs) / (4 * ex.workers)))
        groups = [list(range(s, min(s + per, len(jobs)))) for s in range(0, len(jobs), per)]
    key = plan_compile(ctx, model_name, jobs, recipe, chosen, compilers=1 + min(ex.workers, len(groups)))
    datas: list[LabeledData] = []
    where: dict[int, int] = {}
    for job in jobs:
        if id(job.data) not in where:
            where[id(job.data)] = len(datas)
            datas.append(job.data)
    shared = _Bag(ctx.task_context(), model_name, recipe, datas, collector, chosen, every, key)
    items = [[(i, jobs[i].seed_name, where[id(jobs[i].data)], jobs[i].indices, jobs[i].learned_lr) for i in group]
             for group in groups]

    def arrived(g: int, results: list[Any]) -> None:
        for i, res in zip(groups[g], results, strict=True):
            on_result(i, res)
        if task is not None:
            task.advance(len(groups[g]))

    ex.map(_train_group, items, shared=shared, on_result=arrived)


@dataclass
class _Bag:
    """What every task of a :func:`train_bag` shares (shipped once per worker)."""

    ctx: Any  # a TaskContext
    model_name: str
    recipe: TrainRecipe
    datas: list[LabeledData]
    collector: Collector
    mode: str
    every: int
    compile_key: str | None = None


def _train_group(bag: _Bag, item: list[tuple]) -> list[Any]:
    """A task of :func:`train_bag`: one stack of jobs trained together, or a few jobs one by one."""
    ids = [i for i, *_ in item]
    jobs = [TrainJob(name, bag.datas[d], rows, lr) for _, name, d, rows, lr in item]
    observe = bag.collector.observe if bag.collector.observes else None
    if bag.mode == "batched":
        return _train_stacked(bag.ctx, bag.model_name, jobs, ids, bag.recipe, observe, bag.every,
                              bag.collector.done)
    return [_train_one(bag.ctx, bag.model_name, i, job, bag.recipe, observe, bag.every, bag.collector.done,
                       compile_key=bag.compile_key)
            for i, job in zip(ids, jobs, strict=True)]


def stacks(jobs: Sequence[TrainJob], recipe: TrainRecipe, chunk: int) -> list[list[int]]:
    """Job indices grouped into stacks of at most ``chunk``, by batch size, so padding wastes at most half."""
    order = sorted(range(len(jobs)), key=lambda i: recipe.batch(jobs[i].size))
    out: list[list[int]] = []
    for i in order:
        b = recipe.batch(jobs[i].size)
        if out and len(out[-1]) < chunk and b <= 2 * recipe.batch(jobs[out[-1][0]].size):
            out[-1].append(i)
        else:
            out.append([i])
    return out


# -- one by one -------------------------------------------------------------------------------------------------

def _train_one(ctx, model_name, i, job, recipe, observe, every, on_done, max_steps: int | None = None,
               compile_key: str | None = None):
    from .training import TrainState, predict

    net = ctx.build_model(model_name, job.seed_name)
    callbacks = []
    if observe is not None:
        def cb(state: TrainState) -> None:
            if state.step % every == 0 or state.step == state.total:
                observe(state.step, [i], lambda x: predict(state.model, x).unsqueeze(0))
        callbacks.append(cb)
    use = recipe if max_steps is None else recipe.model_copy(update={"steps": max_steps, "epochs": None})
    ctx.train(net, job.materialize(), use, seed_name=job.seed_name, callbacks=callbacks, learned_lr=job.learned_lr,
              compile_key=compile_key)
    return on_done(i, net) if on_done is not None else net


# -- stacked ----------------------------------------------------------------------------------------------------

def _train_stacked(ctx, model_name, jobs, ids, recipe, observe, every, on_done, max_steps: int | None = None):
    import torch
    from torch.func import functional_call, vmap

    from .augment import get_augmentation
    from .training import _batches

    device = ctx.device
    nets = [ctx.build_model(model_name, job.seed_name) for job in jobs]
    base = nets[0]
    names = [n for n, _ in base.named_parameters()]
    params = {n: torch.stack([dict(net.named_parameters())[n].detach() for net in nets]).to(device) for n in names}
    k = len(jobs)

    # One tensor per distinct data object; each job's rows as global indices into the concatenation.
    pools: dict[int, int] = {}
    blocks_x, blocks_y, offset = [], [], 0
    soft = any(job.data.soft for job in jobs)
    num_classes = jobs[0].data.num_classes
    rows = []
    for job in jobs:
        key = id(job.data)
        if key not in pools:
            pools[key] = offset
            labels = job.data.labels
            if soft and labels.dim() == 1:
                labels = torch.nn.functional.one_hot(labels, num_classes).float()
            blocks_x.append(job.data.images)
            blocks_y.append(labels)
            offset += len(job.data)
        local = job.indices if job.indices is not None else torch.arange(len(job.data))
        rows.append(local.long().cpu() + pools[key])
    images = torch.cat([b.to(device) for b in blocks_x]) if len(blocks_x) > 1 else blocks_x[0].to(device)
    labels = torch.cat([b.to(device) for b in blocks_y]) if len(blocks_y) > 1 else blocks_y[0].to(device)

    sizes = [job.size for job in jobs]
    totals = [recipe.total_steps(n) for n in sizes]
    if max_steps is not None:
        totals = [min(t, max_steps) for t in totals]
    lrs = [recipe.resolved_lr(job.learned_lr) for job in jobs]
    gens = [ctx.rng(f"train:{job.seed_name}") for job in jobs]
    iters = [_batches(n, recipe.batch(n), t, g) for n, t, g in zip(sizes, totals, gens, strict=True)]
    augment = get_augmentation(recipe.augment)
    steps = max(totals)

    # vmap over the forward pass only; per-model gradients come from autograd on the sum of per-model losses
    # (each model's loss depends on its own slice of the stacked parameters). This avoids torch.func.grad, whose
    # first call imports the compiler stack (seconds).
    stacked = vmap(lambda p, x: functional_call(base, p, (x,)))

    def grad_fn(p, X, Y, W):
        leaves = {n: v.detach().requires_grad_(True) for n, v in p.items()}
        logits = stacked(leaves, X)  # [k, B, classes]
        if Y.dim() == 3:
            losses = -(Y * torch.log_softmax(logits, dim=2)).sum(dim=2)
        else:
            losses = torch.nn.functional.cross_entropy(logits.flatten(0, 1), Y.flatten(), reduction="none")
            losses = losses.view(W.shape)
        per_model = (losses * W).sum(1) / W.sum(1).clamp_min(1.0)
        grads = torch.autograd.grad(per_model.sum(), list(leaves.values()))
        return dict(zip(leaves, grads, strict=True)), per_model.detach()

    forward = vmap(lambda p, x: functional_call(base, p, (x,)), in_dims=(0, None))

    def logits_fn(active: list[int]):
        sel = torch.tensor(active, device=device)

        def fn(x: torch.Tensor) -> torch.Tensor:
            sub = {n: v.index_select(0, sel) for n, v in params.items()}
            base.eval()
            with torch.no_grad():
                outs = [forward(sub, x[s : s + 1024].to(device)) for s in range(0, x.shape[0], 1024)]
            base.train()
            return torch.cat(outs, dim=1)
        return fn

    state = {n: torch.zeros_like(v) for n, v in params.items()}
    state2 = {n: torch.zeros_like(v) for n, v in params.items()} if recipe.optimizer == "adam" else None
    counts = torch.zeros(k, device=device)
    base.train()
    if observe is not None:
        observe(0, list(ids), logits_fn(list(range(k))))
    for step in range(1, steps + 1):
        active = [j for j in range(k) if step <= totals[j]]
        xs, ys = [], []
        for j in range(k):
            if step > totals[j]:
                xs.append(None)
                ys.append(None)
                continue
            idx = next(iters[j])
            glob = rows[j] if idx is None else rows[j][idx]
            glob = glob.to(device)
            x = images.index_select(0, glob)
            if augment is not None:
                x = augment(x, gens[j])
            xs.append(x)
            ys.append(labels.index_select(0, glob))
        width = max(x.shape[0] for x in xs if x is not None)
        X = images.new_zeros((k, width, *images.shape[1:]))
        Y = labels.new_zeros((k, width, *labels.shape[1:]))
        W = images.new_zeros((k, width))
        for j, (x, y) in enumerate(zip(xs, ys, strict=True)):
            if x is not None:
                X[j, : x.shape[0]] = x
                Y[j, : y.shape[0]] = y
                W[j, : x.shape[0]] = 1.0
        grads, _ = grad_fn(params, X, Y, W)
        act = torch.zeros(k, device=device)
        act[active] = 1.0
        lr_vec = torch.tensor([lrs[j] * lr_factor(recipe.schedule, step, totals[j]) if step <= totals[j] else 0.0
                               for j in range(k)], device=device, dtype=images.dtype)
        counts = counts + act
        with torch.no_grad():
            for n in names:
                p, g = params[n], grads[n]
                shape = (k,) + (1,) * (p.dim() - 1)
                a = act.view(shape).bool()
                if recipe.weight_decay:
                    g = g + recipe.weight_decay * p
                if recipe.optimizer == "adam":
                    b1, b2, eps = 0.9, 0.999, 1e-8
                    m = torch.where(a, b1 * state[n] + (1 - b1) * g, state[n])
                    v = torch.where(a, b2 * state2[n] + (1 - b2) * g * g, state2[n])
                    state[n], state2[n] = m, v
                    t = counts.clamp_min(1).view(shape)
                    upd = (m / (1 - b1 ** t)) / ((v / (1 - b2 ** t)).sqrt() + eps)
                else:
                    buf = torch.where(a, recipe.momentum * state[n] + g, state[n])
                    state[n] = buf
                    upd = buf
                params[n] = p - lr_vec.view(shape) * upd
        if observe is not None and active and (step % every == 0 or any(step == totals[j] for j in active)):
            observe(step, [ids[j] for j in active], logits_fn(active))
    results = []
    with torch.no_grad():
        for j, net in enumerate(nets):
            for n, p in net.named_parameters():
                p.copy_(params[n][j])
            net.eval()
            results.append(on_done(ids[j], net) if on_done is not None else net)
    return results


# -- choosing -------------------------------------------------------------------------------------------------

def choose_mode(ctx: Any, model_name: str, jobs: Sequence[TrainJob], recipe: TrainRecipe, mode: Mode,
                chunk: int) -> str:
    """``batched`` or ``sequential``: as asked, or for ``auto`` by timing a few steps of each on this device."""
    probe_net = ctx.build_model(model_name, "batched:probe")
    if mode == "sequential" or len(jobs) < 2 or not supports_batching(probe_net):
        return "sequential"
    if mode == "batched":
        return "batched"
    import json

    k = min(len(jobs), chunk)
    work = sum(recipe.total_steps(job.size) for job in jobs)
    if work <= 6 * (k + 4):  # measuring (~(k + 4) x 4 model-steps) would cost about as much as the work itself
        return "sequential"
    sizes = sorted(job.size for job in jobs)
    batch = recipe.batch(sizes[len(sizes) // 2])
    bucket = 1 << max(0, batch - 1).bit_length()  # batch size rounded up to a power of two
    key = json.dumps([str(ctx.device), ctx.models[model_name].key(), bucket, k], sort_keys=True, default=str)
    if key not in _CHOICES:
        per_model = measure(ctx, model_name, list(jobs)[:k], recipe, steps=3)
        _CHOICES[key] = "batched" if per_model["batched"] < per_model["sequential"] else "sequential"
        LAST_CHOICE.clear()
        LAST_CHOICE.update(per_model, choice=_CHOICES[key], models=k)
    return _CHOICES[key]


def plan_compile(ctx: Any, model_name: str, jobs: Sequence[TrainJob], recipe: TrainRecipe, chosen: str, *,
                 compilers: int = 1) -> str | None:
    """The compile key to train this bag's models with, or None for eager ([study] compile; see ddprobe.compiled).

    Decided once per bag on the driver, so every worker trains the same way. ``auto`` (and ``always``, to record
    the gain of the bag it compiles) times four eager steps of the first job (remembered per device, architecture
    and batch shape); ``auto`` compiles only when :func:`ddprobe.compiled.decide` predicts a saving. Stacked
    (vmapped) training is never compiled. The decision, and any compile failure, land in :data:`LAST_COMPILE`.
    """
    setting = getattr(ctx, "compile_mode", "never")
    _BAGS[0] += 1
    LAST_COMPILE.clear()
    jobs = list(jobs)
    batch = recipe.batch(jobs[0].size)  # compiled for this batch shape: one key per architecture and batch
    key = compiled.arch_key(ctx.models[model_name].key(), ctx.device, batch)
    if chosen != "sequential":
        LAST_COMPILE.update(setting=setting, compile=False, reason=f"{chosen} training is not compiled")
        return None
    bag_steps = sum(recipe.total_steps(job.size) for job in jobs)
    why = compiled.failure(key) or compiled.eligible(ctx.build_model(model_name, "compile:probe"))
    if setting != "never" and why is not None:
        LAST_COMPILE.update(setting=setting, compile=False, reason=f"eager: {why}")
        return None
    eager = None
    if setting != "never" and bag_steps > 0:  # "always" measures too: the bag's gain is then recorded
        if key not in _EAGER_STEP:
            from .timing import timed

            def run(steps: int) -> float:
                return timed(lambda: _train_one(ctx, model_name, 0, jobs[0], recipe, None, 1, lambda i, n: None,
                                                max_steps=steps), ctx.device)

            run(1)  # warm-up
            # 5 steps minus 1: the model's construction and the first step's overheads cancel
            _EAGER_STEP[key] = max(run(5) - run(1), 1e-9) / 4
        eager = _EAGER_STEP[key]
    m = compiled.measured(key)
    decision = compiled.decide(setting, bag_steps, eager, gain=m.get("gain"), compile_s=m.get("compile_s"),
                               compilers=compilers)
    LAST_COMPILE.update(setting=setting, bag_steps=bag_steps, eager_step_s=eager, **decision.to_json())
    if not decision.compile:
        return None
    # compile here, on the driver: a failure is seen (and recorded) before any job trains, and worker processes
    # then find inductor's on-disk cache warm
    data = jobs[0].materialize().to(ctx.device)
    if compiled.forward(ctx.build_model(model_name, "compile:probe"), key,
                        data.images[: recipe.batch(len(data))]) is None:
        LAST_COMPILE.update(compile=False, reason="eager: compiling failed", failed=compiled.failure(key))
        return None
    LAST_COMPILE["compile_s"] = round(compiled.measured(key).get("compile_s", 0.0), 3)
    return key


def compile_mark() -> int:
    """A mark to pass to :func:`compile_info` later: only bags trained after it count."""
    return _BAGS[0]


def compile_info(since: int | None = None) -> dict[str, Any]:
    """The last bag's compile decision (:data:`LAST_COMPILE`), for probe info; ``{}`` when no bag was trained
    since the mark ``since`` (every model came from the cache)."""
    if since is not None and _BAGS[0] == since:
        return {}
    return dict(LAST_COMPILE)


def measure(ctx: Any, model_name: str, jobs: Sequence[TrainJob], recipe: TrainRecipe, steps: int = 3) -> dict:
    """Seconds per model-step, stacked and one by one, after one warm-up step of each (for ``auto``)."""
    from .timing import timed

    jobs = list(jobs)
    ids = list(range(len(jobs)))
    _train_stacked(ctx, model_name, jobs, ids, recipe, None, 1, lambda i, n: None, max_steps=1)
    stacked = timed(lambda: _train_stacked(ctx, model_name, jobs, ids, recipe, None, 1, lambda i, n: None,
                                           max_steps=steps), ctx.device) / (len(jobs) * steps)
    _train_one(ctx, model_name, 0, jobs[0], recipe, None, 1, lambda i, n: None, max_steps=1)
    reps = min(3, len(jobs))
    single = timed(lambda: [_train_one(ctx, model_name, j, jobs[j], recipe, None, 1, lambda i, n: None,
                                       max_steps=steps) for j in range(reps)], ctx.device) / (reps * steps)
    return {"batched": stacked, "sequential": single}
