"""The curvature benchmarks' shared subject: a ConvNet (width 8, depth 2, instance norm; 1026 parameters) trained
for a given number of steps of the paper's real-data recipe (batch 256, SGD 0.01, momentum 0.9) on the 1437 digits
training images, in eval mode, with those images and labels."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def digits_convnet(steps: int, width: int = 8, seed: int = 0):
    """``(model, images, labels)``: the benchmark ConvNet after ``steps`` real-data steps, seeded by ``seed``."""
    import torch

    from ddprobe import registry
    from ddprobe.builtin.probe_hessian import PAPER_RECIPE
    from ddprobe.training import train

    ds = registry.get_dataset("digits")
    real = ds.load(ds.Options(), REPO)
    mp = registry.get_model("convnet")
    torch.manual_seed(seed)
    net = mp.build(mp.Options(width=width, depth=2), real.input_shape, real.num_classes)
    train(net, real.train, PAPER_RECIPE.model_copy(update={"steps": steps}),
          generator=torch.Generator().manual_seed(seed))
    return net.eval(), real.train.images, real.train.labels
