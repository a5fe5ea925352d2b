"""Per-retrain time of leave-one-out retraining, each way side by side (docs/benchmarks.md, section Influence).

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/bench_influence.py --ipc 10 --steps 300 --retrains 6

Ways: the core ``training.train`` one model at a time (what a probe gets from ``ctx.train``); the lean ``fit`` loop
one at a time with 1 and 2 intra-op threads; the lean loop in 2 worker processes of 1 thread each
(``exact_loo(strategy="processes")``); and ``torch.func.vmap`` over a stack of models (``strategy="vmap"``).
Every way trains the same leave-one-out subsets from the same initialization; the script checks that they agree.
"""

from __future__ import annotations

import argparse
import copy
import json
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
    args = parser.parse_args()

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


if __name__ == "__main__":
    main()
