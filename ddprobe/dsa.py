"""Differentiable Siamese Augmentation (DSA, Zhao & Bilen 2021), written from paper-methods.md C.3.

Every transform is differentiable with respect to the images. Random parameters are drawn once from a
``torch.Generator`` into a :class:`DSAParams` and can then be applied to several batches: that is the Siamese
part, real and synthetic batches get exactly the same transform.

* ``sample(generator, n, size)`` draws parameters; ``n = 1`` gives one transform shared by every image of any
  batch (the reference's Siamese mode), ``n = len(batch)`` gives one transform per image.
* ``apply(images, params)`` applies them.
* ``siamese(generator, *batches)`` does both: one draw, the same transform on every batch.
* ``dsa(images, generator)`` is the training-recipe augmentation (``augment = "dsa"``): one operation chosen per
  call, independent parameters per image.

Operations (reference parameters): ``color`` (brightness + U(-0.5, 0.5), saturation x U(0, 2), contrast
x U(0.5, 1.5), applied together), ``crop`` (translation by up to 1/8 of the size, zero fill), ``cutout``
(a zeroed square of half the size), ``flip`` (horizontal, p = 0.5), ``scale`` (x U(1/1.2, 1.2) per axis),
``rotate`` (U(-15, 15) degrees). In the default single-operation mode one of them is chosen per draw.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from .augment import register_augmentation

OPS = ("color", "crop", "cutout", "flip", "scale", "rotate")
DEFAULT_STRATEGY = "color_crop_cutout_flip_scale_rotate"


@dataclass(frozen=True)
class DSAConfig:
    """The ranges of each operation (defaults: the DSA/DM/MTT reference values)."""

    brightness: float = 1.0  # + U(-0.5, 0.5) * brightness
    saturation: float = 2.0  # x U(0, 2)
    contrast: float = 0.5  # x U(1 - 0.5, 1 + 0.5)
    crop: float = 0.125  # translation up to this fraction of the size
    cutout: float = 0.5  # side of the zeroed square, as a fraction of the size
    flip: float = 0.5  # probability of a horizontal flip
    scale: float = 1.2  # per-axis factor in [1/scale, scale]
    rotate: float = 15.0  # degrees


@dataclass
class DSAParams:
    """Sampled parameters of one draw: the operations to apply, in order, and their values (batch dim n)."""

    ops: tuple[str, ...]
    values: dict[str, torch.Tensor] = field(default_factory=dict)
    n: int = 1


def parse_strategy(strategy: str) -> tuple[str, ...]:
    ops = tuple(p for p in strategy.split("_") if p)
    bad = [p for p in ops if p not in OPS]
    if bad:
        raise ValueError(f"unknown DSA operation(s) {bad}; valid: {', '.join(OPS)}")
    return ops


def _u(gen: torch.Generator, n: int, lo: float, hi: float) -> torch.Tensor:
    return torch.rand(n, generator=gen, device=gen.device).cpu() * (hi - lo) + lo


def sample(generator: torch.Generator, n: int, size: tuple[int, int], strategy: str = DEFAULT_STRATEGY,
           single: bool = True, config: DSAConfig = DSAConfig()) -> DSAParams:
    """Draw DSA parameters for ``n`` images (``n = 1``: one transform for whole batches) of spatial ``size``."""
    ops = parse_strategy(strategy)
    if single and ops:
        pick = int(torch.randint(len(ops), (1,), generator=generator, device=generator.device))
        ops = (ops[pick],)
    h, w = size
    values: dict[str, torch.Tensor] = {}
    for op in ops:
        if op == "color":
            values["brightness"] = _u(generator, n, -0.5, 0.5) * config.brightness
            values["saturation"] = _u(generator, n, 0.0, config.saturation)
            values["contrast"] = _u(generator, n, 1 - config.contrast, 1 + config.contrast)
        elif op == "crop":
            sh, sw = int(h * config.crop + 0.5), int(w * config.crop + 0.5)
            values["shift_x"] = torch.randint(-sw, sw + 1, (n,), generator=generator, device=generator.device).cpu()
            values["shift_y"] = torch.randint(-sh, sh + 1, (n,), generator=generator, device=generator.device).cpu()
        elif op == "cutout":
            ch, cw = int(h * config.cutout + 0.5), int(w * config.cutout + 0.5)
            values["cut_x"] = torch.randint(0, w + (1 - cw % 2), (n,), generator=generator,
                                            device=generator.device).cpu()
            values["cut_y"] = torch.randint(0, h + (1 - ch % 2), (n,), generator=generator,
                                            device=generator.device).cpu()
            values["cut_size"] = torch.tensor([ch, cw])
        elif op == "flip":
            values["flip"] = _u(generator, n, 0.0, 1.0) < config.flip
        elif op == "scale":
            values["scale_x"] = _u(generator, n, 1.0 / config.scale, config.scale)
            values["scale_y"] = _u(generator, n, 1.0 / config.scale, config.scale)
        elif op == "rotate":
            values["angle"] = _u(generator, n, -config.rotate, config.rotate) * math.pi / 180.0
    return DSAParams(ops, values, n)


def _expand(v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """A per-draw value as [N, 1, 1, 1] on x's device; a single draw broadcasts to every image."""
    v = v.to(device=x.device, dtype=x.dtype if v.is_floating_point() else v.dtype)
    return v.view(-1, 1, 1, 1)


def _check(params: DSAParams, x: torch.Tensor) -> None:
    if params.n not in (1, x.shape[0]):
        raise ValueError(f"DSA parameters were drawn for {params.n} images but the batch has {x.shape[0]}")


def _affine(x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    theta = theta.to(device=x.device, dtype=x.dtype).expand(x.shape[0], 2, 3)
    grid = F.affine_grid(theta, list(x.shape), align_corners=True)
    return F.grid_sample(x, grid, align_corners=True)


def apply(images: torch.Tensor, params: DSAParams) -> torch.Tensor:
    """Apply sampled parameters to a batch ``[N, C, H, W]`` (differentiable in ``images``)."""
    _check(params, images)
    x = images
    v = params.values
    n, _, h, w = x.shape
    for op in params.ops:
        if op == "color":
            x = x + _expand(v["brightness"], x)
            mean = x.mean(dim=1, keepdim=True)
            x = (x - mean) * _expand(v["saturation"], x) + mean
            mean = x.mean(dim=(1, 2, 3), keepdim=True)
            x = (x - mean) * _expand(v["contrast"], x) + mean
        elif op == "crop":
            sx = v["shift_x"].to(x.device).expand(n)
            sy = v["shift_y"].to(x.device).expand(n)
            pad = int(max(int(sx.abs().max()), int(sy.abs().max()), 0))
            if pad:
                padded = F.pad(x, (pad, pad, pad, pad))
                rows = (sy + pad).view(-1, 1) + torch.arange(h, device=x.device).view(1, -1)
                cols = (sx + pad).view(-1, 1) + torch.arange(w, device=x.device).view(1, -1)
                idx = torch.arange(n, device=x.device).view(-1, 1, 1)
                x = padded.permute(0, 2, 3, 1)[idx, rows.view(n, h, 1), cols.view(n, 1, w)].permute(0, 3, 1, 2)
        elif op == "cutout":
            ch, cw = (int(s) for s in v["cut_size"])
            cx = v["cut_x"].to(x.device).expand(n).view(-1, 1, 1)
            cy = v["cut_y"].to(x.device).expand(n).view(-1, 1, 1)
            gy = torch.arange(h, device=x.device).view(1, -1, 1)
            gx = torch.arange(w, device=x.device).view(1, 1, -1)
            inside = ((gy - cy + ch // 2) >= 0) & ((gy - cy + ch // 2) < ch) & \
                     ((gx - cx + cw // 2) >= 0) & ((gx - cx + cw // 2) < cw)
            x = x * (~inside).unsqueeze(1).to(x.dtype)
        elif op == "flip":
            x = torch.where(v["flip"].to(x.device).view(-1, 1, 1, 1), x.flip(3), x)
        elif op == "scale":
            m = params.n
            theta = torch.zeros(m, 2, 3)
            theta[:, 0, 0] = v["scale_x"]
            theta[:, 1, 1] = v["scale_y"]
            x = _affine(x, theta)
        elif op == "rotate":
            a = v["angle"]
            theta = torch.zeros(params.n, 2, 3)
            theta[:, 0, 0], theta[:, 0, 1] = torch.cos(a), torch.sin(-a)
            theta[:, 1, 0], theta[:, 1, 1] = torch.sin(a), torch.cos(a)
            x = _affine(x, theta)
    return x.contiguous()


def siamese(generator: torch.Generator, *batches: torch.Tensor, strategy: str = DEFAULT_STRATEGY,
            single: bool = True) -> list[torch.Tensor]:
    """One draw of parameters, the same transform applied to every batch (sizes may differ)."""
    size = tuple(batches[0].shape[-2:])
    params = sample(generator, 1, size, strategy, single)  # type: ignore[arg-type]
    return [apply(b, params) for b in batches]


def dsa(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """The ``augment = "dsa"`` recipe augmentation: one op per call, independent parameters per image."""
    params = sample(generator, images.shape[0], tuple(images.shape[-2:]))  # type: ignore[arg-type]
    return apply(images, params)


register_augmentation("dsa", dsa)
