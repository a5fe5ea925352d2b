"""ddprobe-coreset's own tests: the selection rules, and ddprobe's conformance suite for both distillers."""

from __future__ import annotations

import pytest
import torch
from ddprobe_coreset import Herding, KCenter
from ddprobe_coreset.selection import herding, kcenter

from ddprobe.testing import check_distiller


def test_herding_first_pick_is_closest_to_mean():
    feats = torch.tensor([[0.0, 0.0], [1.0, 1.0], [10.0, 10.0], [0.4, 0.6]])
    mean = feats.mean(0)
    picked = herding(feats, 3)
    assert int(picked[0]) == int(((feats - mean) ** 2).sum(1).argmin())
    assert len(set(picked.tolist())) == 3


def test_herding_running_mean_tracks_target():
    gen = torch.Generator().manual_seed(0)
    feats = torch.randn(200, 5, generator=gen)
    picked = herding(feats, 10)
    random = torch.randperm(200, generator=gen)[:10]
    error = lambda idx: float((feats[idx].mean(0) - feats.mean(0)).norm())  # noqa: E731
    assert error(picked) < error(random)


def test_kcenter_covers_outliers():
    feats = torch.cat([torch.zeros(10, 2), torch.tensor([[100.0, 0.0], [0.0, 100.0]])])
    picked = kcenter(feats, 3, start=0).tolist()
    assert picked[0] == 0 and set(picked[1:]) == {10, 11}


# -- start conformance --
@pytest.mark.parametrize("distiller", [Herding(), KCenter()], ids=lambda d: d.name)
@pytest.mark.parametrize("space", ["features", "pixels"])
def test_conformance(distiller, space, ddprobe_real, tmp_path):
    ds = check_distiller(distiller, real=ddprobe_real, ipc=2, options={"space": space, "epochs": 1},
                         directory=tmp_path)
    assert ds.manifest.distiller == distiller.name and len(ds.manifest.indices) == 20
# -- end conformance --


def test_selected_images_are_real_training_images(ddprobe_real, ddprobe_distill_context):
    opts = KCenter.Options(space="pixels")
    ds = KCenter().distill(ddprobe_real, 3, opts, ddprobe_distill_context())
    index = torch.tensor(ds.manifest.indices)
    assert torch.equal(ds.images, ddprobe_real.train.images[index])
    assert torch.equal(ds.labels, ddprobe_real.train.labels[index])


def test_feature_model_is_cached_and_shared(ddprobe_real, ddprobe_distill_context):
    ctx = ddprobe_distill_context()
    Herding().distill(ddprobe_real, 1, Herding.Options(epochs=1), ctx)
    KCenter().distill(ddprobe_real, 1, KCenter.Options(epochs=1), ctx)
    assert ctx.cache.misses["coreset-features"] == 1 and ctx.cache.hits["coreset-features"] == 1


def test_clear_errors(ddprobe_real, ddprobe_distill_context):
    with pytest.raises(ValueError, match="'nope' is not in \\[models\\]"):
        Herding().distill(ddprobe_real, 1, Herding.Options(model="nope"), ddprobe_distill_context())
    with pytest.raises(ValueError, match="fewer than ipc = 50"):
        Herding().distill(ddprobe_real, 50, Herding.Options(space="pixels"), ddprobe_distill_context())
