"""MTT: dataset distillation by matching training trajectories (Cazenavette et al. 2022), paper-methods C.4.

Expert trajectories (parameters at initialization and after every epoch of training on the real data) are cached
artifacts of kind ``mtt-experts``, one per expert, keyed by the network, the data, the seed, the expert's index
and its training settings, so every MTT set of a study (and later studies) reuses them.

Each iteration starts a student at an expert's epoch t, takes ``syn_steps`` SGD steps on synthetic minibatches
with a learnable step size, and matches the expert's parameters at epoch t + ``expert_epochs``:
loss = |theta_N - theta*_{t+M}|^2 / |theta*_t - theta*_{t+M}|^2. Both the images and the step size learn.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from .. import dsa as dsa_mod
from .common import FlatModel, Matching


def trajectory_loss(fmodel: FlatModel, start: torch.Tensor, target: torch.Tensor, images: torch.Tensor,
                    labels: torch.Tensor, syn_lr: torch.Tensor, batches: Sequence[torch.Tensor],
                    augment: Callable[[torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
    """The normalized parameter distance after the student takes one SGD step per index batch from ``start``.

    The graph through every step is kept: the loss differentiates to ``images`` and ``syn_lr``.
    """
    theta = start.detach().clone().requires_grad_(True)
    for idx in batches:
        x = images[idx]
        if augment is not None:
            x = augment(x)
        ce = F.cross_entropy(fmodel(theta, x), labels[idx])
        grad = torch.autograd.grad(ce, theta, create_graph=True)[0]
        theta = theta - syn_lr * grad
    num = ((theta - target) ** 2).sum()
    den = ((start - target) ** 2).sum()
    return num / den.clamp_min(1e-12)


def train_expert(ctx, spec, real, options, index: int) -> torch.Tensor:
    """Train one expert on the real training set; return its trajectory ``[epochs + 1, P]`` (CPU)."""
    from ..training import TrainRecipe, train

    net = ctx.build_model(spec, f"mtt:expert:{index}")
    fm = FlatModel(net)
    data = real.train.to(ctx.device)
    n = len(data)
    batch = min(options.expert_batch, n)
    per_epoch = -(-n // batch)
    recipe = TrainRecipe(optimizer="sgd", lr=options.lr_teacher, momentum=options.expert_momentum,
                         epochs=options.expert_train_epochs, steps=None, batch_size=batch,
                         augment="dsa" if options.expert_dsa else "none")
    snaps = [fm.flat().cpu()]

    def snapshot(state) -> None:
        if state.step > 0 and state.step % per_epoch == 0:
            snaps.append(fm.flat().cpu())

    train(net, data, recipe, generator=ctx.rng(f"mtt:expert-train:{index}"), callbacks=[snapshot])
    return torch.stack(snaps)


def expert_parts(ctx, spec, options, index: int) -> dict[str, Any]:
    return {"model": spec.key(), "real": ctx.data_key, "seed": ctx.seed, "index": index,
            "epochs": options.expert_train_epochs, "lr": options.lr_teacher, "momentum": options.expert_momentum,
            "batch": options.expert_batch, "dsa": options.expert_dsa}


def ensure_experts(ctx, spec, real, options) -> None:
    """Train (or find in the cache) every expert, with a progress bar: a bag of independent trainings on the study's
    executor, each trajectory cached as it arrives (an interrupted run keeps the experts it finished)."""
    missing = [i for i in range(options.num_experts)
               if not ctx.cache.has("mtt-experts", ctx.cache.key("mtt-experts", expert_parts(ctx, spec, options, i)))]
    with ctx.progress.task(f"mtt experts {ctx.name}".strip(), total=options.num_experts) as task:
        task.advance(options.num_experts - len(missing))
        ex = ctx.executor
        if len(missing) < 2 or not ex.parallel(ctx.device):
            for i in missing:
                load_expert(ctx, spec, real, options, i)
                task.advance()
            return
        shared = ex.share((ctx.task_context(), spec, real, options))
        rounds = 2 * ex.workers  # trajectories held by the driver at once

        for start in range(0, len(missing), rounds):
            part = missing[start:start + rounds]

            def store(i: int, trajectory: torch.Tensor, part=part) -> None:
                ctx.cache.store_tensors("mtt-experts", expert_parts(ctx, spec, options, part[i]),
                                        {"trajectory": trajectory})
                task.advance()

            ex.map(expert_task, part, shared=shared, on_result=store)


def expert_task(shared, index: int) -> torch.Tensor:
    """One expert's trajectory on a worker: ``shared`` is (task context, network, real data, options)."""
    task_ctx, spec, real, options = shared
    return train_expert(task_ctx, spec, real, options, index)


def load_expert(ctx, spec, real, options, index: int) -> torch.Tensor:
    parts = expert_parts(ctx, spec, options, index)
    out = ctx.cache.tensors("mtt-experts", parts,
                            lambda: {"trajectory": train_expert(ctx, spec, real, options, index)})
    return out["trajectory"]


class MTTRun(Matching):
    name = "mtt"
    keep_experts = 8  # trajectories held in memory at once

    def __init__(self, real, ipc, options, ctx, model):
        super().__init__(real, ipc, options, ctx, model)
        self.learnable_images(noise="gaussian")
        self.syn_lr = torch.tensor(float(options.lr_teacher), device=self.device).requires_grad_(True)
        self.optimizers["lr"] = torch.optim.SGD([self.syn_lr], lr=options.lr_lr, momentum=options.momentum_img)
        self._experts: OrderedDict[int, torch.Tensor] = OrderedDict()
        self.fmodel = FlatModel(self.net("student"))
        last = options.expert_train_epochs - options.expert_epochs
        if last < 0:
            raise ValueError(f"mtt: expert_epochs = {options.expert_epochs} exceeds the experts' "
                             f"expert_train_epochs = {options.expert_train_epochs}")
        self.max_start = max(1, min(options.max_start_epoch, last + 1))

    def expert(self, index: int) -> torch.Tensor:
        if index in self._experts:
            self._experts.move_to_end(index)
            return self._experts[index]
        traj = load_expert(self.ctx, self.model_spec, self.real, self.options, index).to(self.device)
        self._experts[index] = traj
        while len(self._experts) > self.keep_experts:
            self._experts.popitem(last=False)
        return traj

    def extra_state(self) -> dict[str, Any]:
        return {"syn_lr": self.syn_lr.detach()}

    def load_extra(self, state: dict[str, Any]) -> None:
        with torch.no_grad():
            self.syn_lr.copy_(state["syn_lr"].to(self.device))

    def batches(self, gen: torch.Generator) -> list[torch.Tensor]:
        n = self.images.shape[0]
        size = min(self.options.batch_syn or n, n)
        out: list[torch.Tensor] = []
        while len(out) < self.options.syn_steps:
            perm = torch.randperm(n, generator=gen).to(self.device)
            out.extend(torch.split(perm, size))
        return out[: self.options.syn_steps]

    def loss_at(self, it: Any) -> torch.Tensor:
        o = self.options
        gen = self.rng("iter", it)
        e = int(torch.randint(o.num_experts, (1,), generator=gen))
        t = int(torch.randint(self.max_start, (1,), generator=gen))
        traj = self.expert(e)
        start, target = traj[t], traj[t + o.expert_epochs]
        aug_gen = self.rng("dsa", it)
        augment = (lambda x: dsa_mod.dsa(x, aug_gen)) if o.dsa else None
        return trajectory_loss(self.fmodel, start, target, self.images, self.labels, self.syn_lr,
                               self.batches(gen), augment)

    def iteration(self, it: int) -> float:
        loss = self.loss_at(it)
        for opt in self.optimizers.values():
            opt.zero_grad(set_to_none=True)
        loss.backward()
        for opt in self.optimizers.values():
            opt.step()
        return float(loss.detach())

    def objective(self, seeds: int = 4) -> float:
        return sum(float(self.loss_at(f"eval{s}").detach()) for s in range(seeds)) / seeds

    def run(self, iterations: int):
        ensure_experts(self.ctx, self.model_spec, self.real, self.options)
        return super().run(iterations)

    def manifest(self):
        m = super().manifest()
        m.learned_lr = float(self.syn_lr.detach())
        return m


def distill(real, ipc: int, options, ctx, model):
    return MTTRun(real, ipc, options, ctx, model).run(options.iterations)
