"""Class folders of image files: the layout ImageNet-scale methods (SRe2L, RDED and others) save.

``<dir>/<class>/<image>.png|jpg|jpeg|bmp|webp``. Images are [0, 1] pixels (converted into the study's space on
import) and keep their stored size, which must be the same for all of them and match the study's data. Class
folders are read in sorted order; when every folder name is a class of the study's dataset the labels follow
the dataset's class order instead (``ddprobe.spaces.adopt``). Files inside a class folder are read in sorted
order.

Optional soft labels: ``<dir>/soft_labels.pt`` (or ``labels.pt``), a float tensor ``[N, K]`` with one row per
image in that same order (class folders sorted, then file names sorted). Without it the labels are hard.
"""

from __future__ import annotations

from pathlib import Path

from ...errors import DDProbeError
from .common import make_set
from .safeload import load_pt, path_kind

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
SOFT_LABEL_FILES = ("soft_labels.pt", "labels.pt")


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and path_kind(p) == "file")


def class_folders(path: Path) -> list[Path]:
    if path_kind(path) != "folder":
        return []
    return sorted(p for p in path.iterdir() if path_kind(p) == "folder" and not p.name.startswith("."))


class ClassFolderImporter:
    name = "class-folders"
    description = ("class folders of images <dir>/<class>/*.png|jpg (SRe2L, RDED); optional soft_labels.pt "
                   "[N, K]; pixels in [0, 1]")

    def sniff(self, path: Path) -> bool:
        folders = class_folders(path)
        return bool(folders) and all(_images_in(f) for f in folders)

    def load(self, path: Path):
        import numpy as np
        import torch
        from PIL import Image

        folders = class_folders(path)
        empty = [f.name for f in folders if not _images_in(f)]
        if not folders or empty:
            raise DDProbeError(f"{path}: expected one folder per class holding image files "
                               f"({', '.join(IMAGE_SUFFIXES)}); empty: {', '.join(empty) or 'no class folders'}")
        files = [(c, p) for c, folder in enumerate(folders) for p in _images_in(folder)]
        arrays, modes = [], set()
        for _, file in files:
            try:
                with Image.open(file) as img:
                    img.load()
                    modes.add("L" if img.mode in ("L", "1") else "RGB")
                    arrays.append(img)
            except OSError as exc:
                raise DDProbeError(f"{file}: cannot be read as an image ({exc})") from exc
        mode = "L" if modes == {"L"} else "RGB"
        pixels = [np.asarray(img.convert(mode), dtype=np.float32) / 255.0 for img in arrays]
        sizes = {a.shape[:2] for a in pixels}
        if len(sizes) > 1:
            raise DDProbeError(f"{path}: images differ in size ({', '.join(f'{h}x{w}' for h, w in sorted(sizes))}); "
                               "resize them to the study's image size first")
        images = torch.from_numpy(np.stack(pixels))
        images = images.unsqueeze(1) if mode == "L" else images.permute(0, 3, 1, 2)
        labels = torch.tensor([c for c, _ in files], dtype=torch.long)
        soft_file = next((path / n for n in SOFT_LABEL_FILES if (path / n).exists()), None)
        if soft_file is not None:
            soft = load_pt(soft_file)
            soft = torch.as_tensor(soft).float() if not isinstance(soft, torch.Tensor) else soft.float()
            if soft.dim() != 2 or soft.shape[0] != len(files):
                raise DDProbeError(f"{soft_file}: soft labels must be [N, K] with one row per image "
                                   f"(N = {len(files)}), got shape {list(soft.shape)}")
            labels = soft
        return make_set(images, labels, path, self.name, file_space="pixels",
                        class_folders=[f.name for f in folders],
                        soft_labels_file=soft_file.name if soft_file is not None else None)
