"""The matching distillers (dc, dm, mtt, bptt) on tiny digits problems."""

from __future__ import annotations

import contextlib
import subprocess
import sys

import pytest
import torch

from ddprobe import registry
from ddprobe.cache import Cache
from ddprobe.context import DistillContext
from ddprobe.training import TrainRecipe

REPO = __import__("pathlib").Path(__file__).resolve().parents[1]
TINY_NET = {"arch": "convnet", "width": 8, "depth": 1}

# settings small enough for seconds on one core
TINY = {
    "dc": dict(batch_real=16, outer_loop=2, inner_loop=1, lr_img=0.1),
    "dm": dict(batch_real=16, lr_img=1.0),
    "mtt": dict(num_experts=2, expert_train_epochs=3, expert_epochs=1, max_start_epoch=2, syn_steps=3,
                lr_img=100.0, lr_teacher=0.1, dsa=False),
    "bptt": dict(inner_steps=4, inner_lr=0.1, real_per_class=8, lr_img=0.1, init="real"),
}


@pytest.fixture(scope="module")
def small():
    """Digits with 20 training images per class."""
    plugin = registry.get_dataset("digits")
    return plugin.load(plugin.Options(train_per_class=20), REPO)


def make_ctx(real, tmp_path, seed=0, progress=None, checkpoints=True):
    from ddprobe.progress import Progress

    return DistillContext(seed, real, {}, TrainRecipe(), Cache(tmp_path / "cache"), "cpu",
                          progress or Progress(enabled=False), data_key={"dataset": "digits-small"},
                          name="t", checkpoint_dir=(tmp_path / "ckpt") if checkpoints else None)


def options(name, **extra):
    plugin = registry.get_distiller(name)
    return plugin, plugin.Options(model=TINY_NET, **{**TINY[name], **extra})


def run_obj(name, real, tmp_path, ipc=1, **extra):
    from ddprobe.distill.common import resolve_model

    plugin, opts = options(name, **extra)
    ctx = make_ctx(real, tmp_path)
    mod = __import__(plugin.module, fromlist=["x"])
    cls = {"dc": "DCRun", "dm": "DMRun", "mtt": "MTTRun", "bptt": "BPTTRun"}[name]
    return getattr(mod, cls)(real, ipc, opts, ctx, resolve_model(ctx, opts.model, name)), opts


# -- registration and options ------------------------------------------------------------------------------------
def test_registered_with_reference_defaults():
    names = registry.get_all("distiller")
    for n in ("dc", "dm", "mtt", "bptt"):
        assert n in names and names[n].description
    dc, dm = registry.get_distiller("dc").Options(), registry.get_distiller("dm").Options()
    mtt, bptt = registry.get_distiller("mtt").Options(), registry.get_distiller("bptt").Options()
    assert (dc.iterations, dc.lr_img, dc.momentum_img, dc.lr_net, dc.batch_real, dc.init) == (
        1000, 0.1, 0.5, 0.01, 256, "noise")
    assert (dm.iterations, dm.lr_img, dm.batch_real, dm.dsa, dm.init) == (20000, 1.0, 256, True, "real")
    assert (mtt.syn_steps, mtt.expert_epochs, mtt.max_start_epoch, mtt.lr_lr, mtt.lr_teacher, mtt.num_experts,
            mtt.expert_train_epochs) == (30, 2, 20, 1e-5, 0.01, 100, 50)
    assert (bptt.inner_steps, bptt.inner_momentum, bptt.clip, bptt.lr_img, bptt.real_per_class) == (
        150, 0.9, 2.0, 0.1, 64)
    assert dc.model == {"arch": "convnet", "width": 128, "depth": 3, "norm": "instancenorm"}
    for plugin in names.values():
        for field in plugin.Options.model_fields.values():
            assert field.description, plugin.name


def test_options_are_validated():
    from pydantic import ValidationError

    plugin = registry.get_distiller("dm")
    with pytest.raises(ValidationError):
        plugin.Options(lr=1)
    with pytest.raises(ValidationError, match="arch"):
        plugin.Options(model={"width": 3})
    with pytest.raises(ValidationError):
        plugin.Options(model={"arch": "convnet", "widht": 3})
    with pytest.raises(ValidationError):
        plugin.Options(init="zeros")
    assert plugin.Options(model="convnet").model == "convnet"


def test_unknown_model_name_is_a_clear_error(small, tmp_path):
    from ddprobe.errors import DDProbeError

    plugin = registry.get_distiller("dm")
    with pytest.raises(DDProbeError, match="not in \\[models\\]"):
        plugin.distill(small, 1, plugin.Options(model="convnett", iterations=1), make_ctx(small, tmp_path))


def test_plugin_module_does_not_import_torch():
    code = ("import sys; import ddprobe.builtin.distiller_matching, ddprobe.builtin.distillers; "
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)


def test_model_may_name_a_models_entry(small, tmp_path):
    from ddprobe.context import ModelSpec

    model = registry.get_model("convnet")
    ctx = make_ctx(small, tmp_path)
    ctx.models = {"tiny": ModelSpec("tiny", "convnet", model.Options(width=4, depth=1), model)}
    plugin = registry.get_distiller("dm")
    ds = plugin.distill(small, 1, plugin.Options(model="tiny", iterations=1, batch_real=4), ctx)
    assert ds.images.shape == (10, 1, 8, 8)


# -- each distiller: output shape, class-major labels, lowers its objective ----------------------------------
@pytest.mark.parametrize("name,iters", [("dc", 6), ("dm", 10), ("mtt", 10), ("bptt", 6)])
def test_lowers_its_matching_objective(name, iters, small, tmp_path):
    torch.manual_seed(0)
    run, opts = run_obj(name, small, tmp_path)
    before = run.objective()
    ds = run.run(iters)
    after = run.objective()
    assert after < before, f"{name}: objective {before:.4f} -> {after:.4f}"
    assert ds.images.shape == (10, 1, 8, 8)
    assert ds.labels.tolist() == list(range(10))
    assert ds.manifest.iterations == iters and len(ds.manifest.loss_curve) == iters
    assert torch.isfinite(ds.images).all()


def test_class_major_hard_labels_at_ipc_2(small, tmp_path):
    plugin, opts = options("dm", iterations=1)
    ds = plugin.distill(small, 2, opts, make_ctx(small, tmp_path))
    assert ds.labels.dtype == torch.int64
    assert ds.labels.tolist() == [c for c in range(10) for _ in range(2)]


@pytest.mark.parametrize("name", ["dc", "dm", "mtt", "bptt"])
def test_noise_and_real_init(name, small, tmp_path):
    plugin, opts = options(name, iterations=0, init="real")
    ds = plugin.distill(small, 1, opts, make_ctx(small, tmp_path))
    train = small.train.images.view(len(small.train), -1)
    for img in ds.images.view(10, -1):  # every initial image is a real training image
        assert (train - img).abs().amax(1).min() < 1e-6
    plugin, opts = options(name, iterations=0, init="noise")
    ds = plugin.distill(small, 1, opts, make_ctx(small, tmp_path))
    assert (train[:, None] - ds.images.view(1, 10, -1)).abs().amax(2).min() > 1e-3


# -- determinism and resume ------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["dc", "dm", "mtt", "bptt"])
def test_deterministic_for_a_seed(name, small, tmp_path):
    plugin, opts = options(name, iterations=2)
    a = plugin.distill(small, 1, opts, make_ctx(small, tmp_path / "a"))
    b = plugin.distill(small, 1, opts, make_ctx(small, tmp_path / "b"))
    c = plugin.distill(small, 1, opts, make_ctx(small, tmp_path / "c", seed=1))
    assert torch.equal(a.images, b.images)
    assert not torch.equal(a.images, c.images)


class Interrupt(Exception):
    pass


class StopAfter:
    """A progress stand-in that interrupts the run after ``n`` iterations (like Ctrl-C)."""

    def __init__(self, n):
        self.n, self.seen, self.started_at = n, 0, None

    @contextlib.contextmanager
    def task(self, description, total=None):
        outer = self

        class T:
            def advance(self, k=1):
                if outer.started_at is None and description.startswith(("dc", "dm", "mtt t", "bptt")):
                    outer.started_at = k if k > 1 else 0
                outer.seen += k if description.startswith(("dc", "dm", "mtt t", "bptt")) else 0

            def update(self, **fields):
                if outer.n is not None and outer.seen >= outer.n:
                    raise Interrupt

        yield T()


@pytest.mark.parametrize("name", ["dc", "dm", "mtt", "bptt"])
def test_resume_after_interruption_matches_uninterrupted(name, small, tmp_path):
    plugin, opts = options(name, iterations=5, checkpoint_every=2)
    full = plugin.distill(small, 1, opts, make_ctx(small, tmp_path / "full"))
    ctx = make_ctx(small, tmp_path / "cut", progress=StopAfter(3))
    with pytest.raises(Interrupt):
        plugin.distill(small, 1, opts, ctx)
    saved = list((tmp_path / "cut" / "ckpt").glob("*.pt"))
    assert len(saved) == 1
    again = StopAfter(None)
    ctx = make_ctx(small, tmp_path / "cut", progress=again)
    resumed = plugin.distill(small, 1, opts, ctx)
    assert again.started_at == 2  # resumed from the checkpoint after iteration 2
    assert torch.equal(full.images, resumed.images)
    assert full.manifest.loss_curve == resumed.manifest.loss_curve
    assert full.manifest.learned_lr == resumed.manifest.learned_lr
    assert not list((tmp_path / "cut" / "ckpt").glob("*.pt"))  # cleared when done


@pytest.mark.parametrize("damage", ["truncate", "flip", "empty"])
def test_damaged_checkpoint_is_not_resumed_and_the_set_is_the_uninterrupted_one(damage, small, tmp_path):
    from ddprobe.cache import CacheWarning

    plugin, opts = options("dm", iterations=5, checkpoint_every=2)
    full = plugin.distill(small, 1, opts, make_ctx(small, tmp_path / "full"))
    with pytest.raises(Interrupt):
        plugin.distill(small, 1, opts, make_ctx(small, tmp_path / "cut", progress=StopAfter(3)))
    (saved,) = (tmp_path / "cut" / "ckpt").glob("*.pt")
    data = bytearray(saved.read_bytes())
    if damage == "truncate":
        data = data[: len(data) // 2]
    elif damage == "flip":
        data[len(data) // 2] ^= 0xFF
    else:
        data = bytearray()
    saved.write_bytes(bytes(data))
    again = StopAfter(None)
    with pytest.warns(CacheWarning, match=f"distillation checkpoint {saved} is .*; ignoring it and starting over"):
        resumed = plugin.distill(small, 1, opts, make_ctx(small, tmp_path / "cut", progress=again))
    assert again.started_at == 0  # started over instead of trusting the damaged state
    assert torch.equal(full.images, resumed.images)


def test_checkpoint_key_depends_on_what_makes_the_set(small, tmp_path):
    from ddprobe.distill.common import resolve_model, run_key

    plugin, opts = options("dm", iterations=5)
    ctx = make_ctx(small, tmp_path)
    model = resolve_model(ctx, opts.model, "dm")
    base = run_key("dm", opts, 1, ctx, model)
    assert run_key("dm", opts, 2, ctx, model) != base
    assert run_key("dm", opts.model_copy(update={"lr_img": 2.0}), 1, ctx, model) != base
    assert run_key("dm", opts.model_copy(update={"checkpoint_every": 7}), 1, ctx, model) == base
    assert run_key("dm", opts, 1, make_ctx(small, tmp_path, seed=3), model) != base


# -- DC ----------------------------------------------------------------------------------------------------------
def test_dc_distance_and_loops():
    from ddprobe.distill.dc import gradient_distance, loops_for

    g = [torch.randn(4, 3, 3, 3), torch.randn(4), torch.randn(10, 16)]
    assert float(gradient_distance(g, g)) == pytest.approx(0.0, abs=1e-5)
    neg = [-t for t in g]
    assert float(gradient_distance(g, neg)) == pytest.approx(2 * (4 + 10), rel=1e-4)  # 1-D bias ignored
    assert float(gradient_distance(g, g, "mse")) == 0.0
    assert loops_for(1) == (1, 1) and loops_for(10) == (10, 50) and loops_for(50) == (50, 10)
    assert loops_for(12) == (10, 50)


def test_dc_dsa_variant_runs(small, tmp_path):
    plugin, opts = options("dc", iterations=1, dsa=True, init="real")
    ds = plugin.distill(small, 1, opts, make_ctx(small, tmp_path))
    assert torch.isfinite(ds.images).all()


def test_dc_sets_batchnorm_statistics_from_real_images_and_matches_in_eval_mode(small, tmp_path):
    from ddprobe.distill.common import resolve_model
    from ddprobe.distill.dc import DCRun

    plugin = registry.get_distiller("dc")
    opts = plugin.Options(model={**TINY_NET, "norm": "batchnorm"}, **{**TINY["dc"], "iterations": 1})
    ctx = make_ctx(small, tmp_path)
    run = DCRun(small, 1, opts, ctx, resolve_model(ctx, opts.model, "dc"))
    seen = []
    match = run.match_loss

    def spy(net, it, ol):
        (bn,) = [m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)]
        seen.append((bn.training, int(bn.num_batches_tracked), bn.running_mean.abs().sum().item()))
        return match(net, it, ol)

    run.match_loss = spy
    run.iteration(0)
    # outer_loop 2: each match follows one statistics pass over real images, in eval mode; between them the inner
    # loop's one training batch also updated the statistics, so it ran in train mode
    assert [(training, tracked) for training, tracked, _ in seen] == [(False, 1), (False, 3)]
    assert all(moved > 0 for _, _, moved in seen)
    inorm = DCRun(small, 1, plugin.Options(model=TINY_NET, **TINY["dc"]), ctx, resolve_model(ctx, TINY_NET, "dc"))
    net = inorm.net(0).train()
    inorm.freeze_batchnorm(net, 0, 0)  # instance norm (the default): left alone, in train mode
    assert all(m.training for m in net.modules())


# -- MTT ---------------------------------------------------------------------------------------------------------
def test_mtt_loss_is_zero_when_the_student_replays_the_expert():
    from ddprobe.distill.common import FlatModel
    from ddprobe.distill.mtt import trajectory_loss
    from ddprobe.nets import ConvNet

    torch.manual_seed(0)
    net = ConvNet(1, 3, width=4, depth=1, im_size=(6, 6)).double()
    fm = FlatModel(net)
    x, y = torch.randn(9, 1, 6, 6, dtype=torch.float64), torch.arange(3).repeat_interleave(3)
    batches = [torch.tensor([0, 3, 6]), torch.tensor([1, 4, 7]), torch.tensor([2, 5, 8])]
    lr = 0.05
    theta = start = fm.flat()
    for idx in batches:  # the expert: plain SGD on the same batches with the same step size
        th = theta.clone().requires_grad_(True)
        g = torch.autograd.grad(torch.nn.functional.cross_entropy(fm(th, x[idx]), y[idx]), th)[0]
        theta = theta - lr * g
    syn_lr = torch.tensor(lr, dtype=torch.float64, requires_grad=True)
    loss = trajectory_loss(fm, start, theta, x.clone().requires_grad_(True), y, syn_lr, batches)
    assert float(loss.detach()) < 1e-20
    off = trajectory_loss(fm, start, theta, x, y, torch.tensor(2 * lr, dtype=torch.float64), batches)
    assert float(off.detach()) > 1e-4


def test_mtt_experts_cached_and_learned_lr_used(small, tmp_path):
    from ddprobe.training import train

    plugin, opts = options("mtt", iterations=3)
    ctx = make_ctx(small, tmp_path)
    ds = plugin.distill(small, 1, opts, ctx)
    assert ctx.cache.misses["mtt-experts"] == 2
    assert ds.manifest.learned_lr is not None and ds.manifest.learned_lr != opts.lr_teacher
    ctx2 = make_ctx(small, tmp_path)  # same cache root: experts are reused by a second set
    plugin.distill(small, 2, opts, ctx2)
    assert ctx2.cache.misses["mtt-experts"] == 0 and ctx2.cache.hits["mtt-experts"] >= 2
    traj = ctx2.cache.load_tensors("mtt-experts", ctx2.cache.key(
        "mtt-experts", __import__("ddprobe.distill.mtt", fromlist=["x"]).expert_parts(
            ctx2, __import__("ddprobe.distill.common", fromlist=["x"]).resolve_model(ctx2, opts.model, "mtt"),
            opts, 0)))["trajectory"]
    assert traj.shape[0] == opts.expert_train_epochs + 1
    # a recipe with lr = "learned" trains with the set's learned step size
    seen = []
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
    train(net, ds, TrainRecipe(lr="learned", steps=1), generator=torch.Generator().manual_seed(0),
          learned_lr=ds.manifest.learned_lr, callbacks=[lambda s: seen.append(s.step)])
    assert seen == [0, 1]


# -- BPTT --------------------------------------------------------------------------------------------------------
def test_bptt_replay_gradient_matches_finite_differences_and_autograd():
    from ddprobe.distill.bptt import outer_loss, replay_gradient, sample_batches, unroll, unrolled_loss
    from ddprobe.distill.common import FlatModel
    from ddprobe.nets import ConvNet

    torch.manual_seed(0)
    net = ConvNet(1, 2, width=3, depth=1, im_size=(4, 4)).double()
    fm = FlatModel(net)
    ipc = 2
    images = torch.randn(4, 1, 4, 4, dtype=torch.float64)
    labels = torch.tensor([0, 0, 1, 1])
    xr, yr = torch.randn(6, 1, 4, 4, dtype=torch.float64), torch.tensor([0, 1, 0, 1, 0, 1])
    batches = sample_batches(2, ipc, 1, 5, torch.Generator().manual_seed(0), "cpu")
    lr, mom, theta0 = 0.3, 0.9, fm.flat()

    def loss(imgs):
        th, _ = unroll(fm, theta0, imgs, labels, batches, lr, mom)
        return float(outer_loss(fm, th, xr, yr))

    th_T, thetas = unroll(fm, theta0, images, labels, batches, lr, mom)
    th = th_T.clone().requires_grad_(True)
    a = torch.autograd.grad(outer_loss(fm, th, xr, yr), th)[0]
    grad = replay_gradient(fm, thetas, a, images, labels, batches, lr, mom)

    x = images.clone().requires_grad_(True)
    auto = torch.autograd.grad(unrolled_loss(fm, theta0, x, labels, batches, lr, mom, xr, yr), x)[0]
    torch.testing.assert_close(grad, auto, atol=1e-9, rtol=1e-7)

    eps = 1e-6
    for k in range(3):
        d = torch.randn(images.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(k))
        fd = (loss(images + eps * d) - loss(images - eps * d)) / (2 * eps)
        assert float((grad * d).sum()) == pytest.approx(fd, rel=1e-5, abs=1e-9)


def test_bptt_clips_the_image_gradient(small, tmp_path):
    run, opts = run_obj("bptt", small, tmp_path, clip=1e-3, lr_img=1.0, momentum_img=0.0)
    before = run.images.detach().clone()
    run.iteration(0)
    assert float((run.images.detach() - before).norm()) == pytest.approx(1e-3, rel=1e-3)


# -- through a study spec ----------------------------------------------------------------------------------------
@pytest.mark.slow  # loads every plugin (~30 s on a busy 2-core machine)
def test_study_builds_and_caches_distilled_sets(tmp_path):
    from ddprobe.spec import load_spec
    from ddprobe.study import prepare

    spec_file = tmp_path / "s.toml"
    spec_file.write_text("""
[study]
name = "t"
device = "cpu"
cache_dir = "cache"
[data]
dataset = "digits"
train_per_class = 10
[models]
convnet = { arch = "convnet", width = 8, depth = 1 }
[distilled.dm]
distiller = "dm"
ipc = 1
iterations = 2
batch_real = 8
model = "convnet"
[distilled.bptt]
distiller = "bptt"
ipc = 1
iterations = 1
inner_steps = 2
real_per_class = 4
model = { arch = "convnet", width = 4, depth = 1 }
""")
    spec = load_spec(spec_file)
    study = prepare(spec, tmp_path / "out")
    assert not study.errors
    dm = study.context.distilled["dm"]
    assert dm.manifest.distiller == "dm" and dm.manifest.iterations == 2
    assert dm.manifest.input_space is not None and "random_ipc1" in study.context.distilled
    again = prepare(load_spec(spec_file), tmp_path / "out")
    assert study.context.distilled["bptt"].manifest.sha256 == again.context.distilled["bptt"].manifest.sha256
    assert again.context.cache.hits["distilled"] >= 2
