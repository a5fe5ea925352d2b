"""Per-retrain time of leave-one-out retraining, each way side by side (docs/benchmarks.md, section Influence).

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/bench_influence.py --ipc 10 --steps 300 --retrains 6

Ways: the core ``training.train`` one model at a time (what a probe gets from ``ctx.train``); the lean ``fit`` loop
one at a time with 1 and 2 intra-op threads; the lean loop in 2 worker processes of 1 thread each
(``exact_loo(strategy="processes")``); and ``torch.func.vmap`` over a stack of models (``strategy="vmap"``).
Every way trains the same leave-one-out subsets from the same initialization; the script checks that they agree.

``--peers`` instead compares influence backends with peer libraries (benchmark-only dependencies: kronfluence 1.0.1)
on the model trained on all images, against exact leave-one-out of the same initialization (computed once and kept
in ``--loo``, default runs/bench-influence-loo.pt):

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_influence.py --peers --repeats 3
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ipc", type=int, default=10)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--width", type=int, default=32)
    parser.add_argument("--retrains", type=int, default=6, help="leave-one-out retrainings timed per way")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--skip", nargs="*", default=[], choices=["threaded", "core", "vmap"],
                        help="leave out ways (threaded = the one-by-one rows with more than 1 thread)")
    parser.add_argument("--json", type=Path, help="write the rows as JSON here")
    parser.add_argument("--peers", action="store_true", help="compare influence backends with peer libraries")
    parser.add_argument("--loo", type=Path, default=REPO / "runs" / "bench-influence-loo.pt",
                        help="--peers: exact leave-one-out ground truth (computed and saved when missing)")
    parser.add_argument("--repeats", type=int, default=1, help="--peers: timed runs of each method (interleaved)")
    parser.add_argument("--methods", nargs="*", help="--peers: run only these rows (names as printed)")
    args = parser.parse_args()
    if args.peers:
        peers(args)
        return

    from ddprobe import influence as inf
    from ddprobe import registry
    from ddprobe.cache import Cache
    from ddprobe.context import DistillContext
    from ddprobe.data import LabeledData
    from ddprobe.nets import ConvNet
    from ddprobe.training import TrainRecipe, train

    plugin = registry.get_dataset("digits")
    real = plugin.load(plugin.Options(), REPO)
    rnd = registry.get_distiller("random")
    ds = rnd.distill(real, args.ipc, rnd.Options(), DistillContext(0, real, {}, TrainRecipe(), Cache(), "cpu"))
    dev = args.device
    x, y = ds.images.to(dev), ds.labels.to(dev)
    tx, ty = real.test.images.to(dev), real.test.labels.to(dev)
    n = len(ds)
    torch.manual_seed(0)
    init = ConvNet(1, 10, args.width, 2, im_size=(8, 8)).to(dev)
    recipe = TrainRecipe(steps=args.steps)
    subsets = inf.loo_subsets(n)[: args.retrains]
    rows, outputs = [], {}

    def timed(name: str, fn, threads: int, count: int) -> None:
        torch.set_num_threads(threads)
        t0 = time.perf_counter()
        outputs[name] = fn()
        sec = time.perf_counter() - t0
        rows.append({"way": name, "threads": threads, "retrains": count, "seconds": round(sec, 2),
                     "per_retrain_s": round(sec / count, 3)})
        print(rows[-1], flush=True)

    def core_serial():
        out = []
        for s in subsets:
            net = copy.deepcopy(init)
            train(net, LabeledData(x[s], y[s], real.classes), recipe, generator=torch.Generator().manual_seed(0))
            out.append(inf.test_outputs(net, tx, ty)[0])
        return torch.stack(out)

    def lean_serial():
        job = inf._Job(init, x, y, tx, ty, recipe)
        return torch.stack([inf._retrain(job, s)[0] for s in subsets])

    def processes():
        from ddprobe.executor import process_map

        job = inf._Job(copy.deepcopy(init).cpu(), x.cpu(), y.cpu(), tx.cpu(), ty.cpu(), recipe)
        chunks = [[(s, False) for s in subsets[i::args.workers]] for i in range(args.workers)]
        outs = process_map(inf._retrain_many, chunks, workers=args.workers, shared=job)
        order = [i for c in range(args.workers) for i in range(c, len(subsets), args.workers)]
        res = torch.cat([o[0] for o in outs])
        return res[torch.argsort(torch.tensor(order))]

    def vmapped():
        job = inf._Job(init, x, y, tx, ty, recipe)
        return inf._loo_vmapped(job, subsets, len(subsets), lambda k: None)[0]

    threads = torch.get_num_threads()
    if "core" not in args.skip:
        timed("core training.train, one by one", core_serial, 1, len(subsets))
    timed("lean fit, one by one", lean_serial, 1, len(subsets))
    if threads > 1 and "threaded" not in args.skip:
        if "core" not in args.skip:
            timed(f"core training.train, one by one ({threads} threads)", core_serial, threads, len(subsets))
        timed(f"lean fit, one by one ({threads} threads)", lean_serial, threads, len(subsets))
    timed(f"lean fit, {args.workers} worker processes x 1 thread", processes, threads, len(subsets))
    if "vmap" not in args.skip:
        timed(f"vmap, {len(subsets)} models stacked ({threads} threads)", vmapped, threads, len(subsets))
    torch.set_num_threads(threads)
    ref = outputs["lean fit, one by one"]
    for name, out in outputs.items():
        print(f"max |loss - lean| {name}: {float((out - ref).abs().max()):.2e}")
    base = rows[0]["per_retrain_s"]
    for r in rows:
        r["speedup_vs_core"] = round(base / r["per_retrain_s"], 2)
    meta = {"ipc": args.ipc, "images": n, "steps": args.steps, "width": args.width, "device": dev,
            "cpu": platform.processor() or platform.machine(), "torch": torch.__version__,
            "threads": threads, "test_images": len(ty)}
    print(json.dumps(meta))
    print("| way | per retrain (s) | speed-up vs core |\n|---|---:|---:|")
    for r in rows:
        print(f"| {r['way']} | {r['per_retrain_s']:.3f} | {r['speedup_vs_core']:.2f}x |")
    if args.json:
        args.json.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))


# ---------------------------------------------------------------------------------------------------------------
# --peers: influence backends side by side with peer libraries, against exact leave-one-out


def _setup(args):
    """The distilled-like set (random real images, ``ipc`` per class), the real test set and the initialization."""
    from ddprobe import registry
    from ddprobe.cache import Cache
    from ddprobe.context import DistillContext
    from ddprobe.nets import ConvNet
    from ddprobe.training import TrainRecipe

    plugin = registry.get_dataset("digits")
    real = plugin.load(plugin.Options(), REPO)
    rnd = registry.get_distiller("random")
    ds = rnd.distill(real, args.ipc, rnd.Options(), DistillContext(0, real, {}, TrainRecipe(), Cache(), "cpu"))
    torch.manual_seed(0)
    init = ConvNet(1, 10, args.width, 2, im_size=(8, 8))
    return ds.images, ds.labels, real.test.images, real.test.labels, init, TrainRecipe(steps=args.steps)


def ground_truth(args):
    """Exact leave-one-out (serial, one thread) and the reference run's trained model, cached in ``args.loo``."""
    from ddprobe import influence as inf

    x, y, tx, ty, init, recipe = _setup(args)
    key = {"ipc": args.ipc, "steps": args.steps, "width": args.width}
    if args.loo.exists():
        saved = torch.load(args.loo, weights_only=True)
        if saved["key"] == key:
            print(f"exact leave-one-out from {args.loo} ({saved['seconds']:.0f} s when computed)", flush=True)
            return x, y, tx, ty, init, recipe, saved
    print(f"computing exact leave-one-out: {len(y) + 2} retrainings", flush=True)
    res = inf.exact_loo(init, x, y, tx, ty, recipe, strategy="serial")
    saved = {"key": key, "influence": res.influence, "final": res.final_state, "seconds": res.seconds}
    args.loo.parent.mkdir(parents=True, exist_ok=True)
    torch.save(saved, args.loo)
    return x, y, tx, ty, init, recipe, saved


def _kronfluence(strategy: str, damping: float | None, model, x, y, tx, ty, out_dir: str):
    """kronfluence 1.0.1 pairwise scores ``[n_train, n_test]``: all Linear/Conv2d modules, its defaults otherwise
    (true Fisher from sampled labels, float32 covariances, float64 eigendecompositions)."""
    import logging

    from kronfluence.analyzer import Analyzer, prepare_model
    from kronfluence.arguments import FactorArguments, ScoreArguments
    from kronfluence.task import Task
    from torch.nn import functional as F

    class Classification(Task):
        def compute_train_loss(self, batch, model, sample=False):
            inputs, labels = batch
            logits = model(inputs)
            if sample:
                with torch.no_grad():
                    labels = torch.multinomial(torch.softmax(logits.detach(), -1), 1).flatten()
            return F.cross_entropy(logits, labels, reduction="sum")

        def compute_measurement(self, batch, model):
            inputs, labels = batch
            return F.cross_entropy(model(inputs), labels, reduction="sum")

    torch.manual_seed(0)  # the sampled labels of the true Fisher
    task = Classification()
    model = prepare_model(copy.deepcopy(model).eval(), task)
    analyzer = Analyzer("bench", model, task, cpu=True, disable_tqdm=True, output_dir=out_dir,
                        log_level=logging.WARNING)
    train = torch.utils.data.TensorDataset(x, y)
    test = torch.utils.data.TensorDataset(tx, ty)
    analyzer.fit_all_factors("f", train, per_device_batch_size=len(y), factor_args=FactorArguments(strategy=strategy),
                             overwrite_output_dir=True)
    analyzer.compute_pairwise_scores("s", "f", test, train, per_device_query_batch_size=len(ty),
                                     per_device_train_batch_size=len(y),
                                     score_args=ScoreArguments(damping_factor=damping), overwrite_output_dir=True)
    return analyzer.load_pairwise_scores("s")["all_modules"].T.contiguous()


def peers(args) -> None:
    import statistics
    import tempfile

    from ddprobe import influence as inf

    torch.set_num_threads(1)
    x, y, tx, ty, init, recipe, saved = ground_truth(args)
    exact = saved["influence"]
    model = copy.deepcopy(init)
    model.load_state_dict(saved["final"])
    model.eval()
    l2 = recipe.weight_decay

    def ddprobe(name, **options):
        def run():
            problem = inf.InfluenceProblem(model, x, y, tx, ty, lr=recipe.resolved_lr(), l2=l2)
            res = inf.get_backend(name, options).compute(problem)
            return res.scores, {"status": res.status, **{k: v for k, v in res.info.items() if k in (
                "iterations", "relative_residual", "negative_curvature", "curvature", "damping", "error")}}
        return run

    tmp = tempfile.mkdtemp(prefix="bench-influence-")

    def kron(strategy, damping):
        def run():
            return _kronfluence(strategy, damping, model, x, y, tx, ty, tmp), {"status": "ok"}
        return run

    methods = {
        "ddprobe cg (head)": ddprobe("cg"),
        "ddprobe ekfac (all)": ddprobe("ekfac"),
        "ddprobe kfac (all)": ddprobe("kfac"),
        "ddprobe ekfac (all, norms diagonal)": ddprobe("ekfac", others="diagonal"),
        "ddprobe cg (all, ggn)": ddprobe("cg", params="all"),
        "ddprobe cg (all, hessian)": ddprobe("cg", params="all", curvature="hessian"),
        "kronfluence ekfac (heuristic damping)": kron("ekfac", None),
        "kronfluence kfac (heuristic damping)": kron("kfac", None),
        "kronfluence ekfac (default damping 1e-8)": kron("ekfac", 1e-8),
    }
    if args.methods:
        unknown = set(args.methods) - set(methods)
        if unknown:
            raise SystemExit(f"unknown methods {sorted(unknown)}; valid: {list(methods)}")
        methods = {k: v for k, v in methods.items() if k in args.methods}
    times: dict[str, list[float]] = {k: [] for k in methods}
    results: dict[str, tuple] = {}
    for rep in range(args.repeats):  # interleaved, so that load drift hits every method alike
        for name, fn in methods.items():
            t0 = time.perf_counter()
            scores, info = fn()
            times[name].append(time.perf_counter() - t0)
            results[name] = (scores, info)
            print(f"repeat {rep}: {name}: {times[name][-1]:.2f} s {info}", flush=True)
    rows = []
    for name in methods:
        scores, info = results[name]
        corr = inf.correlations(scores, exact) if scores is not None else {}
        rows.append({"method": name, "seconds": round(statistics.median(times[name]), 3),
                     "all_seconds": [round(t, 3) for t in times[name]], **{k: round(v, 3) for k, v in corr.items()},
                     "info": info})
    meta = {"ipc": args.ipc, "images": len(y), "test_images": len(ty), "steps": args.steps, "width": args.width,
            "torch": torch.__version__, "threads": torch.get_num_threads(), "repeats": args.repeats,
            "loadavg": os.getloadavg(), "exact_loo_seconds": saved["seconds"]}
    print(json.dumps(meta))
    print("| method | seconds (median) | Pearson | Spearman | row Spearman | status |\n|---|---:|---:|---:|---:|---|")
    for r in rows:
        print(f"| {r['method']} | {r['seconds']:.2f} | {r.get('pearson', float('nan')):.3f} | "
              f"{r.get('spearman', float('nan')):.3f} | {r.get('row_spearman', float('nan')):.3f} | "
              f"{r['info'].get('status')} |")
    if args.json:
        args.json.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1, default=str))


if __name__ == "__main__":
    main()
