"""Built-in distillers. ``random`` (a stratified random real subset) is also the study's control.

The matching-based distillers live in their own modules, listed in ``DISTILLER_MODULES``; each exposes
``DISTILLERS``, a tuple of classes to register.
"""

from __future__ import annotations

import importlib

from pydantic import BaseModel, ConfigDict

from ..hookspecs import hookimpl

DISTILLER_MODULES: tuple[str, ...] = ("ddprobe.builtin.distiller_matching",)


class RandomReal:
    name = "random"
    description = "stratified random subset of the real training images (the control every set is compared with)"

    class Options(BaseModel):
        model_config = ConfigDict(extra="forbid")

    def distill(self, real, ipc: int, options: Options, ctx):
        import torch

        from ..data import DistilledSet, Manifest

        gen = ctx.rng(f"random-real:{ipc}")
        picks = []
        for c, idx in enumerate(real.train.class_indices()):
            if idx.numel() < ipc:
                raise ValueError(f"class {real.classes[c]!r} has only {idx.numel()} training images, fewer than "
                                 f"ipc = {ipc}")
            picks.append(idx[torch.randperm(idx.numel(), generator=gen)[:ipc]])
        index = torch.cat(picks)
        sub = real.train.subset(index)
        manifest = Manifest(distiller=self.name, ipc=ipc, indices=index.tolist())
        return DistilledSet(sub.images.clone(), sub.hard_labels.clone(), real.classes, manifest=manifest)


@hookimpl
def register_distillers(register):
    register(RandomReal())
    for name in DISTILLER_MODULES:
        for cls in importlib.import_module(name).DISTILLERS:
            register(cls())
