"""ddprobe.testing's conformance suite: every built-in present passes it, and it catches broken plugins."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pydantic import BaseModel, ConfigDict

from ddprobe import DistilledSet, Manifest, ProbeResult, registry
from ddprobe.data import save_distilled
from ddprobe.testing import (
    ConformanceError,
    check_distiller,
    check_importer,
    check_options,
    check_probe,
    check_reporter,
    tiny_distilled,
)

# Built-ins are discovered through the registry, so distillers and probes added later are checked too. An
# object's own ``conformance_options`` (a class attribute) wins; otherwise a cheap preset here; otherwise it runs
# only with ``-m slow``, with a small preset from SLOW when there is one (defaults may take hours).
CHEAP = {
    "probe": {"evaluate": {"seeds": 1}, "recognition": {}, "pixels": {}},
    "distiller": {"random": {}},
}
SLOW = {
    "distiller": {},
    "probe": {
        "influence": {"inits": 1, "k": 2, "backends": ["explicit"], "recipe": {"steps": 5}, "test_images": 20,
                      "gallery_classes": 1, "tracin_checkpoints": 2},
    },
}


def _params(kind: str) -> list:
    out = []
    for name, obj in sorted(registry.get_all(kind).items()):
        preset = getattr(obj, "conformance_options", None)
        if preset is None:
            preset = CHEAP[kind].get(name)
        marks = [] if preset is not None else [pytest.mark.slow]
        if preset is None:
            preset = SLOW[kind].get(name)
        out.append(pytest.param(name, preset, id=name, marks=marks))
    return out


@pytest.mark.parametrize(("name", "options"), _params("distiller"))
def test_builtin_distiller_conforms(name, options, ddprobe_real, tmp_path):
    check_distiller(registry.get_distiller(name), real=ddprobe_real, ipc=2, options=options, directory=tmp_path)


@pytest.mark.parametrize(("name", "options"), _params("probe"))
def test_builtin_probe_conforms(name, options, ddprobe_real, tmp_path):
    check_probe(registry.get_probe(name), real=ddprobe_real, options=options, directory=tmp_path)


@pytest.mark.parametrize("name", sorted(registry.get_all("reporter")))
def test_builtin_reporter_conforms(name, tmp_path):
    assert check_reporter(registry.get_reporter(name), tmp_path)


def _write_sample(importer: str, ds: DistilledSet, d) -> object:
    """A sample file in each built-in importer's format (None: no writer known here for that importer)."""
    images, labels = ds.images, ds.labels
    if importer == "ddprobe":
        return save_distilled(ds, d / "set")
    if importer == "mtt":
        torch.save(images, d / "images_best.pt")
        torch.save(labels, d / "labels_best.pt")
        return d / "images_best.pt"
    if importer == "dc":
        torch.save({"data": [[images, labels]], "accs_all_exps": {"ConvNet": [0.5]}}, d / "res_DM_digits.pt")
        return d / "res_DM_digits.pt"
    if importer == "dict-pt":
        torch.save({"data": images, "label": labels}, d / "dd.pt")
        return d / "dd.pt"
    if importer == "npz":
        np.savez(d / "set.npz", images=images.numpy(), labels=labels.numpy())
        return d / "set.npz"
    if importer == "rtp":
        torch.save({"imgs.weight": images.reshape(len(images), -1)}, d / "rtp.pt")
        return d / "rtp.pt"
    if importer == "class-folders":  # PNG files hold 8-bit pixels: write images that survive that exactly
        from PIL import Image

        for i, (img, label) in enumerate(zip(images, ds.hard_labels, strict=True)):
            (d / "set" / str(int(label))).mkdir(parents=True, exist_ok=True)
            Image.fromarray(img[0].numpy().astype(np.uint8), mode="L").save(d / "set" / str(int(label)) / f"{i}.png")
        return d / "set"
    return None


@pytest.mark.parametrize("name", sorted(registry.get_all("importer")))
def test_builtin_importer_conforms(name, ddprobe_real, tmp_path):
    ds = tiny_distilled(ddprobe_real, 2)
    if name == "class-folders":  # whole 8-bit values, saved as PNG and read back as value / 255
        ds.images = torch.randint(0, 256, ds.images[:, :1].shape, generator=torch.Generator().manual_seed(0)).float()
    path = _write_sample(name, ds, tmp_path)
    if name == "class-folders":
        ds.images = ds.images / 255
    if path is None:
        pytest.skip(f"no sample-file writer for importer {name!r} in this test")
    back = check_importer(registry.get_importer(name), path, real=ddprobe_real)
    assert torch.allclose(back.images, ds.images)


# -- the suite catches broken plugins ------------------------------------------------------------------------
class _Options(BaseModel):
    model_config = ConfigDict(extra="forbid")


class WrongShapes:
    name = "wrong-shapes"
    description = "returns one image per class whatever the ipc, flattened"
    Options = _Options

    def distill(self, real, ipc, options, ctx):
        idx = torch.stack([ix[0] for ix in real.train.class_indices()])
        return DistilledSet(real.train.images[idx].flatten(1), real.train.labels[idx], real.classes,
                            manifest=Manifest())


class GlobalRandom:
    name = "global-random"
    description = "draws from torch's global RNG, so two runs differ"
    Options = _Options

    def distill(self, real, ipc, options, ctx):
        picks = torch.cat([ix[torch.randperm(len(ix))[:ipc]] for ix in real.train.class_indices()])
        sub = real.train.subset(picks)
        return DistilledSet(sub.images.clone(), sub.labels.clone(), real.classes, manifest=Manifest())


class LeavesModelTraining:
    name = "leaves-training"
    description = "switches a real-trained model to train mode and leaves gradients in it"
    Options = _Options

    def run(self, ctx, options):
        net = ctx.pretrained(next(iter(ctx.models)))
        net.train()
        loss = torch.nn.functional.cross_entropy(net(ctx.real.test.images[:8]), ctx.real.test.labels[:8])
        loss.backward()
        return ProbeResult({"loss": float(loss.detach())})


class BadResult:
    name = "bad-result"
    description = "returns a tensor metric and a key with spaces"
    Options = _Options

    def run(self, ctx, options):
        return ProbeResult({"my metric": torch.tensor(1.0)}, summary="x")


class SloppyOptions:
    name = "sloppy"
    description = "options accept anything"

    class Options(BaseModel):
        steps: int = 3

    def run(self, ctx, options):
        return ProbeResult()


class CrashingReporter:
    name = "crash"
    description = "cannot handle NaN"

    def write(self, results, directory):
        for record in results.probes:
            for value in record.result.metrics.values():
                if value != value:
                    raise ValueError("NaN")


def test_catches_wrong_shapes(ddprobe_real, tmp_path):
    with pytest.raises(ConformanceError) as info:
        check_distiller(WrongShapes(), real=ddprobe_real, ipc=2, directory=tmp_path)
    text = str(info.value)
    assert "distiller 'wrong-shapes'" in text
    assert "images have shape [10, 64]; expected [N, 1, 8, 8]" in text
    assert "10 images; expected num_classes x ipc = 10 x 2" in text


def test_catches_global_rng_and_nondeterminism(ddprobe_real, tmp_path):
    with pytest.raises(ConformanceError) as info:
        check_distiller(GlobalRandom(), real=ddprobe_real, ipc=2, directory=tmp_path)
    assert "global RNG" in str(info.value)
    assert "different sets" in str(info.value)


def test_catches_mode_not_restored_and_gradients(ddprobe_real, tmp_path):
    with pytest.raises(ConformanceError) as info:
        check_probe(LeavesModelTraining(), real=ddprobe_real, directory=tmp_path)
    text = str(info.value)
    assert "left in a different train/eval mode" in text
    assert "changed gradients in .grad" in text


def test_catches_bad_result(ddprobe_real, tmp_path):
    with pytest.raises(ConformanceError) as info:
        check_probe(BadResult(), real=ddprobe_real, directory=tmp_path)
    assert "metric key 'my metric'" in str(info.value)
    assert "is a Tensor; metrics are plain floats" in str(info.value)


def test_catches_options_that_accept_anything():
    with pytest.raises(ConformanceError, match="accepts an unknown key"):
        check_options(SloppyOptions(), "probe")


def test_catches_crashing_reporter(tmp_path):
    with pytest.raises(ConformanceError, match="write\\(\\) raised ValueError"):
        check_reporter(CrashingReporter(), tmp_path)


def test_registered_plugin_through_fixture(ddprobe_register, ddprobe_real, tmp_path):
    """A plugin registered for one test is visible in the registry, then gone."""
    from ddprobe import hookimpl

    class Plugin:
        __name__ = "conformance-test-plugin"

        @hookimpl
        def register_probes(self, register):
            register(BadResult())

    ddprobe_register(Plugin())
    assert registry.owner_of("probe", "bad-result") == "conformance-test-plugin"
