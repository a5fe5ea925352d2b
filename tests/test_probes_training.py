"""The training-behaviour probes (issue 4): mixing, sensitivity, agreement, recognition_curve, embedding."""

from __future__ import annotations

import pytest
import torch

from ddprobe.training import TrainRecipe

SMALL = {"convnet": ("convnet", {"width": 8, "depth": 2})}
FAST = TrainRecipe(steps=30)


def small_ctx(make_ctx, random_set, **kw):
    sets = {"r2": random_set(2), "r1": random_set(1, seed=1)}
    ctx = make_ctx(sets=sets, models=SMALL, recipe=kw.pop("recipe", FAST),
                   pretrain=kw.pop("pretrain", TrainRecipe(epochs=2, batch_size=128, steps=None)), **kw)
    ctx.controls = {"r2"}
    return ctx


# -- engine -------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("recipe", [
    TrainRecipe(steps=6, batch_size=16, weight_decay=5e-4, schedule="step"),
    TrainRecipe(steps=5, batch_size="full", optimizer="adam", lr=0.01, schedule="cosine"),
])
def test_batched_matches_one_by_one(make_ctx, digits, recipe):
    from ddprobe.batched import TrainJob, train_many

    ctx = make_ctx(models=SMALL)
    jobs = [TrainJob("a", digits.train, torch.arange(0, 40)), TrainJob("b", digits.train, torch.arange(100, 170)),
            TrainJob("c", digits.train, torch.arange(5, 25))]
    seq = train_many(ctx, "convnet", jobs, recipe, mode="sequential")
    bat = train_many(ctx, "convnet", jobs, recipe, mode="batched")
    from ddprobe.training import predict

    # compare logits: a conv bias before GroupNorm has no effect, and Adam amplifies the noise of its zero gradient
    for a, b in zip(seq, bat, strict=True):
        assert torch.allclose(predict(a, digits.test.images), predict(b, digits.test.images), atol=1e-4)


# -- agreement ----------------------------------------------------------------------------------------------------

def test_agreement_with_itself_and_permuted(make_ctx, digits):
    from ddprobe.pools import agreement
    from ddprobe.training import predict

    ctx = make_ctx(models=SMALL)
    net = ctx.trained("convnet", digits.train.subset(torch.arange(200)), TrainRecipe(steps=20), seed_name="x")
    pred = predict(net, digits.test.images).argmax(1)
    assert float(agreement(pred, pred)) == 1.0
    gen = torch.Generator().manual_seed(0)
    perm = torch.randperm(10, generator=gen)
    other = perm[pred]  # a "model" whose predictions are a relabelling of this one's
    direct = sum(int(a == b) for a, b in zip(pred.tolist(), other.tolist(), strict=True)) / len(pred)
    assert float(agreement(pred, other)) == pytest.approx(direct)
    pool = torch.stack([pred, other, pred])
    assert agreement(pred, pool).tolist() == pytest.approx([1.0, direct, 1.0])


def test_early_stop_matching_picks_closest_step():
    from ddprobe.pools import match_step, match_subset

    curve = [0.10, 0.30, 0.52, 0.61, 0.70, 0.69]
    assert match_step(curve, 0.60) == 4  # 1-based: the state after 4 steps
    assert match_step(curve, 0.05) == 1
    assert match_step(curve, 0.695) == 5  # tie between steps 5 and 6: the earliest
    acc = torch.tensor([0.40, 0.505, 0.52, 0.515, 0.60])
    idx, how = match_subset(acc, 0.51, band=0.02)
    assert idx.tolist() == [1, 2, 3] and how == "band"
    idx, how = match_subset(acc, 0.515, band=0.02, how="paper")  # round(acc, 2) in {0.51, 0.52}
    assert idx.tolist() == [2, 3]
    idx, how = match_subset(acc, 0.80, band=0.02, nearest=2)
    assert idx.tolist() == [2, 4] and how == "nearest"


def test_agreement_end_to_end_and_pools_cached(make_ctx, random_set):
    from ddprobe import registry

    probe = registry.get_probe("agreement")
    opts = probe.Options(subset_models=6, subset_fraction=(0.05, 0.3), subset_epochs=3, early_runs=3,
                         early_steps=8, batch_size=64, band=2.0)  # every subset model matches: no growth
    ctx = small_ctx(make_ctx, random_set)
    res = probe.run(ctx, opts)
    for s in ("r1", "r2"):
        for m in ("subset", "early", "difference", "early_step"):
            assert f"{s}/convnet/{m}" in res.metrics
        assert 1 <= res.metrics[f"{s}/convnet/early_step"] <= 8
    assert res.info["trained"]["convnet"] == {"subset": 6, "targeted": 0, "early": 3}
    assert len(res.tables["subset_pool"]) == 6 and res.info["growth"]["convnet"]["added"] == 0
    assert res.info["compile"]["setting"] == "auto" and res.info["compile"]["compile"] is False  # small: eager
    assert res.figures["agreement"].exists()
    assert set(res.tables["values"].pool) == {"subset", "early"}
    # the chosen step is the one whose mean early-stopped accuracy is closest to the distilled model's
    curve = res.tables["early_curve"]
    for _, row in res.tables["agreement"].iterrows():
        best = curve.iloc[(curve.mean_accuracy - row.accuracy).abs().argmin()].step
        assert row.early_step == best
    # a second run (another study reading the same cache) trains nothing, and a bigger pool trains only the new ones
    ctx2 = small_ctx(make_ctx, random_set)
    ctx2.cache.hits.clear(), ctx2.cache.misses.clear()
    res2 = probe.run(ctx2, opts)
    assert res2.info["trained"]["convnet"] == {"subset": 0, "targeted": 0, "early": 0}
    assert ctx2.cache.misses["models"] == 0 and ctx2.cache.misses["pool-members"] == 0
    assert res2.metrics == pytest.approx(res.metrics, nan_ok=True)
    res3 = probe.run(ctx2, opts.model_copy(update={"subset_models": 8, "max_subset_models": 8}))
    assert res3.info["trained"]["convnet"] == {"subset": 2, "targeted": 0, "early": 0}


# -- mixing -------------------------------------------------------------------------------------------------------

def test_mixing_subsets_are_nested(make_ctx, random_set):
    from ddprobe.builtin.probe_mixing import real_order, real_rows

    ctx = small_ctx(make_ctx, random_set)
    order = real_order(ctx, 0)
    prev: set[int] = set()
    for k in (0, 2, 10, 50):
        rows = real_rows(order, k)
        assert len(rows) == 10 * k
        labels = ctx.real.train.labels[rows]
        assert all(int((labels == c).sum()) == k for c in range(10))
        assert prev <= set(rows.tolist())
        prev = set(rows.tolist())
    assert real_order(ctx, 1)[0].tolist() != order[0].tolist()  # seeds draw different subsets


def test_mixing_end_to_end(make_ctx, random_set, digits):
    from ddprobe import registry
    from ddprobe.data import RealData

    probe = registry.get_probe("mixing")
    rows = torch.cat([ix[:30] for ix in digits.train.class_indices()])
    small = RealData(digits.name, digits.train.subset(rows), digits.test, digits.space)
    ctx = small_ctx(make_ctx, random_set, real=small)
    res = probe.run(ctx, probe.Options(k=[0, 2, 500], seeds=2, recipe={"steps": 20}))
    cap = min(ctx.real.train.counts())
    assert cap == 30
    assert res.info["capped"] == [500] and res.info["k"] == [0, 2, cap]
    for s in ("r1", "r2"):
        assert {f"{s}/convnet/k0", f"{s}/convnet/k2", f"{s}/convnet/k{cap}", f"{s}/convnet/change"} <= set(res.metrics)
        assert res.metrics[f"{s}/convnet/change"] == pytest.approx(
            res.metrics[f"{s}/convnet/k2"] - res.metrics[f"{s}/convnet/k0"])
    t = res.tables["mixing"]
    assert set(t[t.set == "r1"].images) == {10, 30, 10 + 10 * cap}
    assert res.figures["mixing"].exists()
    misses = ctx.cache.misses["models"]
    probe.run(ctx, probe.Options(k=[0, 2, 500], seeds=2, recipe={"steps": 20}))  # the same run again
    assert ctx.cache.misses["models"] == misses  # nothing retrained


# -- recognition curve --------------------------------------------------------------------------------------------

def test_recognition_curve_end_to_end(make_ctx, random_set):
    from ddprobe import registry
    from ddprobe.builtin.probe_recognition_curve import first_reaching

    assert first_reaching([0.0, 0.5, 0.95, 0.9, 1.0], 0.9) == 2
    assert first_reaching([0.0, 0.5, 0.95, 0.9, 1.0], 0.99) == 4
    probe = registry.get_probe("recognition_curve")
    ctx = small_ctx(make_ctx, random_set, pretrain=TrainRecipe(epochs=1, batch_size=64, steps=None))
    res = probe.run(ctx, probe.Options(steps=12, seeds=2, every=3))
    curves = res.tables["curves"]
    assert sorted(set(curves.step)) == [0, 3, 6, 9, 12]
    assert set(curves.series) == {"real_test", "r1", "r2"}
    for s in ("r1", "r2"):
        assert 0 <= res.metrics[f"{s}/convnet/step90"] <= res.metrics[f"{s}/convnet/step99"] <= 12
        assert 0 <= res.metrics[f"{s}/convnet/final"] <= 1
    assert res.figures["recognition_curve"].exists()
    # the curve at step 12 is the model trained 12 steps one by one
    from ddprobe.training import evaluate

    recipe = TrainRecipe(steps=12, batch_size=64)
    net = ctx.build_model("convnet", "recognition_curve:convnet:1")
    ctx.train(net, ctx.real.train, recipe, seed_name="recognition_curve:convnet:1")
    last = curves[(curves.series == "real_test") & (curves.seed == 1) & (curves.step == 12)].accuracy.iloc[0]
    assert last == pytest.approx(evaluate(net, ctx.real.test), abs=1e-6)


# -- sensitivity --------------------------------------------------------------------------------------------------

def test_sensitivity_presets_and_grid(make_ctx, random_set):
    from ddprobe import registry
    from ddprobe.builtin.probe_sensitivity import PRESETS

    probe = registry.get_probe("sensitivity")
    ctx = small_ctx(make_ctx, random_set)
    opts = probe.Options(presets=["paper", "dc", "mtt"], grid={"lr": [0.05], "optimizer": ["adam"]}, seeds=1,
                         length_scale=0.05)
    cells = {name: r for name, r, _ in probe.cells(ctx, opts)}
    assert list(cells) == ["study", "paper", "dc", "mtt", "lr=0.05", "optimizer=adam"]
    assert cells["dc"].weight_decay == 5e-4 and cells["dc"].schedule == "step" and cells["dc"].epochs == 15
    assert cells["paper"].steps == 15 and cells["paper"].batch_size == "full"
    assert cells["lr=0.05"].lr == 0.05 and cells["lr=0.05"].steps == 2  # study recipe (30 steps) scaled
    assert PRESETS["mtt"]["lr"] == "learned"
    res = probe.run(ctx, opts)
    for s in ("r1", "r2"):
        assert f"{s}/spread" in res.metrics
        for cell in cells:
            assert f"{s}/convnet/{cell}" in res.metrics
    t = res.tables["sensitivity"]
    g = t[t.set == "r1"]
    assert res.metrics["r1/spread"] == pytest.approx(g["mean"].max() - g["mean"].min())
    if res.metrics["r2/spread"] > 0:
        assert res.metrics["r1/spread_ratio"] == pytest.approx(res.metrics["r1/spread"] / res.metrics["r2/spread"])
    assert "no learned lr" in t[t.cell == "mtt"].note.iloc[0]
    assert res.figures["sensitivity"].exists()


def test_sensitivity_rejects_bad_grid():
    from pydantic import ValidationError

    from ddprobe import registry

    probe = registry.get_probe("sensitivity")
    with pytest.raises(ValidationError, match="did you mean|not a recipe field"):
        probe.Options(grid={"learning_rate": [0.1]})
    with pytest.raises(ValidationError):
        probe.Options(presets=["dcc"])


# -- embedding ----------------------------------------------------------------------------------------------------

def test_knn_label_agreement_counts():
    from ddprobe.builtin.probe_embedding import knn_label_agreement

    ref = torch.tensor([[0.0], [1.0], [2.0], [10.0], [11.0]])
    ref_y = torch.tensor([0, 0, 1, 1, 1])
    q = torch.tensor([[0.5], [10.5]])
    frac = knn_label_agreement(q, torch.tensor([0, 0]), ref, ref_y, k=3)
    assert frac.tolist() == pytest.approx([2 / 3, 0.0])


@pytest.mark.parametrize("projection", ["pca", pytest.param("umap", marks=pytest.mark.slow)])
def test_embedding_end_to_end(make_ctx, random_set, projection):
    from ddprobe import registry

    probe = registry.get_probe("embedding")
    ctx = small_ctx(make_ctx, random_set)
    res = probe.run(ctx, probe.Options(projection=projection))
    coords = res.tables["coordinates"]
    assert len(coords) == len(ctx.real.test) + 20 + 10
    assert set(coords.source) == {"real_test", "r1", "r2"}
    assert coords[["x", "y"]].notna().all().all()
    for s in ("r1", "r2", "real_test"):
        assert 0 <= res.metrics[f"{s}/knn_agreement"] <= 1
    assert res.metrics["real_test/knn_agreement"] > 0.5  # a trained model separates digits
    assert res.figures["embedding"].exists()


def test_distilled_models_shared_with_evaluate(make_ctx, random_set):
    from ddprobe import registry

    ctx = small_ctx(make_ctx, random_set)
    registry.get_probe("evaluate").run(ctx, registry.get_probe("evaluate").Options(seeds=1))
    misses = ctx.cache.misses["models"]
    sens = registry.get_probe("sensitivity")
    sens.run(ctx, sens.Options(presets=[], seeds=1))  # only the study cell: evaluate's models
    assert ctx.cache.misses["models"] == misses
