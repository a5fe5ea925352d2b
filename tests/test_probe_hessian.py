"""The ``hessian`` probe end to end on digits with small settings."""

from __future__ import annotations

import torch

from ddprobe import registry
from ddprobe.builtin.probe_hessian import PAPER_RECIPE, Hessian, ema
from ddprobe.cache import Cache
from ddprobe.plan import PlanContext

SMALL = {"convnet": ("convnet", {"width": 8, "depth": 2})}


def test_registered_and_defaults_are_the_papers():
    probe = registry.get_probe("hessian")
    assert isinstance(probe, Hessian)
    opts = probe.Options()
    recipe = opts.recipe.apply(PAPER_RECIPE)
    assert (recipe.batch_size, recipe.lr, recipe.momentum, recipe.steps, recipe.optimizer) == (256, 0.01, 0.9, 300,
                                                                                               "sgd")
    assert opts.checkpoints == 1


def test_ema_matches_paper():
    import pytest

    assert ema([0.0, 10.0, 10.0]) == pytest.approx([0.0, 1.0, 1.9])
    # checkpoints 2 steps apart smooth like the per-step EMA of a curve held between them
    assert ema([0.0, 10.0], steps=[0, 2]) == pytest.approx([0.0, 1.9])


def test_probe_end_to_end(make_ctx, random_set):
    ctx = make_ctx(sets={"random2": random_set(2)}, models=SMALL)
    probe = Hessian()
    opts = probe.Options(recipe={"steps": 4}, checkpoints=4, real_subsample=100, budget=24, rtol=0.5, top_k=2)
    res = probe.run(ctx, opts)
    traces = res.tables["traces"]
    assert len(traces) == 2 * 2 and set(traces.set) == {"real", "random2"}
    assert traces.products.max() <= 24
    assert res.metrics["products/max_per_checkpoint"] <= 2 * 24
    assert res.info["real_examples"] == 100 and res.info["checkpoints"] == [0, 4]
    for key in ("real/trace_final", "real/peak_step", "random2/trace_final", "random2/final_ratio",
                "random2/overlap_final", "real/lambda_max_final"):
        assert key in res.metrics, key
    assert 0.0 <= res.metrics["random2/overlap_final"] <= 1.0 + 1e-9
    assert res.metrics["random2/final_ratio"] == res.metrics["random2/trace_final"] / res.metrics["real/trace_final"]
    assert res.figures["traces"].exists()
    eigen = res.tables["eigen"]
    assert len(eigen) == 2 * 2 * 2
    assert bool((eigen.error_bound <= eigen.residual).all())
    # deterministic for the study seed: recomputed (not read from the cache), the same numbers
    fresh = make_ctx(sets={"random2": random_set(2)}, models=SMALL)
    fresh.cache = Cache(fresh.cache.root, read=False)
    again = probe.run(fresh, opts)
    assert again.info["estimates_from_cache"] == 0
    assert again.tables["traces"].trace.tolist() == traces.trace.tolist()
    assert again.tables["eigen"].eigenvalue.tolist() == eigen.eigenvalue.tolist()


def test_interrupted_run_resumes_at_the_first_unfinished_checkpoint(make_ctx, random_set, tmp_path, monkeypatch):
    """The paper's analysis runs for hours: a study stopped mid-probe computes only what is left when rerun, and
    ends with exactly the numbers of an uninterrupted run."""
    import pytest

    opts = Hessian.Options(recipe={"steps": 4}, checkpoints=1, real_subsample=100, budget=24, rtol=0.5, top_k=2)
    whole = Hessian().run(make_ctx(sets={"random2": random_set(2)}, models=SMALL), opts)

    calls = []
    measure = Hessian._measure

    def counted(*args, **kwargs):
        calls.append(1)
        if interrupt_at is not None and len(calls) == interrupt_at:
            raise KeyboardInterrupt
        return measure(*args, **kwargs)

    monkeypatch.setattr(Hessian, "_measure", staticmethod(counted))
    ctx = make_ctx(sets={"random2": random_set(2)}, models=SMALL)
    ctx.cache = Cache(tmp_path / "interrupted")
    interrupt_at = 7  # 2 sets per checkpoint: steps 0, 1, 2 are done, step 3 is not
    with pytest.raises(KeyboardInterrupt):
        Hessian().run(ctx, opts)

    def planned() -> list[tuple[int, bool]]:  # (checkpoints to measure, cached) per set, as `ddprobe plan` sees it
        pctx = PlanContext(ctx.seed, ctx.real, ctx.models, ctx.recipe, ctx.pretrain_recipe, ctx.cache, ctx.data_key,
                           "cpu", sets={n: {"sha256": ds.manifest.sha256, "images": len(ds)}
                                        for n, ds in ctx.distilled.items()})
        return [(item.count, item.cached) for item in Hessian().plan(pctx, opts) if item.kind == "hvp"]

    assert planned() == [(2, False), (2, False)]  # real and random2: steps 3 and 4 are left
    calls.clear()
    interrupt_at = None
    resumed = Hessian().run(ctx, opts)
    assert len(calls) == 4  # steps 3 and 4, both sets
    assert resumed.info["estimates_from_cache"] == 6
    for table in ("traces", "eigen", "overlap"):
        assert resumed.tables[table].equals(whole.tables[table]), table
    assert resumed.metrics == whole.metrics
    assert planned() == [(0, True), (0, True)]

    # another choice of checkpoints among those measured computes nothing
    calls.clear()
    Hessian().run(ctx, opts.model_copy(update={"checkpoints": [0, 2, 4]}))
    assert calls == []


def test_worker_processes_give_the_same_numbers(make_ctx, random_set, tmp_path, monkeypatch):
    """With [study] workers > 1 the checkpoints are measured in worker processes, each from the checkpoint's weights
    and its own generator: the same tables as measuring in the training process."""
    opts = Hessian.Options(recipe={"steps": 4}, checkpoints=1, real_subsample=100, budget=24, rtol=0.5, top_k=2)
    from ddprobe import executor

    batches = []
    original = executor.process_map
    monkeypatch.setattr(executor, "process_map", lambda fn, items, **kw: batches.append(
        (len(items), kw["workers"])) or original(fn, items, **kw))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in the workers, so that reductions add in the same order
    try:
        serial = Hessian().run(make_ctx(sets={"random2": random_set(2)}, models=SMALL), opts)
        ctx = make_ctx(sets={"random2": random_set(2)}, models=SMALL)
        ctx.cache, ctx.workers = Cache(tmp_path / "workers"), 2
        parallel = Hessian().run(ctx, opts)
    finally:
        torch.set_num_threads(threads)
    assert parallel.info["estimates_from_cache"] == 0 and ctx.cache.misses["hessian-checkpoints"] == 10
    assert batches == [(4, 2), (4, 2), (2, 2)]  # 2 checkpoints x 2 sets at a time, the last one alone
    for table in ("traces", "eigen", "overlap"):
        assert parallel.tables[table].equals(serial.tables[table]), table


def test_measuring_does_not_change_the_training_run(make_ctx, digits):
    """The run with curvature checkpoints ends at exactly the same weights as one without."""
    from ddprobe.curvature import HessianOperator, hutchpp, lanczos

    ctx = make_ctx(models=SMALL)
    recipe = PAPER_RECIPE.model_copy(update={"steps": 3})
    data = digits.train.subset(torch.arange(300))

    def measure(state):
        op = HessianOperator(state.model, data)
        hutchpp(op, rtol=None, max_products=8, sketch=2, generator=torch.Generator().manual_seed(0))
        lanczos(op, k=1, max_iter=4, generator=torch.Generator().manual_seed(0))

    a = ctx.build_model("convnet", seed_name="x")
    ctx.train(a, digits.train, recipe, seed_name="x", callbacks=[measure])
    b = ctx.build_model("convnet", seed_name="x")
    ctx.train(b, digits.train, recipe, seed_name="x")
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(pa, pb)


def test_pyhessian_stop_needs_hutchinson(make_ctx):
    import pytest

    probe = Hessian()
    with pytest.raises(ValueError, match="needs estimator"):
        probe.run(make_ctx(models=SMALL), probe.Options(stop="pyhessian-0.1"))


def test_probe_minibatch_estimator(make_ctx, random_set):
    ctx = make_ctx(sets={"random1": random_set(1)}, models=SMALL)
    probe = Hessian()
    res = probe.run(ctx, probe.Options(recipe={"steps": 2}, checkpoints=2, estimator="minibatch", minibatch_size=64,
                                       budget=12, rtol=0.5))
    traces = res.tables["traces"]
    assert len(traces) == 4 and traces.products.max() <= 12
    assert res.info["real_examples"] == 1437


def test_auto_estimator_uses_minibatches_only_for_large_sets(make_ctx, random_set):
    ctx = make_ctx(sets={"random1": random_set(1)}, models=SMALL)
    probe = Hessian()
    assert probe.Options().estimator == "auto"
    res = probe.run(ctx, probe.Options(recipe={"steps": 1}, checkpoints=1, minibatch_size=64, budget=12, rtol=0.5))
    used = res.tables["traces"].groupby("set").estimator.unique().to_dict()
    assert {k: list(v) for k, v in used.items()} == {"real": ["minibatch"], "random1": ["hutchpp"]}
    res = probe.run(ctx, probe.Options(recipe={"steps": 1}, checkpoints=1, minibatch_size=400, budget=12, rtol=0.5))
    assert set(res.tables["traces"].estimator) == {"hutchpp"}  # 1437 real images < 4 x 400


def test_budget_must_leave_room_for_the_trace(make_ctx):
    import pytest

    probe = Hessian()
    with pytest.raises(ValueError, match="raise budget"):
        probe.run(make_ctx(models=SMALL), probe.Options(top_k=10, budget=16))


TINY_MLP = {"mlp": ("mlp", {"hidden": 4, "depth": 1})}  # 64*4 + 4 + 4*10 + 10 = 310 parameters


def test_exact_estimator_is_the_explicit_trace(make_ctx, random_set):
    import pytest

    from ddprobe.curvature import HessianOperator, dense_matrix

    ctx = make_ctx(sets={"random1": random_set(1)}, models=TINY_MLP)
    probe = Hessian()
    res = probe.run(ctx, probe.Options(recipe={"steps": 2}, checkpoints=[0], estimator="exact", budget=400))
    traces = res.tables["traces"].set_index("set")
    assert set(traces.estimator) == {"exact"} and (traces.stderr == 0).all() and (traces.products == 310).all()
    net = ctx.build_model("mlp", seed_name="hessian")  # step 0: the run's initialization
    for name, data in {"real": ctx.real.train, "random1": ctx.distilled["random1"]}.items():
        explicit = float(torch.trace(dense_matrix(HessianOperator(net, data))))
        assert traces.trace[name] == pytest.approx(explicit, rel=1e-5), name
    # 'auto' abandons an estimate that cannot reach its target affordably for the exact trace, within budget
    res = probe.run(ctx, probe.Options(recipe={"steps": 2}, checkpoints=[0], rtol=1e-6, budget=3000))
    assert set(res.tables["traces"].estimator) == {"exact"}
    assert res.tables["traces"].set_index("set").trace["real"] == pytest.approx(traces.trace["real"], rel=1e-5)
    with pytest.raises(ValueError, match="needs one product per parameter: 310 .* at least 310"):
        probe.run(ctx, probe.Options(recipe={"steps": 2}, checkpoints=[0], estimator="exact", budget=300))
