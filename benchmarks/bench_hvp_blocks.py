"""Blocks of Hessian-vector products on CPU: one vector at a time vs one ``is_grads_batched`` backward, by data size.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_hvp_blocks.py          # prints a markdown table

Same operator, same vectors, both formulations in one run, interleaved, median of ``--repeats``: a ConvNet (width 8,
depth 2, instance norm) trained for 30 steps of the paper's recipe on the digits training images; the Hessian on the
first ``n`` images for n in ``--sizes``, blocks of ``b`` products for b in ``--blocks``. This is the measurement
behind ``HessianOperator(batched="auto")`` on CPU: batched when a chunk holds at most ``BATCHED_MAX_EXAMPLES``
examples, where per-product overheads dominate (a distilled set, a minibatch), one at a time above.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="10,30,100,128,256,1437")
    ap.add_argument("--blocks", default="2,4,10,20")
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args()
    torch.set_num_threads(1)

    from curvature_setup import digits_convnet

    from ddprobe.curvature import HessianOperator

    net, x, y = digits_convnet(steps=30)

    print("| examples | block | one at a time (ms per product) | batched (ms per product) | batched speed-up "
          "| max rel. diff |")
    print("|---:|---:|---:|---:|---:|---:|")
    for n in (int(s) for s in args.sizes.split(",")):
        ops = {mode: HessianOperator(copy.deepcopy(net), (x[:n], y[:n]), batched=mode) for mode in (False, True)}
        for b in (int(s) for s in args.blocks.split(",")):
            vectors = torch.randn(b, ops[False].size, generator=torch.Generator().manual_seed(b))
            out = {mode: op.matmat(vectors) for mode, op in ops.items()}  # also builds and warms the graphs
            diff = float(((out[True] - out[False]).norm(dim=1) / out[False].norm(dim=1)).max())
            times: dict[bool, list[float]] = {False: [], True: []}
            for _ in range(args.repeats):
                for mode, op in ops.items():
                    t0 = time.perf_counter()
                    op.matmat(vectors)
                    times[mode].append((time.perf_counter() - t0) * 1000 / b)
            loop, batched = statistics.median(times[False]), statistics.median(times[True])
            print(f"| {n} | {b} | {loop:.2f} | {batched:.2f} | {loop / batched:.2f}x | {diff:.1e} |")


if __name__ == "__main__":
    main()
