"""Training-time augmentations by name; a recipe's ``augment`` picks one. Distillers may register more (DSA)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

Augmentation = Callable[["torch.Tensor", "torch.Generator"], "torch.Tensor"]

_AUGMENTATIONS: dict[str, Augmentation] = {}


def register_augmentation(name: str, fn: Augmentation) -> None:
    """Make ``augment = name`` available to training recipes. ``fn(images, generator) -> images``."""
    _AUGMENTATIONS[name] = fn


def get_augmentation(name: str) -> Augmentation | None:
    """The augmentation for a name; ``None`` for "none"."""
    if name == "none":
        return None
    _load_builtin()
    if name not in _AUGMENTATIONS:
        from .errors import suggest

        raise KeyError(f"unknown augmentation {name!r}: {suggest(name, ['none', *_AUGMENTATIONS])}")
    return _AUGMENTATIONS[name]


def names() -> list[str]:
    _load_builtin()
    return ["none", *_AUGMENTATIONS]


def _load_builtin() -> None:
    if "flip_crop" not in _AUGMENTATIONS:
        register_augmentation("flip_crop", flip_crop)
        try:  # DSA lives with the distillers; absent until they are installed
            from . import dsa  # noqa: F401
        except ImportError:
            pass


def flip_crop(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random horizontal flip (p=0.5) and random crop after zero padding of 1/8 of the image size."""
    import torch
    import torch.nn.functional as F

    n, _, h, w = images.shape
    dev = images.device
    flip = torch.rand(n, generator=generator, device=generator.device).to(dev) < 0.5
    x = torch.where(flip.view(-1, 1, 1, 1), images.flip(3), images)
    pad = max(1, h // 8)
    padded = F.pad(x, (pad, pad, pad, pad))
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=generator, device=generator.device).to(dev)
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=generator, device=generator.device).to(dev)
    rows = (dy.view(-1, 1) + torch.arange(h, device=dev).view(1, -1))  # [n, h]
    cols = (dx.view(-1, 1) + torch.arange(w, device=dev).view(1, -1))  # [n, w]
    idx_n = torch.arange(n, device=dev).view(-1, 1, 1)
    out = padded.permute(0, 2, 3, 1)[idx_n, rows.view(n, h, 1), cols.view(n, 1, w)]
    return out.permute(0, 3, 1, 2).contiguous()
