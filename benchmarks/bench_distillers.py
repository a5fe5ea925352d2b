"""Benchmark the distillers on digits: test accuracy of a ConvNet trained on each set next to the random control.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_distillers.py --ipc 1 10 --seeds 5

Each distiller makes one set per images-per-class (study seed 0) with the digits settings below (the same ones
proposed for specs/study.toml); each set then trains ``--seeds`` fresh ConvNets (width 32, depth 2) with the
default recipe (full-batch SGD, lr 0.01, momentum 0.9, 300 steps) and the table reports the test accuracy
mean +- std over those seeds. The random control draws a new random real subset for each seed. Distillation time
is wall-clock and process CPU seconds (MTT's includes training its experts). Prints a markdown table.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

NET = {"arch": "convnet", "width": 32, "depth": 2}

# digits settings, per distiller, by images per class (anything not listed keeps the reference default)
SETTINGS: dict[str, dict[int, dict]] = {
    "dm": {1: dict(iterations=300), 10: dict(iterations=300)},
    "dc": {1: dict(iterations=50, init="real", batch_real=64),
           10: dict(iterations=10, init="real", batch_real=64, inner_loop=10)},
    "mtt": {1: dict(iterations=150, num_experts=4, expert_train_epochs=10, lr_teacher=0.1, syn_steps=10,
                    max_start_epoch=2, lr_img=300.0, dsa=False),
            10: dict(iterations=150, num_experts=4, expert_train_epochs=10, lr_teacher=0.1, syn_steps=10,
                     max_start_epoch=2, lr_img=300.0, dsa=False)},
    "bptt": {1: dict(iterations=30, inner_steps=20, inner_lr=0.05, real_per_class=32, lr_img=1.0, init="real"),
             10: dict(iterations=30, inner_steps=20, inner_lr=0.05, real_per_class=32, lr_img=1.0, init="real")},
}


def main() -> None:
    import torch

    from ddprobe import registry
    from ddprobe.cache import Cache
    from ddprobe.context import DistillContext, ModelSpec
    from ddprobe.rng import seeded_init
    from ddprobe.training import TrainRecipe, evaluate, train

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ipc", type=int, nargs="+", default=[1, 10])
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--distillers", nargs="+", default=list(SETTINGS))
    args = ap.parse_args()
    torch.set_num_threads(1)

    dataset = registry.get_dataset("digits")
    real = dataset.load(dataset.Options(), REPO)
    model = registry.get_model("convnet")
    spec = ModelSpec("convnet", "convnet", model.Options(width=NET["width"], depth=NET["depth"]), model)
    recipe = TrainRecipe()
    cache_dir = Path(tempfile.mkdtemp(prefix="ddprobe-bench-"))

    def ctx(seed: int) -> DistillContext:
        return DistillContext(seed, real, {"convnet": spec}, recipe, Cache(cache_dir), "cpu",
                              data_key={"dataset": "digits"}, name="bench")

    def accuracy(ds, seed: int) -> float:
        with seeded_init(seed, "bench-eval"):
            net = spec.build(real.input_shape, real.num_classes)
        train(net, ds, recipe, generator=torch.Generator().manual_seed(seed))
        return evaluate(net, real.test)

    rows = []
    for ipc in args.ipc:
        rnd = registry.get_distiller("random")
        accs = [accuracy(rnd.distill(real, ipc, rnd.Options(), ctx(s)), s) for s in range(args.seeds)]
        rows.append((ipc, "random", accs, None, None, ""))
        print(f"ipc {ipc} random {statistics.mean(accs):.3f} ± {statistics.pstdev(accs):.3f} {accs}", flush=True)
        for name in args.distillers:
            plugin = registry.get_distiller(name)
            opts = plugin.Options(model=dict(NET), **SETTINGS[name][ipc])
            w0, c0 = time.perf_counter(), time.process_time()
            ds = plugin.distill(real, ipc, opts, ctx(0))
            wall, cpu = time.perf_counter() - w0, time.process_time() - c0
            accs = [accuracy(ds, s) for s in range(args.seeds)]
            shown = {k: v for k, v in SETTINGS[name][ipc].items()}
            rows.append((ipc, name, accs, wall, cpu, ", ".join(f"{k}={v}" for k, v in shown.items())))
            print(f"ipc {ipc} {name} {statistics.mean(accs):.3f} wall {wall:.1f}s cpu {cpu:.1f}s {accs}", flush=True)

    print()
    print("| ipc | set | test accuracy (mean ± std) | distill wall s | distill CPU s | settings |")
    print("|---|---|---|---|---|---|")
    for ipc, name, accs, wall, cpu, settings in rows:
        std = statistics.stdev(accs) if len(accs) > 1 else 0.0
        w = f"{wall:.1f}" if wall is not None else "–"
        c = f"{cpu:.1f}" if cpu is not None else "–"
        print(f"| {ipc} | {name} | {statistics.mean(accs):.3f} ± {std:.3f} | {w} | {c} | {settings} |")


if __name__ == "__main__":
    main()
