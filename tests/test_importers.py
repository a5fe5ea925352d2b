"""Importers: each reference format written by the test itself, then read back; bad sets are refused."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ddprobe.builtin.importers import import_file
from ddprobe.data import DistilledSet, Manifest, check_compatible, load_distilled, save_distilled
from ddprobe.errors import DataMismatchError, DDProbeError


def sample(n_per_class=2, classes=10, shape=(1, 8, 8), seed=0):
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(n_per_class * classes, *shape, generator=g)
    labels = torch.arange(classes).repeat_interleave(n_per_class)
    return images, labels


def assert_same(ds, images, labels):
    assert torch.equal(ds.images, images.float())
    assert torch.equal(ds.labels, labels)


def test_canonical_round_trip(tmp_path, digits):
    images, labels = sample()
    ds = DistilledSet(images, labels, digits.classes,
                      manifest=Manifest(name="x", distiller="dm", learned_lr=0.02, input_space=digits.space))
    save_distilled(ds, tmp_path / "x")
    assert (tmp_path / "x.json").exists()
    back = import_file(tmp_path / "x.safetensors")
    assert_same(back, images, labels)
    assert back.manifest.importer == "ddprobe"
    assert back.manifest.learned_lr == 0.02 and back.manifest.distiller == "dm"
    assert back.manifest.sha256 == ds.manifest.sha256
    assert back.classes == digits.classes
    assert load_distilled(tmp_path / "x.json").manifest.input_space == digits.space


def test_dc_res_file(tmp_path):
    images, labels = sample()
    other, _ = sample(seed=1)
    path = tmp_path / "res_DM_CIFAR10_ConvNet_2ipc.pt"
    torch.save({"data": [[images, labels], [other, labels]], "accs_all_exps": {"ConvNet": [0.5]}}, path)
    ds = import_file(path)
    assert_same(ds, images, labels)
    assert ds.manifest.importer == "dc" and ds.manifest.distiller == "dm"
    assert ds.manifest.experiments == 2


def test_mtt_pair_with_learned_lr(tmp_path):
    images, labels = sample()
    torch.save(images, tmp_path / "images_best.pt")
    torch.save(labels, tmp_path / "labels_best.pt")
    torch.save(torch.tensor(0.0321), tmp_path / "syn_lr.pt")
    for path in (tmp_path / "images_best.pt", tmp_path):
        ds = import_file(path)
        assert_same(ds, images, labels)
        assert ds.manifest.importer == "mtt"
        assert ds.manifest.learned_lr == pytest.approx(0.0321)


@pytest.mark.parametrize("keys", [("data", "label"), ("images", "labels")])
def test_dict_pt(tmp_path, keys):
    images, labels = sample()
    path = tmp_path / "0.pt"
    torch.save({keys[0]: images, keys[1]: labels}, path)
    ds = import_file(path)
    assert_same(ds, images, labels)
    assert ds.manifest.importer == "dict-pt"


def test_npz(tmp_path):
    images, labels = sample()
    path = tmp_path / "set.npz"
    np.savez(path, images=images.numpy(), labels=labels.numpy(), lr=np.float32(0.05))
    ds = import_file(path)
    assert_same(ds, images, labels)
    assert ds.manifest.learned_lr == pytest.approx(0.05)


def test_rtp_state_dict(tmp_path):
    images, labels = sample(shape=(3, 32, 32))
    path = tmp_path / "compressor.pt"
    torch.save({"compressor": {"imgs.weight": images.reshape(20, -1)}}, path)
    ds = import_file(path)
    assert_same(ds, images, labels)
    assert ds.manifest.importer == "rtp"


def test_pickled_objects_are_never_executed(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    path = tmp_path / "evil.pt"
    torch.save({"data": Evil(), "label": 1}, path)
    with pytest.raises(DDProbeError, match="weights_only"):
        import_file(path)


def test_unknown_format_lists_known_ones(tmp_path):
    path = tmp_path / "set.txt"
    path.write_text("hello")
    with pytest.raises(DDProbeError, match="no importer recognizes") as info:
        import_file(path)
    assert "npz" in str(info.value) and "mtt" in str(info.value)


def _set(digits, images, labels, space=True):
    return DistilledSet(images, labels, digits.classes, manifest=Manifest(name="s",
                                                                          input_space=digits.space if space else None))


def test_refuses_wrong_shape(digits):
    images, labels = sample(shape=(3, 32, 32))
    with pytest.raises(DataMismatchError, match=r"image shape \[3, 32, 32\] but digits images are \[1, 8, 8\]"):
        check_compatible(_set(digits, images, labels, space=False), digits)


def test_refuses_label_out_of_range(digits):
    images, labels = sample()
    labels[0] = 12
    with pytest.raises(DataMismatchError, match=r"labels range over \[0, 12\].*classes 0..9"):
        check_compatible(_set(digits, images, labels), digits)


def test_refuses_nan_and_inf(digits):
    images, labels = sample()
    images[0, 0, 0, 0] = float("nan")
    images[1, 0, 0, 0] = float("inf")
    with pytest.raises(DataMismatchError, match="2 image values are NaN or Inf"):
        check_compatible(_set(digits, images, labels), digits)


def test_refuses_other_input_space(digits):
    images, labels = sample()
    space = digits.space.model_copy(update={"mean": [0.5], "zca": True})
    ds = DistilledSet(images, labels, digits.classes, manifest=Manifest(name="s", input_space=space))
    with pytest.raises(DataMismatchError) as info:
        check_compatible(ds, digits)
    assert "normalization mean" in str(info.value) and "ZCA whitening on vs off" in str(info.value)


def test_accepts_matching_set(digits):
    images, labels = sample()
    check_compatible(_set(digits, images, labels), digits)
