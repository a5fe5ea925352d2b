"""The ``influence`` probe end to end on digits."""

from __future__ import annotations

import math

import pytest
from pydantic import ValidationError

from ddprobe.training import TrainRecipe


def _probe():
    from ddprobe import registry

    return registry.get_probe("influence")


def test_options_are_validated():
    probe = _probe()
    with pytest.raises(ValidationError, match="did you mean 'lissa'"):
        probe.Options(backends=["lisa"])
    with pytest.raises(ValidationError, match="depth"):
        probe.Options(backend_options={"lissa": {"depth": 0}})
    with pytest.raises(ValidationError, match="not listed"):
        probe.Options(backends=["cg"], backend_options={"lissa": {"depth": 5}})
    assert probe.Options().inits == 3 and probe.Options().k == 9


def test_influence_probe_end_to_end(make_ctx, random_set):
    ds = random_set(ipc=1)
    ctx = make_ctx(sets={"rand1": ds}, models={"convnet": ("convnet", {"width": 8, "depth": 2})},
                   recipe=TrainRecipe(steps=30), pretrain=TrainRecipe(epochs=1, batch_size=256, steps=None))
    probe = _probe()
    opts = probe.Options(inits=2, k=4, test_images=120, gallery_classes=2, reverse=True, reverse_pool=300,
                         tracin_checkpoints=5, backend_options={"lissa": {"depth": 100}, "cg": {"max_iter": 30}})
    res = probe.run(ctx, opts)
    m = res.metrics
    for key in ("label_agreement", "label_agreement_chance", "rank_agreement", "noise_floor", "above_noise",
                "reverse_label_agreement"):
        assert math.isfinite(m[f"rand1/{key}"]), key
    # wall-clock measurements are timings, never metrics (two identical runs have identical metrics)
    assert not [k for k in m if "seconds" in k]
    assert res.timings["rand1/seconds_per_retrain"] > 0 and res.timings["rand1/audit/explicit/seconds"] >= 0
    assert 0 <= m["rand1/label_agreement"] <= 1 and m["rand1/noise_floor"] < 1e-3
    audit = res.tables["audit"]
    assert list(audit.backend) == ["explicit", "cg", "lissa", "arnoldi", "ekfac", "tracin"]
    for row in audit.itertuples():
        assert row.status in ("ok", "diverged", "failed")
        if row.status == "ok":
            assert -1 <= row.spearman <= 1 and math.isfinite(m[f"rand1/audit/{row.backend}/spearman"])
        assert row.seconds >= 0
    top = res.tables["top_k"]
    assert len(top) == 10 * 2 * 4 and set(top.direction) == {"helped", "harmed"}
    helped = top[top.direction == "helped"]
    assert (helped.groupby("distilled").influence.apply(lambda s: s.is_monotonic_decreasing)).all()
    assert len(res.tables["reverse"]) == 10 * 4
    assert len(res.figures) == 2 and all(p.exists() for p in res.figures.values())
    assert res.info["sets"]["rand1"]["full_run_check"] < 1e-5  # the audited model is the exact full run
    decisions = res.info["sets"]["rand1"]["compile"]  # [study] compile = auto: small bags train eagerly
    assert decisions and all(d["setting"] == "auto" and d["compile"] is False for d in decisions)
    assert "label agreement" in res.summary
    # a second run recomputes no leave-one-out retraining
    before = dict(ctx.cache.misses)
    again = probe.run(ctx, opts.model_copy(update={"backends": ["cg"], "backend_options": {}, "reverse": False,
                                                   "gallery_classes": 0}))
    assert ctx.cache.misses["influence-loo"] == before["influence-loo"] and ctx.cache.hits["influence-loo"] == 2
    assert again.metrics["rand1/label_agreement"] == m["rand1/label_agreement"]
