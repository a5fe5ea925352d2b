"""The matching-based distillers: ``dc`` (gradient matching, and its DSA variant), ``dm`` (distribution matching),
``mtt`` (trajectory matching) and ``bptt`` (backpropagation through the unrolled inner loop).

Option defaults are the reference values for CIFAR-10 (paper-methods.md section C); see docs/distillers.md.
This module is imported on the CLI path, so it must not import torch: the algorithms (``ddprobe.distill.*``)
are imported inside ``distill``.
"""

from __future__ import annotations

import importlib
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

DEFAULT_MODEL = {"arch": "convnet", "width": 128, "depth": 3, "norm": "instancenorm"}
DSA_STRATEGY = "color_crop_cutout_flip_scale_rotate"


def _check_model(value: Any) -> Any:
    if isinstance(value, str):
        return value
    if isinstance(value, dict):
        if "arch" not in value:
            raise ValueError('an inline model table needs arch = "..." (e.g. { arch = "convnet", width = 128 })')
        from .. import registry

        try:
            plugin = registry.get_model(str(value["arch"]))
        except KeyError as exc:
            raise ValueError(exc.args[0]) from None
        plugin.Options(**{k: v for k, v in value.items() if k != "arch"})
        return value
    raise ValueError('model must name a [models] entry or be a table like { arch = "convnet", width = 128 }')


class CommonOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str | dict[str, Any] = Field(
        default_factory=lambda: dict(DEFAULT_MODEL),
        description="distillation network: the name of a [models] entry, or an inline table "
                    "{ arch = ..., <that model's options> }; default the paper's ConvNet 128-3-instancenorm",
    )
    init: Literal["real", "noise"] = Field("real", description="start from random real images or from noise")
    checkpoint_every: int = Field(100, ge=0, description="iterations between resumable checkpoints (0 = never)")

    @field_validator("model")
    @classmethod
    def _model(cls, value: Any) -> Any:
        return _check_model(value)


def _check_dsa_strategy(value: str) -> str:
    from ..dsa import parse_strategy

    if not parse_strategy(value):
        raise ValueError("names no DSA operation; join operations with '_', e.g. 'color_crop_cutout'")
    return value


def _plan_net(ctx, options) -> str | None:
    """The [models] name of the distillation network, for ``ddprobe plan``'s timings (None for inline tables)."""
    return options.model if isinstance(options.model, str) and options.model in ctx.models else None


class _Distiller:
    """Shared ``distill``: resolve the network, run the algorithm module, return the set."""

    name = ""
    module = ""

    def distill(self, real, ipc: int, options, ctx):
        from ..distill.common import resolve_model

        model = resolve_model(ctx, options.model, self.name)
        algo = importlib.import_module(self.module)
        return algo.distill(real, ipc, options, ctx, model)


class GradientMatching(_Distiller):
    name = "dc"
    conformance_options = {"iterations": 2}  # ddprobe.testing runs the conformance suite quickly
    description = "gradient matching (DC, Zhao et al. 2021); dsa = true gives DSA (Zhao & Bilen 2021)"
    module = "ddprobe.distill.dc"

    def plan(self, ctx, ipc: int, options):
        """Per iteration: per class a gradient on real and on synthetic images, then inner training steps."""
        from ..distill.dc import loops_for
        from ..plan import PlanItem

        outer, inner = loops_for(ipc)
        outer, inner = options.outer_loop or outer, options.inner_loop or inner
        net, classes = _plan_net(ctx, options), ctx.real.num_classes
        return [PlanItem(f"{options.iterations} iterations x {outer} rounds x {classes} classes: gradient matching",
                         "train", net, options.iterations * outer * classes * 2, options.batch_real + ipc),
                PlanItem(f"{options.iterations} x {outer - 1} x {inner} inner network steps", "train", net,
                         options.iterations * max(0, outer - 1) * inner, classes * ipc)]

    class Options(CommonOptions):
        iterations: int = Field(1000, ge=0, description="outer iterations, each with a fresh random network")
        init: Literal["real", "noise"] = Field("noise", description="start from random real images or N(0,1) "
                                               "noise (reference: noise for DC, real for DSA)")
        lr_img: float = Field(0.1, gt=0, description="SGD learning rate of the images")
        momentum_img: float = Field(0.5, ge=0, description="SGD momentum of the images")
        lr_net: float = Field(0.01, gt=0, description="SGD learning rate of the network in the inner loop")
        batch_real: int = Field(256, ge=1, description="real images per class per matching step")
        batch_train: int = Field(256, ge=1, description="minibatch of the inner-loop network training")
        outer_loop: int | None = Field(None, ge=1, description="matching rounds per network (default by ipc: "
                                       "1 -> 1, 10 -> 10, 50 -> 50)")
        inner_loop: int | None = Field(None, ge=0, description="network training epochs between rounds "
                                       "(default by ipc: 1 -> 1, 10 -> 50, 50 -> 10)")
        dis_metric: Literal["ours", "mse", "cos"] = Field("ours", description="gradient distance: layer-wise "
                                                          "cosine ('ours'), mse, or global cosine")
        dsa: bool = Field(False, description="Siamese DSA on real and synthetic batches (the DSA method)")
        dsa_strategy: str = Field(DSA_STRATEGY, description="DSA operations, joined by '_'")

        _strategy = field_validator("dsa_strategy")(lambda cls, v: _check_dsa_strategy(v))


class DistributionMatching(_Distiller):
    name = "dm"
    conformance_options = {"iterations": 2}
    description = "distribution matching (DM, Zhao & Bilen 2023): mean embeddings of frozen random networks"
    module = "ddprobe.distill.dm"

    def plan(self, ctx, ipc: int, options):
        """Per iteration: per class one embedding pass over real and synthetic images, and its backward."""
        from ..plan import PlanItem

        classes = ctx.real.num_classes
        return [PlanItem(f"{options.iterations} iterations x {classes} classes: mean-embedding matching", "train",
                         _plan_net(ctx, options), options.iterations * classes, options.batch_real + ipc)]

    class Options(CommonOptions):
        iterations: int = Field(20000, ge=0, description="iterations, each with a fresh random frozen network")
        lr_img: float = Field(1.0, gt=0, description="SGD learning rate of the images")
        momentum_img: float = Field(0.5, ge=0, description="SGD momentum of the images")
        batch_real: int = Field(256, ge=1, description="real images per class per iteration")
        dsa: bool = Field(True, description="Siamese DSA on the real and synthetic batch of each class")
        dsa_strategy: str = Field(DSA_STRATEGY, description="DSA operations, joined by '_'")

        _strategy = field_validator("dsa_strategy")(lambda cls, v: _check_dsa_strategy(v))


class TrajectoryMatching(_Distiller):
    name = "mtt"
    conformance_options = {"iterations": 2, "num_experts": 1, "expert_train_epochs": 1, "expert_epochs": 1,
                           "max_start_epoch": 1, "syn_steps": 2}
    description = "trajectory matching (MTT, Cazenavette et al. 2022) with cached experts and a learned lr"
    module = "ddprobe.distill.mtt"

    def prepare(self, real, ipc: int, options, ctx) -> None:
        """The expert trajectories every MTT set of the study shares: trained (a bag on the study's executor) and
        cached on the driver before the sets are distilled, so sets distilled in parallel do not each train them."""
        from ..distill.common import resolve_model
        from ..distill.mtt import ensure_experts

        ensure_experts(ctx, resolve_model(ctx, options.model, self.name), real, options)

    def plan(self, ctx, ipc: int, options):
        """Expert trajectories (cached and shared across sets), then unrolled student steps and their backward."""
        import math

        from ..plan import PlanItem

        net, n = _plan_net(ctx, options), len(ctx.real.train)
        expert_steps = options.expert_train_epochs * math.ceil(n / options.expert_batch)
        batch = options.batch_syn or ctx.real.num_classes * ipc
        return [PlanItem(f"{options.num_experts} experts x {options.expert_train_epochs} epochs (cached once made)",
                         "train", net, expert_steps, options.expert_batch, options.num_experts,
                         key=f"mtt-experts:{net}:{options.num_experts}:{options.expert_train_epochs}"),
                PlanItem(f"{options.iterations} iterations x {options.syn_steps} student steps, unrolled and "
                         "backpropagated", "train", net, options.iterations * options.syn_steps * 2, batch)]

    class Options(CommonOptions):
        iterations: int = Field(5000, ge=0, description="distillation iterations")
        syn_steps: int = Field(30, ge=1, description="student steps per iteration (N; paper IPC-10 value)")
        expert_epochs: int = Field(2, ge=1, description="expert epochs the student must match (M)")
        max_start_epoch: int = Field(20, ge=1, description="start epochs are drawn from 0..max_start_epoch-1 (T+)")
        lr_img: float = Field(1000.0, gt=0, description="SGD learning rate of the images (reference code default)")
        lr_lr: float = Field(1e-5, gt=0, description="SGD learning rate of the learnable step size")
        lr_teacher: float = Field(0.01, gt=0, description="experts' learning rate; initial learnable step size")
        momentum_img: float = Field(0.5, ge=0, description="SGD momentum of the images and of the step size")
        batch_syn: int | None = Field(None, ge=1, description="synthetic minibatch per student step "
                                      "(default: all images)")
        dsa: bool = Field(True, description="DSA on the student's minibatches (independent draws)")
        num_experts: int = Field(100, ge=1, description="expert trajectories to train (cached, reused)")
        expert_train_epochs: int = Field(50, ge=1, description="epochs each expert trains on the real data")
        expert_batch: int = Field(256, ge=1, description="experts' minibatch size")
        expert_momentum: float = Field(0.0, ge=0, description="experts' SGD momentum (reference 0)")
        expert_dsa: bool = Field(True, description="experts train with DSA augmentation")

        @model_validator(mode="after")
        def _epochs_fit(self):
            if self.expert_epochs > self.expert_train_epochs:
                raise ValueError(f"expert_epochs = {self.expert_epochs} exceeds expert_train_epochs = "
                                 f"{self.expert_train_epochs}: the student cannot match more epochs than experts train")
            return self


class UnrolledBPTT(_Distiller):
    name = "bptt"
    conformance_options = {"iterations": 2, "inner_steps": 5}
    description = "backpropagation through an unrolled momentum-SGD inner loop (RTP's BPTT, reverse-mode replay)"
    module = "ddprobe.distill.bptt"

    def plan(self, ctx, ipc: int, options):
        """Per iteration: an unrolled inner loop, the outer loss on real images, and the reverse-mode replay."""
        from ..plan import PlanItem

        net, classes = _plan_net(ctx, options), ctx.real.num_classes
        batch = classes * (options.batch_per_class or ipc)
        return [PlanItem(f"{options.iterations} iterations x {options.inner_steps} inner steps (forward unroll and "
                         "replay)", "train", net, options.iterations * options.inner_steps * 3, batch),
                PlanItem(f"{options.iterations} outer losses on real images", "train", net, options.iterations,
                         classes * options.real_per_class)]

    class Options(CommonOptions):
        iterations: int = Field(500_000, ge=0, description="outer iterations (reference schedule upper bound)")
        init: Literal["real", "noise"] = Field("noise", description="start from real images or Xavier-uniform "
                                               "noise, about the mean image (reference: noise)")
        inner_steps: int = Field(150, ge=1, description="unrolled inner SGD steps (README example: 150)")
        inner_lr: float = Field(0.01, gt=0, description="inner SGD learning rate")
        inner_momentum: float = Field(0.9, ge=0, description="inner SGD momentum")
        batch_per_class: int | None = Field(None, ge=1, description="synthetic images per class per inner step "
                                            "(default: all of them, the README's setting at IPC 10)")
        real_per_class: int = Field(64, ge=1, description="real images per class in the outer loss")
        lr_img: float = Field(0.1, gt=0, description="SGD learning rate of the images")
        momentum_img: float = Field(0.5, ge=0, description="SGD momentum of the images")
        clip: float = Field(2.0, ge=0, description="clip the image-gradient norm to this (0 = no clipping)")


DISTILLERS = (GradientMatching, DistributionMatching, TrajectoryMatching, UnrolledBPTT)
