"""Serial vs local processes vs Ray (a local 2-CPU instance) on two bags of independent trainings, side by side.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_executors.py

1. An agreement subset pool (``ddprobe.pools.subset_pool``) of ``--models`` MLPs (hidden 64) on digits, each trained
   for ``--epochs`` epochs (batch 64) on a random per-class fraction (5-20%) of the real training set, trained one
   by one (``mode="sequential"``: one task per few models)
   and stacked (``mode="batched"``, ``chunk`` models per task).
2. One leave-one-out bag (``ddprobe.influence.exact_loo``): ``n + 2`` full-batch retrainings (``--loo-steps``) of
   the MLP on the first 10 real training images of each class.
3. The distilled sets of a study (``ddprobe.study.prepare``): DM and MTT at 1 and 10 images per class with an MLP
   (``--distill-iterations``), MTT's ``--experts`` expert trajectories first (``prepare``, a bag of its own), then
   one task per set; the random-real controls are made on the driver.

Every executor first trains a tiny pool (not timed), so a Ray worker's one-time imports are not counted; the Ray
instance's start-up is printed separately.

Each bag runs with a fresh cache on each executor; the script prints wall seconds, the per-task overhead of each
executor (a map of trivial tasks), and whether every executor's results are identical to the serial run's.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")


def _noop(shared, item):
    return item


def context(executor: str, cache_dir: Path, workers: int):
    from ddprobe import registry
    from ddprobe.cache import Cache
    from ddprobe.context import ModelSpec, StudyContext
    from ddprobe.training import TrainRecipe

    digits = registry.get_dataset("digits")
    real = digits.load(digits.Options(), Path.cwd())
    mlp = registry.get_model("mlp")
    models = {"mlp": ModelSpec("mlp", "mlp", mlp.Options(hidden=64), mlp)}
    return StudyContext(0, real, models, TrainRecipe(steps=100), Cache(cache_dir), "cpu",
                        data_key={"dataset": "digits"}, workers=workers, executor_kind=executor)


def distill_study(executor: str, args: argparse.Namespace) -> tuple[float, dict[str, str]]:
    """Wall seconds of making a study's distilled sets on ``executor`` with a fresh cache, and each set's hash."""
    from ddprobe.spec import load_spec
    from ddprobe.study import prepare

    mlp = {"model": "mlp", "iterations": args.distill_iterations}
    mtt = {**mlp, "distiller": "mtt", "num_experts": args.experts, "expert_train_epochs": 4, "expert_epochs": 2,
           "max_start_epoch": 2, "syn_steps": 10, "lr_img": 10.0}
    with tempfile.TemporaryDirectory() as d:
        spec = load_spec({
            "study": {"seed": 0, "executor": executor, "workers": args.workers, "cache_dir": d},
            "models": {"mlp": {"arch": "mlp", "hidden": 64}},
            "distilled": {"dm1": {**mlp, "distiller": "dm", "ipc": 1}, "dm10": {**mlp, "distiller": "dm", "ipc": 10},
                          "mtt1": {**mtt, "ipc": 1}, "mtt10": {**mtt, "ipc": 10}},
        })
        t = time.perf_counter()
        study = prepare(spec, Path(d) / "out")
        seconds = time.perf_counter() - t
        assert not study.errors, study.errors
        return seconds, {n: r.sha256 for n, r in study.distilled.items()}


def bench_pools(args: argparse.Namespace, ray_ex, rows: list) -> None:
    """An agreement subset pool, one by one and stacked, on each executor."""
    import torch

    from ddprobe.pools import subset_pool
    from ddprobe.training import TrainRecipe

    recipe = TrainRecipe(epochs=args.epochs, batch_size=64, lr=0.05)
    reference = {}
    for name in ("serial", "processes", "ray"):  # warm-up: a Ray worker imports torch and ddprobe once, not timed
        with tempfile.TemporaryDirectory() as d:
            for mode in ("sequential", "batched"):
                subset_pool(context(name, Path(d), args.workers), "mlp", 4, (0.05, 0.2),
                            TrainRecipe(epochs=1, batch_size=64), mode=mode, chunk=2)
    for mode in ("sequential", "batched"):
        for name in ("serial", "processes", "ray"):
            with tempfile.TemporaryDirectory() as d:
                ctx = context(name, Path(d), args.workers)
                t = time.perf_counter()
                pool = subset_pool(ctx, "mlp", args.models, (0.05, 0.2), recipe, mode=mode, chunk=args.chunk)
                seconds = time.perf_counter() - t
            result = (pool.predictions, pool.accuracy)
            reference.setdefault(mode, result)
            same = all(torch.equal(a, b) for a, b in zip(result, reference[mode], strict=True))
            rows.append((f"subset pool, {args.models} models, {mode}", name, seconds, same))
            print(rows[-1], flush=True)


def bench_loo(args: argparse.Namespace, ray_ex, rows: list) -> None:
    """One leave-one-out bag on each executor."""
    import torch

    from ddprobe import influence as inf
    from ddprobe.executor import make_executor
    from ddprobe.training import TrainRecipe

    ctx = context("serial", Path(tempfile.mkdtemp()), 1)
    idx = torch.cat([torch.nonzero(ctx.real.train.labels == c).flatten()[:10] for c in range(10)])
    images, labels = ctx.real.train.images[idx], ctx.real.train.labels[idx]
    test = ctx.real.test
    init = ctx.build_model("mlp", "bench:loo")
    loo_recipe = TrainRecipe(steps=args.loo_steps, batch_size="full", lr=0.01)
    loo_ref = None
    for name in ("serial", "processes", "ray"):
        ex = ray_ex if name == "ray" else make_executor(name, args.workers)
        t = time.perf_counter()
        res = inf.exact_loo(init, images, labels, test.images, test.labels, loo_recipe, strategy="processes",
                            workers=max(1, ex.workers), executor=ex, noise_generator=torch.Generator().manual_seed(1))
        seconds = time.perf_counter() - t
        loo_ref = loo_ref if loo_ref is not None else res
        same = torch.equal(res.influence, loo_ref.influence) and torch.equal(res.noise, loo_ref.noise)
        rows.append((f"leave-one-out bag, {len(idx) + 2} retrainings", name, seconds, same))
        print(rows[-1], flush=True)


def bench_sets(args: argparse.Namespace, ray_ex, rows: list) -> None:
    """A study's four distilled sets (and MTT's experts) on each executor."""
    warm = argparse.Namespace(**{**vars(args), "distill_iterations": 2, "experts": 2})
    for name in ("serial", "processes", "ray"):  # warm-up, not timed: first calls of the distillers and DSA
        distill_study(name, warm)
    reference = None
    for name in ("serial", "processes", "ray"):
        seconds, hashes = distill_study(name, args)
        reference = reference or hashes
        rows.append((f"4 distilled sets (DM, MTT x 1 and 10 ipc, {args.distill_iterations} iterations; "
                     f"{args.experts} experts)", name, seconds, hashes == reference))
        print(rows[-1], flush=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", type=int, default=64)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--chunk", type=int, default=16)
    ap.add_argument("--epochs", type=int, default=20, help="epochs of each pool member over its subset")
    ap.add_argument("--loo-steps", type=int, default=300, help="full-batch steps of each leave-one-out retraining")
    ap.add_argument("--distill-iterations", type=int, default=400, help="iterations of each distilled set")
    ap.add_argument("--experts", type=int, default=8, help="MTT expert trajectories (shared by both MTT sets)")
    ap.add_argument("--bags", default="pools,loo,sets", help="which bags to time, comma-separated")
    args = ap.parse_args()

    import torch

    torch.set_num_threads(1)
    from ddprobe.executor import RayOptions, make_executor

    print(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()} at start; torch threads 1 per task")
    t = time.perf_counter()
    ray_ex = make_executor("ray", args.workers, RayOptions(local_cpus=args.workers))
    ray_ex.connect()
    print(f"Ray local instance ({args.workers} CPUs) started in {time.perf_counter() - t:.1f} s (not counted below)")

    print("\n| executor | per-task overhead (ms, 200 trivial tasks) |\n|---|---|")
    for name in ("serial", "processes", "ray"):
        ex = ray_ex if name == "ray" else make_executor(name, args.workers)
        ex.map(_noop, range(8), shared=b"x")  # warm-up
        t = time.perf_counter()
        ex.map(_noop, range(200), shared=b"x")
        print(f"| {name} | {(time.perf_counter() - t) / 200 * 1000:.2f} |")

    rows: list[tuple[str, str, float, bool]] = []
    bags = {"pools": bench_pools, "loo": bench_loo, "sets": bench_sets}
    for bag in args.bags.split(","):
        bags[bag](args, ray_ex, rows)
    ray_ex.close()

    print(f"\nload average at end {os.getloadavg()}")
    print("\n| bag | executor | wall s | speed-up vs serial | identical to serial |\n|---|---|---|---|---|")
    base = {}
    for bag, name, seconds, same in rows:
        base.setdefault(bag, seconds)
        print(f"| {bag} | {name} | {seconds:.1f} | {base[bag] / seconds:.2f}x | {'yes' if same else 'NO'} |")


if __name__ == "__main__":
    main()
