"""``hessian`` (paper A.8): loss-curvature traces on real and distilled data along one real-data training run."""

from __future__ import annotations

import math
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ..findings import Finding, FindingSpec
from ..results import ProbeResult
from ..training import RecipeOverride, TrainRecipe

#: The paper's real-data run (A.8): shuffled batches of 256, SGD lr 0.01 momentum 0.9, 300 steps, no augmentation.
PAPER_RECIPE = TrainRecipe(optimizer="sgd", lr=0.01, momentum=0.9, steps=300, batch_size=256)
#: Cache kind of one set's measurements at one checkpoint.
CACHE_KIND = "hessian-checkpoints"
#: The trace estimators a row can report (``auto`` reports the one it ran).
ESTIMATORS = ("exact", "minibatch", "hutchpp", "hutchinson")


def ema(values: list[float], decay: float = 0.9, steps: list[int] | None = None) -> list[float]:
    """The paper's smoothing: s_0 = x_0, s_t = decay * s_{t-1} + (1 - decay) * x_t, per training step.

    With ``steps`` (checkpoints k steps apart) the decay over a gap of k steps is ``decay ** k``: the per-step EMA of
    a curve held constant between checkpoints, so curves sampled every k steps smooth like the paper's per-step ones.
    """
    out: list[float] = []
    for i, x in enumerate(values):
        d = decay ** ((steps[i] - steps[i - 1]) if steps and i else 1)
        out.append(x if not out else d * out[-1] + (1 - d) * x)
    return out


def checkpoint_steps(options, total: int) -> list[int]:
    """The steps the probe measures at, ascending, within a run of ``total`` steps."""
    if isinstance(options.checkpoints, int):
        return sorted(set(range(0, total + 1, options.checkpoints)) | {total})
    return sorted({s for s in options.checkpoints if s <= total})


def cache_base(ctx, model: str, recipe: TrainRecipe, options, run: int = 0) -> dict:
    """What a cached measurement depends on besides its set and step: the run's model, recipe and seed, the real
    data, and the measuring options (the checkpoint list, set selection and number of runs only say which entries
    are needed). Run 0 keeps the keys of the single-run probe, so its cache entries stay valid."""
    base = {"model": ctx.models[model].key(), "recipe": recipe.key(), "seed": ctx.seed, "real": ctx.data_key,
            "options": options.model_dump(mode="json", exclude={"model", "sets", "recipe", "checkpoints", "seeds"})}
    return {**base, "run": run} if run else base


def run_seed_name(run: int) -> str:
    """The seed stream (initialization and data order) of training run ``run``; run 0 is the single-run probe's."""
    return "hessian" if run == 0 else f"hessian:{run}"


def probe_rng_name(name: str, step: int, run: int) -> str:
    """The generator of one measurement: set ``name`` at ``step`` of training run ``run``."""
    return f"hessian:probes:{name}:{step}" + (f":run{run}" if run else "")


HESSIAN = FindingSpec(
    id="hessian",
    claim="the Hessian trace on distilled data peaks and then falls during real training, while the real-data "
          "trace does not",
    statistic="relative drop of the EMA-smoothed (0.9) distilled trace from its peak to the last checkpoint, "
              "minus the same relative drop of the real-data trace, per training run",
    unit_of_n="training runs", threshold=0.1, direction="greater", paper="Sec. 4.3 (A.8)")


def relative_drop(values: list[float], steps: list[int]) -> tuple[float, int]:
    """(peak - last) / peak of the EMA-smoothed curve (nan when the peak is not > 0), and the index of its peak."""
    smooth = ema(values, 0.9, steps)
    peak = max(range(len(smooth)), key=lambda i: smooth[i])
    top = smooth[peak]
    return ((top - smooth[-1]) / top if top > 0 else float("nan")), peak


def _finite(x: float) -> float | None:
    return x if math.isfinite(x) else None  # report.json holds no NaN


def judge_hessian(spec: FindingSpec, set_name: str, probe: str, steps: list[int], runs: list[tuple[list, list]], *,
                  control: bool = False) -> Finding:
    """The hessian finding of one set from its traces in each training run: ``runs`` holds, per run, the set's and
    the real data's trace at ``steps``. Inconclusive when the window cannot show a fall: fewer than three
    checkpoints, or the set's smoothed trace at its highest at the last checkpoint in some run (it may still fall
    after the window)."""
    effects, details = [], {"runs": []}
    late = 0
    for set_trace, real_trace in runs:
        drop, peak = relative_drop(set_trace, steps)
        real_drop, real_peak = relative_drop(real_trace, steps)
        late += peak == len(steps) - 1
        effects.append(drop - real_drop)
        details["runs"].append({"drop": _finite(drop), "real_drop": _finite(real_drop), "peak_step": steps[peak],
                                "real_peak_step": steps[real_peak]})
    reason = None
    if len(steps) < 3:
        reason = f"only {len(steps)} checkpoints: a peak cannot be told from the ends; use at least 3"
    elif late:
        reason = (f"the smoothed trace peaks at the last checkpoint (step {steps[-1]}) in {late} of {len(runs)} "
                  "runs: the window is too short to see it fall; lengthen the run (recipe.steps)")
    return spec.judge_runs(set_name, probe, effects, reason=reason, control=control, details=details)


def unit_parts(base: dict, data: str, step: int) -> dict:
    """The cache key parts of one measurement: ``data`` ("real" or a set's hash) at ``step``."""
    return {**base, "data": data, "step": step}


class Hessian:
    name = "hessian"
    conformance_options = {"recipe": {"steps": 4}, "checkpoints": 2, "real_subsample": 50, "budget": 10}
    description = "Hessian trace (and top eigenvalues) of the loss on real and distilled data along real training"
    findings = (HESSIAN,)

    class Options(BaseModel):
        model_config = ConfigDict(extra="forbid")

        model: str | None = Field(None, description="architecture from [models] (default: the first)")
        sets: list[str] = Field([], description="distilled sets (default: all, controls included)")
        seeds: int = Field(1, ge=1, description="independent real-data training runs (each its own initialization "
                           "and data order); the finding needs at least 2 (the paper ran 1)")
        recipe: RecipeOverride = Field(
            RecipeOverride(),
            description="changes to the paper's real-data run (batch 256, SGD lr 0.01, momentum 0.9, 300 steps); "
            "NOT the study's [train] recipe",
        )
        checkpoints: int | list[int] = Field(
            1, description="evaluate every k optimizer steps (1 = every step, as the paper; the last step is always "
            "included) or at an explicit list of steps; step 0 is before the first update",
        )
        real_subsample: int | None = Field(
            None, ge=1, description="real training examples in the real-data Hessian (one seeded subsample, the same "
            "at every checkpoint); default: the full training set, as the paper",
        )
        estimator: Literal["auto", "hutchpp", "hutchinson", "minibatch", "exact"] = Field(
            "auto", description="trace estimator: Hutch++ (same expectation as Hutchinson, lower variance), plain "
            "Hutchinson with Rademacher probes (the paper's), 'minibatch': Hutchinson on random minibatches of "
            "minibatch_size examples (unbiased for the full-data trace, its standard error includes the data "
            "sampling; for large sets), 'exact': the sum of the Hessian's diagonal (one product per parameter, "
            "each with one layer's diagonal block; needs a budget of at least the parameter count), or 'auto' "
            "(default): 'minibatch' for sets of at least 4 x minibatch_size examples, else Hutch++, either of them "
            "abandoned for 'exact' when that is predicted to be faster and fits the budget",
        )
        minibatch_size: int = Field(256, ge=1, description="examples per round of the 'minibatch' estimator")
        rtol: float = Field(0.05, gt=0, description="stop a trace estimate at this relative standard error")
        stop: Literal["precision", "pyhessian-0.1"] = Field(
            "precision", description="'pyhessian-0.1' reproduces the paper's tool's stopping rule, sign quirk included "
            "(Hutchinson only; at most 100 probes)",
        )
        budget: int = Field(
            200, ge=8, description="most Hessian-vector products per set and checkpoint (eigenvalues + trace)",
        )
        top_k: int = Field(0, ge=0, description="also the top-k eigenvalues by Lanczos, and the overlap of the real "
                           "and each distilled top-k eigenspace; the trace estimate (all estimators but 'hutchinson' "
                           "and 'exact') then samples only the rest of the spectrum, the Ritz values being the top "
                           "directions' exact share (Hutch++ needs no sketch)")
        eigen_tol: float = Field(1e-3, gt=0,
                                 description="Lanczos tolerance: each eigenvalue's certified error bound, relative to "
                                             "the largest |eigenvalue|")
        bn: Literal["eval", "batch"] = Field(
            "eval", description="BatchNorm policy: 'eval' uses running statistics (the paper's PyHessian did); "
            "'batch' uses batch statistics (needs the data in one batch)",
        )
        hvp_batch: int | None = Field(
            None, ge=1, description="examples per forward pass in a product (default: all at once)",
        )

        @field_validator("checkpoints")
        @classmethod
        def _positive(cls, v):
            if isinstance(v, int) and v < 1:
                raise ValueError("checkpoints must be a positive step interval or a list of steps")
            if isinstance(v, list) and any(s < 0 for s in v):
                raise ValueError("checkpoint steps must be >= 0")
            if isinstance(v, list) and not v:
                raise ValueError("checkpoints = [] lists no step; give steps or a positive interval")
            return v

        @model_validator(mode="after")
        def _consistent(self):
            if self.stop == "pyhessian-0.1" and self.estimator != "hutchinson":
                raise ValueError("stop = 'pyhessian-0.1' needs estimator = 'hutchinson'")
            eigen = max(self.top_k + 2, self.budget // 2) if self.top_k else 0
            if self.budget - eigen < 8:
                raise ValueError(f"budget {self.budget} leaves fewer than 8 products for the trace after {eigen} "
                                 f"for top_k = {self.top_k}; raise budget")
            return self

    def plan(self, ctx, options: Options):
        """One real-data run, then at each checkpoint not yet cached a budget of products on real data and sets."""
        model = options.model or next(iter(ctx.models))
        recipe = options.recipe.apply(PAPER_RECIPE)
        total = recipe.total_steps(len(ctx.real.train))
        steps = checkpoint_steps(options, total)
        bases = [cache_base(ctx, model, recipe, options, run) for run in range(options.seeds)]

        def uncached(identity: str | None) -> int:
            if identity is None:  # a set not made yet: nothing of it can be cached
                return len(steps) * len(bases)
            return sum(not ctx.cache.has(CACHE_KIND, ctx.cache.key(CACHE_KIND, unit_parts(base, identity, s)))
                       for base in bases for s in steps)

        real_n = min(options.real_subsample or len(ctx.real.train), len(ctx.real.train))
        items = [ctx.train_item(model, len(ctx.real.train), recipe, f"{options.seeds} real-data {model} run(s) of "
                                f"{total} steps", options.seeds)]
        todo = uncached("real")
        items.append(ctx.hvp_item(model, real_n, options.budget, f"<= {options.budget} products on {real_n} real "
                                  "images", todo, cached=not todo))
        for set_name, info in ctx.select_sets(options.sets).items():
            todo = uncached(info.get("sha256"))
            items.append(ctx.hvp_item(model, ctx.set_size(set_name), options.budget,
                                      f"<= {options.budget} products on {set_name}", todo, cached=not todo))
        return items

    def metric_names(self, sets: list[str], models: list[str], options: Options) -> list[str]:
        """The metric keys (or globs) run() can produce, given the study's sets and models (for validate)."""
        chosen = list(options.sets or sets)
        per = ["trace_final", "trace_peak", "peak_step"] + (["lambda_max_final"] if options.top_k else [])
        out = [f"{s}/{key}" for s in ["real", *chosen] for key in per]
        out += [f"{s}/final_ratio" for s in chosen] + [f"{s}/drop_vs_real" for s in chosen]
        if options.top_k:
            out += [f"{s}/overlap_final" for s in chosen]
        return out + ["products/max_per_checkpoint", "products/total"]

    def run(self, ctx, options: Options) -> ProbeResult:
        import time

        import pandas as pd

        from ..curvature import subspace_overlap

        if options.stop == "pyhessian-0.1" and options.estimator != "hutchinson":
            raise ValueError("stop = 'pyhessian-0.1' needs estimator = 'hutchinson'")
        eigen_budget = max(options.top_k + 2, options.budget // 2) if options.top_k else 0
        if options.budget - eigen_budget < 8:
            raise ValueError(f"budget {options.budget} leaves fewer than 8 products for the trace after {eigen_budget} "
                             f"for top_k = {options.top_k}; raise budget")
        model_name = options.model or next(iter(ctx.models))
        recipe = options.recipe.apply(PAPER_RECIPE)
        real_train = ctx.real.train
        total = recipe.total_steps(len(real_train))
        steps = checkpoint_steps(options, total)
        if not steps:
            raise ValueError(f"no checkpoint step is within the run's {total} steps")
        sets = ctx.select_sets(options.sets)
        for name, ds in sets.items():
            space = getattr(ds.manifest, "input_space", None)
            if space is not None and (diff := space.differences(ctx.real.space)):
                raise ValueError(f"set {name!r} is not in the real data's input space: " + "; ".join(diff))

        real_data = real_train
        if options.real_subsample is not None and options.real_subsample < len(real_train):
            import torch

            idx = torch.randperm(len(real_train), generator=ctx.rng("hessian:real-subsample"))
            real_data = real_train.subset(idx[: options.real_subsample].sort().values)
        datasets = {"real": real_data.to(ctx.device), **{n: ds.to(ctx.device) for n, ds in sets.items()}}
        # Each (run, set, checkpoint) is one cache entry with its own generator, so an interrupted run resumes at
        # the first checkpoint it had not finished and a study that adds a set, checkpoints or runs computes only those.
        identity = {"real": "real", **{n: ds.manifest.sha256 for n, ds in sets.items()}}
        measured: dict[tuple[int, int, str], dict] = {}  # (run, step, set) -> the measurement's tensors
        pending: list[tuple] = []  # (step, set, weights, generator name): measurements for the worker processes
        executor = ctx.executor
        parallel = executor.parallel(ctx.device)
        shared: dict = {}
        hits_before = ctx.cache.hits[CACHE_KIND]
        current = {"run": 0, "base": cache_base(ctx, model_name, recipe, options)}

        def store(step: int, name: str, tensors: dict) -> None:
            ctx.cache.store_tensors(CACHE_KIND, unit_parts(current["base"], identity[name], step), tensors)
            measured[current["run"], step, name] = tensors

        def flush() -> None:
            if not pending:
                return
            if "handle" not in shared:
                shared["handle"] = executor.share(dict(shared))  # shipped once, reused by every flush
            results = executor.map(_measure_in_worker, pending, shared=shared["handle"])
            for (step, name, _, _), tensors in zip(pending, results, strict=True):
                store(step, name, tensors)
            task.advance(len({step for step, *_ in pending}))
            pending.clear()

        def evaluate(state) -> None:
            if state.step not in steps:
                return
            weights = None
            run = current["run"]
            for name, data in datasets.items():
                found = ctx.cache.lookup_tensors(CACHE_KIND, unit_parts(current["base"], identity[name], state.step))
                if found is not None:
                    measured[run, state.step, name] = found
                    continue
                rng_name = probe_rng_name(name, state.step, run)
                if parallel:
                    if weights is None:
                        weights = {k: v.detach().clone() for k, v in state.model.state_dict().items()}
                    pending.append((state.step, name, weights, rng_name))
                else:
                    store(state.step, name, self._measure(state.model, data, options, ctx.rng(rng_name),
                                                          eigen_budget))
            if weights is None:
                task.advance()
            if len({step for step, *_ in pending}) >= executor.workers:
                flush()

        start = time.perf_counter()
        runs = range(options.seeds)
        with ctx.progress.task(f"hessian: {options.seeds} run(s) x {len(steps)} checkpoints x {len(datasets)} sets",
                               total=len(steps) * options.seeds) as task:
            for run in runs:
                current.update(run=run, base=cache_base(ctx, model_name, recipe, options, run))
                net = ctx.build_model(model_name, seed_name=run_seed_name(run))
                size = sum(p.numel() for p in net.parameters() if p.requires_grad)
                if options.estimator == "exact" and size > options.budget - eigen_budget:
                    raise ValueError(f"estimator = 'exact' needs one product per parameter: {size} for "
                                     f"{model_name!r}, but budget = {options.budget} leaves "
                                     f"{options.budget - eigen_budget} for the trace; raise budget to at least "
                                     f"{size + eigen_budget} or choose another estimator")
                if parallel:
                    import copy

                    shared.update(net=copy.deepcopy(net), datasets=datasets, options=options,
                                  eigen_budget=eigen_budget, seed=ctx.seed)
                ctx.train(net, real_train, recipe, seed_name=run_seed_name(run), callbacks=[evaluate])
                flush()
        seconds = time.perf_counter() - start

        rows: list[dict] = []
        eig_rows: list[dict] = []
        ov_rows: list[dict] = []
        per_checkpoint: list[int] = []
        for run in runs:
            for step in steps:
                used = 0
                vecs = {}
                for name in datasets:
                    got = measured[run, step, name]
                    value, stderr, products, converged = got["trace"].tolist()
                    used += int(products)
                    rows.append({"seed": run, "step": step, "set": name, "trace": value, "stderr": stderr,
                                 "products": int(products), "estimator": ESTIMATORS[int(got["estimator"])],
                                 "converged": bool(converged), "control": name in ctx.controls})
                    if "eigen" in got:
                        vecs[name] = got["eigenvectors"]
                        for r, (lam, res, bound, ok) in enumerate(got["eigen"].tolist()):
                            eig_rows.append({"seed": run, "step": step, "set": name, "rank": r + 1,
                                             "eigenvalue": lam, "residual": res, "error_bound": bound,
                                             "converged": bool(ok)})
                if "real" in vecs:
                    for name, v in vecs.items():
                        if name != "real":
                            ov_rows.append({"seed": run, "step": step, "set": name, "k": options.top_k,
                                            "overlap": subspace_overlap(vecs["real"], v)})
                per_checkpoint.append(used)

        table = pd.DataFrame(rows)
        table["ema"] = float("nan")
        metrics: dict[str, float] = {}
        curves = {}  # set -> per run (steps, raw, smooth, stderr)
        traces: dict[str, list[list[float]]] = {}
        for name in datasets:
            finals, peaks, peak_steps = [], [], []
            for run in runs:
                sub = table[(table.set == name) & (table.seed == run)].sort_values("step")
                smooth = ema(sub.trace.tolist(), 0.9, sub.step.tolist())
                table.loc[sub.index, "ema"] = smooth
                curves.setdefault(name, []).append((sub.step.tolist(), sub.trace.tolist(), smooth,
                                                    sub.stderr.tolist()))
                traces.setdefault(name, []).append(sub.trace.tolist())
                peak = max(range(len(smooth)), key=lambda i: smooth[i])
                finals.append(float(sub.trace.iloc[-1]))
                peaks.append(float(smooth[peak]))
                peak_steps.append(float(sub.step.iloc[peak]))
            # with several runs: the mean over runs
            metrics[f"{name}/trace_final"] = sum(finals) / len(finals)
            metrics[f"{name}/trace_peak"] = sum(peaks) / len(peaks)
            metrics[f"{name}/peak_step"] = sum(peak_steps) / len(peak_steps)
        real_final = metrics["real/trace_final"]
        for name in sets:
            metrics[f"{name}/final_ratio"] = (metrics[f"{name}/trace_final"] / real_final if real_final
                                              else float("nan"))
        findings = []
        for name in sets:
            f = judge_hessian(HESSIAN, name, ctx.probe_id or self.name, steps,
                              list(zip(traces[name], traces["real"], strict=True)), control=name in ctx.controls)
            findings.append(f)
            if f.effect is not None:
                metrics[f"{name}/drop_vs_real"] = f.effect
        tables = {"traces": table}
        if eig_rows:
            eig = pd.DataFrame(eig_rows)
            tables["eigen"] = eig
            last = eig[eig.step == eig.step.max()]
            for name in datasets:
                top = last[(last.set == name) & (last["rank"] == 1)]
                if len(top):
                    metrics[f"{name}/lambda_max_final"] = float(top.eigenvalue.mean())
        if ov_rows:
            ov = pd.DataFrame(ov_rows)
            tables["overlap"] = ov
            last = ov[ov.step == ov.step.max()]
            for name, group in last.groupby("set"):
                metrics[f"{name}/overlap_final"] = float(group.overlap.mean())
        metrics["products/max_per_checkpoint"] = float(max(per_checkpoint))
        metrics["products/total"] = float(sum(per_checkpoint))
        fig = self._figure(ctx, curves, steps)
        ratios = ", ".join(f"{n} {metrics[f'{n}/final_ratio']:.2f}" for n in sets)
        summary = (f"final trace distilled/real at step {steps[-1]}: {ratios or 'no sets'}; real trace "
                   f"{real_final:.3g} (smoothed peak at step {metrics['real/peak_step']:.0f})")
        info = {
            "model": model_name, "recipe": recipe.key(), "checkpoints": steps, "seeds": options.seeds,
            "estimator": options.estimator,
            "stop": options.stop, "rtol": options.rtol, "budget_per_set_and_checkpoint": options.budget,
            "products_per_checkpoint": per_checkpoint, "real_examples": len(real_data), "bn": options.bn,
            "unconverged_estimates": int((~table.converged.astype(bool)).sum()), "seconds": seconds,
            "estimates_from_cache": ctx.cache.hits[CACHE_KIND] - hits_before,
        }
        return ProbeResult(metrics, tables, {"traces": fig}, summary, info, findings=findings)

    @staticmethod
    def _measure(model, data, options: Options, generator, eigen_budget: int) -> dict:
        """One set at one checkpoint: top-k eigenpairs (optional), then the trace, within ``options.budget``."""
        import torch

        from ..curvature import (
            Deflation,
            HessianOperator,
            auto_trace,
            exact_trace,
            hutchinson,
            hutchpp,
            lanczos,
            minibatch_trace,
        )

        op = HessianOperator(model, data, bn=options.bn, batch_size=options.hvp_batch)
        budget = options.budget
        deflate = None
        out = {}
        if options.top_k:
            eig = lanczos(op, options.top_k, tol=options.eigen_tol, generator=generator, max_iter=eigen_budget)
            budget -= eig.products
            deflate = Deflation.from_eigen(eig)  # the trace estimate samples only the rest of the spectrum
            out["eigen"] = torch.stack([eig.eigenvalues, eig.residuals, eig.error_bounds,
                                        torch.tensor(eig.converged, dtype=torch.float64)], dim=1)
            out["eigenvectors"] = eig.eigenvectors.cpu()
        method = options.estimator
        if method == "auto":
            est = auto_trace(op, rtol=options.rtol, max_products=budget, generator=generator,
                             minibatch_size=options.minibatch_size, deflate=deflate)
            method = ("exact" if est.method.startswith("exact") else
                      "minibatch" if est.method.startswith("minibatch") else "hutchpp")
        elif method == "exact":
            est = exact_trace(op)
        elif method == "minibatch":
            est = minibatch_trace(model, data, batch_size=options.minibatch_size, probes_per_batch=2,
                                  rtol=options.rtol, max_products=budget, generator=generator, bn=options.bn,
                                  deflate=deflate)
        elif method == "hutchpp":
            est = hutchpp(op, rtol=options.rtol, max_products=budget, generator=generator,
                          sketch=max(1, min(10, budget // 4)), deflate=deflate)
        else:
            est = hutchinson(op, rtol=options.rtol, max_products=min(budget, 100)
                             if options.stop == "pyhessian-0.1" else budget, generator=generator, stop=options.stop)
        op.close()
        products = options.budget - budget + est.products  # Lanczos's, then the trace's
        out["trace"] = torch.tensor([est.value, est.stderr, products, float(est.converged)], dtype=torch.float64)
        out["estimator"] = torch.tensor(ESTIMATORS.index(method))
        return out

    def _figure(self, ctx, curves, steps):
        from ..report.figures import plt, save, series_style

        pyplot = plt()
        fig, axes = pyplot.subplots(1, 2, figsize=(11, 4), sharey=False)
        i = 0
        for name, per_run in curves.items():
            style = series_style(name, i, ctx.controls)
            style.pop("marker", None)
            i += name not in ctx.controls and name != "real"
            for run, (x, raw, smooth, se) in enumerate(per_run):  # one line per training run, labelled once
                line = {**style, "label": style.get("label", name) if run == 0 else None,
                        "alpha": 1.0 if len(per_run) == 1 else 0.7}
                axes[0].plot(x, raw, **line)
                lo = [r - e if e == e and e != float("inf") else r for r, e in zip(raw, se, strict=True)]
                hi = [r + e if e == e and e != float("inf") else r for r, e in zip(raw, se, strict=True)]
                axes[0].fill_between(x, lo, hi, color=style["color"], alpha=0.15, lw=0)
                axes[1].plot(x, smooth, **line)
        runs = len(next(iter(curves.values()))) if curves else 1
        axes[0].set_title("Hessian trace (raw, ± 1 standard error)" + (f", {runs} runs" if runs > 1 else ""),
                          fontsize=10)
        axes[1].set_title("Exponential moving average (weight 0.9 on the previous value)", fontsize=10)
        for ax in axes:
            ax.set_xlabel("training iteration")
            ax.set_ylabel("Hessian trace")
        axes[1].legend(fontsize=8, frameon=False, loc="upper left", bbox_to_anchor=(1.01, 1.0))
        caption = ("Trace of the loss Hessian along training on real data, measured on real data and on each "
                   "distilled set at every checkpoint: raw estimates with their standard error (left) and smoothed "
                   "(right).")
        return save(fig, ctx.figure_path("traces"), caption)


def _measure_in_worker(shared: dict, item: tuple) -> dict:
    """One (set, checkpoint) measurement in a worker process: the checkpoint's weights in a copy of the network."""
    import copy

    from ..rng import torch_generator

    step, name, weights, rng_name = item
    net = copy.deepcopy(shared["net"])
    net.load_state_dict(weights)
    return Hessian._measure(net, shared["datasets"][name], shared["options"],
                            torch_generator(shared["seed"], rng_name), shared["eigen_budget"])


PROBES = (Hessian,)
