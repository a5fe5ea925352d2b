"""DSA: Siamese (one draw, same transform on every batch), differentiable, registered as a recipe augmentation."""

from __future__ import annotations

import pytest
import torch

from ddprobe import dsa


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("op", dsa.OPS)
def test_siamese_same_transform_on_both_batches(op):
    x = torch.randn(1, 3, 8, 8)
    real = torch.cat([x] * 5)  # a "real" batch of 5 copies, a "synthetic" batch of 1
    a, b = dsa.siamese(gen(3), real, x, strategy=op)
    assert a.shape == real.shape and b.shape == x.shape
    for i in range(5):
        torch.testing.assert_close(a[i], b[0])


def test_same_seed_same_result_and_different_seed_differs():
    x = torch.randn(6, 3, 8, 8)
    y1 = dsa.apply(x, dsa.sample(gen(1), 6, (8, 8), single=False))
    y2 = dsa.apply(x, dsa.sample(gen(1), 6, (8, 8), single=False))
    y3 = dsa.apply(x, dsa.sample(gen(2), 6, (8, 8), single=False))
    torch.testing.assert_close(y1, y2)
    assert not torch.allclose(y1, y3)


def test_single_mode_picks_one_op_and_all_mode_applies_all():
    assert len(dsa.sample(gen(), 1, (8, 8)).ops) == 1
    assert dsa.sample(gen(), 1, (8, 8), single=False).ops == dsa.OPS
    with pytest.raises(ValueError, match="unknown DSA operation"):
        dsa.sample(gen(), 1, (8, 8), strategy="color_blur")


@pytest.mark.parametrize("op", dsa.OPS)
def test_differentiable_gradcheck(op):
    x = torch.randn(2, 2, 6, 6, dtype=torch.float64, requires_grad=True)
    params = dsa.sample(gen(5), 2, (6, 6), strategy=op)
    assert torch.autograd.gradcheck(lambda t: dsa.apply(t, params), (x,), eps=1e-6, atol=1e-5)


def test_operations_do_what_they_say():
    x = torch.arange(16.0).view(1, 1, 4, 4)
    flip = dsa.DSAParams(("flip",), {"flip": torch.tensor([True])})
    torch.testing.assert_close(dsa.apply(x, flip), x.flip(3))
    shift = dsa.DSAParams(("crop",), {"shift_x": torch.tensor([1]), "shift_y": torch.tensor([0])})
    out = dsa.apply(x, shift)
    torch.testing.assert_close(out[..., :3], x[..., 1:])
    assert (out[..., 3] == 0).all()
    cut = dsa.sample(gen(0), 1, (8, 8), strategy="cutout")
    zeros = int((dsa.apply(torch.ones(1, 1, 8, 8), cut) == 0).sum())
    assert 0 < zeros <= 16  # a 4x4 square (half the size), possibly clipped at the border
    ident = dsa.DSAParams(("scale",), {"scale_x": torch.tensor([1.0]), "scale_y": torch.tensor([1.0])})
    torch.testing.assert_close(dsa.apply(x, ident), x, atol=1e-5, rtol=0)


def test_mismatched_batch_refused():
    params = dsa.sample(gen(), 3, (8, 8))
    with pytest.raises(ValueError, match="drawn for 3 images"):
        dsa.apply(torch.randn(4, 1, 8, 8), params)


def test_registered_as_recipe_augmentation(digits):
    from ddprobe.augment import get_augmentation, names
    from ddprobe.nets import ConvNet
    from ddprobe.training import TrainRecipe, train

    assert "dsa" in names()
    aug = get_augmentation("dsa")
    x = digits.train.images[:20]
    out = aug(x, gen(0))
    assert out.shape == x.shape
    torch.testing.assert_close(aug(x, gen(0)), out)
    net = ConvNet(1, 10, width=8, depth=1, im_size=(8, 8))
    train(net, digits.train.subset(range(40)), TrainRecipe(steps=3, augment="dsa"), generator=gen(0))
