"""``agreement`` (paper A.6, Fig. 4): do distilled-trained models predict like early-stopped or subset-trained ones?"""

from __future__ import annotations

import math
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from ..findings import Finding, FindingSpec
from ..results import ProbeResult
from ..training import RecipeOverride

SUBSET_COLOR, EARLY_COLOR = "#FFC20A", "#0C7BDC"  # the paper's Fig. 4 colours


AGREEMENT = FindingSpec(
    id="agreement",
    claim="a distilled-trained model agrees more with accuracy-matched early-stopped models than with "
          "accuracy-matched subset-trained models",
    statistic="mean agreement with the matched early-stopped models minus mean agreement with the matched "
              "subset-trained models, per distilled-trained model",
    unit_of_n="distilled-trained models", threshold=0.0, direction="greater", paper="Fig. 4 (A.6)")
#: Distilled-trained models from which interval = "auto" uses the Student-t interval over them.
AUTO_SEEDS = 3


def judge_agreement(spec: FindingSpec, set_name: str, probe: str, units: list[dict], band: float,
                    interval: str = "auto", *, control: bool = False, seed: int = 0,
                    resamples: int = 4000) -> Finding:
    """The agreement finding of one set from its distilled-trained models (``units``: one per architecture and
    seed, each with its ``early`` and matched ``subset`` agreement values, ``accuracy``, ``closest_subset`` and
    ``early_gap``).

    ``seeds``: the Student-t interval of the per-model differences (n = distilled-trained models). ``pool``: a
    percentile bootstrap that resamples the distilled-trained models and, within each, its early-stopped and
    matched subset models (n = the smaller pool sample). A model without an accuracy-matched subset model or
    early-stopped step makes the finding inconclusive, with the closest accuracies in the reason.
    """
    import numpy as np

    from ..findings import mean_ci

    matched = [u for u in units if u["subset"] and u["early_gap"] <= band / 2 + 1e-12]
    diffs = [float(np.mean(u["early"]) - np.mean(u["subset"])) for u in matched]
    reasons = []
    no_subset = [u for u in units if not u["subset"]]
    if no_subset:
        worst = max(no_subset, key=lambda u: abs(u["closest_subset"] - u["accuracy"]))
        reasons.append(f"no accuracy-matched subset models for {len(no_subset)} of {len(units)} distilled-trained "
                       f"models: closest accuracy {worst['closest_subset']:.3f} vs {worst['accuracy']:.3f} "
                       "(raise max_subset_models)")
    no_early = [u for u in units if u["early_gap"] > band / 2 + 1e-12]
    if no_early:
        worst = max(no_early, key=lambda u: u["early_gap"])
        reasons.append(f"no accuracy-matched early-stopped step for {len(no_early)} of {len(units)} "
                       f"distilled-trained models: closest mean accuracy {worst['early_accuracy']:.3f} vs "
                       f"{worst['accuracy']:.3f} (raise early_steps)")
    mode = interval if interval != "auto" else ("seeds" if len(units) >= AUTO_SEEDS else "pool")
    details = {"interval": mode, "distilled_models": len(units), "matched_models": len(matched),
               "differences": diffs}
    if mode == "seeds":
        effect, ci, n = mean_ci(diffs)
        unit = "distilled-trained models"
    else:
        effect, ci = (float(np.mean(diffs)) if diffs else math.nan), None
        n = min([min(len(u["early"]), len(u["subset"])) for u in matched], default=0)
        unit = f"pool models (bootstrap; {len(matched)} distilled-trained)"
        if matched and n >= 2:
            ci = _hierarchical_bootstrap(matched, resamples, seed)
        elif matched and not reasons:
            reasons.append(f"only {n} matched subset or early-stopped model for a distilled-trained model; a "
                           "bootstrap over pool models needs at least 2 of each (raise min_matched, early_runs)")
        details["pool_models"] = {"early": [len(u["early"]) for u in matched],
                                  "subset": [len(u["subset"]) for u in matched]}
    return spec.judge(set_name, probe, None if not diffs else float(effect), ci, n, unit_of_n=unit,
                      reason="; ".join(reasons) or None, control=control, details=details)


def _hierarchical_bootstrap(units: list[dict], resamples: int, seed: int) -> tuple[float, float]:
    """95 % percentile interval of the mean difference: distilled-trained models resampled, and within each its
    early-stopped and subset agreement values. Pool members are resampled independently per distilled-trained
    model although models may share them; with several seeds prefer interval = 'seeds'."""
    import numpy as np

    rng = np.random.default_rng(seed)
    per_unit = []
    for u in units:
        e, s = np.asarray(u["early"], float), np.asarray(u["subset"], float)
        per_unit.append(e[rng.integers(0, e.size, (resamples, e.size))].mean(1)
                        - s[rng.integers(0, s.size, (resamples, s.size))].mean(1))
    diff = np.stack(per_unit)  # [units, resamples]
    pick = rng.integers(0, len(units), (resamples, len(units)))
    means = diff[pick, np.arange(resamples)[:, None]].mean(1)
    lo, hi = np.quantile(means, [0.025, 0.975])
    return float(lo), float(hi)


class Agreement:
    name = "agreement"
    description = "prediction agreement of distilled-trained models with early-stopped vs subset-trained real models"
    metric_directions = {"*/accuracy": "higher"}  # agreements and early_step describe, they are not better or worse
    findings = (AGREEMENT,)
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
        min_matched: int = Field(
            3, ge=1, description="subset models each distilled-trained model needs within the band; fewer and the "
            "pool grows with models at fractions aimed at its accuracy")
        max_subset_models: int | None = Field(
            None, ge=0, description="the most subset models the pool may grow to, targeted ones included "
            "(default: twice subset_models; subset_models: never grow)")
        interval: Literal["auto", "seeds", "pool"] = Field(
            "auto", description="the finding's interval: 'seeds' (Student-t over distilled-trained models), 'pool' "
            "(bootstrap over pool models and distilled-trained models) or 'auto' (seeds from 3 distilled-trained "
            "models, else pool)")
        nearest: int = Field(0, ge=0, description="descriptive only: when no subset model is in the band, compare "
                             "with this many closest (the finding is then inconclusive); 0: none")
        training: Literal["auto", "batched", "sequential"] = Field(
            "auto", description="train pool models stacked (vmap), one by one, or whichever is faster here")
        chunk: int = Field(32, ge=1, description="models per stacked batch")

        @field_validator("subset_fraction")
        @classmethod
        def _fraction_range(cls, v: tuple[float, float]) -> tuple[float, float]:
            low, high = v
            if not 0 < low <= high <= 1:
                raise ValueError(f"must satisfy 0 < low <= high <= 1, got {list(v)}")
            return v

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
            cap = 2 * options.subset_models if options.max_subset_models is None else options.max_subset_models
            if cap > options.subset_models:  # trained only when the pool misses a distilled model's accuracy
                items.append(ctx.train_item(model, max(ctx.real.num_classes, round(low * n_train)), subset,
                                            f"up to {cap - options.subset_models} subset-trained {model}s aimed at "
                                            "unmatched accuracies", 0))
            items.append(ctx.train_item(model, n_train, early, f"{options.early_runs} early-stopped {model} runs",
                                        options.early_runs, key=f"pool:early:{model}:{options.early_runs}"))
            items.append(ctx.forward_item(model, n_test, "test predictions after every early-stopped step",
                                          options.early_runs * early_steps))
            for set_name in ctx.select_sets(options.sets):
                items.append(ctx.train_item(model, ctx.set_size(set_name), recipe, f"{model} on {set_name}",
                                            options.seeds))
        return items

    def metric_names(self, sets: list[str], models: list[str], options: Options) -> list[str]:
        """The metric keys (or globs) run() can produce, given the study's sets and models (for validate)."""
        return [f"{s}/{m}/{key}" for s in options.sets or sets for m in options.models or models
                for key in ("subset", "early", "difference", "early_step", "accuracy")]

    def run(self, ctx, options: Options) -> ProbeResult:
        from ..batched import compile_mark

        mark = compile_mark()  # info['compile']: the last bag this run trains
        import math

        import pandas as pd
        import torch

        from .. import batched
        from ..pools import agreement, distilled_jobs, early_pool, match_step, match_subset, subset_pool, trained_models
        from ..subset_targeting import grow_subset_pool
        from ..training import accuracy, predict

        low, high = options.subset_fraction
        if not 0 < low <= high <= 1:
            raise ValueError(f"subset_fraction must satisfy 0 < low <= high <= 1, got {options.subset_fraction}")
        cap = 2 * options.subset_models if options.max_subset_models is None else options.max_subset_models
        if cap < options.subset_models:
            raise ValueError(f"max_subset_models ({cap}) must be at least subset_models ({options.subset_models})")
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
        units: dict[str, list[dict]] = {name: [] for name in sets}  # per set: one entry per (model, seed)
        info: dict = {"trained": {}, "early_steps": early_steps, "growth": {}}
        for model in models:
            sub = subset_pool(ctx, model, options.subset_models, (low, high), subset_recipe, mode=options.training,
                              chunk=options.chunk)
            base_trained = sub.trained
            early = early_pool(ctx, model, options.early_runs, early_recipe, mode=options.training,
                               chunk=options.chunk)
            mean_curve = early.accuracy.mean(0)
            jobs, ids, keys, recipes = distilled_jobs(ctx, sets, options.seeds, recipe, model)
            nets = []
            for set_name in sets:  # one recipe per set (learned lr fallback); train each set's seeds together
                sel = [i for i, k in enumerate(keys) if k[0] == set_name]
                nets += trained_models(ctx, model, [jobs[i] for i in sel], recipes[set_name], [ids[i] for i in sel],
                                       mode=options.training, chunk=options.chunk, description="agreement: distilled")
            outputs = []
            for net in nets:
                logits = predict(net, test_x)
                outputs.append((logits.argmax(1).cpu(), accuracy(logits, test_y)))
            # no silent fallback: the pool grows toward the accuracies it must match, within the budget
            sub, growth = grow_subset_pool(ctx, model, sub, [acc for _, acc in outputs], subset_recipe,
                                           band=options.band, matching=options.matching,
                                           min_matched=options.min_matched, budget=cap - options.subset_models,
                                           mode=options.training, chunk=options.chunk)
            info["growth"][model] = growth.to_json()
            info["trained"][model] = {"subset": base_trained, "targeted": growth.trained, "early": early.trained}
            for m in range(len(sub)):
                pool_rows.append({"model": model, "member": m, "targeted": m >= options.subset_models,
                                  "fraction": float(sub.fraction[m]), "images": int(sub.size[m]),
                                  "accuracy": float(sub.accuracy[m])})
            for t in range(len(mean_curve)):
                curve_rows.append({"model": model, "step": t + 1, "mean_accuracy": float(mean_curve[t]),
                                   "std_accuracy": float(early.accuracy[:, t].std()) if early.accuracy.shape[0] > 1
                                   else 0.0})
            per_set: dict[str, dict[str, list[float]]] = {}
            for (set_name, s), (pred, acc) in zip(keys, outputs, strict=True):
                idx, how = match_subset(sub.accuracy, acc, options.band, options.matching, options.nearest)
                if not idx.numel():
                    how = "none"
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
                closest = float(sub.accuracy[(sub.accuracy.double() - acc).abs().argmin()]) if len(sub) else math.nan
                early_gap = abs(float(mean_curve[step - 1]) - acc)
                rows.append({"set": set_name, "model": model, "seed": s, "accuracy": acc,
                             "subset_agreement": sub_mean, "subset_matched": int(idx.numel()), "matched_by": how,
                             "closest_subset_accuracy": closest, "early_agreement": early_mean, "early_step": step,
                             "early_accuracy": float(mean_curve[step - 1]), "early_gap": early_gap,
                             "difference": early_mean - sub_mean, "control": set_name in ctx.controls})
                units[set_name].append({"model": model, "seed": s, "accuracy": acc, "matched_by": how,
                                        "early": early_agree.tolist(),
                                        "subset": sub_agree.tolist() if how == "band" else [],
                                        "closest_subset": closest, "early_gap": early_gap,
                                        "early_accuracy": float(mean_curve[step - 1])})
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
        info["compile"] = batched.compile_info(mark)
        findings = [judge_agreement(AGREEMENT, set_name, ctx.probe_id or self.name, units[set_name], options.band,
                                    options.interval, control=set_name in ctx.controls,
                                    seed=ctx.seed_for(f"agreement:bootstrap:{set_name}"))
                    for set_name in sets]
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
        no_subset = [f"{r['set']}/{r['model']} ({r['accuracy']:.3f}; closest {r['closest_subset_accuracy']:.3f})"
                     for r in rows if r["matched_by"] != "band"]
        if no_subset:
            info["subset_unmatched"] = sorted({r["set"] for r in rows if r["matched_by"] != "band"})
            summary += (f". No accuracy-matched subset model for {', '.join(no_subset[:4])}"
                        f"{' and more' if len(no_subset) > 4 else ''}: raise max_subset_models")
        return ProbeResult(metrics, {"agreement": table, "values": values_table, "subset_pool": pd.DataFrame(pool_rows),
                                     "early_curve": pd.DataFrame(curve_rows)}, {"agreement": fig}, summary, info,
                           findings=findings)

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
