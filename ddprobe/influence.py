"""Influence of training examples on test examples: exact leave-one-out retraining and audited approximations.

Sign convention (defined here and in docs/influence.md, nowhere else)::

    influence[i, j] = loss_j(model trained without example i) - loss_j(model trained on all examples)

Positive: removing ``i`` raises test example ``j``'s loss, so ``i`` *helps* ``j``. Negative: ``i`` harms ``j``.
Margin influence uses the same orientation, ``margin_j(all) - margin_j(without i)``, so positive again means helps.
Every approximation backend estimates this same quantity (same sign, same 1/n scale for influence functions).

Parts:

* ``fit``: a lean full-batch SGD loop (no optimizer object, no callbacks unless asked, ``foreach`` updates) that
  reproduces ``training.train`` for full-batch SGD recipes; other recipes fall back to ``training.train``.
* ``exact_loo``: retrain from one initialization without each example, plus the full set and a noise run (the full
  set in another order), with three strategies: ``serial``, ``processes`` (``executor.process_map``) and ``vmap``
  (``torch.func`` over stacked parameters, the GPU lever).
* ``Objective``: a model's training loss as a function of a flat vector of a parameter subset (``last`` = the
  classifier head on frozen features, or ``all``), with per-example gradients and Hessian-vector products.
* Backends (``BACKENDS``, ``register_backend``): ``explicit``, ``cg``, ``lissa``, ``arnoldi``, ``tracin``. A backend is
  a class with ``name``, ``description``, a pydantic ``Options`` and ``compute(problem) -> BackendResult``.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from .training import Callback, TrainRecipe, TrainState, loss_fn

# ---------------------------------------------------------------------------------------------------------------
# The lean trainer


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
        callbacks: Sequence[Callback] = ()) -> nn.Module:
    """Train ``model`` in place and return it in eval mode.

    For full-batch SGD recipes this is a lean loop equal to ``training.train`` for the same initialization, data
    and recipe (tests/test_influence.py checks it): ``autograd.grad`` instead of ``.grad`` bookkeeping and
    ``torch._foreach`` momentum updates in the order ``torch.optim.SGD`` applies them. Other recipes go through
    ``training.train`` with ``generator`` for the data order.
    """
    n = int(images.shape[0])
    if lean_unsupported(recipe, n) is not None:
        from .data import LabeledData
        from .training import train

        gen = generator if generator is not None else torch.Generator().manual_seed(0)
        return train(model, LabeledData(images, labels, []), recipe, generator=gen, callbacks=callbacks,
                     learned_lr=learned_lr)
    steps = recipe.total_steps(n)
    lr = recipe.resolved_lr(learned_lr)
    momentum, wd = float(recipe.momentum), float(recipe.weight_decay)
    params = [p for p in model.parameters() if p.requires_grad]
    bufs: list[torch.Tensor] | None = None
    model.train()
    for cb in callbacks:
        cb(TrainState(0, steps, model, None))
    for step in range(1, steps + 1):
        loss = loss_fn(model(images), labels)
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
    from .training import predict

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
    fit(net, job.images[idx], job.labels[idx], job.recipe, learned_lr=job.learned_lr, generator=gen,
        callbacks=callbacks)
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
              advance: Callable[[int], None] | None = None) -> LOOResult:
    """Exact leave-one-out from the initialization ``model`` (left unchanged): ``n + 2`` trainings.

    Each run deep-copies ``model`` and trains on all examples but one, in their original order; one run trains on
    all examples (the reference) and one on all examples in a permuted order (the noise run). The reference run
    keeps its final state and its states after each step in ``checkpoint_steps`` (0 = the initialization) in
    ``LOOResult.final_state`` / ``checkpoints``. ``advance(k)`` is called as ``k`` more runs finish.
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
    if strategy == "processes":
        cpu = _Job(copy.deepcopy(model).cpu(), images.cpu(), labels.cpu(), test_images.cpu(), test_labels.cpu(),
                   recipe, learned_lr, ckpt)
        from .executor import process_map

        runs = [(s, False) for s in (perm, *subsets)]
        chunk = max(1, math.ceil(len(runs) / (4 * workers)))
        chunks = [[(torch.arange(n), True)]] + [runs[i:i + chunk] for i in range(0, len(runs), chunk)]
        outs = process_map(_retrain_many, chunks, workers=workers, shared=cpu,
                           on_result=lambda i, r: tick(int(r[0].shape[0])))
        losses = torch.cat([o[0] for o in outs])
        margins = torch.cat([o[1] for o in outs])
        extra = outs[0][2][0]
    else:
        job = _Job(model, images, labels, test_images, test_labels, recipe, learned_lr, ckpt)
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
    return LOOResult(losses[0], losses[2:], margins[0], margins[2:], losses[1], margins[1],
                     seconds=time.perf_counter() - t0, strategy=strategy, retrains=n + 2,
                     final_state=extra["final"], checkpoints=extra["checkpoints"])


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


# ---------------------------------------------------------------------------------------------------------------
# The objective seen by influence functions

ParamSubset = Literal["last", "all"]


def head_of(model: nn.Module) -> tuple[str, nn.Module]:
    """The classifier head: ``model.head`` for ddprobe models, else the last ``nn.Linear``."""
    if isinstance(getattr(model, "head", None), nn.Module):
        return "head", model.head
    last = None
    for name, mod in model.named_modules():
        if isinstance(mod, nn.Linear):
            last = (name, mod)
    if last is None:
        raise ValueError(f"{type(model).__name__} has no nn.Linear layer to use as the 'last' parameter subset")
    return last


class Objective:
    """The mean training loss (plus ``l2/2 |theta|^2``) as a function of a flat vector ``theta`` of parameters.

    ``params="last"``: the classifier head's weights, on features computed once by the frozen body (exact for
    ddprobe models, whose forward is ``head(embed(x))``). ``params="all"``: every trainable parameter, through the
    whole network. The model is evaluated in eval mode. ``inputs(x)`` maps images to what ``logits`` takes.
    """

    def __init__(self, model: nn.Module, train_x: torch.Tensor, train_y: torch.Tensor, params: ParamSubset = "last",
                 l2: float = 0.0):
        from torch.func import functional_call

        self.model, self.params, self.l2 = model.eval(), params, float(l2)
        self.device = next(model.parameters()).device
        features = params == "last" and hasattr(model, "embed") and isinstance(getattr(model, "head", None),
                                                                                 nn.Linear)
        if params == "last":
            prefix, module = head_of(model)
            named = {n: p for n, p in module.named_parameters() if p.requires_grad}
            self._full_names = {n: f"{prefix}.{n}" if prefix else n for n in named}
        elif params == "all":
            module, named = model, {n: p for n, p in model.named_parameters() if p.requires_grad}
            self._full_names = {n: n for n in named}
        else:
            raise ValueError(f"params must be 'last' or 'all', not {params!r}")
        self.names = list(named)
        self.shapes = [named[n].shape for n in self.names]
        self.sizes = [named[n].numel() for n in self.names]
        self.theta0 = torch.cat([named[n].detach().reshape(-1) for n in self.names]).float()
        self.features = features
        # a linear head on frozen features: gradients and Hessian-vector products in closed form (no autograd)
        self.linear = features and isinstance(module, nn.Linear) and self.names[0] == "weight"
        self.bias = "bias" in self.names
        frozen = {**{n: p.detach() for n, p in model.named_parameters()}, **dict(model.named_buffers())}
        if features:
            self._fn = lambda d, x: functional_call(module, d, (x,))
        else:
            full = self._full_names
            self._fn = lambda d, x: functional_call(model, {**frozen, **{full[k]: v for k, v in d.items()}}, (x,))
        self.train_x = self.inputs(train_x)
        self.train_y = train_y.to(self.device)
        self.n = int(self.train_x.shape[0])
        self._graph: tuple[torch.Tensor, torch.Tensor] | None = None

    @property
    def dim(self) -> int:
        return int(self.theta0.numel())

    @torch.no_grad()
    def inputs(self, x: torch.Tensor, batch: int = 1024) -> torch.Tensor:
        if not self.features:
            return x.to(self.device)
        return torch.cat([self.model.embed(x[s:s + batch].to(self.device)) for s in range(0, x.shape[0], batch)])

    def unflatten(self, theta: torch.Tensor) -> dict[str, torch.Tensor]:
        parts = torch.split(theta, self.sizes)
        return {n: p.view(s) for n, p, s in zip(self.names, parts, self.shapes, strict=True)}

    def logits(self, theta: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return self._fn(self.unflatten(theta), x)

    def loss(self, theta: torch.Tensor, idx: torch.Tensor | None = None) -> torch.Tensor:
        x, y = (self.train_x, self.train_y) if idx is None else (self.train_x[idx], self.train_y[idx])
        out = loss_fn(self.logits(theta, x), y)
        if self.l2:
            out = out + 0.5 * self.l2 * theta.pow(2).sum()
        return out

    def hvp(self, v: torch.Tensor, idx: torch.Tensor | None = None) -> torch.Tensor:
        """``H v`` at ``theta0`` for one vector ``[p]`` or columns ``[p, k]``, by double backward.

        The gradient graph of the full training loss is built once and reused; ``idx`` (a minibatch of training
        examples, for stochastic LiSSA) builds a fresh one. A linear head uses the closed form
        ``H v = mean_i J_i^T (diag(p_i) - p_i p_i^T) J_i v`` instead.
        """
        if self.linear:
            return self._linear_hvp(v, idx)
        if idx is None:
            if self._graph is None:
                self._graph = self._grad_graph(None)
            th, g = self._graph
        else:
            th, g = self._grad_graph(idx)
        if v.dim() == 1:
            return torch.autograd.grad(g, th, v, retain_graph=True)[0]
        cols = []
        for s in range(0, v.shape[1], 64):
            block = v[:, s:s + 64].T.contiguous()
            cols.append(torch.autograd.grad(g, th, block, retain_graph=True, is_grads_batched=True)[0].T)
        return torch.cat(cols, 1)

    def _linear_parts(self, theta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        d = self.train_x.shape[1]
        k = self.shapes[0][0]
        w = theta[: k * d].view(k, d)
        return w, (theta[k * d:] if self.bias else None)

    def _linear_hvp(self, v: torch.Tensor, idx: torch.Tensor | None) -> torch.Tensor:
        x = self.train_x if idx is None else self.train_x[idx]
        w, b = self._linear_parts(self.theta0)
        p = torch.softmax(x @ w.T + (b if b is not None else 0), dim=1)  # [n, K]
        cols = v.unsqueeze(1) if v.dim() == 1 else v
        k, d = w.shape
        vw = cols[: k * d].T.reshape(-1, k, d)  # [c, K, d]
        dz = torch.einsum("nd,ckd->cnk", x, vw)
        if self.bias:
            dz = dz + cols[k * d:].T.unsqueeze(1)
        dp = p * dz - p * (p * dz).sum(-1, keepdim=True)  # softmax Jacobian times dz: [c, n, K]
        hw = torch.einsum("cnk,nd->ckd", dp, x).reshape(dp.shape[0], -1) / x.shape[0]
        out = torch.cat([hw, dp.sum(1) / x.shape[0]], 1) if self.bias else hw
        out = out.T + self.l2 * cols
        return out.squeeze(1) if v.dim() == 1 else out

    def _grad_graph(self, idx: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.enable_grad():
            th = self.theta0.detach().clone().requires_grad_(True)
            return th, torch.autograd.grad(self.loss(th, idx), th, create_graph=True)[0]

    def hessian(self) -> torch.Tensor:
        """The explicit ``[p, p]`` Hessian (symmetrized), from ``p`` vmapped Hessian-vector products."""
        eye = torch.eye(self.dim, device=self.theta0.device, dtype=self.theta0.dtype)
        cols = [self.hvp(eye[:, s:s + 256]) for s in range(0, self.dim, 256)]
        h = torch.cat(cols, 1)
        return 0.5 * (h + h.T)

    def example_grads(self, x: torch.Tensor, y: torch.Tensor, theta: torch.Tensor | None = None,
                      prepared: bool = False) -> torch.Tensor:
        """Per-example gradients ``[b, p]`` of the (unregularized) loss; ``x`` are images unless ``prepared``."""
        th = self.theta0 if theta is None else theta
        xi = x if prepared else self.inputs(x)
        y = y.to(self.device)
        if self.linear:  # (softmax - target) outer features
            w, b = self._linear_parts(th)
            r = torch.softmax(xi @ w.T + (b if b is not None else 0), dim=1)
            r = r - (y if y.dim() == 2 else nn.functional.one_hot(y, r.shape[1]).to(r.dtype))
            gw = (r.unsqueeze(2) * xi.unsqueeze(1)).flatten(1)
            return torch.cat([gw, r], 1) if self.bias else gw
        from torch.func import grad, vmap

        def one(t: torch.Tensor, xx: torch.Tensor, yy: torch.Tensor) -> torch.Tensor:
            return loss_fn(self.logits(t, xx.unsqueeze(0)), yy.unsqueeze(0))

        return vmap(grad(one), in_dims=(None, 0, 0))(th, xi, y).detach()

    def train_grads(self) -> torch.Tensor:
        return self.example_grads(self.train_x, self.train_y, prepared=True)

    def test_grad_chunks(self, x: torch.Tensor, y: torch.Tensor, chunk: int = 256):
        for s in range(0, x.shape[0], chunk):
            yield s, self.example_grads(x[s:s + chunk], y[s:s + chunk])


# ---------------------------------------------------------------------------------------------------------------
# Backends


@dataclass
class InfluenceProblem:
    """What a backend gets: the model trained on the full set, the data, and the training run's checkpoints.

    ``checkpoints`` are ``(step, state_dict)`` pairs of the same training run, for TracIn; ``lr`` its step size;
    ``l2`` the recipe's weight decay (added to the Hessian: the trained objective includes it).
    """

    model: nn.Module
    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    lr: float = 0.01
    l2: float = 0.0
    checkpoints: list[tuple[int, dict[str, torch.Tensor]]] = field(default_factory=list)
    _objectives: dict[str, Objective] = field(default_factory=dict, repr=False)

    @property
    def n(self) -> int:
        return int(self.train_x.shape[0])

    def objective(self, params: ParamSubset) -> Objective:
        if params not in self._objectives:
            self._objectives[params] = Objective(self.model, self.train_x, self.train_y, params, self.l2)
        return self._objectives[params]

    def removal_gradients(self, obj: Objective) -> torch.Tensor:
        """``[p, n]`` columns ``g_i + l2 theta``: what removing example ``i`` adds to the gradient, times ``n - 1``.

        Retraining without ``i`` minimizes the mean loss over the other ``n - 1`` examples plus the L2 term. At the
        full-set optimum that objective's gradient is ``-(g_i + l2 theta) / (n - 1)``, so one Newton step moves the
        parameters by ``H^-1 (g_i + l2 theta) / (n - 1)`` (Koh & Liang's removal estimate, exact to first order).
        """
        return (obj.train_grads() + obj.l2 * obj.theta0).T.contiguous()

    def scores_from_ihvp(self, obj: Objective, ihvp: torch.Tensor) -> torch.Tensor:
        """``[n, m]`` predicted ``loss_without_i - loss_full = g_test_j . H^-1 (g_i + l2 theta) / (n - 1)``."""
        rows = []
        for _, g in obj.test_grad_chunks(self.test_x, self.test_y):
            rows.append((g @ ihvp).T)
        return (torch.cat(rows, 1) / max(1, self.n - 1)).cpu()


@dataclass
class BackendResult:
    """A backend's estimate of the influence matrix ``[n, m]`` (None when it failed), its status and timing."""

    scores: torch.Tensor | None
    status: Literal["ok", "diverged", "failed"] = "ok"
    seconds: float = 0.0
    info: dict[str, Any] = field(default_factory=dict)


class InfluenceBackend:
    """Base class. Subclass, set ``name``/``description``/``Options`` and implement ``_compute``; register it."""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""

    class Options(BaseModel):
        model_config = ConfigDict(extra="forbid")

    def __init__(self, options: BaseModel | dict[str, Any] | None = None):
        self.options = options if isinstance(options, BaseModel) else self.Options(**(options or {}))

    def compute(self, problem: InfluenceProblem) -> BackendResult:
        """Run the backend and time it; a backend never returns NaN scores (it reports a status instead)."""
        t0 = time.perf_counter()
        try:
            result = self._compute(problem)
        except (RuntimeError, ValueError) as exc:  # numerical failure or unsupported model: report, do not crash
            result = BackendResult(None, "failed", info={"error": f"{type(exc).__name__}: {exc}"})
        result.seconds = time.perf_counter() - t0
        if result.scores is not None and not bool(torch.isfinite(result.scores).all()):
            result = BackendResult(None, "diverged", result.seconds, {**result.info, "error": "non-finite scores"})
        return result

    def _compute(self, problem: InfluenceProblem) -> BackendResult:  # pragma: no cover - abstract
        raise NotImplementedError


BACKENDS: dict[str, type[InfluenceBackend]] = {}


def register_backend(cls: type[InfluenceBackend]) -> type[InfluenceBackend]:
    """Register a backend class under ``cls.name`` (a decorator); duplicate names are an error."""
    if not cls.name:
        raise ValueError(f"influence backend {cls.__name__} has no name")
    if cls.name in BACKENDS and BACKENDS[cls.name] is not cls:
        raise ValueError(f"influence backend {cls.name!r} is already registered by {BACKENDS[cls.name].__module__}")
    BACKENDS[cls.name] = cls
    return cls


def get_backend(name: str, options: dict[str, Any] | None = None) -> InfluenceBackend:
    if name not in BACKENDS:
        import difflib

        near = difflib.get_close_matches(name, list(BACKENDS), n=1)
        hint = f"; did you mean {near[0]!r}?" if near else ""
        raise KeyError(f"no influence backend {name!r}{hint} (registered: {', '.join(sorted(BACKENDS))})")
    return BACKENDS[name](options)


class _IFOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    params: ParamSubset = Field("last", description="parameter subset: 'last' (classifier head) or 'all'")
    damping: float = Field(0.01, ge=0, description="added to the Hessian's diagonal (Koh & Liang's lambda)")


@register_backend
class Explicit(InfluenceBackend):
    name = "explicit"
    description = "influence functions with the explicit damped Hessian inverted exactly (small parameter subsets)"

    class Options(_IFOptions):
        max_params: int = Field(6000, ge=1, description="refuse larger subsets (the Hessian is params^2)")

    def _compute(self, problem: InfluenceProblem) -> BackendResult:
        o = self.options
        obj = problem.objective(o.params)
        if obj.dim > o.max_params:
            return BackendResult(None, "failed", info={"error": f"{obj.dim} parameters > max_params {o.max_params}"})
        h = obj.hessian().double()
        eig = torch.linalg.eigvalsh(h)
        damped = h + o.damping * torch.eye(obj.dim, dtype=h.dtype, device=h.device)
        ihvp = torch.linalg.solve(damped, problem.removal_gradients(obj).double()).float()
        return BackendResult(problem.scores_from_ihvp(obj, ihvp), info={
            "params": obj.dim, "min_eigenvalue": float(eig[0]), "max_eigenvalue": float(eig[-1]),
            "negative_eigenvalues": int((eig < -1e-6 * eig.abs().max()).sum())})  # beyond rounding


@register_backend
class ConjugateGradient(InfluenceBackend):
    name = "cg"
    description = "influence functions, H^-1 g by conjugate gradient on Hessian-vector products (one per column)"

    class Options(_IFOptions):
        max_iter: int = Field(100, ge=1)
        tol: float = Field(1e-6, gt=0, description="stop when every residual norm < tol * |g|")

    def _compute(self, problem: InfluenceProblem) -> BackendResult:
        o = self.options
        obj = problem.objective(o.params)
        g = problem.removal_gradients(obj)  # [p, n]

        def op(v: torch.Tensor) -> torch.Tensor:
            return obj.hvp(v) + o.damping * v

        x, info = cg_solve(op, g, o.max_iter, o.tol)
        status = "ok" if info["converged"] or info["relative_residual"] < 1e-2 else "diverged"
        if not bool(torch.isfinite(x).all()):
            return BackendResult(None, "diverged", info=info)
        return BackendResult(problem.scores_from_ihvp(obj, x) if status == "ok" else None, status, info=info)


def cg_solve(op: Callable[[torch.Tensor], torch.Tensor], b: torch.Tensor, max_iter: int,
             tol: float) -> tuple[torch.Tensor, dict[str, Any]]:
    """Solve ``op(X) = B`` column by column (vectorized); ``op`` must be symmetric (positive definite to converge)."""
    x = torch.zeros_like(b)
    r = b.clone()
    p = r.clone()
    rs = (r * r).sum(0)
    bnorm = b.norm(dim=0).clamp_min(1e-30)
    iterations = 0
    for iterations in range(1, max_iter + 1):  # noqa: B007 - reported below
        ap = op(p)
        curv = (p * ap).sum(0)
        active = rs.sqrt() > tol * bnorm
        alpha = torch.where(active & (curv > 0), rs / curv.clamp_min(1e-30), torch.zeros_like(rs))
        x = x + alpha * p
        r = r - alpha * ap
        rs_new = (r * r).sum(0)
        beta = torch.where(active, rs_new / rs.clamp_min(1e-30), torch.zeros_like(rs))
        p = r + beta * p
        rs = rs_new
        if not bool((rs.sqrt() > tol * bnorm).any()):
            break
    rel = float((rs.sqrt() / bnorm).max())
    return x, {"iterations": iterations, "relative_residual": rel, "converged": rel <= tol}


def top_eigenvalue(hvp: Callable[[torch.Tensor], torch.Tensor], dim: int, iters: int = 30,
                   generator: torch.Generator | None = None, device: Any = "cpu") -> float:
    """Largest-magnitude eigenvalue of a symmetric operator by power iteration."""
    v = torch.randn(dim, generator=generator).to(device)
    v = v / v.norm()
    lam = 0.0
    for _ in range(iters):
        w = hvp(v)
        lam = float(v @ w)
        nrm = w.norm()
        if not torch.isfinite(nrm) or nrm == 0:
            break
        v = w / nrm
    return lam


@register_backend
class LiSSA(InfluenceBackend):
    name = "lissa"
    description = "influence functions, H^-1 g by the LiSSA recursion (damped, scaled, with a divergence check)"

    class Options(_IFOptions):
        depth: int = Field(500, ge=1, description="recursion steps")
        scale: float | Literal["auto"] = Field(
            "auto", description="divides the Hessian; must exceed its top eigenvalue ('auto': 1.5 x power iteration)")
        batch_size: int | None = Field(None, ge=1, description="examples per stochastic HVP (None: all, exact)")
        seed: int = 0
        divergence: float = Field(1e4, gt=1, description="diverged when |h| exceeds this times scale/damping |g|")

    def _compute(self, problem: InfluenceProblem) -> BackendResult:
        o = self.options
        obj = problem.objective(o.params)
        g = problem.removal_gradients(obj)
        gen = torch.Generator().manual_seed(o.seed)
        if o.scale == "auto":
            lam = top_eigenvalue(obj.hvp, obj.dim, generator=gen, device=obj.device) + o.damping
            scale = 1.5 * abs(lam) if lam != 0 else 1.0
        else:
            scale = float(o.scale)
        h, info = lissa_solve(lambda v, idx: obj.hvp(v, idx), g, obj.n, damping=o.damping, scale=scale,
                              depth=o.depth, batch_size=o.batch_size, generator=gen, divergence=o.divergence)
        if info["diverged"]:
            return BackendResult(None, "diverged", info=info)
        return BackendResult(problem.scores_from_ihvp(obj, h), info=info)


def lissa_solve(hvp: Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor], g: torch.Tensor, n: int, *,
                damping: float, scale: float, depth: int, batch_size: int | None = None,
                generator: torch.Generator | None = None, divergence: float = 1e4) -> tuple[torch.Tensor, dict]:
    """``(H + damping I)^-1 g`` by ``h <- g + h - (H h + damping h) / scale``, returned as ``h / scale``.

    Converges when ``scale`` exceeds the damped Hessian's largest eigenvalue and the damped Hessian is positive
    definite. Stops and reports ``diverged`` (never NaN) when ``|h|`` leaves the bound ``divergence * scale /
    damping * |g|`` or stops being finite.
    """
    h = g.clone()
    gnorm = float(g.norm())
    bound = divergence * scale / max(damping, 1e-12) * max(gnorm, 1e-30)
    info: dict[str, Any] = {"scale": scale, "damping": damping, "depth": depth, "diverged": False}
    for step in range(1, depth + 1):
        idx = None if batch_size is None or batch_size >= n else torch.randperm(n, generator=generator)[:batch_size]
        h = g + h - (hvp(h, idx.to(g.device) if idx is not None else None) + damping * h) / scale
        norm = float(h.norm())
        if not math.isfinite(norm) or norm > bound:
            info.update(diverged=True, step=step, norm=norm if math.isfinite(norm) else "inf",
                        hint="raise scale above the top Hessian eigenvalue, or raise damping")
            return g, info
    info["steps"] = depth
    return h / scale, info


@register_backend
class Arnoldi(InfluenceBackend):
    name = "arnoldi"
    description = "influence functions on the top eigenspace of the Hessian found by Arnoldi iteration"

    class Options(_IFOptions):
        iterations: int = Field(60, ge=2, description="Krylov subspace size")
        rank: int = Field(30, ge=1, description="eigenpairs kept (largest magnitude)")
        seed: int = 0

    def _compute(self, problem: InfluenceProblem) -> BackendResult:
        o = self.options
        obj = problem.objective(o.params)
        gen = torch.Generator().manual_seed(o.seed)
        vals, vecs = arnoldi_eig(obj.hvp, obj.dim, min(o.iterations, obj.dim), generator=gen, device=obj.device)
        keep = torch.argsort(vals.abs(), descending=True)[: o.rank]
        vals, vecs = vals[keep], vecs[:, keep]
        inv = 1.0 / (vals + o.damping)
        ihvp = vecs @ (inv.unsqueeze(1) * (vecs.T @ problem.removal_gradients(obj)))
        return BackendResult(problem.scores_from_ihvp(obj, ihvp), info={
            "rank": int(vals.numel()), "top_eigenvalue": float(vals.abs().max()),
            "smallest_kept": float(vals.abs().min())})


def arnoldi_eig(hvp: Callable[[torch.Tensor], torch.Tensor], dim: int, iterations: int,
                generator: torch.Generator | None = None, device: Any = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """Eigenpairs of a symmetric operator from an Arnoldi iteration with full re-orthogonalization."""
    q = torch.randn(dim, generator=generator, dtype=torch.float64).to(device)
    basis = [q / q.norm()]
    hess = torch.zeros(iterations + 1, iterations, dtype=torch.float64)
    for k in range(iterations):
        w = hvp(basis[k].float()).double()
        for j in range(k + 1):
            hess[j, k] = basis[j] @ w
            w = w - hess[j, k] * basis[j]
        for j in range(k + 1):  # second pass: keeps the basis orthogonal in floating point
            c = basis[j] @ w
            hess[j, k] += c
            w = w - c * basis[j]
        hess[k + 1, k] = w.norm()
        if hess[k + 1, k] < 1e-10:
            iterations = k + 1
            break
        basis.append(w / hess[k + 1, k])
    small = hess[:iterations, :iterations]
    vals, vecs = torch.linalg.eigh(0.5 * (small + small.T))
    q_mat = torch.stack(basis[:iterations], 1)
    return vals.float().to(device), (q_mat @ vecs.to(device)).float()


@register_backend
class TracIn(InfluenceBackend):
    name = "tracin"
    description = "TracIn: lr/n x gradient dot products summed over the training run's checkpoints"

    class Options(BaseModel):
        model_config = ConfigDict(extra="forbid")

        params: ParamSubset = Field("last", description="parameter subset: 'last' (classifier head) or 'all'")

    def _compute(self, problem: InfluenceProblem) -> BackendResult:
        if not problem.checkpoints:
            return BackendResult(None, "failed", info={"error": "no checkpoints of the training run"})
        net = copy.deepcopy(problem.model)
        total = torch.zeros(problem.n, problem.test_x.shape[0])
        for _, state in problem.checkpoints:  # one checkpoint at a time, never all loaded as models at once
            net.load_state_dict(state)
            obj = Objective(net, problem.train_x, problem.train_y, self.options.params, problem.l2)
            gtr = obj.train_grads()
            for s, g in obj.test_grad_chunks(problem.test_x, problem.test_y):
                total[:, s:s + g.shape[0]] += (gtr @ g.T).cpu()
        return BackendResult(total * problem.lr / problem.n, info={"checkpoints": len(problem.checkpoints)})


# ---------------------------------------------------------------------------------------------------------------
# Audit and summaries


def correlations(estimate: torch.Tensor, exact: torch.Tensor) -> dict[str, float]:
    """Pearson and Spearman over all entries, and the mean per-row Spearman (each training example's ranking)."""
    import numpy as np
    from scipy.stats import pearsonr, spearmanr

    a = estimate.double().flatten().numpy()
    b = exact.double().flatten().numpy()
    if np.std(a) == 0 or np.std(b) == 0:
        return {"pearson": 0.0, "spearman": 0.0, "row_spearman": 0.0}
    pairs = zip(estimate.double().numpy(), exact.double().numpy(), strict=True)
    rows = [spearmanr(r1, r2).statistic for r1, r2 in pairs if np.std(r1) > 0 and np.std(r2) > 0]
    return {"pearson": float(pearsonr(a, b).statistic), "spearman": float(spearmanr(a, b).statistic),
            "row_spearman": float(np.mean(rows)) if rows else 0.0}


def rank_agreement(influences: Sequence[torch.Tensor]) -> float:
    """Mean Spearman correlation between the rows of two initializations' influence matrices, over all pairs."""
    import numpy as np
    from scipy.stats import spearmanr

    vals = []
    for a in range(len(influences)):
        for b in range(a + 1, len(influences)):
            for r1, r2 in zip(influences[a].double().numpy(), influences[b].double().numpy(), strict=True):
                if np.std(r1) > 0 and np.std(r2) > 0:
                    vals.append(spearmanr(r1, r2).statistic)
    return float(np.mean(vals)) if vals else float("nan")


def top_k(influence: torch.Tensor, k: int, helped: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row, the ``k`` most helped (largest influence) or most harmed (smallest) columns: (indices, values)."""
    k = min(k, influence.shape[1])
    vals, idx = torch.topk(influence, k, dim=1, largest=helped)
    return idx, vals


def label_agreement(influence: torch.Tensor, train_labels: torch.Tensor, test_labels: torch.Tensor, k: int) -> float:
    """Mean over training examples of the fraction of their top-k most helped test examples sharing their label."""
    idx, _ = top_k(influence, k)
    return float((test_labels[idx] == train_labels.view(-1, 1)).float().mean())


def gradient_similarity(model: nn.Module, query_x: torch.Tensor, query_y: torch.Tensor, pool_x: torch.Tensor,
                        pool_y: torch.Tensor, params: ParamSubset = "last", chunk: int = 512) -> torch.Tensor:
    """Cosine similarity ``[q, r]`` between per-example loss gradients of queries and a pool (reverse direction)."""
    obj = Objective(model, query_x, query_y, params)
    gq = torch.nn.functional.normalize(obj.train_grads(), dim=1)
    out = []
    for _, g in obj.test_grad_chunks(pool_x, pool_y, chunk):
        out.append((gq @ torch.nn.functional.normalize(g, dim=1).T).cpu())
    return torch.cat(out, 1)
