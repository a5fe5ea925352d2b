"""Retraining for exact leave-one-out: the lean full-batch trainer and ``exact_loo`` with its three strategies.

* ``fit``: a lean full-batch SGD loop (no optimizer object, no callbacks unless asked, ``foreach`` updates) that
  reproduces ``training.train`` for full-batch SGD recipes; other recipes fall back to ``training.train``.
* ``exact_loo``: retrain from one initialization without each example, plus the full set and a noise run (the full
  set in another order), with three strategies: ``serial``, ``processes`` (the study's executor) and ``vmap``
  (``torch.func`` over stacked parameters, the GPU lever).
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import nn

from ..training import Callback, TrainRecipe, TrainState, loss_fn


def lean_unsupported(recipe: TrainRecipe, n: int) -> str | None:
    """Why ``fit`` cannot use the lean loop for ``recipe`` on ``n`` examples (None when it can)."""
    if recipe.optimizer != "sgd":
        return f"optimizer {recipe.optimizer!r}"
    if recipe.batch(n) < n:
        return f"batch size {recipe.batch_size} < {n} examples"
    if recipe.augment != "none":
        return f"augmentation {recipe.augment!r}"
    if recipe.schedule != "none":
        return f"schedule {recipe.schedule!r}"
    return None


def fit(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, recipe: TrainRecipe, *,
        learned_lr: float | None = None, generator: torch.Generator | None = None,
        callbacks: Sequence[Callback] = (),
        forward: Callable[[torch.Tensor], torch.Tensor] | None = None) -> nn.Module:
    """Train ``model`` in place and return it in eval mode.

    For full-batch SGD recipes this is a lean loop equal to ``training.train`` for the same initialization, data
    and recipe (tests/test_influence.py checks it): ``autograd.grad`` instead of ``.grad`` bookkeeping and
    ``torch._foreach`` momentum updates in the order ``torch.optim.SGD`` applies them. Other recipes go through
    ``training.train`` with ``generator`` for the data order. ``forward`` replaces ``model(x)`` in the training
    steps (a compiled forward of the same model, :func:`ddprobe.compiled.forward`).
    """
    n = int(images.shape[0])
    if lean_unsupported(recipe, n) is not None:
        from ..data import LabeledData
        from ..training import train

        gen = generator if generator is not None else torch.Generator().manual_seed(0)
        return train(model, LabeledData(images, labels, []), recipe, generator=gen, callbacks=callbacks,
                     learned_lr=learned_lr, forward=forward)
    steps = recipe.total_steps(n)
    lr = recipe.resolved_lr(learned_lr)
    momentum, wd = float(recipe.momentum), float(recipe.weight_decay)
    params = [p for p in model.parameters() if p.requires_grad]
    bufs: list[torch.Tensor] | None = None
    model.train()
    for cb in callbacks:
        cb(TrainState(0, steps, model, None))
    for step in range(1, steps + 1):
        loss = loss_fn((forward or model)(images), labels)
        grads = list(torch.autograd.grad(loss, params))
        with torch.no_grad():
            if wd != 0:
                grads = list(torch._foreach_add(grads, params, alpha=wd))
            if momentum != 0:
                if bufs is None:
                    bufs = [g.detach().clone() for g in grads]
                else:
                    torch._foreach_mul_(bufs, momentum)
                    torch._foreach_add_(bufs, grads)
                grads = bufs
            torch._foreach_add_(params, grads, alpha=-lr)
        if callbacks:
            state = TrainState(step, steps, model, float(loss.detach()))
            for cb in callbacks:
                cb(state)
    model.eval()
    return model


def test_outputs(model: nn.Module, images: torch.Tensor, labels: torch.Tensor,
                 batch_size: int = 2048) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-example cross-entropy and margin (true logit minus the best other logit) in eval mode, on CPU."""
    from ..training import predict

    logits = predict(model, images, batch_size).float()
    labels = labels.to(logits.device)
    losses = loss_fn(logits, labels, reduction="none")
    return losses.cpu(), margins_of(logits, labels).cpu()


def margins_of(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    hard = labels.argmax(1) if labels.dim() == 2 else labels
    true = logits.gather(1, hard.view(-1, 1)).squeeze(1)
    other = logits.scatter(1, hard.view(-1, 1), float("-inf")).amax(1)
    return true - other


# ---------------------------------------------------------------------------------------------------------------
# Exact leave-one-out

Strategy = Literal["auto", "serial", "processes", "vmap"]


@dataclass
class LOOResult:
    """Test losses and margins of the full run, each leave-one-out run and a noise run, from one initialization.

    ``loss_loo[i]`` is the run without example ``i``; ``loss_noise`` the full set retrained in a permuted order.
    """

    loss_full: torch.Tensor  # [m]
    loss_loo: torch.Tensor  # [n, m]
    margin_full: torch.Tensor
    margin_loo: torch.Tensor
    loss_noise: torch.Tensor
    margin_noise: torch.Tensor
    seconds: float = 0.0
    strategy: str = ""
    retrains: int = 0
    final_state: dict[str, torch.Tensor] | None = None  # the reference run's trained model
    checkpoints: list[tuple[int, dict[str, torch.Tensor]]] = field(default_factory=list)
    compile: dict[str, Any] = field(default_factory=dict)  # the [study] compile decision for this bag

    @property
    def influence(self) -> torch.Tensor:
        """``loss_without_i - loss_full``: positive means example i helps test example j."""
        return self.loss_loo - self.loss_full

    @property
    def margin_influence(self) -> torch.Tensor:
        return self.margin_full - self.margin_loo

    @property
    def noise(self) -> torch.Tensor:
        """What retraining the unchanged set in another order changes: the floor under which influence is noise."""
        return self.loss_noise - self.loss_full

    def tensors(self) -> dict[str, torch.Tensor]:
        return {k: getattr(self, k) for k in ("loss_full", "loss_loo", "margin_full", "margin_loo", "loss_noise",
                                               "margin_noise")}

    @classmethod
    def from_tensors(cls, t: dict[str, torch.Tensor], **kw: Any) -> LOOResult:
        return cls(**{k: t[k] for k in ("loss_full", "loss_loo", "margin_full", "margin_loo", "loss_noise",
                                        "margin_noise")}, **kw)


@dataclass
class _Job:
    """What every retraining shares (pickled once per worker process)."""

    model: nn.Module  # the shared initialization, on CPU for worker processes
    images: torch.Tensor
    labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor
    recipe: TrainRecipe
    learned_lr: float | None = None
    checkpoint_steps: tuple[int, ...] = ()
    compile_key: str | None = None  # train through a compiled forward (ddprobe.compiled)


def _retrain(job: _Job, subset: torch.Tensor, record: bool = False):
    """One run: test losses and margins, and when ``record`` the final and checkpoint states (on CPU)."""
    net = copy.deepcopy(job.model)
    idx = subset.to(job.images.device)
    gen = torch.Generator().manual_seed(0)
    states: list[tuple[int, dict[str, torch.Tensor]]] = []
    callbacks = []
    if record and job.checkpoint_steps:
        wanted = set(job.checkpoint_steps)

        def keep(state: TrainState) -> None:
            if state.step in wanted:
                states.append((state.step, {k: v.detach().cpu().clone() for k, v in state.model.state_dict().items()}))

        callbacks.append(keep)
    x = job.images[idx]
    fwd = None
    if job.compile_key is not None:
        from .. import compiled

        fwd = compiled.forward(net, job.compile_key, x[: job.recipe.batch(int(x.shape[0]))])
    fit(net, x, job.labels[idx], job.recipe, learned_lr=job.learned_lr, generator=gen, callbacks=callbacks,
        forward=fwd)
    loss, margin = test_outputs(net, job.test_images, job.test_labels)
    extra = None
    if record:
        extra = {"final": {k: v.detach().cpu().clone() for k, v in net.state_dict().items()}, "checkpoints": states}
    return loss, margin, extra


def _retrain_many(job: _Job, runs: list[tuple[torch.Tensor, bool]]):
    """Worker task: retrain on each subset; stacked test losses and margins, and any recorded states."""
    outs = [_retrain(job, s, record) for s, record in runs]
    return torch.stack([o[0] for o in outs]), torch.stack([o[1] for o in outs]), [o[2] for o in outs]


def loo_subsets(n: int) -> list[torch.Tensor]:
    """Index sets of the ``n`` leave-one-out runs, each in the original order."""
    full = torch.arange(n)
    return [torch.cat([full[:i], full[i + 1:]]) for i in range(n)]


def exact_loo(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, test_images: torch.Tensor,
              test_labels: torch.Tensor, recipe: TrainRecipe, *, learned_lr: float | None = None,
              strategy: Strategy = "auto", workers: int = 1, vmap_batch: int = 32,
              noise_generator: torch.Generator | None = None, checkpoint_steps: Sequence[int] = (),
              advance: Callable[[int], None] | None = None, executor: Any = None,
              compile: str = "never") -> LOOResult:
    """Exact leave-one-out from the initialization ``model`` (left unchanged): ``n + 2`` trainings.

    Each run deep-copies ``model`` and trains on all examples but one, in their original order; one run trains on
    all examples (the reference) and one on all examples in a permuted order (the noise run). The reference run
    keeps its final state and its states after each step in ``checkpoint_steps`` (0 = the initialization) in
    ``LOOResult.final_state`` / ``checkpoints``. ``advance(k)`` is called as ``k`` more runs finish. ``compile``
    (auto | always | never) trains the serial and process runs through one compiled forward when it pays
    (:func:`plan_compile`; the decision is in ``LOOResult.compile``).
    """
    t0 = time.perf_counter()
    n = int(images.shape[0])
    device = next(model.parameters()).device
    strategy = resolve_strategy(strategy, device, workers, recipe, n)
    gen = noise_generator if noise_generator is not None else torch.Generator().manual_seed(1)
    perm = torch.randperm(n, generator=gen)
    subsets = loo_subsets(n)
    tick = advance or (lambda k: None)
    ckpt = tuple(int(s) for s in checkpoint_steps)
    compilers = 1 + workers if strategy == "processes" else 1
    key, decided = plan_compile(compile, model, images, labels, recipe, learned_lr, strategy, compilers)
    t_runs = time.perf_counter()
    if strategy == "processes":
        cpu = _Job(copy.deepcopy(model).cpu(), images.cpu(), labels.cpu(), test_images.cpu(), test_labels.cpu(),
                   recipe, learned_lr, ckpt, key)
        from ..executor import ProcessExecutor

        runs = [(s, False) for s in (perm, *subsets)]
        chunk = max(1, math.ceil(len(runs) / (4 * workers)))
        chunks = [[(torch.arange(n), True)]] + [runs[i:i + chunk] for i in range(0, len(runs), chunk)]
        # the study's executor (local processes or Ray tasks); local processes when called without one
        outs = (executor or ProcessExecutor(workers)).map(_retrain_many, chunks, shared=cpu,
                                                          on_result=lambda i, r: tick(int(r[0].shape[0])))
        losses = torch.cat([o[0] for o in outs])
        margins = torch.cat([o[1] for o in outs])
        extra = outs[0][2][0]
    else:
        job = _Job(model, images, labels, test_images, test_labels, recipe, learned_lr, ckpt, key)
        head = [_retrain(job, torch.arange(n), True), _retrain(job, perm)]
        extra = head[0][2]
        tick(2)
        if strategy == "vmap":
            loo = _loo_vmapped(job, subsets, vmap_batch, tick)
        else:
            outs = []
            for s in subsets:
                outs.append(_retrain(job, s))
                tick(1)
            loo = (torch.stack([o[0] for o in outs]), torch.stack([o[1] for o in outs]))
        losses = torch.cat([torch.stack([head[0][0], head[1][0]]), loo[0]])
        margins = torch.cat([torch.stack([head[0][1], head[1][1]]), loo[1]])
    if key is not None and strategy == "serial" and decided.get("eager_step_s"):
        from .. import compiled

        if compiled.failure(key) is None:  # the steady-state gain of this bag (test evaluations included)
            per_step = (time.perf_counter() - t_runs) / max(1, decided["bag_steps"])
            compiled.record(key, gain=decided["eager_step_s"] / per_step)
            decided["measured_gain"] = round(compiled.measured(key)["gain"], 3)
    return LOOResult(losses[0], losses[2:], margins[0], margins[2:], losses[1], margins[1],
                     seconds=time.perf_counter() - t0, strategy=strategy, retrains=n + 2,
                     final_state=extra["final"], checkpoints=extra["checkpoints"], compile=decided)


def plan_compile(setting: str, model: nn.Module, images: torch.Tensor, labels: torch.Tensor, recipe: TrainRecipe,
                 learned_lr: float | None, strategy: str, compilers: int = 1) -> tuple[str | None, dict[str, Any]]:
    """The compile key for a leave-one-out bag (None: eager) and the decision, for ``exact_loo``.

    ``auto`` (and ``always``, to record the gain) times four eager steps of ``fit`` (after one warm-up) and asks
    :func:`ddprobe.compiled.decide` about the bag's ``(n + 2) x steps`` steps. A decision to compile compiles here,
    before any run, so a failure falls back to eager and is recorded.
    """
    from .. import compiled

    n = int(images.shape[0])
    device = next(model.parameters()).device
    key = compiled.arch_key([type(model).__name__, repr(model)], device, recipe.batch(n - 1))  # the n LOO runs
    if strategy == "vmap":
        return None, {"setting": setting, "compile": False, "reason": "vmap retraining is not compiled"}
    why = compiled.failure(key) or compiled.eligible(model)
    if setting != "never" and why is not None:
        return None, {"setting": setting, "compile": False, "reason": f"eager: {why}"}
    bag_steps = (n + 2) * recipe.total_steps(n - 1)
    eager = None
    if setting != "never" and bag_steps > 0:  # "always" measures too: the bag's gain is then recorded
        def run(steps: int) -> float:
            net = copy.deepcopy(model)
            t0 = time.perf_counter()
            fit(net, images, labels, recipe.model_copy(update={"steps": steps, "epochs": None}),
                learned_lr=learned_lr)
            return time.perf_counter() - t0

        run(1)  # warm-up
        eager = max(run(5) - run(1), 1e-9) / 4  # 5 steps minus 1: the first step's overheads cancel
    m = compiled.measured(key)
    decision = compiled.decide(setting, bag_steps, eager, gain=m.get("gain"), compile_s=m.get("compile_s"),
                               compilers=compilers)
    info = {"setting": setting, "bag_steps": bag_steps, "eager_step_s": eager, **decision.to_json()}
    if not decision.compile:
        return None, info
    if compiled.forward(copy.deepcopy(model), key, images[: recipe.batch(n - 1)]) is None:
        info.update(compile=False, reason="eager: compiling failed", failed=compiled.failure(key))
        return None, info
    info["compile_s"] = round(compiled.measured(key).get("compile_s", 0.0), 3)
    return key, info


def resolve_strategy(strategy: Strategy, device: Any, workers: int, recipe: TrainRecipe, n: int) -> str:
    """``auto``: vmap on CUDA (full-batch SGD recipes), worker processes on CPU when ``workers > 1``, else serial."""
    if strategy != "auto":
        if strategy == "vmap" and lean_unsupported(recipe, n - 1):
            raise ValueError(f"the vmap strategy needs a full-batch SGD recipe: {lean_unsupported(recipe, n - 1)}")
        return strategy
    kind = torch.device(device).type
    if kind == "cuda" and lean_unsupported(recipe, n - 1) is None:
        return "vmap"
    if kind == "cpu" and workers > 1:
        return "processes"
    return "serial"


def _loo_vmapped(job: _Job, subsets: list[torch.Tensor], batch: int,
                 tick: Callable[[int], None]) -> tuple[torch.Tensor, torch.Tensor]:
    """Leave-one-out runs ``batch`` at a time: parameters stacked along a model axis, one vmapped full-batch step.

    The same arithmetic as ``fit`` per model (up to floating-point reassociation in batched kernels).
    """
    from torch.func import functional_call, grad, vmap

    model = job.model
    if any(True for _ in model.buffers()):
        raise ValueError("the vmap strategy does not support models with buffers (BatchNorm running statistics); "
                         "use strategy 'serial' or 'processes'")
    device = next(model.parameters()).device
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    base = {n: p.detach() for n, p in model.named_parameters()}
    recipe = job.recipe
    steps = recipe.total_steps(len(subsets[0]))
    lr = recipe.resolved_lr(job.learned_lr)
    momentum, wd = float(recipe.momentum), float(recipe.weight_decay)

    def loss(p: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return loss_fn(functional_call(model, p, (x,)), y)

    step_grad = vmap(grad(loss))
    losses, margins = [], []
    for start in range(0, len(subsets), batch):
        idx = torch.stack(subsets[start:start + batch]).to(device)
        b = idx.shape[0]
        x, y = job.images[idx], job.labels[idx]
        params = {n: base[n].unsqueeze(0).repeat(b, *([1] * base[n].dim())) for n in base}
        trainable = [params[n] for n in names]
        bufs: list[torch.Tensor] | None = None
        model.train()
        for _ in range(steps):
            g = step_grad(params, x, y)
            grads = [g[n] for n in names]
            if wd != 0:
                grads = list(torch._foreach_add(grads, trainable, alpha=wd))
            if momentum != 0:
                if bufs is None:
                    bufs = [t.clone() for t in grads]
                else:
                    torch._foreach_mul_(bufs, momentum)
                    torch._foreach_add_(bufs, grads)
                grads = bufs
            torch._foreach_add_(trainable, grads, alpha=-lr)
        model.eval()
        with torch.no_grad():
            chunk_l, chunk_m = [], []
            for s in range(0, job.test_images.shape[0], 1024):
                tx = job.test_images[s:s + 1024].to(device)
                ty = job.test_labels[s:s + 1024].to(device)
                logits = vmap(lambda p, xx=tx: functional_call(model, p, (xx,)))(params)  # [b, t, K]
                chunk_l.append(torch.stack([loss_fn(lg, ty, reduction="none") for lg in logits]))
                chunk_m.append(torch.stack([margins_of(lg, ty) for lg in logits]))
            losses.append(torch.cat(chunk_l, 1).cpu())
            margins.append(torch.cat(chunk_m, 1).cpu())
        tick(b)
    return torch.cat(losses), torch.cat(margins)
