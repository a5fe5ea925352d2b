"""DC: dataset condensation by gradient matching (Zhao et al. 2021), and its DSA variant (paper-methods C.2).

Each outer iteration builds a fresh randomly initialized network. For ``outer_loop`` rounds it matches, class by
class, the gradient of the loss on the synthetic images of class c to the gradient on a batch of real images of
class c (layer-wise distance), steps the images, and then trains the network on the synthetic set for
``inner_loop`` steps.

BatchNorm networks get the reference's handling: before each matching step, one train-mode forward pass over 16
real images per class moves the running statistics towards theirs (PyTorch's momentum 0.1, as in the reference),
and the BatchNorm layers then match in eval mode, since a synthetic batch of one image per class is too small for
batch statistics. The inner loop trains in train mode.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from .. import dsa as dsa_mod
from ..nets import batchnorm_layers
from .common import ClassSampler, Matching

# (outer loop, inner loop) by images per class: the reference's get_loops
LOOPS = {1: (1, 1), 10: (10, 50), 20: (20, 25), 30: (30, 20), 40: (40, 15), 50: (50, 10)}
BN_PER_CLASS = 16  # real images per class that set the BatchNorm statistics before matching (the reference's)


def loops_for(ipc: int) -> tuple[int, int]:
    if ipc in LOOPS:
        return LOOPS[ipc]
    below = [k for k in LOOPS if k <= ipc]
    return LOOPS[max(below)] if below else LOOPS[1]


def layer_distance(gs: torch.Tensor, gr: torch.Tensor) -> torch.Tensor:
    """The reference's 'ours' distance for one parameter: sum over output rows of 1 - cosine; 0 for 1-D params."""
    if gs.dim() == 1:
        return gs.new_zeros(())
    if gs.dim() == 4:
        gs, gr = gs.reshape(gs.shape[0], -1), gr.reshape(gr.shape[0], -1)
    elif gs.dim() == 3:
        gs, gr = gs.reshape(gs.shape[0], -1), gr.reshape(gr.shape[0], -1)
    cos = (gs * gr).sum(-1) / (gs.norm(dim=-1) * gr.norm(dim=-1) + 1e-6)
    return (1 - cos).sum()


def gradient_distance(g_syn: list[torch.Tensor], g_real: list[torch.Tensor], metric: str = "ours") -> torch.Tensor:
    """Distance between two lists of parameter gradients: 'ours' (layer-wise), 'mse' or 'cos' (global)."""
    if metric == "ours":
        return sum((layer_distance(s, r) for s, r in zip(g_syn, g_real, strict=True)), g_syn[0].new_zeros(()))
    s = torch.cat([g.reshape(-1) for g in g_syn])
    r = torch.cat([g.reshape(-1) for g in g_real])
    if metric == "mse":
        return ((s - r) ** 2).sum()
    if metric == "cos":
        return 1 - (s * r).sum() / (s.norm() * r.norm() + 1e-6)
    raise ValueError(f"unknown gradient distance {metric!r}; valid: ours, mse, cos")


class DCRun(Matching):
    name = "dc"

    def __init__(self, real, ipc, options, ctx, model):
        super().__init__(real, ipc, options, ctx, model)
        self.sampler = ClassSampler(real, self.device)
        self.learnable_images(noise="gaussian")
        outer, inner = loops_for(ipc)
        self.outer = options.outer_loop or outer
        self.inner = options.inner_loop or inner

    def class_images(self, c: int) -> torch.Tensor:
        return self.images[c * self.ipc : (c + 1) * self.ipc]

    def match_loss(self, net: torch.nn.Module, it: Any, ol: int) -> torch.Tensor:
        """Sum over classes of the gradient distance between synthetic and real batches, on ``net``."""
        o = self.options
        params = [p for p in net.parameters() if p.requires_grad]
        gen_real, gen_aug = self.rng("real", f"{it}:{ol}"), self.rng("dsa", f"{it}:{ol}")
        loss = self.images.new_zeros(())
        for c in range(self.real.num_classes):
            xr = self.sampler.sample(c, o.batch_real, gen_real)
            xs = self.class_images(c)
            if o.dsa:
                xr, xs = dsa_mod.siamese(gen_aug, xr, xs, strategy=o.dsa_strategy)
            yr = torch.full((xr.shape[0],), c, dtype=torch.long, device=xr.device)
            ys = torch.full((xs.shape[0],), c, dtype=torch.long, device=xs.device)
            g_real = [g.detach() for g in torch.autograd.grad(F.cross_entropy(net(xr), yr), params)]
            g_syn = torch.autograd.grad(F.cross_entropy(net(xs), ys), params, create_graph=True)
            loss = loss + gradient_distance(list(g_syn), g_real, o.dis_metric)
        return loss

    def freeze_batchnorm(self, net: torch.nn.Module, it: Any, ol: int) -> None:
        """The reference's BatchNorm step before matching (module docstring); a no-op without BatchNorm."""
        layers = batchnorm_layers(net)
        if not layers:
            return
        gen = self.rng("bn", f"{it}:{ol}")
        x = torch.cat([self.sampler.sample(c, BN_PER_CLASS, gen) for c in range(self.real.num_classes)])
        net.train()
        with torch.no_grad():
            net(x)
        for m in layers:
            m.eval()

    def train_net(self, net: torch.nn.Module, it: int, ol: int) -> None:
        o = self.options
        net.train()
        opt = torch.optim.SGD(net.parameters(), lr=o.lr_net)
        gen = self.rng("inner", f"{it}:{ol}")
        x_all, y_all = self.images.detach(), self.labels
        n = x_all.shape[0]
        batch = min(o.batch_train, n)
        for _ in range(self.inner):  # inner_loop epochs over the synthetic set
            perm = torch.randperm(n, generator=gen).to(x_all.device)
            for start in range(0, n, batch):
                idx = perm[start : start + batch]
                x = x_all[idx]
                if o.dsa:
                    x = dsa_mod.dsa(x, gen)
                loss = F.cross_entropy(net(x), y_all[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()

    def iteration(self, it: int) -> float:
        net = self.net(it)
        net.train()
        total = 0.0
        opt = self.optimizers["images"]
        for ol in range(self.outer):
            self.freeze_batchnorm(net, it, ol)
            loss = self.match_loss(net, it, ol)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += float(loss.detach())
            if ol == self.outer - 1:
                break
            self.train_net(net, it, ol)
        return total / (self.outer * self.real.num_classes)

    def objective(self, seeds: int = 4) -> float:
        """The matching loss of the current images on ``seeds`` fixed fresh networks (for tests)."""
        out = 0.0
        for s in range(seeds):
            net = self.net(f"eval{s}")
            self.freeze_batchnorm(net, f"eval{s}", 0)
            out += float(self.match_loss(net, f"eval{s}", 0).detach())
        return out / (seeds * self.real.num_classes)


def distill(real, ipc: int, options, ctx, model):
    return DCRun(real, ipc, options, ctx, model).run(options.iterations)
