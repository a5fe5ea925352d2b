"""mtt-distillation runs, as ``distill.py`` writes them into ``logged_files/<dataset>/<run>/``.

At each saved iteration ``it`` (and at the best evaluation so far, as ``best``) the script writes:

- ``images_<it>.pt``: the synthetic images in the space it trained in (mean/std normalized, or ZCA-whitened
  [0, 1] pixels with ``--zca``);
- ``labels_<it>.pt``: their hard labels, class-major;
- with ``--zca`` (and fewer than 50 images per class or ``--force_save``) also ``images_zca_<it>.pt``: the
  images mapped back through the inverse ZCA transform, i.e. [0, 1]-scale pixels. There is no
  ``images_zca_best.pt``; the best set's reconstruction is the numbered one with the same images.

It never writes the learned step size ``syn_lr`` to a file (only to Weights & Biases). A ``syn_lr_<it>.pt``,
``syn_lr.pt``, ``lr_best.pt`` or ``learned_lr.pt`` next to the images (a 0-d tensor or a number) is read when
present; otherwise give ``learned_lr`` in the spec's ``[distilled.NAME]`` table.

Any of these paths selects a set: the run folder (``best`` when present, else the highest iteration),
``images_<it>.pt``, ``labels_<it>.pt`` or ``images_zca_<it>.pt``. A run with any ``images_zca_*.pt`` was
distilled in ZCA space: its set is read from the pixel reconstruction of the selected iteration when there is
one (so it maps exactly into the study's own space), else from ``images_<it>.pt`` in MTT's ZCA space.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from ...errors import DDProbeError
from .common import as_float, make_set
from .safeload import load_pt, path_kind

_FILE = re.compile(r"^(images|labels|images_zca)_(\d+|best)\.pt$")
LR_FILES = ("syn_lr_{tag}.pt", "syn_lr.pt", "lr_best.pt", "learned_lr.pt")


@dataclass
class Selection:
    folder: Path
    tag: str  # an iteration number or "best"
    given: str  # folder | images | labels | images_zca

    def file(self, kind: str, tag: str | None = None) -> Path:
        return self.folder / f"{kind}_{tag or self.tag}.pt"

    @property
    def zca_run(self) -> bool:
        return any(self.folder.glob("images_zca_*.pt"))


def _tags(folder: Path, kind: str) -> list[str]:
    found = (_FILE.match(p.name) for p in folder.iterdir() if path_kind(p) == "file")
    return [m.group(2) for m in found if m and m.group(1) == kind]


def select(path: Path) -> Selection | None:
    """Which iteration of which run a path names, or None when it is no MTT file or run folder."""
    if path.is_dir():
        tags = set(_tags(path, "images")) & set(_tags(path, "labels"))
        if not tags:
            return Selection(path, "", "folder") if _tags(path, "images") or _tags(path, "labels") else None
        tag = "best" if "best" in tags else max((t for t in tags if t != "best"), key=int)
        return Selection(path, tag, "folder")
    m = _FILE.match(path.name)
    return Selection(path.parent, m.group(2), m.group(1)) if m else None


class MTTImporter:
    name = "mtt"
    description = ("mtt-distillation run: the folder, images_<it|best>.pt, labels_<it|best>.pt or "
                   "images_zca_<it>.pt (ZCA runs); learned lr from syn_lr.pt if present")

    def sniff(self, path: Path) -> bool:
        return select(path) is not None

    def load(self, path: Path):
        sel = select(path)
        if sel is None:
            raise DDProbeError(f"{path}: not an mtt-distillation file; expected a run folder, images_<it>.pt, "
                               "labels_<it>.pt or images_zca_<it>.pt")
        if not sel.tag:
            raise DDProbeError(f"{path}: no iteration has both images_<it>.pt and labels_<it>.pt in this folder")
        labels_path = sel.file("labels")
        if not labels_path.exists():
            raise DDProbeError(f"{path}: its labels are missing: expected {labels_path.name} next to it "
                               "(distill.py saves labels_<it>.pt with every images_<it>.pt)")
        zca_run = sel.zca_run
        if sel.given == "images_zca":
            images_path, space = sel.file("images_zca"), "pixels"
        elif zca_run and (recon := self._reconstruction(sel)) is not None:
            images_path, space = recon, "pixels"
        else:
            images_path, space = sel.file("images"), "zca" if zca_run else None
            if not images_path.exists():
                raise DDProbeError(f"{path}: {images_path.name} is missing next to {labels_path.name}")
        learned, source = self._learned_lr(sel)
        ds = make_set(load_pt(images_path), load_pt(labels_path), images_path, self.name, distiller="mtt",
                      learned_lr=learned, learned_lr_source=source, file_space=space,
                      distilled_space="zca" if zca_run else None, iteration=sel.tag, run_folder=str(sel.folder))
        ds.manifest.name = sel.folder.name if sel.given == "folder" else images_path.stem
        return ds

    def _reconstruction(self, sel: Selection) -> Path | None:
        """The pixel reconstruction (images_zca_<it>.pt) of the selected iteration; for ``best``, the numbered
        iteration whose images equal images_best.pt."""
        import torch

        if sel.file("images_zca").exists():
            return sel.file("images_zca")
        if sel.tag != "best" or not sel.file("images").exists():
            return None
        best = load_pt(sel.file("images"))
        for tag in sorted((t for t in _tags(sel.folder, "images_zca") if t != "best"), key=int, reverse=True):
            numbered = sel.file("images", tag)
            if numbered.exists():
                candidate = load_pt(numbered)
                if isinstance(candidate, torch.Tensor) and isinstance(best, torch.Tensor) \
                        and candidate.shape == best.shape and torch.equal(candidate, best):
                    return sel.file("images_zca", tag)
        return None

    def _learned_lr(self, sel: Selection) -> tuple[float | None, str | None]:
        for pattern in LR_FILES:
            candidate = sel.folder / pattern.format(tag=sel.tag)
            if pattern == "lr_best.pt" and sel.tag != "best":
                continue
            if candidate.exists():
                value = load_pt(candidate)
                try:
                    return as_float(value), candidate.name
                except (TypeError, ValueError, RuntimeError) as exc:
                    raise DDProbeError(f"{candidate}: a learned lr must be one number ({exc})") from exc
        return None, None
