"""Input spaces of imported sets: sets converted between spaces are refused, warned about, or accepted when
declared; MTT ZCA runs, class folders and a learned lr from the spec, through a study's import path."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ddprobe.errors import DataMismatchError
from ddprobe.spaces import guess_space

SPEC = """
[study]
name = "spaces"
control = false
[data]
dataset = "digits"
{data}
[distilled.s]
path = "{path}"
{extra}
"""


@pytest.fixture(scope="module")
def digits_zca():
    from ddprobe import registry

    plugin = registry.get_dataset("digits")
    return plugin.load(plugin.Options(zca=True), None)


def real_subset(real, per_class=2):
    idx = torch.cat([torch.nonzero(real.train.labels == c).flatten()[:per_class] for c in range(10)])
    return real.train.images[idx].clone(), real.train.labels[idx].clone()


def spread(x, k):
    """Distilled sets are often wider than real data: scale around the per-channel mean."""
    m = x.mean(dim=(0, 2, 3), keepdim=True)
    return (x - m) * k + m


def test_own_space_is_accepted(digits, digits_zca):
    for real in (digits, digits_zca):
        for k in (1, 2, 4.5):
            x, _ = real_subset(real)
            assert guess_space(spread(x, k), real).verdict == "ok"


def test_pixels_in_a_normalized_study(digits):
    x, _ = real_subset(digits)
    clear = guess_space(digits.to_pixels(x), digits)
    assert (clear.verdict, clear.looks_like) == ("refuse", "pixels")
    wider = guess_space(digits.to_pixels(spread(x, 1.6)), digits)
    assert (wider.verdict, wider.looks_like) == ("warn", "pixels")
    # A set spread 4.5 times wider than the real data (ddprobe's MTT on digits) is as plausible in either space:
    # the rule stays quiet rather than refuse a set that may be right.
    assert guess_space(digits.to_pixels(spread(x, 4.5)), digits).verdict == "ok"
    # Declared as pixels, the same images are what they should be.
    assert guess_space(digits.to_pixels(x), digits, assumed="pixels").verdict == "ok"


def test_zca_and_normalized_told_apart(digits, digits_zca):
    x, _ = real_subset(digits)
    whitened = guess_space(digits_zca.meta["whiten"](x), digits)
    assert (whitened.verdict, whitened.looks_like) == ("refuse", "zca")
    z, _ = real_subset(digits_zca)
    assert guess_space(digits_zca.to_pixels(z), digits_zca).verdict == "refuse"
    assert guess_space(digits_zca.meta["unwhiten"](z), digits_zca).verdict in ("warn", "refuse")


# -- through a study's import path -----------------------------------------------------------------------------

def prepare_with(tmp_path, path, extra="", data=""):
    from ddprobe.spec import load_spec
    from ddprobe.study import prepare

    spec_file = tmp_path / "s.toml"
    spec_file.write_text(SPEC.format(path=str(path), extra=extra, data=data))
    study = prepare(load_spec(spec_file), tmp_path / "out")
    return study.distilled["s"], study.context.distilled.get("s")


def test_study_refuses_undeclared_pixels_and_accepts_them_declared(tmp_path, digits):
    x, y = real_subset(digits)
    path = tmp_path / "pixels.pt"
    torch.save({"images": digits.to_pixels(x), "labels": y}, path)
    record, _ = prepare_with(tmp_path, path)
    assert record.status == "error"
    assert "looks like pixels-space images" in record.error
    assert 'input_space = "pixels" in [distilled.s]' in record.error
    record, ds = prepare_with(tmp_path, path, 'input_space = "pixels"')
    assert record.status == "ok"
    assert torch.allclose(ds.images, x, atol=1e-5)
    assert ds.manifest.space_check["verdict"] == "ok"


def test_study_warns_on_a_borderline_set(tmp_path, digits):
    x, y = real_subset(digits)
    path = tmp_path / "wide.pt"
    torch.save({"images": digits.to_pixels(spread(x, 1.6)), "labels": y}, path)
    record, ds = prepare_with(tmp_path, path)
    assert record.status == "ok"
    assert any("looks like pixels-space images" in w for w in ds.manifest.warnings)
    # Declaring what it holds silences it and maps it into the study's space.
    record, ds = prepare_with(tmp_path, path, 'input_space = "pixels"')
    assert record.status == "ok" and ds.manifest.warnings == []
    assert torch.allclose(ds.images, spread(x, 1.6), atol=1e-5)


def test_normalized_set_declared_in_a_zca_study_is_whitened(tmp_path, digits, digits_zca):
    x, y = real_subset(digits)
    path = tmp_path / "norm.pt"
    torch.save({"images": x, "labels": y}, path)
    record, ds = prepare_with(tmp_path, path, 'input_space = "normalized"', data="zca = true")
    assert record.status == "ok"
    assert torch.allclose(ds.images, digits_zca.meta["whiten"](x), atol=1e-5)


def test_learned_lr_from_the_spec(tmp_path, digits):
    x, y = real_subset(digits)
    path = tmp_path / "set.pt"
    torch.save({"images": x, "labels": y}, path)
    record, ds = prepare_with(tmp_path, path, "learned_lr = 0.0123")
    assert record.status == "ok"
    assert ds.manifest.learned_lr == pytest.approx(0.0123)
    assert ds.manifest.learned_lr_source == "spec (learned_lr)"


def _mtt_zca_run(folder, digits):
    """An MTT --zca run on digits: ZCA fitted on [0, 1] pixels, images_<it>.pt whitened, images_zca_<it>.pt
    their inverse (pixels), labels class-major."""
    from ddprobe.zca import ZCA

    folder.mkdir()
    x, y = real_subset(digits)
    pixels = digits.to_pixels(x)
    zca = ZCA.fit(digits.to_pixels(digits.train.images))
    torch.save(zca.whiten(pixels), folder / "images_100.pt")
    torch.save(y, folder / "labels_100.pt")
    torch.save(zca.whiten(pixels), folder / "images_best.pt")
    torch.save(y, folder / "labels_best.pt")
    torch.save(zca.unwhiten(zca.whiten(pixels)), folder / "images_zca_100.pt")
    return pixels


def test_mtt_zca_run_needs_a_zca_study_or_a_declaration(tmp_path, digits, digits_zca):
    run = tmp_path / "run"
    pixels = _mtt_zca_run(run, digits)
    record, _ = prepare_with(tmp_path, run)
    assert record.status == "error"
    assert "distilled in zca space" in record.error and "zca = true" in record.error
    assert 'input_space = "pixels"' in record.error
    record, ds = prepare_with(tmp_path, run, 'input_space = "pixels"')
    assert record.status == "ok" and torch.allclose(ds.images, digits.from_pixels(pixels), atol=1e-4)
    record, ds = prepare_with(tmp_path, run, data="zca = true")
    assert record.status == "ok" and torch.allclose(ds.images, digits_zca.from_pixels(pixels), atol=1e-4)
    # images_<it>.pt declared as pixels contradicts what the run folder says it is
    (run / "images_zca_100.pt").rename(run / "images_zca_7.pt")
    record, _ = prepare_with(tmp_path, run / "images_100.pt", 'input_space = "pixels"')
    assert record.status == "error" and "reads" in record.error and "zca-space images" in record.error


def test_class_folders_with_soft_labels(tmp_path, digits):
    from PIL import Image

    from ddprobe.builtin.importers import import_file

    x, y = real_subset(digits)
    pixels = digits.to_pixels(x).clamp(0, 1)
    root = tmp_path / "rded"
    order = []
    for i, (img, label) in enumerate(zip(pixels, y, strict=True)):
        folder = root / str(int(label))
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray((img[0].numpy() * 255).round().astype(np.uint8), mode="L").save(folder / f"{i:03d}.png")
        order.append(i)
    ds = import_file(root)
    assert ds.manifest.importer == "class-folders" and ds.manifest.file_space == "pixels"
    assert torch.allclose(ds.images, pixels, atol=0.5 / 255 + 1e-6)
    assert torch.equal(ds.labels, y)
    soft = torch.softmax(torch.randn(len(y), 10, generator=torch.Generator().manual_seed(0)), 1)
    torch.save(soft, root / "soft_labels.pt")
    ds = import_file(root)
    assert ds.soft and torch.equal(ds.labels, soft)
    record, imported = prepare_with(tmp_path, root)
    assert record.status == "ok"
    assert torch.allclose(imported.images, digits.from_pixels(ds.images), atol=1e-5)


def test_check_compatible_still_refuses_a_wrong_shape_first(tmp_path, digits):
    path = tmp_path / "big.pt"
    torch.save({"images": torch.rand(20, 3, 32, 32), "labels": torch.arange(10).repeat(2)}, path)
    record, _ = prepare_with(tmp_path, path)
    assert record.status == "error" and "image shape [3, 32, 32]" in record.error


@pytest.mark.slow
@pytest.mark.parametrize("zca", [False, True])
def test_builtin_distillers_outputs_are_accepted(tmp_path, zca):
    """Calibration: every built-in distiller's set on digits (specs/study.toml settings) is taken as what it is."""
    from pathlib import Path

    from ddprobe.spec import load_spec
    from ddprobe.study import prepare

    text = (Path(__file__).resolve().parents[1] / "specs" / "study.toml").read_text().split("[[probe]]")[0]
    text = text.replace('dataset = "digits"', f'dataset = "digits"\nzca = {str(zca).lower()}')
    spec_file = tmp_path / "s.toml"
    spec_file.write_text(text)
    study = prepare(load_spec(spec_file), tmp_path / "out")
    real = study.context.real
    assert study.context.distilled
    for name, ds in study.context.distilled.items():
        guess = guess_space(ds.images, real)
        assert guess.verdict == "ok", (name, guess)


def test_guess_is_refused_as_mismatch_error_type(tmp_path, digits):
    from ddprobe.spaces import adopt

    x, y = real_subset(digits)
    from ddprobe.data import DistilledSet, Manifest

    ds = DistilledSet(digits.to_pixels(x), y, digits.classes, manifest=Manifest(name="p"))
    with pytest.raises(DataMismatchError, match=r"declare input_space = \"pixels\" in \[distilled.p\]"):
        adopt(ds, digits, "p")


def test_ddprobe_set_from_a_normalized_study_in_a_zca_study(tmp_path, digits, digits_zca):
    from ddprobe.data import DistilledSet, Manifest, save_distilled

    x, y = real_subset(digits)
    save_distilled(DistilledSet(x, y, digits.classes, manifest=Manifest(name="n", input_space=digits.space)),
                   tmp_path / "n")
    record, _ = prepare_with(tmp_path, tmp_path / "n.safetensors", data="zca = true")
    assert record.status == "error" and "distilled in normalized space" in record.error
    record, ds = prepare_with(tmp_path, tmp_path / "n.safetensors", 'input_space = "normalized"', data="zca = true")
    assert record.status == "ok" and ds.manifest.input_space == digits_zca.space
    assert torch.allclose(ds.images, digits_zca.meta["whiten"](x), atol=1e-5)


@pytest.mark.parametrize("line,message", [
    ("learned_lr = -0.1", "learned_lr: must be a positive number"),
    ('learned_lr = "fast"', "learned_lr: must be a positive number"),
    ('input_space = "rgb"', "input_space: must be one of 'study', 'pixels', 'normalized', 'zca'"),
])
def test_spec_keys_of_imported_sets(tmp_path, line, message):
    from ddprobe.errors import SpecError
    from ddprobe.spec import load_spec

    spec_file = tmp_path / "s.toml"
    spec_file.write_text(SPEC.format(path="x.pt", extra=line, data=""))
    with pytest.raises(SpecError, match=message):
        load_spec(spec_file)


def test_a_whitened_set_in_a_normalized_study_points_to_zca(digits, digits_zca):
    from ddprobe.data import DistilledSet, Manifest
    from ddprobe.spaces import adopt

    x, y = real_subset(digits)
    ds = DistilledSet(digits_zca.meta["whiten"](x), y, digits.classes, manifest=Manifest(name="w"))
    with pytest.raises(DataMismatchError, match=r"looks like zca-space images.*set zca = true in \[data\]"):
        adopt(ds, digits, "w")


def test_ddprobe_run_on_a_dc_file_with_numpy_accuracies(tmp_path, digits, monkeypatch):
    """The issue's case end to end: a res_DM file as main_DM.py saves it is run, not refused at exit 3."""
    from typer.testing import CliRunner

    from ddprobe.cli import app

    x, y = real_subset(digits)
    path = tmp_path / "res_DM_digits_ConvNet_2ipc.pt"
    torch.save({"data": [[x, y]], "accs_all_exps": {"ConvNet": [np.float64(0.86), np.float64(0.88)]}}, path)
    spec = tmp_path / "s.toml"
    spec.write_text(SPEC.format(path=path.name, extra="", data="") + '[[probe]]\nkind = "pixels"\n')
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["run", str(spec), "-o", str(tmp_path / "out"), "-q"])
    assert result.exit_code == 0, result.output
    report = (tmp_path / "out" / "report.json").read_text()
    assert '"s"' in report
