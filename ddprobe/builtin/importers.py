"""Importers for the files that the reference repositories write (paper-methods.md C.5).

Every ``.pt`` file is read with ``torch.load(weights_only=True)``: no untrusted pickle is ever executed.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from ..errors import DDProbeError
from ..hookspecs import hookimpl


def _torch_load(path: Path) -> Any:
    import torch

    try:
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise DDProbeError(f"{path}: cannot be read as a tensor file with weights_only=True ({exc})") from exc


def _make(images, labels, path: Path, importer: str, **extra):
    import torch

    from ..data import DistilledSet, Manifest

    images = torch.as_tensor(images).float()
    labels = torch.as_tensor(labels)
    if labels.dim() == 1:
        labels = labels.long()
    else:
        labels = labels.float()
    if images.dim() == 3:  # [N, H, W] grey images
        images = images.unsqueeze(1)
    if images.dim() != 4:
        raise DDProbeError(f"{path}: images must be [N, C, H, W], got shape {list(images.shape)}")
    num_classes = int(labels.shape[1]) if labels.dim() == 2 else (int(labels.max()) + 1 if labels.numel() else 0)
    manifest = Manifest(name=path.stem, source_file=str(path), importer=importer, **extra)
    return DistilledSet(images, labels, [str(i) for i in range(num_classes)], manifest=manifest)


class CanonicalImporter:
    name = "ddprobe"
    description = "ddprobe's own format: NAME.safetensors (images, labels, manifest) + NAME.json"

    def sniff(self, path: Path) -> bool:
        return path.suffix == ".safetensors" or (path.suffix == ".json" and path.with_suffix(".safetensors").exists())

    def load(self, path: Path):
        from ..data import load_distilled

        ds = load_distilled(path)
        ds.manifest.source_file = str(path)
        ds.manifest.importer = self.name
        return ds


class DatasetCondensationImporter:
    name = "dc"
    description = "DatasetCondensation res_{DC,DSA,DM}_*.pt: {'data': [[images, labels], ...], 'accs_all_exps'}"

    def sniff(self, path: Path) -> bool:
        if path.suffix != ".pt":
            return False
        obj = _torch_load(path)
        return isinstance(obj, dict) and isinstance(obj.get("data"), (list, tuple)) and "accs_all_exps" in obj

    def load(self, path: Path):
        obj = _torch_load(path)
        runs = obj["data"]
        if not runs:
            raise DDProbeError(f"{path}: 'data' holds no experiments")
        images, labels = runs[0][0], runs[0][1]
        method = path.name.split("_")[1] if path.name.startswith("res_") else None
        return _make(images, labels, path, self.name, distiller=method and method.lower(),
                     experiment=0, experiments=len(runs))


class MTTImporter:
    name = "mtt"
    description = "mtt-distillation images_{it,best}.pt + labels_{it,best}.pt (+ optional syn_lr.pt / lr_best.pt)"

    def _pair(self, path: Path) -> tuple[Path, Path] | None:
        if path.is_dir():
            path = path / "images_best.pt"
        if not (path.name.startswith("images_") and path.suffix == ".pt"):
            return None
        labels = path.with_name("labels_" + path.name[len("images_"):])
        return (path, labels) if path.exists() and labels.exists() else None

    def sniff(self, path: Path) -> bool:
        return self._pair(path) is not None

    def load(self, path: Path):
        images_path, labels_path = self._pair(path) or (None, None)
        if images_path is None:
            raise DDProbeError(f"{path}: expected images_*.pt next to labels_*.pt")
        learned = None
        for name in ("syn_lr.pt", "lr_best.pt", "learned_lr.pt"):
            candidate = images_path.with_name(name)
            if candidate.exists():
                value = _torch_load(candidate)
                learned = float(value.item() if hasattr(value, "item") else value)
                break
        return _make(_torch_load(images_path), _torch_load(labels_path), images_path, self.name, distiller="mtt",
                     learned_lr=learned)


class DictImporter:
    name = "dict-pt"
    description = "a .pt dict {'data', 'label'} (the analysis paper's DD_data files) or {'images', 'labels'}"
    KEYS = (("data", "label"), ("images", "labels"), ("data", "labels"), ("x", "y"))

    def sniff(self, path: Path) -> bool:
        if path.suffix not in (".pt", ".pth"):
            return False
        obj = _torch_load(path)
        return isinstance(obj, dict) and any(a in obj and b in obj and hasattr(obj[a], "shape")
                                             for a, b in self.KEYS)

    def load(self, path: Path):
        obj = _torch_load(path)
        for a, b in self.KEYS:
            if a in obj and b in obj:
                lr = obj.get("lr") if "lr" in obj else obj.get("learned_lr")
                lr = float(lr.item() if hasattr(lr, "item") else lr) if lr is not None else None
                return _make(obj[a], obj[b], path, self.name, learned_lr=lr)
        raise DDProbeError(f"{path}: no image/label keys; expected one of {self.KEYS}")


class NpzImporter:
    name = "npz"
    description = "a NumPy .npz with images (images|data|x) and labels (labels|label|y), optional lr"

    def sniff(self, path: Path) -> bool:
        return path.suffix == ".npz"

    def load(self, path: Path):
        import numpy as np

        with np.load(str(path), allow_pickle=False) as z:
            keys = set(z.files)
            img_key = next((k for k in ("images", "data", "x") if k in keys), None)
            lab_key = next((k for k in ("labels", "label", "y") if k in keys), None)
            if img_key is None or lab_key is None:
                raise DDProbeError(f"{path}: needs arrays named images/data/x and labels/label/y; found {sorted(keys)}")
            lr = float(z["lr"]) if "lr" in keys else None
            return _make(z[img_key], z[lab_key], path, self.name, learned_lr=lr)


class RTPImporter:
    name = "rtp"
    description = "RememberThePast (BPTT) compressor state dict: imgs.weight [N, C*H*W], labels class-major"

    def _weight(self, obj: Any):
        if isinstance(obj, dict) and isinstance(obj.get("compressor"), dict):
            obj = obj["compressor"]
        return obj.get("imgs.weight") if isinstance(obj, dict) else None

    def sniff(self, path: Path) -> bool:
        return path.suffix in (".pt", ".pth") and self._weight(_torch_load(path)) is not None

    def load(self, path: Path):
        import torch

        weight = self._weight(_torch_load(path))
        n, d = weight.shape
        for c in (3, 1):
            side = math.isqrt(d // c)
            if c * side * side == d:
                break
        else:
            raise DDProbeError(f"{path}: cannot infer an image shape from rows of length {d}")
        # Labels are implicit and class-major; the class count is not stored, so it must divide N evenly.
        num_classes = 10 if n % 10 == 0 else n
        ipc = n // num_classes
        labels = torch.arange(num_classes).repeat_interleave(ipc)
        return _make(weight.reshape(n, c, side, side), labels, path, self.name, distiller="bptt")


ALL = (CanonicalImporter, MTTImporter, DatasetCondensationImporter, RTPImporter, DictImporter, NpzImporter)


@hookimpl
def register_importers(register):
    for cls in ALL:
        register(cls())


def import_file(path: str | Path, importer: str | None = None):
    """Load a distilled set with the named importer, or the first one whose ``sniff`` accepts the file."""
    from .. import registry

    path = Path(path)
    if not path.exists():
        raise DDProbeError(f"distilled-set file {path} does not exist")
    importers = registry.get_all("importer")
    if importer is not None:
        return importers[importer].load(path)
    for imp in importers.values():
        try:
            if imp.sniff(path):
                return imp.load(path)
        except DDProbeError:
            raise
        except Exception:  # an importer that cannot read the file simply does not claim it
            continue
    raise DDProbeError(
        f"{path}: no importer recognizes this file. Known formats: "
        + "; ".join(f"{imp.name} ({imp.description})" for imp in importers.values())
    )
