"""Models, datasets, training, augmentation, expectations and the cache, checked against independent numbers."""

from __future__ import annotations

import pytest
import torch

from ddprobe import registry
from ddprobe.cache import Cache
from ddprobe.expectations import Expectation
from ddprobe.rng import seeded_init, torch_generator
from ddprobe.training import RecipeOverride, TrainRecipe, eval_mode, train


def build(arch, shape=(3, 32, 32), classes=10, **opts):
    plugin = registry.get_model(arch)
    return plugin.build(plugin.Options(**opts), shape, classes)


def nparams(model):
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("arch, opts, expected", [
    # parameter counts published in paper-methods.md, section B
    ("convnet", {}, 320_010),
    ("convnet", {"width": 32}, 24_714),
    ("convnet", {"depth": 2}, 233_610),
    ("convnet", {"norm": "none"}, 319_242),
    ("convnet", {"norm": "layernorm"}, 663_306),
    ("alexnet", {}, 1_874_122),
    ("vgg11", {}, 9_231_114),
    ("resnet18", {}, 11_173_962),
])
def test_parameter_counts_match_the_reference_networks(arch, opts, expected):
    assert nparams(build(arch, **opts)) == expected


@pytest.mark.parametrize("arch", ["convnet", "mlp", "alexnet", "vgg11", "resnet18"])
@pytest.mark.parametrize("shape", [(1, 8, 8), (1, 28, 28), (3, 32, 32)])
def test_every_model_returns_logits_and_features(arch, shape):
    model = build(arch, shape=shape)
    x = torch.randn(4, *shape)
    model.eval()
    logits, feats = model(x), model.embed(x)
    assert logits.shape == (4, 10)
    assert feats.shape == (4, model.feature_dim)
    assert torch.allclose(model.head(feats), logits, atol=1e-5)


def test_default_convnet_feature_is_2048_on_cifar():
    assert build("convnet").feature_dim == 2048


def test_digits_split_and_normalization(digits):
    assert len(digits.train) == 1437 and len(digits.test) == 360
    from sklearn.datasets import load_digits

    totals = torch.bincount(torch.tensor(load_digits().target), minlength=10).tolist()
    for train_count, total in zip(digits.train.counts(), totals, strict=True):  # stratified 80/20
        assert abs(train_count - 0.8 * total) <= 1
    assert abs(float(digits.train.images.mean())) < 1e-4
    assert abs(float(digits.train.images.std()) - 1) < 1e-3
    pixels = digits.to_pixels(digits.test.images)
    assert float(pixels.min()) >= -1e-6 and float(pixels.max()) <= 1 + 1e-6
    assert torch.allclose(digits.from_pixels(pixels), digits.test.images, atol=1e-5)


def test_missing_torchvision_dataset_says_how_to_download(tmp_path):
    from ddprobe.errors import DDProbeError

    plugin = registry.get_dataset("cifar10")
    with pytest.raises(DDProbeError, match="Set `download = true` in the \\[data\\] table"):
        plugin.load(plugin.Options(root="nothing-here"), tmp_path)


def test_recipe_steps_from_epochs_and_batches():
    assert TrainRecipe(epochs=3, batch_size=256, steps=None).total_steps(1000) == 12
    assert TrainRecipe().total_steps(100) == 300 and TrainRecipe().batch(100) == 100
    with pytest.raises(ValueError, match="set steps or epochs"):
        TrainRecipe(steps=None)
    merged = RecipeOverride(epochs=2, lr="learned").apply(TrainRecipe())
    assert merged.steps is None and merged.epochs == 2 and merged.lr == "learned"
    with pytest.raises(ValueError, match="no learned learning rate"):
        merged.resolved_lr(None)


def _tiny(digits, seed="m"):
    with seeded_init(0, seed):
        return build("convnet", shape=(1, 8, 8), width=8, depth=1)


def test_training_callbacks_determinism_and_progress(digits):
    data = digits.train.subset(torch.arange(40))
    seen = []
    a = train(_tiny(digits), data, TrainRecipe(steps=25, batch_size=16), generator=torch_generator(0, "t"),
              callbacks=[lambda s: seen.append((s.step, s.loss))])
    assert [s for s, _ in seen] == list(range(26)) and seen[0][1] is None
    assert seen[-1][1] < seen[1][1]  # the loss went down
    b = train(_tiny(digits), data, TrainRecipe(steps=25, batch_size=16), generator=torch_generator(0, "t"))
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(pa, pb)
    assert not a.training
    assert all(p.grad is None for p in a.parameters())


def test_soft_labels_equal_hard_labels_when_one_hot(digits):
    data = digits.train.subset(torch.arange(30))
    soft = type(data)(data.images, torch.nn.functional.one_hot(data.labels, 10).float(), data.classes)
    a = train(_tiny(digits), data, TrainRecipe(steps=5), generator=torch_generator(0, "s"))
    b = train(_tiny(digits), soft, TrainRecipe(steps=5), generator=torch_generator(0, "s"))
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.allclose(pa, pb, atol=1e-6)


def test_eval_mode_restores_each_module():
    model = build("resnet18", shape=(3, 8, 8))
    model.train()
    model.head.eval()
    with eval_mode(model):
        assert not any(m.training for m in model.modules())
    assert model.training and not model.head.training


def test_flip_crop_is_seeded_and_keeps_shape():
    from ddprobe.augment import get_augmentation

    aug = get_augmentation("flip_crop")
    x = torch.randn(6, 3, 16, 16)
    a, b = aug(x, torch_generator(1, "a")), aug(x, torch_generator(1, "a"))
    assert a.shape == x.shape and torch.equal(a, b) and not torch.equal(a, x)
    with pytest.raises(KeyError, match="unknown augmentation 'flips'"):
        get_augmentation("flips")


@pytest.mark.parametrize("text, value, holds", [(">= 0.8", 0.8, True), ("> 0.8", 0.8, False), ("< 1e-3", 5e-4, True),
                                                ("== 2", 2.0, True), ("<= -1", 0.0, False)])
def test_expectations(text, value, holds):
    assert Expectation.parse("m", text).holds(value) is holds


def test_expectation_globs_check_every_match():
    checks = Expectation.parse("*/convnet", ">= 0.5").check({"a/convnet": 0.9, "b/convnet": 0.1, "a/mlp": 0.0})
    assert [(c.metric, c.passed) for c in checks] == [("a/convnet", True), ("b/convnet", False)]
    assert not Expectation.parse("x", ">= 0").holds(float("nan"))


def test_cache_get_or_compute(tmp_path):
    cache = Cache(tmp_path)
    calls = []

    def compute():
        calls.append(1)
        return {"t": torch.arange(3)}

    assert torch.equal(cache.tensors("k", {"a": 1}, compute)["t"], torch.arange(3))
    assert torch.equal(cache.tensors("k", {"a": 1}, compute)["t"], torch.arange(3))
    cache.tensors("k", {"a": 2}, compute)
    assert len(calls) == 2 and cache.stats()["k"] == {"hits": 1, "misses": 2}
    fresh = Cache(tmp_path, read=False)
    fresh.tensors("k", {"a": 1}, compute)
    assert len(calls) == 3
    assert not list(tmp_path.glob("k/.tmp-*"))  # no half-written entries left behind


def test_spec_reference_documents_every_key():
    from conftest import REPO

    from ddprobe.spec import ReportSection, StudySection

    text = (REPO / "docs" / "spec.md").read_text()
    for model in (StudySection, TrainRecipe, ReportSection):
        for name in model.model_fields:
            assert f"`{name}`" in text, f"docs/spec.md does not document {model.__name__}.{name}"


def test_imagefolder_reads_a_users_images(tmp_path):
    from PIL import Image

    for split, n in (("train", 3), ("test", 2)):
        for cls, colour in (("cat", (255, 0, 0)), ("dog", (0, 0, 255))):
            folder = tmp_path / "imgs" / split / cls
            folder.mkdir(parents=True)
            for i in range(n):
                Image.new("RGB", (20, 20), colour).save(folder / f"{i}.png")
    plugin = registry.get_dataset("imagefolder")
    real = plugin.load(plugin.Options(root="imgs", image_size=8), tmp_path)
    assert real.classes == ["cat", "dog"] and real.input_shape == (3, 8, 8)
    assert len(real.train) == 6 and len(real.test) == 4
    pixels = real.to_pixels(real.test.images)
    cat = pixels[real.test.labels == 0]
    assert torch.allclose(cat[:, 0], torch.ones_like(cat[:, 0]), atol=1e-5)  # red channel of the red class


def test_cache_keys_change_with_the_code(tmp_path):
    from ddprobe.fingerprint import code_fingerprint, core_fingerprint

    assert Cache(tmp_path).key("k", {"a": 1}) == Cache(tmp_path).key("k", {"a": 1})
    assert Cache(tmp_path, salt="other code").key("k", {"a": 1}) != Cache(tmp_path).key("k", {"a": 1})
    assert Cache(tmp_path).salt == core_fingerprint()
    # a plugin's fingerprint covers its own package, not ddprobe's
    assert code_fingerprint(registry.get_probe("pixels")) == core_fingerprint()
    from pydantic import BaseModel

    assert code_fingerprint(BaseModel) not in (core_fingerprint(), "unknown")


def _square_and_pid(x: int) -> tuple[int, int]:
    import os

    return x * x, os.getpid()


def test_ctx_map_runs_in_worker_processes_with_identical_results(make_ctx):
    import os

    ctx = make_ctx()
    local = ctx.map(_square_and_pid, range(5))
    assert [v for v, _ in local] == [0, 1, 4, 9, 16] and {p for _, p in local} == {os.getpid()}
    ctx.workers = 2
    pooled = ctx.map(_square_and_pid, range(5))
    assert [v for v, _ in pooled] == [0, 1, 4, 9, 16] and os.getpid() not in {p for _, p in pooled}


def test_metric_matrices_pivot_the_last_key_part():
    from ddprobe.report.tables import metric_matrices

    metrics = {"dm/mlp/k0": 0.8, "dm/mlp/k2": 0.7, "rnd/mlp/k0": 0.6, "rnd/mlp/k2": 0.75,
               "dm/convnet": 0.9, "rnd/convnet": 0.5, "products": 12.0}
    matrices, rest = metric_matrices(metrics)
    assert [(m.rows, m.cols) for m in matrices] == [(["dm/mlp", "rnd/mlp"], ["k0", "k2"]), (["dm", "rnd"], ["convnet"])]
    assert matrices[0].cells[("rnd/mlp", "k2")] == 0.75
    assert rest == {"products": 12.0}


def test_recipe_for_a_set_without_learned_lr():
    learned = TrainRecipe(lr="learned")
    assert learned.for_set(0.03) is learned and learned.for_set(0.03).resolved_lr(0.03) == 0.03
    assert learned.for_set(None).lr == 0.01 and learned.for_set(None, fallback=0.2).lr == 0.2
    plain = TrainRecipe(lr=0.05)
    assert plain.for_set(None) is plain
