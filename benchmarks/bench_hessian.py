"""ddprobe.curvature vs PyHessian 0.1 (the paper's tool), side by side in one run, on CPU.

Requires PyHessian 0.1, a benchmark-only dependency (never a runtime one); this script installs nothing:

    .venv/bin/pip install pyhessian==0.1
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_hessian.py            # prints markdown tables

Same model, data and checkpoint for both, at each of the checkpoints ``--steps`` (default steps 10, 30, 100 and 300
of the 300-step window the paper's analysis covers; step 0 on its own, see --help): a ConvNet (width 8, depth 2,
instance norm) trained for that many steps of the paper's real-data recipe (batch 256, SGD 0.01, momentum 0.9) on
the 1437 digits training images; the Hessian of the mean cross-entropy over all 1437 images (single batch, so
PyHessian reuses its gradient graph as we do). Each side gets a deep copy of the model. Every timed method runs
``--repeats`` times, interleaved with the others (so warm-up and load drift hit all of them alike), and the median
time is reported.

(1) Time to a trace estimate within 2 % relative standard error. PyHessian has no standard error and no such stop
    rule: we run its ``trace(maxIter=50, tol=0)`` (tol 0 disables its stop for a positive trace) again and again,
    find the first n >= 10 at which its own samples reach 2 % relative standard error, and charge it its
    constructor time plus the loop time of those n probes (prorated in the last block of 50: one product each).
    ddprobe runs ``hutchpp`` (and, with ``--full-hutchinson``, ``hutchinson``) on the full data and
    ``minibatch_trace`` (the same full-data trace from random 128-image minibatches, unbiased under eval-mode BN,
    its standard error including the data-sampling variance) with ``rtol=0.02`` and stops by itself; its time
    includes building the graph. ``auto_trace`` (what the ``hessian`` probe's default runs) pilots the minibatch
    estimator and hands over to ``exact_trace`` (the sum of the diagonal from one diagonal-block product per
    parameter, standard error 0) when that is predicted faster; ``exact_trace`` is also timed on its own.
    ``minibatch_trace`` is also run from ``--calibration-seeds`` seeds to check that its standard error is honest
    (the exact trace should be within 2 standard errors about 95 % of the time).
    Both sides stop at ``--max-products``.
(2) Time to the top-5 eigenvalues agreeing to 1 % with the explicit ones (eigvalsh of the dense Hessian built from
    ``size``-many products, cached in /tmp). PyHessian: ``eigenvalues(top_n=5)`` with tol 1e-2, then 1e-3 (its
    default), ... until it agrees: the loosest agreeing tol is timed, earlier attempts are listed. ddprobe:
    ``lanczos(k=5, tol=1e-2, per_eigenvalue=True)`` (default 3 guard pairs), whose error bounds certify each
    eigenvalue to 1 % before it stops (no explicit reference needed); also from ``--lanczos-seeds`` start vectors.
(3) Bounds from the explicit Hessian (no timing), for what any product-counting method can reach on this matrix:
    Hutchinson's expected probes to 2 %, the same after deflating the exact top-k eigenvectors for free (the ideal
    Hutch++), and the product at which plain Lanczos's top-5 Ritz values first agree to 1 % (an oracle stop).
Products are counted for both (PyHessian's by wrapping its ``hessian_vector_product``).
"""

from __future__ import annotations

import argparse
import copy
import math
import statistics
import time
from pathlib import Path

import numpy as np
import torch


def oracle_lanczos(dense: np.ndarray, top5: np.ndarray, seeds: int, max_iter: int = 60) -> list[int]:
    """For each random start: the first Lanczos step whose top-5 Ritz values are all within 1 % of ``top5``."""
    n = dense.shape[0]
    rng = np.random.default_rng(0)
    firsts = []
    for _ in range(seeds):
        q = rng.standard_normal(n)
        q /= np.linalg.norm(q)
        basis = np.zeros((max_iter, n))
        alphas: list[float] = []
        betas: list[float] = []
        for j in range(max_iter):
            basis[j] = q
            w = dense @ q
            alphas.append(float(w @ q))
            for _ in range(2):
                w = w - basis[: j + 1].T @ (basis[: j + 1] @ w)
            betas.append(float(np.linalg.norm(w)))
            t = np.diag(alphas) + np.diag(betas[:-1], 1) + np.diag(betas[:-1], -1)
            theta = np.sort(np.linalg.eigvalsh(t))[::-1][:5]
            if len(theta) == 5 and np.all(np.abs(theta - top5) <= 0.01 * np.abs(top5)):
                firsts.append(j + 1)
                break
            q = w / betas[-1]
    return firsts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--width", type=int, default=8)
    ap.add_argument("--steps", default="10,30,100,300",
                    help="comma-separated checkpoints: real-data steps before each (the paper's window is 300); step 0 "
                    "needs thousands of trace products, run it alone with --repeats 1 --calibration-seeds 5")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeats", type=int, default=3, help="timed runs per method (median reported)")
    ap.add_argument("--calibration-seeds", type=int, default=20)
    ap.add_argument("--lanczos-seeds", type=int, default=10)
    ap.add_argument("--full-hutchinson", action="store_true",
                    help="also time ddprobe's full-data Hutchinson (PyHessian's algorithm; equal cost per product)")
    ap.add_argument("--max-products", type=int, default=8000,
                    help="cap on products (PyHessian probes, ddprobe products) for one trace estimate")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    import importlib

    ph = importlib.import_module("pyhessian.hessian")  # the module (the package re-exports the class as .hessian)
    rows = [checkpoint(args, int(steps), ph) for steps in args.steps.split(",")]  # the explicit Hessians are cached
    if len(rows) > 1:
        summarize(rows)


def summarize(rows: list[dict]) -> None:
    """One line per checkpoint, and the whole trajectory (sums of medians) as a user of the probe pays it."""
    print("\n## all checkpoints (median seconds; speed-up = PyHessian / ddprobe)\n")
    print("| step | trace: PyHessian (products) | minibatch (products) | speed-up | auto: route (products) | seconds "
          "| speed-up | exact (products) | speed-up | Hutch++ (products) | speed-up "
          "| top-5: PyHessian (products) | Lanczos (products) | speed-up |")
    print("|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    total = {k: sum(r[k] for r in rows) for k in rows[0] if k not in ("steps", "ph_eig_ok", "auto_route")}
    total["auto_route"] = ""
    ok = [r for r in rows if r["ph_eig_ok"]]  # eigenvalue totals only where PyHessian got within 1 %
    for k in ("ph_eig", "lanczos", "ph_eig_products", "lanczos_products"):
        total[k] = sum(r[k] for r in ok)
    for r in rows + [{"steps": "all", "ph_eig_ok": bool(ok), **total}]:
        eig = (f"{r['ph_eig']:.2f} ({r['ph_eig_products']}) | {r['lanczos']:.2f} ({r['lanczos_products']}) | "
               + (f"{r['ph_eig'] / r['lanczos']:.2f}x" if r["ph_eig_ok"] else "PyHessian never within 1 %"))
        print(f"| {r['steps']} | {r['ph_trace']:.2f} ({r['ph_trace_products']}) | {r['minibatch']:.2f} "
              f"({r['minibatch_products']}) | {r['ph_trace'] / r['minibatch']:.2f}x | {r['auto_route']} "
              f"({r['auto_products']}) | {r['auto']:.2f} | {r['ph_trace'] / r['auto']:.2f}x | {r['exact']:.2f} "
              f"({r['exact_products']}) | {r['ph_trace'] / r['exact']:.2f}x | {r['hutchpp']:.2f} "
              f"({r['hutchpp_products']}) | {r['ph_trace'] / r['hutchpp']:.2f}x | {eig} |")

def checkpoint(args: argparse.Namespace, steps: int, ph) -> dict:
    """Everything at one checkpoint: the timed table, the calibration, Lanczos from other starts, the bounds."""
    from curvature_setup import digits_convnet

    from ddprobe.curvature import (
        HessianOperator,
        auto_trace,
        dense_matrix,
        hutchinson,
        hutchpp,
        lanczos,
        minibatch_trace,
    )
    from ddprobe.curvature import exact_trace as exact_trace_of

    net, x, y = digits_convnet(steps, width=args.width, seed=args.seed)
    size = sum(p.numel() for p in net.parameters())
    print(f"# ConvNet width {args.width} depth 2: {size} parameters; {len(x)} images; checkpoint after "
          f"{steps} steps; torch threads {args.threads}; {args.repeats} interleaved repeats, median time")

    ref_path = Path(f"/tmp/ddprobe-bench-hessian-w{args.width}-s{steps}-seed{args.seed}.pt")
    if ref_path.exists():
        dense = torch.load(ref_path)
    else:
        t = time.perf_counter()
        dense = dense_matrix(HessianOperator(copy.deepcopy(net), (x, y)))
        dense = ((dense + dense.T) / 2).double()
        torch.save(dense, ref_path)
        print(f"# explicit Hessian: {size} products, {time.perf_counter() - t:.1f} s")
    evals, evecs = torch.linalg.eigh(dense)
    evals, evecs = evals.flip(0), evecs.flip(1)
    exact_trace = float(dense.trace())
    top5 = evals[:5].numpy()
    print(f"# exact trace {exact_trace:.4f}; top-5 {np.round(top5, 4).tolist()}; min {float(evals[-1]):.4f}")

    counter = {"n": 0}
    original = getattr(ph, "_uncounted_hvp", ph.hessian_vector_product)  # unwrap an earlier checkpoint's counter
    ph._uncounted_hvp = original

    def counted(gradsH, params, v):
        counter["n"] += 1
        return original(gradsH, params, v)

    ph.hessian_vector_product = counted
    criterion = torch.nn.CrossEntropyLoss()

    def agree(vals) -> float:
        return float(np.max(np.abs(np.sort(np.asarray(vals))[::-1][:5] - top5) / np.abs(top5)))

    # ---- the timed methods: each returns (products, estimate, stderr, note)
    def pyhessian_trace():
        torch.manual_seed(args.seed)
        t0 = time.perf_counter()
        h = ph.hessian(copy.deepcopy(net), criterion, data=(x, y), cuda=False)
        seconds = time.perf_counter() - t0
        samples: list[float] = []
        n_star = None
        while n_star is None and len(samples) < args.max_products:  # its own probes, 50 at a time
            t0 = time.perf_counter()
            block = h.trace(maxIter=50, tol=0.0)
            t_block = time.perf_counter() - t0
            start = len(samples)
            samples += block
            n_star = next((n for n in range(max(10, start + 1), len(samples) + 1)
                           if np.std(samples[:n], ddof=1) / math.sqrt(n) <= 0.02 * abs(np.mean(samples[:n]))), None)
            seconds += t_block * ((n_star or len(samples)) - start) / len(block)  # one product per probe
        used = n_star or len(samples)
        se = float(np.std(samples[:used], ddof=1) / math.sqrt(used))
        return seconds, (used, float(np.mean(samples[:used])), se,
                         "reached" if n_star else f"NOT reached in {len(samples)}")

    def ddprobe_trace(fn, **kw):
        def run():
            gen = torch.Generator().manual_seed(args.seed)
            model = copy.deepcopy(net)
            t0 = time.perf_counter()
            if fn is minibatch_trace:
                est = fn(model, (x, y), batch_size=128, probes_per_batch=2, rtol=0.02, max_products=args.max_products,
                         generator=gen)
            elif fn is auto_trace:
                est = fn(HessianOperator(model, (x, y)), rtol=0.02, max_products=args.max_products, generator=gen,
                         minibatch_size=128)
                routes.append(est.method)
            elif fn is exact_trace_of:
                est = fn(HessianOperator(model, (x, y)))
            else:
                est = fn(HessianOperator(model, (x, y)), rtol=0.02, max_products=args.max_products, generator=gen, **kw)
            seconds = time.perf_counter() - t0
            return seconds, (est.products, est.value, est.stderr, "reached" if est.converged else "NOT reached")
        return run

    eig_tol: dict[str, float] = {}
    eig_attempts: list[tuple[float, float, int, float]] = []

    def pyhessian_eigen():
        tols = [eig_tol["tol"]] if "tol" in eig_tol else [1e-2, 1e-3, 1e-4, 1e-5]
        for tol in tols:
            torch.manual_seed(args.seed)
            counter["n"] = 0
            t0 = time.perf_counter()
            h = ph.hessian(copy.deepcopy(net), criterion, data=(x, y), cuda=False)
            vals, _ = h.eigenvalues(maxIter=100, tol=tol, top_n=5)
            seconds = time.perf_counter() - t0
            err = agree(vals)
            if "tol" not in eig_tol:
                eig_attempts.append((tol, seconds, counter["n"], err))
            if err <= 0.01:
                eig_tol["tol"] = tol
                return seconds, (counter["n"], float("nan"), float("nan"), f"tol {tol:g}; max rel. err {err:.1e}")
        return seconds, (counter["n"], float("nan"), float("nan"), f"never within 1 % (err {err:.1e})")

    def ddprobe_lanczos():
        t0 = time.perf_counter()
        res = lanczos(HessianOperator(copy.deepcopy(net), (x, y)), k=5, tol=1e-2, per_eigenvalue=True,
                      generator=torch.Generator().manual_seed(args.seed))
        seconds = time.perf_counter() - t0
        return seconds, (res.products, float("nan"), float("nan"),
                         f"max rel. err {agree(res.eigenvalues.numpy()):.1e}; certified: {all(res.converged)}")

    routes: list[str] = []
    TRACE, EIG = "trace, 2 % rel. SE", "top-5 eigenvalues, 1 %"
    PH_TRACE, HPP, HUT, MB = "PyHessian 0.1 Hutchinson", "ddprobe hutchpp (full data)", \
        "ddprobe hutchinson (full data)", "ddprobe minibatch_trace (128 images x 2 probes per round)"
    PH_EIG, LZ = "PyHessian 0.1 power iteration", "ddprobe lanczos"
    methods = {(TRACE, PH_TRACE): pyhessian_trace, (TRACE, HPP): ddprobe_trace(hutchpp, sketch=10)}
    if args.full_hutchinson:  # PyHessian's own algorithm: same probes, same cost per product
        methods[(TRACE, HUT)] = ddprobe_trace(hutchinson)
    AUTO, EXACT = "ddprobe auto_trace (the minibatch estimator, or the exact trace where predicted faster)", \
        "ddprobe exact_trace (sum of the diagonal from block products)"
    methods |= {(TRACE, MB): ddprobe_trace(minibatch_trace), (TRACE, AUTO): ddprobe_trace(auto_trace),
                (TRACE, EXACT): ddprobe_trace(exact_trace_of), (EIG, PH_EIG): pyhessian_eigen,
                (EIG, LZ): ddprobe_lanczos}
    times: dict[tuple[str, str], list[float]] = {key: [] for key in methods}
    info: dict[tuple[str, str], tuple] = {}
    for _ in range(args.repeats):
        for key, run in methods.items():
            seconds, info[key] = run()
            times[key].append(seconds)

    print()
    print("| task | method | seconds (median) | all runs | products | estimate | std. err. | note |")
    print("|---|---|---:|---|---:|---:|---:|---|")
    med = {key: statistics.median(ts) for key, ts in times.items()}
    for key, ts in times.items():
        prods, val, se, note = info[key]
        v = "" if math.isnan(val) else f"{val:.2f}"
        s = "" if math.isnan(se) else f"{se:.2f}"
        runs = ", ".join(f"{t:.2f}" for t in ts)
        print(f"| {key[0]} | {key[1]} | {med[key]:.2f} | {runs} | {prods} | {v} | {s} | {note} |")
    if len(eig_attempts) > 1:
        print("\nPyHessian eigenvalue attempts: " + "; ".join(
            f"tol {a:g}: {b:.2f} s, {c} products, max rel. err {d:.1e}" for a, b, c, d in eig_attempts))
    print(f"\nexact trace {exact_trace:.2f}")
    print("speed-ups (PyHessian median / ddprobe median): "
          f"trace hutchpp {med[TRACE, PH_TRACE] / med[TRACE, HPP]:.2f}x, "
          + (f"hutchinson {med[TRACE, PH_TRACE] / med[TRACE, HUT]:.2f}x, " if args.full_hutchinson else "")
          + f"minibatch {med[TRACE, PH_TRACE] / med[TRACE, MB]:.2f}x, "
          f"auto {med[TRACE, PH_TRACE] / med[TRACE, AUTO]:.2f}x "
          f"({'; '.join(sorted(set(routes)))}), exact {med[TRACE, PH_TRACE] / med[TRACE, EXACT]:.2f}x; "
          f"top-5 eigenvalues {med[EIG, PH_EIG] / med[EIG, LZ]:.2f}x")

    # ---- calibration of the minibatch estimator's standard error
    zs, prods, secs = [], [], []
    for s in range(args.calibration_seeds):
        t0 = time.perf_counter()
        est = minibatch_trace(copy.deepcopy(net), (x, y), batch_size=128, probes_per_batch=2, rtol=0.02,
                              max_products=args.max_products, generator=torch.Generator().manual_seed(1000 + s))
        secs.append(time.perf_counter() - t0)
        zs.append((est.value - exact_trace) / est.stderr)
        prods.append(est.products)
    zs_a = np.abs(np.asarray(zs))
    print(f"\nminibatch_trace over {len(zs)} seeds: exact trace within 2 SE in {int((zs_a <= 2).sum())}/{len(zs)}, "
          f"within 3 SE in {int((zs_a <= 3).sum())}/{len(zs)}; mean z {np.mean(zs):+.2f}, rms z "
          f"{math.sqrt(float(np.mean(np.square(zs)))):.2f}; products {min(prods)}-{max(prods)} (mean "
          f"{np.mean(prods):.0f}); seconds median {statistics.median(secs):.2f}")

    # ---- Lanczos from several start vectors
    lp, lerr = [], []
    for s in range(args.lanczos_seeds):
        res = lanczos(HessianOperator(copy.deepcopy(net), (x, y)), k=5, tol=1e-2, per_eigenvalue=True,
                      generator=torch.Generator().manual_seed(2000 + s))
        lp.append(res.products)
        lerr.append(agree(res.eigenvalues.numpy()))
    print(f"lanczos over {len(lp)} start vectors: products {min(lp)}-{max(lp)} (mean {np.mean(lp):.1f}); "
          f"max rel. err {max(lerr):.1e}; within 1 %: {sum(e <= 0.01 for e in lerr)}/{len(lerr)}")

    # ---- bounds from the explicit Hessian
    d = dense.numpy()
    target = (0.02 * exact_trace) ** 2
    offdiag = float((d**2).sum() - (np.diag(d) ** 2).sum())
    print(f"\nbounds: Hutchinson needs {2 * offdiag / target:.0f} probes on average for 2 % (Rademacher variance "
          "2 * sum of squared off-diagonal entries)")
    for k in (0, 5, 10, 15, 20, 30, 40):
        v = evecs[:, :k].numpy()
        rest = d - v @ (v.T @ d)
        rest = rest - (rest @ v) @ v.T
        need = k + 2 * float((rest**2).sum()) / target  # 2 ||rest||_F^2: the variance of a Gaussian probe
        print(f"  deflating the exact top-{k} eigenvectors for free: {k} + {need - k:.0f} = {need:.0f} products")
    firsts = oracle_lanczos(d, top5, args.lanczos_seeds)
    print(f"  Lanczos with an oracle stop (first step with all top-5 within 1 %) over {len(firsts)} starts: "
          f"{min(firsts)}-{max(firsts)} products (mean {np.mean(firsts):.1f})")
    return {"steps": steps, "ph_trace": med[TRACE, PH_TRACE], "hutchpp": med[TRACE, HPP], "minibatch": med[TRACE, MB],
            "ph_eig": med[EIG, PH_EIG], "lanczos": med[EIG, LZ], "ph_eig_products": info[EIG, PH_EIG][0],
            "lanczos_products": info[EIG, LZ][0], "ph_trace_products": info[TRACE, PH_TRACE][0],
            "minibatch_products": info[TRACE, MB][0], "hutchpp_products": info[TRACE, HPP][0],
            "auto": med[TRACE, AUTO], "auto_products": info[TRACE, AUTO][0],
            "auto_route": "exact" if all(r.startswith("exact") for r in routes) else
            "minibatch" if not any(r.startswith("exact") for r in routes) else "mixed",
            "exact": med[TRACE, EXACT], "exact_products": info[TRACE, EXACT][0],
            "ph_eig_ok": "tol" in eig_tol}

if __name__ == "__main__":
    main()
