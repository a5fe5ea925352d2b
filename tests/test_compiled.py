"""Compiled training for bags of models ([study] compile): the decision, the fallback, and equal numbers."""

from __future__ import annotations

import pytest
import torch

from ddprobe import batched, compiled
from ddprobe.training import TrainRecipe, predict

SMALL = {"convnet": ("convnet", {"width": 8, "depth": 2})}


@pytest.fixture(autouse=True)
def _fresh():
    compiled.clear()
    batched._EAGER_STEP.clear()
    yield
    compiled.clear()
    batched._EAGER_STEP.clear()


# -- the decision ---------------------------------------------------------------------------------------------------

def test_never_and_always_are_obeyed_whatever_the_timings():
    assert not compiled.decide("never", 10**9, 1.0, gain=10.0, compile_s=0.1).compile
    assert compiled.decide("always", 1, 1e-6, gain=1.0, compile_s=1e6).compile
    with pytest.raises(ValueError, match="auto, always or never"):
        compiled.decide("sometimes", 10, 1.0)


def test_auto_compiles_only_when_the_predicted_saving_beats_the_compile():
    # measured: eager 10 ms/step, gain 2 (compiled 5 ms), compile 20 s -> break-even at 4,000 steps
    assert not compiled.decide("auto", 3_999, 0.01, gain=2.0, compile_s=20.0).compile
    d = compiled.decide("auto", 4_001, 0.01, gain=2.0, compile_s=20.0)
    assert d.compile
    assert d.predicted_saving_s == pytest.approx(4_001 * 0.01 * 0.5)
    assert d.predicted_compile_s == 20.0
    # two workers and the driver each compile: three times the cost
    assert not compiled.decide("auto", 4_001, 0.01, gain=2.0, compile_s=20.0, compilers=3).compile
    # no gain (or a loss) measured: never compile
    assert not compiled.decide("auto", 10**9, 0.01, gain=1.0, compile_s=1.0).compile
    assert not compiled.decide("auto", 10**9, 0.01, gain=0.8, compile_s=1.0).compile
    # no eager time: cannot predict, do not compile
    assert not compiled.decide("auto", 10**9, None).compile


def test_auto_without_measurements_is_conservative_for_small_bags():
    # defaults: gain 1.25 and a 30 s compile -> needs over 150 s of eager work
    assert not compiled.decide("auto", 32 * 300, 0.005).compile  # a pool of 32 x 300 steps at 5 ms: 48 s
    assert not compiled.decide("auto", 29_999, 0.005).compile
    assert compiled.decide("auto", 30_001, 0.005).compile


def test_default_study_bag_trains_eagerly_and_records_why(make_ctx, digits):
    from ddprobe.batched import TrainJob, train_many

    ctx = make_ctx(models=SMALL)
    assert ctx.compile_mode == "auto"
    jobs = [TrainJob(s, digits.train, torch.arange(0, 40)) for s in "abc"]
    train_many(ctx, "convnet", jobs, TrainRecipe(steps=5), mode="sequential")
    info = batched.compile_info()
    assert info["setting"] == "auto" and info["compile"] is False
    assert info["bag_steps"] == 15 and info["eager_step_s"] > 0
    assert not compiled._FORWARDS  # nothing was compiled


def test_stacked_training_is_not_compiled(make_ctx, digits):
    from ddprobe.batched import TrainJob, train_many

    ctx = make_ctx(models=SMALL)
    ctx.compile_mode = "always"
    jobs = [TrainJob(s, digits.train, torch.arange(0, 40)) for s in "ab"]
    train_many(ctx, "convnet", jobs, TrainRecipe(steps=2), mode="batched")
    assert batched.compile_info() == {"setting": "always", "compile": False,
                                      "reason": "batched training is not compiled"}


def test_spec_accepts_compile_and_rejects_other_values():
    from pydantic import ValidationError

    from ddprobe.spec import StudySection, json_schema

    assert StudySection().compile == "auto"
    assert StudySection(compile="never").compile == "never"
    with pytest.raises(ValidationError, match="compile"):
        StudySection(compile="sometimes")
    assert json_schema()["properties"]["study"]["properties"]["compile"]["enum"] == ["auto", "always", "never"]


# -- unavailable compilation: eager, recorded -------------------------------------------------------------------

def _raise(*a, **k):
    raise RuntimeError("no C++ compiler")


def test_failing_compile_falls_back_to_eager_and_is_recorded(make_ctx, digits, monkeypatch):
    from ddprobe.batched import TrainJob, train_many

    ctx = make_ctx(models=SMALL)
    jobs = [TrainJob(s, digits.train, torch.arange(0, 40)) for s in "ab"]
    recipe = TrainRecipe(steps=4, batch_size=16)
    ctx.compile_mode = "never"
    eager = train_many(ctx, "convnet", jobs, recipe, mode="sequential")
    monkeypatch.setattr(torch, "compile", _raise)
    ctx.compile_mode = "always"
    fallback = train_many(ctx, "convnet", jobs, recipe, mode="sequential")
    info = batched.compile_info()
    assert info["compile"] is False and "no C++ compiler" in info["failed"]
    for a, b in zip(eager, fallback, strict=True):
        assert torch.equal(predict(a, digits.test.images), predict(b, digits.test.images))


def test_compiled_function_failing_on_first_call_falls_back(monkeypatch):
    # torch.compile itself succeeds but the compiled function raises when it runs (as without a C++ compiler)
    monkeypatch.setattr(torch, "compile", lambda fn, **kw: _raise)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))
    key = compiled.arch_key("linear", "cpu", 2)
    assert compiled.forward(net, key, torch.zeros(2, 4)) is None
    assert "no C++ compiler" in compiled.failure(key)
    assert compiled.forward(net, key, torch.zeros(2, 4)) is None  # not retried


def test_models_with_buffers_or_dropout_are_not_compiled():
    assert "buffers" in compiled.eligible(torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2)))
    assert "dropout" in compiled.eligible(torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Dropout(0.5)))
    assert compiled.eligible(torch.nn.Linear(2, 2)) is None


def test_leave_one_out_falls_back_when_compile_raises(monkeypatch):
    from ddprobe.influence.retraining import exact_loo

    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(6, 5, generator=gen), torch.randint(0, 3, (6,), generator=gen)
    tx, ty = torch.randn(4, 5, generator=gen), torch.randint(0, 3, (4,), generator=gen)
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    recipe = TrainRecipe(steps=5, lr=0.1)
    eager = exact_loo(net, x, y, tx, ty, recipe, strategy="serial", compile="never")
    monkeypatch.setattr(torch, "compile", _raise)
    fallback = exact_loo(net, x, y, tx, ty, recipe, strategy="serial", compile="always")
    assert fallback.compile["compile"] is False and "no C++ compiler" in fallback.compile["failed"]
    assert torch.equal(eager.loss_loo, fallback.loss_loo)
    small = exact_loo(net, x, y, tx, ty, recipe, strategy="serial", compile="auto")
    assert small.compile["compile"] is False


# -- equal numbers (one real compile each) ------------------------------------------------------------------------

@pytest.mark.slow
def test_compiled_training_gives_the_eager_numbers(make_ctx, digits):
    from ddprobe.batched import TrainJob, train_many
    from ddprobe.influence.retraining import exact_loo

    ctx = make_ctx(models=SMALL)
    jobs = [TrainJob(s, digits.train, torch.arange(0, 48)) for s in "abc"]
    recipe = TrainRecipe(steps=8, batch_size=16, weight_decay=5e-4)
    ctx.compile_mode = "never"
    eager = train_many(ctx, "convnet", jobs, recipe, mode="sequential")
    ctx.compile_mode = "always"
    fast = train_many(ctx, "convnet", jobs, recipe, mode="sequential")
    info = batched.compile_info()
    assert info["compile"] is True and "failed" not in info, info
    assert len(compiled._FORWARDS) == 1  # one compile for the bag
    for a, b in zip(eager, fast, strict=True):
        assert torch.allclose(predict(a, digits.test.images), predict(b, digits.test.images), atol=1e-4)

    # two worker processes, each compiling for itself: the same models as the serial compiled run
    from ddprobe.batched import train_bag
    from ddprobe.pools import StateCollector

    ctx.workers, ctx.executor_kind = 2, "processes"
    states = {}
    train_bag(ctx, "convnet", jobs, recipe, StateCollector(), states.__setitem__, mode="sequential")
    for i, net in enumerate(fast):
        assert all(torch.equal(v, states[i][k]) for k, v in net.state_dict().items())

    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(10, 6, generator=gen), torch.randint(0, 3, (10,), generator=gen)
    tx, ty = torch.randn(5, 6, generator=gen), torch.randint(0, 3, (5,), generator=gen)
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))
    loo_recipe = TrainRecipe(steps=10, lr=0.1)
    ref = exact_loo(net, x, y, tx, ty, loo_recipe, strategy="serial", compile="never")
    got = exact_loo(net, x, y, tx, ty, loo_recipe, strategy="serial", compile="always")
    assert got.compile["compile"] is True and "failed" not in got.compile, got.compile
    assert torch.allclose(ref.loss_loo, got.loss_loo, atol=1e-5)
    assert torch.allclose(ref.margin_loo, got.margin_loo, atol=1e-5)


def test_auto_uses_the_measured_gain_and_compile_time_of_the_architecture(make_ctx, digits, monkeypatch):
    from ddprobe.batched import TrainJob, train_many

    ctx = make_ctx(models=SMALL)
    jobs = [TrainJob(s, digits.train, torch.arange(0, 40)) for s in "ab"]
    key = compiled.arch_key(ctx.models["convnet"].key(), ctx.device, 40)  # architecture, device, batch (full)
    compiled.record(key, gain=100.0, compile_s=1e-9)  # as if a compiled bag had measured a huge gain
    monkeypatch.setattr(torch, "compile", _raise)  # so no real compile runs here
    train_many(ctx, "convnet", jobs, TrainRecipe(steps=3), mode="sequential")
    info = batched.compile_info()
    assert info["predicted_saving_s"] > 0 and info["reason"] == "eager: compiling failed"
    assert "no C++ compiler" in info["failed"]


def test_only_runs_of_the_keys_batch_size_compile(monkeypatch):
    # a run with another batch size (a leave-one-out bag's full runs, a pool member of another size) trains
    # eagerly and does not compile, whichever worker meets it first
    monkeypatch.setattr(torch, "compile", _raise)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))
    key = compiled.arch_key("linear", "cpu", 5)
    assert compiled.forward(net, key, torch.zeros(6, 4)) is None
    assert compiled.failure(key) is None  # torch.compile was not even tried
    assert compiled.forward(net, key, torch.zeros(5, 4)) is None and compiled.failure(key)  # tried, and failed
