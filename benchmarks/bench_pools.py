"""Time per agreement-pool model: stacked (vmap) training against one-by-one training, side by side in one run.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_pools.py                 # digits, CPU
    .venv/bin/python benchmarks/bench_pools.py --data cifar-shape --device cuda   # 3x32x32, paper's ConvNet

Both modes train the same pool members (same seeds, same subsets, same batches), each into its own fresh cache,
so every model is really trained. The script prints a markdown table (also appended to ``--out`` when given) and
checks that the two modes give nearly the same predictions.
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from pathlib import Path

import torch

from ddprobe import registry
from ddprobe.cache import Cache
from ddprobe.context import ModelSpec, StudyContext
from ddprobe.data import InputSpace, LabeledData, RealData
from ddprobe.pools import early_pool, subset_pool
from ddprobe.training import TrainRecipe

REPO = Path(__file__).resolve().parents[1]


def real_data(kind: str) -> RealData:
    if kind == "digits":
        plugin = registry.get_dataset("digits")
        return plugin.load(plugin.Options(), REPO)
    # CIFAR-10's shape and split sizes with random content: timings do not depend on the pixels.
    gen = torch.Generator().manual_seed(0)
    classes = [str(i) for i in range(10)]
    train = LabeledData(torch.randn(50000, 3, 32, 32, generator=gen), torch.arange(50000) % 10, classes)
    test = LabeledData(torch.randn(10000, 3, 32, 32, generator=gen), torch.arange(10000) % 10, classes)
    return RealData("cifar-shape", train, test, InputSpace(mean=[0.0] * 3, std=[1.0] * 3, shape=[3, 32, 32]))


def context(real: RealData, width: int, depth: int, device: str) -> StudyContext:
    plugin = registry.get_model("convnet")
    spec = ModelSpec("convnet", "convnet", plugin.Options(width=width, depth=depth), plugin)
    return StudyContext(0, real, {"convnet": spec}, TrainRecipe(), Cache(tempfile.mkdtemp(prefix="bench-pools-")),
                        device, data_key={"bench": real.name})


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", choices=["digits", "cifar-shape"], default="digits")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--width", type=int, default=32)
    ap.add_argument("--depth", type=int, default=2)
    ap.add_argument("--subset-models", type=int, default=16)
    ap.add_argument("--fraction", type=float, nargs=2, default=(0.05, 0.3))
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--early-runs", type=int, default=8)
    ap.add_argument("--early-steps", type=int, default=12)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--chunk", type=int, default=32)
    ap.add_argument("--out", type=Path, default=None, help="append the table to this markdown file")
    args = ap.parse_args()

    real = real_data(args.data)
    sub_recipe = TrainRecipe(epochs=args.epochs, steps=None, batch_size=args.batch)
    early_recipe = TrainRecipe(steps=args.early_steps, batch_size=args.batch)
    rows = []
    for pool, count in (("subset", args.subset_models), ("early-stopped", args.early_runs)):
        results = {}
        for mode in ("sequential", "batched"):
            ctx = context(real, args.width, args.depth, args.device)
            if mode == "batched":  # warm up the stacked path once (kernel selection, allocator), not timed
                subset_pool(ctx, "convnet", 2, tuple(args.fraction), sub_recipe.model_copy(update={"epochs": 1}),
                            mode=mode)
            else:
                early_pool(ctx, "convnet", 1, early_recipe.model_copy(update={"steps": 1}), mode=mode)
            ctx.cache = Cache(tempfile.mkdtemp(prefix="bench-pools-"))
            sync(args.device)
            t0 = time.perf_counter()
            if pool == "subset":
                got = subset_pool(ctx, "convnet", count, tuple(args.fraction), sub_recipe, mode=mode,
                                  chunk=args.chunk)
            else:
                got = early_pool(ctx, "convnet", count, early_recipe, mode=mode, chunk=args.chunk)
            sync(args.device)
            results[mode] = (time.perf_counter() - t0, got)
        (t_seq, a), (t_bat, b) = results["sequential"], results["batched"]
        same = float((a.predictions == b.predictions).float().mean())
        rows.append((pool, count, t_seq / count, t_bat / count, t_seq / t_bat, same))

    sizes = "subset fraction {:.3g}-{:.3g}, {} epochs".format(*args.fraction, args.epochs)
    header = (f"{args.data} on {args.device} ({platform.processor() or platform.machine()}, torch "
              f"{torch.__version__}, {torch.get_num_threads()} threads), ConvNet width {args.width} depth "
              f"{args.depth}, batch {args.batch}; {sizes}; early-stopped: {args.early_steps} steps with test "
              f"predictions after each")
    lines = [header, "", "| pool | models | one by one (s/model) | stacked vmap (s/model) | speed-up | "
             "same predictions |", "|---|---|---|---|---|---|"]
    for pool, count, seq, bat, speed, same in rows:
        lines.append(f"| {pool} | {count} | {seq:.3f} | {bat:.3f} | {speed:.2f}x | {same:.3f} |")
    text = "\n".join(lines)
    print(text)
    if args.out is not None:
        with args.out.open("a") as f:
            f.write(text + "\n\n")


if __name__ == "__main__":
    main()
