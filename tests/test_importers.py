"""Importers: each reference format written by the test itself, then read back; bad sets are refused."""

from __future__ import annotations

import os
import pickle
import threading
import zipfile
from types import SimpleNamespace

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


def dc_result(images, labels, other):
    """What DatasetCondensation's main.py / main_DM.py pass to torch.save: one [images, labels] per experiment
    and ``accs_all_exps``, a dict of model name -> list of numpy.float64 accuracies (np.mean of correct counts)."""
    image_syn = images.clone().requires_grad_(True)
    label_syn = labels.clone()
    data_save = [[image_syn.detach().cpu().clone(), label_syn.detach().cpu().clone()],
                 [other.clone(), label_syn.clone()]]
    accs = [np.sum(np.equal(np.arange(4) % 2, 0)) / 4.0, np.float64(0.871)]  # numpy.float64, as epoch() returns
    return {"data": data_save, "accs_all_exps": {"ConvNet": accs}}


def test_dc_res_file_with_numpy_accuracies(tmp_path):
    images, labels = sample()
    other, _ = sample(seed=1)
    path = tmp_path / "res_DM_CIFAR10_ConvNet_2ipc.pt"
    torch.save(dc_result(images, labels, other), path)
    ds = import_file(path)
    assert_same(ds, images, labels)
    assert ds.manifest.importer == "dc" and ds.manifest.distiller == "dm"
    assert ds.manifest.experiments == 2


def test_dc_res_file_with_numpy_arrays_and_scalars_anywhere(tmp_path):
    images, labels = sample()
    obj = dc_result(images, labels, images)
    obj["accs_all_exps"]["ConvNet_BN"] = np.array([0.5, 0.6], dtype=np.float64)
    obj["args"] = {"ipc": np.int64(2), "lr": np.float32(0.1), "flags": np.array([True, False]),
                   "grid": np.zeros((2, 3), dtype=np.int32), "half": np.float16(1.5), "c": np.complex128(1j)}
    path = tmp_path / "res_DSA_MNIST_ConvNet_2ipc.pt"
    torch.save(obj, path)
    before = set(torch.serialization.get_safe_globals())
    ds = import_file(path)
    assert_same(ds, images, labels)
    assert ds.manifest.distiller == "dsa"
    assert set(torch.serialization.get_safe_globals()) == before  # the NumPy allowance lasts one load


class _Numpy1Pickler(pickle._Pickler):
    """Writes NumPy's functions under numpy.core.* as NumPy 1 did (files made before NumPy 2)."""

    def save_global(self, obj, name=None):
        module = getattr(obj, "__module__", "")
        if module.startswith("numpy._core"):
            self.write(pickle.GLOBAL + module.replace("numpy._core", "numpy.core").encode() + b"\n"
                       + obj.__name__.encode() + b"\n")
            self.memoize(obj)
            return
        super().save_global(obj, name)


def test_dc_res_file_written_under_numpy1(tmp_path):
    images, labels = sample()
    path = tmp_path / "res_DC_CIFAR10_ConvNet_2ipc.pt"
    numpy1 = SimpleNamespace(__name__="numpy1", Pickler=_Numpy1Pickler)
    torch.save(dc_result(images, labels, images), path, pickle_module=numpy1)
    raw = zipfile.ZipFile(path).read(next(n for n in zipfile.ZipFile(path).namelist() if n.endswith("data.pkl")))
    assert b"numpy.core.multiarray" in raw and b"numpy._core" not in raw
    ds = import_file(path)
    assert_same(ds, images, labels)


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_pickle_payload_in_a_dc_file_is_refused_and_never_run(tmp_path):
    images, labels = sample()
    obj = dc_result(images, labels, images)
    marker = tmp_path / "pwned"
    obj["accs_all_exps"]["ConvNet"].append(_Payload(marker))
    path = tmp_path / "res_DM_CIFAR10_ConvNet_2ipc.pt"
    torch.save(obj, path)
    with pytest.raises(DDProbeError, match=r"weights_only.*posix\.system|weights_only.*os\.system") as info:
        import_file(path)
    assert "never runs code" in str(info.value)
    assert not marker.exists()


def test_numpy_object_arrays_are_refused(tmp_path):
    images, labels = sample()
    obj = dc_result(images, labels, images)
    obj["names"] = np.array(["a", 1], dtype=object)
    path = tmp_path / "res_DM_x.pt"
    torch.save(obj, path)
    with pytest.raises(DDProbeError, match="ObjectDType"):
        import_file(path)


def write_mtt_run(folder, iterations, best, images_at, zca=None):
    """What mtt-distillation's distill.py writes: images_<it>.pt / labels_<it>.pt at saved iterations, the
    best ones again as images_best.pt / labels_best.pt, and with --zca images_zca_<it>.pt (inverse ZCA)."""
    folder.mkdir(parents=True, exist_ok=True)
    ipc, num_classes = 2, 10
    label_syn = torch.tensor(np.array([np.ones(ipc, dtype=np.int_) * i for i in range(num_classes)]),
                             dtype=torch.long).view(-1)
    for it in iterations:
        image_save = images_at(it)
        torch.save(image_save.cpu(), folder / f"images_{it}.pt")
        torch.save(label_syn.cpu(), folder / f"labels_{it}.pt")
        if it == best:
            torch.save(image_save.cpu(), folder / "images_best.pt")
            torch.save(label_syn.cpu(), folder / "labels_best.pt")
        if zca is not None:
            torch.save(zca.unwhiten(image_save).cpu(), folder / f"images_zca_{it}.pt")
    return label_syn


def _images_at(it):
    return sample(seed=it)[0]


def test_mtt_run_by_folder_file_or_labels(tmp_path):
    run = tmp_path / "logged_files" / "CIFAR10" / "sunny-sky-1"
    labels = write_mtt_run(run, [0, 500, 1000], best=500, images_at=_images_at)
    for path, it in ((run, 500), (run / "images_best.pt", 500), (run / "labels_best.pt", 500),
                     (run / "images_1000.pt", 1000), (run / "labels_0.pt", 0)):
        ds = import_file(path)
        assert_same(ds, _images_at(it), labels)
        assert ds.manifest.importer == "mtt" and ds.manifest.learned_lr is None
        assert ds.manifest.file_space is None  # no --zca files: the space is not known from the files
    (run / "images_best.pt").unlink()
    (run / "labels_best.pt").unlink()
    assert_same(import_file(run), _images_at(1000), labels)  # the highest iteration, compared as a number


def test_mtt_learned_lr_file_when_present(tmp_path):
    labels = write_mtt_run(tmp_path, [0], best=0, images_at=_images_at)
    torch.save(torch.tensor(0.0321), tmp_path / "syn_lr.pt")
    for path in (tmp_path / "images_best.pt", tmp_path):
        ds = import_file(path)
        assert_same(ds, _images_at(0), labels)
        assert ds.manifest.learned_lr == pytest.approx(0.0321)
        assert ds.manifest.learned_lr_source == "syn_lr.pt"


def test_mtt_missing_labels_is_named(tmp_path):
    write_mtt_run(tmp_path, [0, 100], best=100, images_at=_images_at)
    (tmp_path / "labels_100.pt").unlink()
    with pytest.raises(DDProbeError, match="labels_100.pt"):
        import_file(tmp_path / "images_100.pt")


@pytest.fixture(scope="module")
def mtt_zca(digits):
    """A ZCA fitted on [0, 1] pixels, as MTT fits kornia's ZCAWhitening (eps 0.1) with --zca."""
    from ddprobe.zca import ZCA

    return ZCA.fit(digits.to_pixels(digits.train.images))


def test_mtt_zca_run_reads_the_pixel_reconstruction(tmp_path, mtt_zca):
    labels = write_mtt_run(tmp_path, [0, 1000, 2000], best=1000, images_at=_images_at, zca=mtt_zca)
    for path, it in ((tmp_path, 1000), (tmp_path / "images_best.pt", 1000), (tmp_path / "labels_2000.pt", 2000),
                     (tmp_path / "images_zca_0.pt", 0), (tmp_path / "images_0.pt", 0)):
        ds = import_file(path)
        assert torch.allclose(ds.images, mtt_zca.unwhiten(_images_at(it)))
        assert torch.equal(ds.labels, labels)
        assert ds.manifest.file_space == "pixels" and ds.manifest.distilled_space == "zca"
        assert ds.manifest.source_file.endswith(f"images_zca_{it}.pt")


def test_mtt_zca_run_without_reconstruction_is_zca_space(tmp_path, mtt_zca):
    write_mtt_run(tmp_path, [0, 1000], best=1000, images_at=_images_at, zca=mtt_zca)
    (tmp_path / "images_zca_1000.pt").unlink()  # e.g. ipc >= 50 without --force_save for that iteration
    ds = import_file(tmp_path / "images_best.pt")
    assert_same(ds, _images_at(1000), ds.labels)
    assert ds.manifest.file_space == "zca" and ds.manifest.distilled_space == "zca"


def _blocks(fn, seconds=20.0):
    """Whether fn() is still running after ``seconds`` (the thread is left behind as a daemon)."""
    outcome = {}

    def target():
        try:
            fn()
        except Exception as exc:  # noqa: BLE001 - the test inspects it
            outcome["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    return thread.is_alive(), outcome.get("error")


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs named pipes")
@pytest.mark.parametrize("where", ["path", "inside a run folder"])
def test_fifo_is_refused_without_blocking(tmp_path, where):
    if where == "path":
        target = tmp_path / "res_DM_x.pt"
        os.mkfifo(target)
    else:
        write_mtt_run(tmp_path / "run", [0], best=0, images_at=_images_at)
        (tmp_path / "run" / "images_best.pt").unlink()
        os.mkfifo(tmp_path / "run" / "images_best.pt")
        target = tmp_path / "run" / "labels_best.pt"  # pairs with the FIFO images_best.pt
        blocked, error = _blocks(lambda: import_file(tmp_path / "run"))  # the folder skips it: iteration 0
        assert not blocked and error is None
    blocked, error = _blocks(lambda: import_file(target))
    assert not blocked
    assert isinstance(error, DDProbeError) and "named pipe (FIFO)" in str(error)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs named pipes")
def test_canonical_json_naming_a_fifo_is_refused(tmp_path):
    (tmp_path / "set.json").write_text("{}")
    os.mkfifo(tmp_path / "set.safetensors")
    blocked, error = _blocks(lambda: import_file(tmp_path / "set.json"))
    assert not blocked
    assert isinstance(error, DDProbeError) and "named pipe (FIFO)" in str(error)


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
