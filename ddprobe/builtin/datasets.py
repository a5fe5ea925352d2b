"""Built-in datasets: the embedded scikit-learn digits (offline default), torchvision sets, and image folders."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from ..errors import DDProbeError
from ..hookspecs import hookimpl

CIFAR10_MEAN = [0.4914, 0.4822, 0.4465]
CIFAR10_STD = [0.2023, 0.1994, 0.2010]


class CommonOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    zca: bool = Field(False, description="ZCA-whiten the normalized images (fitted on the training split)")
    train_per_class: int | None = Field(None, ge=1, description="keep only the first N training images per class")


def _finish(name: str, train_x, train_y, test_x, test_y, classes: list[str], options: CommonOptions,
            mean: list[float] | None = None, std: list[float] | None = None):
    """Normalize [0,1] pixel tensors, optionally subsample and ZCA-whiten, and build a RealData."""
    import torch

    from ..data import InputSpace, LabeledData, RealData

    train_x, test_x = train_x.float(), test_x.float()
    train_y, test_y = train_y.long(), test_y.long()
    if options.train_per_class is not None:
        keep = torch.cat([torch.nonzero(train_y == c).flatten()[: options.train_per_class]
                          for c in range(len(classes))]).sort().values
        train_x, train_y = train_x[keep], train_y[keep]
    if mean is None or std is None:
        mean = train_x.mean(dim=(0, 2, 3)).tolist()
        std = train_x.std(dim=(0, 2, 3)).clamp_min(1e-6).tolist()
    m = torch.tensor(mean).view(1, -1, 1, 1)
    s = torch.tensor(std).view(1, -1, 1, 1)
    train_x, test_x = (train_x - m) / s, (test_x - m) / s
    meta: dict = {}
    space = InputSpace(mean=list(mean), std=list(std), shape=list(train_x.shape[1:]))
    if options.zca:
        from ..zca import ZCA

        zca = ZCA.fit(train_x)
        train_x, test_x = zca.whiten(train_x), zca.whiten(test_x)
        meta.update(whiten=zca.whiten, unwhiten=zca.unwhiten, zca=zca)
        space.zca, space.zca_id = True, zca.fingerprint()
    return RealData(name, LabeledData(train_x.contiguous(), train_y, classes),
                    LabeledData(test_x.contiguous(), test_y, classes), space, meta)


class Digits:
    name = "digits"
    description = "scikit-learn's embedded 8x8 handwritten digits (1797 images), fixed stratified 80/20 split"

    class Options(CommonOptions):
        test_fraction: float = Field(0.2, gt=0, lt=1)
        split_seed: int = Field(0, description="seed of the fixed stratified train/test split")

    def load(self, options: Options, root: Path):
        import torch
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split

        bunch = load_digits()
        x = torch.tensor(bunch.images, dtype=torch.float32).unsqueeze(1) / 16.0
        y = torch.tensor(bunch.target, dtype=torch.long)
        idx_train, idx_test = train_test_split(
            list(range(len(y))), test_size=options.test_fraction, stratify=bunch.target,
            random_state=options.split_seed,
        )
        tr, te = torch.tensor(sorted(idx_train)), torch.tensor(sorted(idx_test))
        return _finish(self.name, x[tr], y[tr], x[te], y[te], [str(i) for i in range(10)], options)


class TorchvisionDataset:
    """A torchvision dataset read fully into memory. Downloads only with ``download = true``."""

    class Options(CommonOptions):
        root: str = Field("data", description="folder holding the dataset (relative to the spec file)")
        download: bool = Field(False, description="download the dataset if it is not under root")

    def __init__(self, name: str, cls_name: str, description: str, mean=None, std=None):
        self.name, self.cls_name, self.description = name, cls_name, description
        self.mean, self.std = mean, std

    def expected_files(self, folder: Path) -> list[Path]:
        """The files torchvision reads for this dataset under ``folder`` (from its classes' own file lists)."""
        import torchvision

        cls = getattr(torchvision.datasets, self.cls_name)
        if hasattr(cls, "base_folder") and hasattr(cls, "train_list"):  # CIFAR-10/100
            names = [n for n, _ in cls.train_list + cls.test_list] + [cls.meta["filename"]]
            return [folder / cls.base_folder / n for n in names]
        if hasattr(cls, "split_list"):  # SVHN
            return [folder / cls.split_list[split][1] for split in ("train", "test")]
        if hasattr(cls, "resources"):  # MNIST, FashionMNIST
            raw = folder / cls.__name__ / "raw"
            return [raw / Path(url.rsplit("/", 1)[-1]).stem for url, _ in cls.resources]
        return []

    def _missing_message(self, options: Options, folder: Path, missing: list[Path]) -> str:
        shown = ", ".join(str(p.relative_to(folder)) for p in missing[:8]) + (" ..." if len(missing) > 8 else "")
        return (f"dataset {self.name!r} is not in {folder} (root = {options.root!r} in [data], relative to the "
                f"spec file): missing {shown}. Set `download = true` in the [data] table to download it there, "
                f"or set `root` to the folder that already holds it.")

    def check(self, options: Options, root: Path) -> list[str]:
        """Problems that would stop ``load`` before anything runs: files missing while download = false."""
        folder = (Path(root) / options.root).resolve()
        missing = [p for p in self.expected_files(folder) if not p.is_file()]
        return [self._missing_message(options, folder, missing)] if missing and not options.download else []

    def load(self, options: Options, root: Path):
        import torch
        import torchvision

        folder = (Path(root) / options.root).resolve()
        problems = self.check(options, root)
        if problems:
            raise DDProbeError(problems[0])
        cls = getattr(torchvision.datasets, self.cls_name)
        existed = folder.exists()
        try:
            if self.name == "svhn":
                train = cls(str(folder), split="train", download=options.download)
                test = cls(str(folder), split="test", download=options.download)
            else:
                train = cls(str(folder), train=True, download=options.download)
                test = cls(str(folder), train=False, download=options.download)
        except (RuntimeError, OSError) as exc:  # URLError is an OSError: no network
            reason = getattr(exc, "reason", None) or exc
            if not existed and folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()  # a failed download leaves no empty folder behind
            if options.download:
                files = ", ".join(str(p.relative_to(folder)) for p in self.expected_files(folder))
                raise DDProbeError(
                    f"dataset {self.name!r} could not be downloaded into {folder} ({reason}). Without network "
                    f"access, put its files there yourself ({files}) or set `root` in [data] to the folder that "
                    f"holds them.") from exc
            raise DDProbeError(f"dataset {self.name!r} under {folder} cannot be read ({reason}); delete it and "
                               "set `download = true` in the [data] table to fetch it again.") from exc

        def tensors(ds):
            data = ds.data
            data = torch.as_tensor(data) if not isinstance(data, torch.Tensor) else data
            if data.dim() == 3:
                data = data.unsqueeze(1)
            elif data.shape[-1] == 3:
                data = data.permute(0, 3, 1, 2)
            targets = getattr(ds, "targets", None)
            if targets is None:
                targets = ds.labels
            return data.float() / 255.0, torch.as_tensor(targets, dtype=torch.long)

        tx, ty = tensors(train)
        vx, vy = tensors(test)
        classes = list(getattr(train, "classes", [])) or [str(i) for i in range(int(ty.max()) + 1)]
        return _finish(self.name, tx, ty, vx, vy, [str(c) for c in classes], options, self.mean, self.std)


class ImageFolderDataset:
    name = "imagefolder"
    description = "Your own images: root/train/<class>/* and root/test/<class>/*, resized to image_size"

    class Options(CommonOptions):
        root: str = Field(..., description="folder with train/ and test/ subfolders (relative to the spec file)")
        image_size: int = Field(32, ge=4)
        channels: Literal[1, 3] = 3

    def load(self, options: Options, root: Path):
        import torch
        import torchvision
        from torchvision import transforms

        folder = (Path(root) / options.root).resolve()
        for split in ("train", "test"):
            if not (folder / split).is_dir():
                raise DDProbeError(f"imagefolder: {folder / split} does not exist; it needs one subfolder per class")
        steps = [transforms.Resize((options.image_size, options.image_size))]
        if options.channels == 1:
            steps.append(transforms.Grayscale(1))
        tf = transforms.Compose([*steps, transforms.ToTensor()])

        def read(split: str):
            ds = torchvision.datasets.ImageFolder(str(folder / split), transform=tf)
            xs, ys = zip(*[ds[i] for i in range(len(ds))], strict=True) if len(ds) else ((), ())
            return torch.stack(list(xs)), torch.tensor(list(ys)), ds.classes

        tx, ty, classes = read("train")
        vx, vy, test_classes = read("test")
        if classes != test_classes:
            raise DDProbeError(f"imagefolder: train classes {classes} differ from test classes {test_classes}")
        return _finish(self.name, tx, ty, vx, vy, list(classes), options)


@hookimpl
def register_datasets(register):
    register(Digits())
    register(TorchvisionDataset("mnist", "MNIST", "MNIST handwritten digits (28x28, torchvision)"))
    register(TorchvisionDataset("fashionmnist", "FashionMNIST", "Fashion-MNIST (28x28, torchvision)"))
    register(TorchvisionDataset("cifar10", "CIFAR10", "CIFAR-10 (32x32 RGB, torchvision); the paper's dataset",
                                CIFAR10_MEAN, CIFAR10_STD))
    register(TorchvisionDataset("cifar100", "CIFAR100", "CIFAR-100 (32x32 RGB, torchvision)"))
    register(TorchvisionDataset("svhn", "SVHN", "Street View House Numbers (32x32 RGB, torchvision)"))
    register(ImageFolderDataset())
