"""Per-retrain time of leave-one-out retraining, each way side by side (docs/benchmarks.md, section Influence).

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/bench_influence.py --ipc 10 --steps 300 --retrains 6

Ways: the core ``training.train`` one model at a time (what a probe gets from ``ctx.train``); the lean ``fit`` loop
one at a time with 1 and 2 intra-op threads; the lean loop in 2 worker processes of 1 thread each
(``exact_loo(strategy="processes")``); and ``torch.func.vmap`` over a stack of models (``strategy="vmap"``).
Every way trains the same leave-one-out subsets from the same initialization; the script checks that they agree.

``--peers`` instead compares influence backends with peer libraries (benchmark-only dependencies: kronfluence 1.0.1,
dattri 0.3.0) on the model trained on all images, against exact leave-one-out of the same initialization (computed
once and kept in ``--loo``, default runs/bench-influence-loo.pt):

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_influence.py --peers --repeats 3
"""

from __future__ import annotations

import argparse
import contextlib
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


_DATTRI_BUDGET = 16e9  # bytes one dattri method may need before it is skipped (the VM has 24 GB, shared)


def _activation_floats(model, x) -> int:
    """Floats of every leaf module's output for one example: what a batched pass through the network carries."""
    sizes: list[int] = []
    hooks = [m.register_forward_hook(lambda _m, _i, o: sizes.append(o[0].numel()))
             for m in model.modules() if not list(m.children())]
    with torch.no_grad():
        model(x[:1])
    for h in hooks:
        h.remove()
    return sum(sizes)


def _dattri(method: str, scope: str, model, x, y, tx, ty, damping: float):
    """dattri 0.3.0 scores ``[n_train, n_test]`` = ``g_train . (H + damping I)^-1 g_test`` of the mean training loss
    (same orientation as kronfluence's and ddprobe's: positive = removing the example raises the test loss).

    dattri's own API: ``AttributionTask`` on the whole model (``layer_name`` for the head; its ``partial_param``
    still runs every product through the whole network, so memory grows with the network even for the head), or
    on the head module alone with the frozen body's features as its inputs (``scope="head features"``). The
    memory each method needs is estimated before it runs (activations per example x training images x the
    vectors it batches); above ``_DATTRI_BUDGET`` the row is skipped with the reason, and a soft address-space
    limit turns a wrong estimate into a failed row instead of a machine out of memory."""
    import resource

    from dattri.algorithm.influence_function import (
        IFAttributorCG,
        IFAttributorEKFAC,
        IFAttributorExplicit,
        IFAttributorLiSSA,
    )
    from dattri.task import AttributionTask
    from torch.nn import functional as F

    model = copy.deepcopy(model).eval()
    for p in model.parameters():
        p.requires_grad_(True)
    layer_name = ["head.weight", "head.bias"] if scope == "head" else None
    if scope == "head features":  # the head alone on features the frozen body computes once (same Hessian)
        with torch.no_grad():
            x, tx = model.embed(x), model.embed(tx)
        model = model.head
    p_scope = sum(p.numel() for n, p in model.named_parameters() if layer_name is None or n in layer_name)
    act = len(y) * _activation_floats(model, x) * 4  # bytes of every module output over the training images
    test_batch = len(ty)
    if method == "explicit":  # torch.func.hessian: forward mode over all p_scope tangents at once, through the
        need = 4 * p_scope * act + 3 * p_scope ** 2 * 4  # network (measured: > 17.8 GB for the head, whole model)
    elif method == "cg":  # vmap over a test chunk of rev-rev Hessian-vector products, its 10 CG iterations
        per_vector = 48 * act  # measured: 1.0 GB for a chunk of 7 columns on all parameters
        test_batch = max(1, min(len(ty), int(4e9 // per_vector)))
        need = test_batch * per_vector
    elif method == "lissa":  # vmap over the test columns of 5000 one-example Hessian-vector products in sequence
        need = len(ty) * 32 * act // len(y)  # (its memory grew with the steps before the no_grad below)
    else:  # ekfac: per-layer covariances of dattri's Linear modules
        need = 0
    info = {"params": p_scope, "estimated_gb": round(need / 1e9, 1), "test_batch": test_batch}
    if need > _DATTRI_BUDGET:
        info["error"] = f"estimated {need / 1e9:.0f} GB > {_DATTRI_BUDGET / 1e9:.0f} GB budget: not run"
        return None, {"status": "skipped", **info}

    def loss(params, data):
        images, labels = data  # .long(): dattri's LiSSA collate function casts the labels to float
        return F.cross_entropy(torch.func.functional_call(model, params, images), labels.long())

    task = AttributionTask(loss_func=loss, model=model, checkpoints=model.state_dict())
    if method == "explicit":
        att = IFAttributorExplicit(task, layer_name=layer_name, regularization=damping)
    elif method == "cg":
        att = IFAttributorCG(task, layer_name=layer_name, regularization=damping)  # its default max_iter 10
    elif method == "lissa":  # its defaults (5000 steps of one example, scaling 50); its damping d acts as
        att = IFAttributorLiSSA(task, layer_name=layer_name, damping=damping / 50)  # 50 d on the Hessian
    else:
        att = IFAttributorEKFAC(task, damping=damping)  # its default: every nn.Linear (here the head)
    loader = torch.utils.data.DataLoader
    train = loader(torch.utils.data.TensorDataset(x, y), batch_size=len(y), shuffle=False)
    test = loader(torch.utils.data.TensorDataset(tx, ty), batch_size=test_batch, shuffle=False)
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    limit = int(_DATTRI_BUDGET + 4e9)  # + torch's own address space
    resource.setrlimit(resource.RLIMIT_AS, (limit if hard == resource.RLIM_INFINITY else min(limit, hard), hard))
    try:
        att.cache(train)
        # CG, LiSSA: else each test chunk's (LiSSA: step's) autograd graph stays alive through the score matrix
        # (torch.func's transforms ignore an outer no_grad); explicit: its forward-over-reverse Hessian of the
        # instance norm then needs a forward derivative torch lacks, so it keeps dattri's plain call
        with torch.no_grad() if method in ("cg", "lissa") else contextlib.nullcontext():
            scores = att.attribute(train, test).detach()
    except (RuntimeError, MemoryError) as e:
        return None, {"status": "failed", **info, "error": str(e)[:200]}
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))
    return scores, {"status": "ok", **info}


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

    def dattri(method, scope, damping=0.01):  # ddprobe's default damping, where dattri's default is 0
        def run():
            return _dattri(method, scope, model, x, y, tx, ty, damping)
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
        "dattri explicit (head)": dattri("explicit", "head"),
        "dattri cg (head)": dattri("cg", "head"),
        "dattri explicit (head on features)": dattri("explicit", "head features"),
        "dattri cg (head on features)": dattri("cg", "head features"),
        "dattri lissa (head on features)": dattri("lissa", "head features"),
        "dattri ekfac (head, its Linear modules)": dattri("ekfac", "head"),
        "dattri explicit (all)": dattri("explicit", "all"),
        "dattri cg (all)": dattri("cg", "all"),
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
