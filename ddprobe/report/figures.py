"""Shared plotting helpers: the paper's Okabe-Ito palette, headless matplotlib, image grids."""

from __future__ import annotations

from pathlib import Path
from typing import Any

PALETTE = ["#000000", "#E69F00", "#0072B2", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442"]


def plt() -> Any:
    """matplotlib.pyplot on the headless Agg backend."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as pyplot

    return pyplot


def color(i: int) -> str:
    return PALETTE[i % len(PALETTE)]


def save(fig: Any, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt().close(fig)
    return path


def image_grid(pixels: Any, labels: Any, classes: list[str], path: Path, title: str = "",
               max_per_class: int = 20) -> Path:
    """Images in [0, 1] pixel space drawn one row per class (clipped for display)."""
    import numpy as np

    pyplot = plt()
    pixels = pixels.detach().cpu().clamp(0, 1).numpy()
    labels = labels.detach().cpu().numpy()
    rows = [np.nonzero(labels == c)[0][:max_per_class] for c in range(len(classes))]
    cols = max(1, max(len(r) for r in rows))
    fig, axes = pyplot.subplots(len(classes), cols, figsize=(0.9 * cols + 0.8, 0.9 * len(classes)), squeeze=False)
    for r, idx in enumerate(rows):
        for c in range(cols):
            ax = axes[r][c]
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_visible(False)
            if c < len(idx):
                img = pixels[idx[c]]
                if img.shape[0] == 1:
                    ax.imshow(img[0], cmap="gray", vmin=0, vmax=1)
                else:
                    ax.imshow(np.transpose(img, (1, 2, 0)))
            if c == 0:
                ax.set_ylabel(classes[r], rotation=0, ha="right", va="center", fontsize=8)
    if title:
        fig.suptitle(title)
    return save(fig, path)
