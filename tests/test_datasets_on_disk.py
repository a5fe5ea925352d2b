"""The torchvision datasets read from files already on disk, in each dataset's own format (tests never download).

The files are tiny and written here with known pixels, so the whole path a user's real download takes is checked:
torchvision's reader, our layout conversion (HWC to CHW, a channel axis for grayscale), scaling, normalization,
class names and ``train_per_class``.
"""

from __future__ import annotations

import os
import pickle
import struct

import numpy as np
import pytest
import torch

from ddprobe import registry


def _idx(path, array: np.ndarray) -> None:
    """An IDX file (the MNIST format): magic 0x08 (uint8) + ndim, big-endian dims, raw bytes."""
    head = struct.pack(">I", 0x0800 + array.ndim) + b"".join(struct.pack(">I", d) for d in array.shape)
    path.write_bytes(head + array.astype(np.uint8).tobytes())


def _mnist_like(root, folder: str, per_class: int, rng: np.random.Generator):
    raw = root / folder / "raw"
    raw.mkdir(parents=True)
    out = {}
    for split, prefix in (("train", "train"), ("test", "t10k")):
        labels = np.repeat(np.arange(10), per_class if split == "train" else 2)
        rng.shuffle(labels)
        images = rng.integers(0, 256, size=(len(labels), 28, 28), dtype=np.uint8)
        _idx(raw / f"{prefix}-images-idx3-ubyte", images)
        _idx(raw / f"{prefix}-labels-idx1-ubyte", labels)
        out[split] = (images, labels)
    return out


@pytest.mark.parametrize("name,folder", [("mnist", "MNIST"), ("fashionmnist", "FashionMNIST")])
def test_mnist_format_read_from_disk(tmp_path, name, folder):
    files = _mnist_like(tmp_path / "data", folder, per_class=3, rng=np.random.default_rng(0))
    plugin = registry.get_dataset(name)
    real = plugin.load(plugin.Options(root="data"), tmp_path)
    images, labels = files["train"]
    assert real.train.images.shape == (30, 1, 28, 28) and real.test.images.shape == (20, 1, 28, 28)
    assert real.train.labels.tolist() == labels.tolist()
    assert real.test.labels.tolist() == files["test"][1].tolist()
    assert len(real.train.classes) == 10
    pixels = torch.as_tensor(images, dtype=torch.float32).unsqueeze(1) / 255
    torch.testing.assert_close(real.to_pixels(real.train.images), pixels, atol=1e-5, rtol=0)
    # normalized with the training split's own statistics (no published constants for these sets)
    assert abs(float(real.train.images.mean())) < 1e-4 and abs(float(real.train.images.std()) - 1) < 1e-2

    first2 = plugin.load(plugin.Options(root="data", train_per_class=2), tmp_path)
    keep = sorted(i for c in range(10) for i in np.flatnonzero(labels == c)[:2])
    assert first2.train.labels.tolist() == labels[keep].tolist()


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_cifar_format_read_from_disk(tmp_path, monkeypatch, name):
    import torchvision.datasets.cifar as cifar

    cls = {"cifar10": cifar.CIFAR10, "cifar100": cifar.CIFAR100}[name]
    classes = 10 if name == "cifar10" else 100
    label_key = "labels" if name == "cifar10" else "fine_labels"
    rng = np.random.default_rng(1)
    folder = tmp_path / "data" / cls.base_folder
    folder.mkdir(parents=True)
    names = [f"class-{c}" for c in range(classes)]
    batches = {}
    for file_name, _ in cls.train_list + cls.test_list:
        labels = rng.integers(0, classes, size=4).tolist()
        chw = rng.integers(0, 256, size=(4, 3, 32, 32), dtype=np.uint8)  # the format stores rows of R, G, B planes
        with open(folder / file_name, "wb") as f:
            pickle.dump({"data": chw.reshape(4, -1), label_key: labels}, f)
        batches[file_name] = (chw, labels)
    with open(folder / cls.meta["filename"], "wb") as f:
        pickle.dump({cls.meta["key"]: names}, f)
    # our files cannot match the published checksums; everything else is torchvision's real reading path
    monkeypatch.setattr(cifar, "check_integrity", lambda path, md5=None: os.path.isfile(path))

    plugin = registry.get_dataset(name)
    real = plugin.load(plugin.Options(root="data"), tmp_path)
    train = [batches[f] for f, _ in cls.train_list]
    chw = torch.as_tensor(np.concatenate([b[0] for b in train]), dtype=torch.float32) / 255
    assert real.train.images.shape == (4 * len(train), 3, 32, 32) and real.test.images.shape == (4, 3, 32, 32)
    assert real.train.labels.tolist() == [y for b in train for y in b[1]]
    assert list(real.train.classes) == names
    torch.testing.assert_close(real.to_pixels(real.train.images), chw, atol=1e-5, rtol=0)
    if name == "cifar10":  # the published CIFAR-10 normalization, not the statistics of these few images
        mean = torch.tensor([0.4914, 0.4822, 0.4465]).view(1, 3, 1, 1)
        std = torch.tensor([0.2023, 0.1994, 0.2010]).view(1, 3, 1, 1)
        torch.testing.assert_close(real.train.images, (chw - mean) / std, atol=1e-5, rtol=0)


def test_svhn_format_read_from_disk(tmp_path, monkeypatch):
    import scipy.io
    import torchvision.datasets.svhn as svhn

    rng = np.random.default_rng(2)
    folder = tmp_path / "data"
    folder.mkdir()
    files = {}
    for split in ("train", "test"):
        digits = np.tile(np.arange(10), 2)  # SVHN's .mat files label the digit 0 as 10
        hwcn = rng.integers(0, 256, size=(32, 32, 3, len(digits)), dtype=np.uint8)
        scipy.io.savemat(folder / svhn.SVHN.split_list[split][1],
                         {"X": hwcn, "y": np.where(digits == 0, 10, digits).reshape(-1, 1)})
        files[split] = (hwcn, digits)
    monkeypatch.setattr(svhn, "check_integrity", lambda path, md5=None: os.path.isfile(path))

    plugin = registry.get_dataset("svhn")
    real = plugin.load(plugin.Options(root="data"), tmp_path)
    hwcn, digits = files["train"]
    assert real.train.labels.tolist() == digits.tolist() and real.test.images.shape == (20, 3, 32, 32)
    assert list(real.train.classes) == [str(c) for c in range(10)]
    nchw = torch.as_tensor(hwcn.transpose(3, 2, 0, 1), dtype=torch.float32) / 255
    torch.testing.assert_close(real.to_pixels(real.train.images), nchw, atol=1e-5, rtol=0)
