"""Compiled against eager training ([study] compile): per step, per pool bag and per leave-one-out bag, side by side.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_compile.py

Each bag is trained twice in one run, ``compile = "never"`` then ``"always"`` (same seeds, data and batches), so the
compiled time includes its one compile. The script also prints what ``auto`` decides for each bag before and after
the compiled run measured the gain and compile time, and the largest difference between the two modes' test logits
(leave-one-out losses). Compile seconds depend on TorchInductor's on-disk cache: the first run on a machine is cold.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time

import torch

from ddprobe import batched, compiled, registry
from ddprobe.batched import TrainJob, train_many
from ddprobe.cache import Cache
from ddprobe.context import ModelSpec, StudyContext
from ddprobe.influence.retraining import exact_loo
from ddprobe.training import TrainRecipe, predict


def context(width: int) -> StudyContext:
    from pathlib import Path

    plugin = registry.get_dataset("digits")
    real = plugin.load(plugin.Options(), Path(__file__).resolve().parents[1])
    net = registry.get_model("convnet")
    spec = ModelSpec("convnet", "convnet", net.Options(width=width, depth=2), net)
    return StudyContext(0, real, {"convnet": spec}, TrainRecipe(), Cache(tempfile.mkdtemp(prefix="bench-compile-")),
                        "cpu", data_key={"bench": "digits"})


def pool_bag(ctx: StudyContext, models: int, steps: int, batch: int) -> list[str]:
    jobs = [TrainJob(f"pool:{i}", ctx.real.train) for i in range(models)]
    recipe = TrainRecipe(steps=steps, batch_size=batch)
    bag_steps = models * steps
    out, times = {}, {}
    for mode in ("never", "always"):
        ctx.compile_mode = mode
        t0 = time.perf_counter()
        out[mode] = train_many(ctx, "convnet", jobs, recipe, mode="sequential")
        times[mode] = time.perf_counter() - t0
    info = batched.compile_info()
    cs = float(info.get("compile_s", float("nan")))
    diff = max(float((predict(a, ctx.real.test.images) - predict(b, ctx.real.test.images)).abs().max())
               for a, b in zip(out["never"], out["always"], strict=True))
    return _row(f"pool, {models} models x {steps} steps, batch {batch}", bag_steps, times["never"],
                times["always"], cs, diff, info)


def loo_bag(ctx: StudyContext, n: int, steps: int) -> list[str]:
    gen = torch.Generator().manual_seed(0)
    idx = torch.randperm(len(ctx.real.train), generator=gen)
    x, y = ctx.real.train.images[idx[:n]], ctx.real.train.labels[idx[:n]]
    tx, ty = ctx.real.test.images[:200], ctx.real.test.labels[:200]
    init = ctx.build_model("convnet", "loo")
    recipe = TrainRecipe(steps=steps, lr=0.01)
    res = {}
    for mode in ("never", "always"):
        res[mode] = exact_loo(init, x, y, tx, ty, recipe, strategy="serial", compile=mode)
    bag_steps = (n + 2) * steps
    cs = res["always"].compile.get("compile_s", float("nan"))
    diff = float((res["never"].loss_loo - res["always"].loss_loo).abs().max())
    return _row(f"leave-one-out, {n} + 2 runs x {steps} steps, full batch", bag_steps, res["never"].seconds,
                res["always"].seconds, cs, diff, res["always"].compile)


def _row(label: str, bag_steps: int, eager_s: float, compiled_s: float, compile_s: float, diff: float,
         info: object) -> list[str]:
    """One table row: per-step times (the compiled one without its compile), bag times, and auto's decision
    before and after it has measured this architecture."""
    eager_step = eager_s / bag_steps
    steady = (compiled_s - compile_s) / bag_steps
    gain = eager_step / steady
    before = compiled.decide("auto", bag_steps, eager_step)
    after = compiled.decide("auto", bag_steps, eager_step, gain=gain, compile_s=compile_s)
    return [f"| {label} | {1000 * eager_step:.2f} | {1000 * steady:.2f} | {gain:.2f}x | {compile_s:.1f} | "
            f"{eager_s:.1f} | {compiled_s:.1f} | {eager_s / compiled_s:.2f}x | "
            f"{'compile' if before.compile else 'eager'} / {'compile' if after.compile else 'eager'} | {diff:.1e} |",
            f"<!-- {info} -->"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--width", type=int, default=32)
    ap.add_argument("--models", type=int, default=32)
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--loo-n", type=int, default=60)
    ap.add_argument("--loo-steps", type=int, default=100)
    args = ap.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    ctx = context(args.width)
    print(f"{platform.machine()}, torch {torch.__version__}, {torch.get_num_threads()} thread(s), "
          f"load average {os.getloadavg()[0]:.1f}; digits, ConvNet width {args.width} depth 2")
    print("| bag | eager ms/step | compiled ms/step | gain | compile s | bag eager s | bag compiled s | bag speed-up "
          "| auto: unmeasured / measured | max diff |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for line in pool_bag(ctx, args.models, args.steps, args.batch) + loo_bag(ctx, args.loo_n, args.loo_steps):
        print(line)
    print(f"load average after: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
