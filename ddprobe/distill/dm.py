"""DM: distribution matching (Zhao & Bilen 2023), paper-methods C.3.

Each iteration builds a fresh randomly initialized network whose weights are never trained and matches, class by
class, the mean embedding (penultimate features) of the synthetic images to that of a batch of real images, both
augmented with the same DSA draw (Siamese).
"""

from __future__ import annotations

from typing import Any

import torch

from .. import dsa as dsa_mod
from .common import ClassSampler, Matching


class DMRun(Matching):
    name = "dm"

    def __init__(self, real, ipc, options, ctx, model):
        super().__init__(real, ipc, options, ctx, model)
        self.sampler = ClassSampler(real, self.device)
        self.learnable_images(noise="gaussian")

    def embedder(self, it: Any) -> torch.nn.Module:
        net = self.net(it)
        net.train()
        for p in net.parameters():
            p.requires_grad_(False)
        return net

    def match_loss(self, net: torch.nn.Module, it: Any) -> torch.Tensor:
        """Sum over classes of |mean embedding(real_c) - mean embedding(syn_c)|^2 (one forward per side)."""
        o = self.options
        gen_real, gen_aug = self.rng("real", it), self.rng("dsa", it)
        embed = getattr(net, "embed", None) or net
        reals, syns = [], []
        for c in range(self.real.num_classes):
            xr = self.sampler.sample(c, o.batch_real, gen_real)
            xs = self.images[c * self.ipc : (c + 1) * self.ipc]
            if o.dsa:
                xr, xs = dsa_mod.siamese(gen_aug, xr, xs, strategy=o.dsa_strategy)
            reals.append(xr)
            syns.append(xs)
        with torch.no_grad():
            fr = torch.split(embed(torch.cat(reals)), [x.shape[0] for x in reals])
        fs = embed(torch.cat(syns)).view(self.real.num_classes, self.ipc, -1)
        mr = torch.stack([f.mean(0) for f in fr])
        return ((mr - fs.mean(1)) ** 2).sum()

    def iteration(self, it: int) -> float:
        net = self.embedder(it)
        loss = self.match_loss(net, it)
        opt = self.optimizers["images"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return float(loss.detach()) / self.real.num_classes

    def objective(self, seeds: int = 4) -> float:
        out = 0.0
        for s in range(seeds):
            out += float(self.match_loss(self.embedder(f"eval{s}"), f"eval{s}").detach())
        return out / (seeds * self.real.num_classes)


def distill(real, ipc: int, options, ctx, model):
    return DMRun(real, ipc, options, ctx, model).run(options.iterations)
