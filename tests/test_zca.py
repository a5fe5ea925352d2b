"""ZCA whitening: fit/whiten/unwhiten, the dataset option, and refusal to mix ZCA and non-ZCA input spaces."""

from __future__ import annotations

import pytest
import torch

from ddprobe.zca import ZCA

REPO = __import__("pathlib").Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def digits_zca():
    from ddprobe import registry

    plugin = registry.get_dataset("digits")
    return plugin.load(plugin.Options(zca=True), REPO)


def test_round_trip():
    x = torch.randn(200, 2, 3, 3, generator=torch.Generator().manual_seed(0)) * 3 + 1
    zca = ZCA.fit(x)
    torch.testing.assert_close(zca.unwhiten(zca.whiten(x)), x, atol=1e-4, rtol=1e-4)


def test_whitening_decorrelates():
    g = torch.Generator().manual_seed(1)
    mix = torch.randn(8, 8, generator=g)
    x = (torch.randn(4000, 8, generator=g) @ mix).view(4000, 2, 2, 2)
    w = ZCA.fit(x, eps=1e-6).whiten(x).reshape(4000, -1).double()
    cov = torch.cov(w.T)
    torch.testing.assert_close(cov, torch.eye(8, dtype=torch.float64), atol=2e-3, rtol=0)
    # ZCA (unlike PCA whitening) is symmetric: the whitened image stays close to the original one
    assert ZCA.fit(x, eps=1e-6).transform.allclose(ZCA.fit(x, eps=1e-6).transform.T, atol=1e-4)


def test_dataset_option_records_the_space(digits, digits_zca):
    assert digits_zca.space.zca and digits_zca.space.zca_id
    assert not digits.space.zca
    # pixels come back the same through either input space
    torch.testing.assert_close(digits_zca.to_pixels(digits_zca.train.images[:50]),
                               digits.to_pixels(digits.train.images[:50]), atol=1e-3, rtol=0)
    px = digits.to_pixels(digits.test.images[:10])
    torch.testing.assert_close(digits_zca.from_pixels(px), digits_zca.test.images[:10], atol=1e-3, rtol=0)
    torch.testing.assert_close(digits_zca.to_pixels(digits_zca.from_pixels(px)), px, atol=1e-3, rtol=0)


def _set(real, space):
    from ddprobe.data import DistilledSet, Manifest

    idx = torch.arange(10)
    return DistilledSet(real.train.images[idx].clone(), real.train.labels[idx].clone(), real.classes,
                        manifest=Manifest(name="s", input_space=space))


def test_mixing_zca_and_plain_is_refused(digits, digits_zca):
    from ddprobe.data import check_compatible
    from ddprobe.errors import DataMismatchError

    check_compatible(_set(digits_zca, digits_zca.space), digits_zca)
    check_compatible(_set(digits, digits.space), digits)
    with pytest.raises(DataMismatchError, match="ZCA whitening on vs off"):
        check_compatible(_set(digits_zca, digits_zca.space), digits)
    with pytest.raises(DataMismatchError, match="ZCA whitening off vs on"):
        check_compatible(_set(digits, digits.space), digits_zca)
    other = digits_zca.space.model_copy(update={"zca_id": "0123456789abcdef"})
    with pytest.raises(DataMismatchError, match="ZCA transform"):
        check_compatible(_set(digits_zca, other), digits_zca)


def test_distiller_on_zca_data_stays_in_zca_space(digits_zca, tmp_path):
    from ddprobe import registry
    from ddprobe.cache import Cache
    from ddprobe.context import DistillContext
    from ddprobe.training import TrainRecipe

    plugin = registry.get_distiller("dm")
    ctx = DistillContext(0, digits_zca, {}, TrainRecipe(), Cache(tmp_path), "cpu")
    opts = plugin.Options(iterations=2, batch_real=8, model={"arch": "convnet", "width": 8, "depth": 1})
    ds = plugin.distill(digits_zca, 1, opts, ctx)
    assert ds.images.shape == (10, 1, 8, 8)
    ds.manifest.input_space = digits_zca.space  # what the study fills in
    from ddprobe.data import check_compatible

    check_compatible(ds, digits_zca)
