"""``agreement`` (paper A.6, Fig. 4): do distilled-trained models predict like early-stopped or subset-trained ones?"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from ..results import ProbeResult
from ..training import RecipeOverride

SUBSET_COLOR, EARLY_COLOR = "#FFC20A", "#0C7BDC"  # the paper's Fig. 4 colours


class Agreement:
    name = "agreement"
    description = "prediction agreement of distilled-trained models with early-stopped vs subset-trained real models"
    metric_directions = {"*/accuracy": "higher"}  # agreements and early_step describe, they are not better or worse
    conformance_options = {"subset_models": 3, "subset_fraction": [0.2, 0.5], "subset_epochs": 2, "early_runs": 2,
                           "early_steps": 4, "batch_size": 32, "recipe": {"steps": 5}}

    class Options(BaseModel):
        model_config = ConfigDict(extra="forbid")

        models: list[str] = Field([], description="architectures from [models] (default: all)")
        sets: list[str] = Field([], description="distilled sets (default: all, controls included)")
        seeds: int = Field(1, ge=1, description="distilled-trained models per set (the paper used 1)")
        recipe: RecipeOverride = Field(RecipeOverride(), description="changes to [train] for distilled-trained models")
        real_recipe: RecipeOverride = Field(
            RecipeOverride(), description="changes to [pretrain] (optimizer, lr, momentum) for both real pools")
        batch_size: int = Field(256, ge=1, description="mini-batch of both real pools (paper: 256)")
        subset_models: int = Field(520, ge=1, description="subset-trained pool size (paper: 520)")
        subset_fraction: tuple[float, float] = Field(
            (0.005, 0.05), description="range of the per-class fraction each subset model keeps (paper: 0.5%-5%)")
        subset_epochs: int = Field(100, ge=1, description="epochs over its subset per subset model (paper: 100)")
        early_runs: int = Field(30, ge=1, description="early-stopped runs (paper: 30)")
        early_steps: int | None = Field(None, ge=1, description="steps recorded per run (default: one epoch)")
        band: float = Field(0.02, gt=0, description="subset models match when |accuracy - distilled| <= band / 2")
        matching: Literal["centered", "paper"] = Field(
            "centered", description="'paper': the notebook's rounded buckets [q, q+1] percent instead of the band")
        nearest: int = Field(5, ge=0, description="when no subset model is in the band, use this many closest")
        training: Literal["auto", "batched", "sequential"] = Field(
            "auto", description="train pool models stacked (vmap), one by one, or whichever is faster here")
        chunk: int = Field(32, ge=1, description="models per stacked batch")

    def plan(self, ctx, options: Options):
        """The subset-trained and early-stopped pools (cached, shared by studies), then distilled-trained models."""
        import math

        from ..plan import PlanItem

        real = options.real_recipe.apply(ctx.pretrain_recipe)
        n_train, n_test = len(ctx.real.train), len(ctx.real.test)
        low, high = options.subset_fraction
        subset_n = max(1, round((low + high) / 2 * n_train))
        subset = real.model_copy(update={"epochs": options.subset_epochs, "steps": None,
                                         "batch_size": options.batch_size})
        early_steps = options.early_steps or math.ceil(n_train / min(options.batch_size, n_train))
        early = real.model_copy(update={"epochs": None, "steps": early_steps, "batch_size": options.batch_size})
        recipe = options.recipe.apply(ctx.recipe)
        items: list[PlanItem] = []
        for model in ctx.select_models(options.models):
            items.append(ctx.train_item(model, subset_n, subset, f"{options.subset_models} subset-trained {model}s",
                                        options.subset_models, key=f"pool:subset:{model}:{options.subset_models}"))
            items.append(ctx.train_item(model, n_train, early, f"{options.early_runs} early-stopped {model} runs",
                                        options.early_runs, key=f"pool:early:{model}:{options.early_runs}"))
            items.append(ctx.forward_item(model, n_test, "test predictions after every early-stopped step",
                                          options.early_runs * early_steps))
            for set_name in ctx.select_sets(options.sets):
                items.append(ctx.train_item(model, ctx.set_size(set_name), recipe, f"{model} on {set_name}",
                                            options.seeds))
        return items

    def run(self, ctx, options: Options) -> ProbeResult:
        import math

        import pandas as pd
        import torch

        from .. import batched
        from ..pools import agreement, distilled_jobs, early_pool, match_step, match_subset, subset_pool, trained_models
        from ..training import accuracy, predict

        low, high = options.subset_fraction
        if not 0 < low <= high <= 1:
            raise ValueError(f"subset_fraction must satisfy 0 < low <= high <= 1, got {options.subset_fraction}")
        models = ctx.select_models(options.models)
        sets = ctx.select_sets(options.sets)
        recipe = options.recipe.apply(ctx.recipe)
        real = options.real_recipe.apply(ctx.pretrain_recipe)
        subset_recipe = real.model_copy(update={"epochs": options.subset_epochs, "steps": None,
                                                "batch_size": options.batch_size})
        n_train = len(ctx.real.train)
        early_steps = options.early_steps or math.ceil(n_train / min(options.batch_size, n_train))
        early_recipe = real.model_copy(update={"epochs": None, "steps": early_steps, "batch_size": options.batch_size})
        test_x, test_y = ctx.real.test.images.to(ctx.device), ctx.real.test.labels
        metrics: dict[str, float] = {}
        values, rows, pool_rows, curve_rows = [], [], [], []
        info: dict = {"trained": {}, "early_steps": early_steps}
        for model in models:
            sub = subset_pool(ctx, model, options.subset_models, (low, high), subset_recipe, mode=options.training,
                              chunk=options.chunk)
            early = early_pool(ctx, model, options.early_runs, early_recipe, mode=options.training,
                               chunk=options.chunk)
            info["trained"][model] = {"subset": sub.trained, "early": early.trained}
            mean_curve = early.accuracy.mean(0)
            for m in range(len(sub.accuracy)):
                pool_rows.append({"model": model, "member": m, "fraction": float(sub.fraction[m]),
                                  "images": int(sub.size[m]), "accuracy": float(sub.accuracy[m])})
            for t in range(len(mean_curve)):
                curve_rows.append({"model": model, "step": t + 1, "mean_accuracy": float(mean_curve[t]),
                                   "std_accuracy": float(early.accuracy[:, t].std()) if early.accuracy.shape[0] > 1
                                   else 0.0})
            jobs, ids, keys, recipes = distilled_jobs(ctx, sets, options.seeds, recipe, model)
            nets = []
            for set_name in sets:  # one recipe per set (learned lr fallback); train each set's seeds together
                sel = [i for i, k in enumerate(keys) if k[0] == set_name]
                nets += trained_models(ctx, model, [jobs[i] for i in sel], recipes[set_name], [ids[i] for i in sel],
                                       mode=options.training, chunk=options.chunk, description="agreement: distilled")
            per_set: dict[str, dict[str, list[float]]] = {}
            for (set_name, s), net in zip(keys, nets, strict=True):
                logits = predict(net, test_x)
                pred = logits.argmax(1).cpu()
                acc = accuracy(logits, test_y)
                idx, how = match_subset(sub.accuracy, acc, options.band, options.matching, options.nearest)
                sub_agree = agreement(pred, sub.predictions[idx]) if idx.numel() else torch.empty(0)
                step = match_step(mean_curve, acc)
                early_agree = agreement(pred, early.predictions[:, step - 1])
                for m, v in zip(idx.tolist(), sub_agree.tolist(), strict=True):
                    values.append({"set": set_name, "model": model, "seed": s, "pool": "subset", "member": m,
                                   "agreement": v})
                for m, v in enumerate(early_agree.tolist()):
                    values.append({"set": set_name, "model": model, "seed": s, "pool": "early", "member": m,
                                   "agreement": v})
                sub_mean = float(sub_agree.mean()) if sub_agree.numel() else float("nan")
                early_mean = float(early_agree.mean())
                rows.append({"set": set_name, "model": model, "seed": s, "accuracy": acc,
                             "subset_agreement": sub_mean, "subset_matched": int(idx.numel()), "matched_by": how,
                             "early_agreement": early_mean, "early_step": step,
                             "early_accuracy": float(mean_curve[step - 1]),
                             "early_gap": abs(float(mean_curve[step - 1]) - acc), "difference": early_mean - sub_mean,
                             "control": set_name in ctx.controls})
                d = per_set.setdefault(set_name, {"subset": [], "early": [], "step": [], "acc": []})
                d["subset"].append(sub_mean)
                d["early"].append(early_mean)
                d["step"].append(step)
                d["acc"].append(acc)
            for set_name, d in per_set.items():
                n = len(d["early"])
                su, ea = sum(d["subset"]) / n, sum(d["early"]) / n
                metrics[f"{set_name}/{model}/subset"] = su
                metrics[f"{set_name}/{model}/early"] = ea
                metrics[f"{set_name}/{model}/difference"] = ea - su
                metrics[f"{set_name}/{model}/early_step"] = float(sum(d["step"]) / n)
                metrics[f"{set_name}/{model}/accuracy"] = sum(d["acc"]) / n
        info["batched"] = dict(batched.LAST_CHOICE)
        table = pd.DataFrame(rows)
        values_table = pd.DataFrame(values)
        fig = self._figure(ctx, values_table, models, list(sets))
        declared = [r for r in rows if not r["control"]] or rows
        summary = "; ".join(
            f"{r['set']}/{r['model']}: early {r['early_agreement']:.2f} (step {r['early_step']}) vs subset "
            f"{r['subset_agreement']:.2f}" for r in declared[:4])
        unmatched = sorted({r["set"] for r in rows if r["early_gap"] > options.band / 2})
        if unmatched:
            info["early_unmatched"] = unmatched
            summary += (f". No early-stopped step comes within {options.band / 2:.3f} of the accuracy of "
                        f"{', '.join(unmatched)}: raise early_steps")
        return ProbeResult(metrics, {"agreement": table, "values": values_table, "subset_pool": pd.DataFrame(pool_rows),
                                     "early_curve": pd.DataFrame(curve_rows)}, {"agreement": fig}, summary, info)

    def _figure(self, ctx, values, models, sets):
        import numpy as np

        from ..report.figures import control_label, plt, save

        pyplot = plt()
        fig, axes = pyplot.subplots(len(models), len(sets), figsize=(4 * len(sets), 2.9 * len(models) + 0.4),
                                    squeeze=False, layout="constrained")
        for r, model in enumerate(models):
            for c, set_name in enumerate(sets):
                ax = axes[r][c]
                counts = []
                for pool, col, label in (("subset", SUBSET_COLOR, "subset-trained"),
                                         ("early", EARLY_COLOR, "early-stopped")):
                    if values.empty:
                        continue
                    sel = values[(values.set == set_name) & (values.model == model) & (values.pool == pool)]
                    members = int(sel.member.nunique())
                    counts.append(f"{label}: {_models(members)}")
                    _density(ax, np.asarray(sel.agreement, dtype=float), col, f"{label} pool", members)
                ax.set_yticks([])
                shown = control_label(set_name) if set_name in ctx.controls else set_name
                head = shown if len(models) == 1 else f"{shown} / {model}"
                ax.set_title(head + ("\n" + ", ".join(counts) if counts else ""), fontsize=9)
                ax.set_xlabel("agreement with the distilled-trained model")
                ax.set_ylabel("density")
                if r == 0 and c == len(sets) - 1:
                    ax.legend(fontsize=7, frameon=False, loc="upper left", bbox_to_anchor=(1.01, 1.0))
        fig.suptitle("Prediction agreement of real-data models with distilled-trained models", fontsize=10)
        caption = ("Per set and architecture: how often the real-data models of each pool (matched in accuracy to "
                   "the distilled-trained model) predict the same test labels as the distilled-trained model; "
                   "the title counts the matched models behind each curve; a pool of one, or of identical values, is "
                   "drawn as points.")
        return save(fig, ctx.figure_path("agreement"), caption)


def _models(n: int) -> str:
    from ..report.numbers import plural

    return plural(n, "model")


def _density(ax, v, col, label, members=None):
    """A filled Gaussian KDE (Scott bandwidth, as seaborn's default); points when the values do not spread."""
    import numpy as np

    if v.size == 0:
        return
    if v.size < 2 or np.ptp(v) < 1e-9:
        ax.plot(v, np.zeros_like(v), ls="", marker="o", markersize=7, color=col, clip_on=False,
                label=f"{label} ({_models(v.size if members is None else members)}, no spread)")
        return
    from scipy.stats import gaussian_kde

    grid = np.linspace(v.min() - 3 * v.std(), v.max() + 3 * v.std(), 200)
    dens = gaussian_kde(v)(grid)
    ax.fill_between(grid, dens, color=col, alpha=0.35, label=label)
    ax.plot(grid, dens, color=col, lw=1)


PROBES = (Agreement,)
