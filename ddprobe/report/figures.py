"""Shared plotting helpers: one palette and one control style for every figure, headless matplotlib, image grids.

Every figure ddprobe saves goes through :func:`save`, which also writes a short description of the figure (title,
axis labels, legend entries, caption) into the PNG's metadata under ``ddprobe``. report.html reads the caption
from there, and tests check what a figure says through :func:`read_description` rather than through pixels.
"""

from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path
from typing import Any

# Okabe-Ito (colour-blind safe) for distilled sets. Black is reserved for the random-real control, grey for real data.
PALETTE = ["#000000", "#E69F00", "#0072B2", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442"]
SET_COLORS = PALETTE[1:]
# The random-real control looks the same in every figure: black, dashed, diamond markers, "(control)" in its label.
CONTROL_STYLE: dict[str, Any] = {"color": "#000000", "linestyle": "--", "marker": "D", "linewidth": 1.4}
CONTROL_HATCH = "//"
# Real data (the reference every set is compared with): thick grey, solid.
REAL_STYLE: dict[str, Any] = {"color": "#7F7F7F", "linestyle": "-", "linewidth": 2.2}
# Class colours: a qualitative map, so neighbouring classes never look alike (tab10 up to 10 classes, then tab20).
CLASS_CMAPS = (("tab10", 10), ("tab20", 20))
METADATA_KEY = "ddprobe"


def plt() -> Any:
    """matplotlib.pyplot on the headless Agg backend."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as pyplot

    return pyplot


def color(i: int) -> str:
    """The i-th colour of a distilled set (never black, which is the control's)."""
    return SET_COLORS[i % len(SET_COLORS)]


def control_label(name: str) -> str:
    return f"{name} (control)"


def series_style(name: str, i: int, controls: Any = (), real: Any = ("real", "real_test")) -> dict[str, Any]:
    """Line style and legend label of one series: real data, the random-real control, or the i-th distilled set."""
    if name in real:
        return {**REAL_STYLE, "label": "real test" if name == "real_test" else "real"}
    if name in controls:
        return {**CONTROL_STYLE, "label": control_label(name)}
    return {"color": color(i), "linestyle": "-", "linewidth": 1.4, "label": name}


def class_colors(n: int) -> list[Any]:
    """n distinguishable class colours from a qualitative colormap (cycled beyond 20 classes)."""
    pyplot = plt()
    for name, size in CLASS_CMAPS:
        if n <= size or name == CLASS_CMAPS[-1][0]:
            cmap = pyplot.get_cmap(name)
            return [cmap(i % size) for i in range(n)]
    raise AssertionError("unreachable")


def describe(fig: Any, caption: str = "") -> dict[str, Any]:
    """What a figure says: suptitle, per-axes title and axis labels, every legend's entries, and a caption."""
    axes = []
    for ax in fig.axes:
        if ax.get_label() == "<colorbar>":
            axes.append({"colorbar": ax.get_ylabel() or ax.get_xlabel()})
            continue
        entry = {"title": ax.get_title(), "xlabel": ax.get_xlabel(), "ylabel": ax.get_ylabel()}
        entry = {k: v for k, v in entry.items() if v}
        if entry:
            axes.append(entry)
    legends = [lg for ax in fig.axes for lg in ([ax.get_legend()] if ax.get_legend() else [])]
    legends += list(getattr(fig, "legends", []))
    legends += [a for ax in fig.axes for a in ax.artists if a.__class__.__name__ == "Legend"]
    seen, texts = set(), []
    for lg in legends:
        if id(lg) in seen:
            continue
        seen.add(id(lg))
        texts.append({"title": lg.get_title().get_text(), "entries": [t.get_text() for t in lg.get_texts()]})
    sup = fig._suptitle.get_text() if getattr(fig, "_suptitle", None) is not None else ""
    return {"suptitle": sup, "axes": axes, "legends": texts, "caption": caption}


def save(fig: Any, path: Path, caption: str = "") -> Path:
    """Save as PNG with :func:`describe` in its metadata; close the figure. ``caption`` says what it shows."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = json.dumps(describe(fig, caption), ensure_ascii=True)
    fig.savefig(path, dpi=110, bbox_inches="tight", metadata={METADATA_KEY: meta})
    plt().close(fig)
    return path


def read_description(path: str | Path) -> dict[str, Any] | None:
    """The description :func:`save` stored in a PNG, or None (not a ddprobe figure, or unreadable)."""
    try:
        data = Path(path).read_bytes()
    except OSError:
        return None
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        return None
    pos = 8
    while pos + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[pos : pos + 8])
        body = data[pos + 8 : pos + 8 + length]
        pos += 12 + length
        key, _, value = body.partition(b"\x00")
        if key != METADATA_KEY.encode():
            if kind == b"IEND":
                break
            continue
        try:
            if kind == b"tEXt":
                text = value.decode("latin-1")
            elif kind == b"zTXt":
                text = zlib.decompress(value[1:]).decode("latin-1")
            elif kind == b"iTXt":  # compression flag, method, language tag, translated keyword, text
                flag, rest = value[0], value[2:]
                rest = rest.split(b"\x00", 2)[2]
                text = (zlib.decompress(rest) if flag else rest).decode("utf-8")
            else:
                continue
            return json.loads(text)
        except (ValueError, IndexError, zlib.error):
            return None
    return None


def mosaic(pixels: Any, labels: Any, classes: list[str], path: Path, title: str = "", max_per_class: int = 10,
           caption: str = "") -> Path:
    """Images in [0, 1] pixel space tiled one row per class into a single picture (fast for hundreds of images)."""
    import numpy as np

    pixels = pixels.detach().cpu().float().clamp(0, 1).numpy()
    labels = labels.detach().cpu().numpy()
    rows = [np.nonzero(labels == c)[0][:max_per_class] for c in range(len(classes))]
    cols = max(1, max((len(r) for r in rows), default=1))
    n, ch, h, w = pixels.shape
    pad = max(1, h // 16)
    canvas = np.ones((len(classes) * (h + pad) + pad, cols * (w + pad) + pad, 3), dtype=np.float32)
    for r, idx in enumerate(rows):
        for c, i in enumerate(idx):
            img = pixels[i]
            img = np.repeat(img, 3, axis=0) if ch == 1 else img[:3]
            y, x = pad + r * (h + pad), pad + c * (w + pad)
            canvas[y : y + h, x : x + w] = np.transpose(img, (1, 2, 0))
    pyplot = plt()
    scale = 0.5 if h <= 16 else 0.8
    fig, ax = pyplot.subplots(figsize=(scale * cols + 1.2, scale * len(classes) + 0.6))
    ax.imshow(canvas, interpolation="nearest")
    ax.set_yticks([pad + r * (h + pad) + h / 2 for r in range(len(classes))], classes, fontsize=8)
    ax.set_xticks([])
    for spine in ax.spines.values():
        spine.set_visible(False)
    if title:
        ax.set_title(title, fontsize=10)
    return save(fig, path, caption)


def image_grid(pixels: Any, labels: Any, classes: list[str], path: Path, title: str = "",
               max_per_class: int = 20) -> Path:
    """Images in [0, 1] pixel space drawn one row per class (clipped for display)."""
    return mosaic(pixels, labels, classes, path, title, max_per_class,
                  caption=f"{title}: up to {max_per_class} images per class, one row per class" if title else "")
