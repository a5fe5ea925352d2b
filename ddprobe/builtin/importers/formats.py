"""Single-file formats: ddprobe's own, DatasetCondensation's ``res_*.pt``, plain dicts, ``.npz``, RTP state dicts.

None of these formats says which input space its images are in; ddprobe assumes the study's space unless the
spec declares another (``input_space``) and checks the assumption on import (``ddprobe.spaces``).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from ...errors import DDProbeError
from .common import as_float, make_set
from .safeload import load_pt, require_readable


class CanonicalImporter:
    name = "ddprobe"
    description = "ddprobe's own format: NAME.safetensors (images, labels, manifest) + NAME.json"

    def sniff(self, path: Path) -> bool:
        if path.is_dir():
            return False
        return path.suffix == ".safetensors" or (path.suffix == ".json" and path.with_suffix(".safetensors").exists())

    def load(self, path: Path):
        from ...data import load_distilled

        tensors = path if path.suffix == ".safetensors" else path.with_suffix(".safetensors")
        require_readable(tensors, folder_ok=False)  # NAME.json names NAME.safetensors: never open a FIFO
        ds = load_distilled(path)
        ds.manifest.source_file = str(path)
        ds.manifest.importer = self.name
        if ds.manifest.input_space is not None:  # its manifest says which space it is in, and was made in
            ds.manifest.file_space = "zca" if ds.manifest.input_space.zca else "normalized"
            ds.manifest.distilled_space = ds.manifest.distilled_space or ds.manifest.file_space
        return ds


class DatasetCondensationImporter:
    name = "dc"
    description = ("DatasetCondensation res_{DC,DSA,DM}_*.pt: {'data': [[images, labels], ...], 'accs_all_exps'} "
                   "(NumPy accuracies included); the first experiment is used")

    def sniff(self, path: Path) -> bool:
        if path.suffix != ".pt" or path.is_dir():
            return False
        obj = load_pt(path)
        return isinstance(obj, dict) and isinstance(obj.get("data"), (list, tuple)) and "accs_all_exps" in obj

    def load(self, path: Path):
        obj = load_pt(path)
        runs = obj["data"]
        if not runs:
            raise DDProbeError(f"{path}: 'data' holds no experiments")
        first = runs[0]
        if not isinstance(first, (list, tuple)) or len(first) < 2:
            raise DDProbeError(f"{path}: data[0] must be [images, labels] as DatasetCondensation saves it")
        method = path.name.split("_")[1] if path.name.startswith("res_") and path.name.count("_") >= 2 else None
        return make_set(first[0], first[1], path, self.name, distiller=method and method.lower(),
                        experiment=0, experiments=len(runs))


class DictImporter:
    name = "dict-pt"
    description = "a .pt dict {'data', 'label'} (the analysis paper's DD_data files) or {'images', 'labels'}"
    KEYS = (("data", "label"), ("images", "labels"), ("data", "labels"), ("x", "y"))

    def sniff(self, path: Path) -> bool:
        if path.suffix not in (".pt", ".pth") or path.is_dir():
            return False
        obj = load_pt(path)
        return isinstance(obj, dict) and any(a in obj and b in obj and hasattr(obj[a], "shape")
                                             for a, b in self.KEYS)

    def load(self, path: Path):
        obj = load_pt(path)
        for a, b in self.KEYS:
            if a in obj and b in obj:
                lr = obj.get("lr") if obj.get("lr") is not None else obj.get("learned_lr")
                return make_set(obj[a], obj[b], path, self.name, learned_lr=None if lr is None else as_float(lr),
                                learned_lr_source=None if lr is None else f"{path.name} ['lr']")
        raise DDProbeError(f"{path}: no image/label keys; expected one of {self.KEYS}")


class NpzImporter:
    name = "npz"
    description = "a NumPy .npz with images (images|data|x) and labels (labels|label|y), optional lr"

    def sniff(self, path: Path) -> bool:
        return path.suffix == ".npz" and not path.is_dir()

    def load(self, path: Path):
        import numpy as np

        try:
            z = np.load(str(path), allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise DDProbeError(f"{path}: cannot be read as a NumPy .npz without pickles ({exc})") from exc
        with z:
            keys = set(z.files)
            img_key = next((k for k in ("images", "data", "x") if k in keys), None)
            lab_key = next((k for k in ("labels", "label", "y") if k in keys), None)
            if img_key is None or lab_key is None:
                raise DDProbeError(f"{path}: needs arrays named images/data/x and labels/label/y; found {sorted(keys)}")
            lr = float(z["lr"]) if "lr" in keys else None
            return make_set(z[img_key], z[lab_key], path, self.name, learned_lr=lr,
                            learned_lr_source=None if lr is None else f"{path.name} ['lr']")


class RTPImporter:
    name = "rtp"
    description = "RememberThePast (BPTT) compressor state dict: imgs.weight [N, C*H*W], labels class-major"

    def _weight(self, obj: Any):
        if isinstance(obj, dict) and isinstance(obj.get("compressor"), dict):
            obj = obj["compressor"]
        return obj.get("imgs.weight") if isinstance(obj, dict) else None

    def sniff(self, path: Path) -> bool:
        return path.suffix in (".pt", ".pth") and not path.is_dir() and self._weight(load_pt(path)) is not None

    def load(self, path: Path):
        import torch

        weight = self._weight(load_pt(path))
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
        return make_set(weight.reshape(n, c, side, side), labels, path, self.name, distiller="bptt")
