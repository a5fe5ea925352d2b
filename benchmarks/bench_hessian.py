"""ddprobe.curvature vs PyHessian 0.1 (the paper's tool), side by side in one run, on CPU.

Requires PyHessian 0.1, a benchmark-only dependency (never a runtime one); this script installs nothing:

    .venv/bin/pip install pyhessian==0.1
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_hessian.py            # prints a markdown table

Same model, data and checkpoint for both: a ConvNet (width 8, depth 2, instance norm) trained for ``--steps``
steps of the paper's real-data recipe (batch 256, SGD 0.01, momentum 0.9) on the 1437 digits training images;
the Hessian of the mean cross-entropy over all 1437 images (single batch, so PyHessian reuses its gradient graph
as we do). Each side gets a deep copy of the model.

(1) Time to a trace estimate within 2 % relative standard error. PyHessian has no standard error and no such stop
    rule: we run its ``trace(maxIter=M, tol=0)`` (tol 0 disables its stop for a positive trace), find the first
    n >= 10 at which its own samples reach 2 % relative standard error, and charge it its constructor time plus
    n/M of the loop time (its per-probe cost is constant: one product each). ddprobe runs ``hutchpp`` (and, for
    reference, ``hutchinson``) with ``rtol=0.02`` and stops by itself; its time includes building the graph.
    A third ddprobe row, ``minibatch_trace``, estimates the same full-data trace from random 128-image minibatches
    (unbiased under eval-mode BN; its standard error includes the data-sampling variance); "products" there are
    minibatch products, each about 1/11 of a full-data one in work.
(2) Time to the top-5 eigenvalues agreeing to 1 % with the explicit ones (eigvalsh of the dense Hessian built from
    ``size``-many products, cached in /tmp). PyHessian: ``eigenvalues(top_n=5)`` with tol 1e-2, then 1e-3 (its
    default), ... until it agrees: the time of the loosest agreeing call is reported, earlier attempts are listed.
    ddprobe: ``lanczos(k=5, tol=1e-2, per_eigenvalue=True)``, whose residual bound certifies each eigenvalue to 1 %
    before it stops (no explicit reference needed).
Products are counted for both (PyHessian's by wrapping its ``hessian_vector_product``).
"""

from __future__ import annotations

import argparse
import copy
import math
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--width", type=int, default=8)
    ap.add_argument("--steps", type=int, default=30, help="real-data steps before the checkpoint")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--pyhessian-probes", type=int, default=150, help="M, PyHessian's trace probes")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    import importlib

    ph = importlib.import_module("pyhessian.hessian")  # the module (the package re-exports the class as .hessian)

    from ddprobe import registry
    from ddprobe.builtin.probe_hessian import PAPER_RECIPE
    from ddprobe.curvature import HessianOperator, dense_matrix, hutchinson, hutchpp, lanczos, minibatch_trace
    from ddprobe.training import train

    ds = registry.get_dataset("digits")
    real = ds.load(ds.Options(), REPO)
    x, y = real.train.images, real.train.labels
    mp = registry.get_model("convnet")
    torch.manual_seed(args.seed)
    net = mp.build(mp.Options(width=args.width, depth=2), real.input_shape, real.num_classes)
    train(net, real.train, PAPER_RECIPE.model_copy(update={"steps": args.steps}),
          generator=torch.Generator().manual_seed(args.seed))
    net.eval()
    size = sum(p.numel() for p in net.parameters())
    print(f"# ConvNet width {args.width} depth 2: {size} parameters; {len(x)} images; checkpoint after "
          f"{args.steps} steps; torch threads {args.threads}")

    ref_path = Path(f"/tmp/ddprobe-bench-hessian-w{args.width}-s{args.steps}-seed{args.seed}.pt")
    if ref_path.exists():
        dense = torch.load(ref_path)
    else:
        t = time.perf_counter()
        dense = dense_matrix(HessianOperator(copy.deepcopy(net), (x, y)))
        dense = ((dense + dense.T) / 2).double()
        torch.save(dense, ref_path)
        print(f"# explicit Hessian: {size} products, {time.perf_counter() - t:.1f} s")
    evals = torch.linalg.eigvalsh(dense).flip(0)
    exact_trace = float(dense.trace())
    top5 = evals[:5].numpy()
    print(f"# exact trace {exact_trace:.4f}; top-5 {np.round(top5, 4).tolist()}; min {float(evals[-1]):.4f}")

    counter = {"n": 0}
    original = ph.hessian_vector_product

    def counted(gradsH, params, v):
        counter["n"] += 1
        return original(gradsH, params, v)

    ph.hessian_vector_product = counted
    criterion = torch.nn.CrossEntropyLoss()
    rows = []

    # ---- (1) trace to 2 % relative standard error
    m_probes = args.pyhessian_probes
    model_a = copy.deepcopy(net)
    torch.manual_seed(args.seed)
    t0 = time.perf_counter()
    h = ph.hessian(model_a, criterion, data=(x, y), cuda=False)
    t_ctor = time.perf_counter() - t0
    t0 = time.perf_counter()
    samples = h.trace(maxIter=m_probes, tol=0.0)
    t_loop = time.perf_counter() - t0
    n_star = None
    for n in range(10, len(samples) + 1):
        s = np.asarray(samples[:n])
        if s.std(ddof=1) / math.sqrt(n) <= 0.02 * abs(s.mean()):
            n_star = n
            break
    used = n_star or len(samples)
    t_py = t_ctor + t_loop * used / len(samples)
    py_val = float(np.mean(samples[:used]))
    py_se = float(np.std(samples[:used], ddof=1) / math.sqrt(used))
    rows.append(("trace, 2 % rel. SE", "PyHessian 0.1 Hutchinson", t_py, used, py_val, py_se,
                 "reached" if n_star else f"NOT reached in {len(samples)}"))

    results = {}
    variants = (("ddprobe hutchpp", hutchpp, {"sketch": 10}), ("ddprobe hutchinson", hutchinson, {}),
                ("ddprobe minibatch_trace (128 images x 2 probes per round)", minibatch_trace, {}))
    for name, fn, kw in variants:
        model_b = copy.deepcopy(net)
        gen = torch.Generator().manual_seed(args.seed)
        t0 = time.perf_counter()
        if fn is minibatch_trace:
            est = fn(model_b, (x, y), batch_size=128, probes_per_batch=2, rtol=0.02, max_products=2000, generator=gen)
        else:
            est = fn(HessianOperator(model_b, (x, y)), rtol=0.02, max_products=2000, generator=gen, **kw)
        dt = time.perf_counter() - t0
        results[name] = dt
        rows.append(("trace, 2 % rel. SE", name, dt, est.products, est.value, est.stderr,
                     "reached" if est.converged else "NOT reached"))

    # ---- (2) top-5 eigenvalues to 1 %
    def agree(vals) -> float:
        return float(np.max(np.abs(np.sort(np.asarray(vals))[::-1] - top5) / np.abs(top5)))

    attempts = []
    for tol in (1e-2, 1e-3, 1e-4, 1e-5):
        model_c = copy.deepcopy(net)
        torch.manual_seed(args.seed)
        counter["n"] = 0
        t0 = time.perf_counter()
        hc = ph.hessian(model_c, criterion, data=(x, y), cuda=False)
        vals, _ = hc.eigenvalues(maxIter=100, tol=tol, top_n=5)
        dt = time.perf_counter() - t0
        err = agree(vals)
        attempts.append((tol, dt, counter["n"], err))
        if err <= 0.01:
            break
    tol, t_pe, n_pe, err_pe = attempts[-1]
    note = f"tol {tol:g}; max rel. err {err_pe:.2e}"
    if len(attempts) > 1:
        note += "; earlier: " + ", ".join(f"tol {a:g} {b:.1f} s err {d:.1e}" for a, b, _, d in attempts[:-1])
    rows.append(("top-5 eigenvalues, 1 %", "PyHessian 0.1 power iteration", t_pe, n_pe, float("nan"),
                 float("nan"), note))
    model_d = copy.deepcopy(net)
    t0 = time.perf_counter()
    res = lanczos(HessianOperator(model_d, (x, y)), k=5, tol=1e-2, per_eigenvalue=True,
                  generator=torch.Generator().manual_seed(args.seed))
    t_la = time.perf_counter() - t0
    rows.append(("top-5 eigenvalues, 1 %", "ddprobe lanczos", t_la, res.products, float("nan"), float("nan"),
                 f"max rel. err {agree(res.eigenvalues.numpy()):.2e}; all converged: {all(res.converged)}"))

    print()
    print("| task | method | seconds | products | estimate | std. err. | note |")
    print("|---|---|---:|---:|---:|---:|---|")
    for task, method, sec, prods, val, se, note in rows:
        v = "" if math.isnan(val) else f"{val:.2f}"
        s = "" if math.isnan(se) else f"{se:.2f}"
        print(f"| {task} | {method} | {sec:.2f} | {prods} | {v} | {s} | {note} |")
    print()
    print(f"exact trace {exact_trace:.2f}")
    print(f"speed-up trace (hutchpp): {t_py / results['ddprobe hutchpp']:.2f}x; "
          f"(hutchinson): {t_py / results['ddprobe hutchinson']:.2f}x; "
          f"(minibatch): {t_py / results[variants[2][0]]:.2f}x;"
          f" top-5 eigenvalues: {t_pe / t_la:.2f}x")


if __name__ == "__main__":
    main()
