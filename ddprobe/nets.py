"""Network definitions. Every ddprobe model returns logits from ``forward`` and penultimate features from ``embed``."""

from __future__ import annotations

import torch
from torch import nn


class Classifier(nn.Module):
    """Base class: ``forward(x) = head(embed(x))``; ``embed`` gives the penultimate (pre-classifier) features."""

    head: nn.Linear

    def embed(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(x))

    @property
    def feature_dim(self) -> int:
        return self.head.in_features


def batchnorm_layers(model: nn.Module) -> list[nn.Module]:
    """The model's BatchNorm layers (any dimension), in ``modules()`` order."""
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def make_norm(kind: str, channels: int, spatial: tuple[int, int]) -> nn.Module:
    if kind == "instancenorm":
        return nn.GroupNorm(channels, channels, affine=True)
    if kind == "batchnorm":
        return nn.BatchNorm2d(channels)
    if kind == "layernorm":
        return nn.LayerNorm([channels, *spatial], elementwise_affine=True)
    if kind == "groupnorm":
        return nn.GroupNorm(4 if channels % 4 == 0 else 1, channels, affine=True)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"unknown norm {kind!r}")


def make_act(kind: str) -> nn.Module:
    return {"relu": nn.ReLU, "sigmoid": nn.Sigmoid, "leakyrelu": lambda: nn.LeakyReLU(0.01), "elu": nn.ELU}[kind]()


def make_pool(kind: str) -> nn.Module | None:
    return {"avgpooling": lambda: nn.AvgPool2d(2, 2), "maxpooling": lambda: nn.MaxPool2d(2, 2),
            "none": lambda: None}[kind]()


class ConvNet(Classifier):
    """The DC/RTP ConvNet: depth x [conv3x3 -> norm -> act -> pool], then a linear head (paper B.1)."""

    def __init__(self, channels: int, num_classes: int, width: int = 128, depth: int = 3, act: str = "relu",
                 norm: str = "instancenorm", pool: str = "avgpooling", im_size: tuple[int, int] = (32, 32)):
        super().__init__()
        layers: list[nn.Module] = []
        c, (h, w) = channels, im_size
        for d in range(depth):
            pad = 3 if (d == 0 and channels == 1 and h == 28) else 1
            layers.append(nn.Conv2d(c, width, 3, padding=pad))
            h, w = h + 2 * pad - 2, w + 2 * pad - 2
            c = width
            layers.append(make_norm(norm, c, (h, w)))
            layers.append(make_act(act))
            pooling = make_pool(pool)
            if pooling is not None and h >= 2 and w >= 2:
                layers.append(pooling)
                h, w = h // 2, w // 2
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(c * h * w, num_classes)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x).flatten(1)


class MLP(Classifier):
    """A fully connected network on flattened images."""

    def __init__(self, in_features: int, num_classes: int, hidden: int = 128, depth: int = 2, act: str = "relu"):
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        d = in_features
        for _ in range(depth):
            layers += [nn.Linear(d, hidden), make_act(act)]
            d = hidden
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(d, num_classes)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class AlexNet(Classifier):
    """The RTP AlexNet (paper B.2): five convs with instance norm and average pooling; pools stop at 1x1."""

    def __init__(self, channels: int, num_classes: int, norm: str = "instancenorm",
                 im_size: tuple[int, int] = (32, 32)):
        super().__init__()
        cfg = [(128, 5, 2, True), (192, 5, 2, True), (256, 3, 1, False), (192, 3, 1, False), (192, 3, 1, True)]
        layers: list[nn.Module] = []
        c, (h, w) = channels, im_size
        for out, k, pad, pool in cfg:
            layers += [nn.Conv2d(c, out, k, padding=pad), make_norm(norm, out, (h, w)), nn.ReLU()]
            c = out
            if pool and h >= 2 and w >= 2:
                layers.append(nn.AvgPool2d(2, 2))
                h, w = h // 2, w // 2
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(c * h * w, num_classes)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x).flatten(1)


class VGG11(Classifier):
    """VGG-11 as in the DC/MTT repos (paper B.4): instance norm by default; max-pools stop at 1x1."""

    CFG = (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M")

    def __init__(self, channels: int, num_classes: int, norm: str = "instancenorm",
                 im_size: tuple[int, int] = (32, 32)):
        super().__init__()
        layers: list[nn.Module] = []
        c, (h, w) = channels, im_size
        for v in self.CFG:
            if v == "M":
                if h >= 2 and w >= 2:
                    layers.append(nn.MaxPool2d(2, 2))
                    h, w = h // 2, w // 2
                continue
            layers += [nn.Conv2d(c, int(v), 3, padding=1), make_norm(norm, int(v), (h, w)), nn.ReLU()]
            c = int(v)
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(c * h * w, num_classes)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x).flatten(1)


class ResNet18(Classifier):
    """torchvision ResNet-18 with the CIFAR stem (3x3 stride-1 conv, no max-pool), as used in paper A.1."""

    def __init__(self, channels: int, num_classes: int, norm: str = "batchnorm"):
        super().__init__()
        from torchvision.models import resnet18

        norm_layer = {
            "batchnorm": nn.BatchNorm2d,
            "instancenorm": lambda c: nn.GroupNorm(c, c),
            "groupnorm": lambda c: nn.GroupNorm(4, c),
        }[norm]
        net = resnet18(num_classes=num_classes, norm_layer=norm_layer)
        net.conv1 = nn.Conv2d(channels, 64, 3, stride=1, padding=1, bias=False)
        net.maxpool = nn.Identity()
        self.head = net.fc
        net.fc = nn.Identity()
        self.body = net

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)
