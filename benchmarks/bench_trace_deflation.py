"""What knowing the top eigenvectors saves a trace estimate: the minibatch estimator with and without deflation.

When the ``hessian`` probe is asked for ``top_k`` eigenvalues, Lanczos's Ritz vectors come for free, and their Ritz
values are their exact share of the trace; the trace estimator then samples only the rest of the spectrum
(``curvature.Deflation``). Same model and checkpoints as ``bench_hessian.py`` (ConvNet width 8, depth 2, on the 1437
digits training images, after 10, 30, 100 and 300 steps of the paper's recipe); top-5 Ritz vectors from
``lanczos(k=5, tol=1e-3)`` (the probe's default ``eigen_tol``); ``minibatch_trace`` (128 images x 2 probes a round)
to 2 % relative standard error from ``--seeds`` seeds each way, against the explicit trace (cached by
``bench_hessian.py`` in /tmp, or built here from 1026 products)::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_trace_deflation.py
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", default="10,30,100,300")
    ap.add_argument("--seeds", type=int, default=10)
    args = ap.parse_args()
    torch.set_num_threads(1)

    from curvature_setup import digits_convnet

    from ddprobe.curvature import Deflation, HessianOperator, dense_matrix, lanczos, minibatch_trace
    print("| step | exact trace | top-5 share | Lanczos products | plain: products, s (median) | deflated: products, s "
          "(median) | speed-up | exact within 2 SE (plain / deflated) |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for steps in map(int, args.steps.split(",")):
        net, x, y = digits_convnet(steps)
        cached = Path(f"/tmp/ddprobe-bench-hessian-w8-s{steps}-seed0.pt")
        dense = torch.load(cached) if cached.exists() else dense_matrix(HessianOperator(net, (x, y)))
        exact = float(dense.trace())
        eig = lanczos(HessianOperator(net, (x, y)), 5, tol=1e-3, generator=torch.Generator().manual_seed(0))
        deflate = Deflation.from_eigen(eig)
        rows = {}
        for name, kw in (("plain", {}), ("deflated", {"deflate": deflate})):
            products, seconds, inside = [], [], 0
            for seed in range(args.seeds):
                t = time.perf_counter()
                est = minibatch_trace(net, (x, y), batch_size=128, rtol=0.02, max_products=8000,
                                      generator=torch.Generator().manual_seed(100 + seed), **kw)
                seconds.append(time.perf_counter() - t)
                products.append(est.products)
                inside += abs(est.value - exact) <= 2 * est.stderr
            rows[name] = (statistics.median(products), statistics.median(seconds), inside)
        (pp, ps, pi), (dp, dsec, di) = rows["plain"], rows["deflated"]
        print(f"| {steps} | {exact:.1f} | {deflate.trace:.1f} | {eig.products} | {pp:.0f}, {ps:.2f} | {dp:.0f}, "
              f"{dsec:.2f} | {ps / dsec:.2f}x | {pi}/{args.seeds} / {di}/{args.seeds} |", flush=True)


if __name__ == "__main__":
    main()
