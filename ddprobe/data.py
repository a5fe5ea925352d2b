"""Labeled data, real datasets and distilled sets with their manifest; the canonical on-disk format."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict

from .errors import DataMismatchError

if TYPE_CHECKING:
    import torch


class InputSpace(BaseModel):
    """The space images live in: per-channel normalization, optional ZCA whitening, and shape [C, H, W]."""

    model_config = ConfigDict(extra="forbid")

    mean: list[float]
    std: list[float]
    zca: bool = False
    zca_id: str | None = None
    shape: list[int]

    def differences(self, other: InputSpace) -> list[str]:
        """Human-readable differences between two input spaces (empty when they match)."""
        out = []
        if list(self.shape) != list(other.shape):
            out.append(f"image shape {list(self.shape)} vs {list(other.shape)}")
        if not _close(self.mean, other.mean):
            out.append(f"normalization mean {_fmt(self.mean)} vs {_fmt(other.mean)}")
        if not _close(self.std, other.std):
            out.append(f"normalization std {_fmt(self.std)} vs {_fmt(other.std)}")
        if self.zca != other.zca:
            out.append(f"ZCA whitening {'on' if self.zca else 'off'} vs {'on' if other.zca else 'off'}")
        elif self.zca and self.zca_id and other.zca_id and self.zca_id != other.zca_id:
            out.append(f"ZCA transform {self.zca_id} vs {other.zca_id}")
        return out


def _close(a: list[float], b: list[float], tol: float = 1e-3) -> bool:
    return len(a) == len(b) and all(abs(x - y) <= tol for x, y in zip(a, b, strict=True))


def _fmt(values: list[float]) -> str:
    return "[" + ", ".join(f"{v:.4f}" for v in values) + "]"


@dataclass
class LabeledData:
    """Images ``[N, C, H, W]`` float32 in the model's input space, with hard ``[N]`` or soft ``[N, K]`` labels."""

    images: torch.Tensor
    labels: torch.Tensor
    classes: list[str]

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def soft(self) -> bool:
        return self.labels.dim() == 2

    @property
    def hard_labels(self) -> torch.Tensor:
        """Class indices; the argmax for soft labels."""
        return self.labels.argmax(dim=1) if self.soft else self.labels

    def subset(self, indices: Any) -> LabeledData:
        import torch

        idx = torch.as_tensor(indices, dtype=torch.long)
        return replace(self, images=self.images[idx], labels=self.labels[idx])

    def to(self, device: Any) -> LabeledData:
        return replace(self, images=self.images.to(device), labels=self.labels.to(device))

    def class_indices(self) -> list[torch.Tensor]:
        """Indices of each class's examples, in dataset order."""
        import torch

        hard = self.hard_labels
        return [torch.nonzero(hard == c, as_tuple=False).flatten() for c in range(self.num_classes)]

    def counts(self) -> list[int]:
        return [int(ix.numel()) for ix in self.class_indices()]

    @staticmethod
    def concat(parts: list[LabeledData]) -> LabeledData:
        import torch

        first = parts[0]
        if any(p.soft != first.soft for p in parts):
            labels = [torch.nn.functional.one_hot(p.labels, first.num_classes).float() if not p.soft else p.labels
                      for p in parts]
        else:
            labels = [p.labels for p in parts]
        return LabeledData(torch.cat([p.images for p in parts]), torch.cat(labels), first.classes)


@dataclass
class RealData:
    """A real dataset: train and test splits in one input space."""

    name: str
    train: LabeledData
    test: LabeledData
    space: InputSpace
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def classes(self) -> list[str]:
        return self.train.classes

    @property
    def num_classes(self) -> int:
        return self.train.num_classes

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return tuple(self.space.shape)  # type: ignore[return-value]

    def to_pixels(self, images: torch.Tensor) -> torch.Tensor:
        """Undo the input transform (ZCA, then normalization) to get [0, 1]-scale pixels."""
        import torch

        x = images
        unwhiten = self.meta.get("unwhiten")
        if self.space.zca and unwhiten is not None:
            x = unwhiten(x)
        mean = torch.tensor(self.space.mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
        std = torch.tensor(self.space.std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
        return x * std + mean

    def from_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        """Map [0, 1]-scale pixels into this dataset's input space."""
        import torch

        mean = torch.tensor(self.space.mean, dtype=pixels.dtype, device=pixels.device).view(1, -1, 1, 1)
        std = torch.tensor(self.space.std, dtype=pixels.dtype, device=pixels.device).view(1, -1, 1, 1)
        x = (pixels - mean) / std
        whiten = self.meta.get("whiten")
        if self.space.zca and whiten is not None:
            x = whiten(x)
        return x


class Manifest(BaseModel):
    """Everything needed to use a distilled set correctly, stored next to its tensors."""

    model_config = ConfigDict(extra="allow")

    name: str = ""
    distiller: str | None = None
    options: dict[str, Any] = {}
    ipc: int | None = None
    num_classes: int | None = None
    image_shape: list[int] | None = None
    label_kind: str = "hard"
    learned_lr: float | None = None
    learned_lr_source: str | None = None  # the file or spec key it came from (imported sets)
    input_space: InputSpace | None = None
    # imported sets (ddprobe.spaces): the space the file's images are in when its format says so (pixels,
    # normalized, zca), and the space its distiller trained in when the file says so (an MTT --zca run)
    file_space: str | None = None
    distilled_space: str | None = None
    source_dataset: str | None = None
    source_file: str | None = None
    importer: str | None = None
    seed: int | None = None
    seconds: float | None = None
    sha256: str | None = None
    ddprobe_version: str | None = None


@dataclass
class DistilledSet(LabeledData):
    """A distilled set: a ``LabeledData`` plus the manifest that says how it was made and what space it is in."""

    manifest: Manifest = field(default_factory=Manifest)

    def __post_init__(self) -> None:
        m = self.manifest
        if m.sha256 is None:
            m.sha256 = content_hash(self.images, self.labels)
        m.label_kind = "soft" if self.labels.dim() == 2 else "hard"
        m.image_shape = list(self.images.shape[1:])
        m.num_classes = m.num_classes or len(self.classes)
        if m.ipc is None and len(self):
            m.ipc = max(1, round(len(self) / max(1, m.num_classes)))

    @property
    def name(self) -> str:
        return self.manifest.name

    def to(self, device: Any) -> DistilledSet:
        return replace(self, images=self.images.to(device), labels=self.labels.to(device))

    def as_data(self) -> LabeledData:
        return LabeledData(self.images, self.labels, self.classes)

    @classmethod
    def load(cls, path: str | Path, importer: str | None = None) -> DistilledSet:
        """A saved set: ddprobe's own format (``NAME.safetensors`` + ``NAME.json``, as ``ddprobe distill`` writes;
        give either file or the stem), or any file a registered importer reads (``ddprobe list importers``;
        ``importer`` names one instead of letting them recognize the file)."""
        p = Path(path)
        if importer is None and (p.suffix in (".safetensors", ".json") or
                                 p.with_name(p.name + ".safetensors").exists()):
            return load_distilled(p)
        from .builtin.importers import import_file

        return import_file(p, importer)

    def save(self, path: str | Path) -> Path:
        """Write ddprobe's format (see :func:`save_distilled`); returns the ``.safetensors`` path."""
        return save_distilled(self, path)


def content_hash(images: torch.Tensor, labels: torch.Tensor) -> str:
    """The sha256 of a set's images and labels (dtype, shape and bytes): what the cache keys sets by."""
    h = hashlib.sha256()
    for t in (images, labels):
        t = t.detach().to("cpu").contiguous()
        h.update(str(t.dtype).encode())
        h.update(str(list(t.shape)).encode())
        h.update(t.numpy())  # the array's buffer, not a copy of it (``tobytes`` copied 600 MB for CIFAR-10)
    return h.hexdigest()


def verify_content_hash(ds: DistilledSet, where: str, claimed: str | None = None) -> str:
    """Compute the set's content hash and make it the manifest's ``sha256``; a different hash claimed by the
    manifest (or given as ``claimed``) is refused: the cache keys sets by content, so a claim is checked, never
    trusted."""
    computed = content_hash(ds.images, ds.labels)
    claimed = claimed or ds.manifest.sha256
    if claimed is not None and claimed != computed:
        raise DataMismatchError(
            f"{where}: the manifest claims sha256 {claimed} but the images and labels in the file hash to "
            f"{computed}; the tensors were changed after the manifest was written, or the manifest belongs to "
            f"another set. Remove the \"sha256\" entry from the manifest to accept the file as it is.")
    ds.manifest.sha256 = computed
    return computed


def check_compatible(ds: DistilledSet, real: RealData, where: str = "", space: bool = True) -> None:
    """Refuse a distilled set that does not fit the real data: shape, classes, labels, values, and (with
    ``space``) the input space its manifest states."""
    import torch

    label = where or repr(ds.name)
    problems = []
    if list(ds.images.shape[1:]) != list(real.input_shape):
        problems.append(f"image shape {list(ds.images.shape[1:])} but {real.name} images are {list(real.input_shape)}")
    if ds.soft:
        if ds.labels.shape[1] != real.num_classes:
            problems.append(f"soft labels have {ds.labels.shape[1]} classes but {real.name} has {real.num_classes}")
    else:
        if ds.labels.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8):
            problems.append(f"labels have dtype {ds.labels.dtype}; hard labels must be integers")
        elif len(ds) and (int(ds.labels.min()) < 0 or int(ds.labels.max()) >= real.num_classes):
            problems.append(
                f"labels range over [{int(ds.labels.min())}, {int(ds.labels.max())}] but {real.name} has classes "
                f"0..{real.num_classes - 1}"
            )
    if ds.labels.shape[0] != ds.images.shape[0]:
        problems.append(f"{ds.images.shape[0]} images but {ds.labels.shape[0]} labels")
    if not torch.isfinite(ds.images).all():
        bad = int((~torch.isfinite(ds.images)).sum())
        problems.append(f"{bad} image values are NaN or Inf")
    if ds.soft and not torch.isfinite(ds.labels).all():
        problems.append("soft labels contain NaN or Inf")
    if space and ds.manifest.input_space is not None:
        for diff in ds.manifest.input_space.differences(real.space):
            problems.append(f"input space differs from {real.name}'s: {diff} (set vs real data)")
    if problems:
        raise DataMismatchError(f"distilled set {label} does not fit {real.name}: " + "; ".join(problems))


def save_distilled(ds: DistilledSet, path: str | Path) -> Path:
    """Write the canonical format: ``<path>.safetensors`` (tensors + manifest) and ``<path>.json`` (manifest)."""
    from safetensors.torch import save_file

    path = Path(path)
    base = path.with_suffix("") if path.suffix in (".safetensors", ".json") else path
    base.parent.mkdir(parents=True, exist_ok=True)
    manifest = ds.manifest.model_dump(mode="json")
    manifest["classes"] = list(ds.classes)
    tensors = {"images": ds.images.detach().cpu().contiguous(), "labels": ds.labels.detach().cpu().contiguous()}
    target = base.with_name(base.name + ".safetensors")
    save_file(tensors, str(target), metadata={"ddprobe_manifest": json.dumps(manifest)})
    base.with_name(base.name + ".json").write_text(json.dumps(manifest, indent=2) + "\n")
    return target


def load_distilled(path: str | Path) -> DistilledSet:
    """Read a set written by :func:`save_distilled` (give either file, or the common stem)."""
    from safetensors import safe_open

    path = Path(path)
    if path.suffix != ".safetensors":
        path = path.with_name((path.stem if path.suffix == ".json" else path.name) + ".safetensors")
    with safe_open(str(path), framework="pt") as f:
        meta = json.loads((f.metadata() or {}).get("ddprobe_manifest", "{}"))
        images, labels = f.get_tensor("images"), f.get_tensor("labels")
    classes = meta.pop("classes", None) or [str(i) for i in range(int(meta.get("num_classes") or 0))]
    claimed = meta.pop("sha256", None)
    ds = DistilledSet(images.float(), labels, classes, manifest=Manifest.model_validate(meta))  # hashes the content
    if claimed is not None and claimed != ds.manifest.sha256:
        ds.manifest.sha256 = None
        verify_content_hash(ds, str(path), claimed)  # raises, naming the file
    return ds
