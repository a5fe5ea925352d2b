"""The paper's findings (d) agreement, (f) hessian and (g) influence: statistics and verdicts on constructed cases."""

from __future__ import annotations

import math

import pytest
import torch

from ddprobe.findings import HOLDS, INCONCLUSIVE, NOT_HOLDS
from ddprobe.training import TrainRecipe

SMALL = {"convnet": ("convnet", {"width": 8, "depth": 2})}


# -- (d) agreement: the subset pool is aimed at the accuracies it must match ----------------------------------------

def _sigmoid_curve(f):
    """A learning curve, logit(accuracy) linear in log fraction: 0.6 at one image in 150, 0.95 at 30 %."""
    lo, hi = math.log(1 / 150), math.log(0.3)
    a0, a1 = math.log(0.6 / 0.4), math.log(0.95 / 0.05)
    z = a0 + (a1 - a0) * (math.log(f) - lo) / (hi - lo)
    return 1 / (1 + math.exp(-z))


def test_aimed_fraction_inverts_the_fitted_learning_curve():
    from ddprobe.subset_targeting import aim_fraction

    fr = [0.05, 0.1, 0.2, 0.3]
    acc = [_sigmoid_curve(f) for f in fr]
    target = _sigmoid_curve(0.02)
    assert aim_fraction(fr, acc, target, floor=0.001) == pytest.approx(0.02, rel=1e-6)  # exact for such a curve
    assert aim_fraction(fr, acc, 0.3, floor=0.001) == pytest.approx(0.05 / 4)  # at most 4x beyond the pool
    assert aim_fraction(fr, acc, 0.3, floor=0.02) == pytest.approx(0.02)  # ... never below one image per class
    assert aim_fraction(fr, acc, 0.999, floor=0.001) == pytest.approx(1.0)
    # no rising fit: walk toward the target
    assert aim_fraction([0.1, 0.1], [0.8, 0.8], 0.5, floor=0.001) == pytest.approx(0.05)
    assert aim_fraction([0.1, 0.2], [0.9, 0.8], 0.95, floor=0.001) == pytest.approx(0.4)
    # one unlucky model at the smallest fraction moves the aim little
    fr = [0.03 * 10 ** (i / 11) for i in range(12)]
    noisy = [0.48] + [_sigmoid_curve(f) for f in fr[1:]]
    assert aim_fraction(fr, noisy, target, floor=0.001) == pytest.approx(0.02, rel=0.1)


def _fake_members(monkeypatch, curve):
    """Subset models whose accuracy is ``curve(fraction)``: the search logic without training."""
    from ddprobe import subset_targeting
    from ddprobe.pools import SubsetPool

    calls = []

    def fake(ctx, model, members, recipe, **kw):
        fr = [m.parts["fraction"] for m in members]
        calls.append(fr)
        return SubsetPool(torch.zeros(len(fr), 3, dtype=torch.long), torch.tensor([curve(f) for f in fr]),
                          torch.tensor(fr), torch.ones(len(fr), dtype=torch.long), len(fr))

    monkeypatch.setattr(subset_targeting, "subset_members", fake)
    return calls


def _pool(fractions, curve):
    from ddprobe.pools import SubsetPool

    return SubsetPool(torch.zeros(len(fractions), 3, dtype=torch.long), torch.tensor([curve(f) for f in fractions]),
                      torch.tensor(fractions), torch.ones(len(fractions), dtype=torch.long), 0)


def test_pool_grows_until_the_distilled_accuracy_is_matched(make_ctx, monkeypatch):
    from ddprobe.pools import match_subset
    from ddprobe.subset_targeting import grow_subset_pool

    curve = _sigmoid_curve
    calls = _fake_members(monkeypatch, curve)
    ctx = make_ctx(models=SMALL)
    base = _pool([0.1, 0.2, 0.3], curve)  # every base member is far more accurate than 0.82
    assert not match_subset(base.accuracy, 0.82, 0.02)[0].numel()
    pool, growth = grow_subset_pool(ctx, "convnet", base, [0.82], TrainRecipe(steps=2), band=0.02, min_matched=3,
                                    budget=30)
    assert match_subset(pool.accuracy, 0.82, 0.02)[0].numel() >= 3
    assert growth.added == len(pool) - 3 <= 30 and not growth.unreachable and calls
    # a target below what one image per class reaches is declared out of reach within the budget, with why
    calls.clear()
    pool, growth = grow_subset_pool(ctx, "convnet", base, [0.3], TrainRecipe(steps=2), band=0.02, min_matched=3,
                                    budget=40)
    assert 0.3 in growth.unreachable and "one image per class" in growth.unreachable[0.3]
    assert growth.added < 40
    # no budget: nothing grows
    pool, growth = grow_subset_pool(ctx, "convnet", base, [0.82], TrainRecipe(steps=2), band=0.02, budget=0)
    assert len(pool) == 3 and growth.added == 0


def _unit(early, subset, acc=0.8, closest=0.8, gap=0.0):
    return {"model": "m", "seed": 0, "accuracy": acc, "early": early, "subset": subset, "closest_subset": closest,
            "early_gap": gap, "early_accuracy": acc + gap}


def test_agreement_without_matched_subset_models_is_inconclusive_and_says_why():
    from ddprobe.builtin.probe_agreement import AGREEMENT, judge_agreement

    units = [_unit([0.7, 0.72, 0.71], [0.6, 0.61]), _unit([0.7, 0.72, 0.71], [], acc=0.82, closest=0.93)]
    f = judge_agreement(AGREEMENT, "dm", "agreement", units, band=0.02)
    assert f.verdict == INCONCLUSIVE
    assert "no accuracy-matched subset models for 1 of 2" in f.reason and "0.930 vs 0.820" in f.reason
    far = judge_agreement(AGREEMENT, "dm", "agreement", [_unit([0.7, 0.7], [0.6, 0.6], gap=0.05)], band=0.02)
    assert far.verdict == INCONCLUSIVE and "early-stopped step" in far.reason


def test_agreement_verdicts_from_pool_bootstrap_and_from_seeds():
    from ddprobe.builtin.probe_agreement import AGREEMENT, judge_agreement

    gen = torch.Generator().manual_seed(0)
    early = (0.70 + 0.01 * torch.randn(20, generator=gen)).tolist()
    subset = (0.60 + 0.01 * torch.randn(15, generator=gen)).tolist()
    one = judge_agreement(AGREEMENT, "dm", "agreement", [_unit(early, subset)], band=0.02)
    assert one.verdict == HOLDS and one.unit_of_n.startswith("pool models") and one.n == 15
    assert one.effect == pytest.approx(sum(early) / 20 - sum(subset) / 15)
    assert one.ci[0] < one.effect < one.ci[1] and one.details["interval"] == "pool"
    flipped = judge_agreement(AGREEMENT, "dm", "agreement", [_unit(subset, early)], band=0.02)
    assert flipped.verdict == NOT_HOLDS
    # one subset model is no sample: inconclusive
    lone = judge_agreement(AGREEMENT, "dm", "agreement", [_unit(early, subset[:1])], band=0.02)
    assert lone.verdict == INCONCLUSIVE and lone.n == 1 and "only 1 matched subset or early-stopped" in lone.reason
    # three distilled-trained models: Student-t over them
    seeds = [_unit([0.70], [0.60]), _unit([0.72], [0.61]), _unit([0.69], [0.60])]
    f = judge_agreement(AGREEMENT, "dm", "agreement", seeds, band=0.02)
    assert f.details["interval"] == "seeds" and f.n == 3 and f.unit_of_n == "distilled-trained models"
    assert f.verdict == HOLDS and f.effect == pytest.approx((0.10 + 0.11 + 0.09) / 3)


def test_agreement_probe_never_falls_back_to_nearest(make_ctx, random_set):
    """On a pool whose fractions are all far more accurate than the sets, without a budget to grow, the finding is
    inconclusive, the reason names the closest accuracy, and no row is matched by nearest accuracy."""
    from ddprobe import registry

    probe = registry.get_probe("agreement")
    ctx = make_ctx(sets={"r1": random_set(1, seed=1)}, models=SMALL, recipe=TrainRecipe(steps=20),
                   pretrain=TrainRecipe(epochs=2, batch_size=128, steps=None))
    opts = probe.Options(subset_models=3, subset_fraction=(0.6, 0.9), subset_epochs=4, early_runs=2, early_steps=6,
                         batch_size=64, max_subset_models=3, band=0.01)
    res = probe.run(ctx, opts)
    row = res.tables["agreement"].iloc[0]
    assert row.matched_by == "none" and row.subset_matched == 0
    [f] = res.findings
    assert f.id == "agreement" and f.set == "r1"
    assert f.verdict == INCONCLUSIVE and "no accuracy-matched subset models" in f.reason
    assert f"closest accuracy {row.closest_subset_accuracy:.3f} vs {row.accuracy:.3f}" in f.reason
    assert "No accuracy-matched subset model" in res.summary
    assert math.isnan(res.metrics["r1/convnet/subset"])
    # with a budget the pool grows toward the set's accuracy, and the targeted models are cached
    grow = opts.model_copy(update={"max_subset_models": 9, "min_matched": 1, "band": 0.1})
    res = probe.run(ctx, grow)
    growth = res.info["growth"]["convnet"]
    assert growth["added"] > 0 and growth["trained"] == growth["added"]
    pool = res.tables["subset_pool"]
    assert pool.targeted.sum() == growth["added"] and pool[pool.targeted].fraction.max() < 0.6
    row = res.tables["agreement"].iloc[0]
    assert row.matched_by == "band" or "no accuracy-matched subset models" in res.findings[0].reason
    again = probe.run(ctx, grow)
    assert again.info["growth"]["convnet"] == {**growth, "trained": 0}
    assert again.tables["subset_pool"].equals(pool)


# -- (f) hessian: the distilled trace peaks and falls, the real one does not --------------------------------------

def _rise_fall(peak_at, top, end, n=21, step=5):
    """A trace rising linearly to ``top`` at step ``peak_at`` and falling linearly to ``end`` at the last step."""
    steps = [i * step for i in range(n)]
    last = steps[-1]
    return steps, [top * s / peak_at if s <= peak_at else top + (end - top) * (s - peak_at) / (last - peak_at)
                   for s in steps]


def test_hessian_verdicts_on_synthetic_trace_curves():
    from ddprobe.builtin.probe_hessian import HESSIAN, judge_hessian, relative_drop

    steps, falls = _rise_fall(30, 4000.0, 400.0)
    _, plateau = _rise_fall(30, 2000.0, 1990.0)  # levels off, with a slight sag at the end
    drop, peak = relative_drop(falls, steps)
    assert 0.5 < drop < 0.9 and 30 < steps[peak] < 100  # the EMA lags the raw peak
    flat, flat_peak = relative_drop(plateau, steps)
    assert 0 < flat < 0.01 and flat_peak < 20
    scale = [1.0, 0.95, 1.05]  # three runs, the same shapes at slightly different heights
    runs = [([v * c for v in falls], [v * c for v in plateau]) for c in scale]
    f = judge_hessian(HESSIAN, "mtt", "hessian", steps, runs)
    assert f.verdict == HOLDS and f.n == 3
    assert f.effect == pytest.approx(drop - flat) and f.details["runs"][0]["real_drop"] == pytest.approx(flat)
    # both fall alike: does not hold; the real trace falls and the distilled one levels off: does not hold either
    both = judge_hessian(HESSIAN, "dm", "hessian", steps, [(r[0], r[0]) for r in runs])
    assert both.verdict == NOT_HOLDS and both.effect == pytest.approx(0.0)
    assert judge_hessian(HESSIAN, "dm", "hessian", steps, [(r[1], r[0]) for r in runs]).verdict == NOT_HOLDS
    # one run is never a verdict
    assert judge_hessian(HESSIAN, "mtt", "hessian", steps, runs[:1]).verdict == INCONCLUSIVE
    # still rising at the end of the window: too short to see a peak, whatever the numbers say
    rising = [([v * c for v in steps], p) for c, (_, p) in zip(scale, runs, strict=True)]
    short = judge_hessian(HESSIAN, "mtt", "hessian", steps, rising)
    assert short.verdict == INCONCLUSIVE and "peaks at the last checkpoint (step 100) in 3 of 3" in short.reason
    two = judge_hessian(HESSIAN, "mtt", "hessian", [0, 5], [([0.0, 1.0], [0.0, 1.0])] * 2)
    assert two.verdict == INCONCLUSIVE and "only 2 checkpoints" in two.reason


def test_hessian_seeds_are_independent_runs_and_run_0_keeps_its_cache(make_ctx, random_set):
    from ddprobe.builtin.probe_hessian import Hessian

    ctx = make_ctx(sets={"random2": random_set(2)}, models=SMALL)
    probe = Hessian()
    one = probe.Options(recipe={"steps": 4}, checkpoints=2, real_subsample=60, budget=12, rtol=0.5)
    first = probe.run(ctx, one)
    assert set(first.tables["traces"].seed) == {0}
    [f] = first.findings
    assert f.id == "hessian" and f.set == "random2" and f.verdict == INCONCLUSIVE and f.n == 1
    res = probe.run(ctx, one.model_copy(update={"seeds": 2}))
    traces = res.tables["traces"]
    assert set(traces.seed) == {0, 1} and len(traces) == 2 * 3 * 2
    assert res.info["estimates_from_cache"] == 3 * 2  # run 0 came back from the single-run probe's entries
    run0 = traces[traces.seed == 0].trace.tolist()
    assert run0 == first.tables["traces"].trace.tolist()
    assert run0 != traces[traces.seed == 1].trace.tolist()  # another initialization and data order
    [f] = res.findings
    assert f.n == 2 and f.unit_of_n == "training runs" and len(f.details["runs"]) == 2


# -- (g) influence: the most-influenced test images are coherent, by label and beyond it ----------------------------

def test_class_pair_similarity_is_the_mean_over_distinct_pairs():
    from ddprobe.builtin.influence_coherence import class_pair_similarity, unit_features

    gen = torch.Generator().manual_seed(0)
    labels = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2, 2])
    units = unit_features(torch.randn(9, 4, generator=gen))
    c = class_pair_similarity(units, labels, 3)
    for a in range(3):
        for b in range(3):
            pairs = [float(units[i] @ units[j]) for i in range(9) for j in range(9)
                     if i != j and labels[i] == a and labels[j] == b]
            assert float(c[a, b]) == pytest.approx(sum(pairs) / len(pairs))


def _clustered_test_set():
    """3 classes x 2 sub-clusters x 5 test images: features separate classes and, within a class, sub-clusters."""
    gen = torch.Generator().manual_seed(1)
    labels, feats = [], []
    for c in range(3):
        for sub in range(2):
            centre = torch.zeros(6)
            centre[c] = 3.0
            centre[3 + sub] = 2.0
            for _ in range(5):
                labels.append(c)
                feats.append(centre + 0.3 * torch.randn(6, generator=gen))
    return torch.tensor(labels), torch.stack(feats)


def _influence_toward(targets, m, noise, gen):
    """An influence matrix whose row i is largest on the test images ``targets[i]`` (plus noise)."""
    infl = noise * torch.randn(len(targets), m, generator=gen)
    for i, t in enumerate(targets):
        infl[i, t] += 1.0
    return infl


def test_coherence_on_constructed_influence_matrices():
    from ddprobe.builtin.influence_coherence import coherence, judge, unit_features

    labels, feats = _clustered_test_set()
    units = unit_features(feats)
    set_labels = torch.tensor([0, 0, 1, 1, 2, 2])  # two images per class: removing one keeps the class
    gen = torch.Generator().manual_seed(2)
    # image i helps exactly one sub-cluster of its class: coherent by label and beyond it
    sub = [list(range(10 * c + 5 * s, 10 * c + 5 * s + 5)) for c in range(3) for s in range(2)]
    coherent = [coherence(_influence_toward(sub, 30, 0.01, gen), 5, set_labels, labels, units, 3) for _ in range(3)]
    assert coherent[0]["label"] == pytest.approx(1 - 1 / 3) and coherent[0]["features"] > 0.2
    # image i helps its class, but across both sub-clusters alike: coherent by label, not beyond it
    mixed = [[10 * c + j for j in (0, 1, 5, 6)] for c in (0, 0, 1, 1, 2, 2)]
    flat = coherence(_influence_toward(mixed, 30, 0.001, gen), 4, set_labels, labels, units, 3)
    assert flat["label"] == pytest.approx(2 / 3) and flat["features"] < coherent[0]["features"] / 3
    # influence that is pure noise: both statistics near 0 on average, the verdicts not "holds"
    noise = [coherence(torch.randn(6, 30, generator=gen), 5, set_labels, labels, units, 3) for _ in range(6)]
    label_f, feat_f = judge("ctl", "influence", noise, 5, control=True)
    assert label_f.verdict != HOLDS and feat_f.verdict != HOLDS and label_f.control
    label_f, feat_f = judge("dm", "influence", coherent, 5)
    assert (label_f.id, feat_f.id) == ("influence_label", "influence_features")
    assert label_f.verdict == HOLDS and feat_f.verdict == HOLDS and feat_f.n == 3
    assert feat_f.unit_of_n == "initializations"
    # one image per class: the label statistic is trivial and not judged; the feature one still is
    one = [coherence(_influence_toward(sub[::2], 30, 0.01, gen), 5, torch.tensor([0, 1, 2]), labels, units, 3)
           for _ in range(3)]
    label_f, feat_f = judge("dm", "influence", one, 5)
    assert one[0]["label"] is None and label_f.verdict == INCONCLUSIVE and "removes its class" in label_f.reason
    assert feat_f.verdict == HOLDS
    assert judge("dm", "influence", one, 1, no_features="no feature space: x")[1].reason == "no feature space: x"


def test_influence_probe_returns_both_findings_per_set(make_ctx, random_set):
    from ddprobe import registry

    ctx = make_ctx(sets={"r2": random_set(2), "r1": random_set(1, seed=1)}, models=SMALL,
                   recipe=TrainRecipe(steps=20), pretrain=TrainRecipe(epochs=1, batch_size=256, steps=None))
    ctx.controls = {"r1"}
    probe = registry.get_probe("influence")
    res = probe.run(ctx, probe.Options(inits=2, k=3, test_images=60, gallery_classes=0, backends=["cg"]))
    found = {(f.id, f.set): f for f in res.findings}
    assert set(found) == {(i, s) for i in ("influence_label", "influence_features") for s in ("r1", "r2")}
    assert found["influence_label", "r1"].verdict == INCONCLUSIVE  # one image per class
    assert found["influence_label", "r2"].n == 2 and found["influence_features", "r2"].n == 2
    assert found["influence_features", "r1"].control and not found["influence_features", "r2"].control
    assert res.metrics["r2/coherence_features"] == found["influence_features", "r2"].effect
