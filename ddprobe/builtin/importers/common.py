"""What every importer shares: turning tensors or arrays into a DistilledSet with its manifest."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ...errors import DDProbeError


def as_float(value: Any) -> float:
    """A learned learning rate stored as a 0-d tensor, a NumPy scalar or a Python number."""
    return float(value.item() if hasattr(value, "item") else value)


def make_set(images: Any, labels: Any, path: Path, importer: str, classes: list[str] | None = None,
             **extra: Any):
    """A DistilledSet from images ``[N, C, H, W]`` (or grey ``[N, H, W]``) and hard ``[N]`` or soft ``[N, K]``
    labels; ``extra`` goes into the manifest (distiller, learned_lr, file_space, ...)."""
    import torch

    from ...data import DistilledSet, Manifest

    try:
        images = torch.as_tensor(images).detach().float()
        labels = torch.as_tensor(labels).detach()
    except (TypeError, ValueError, RuntimeError) as exc:
        raise DDProbeError(f"{path}: images and labels must be numeric arrays ({exc})") from exc
    labels = labels.long() if labels.dim() == 1 else labels.float()
    if images.dim() == 3:  # [N, H, W] grey images
        images = images.unsqueeze(1)
    if images.dim() != 4:
        raise DDProbeError(f"{path}: images must be [N, C, H, W], got shape {list(images.shape)}")
    if labels.dim() not in (1, 2):
        raise DDProbeError(f"{path}: labels must be [N] class indices or [N, K] soft labels, got shape "
                           f"{list(labels.shape)}")
    if classes is None:
        count = int(labels.shape[1]) if labels.dim() == 2 else (int(labels.max()) + 1 if labels.numel() else 0)
        classes = [str(i) for i in range(count)]
    manifest = Manifest(name=path.stem, source_file=str(path), importer=importer, **extra)
    return DistilledSet(images, labels, list(classes), manifest=manifest)
