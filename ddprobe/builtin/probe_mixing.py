"""``mixing`` (paper A.4): train on a distilled set plus k real images per class; does a little real data hurt?"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from ..findings import FindingSpec
from ..results import ProbeResult
from ..training import RecipeOverride

HURTS = FindingSpec(
    "mixing", "adding a few real images per class helps a distilled set less than it helps the random-real control",
    "change in test accuracy from adding k real images per class, minus the control's change, paired by seed "
    "(for the control itself: its change against no change)", "seeds", threshold=0.0, direction="less",
    paper="Sec. 3, Fig. 3 (right)")

MARKERS = ["s", "o", "*", "^", "v", "P", "X", "h"]


def real_order(ctx, seed: int):
    """Per-class shuffles of the real training rows for one seed; the first k of each give the nested subsets."""
    import torch

    gen = ctx.rng(f"mixing:real:{seed}")
    return [idx[torch.randperm(idx.numel(), generator=gen)] for idx in ctx.real.train.class_indices()]


def real_rows(order, k: int):
    import torch

    return torch.cat([o[:k] for o in order]) if k > 0 else torch.zeros(0, dtype=torch.long)


class Mixing:
    name = "mixing"
    description = "accuracy after adding k real images per class to each distilled set (paper section 3)"
    findings = (HURTS,)
    metric_directions = {"*/change": "none", "*/k*": "higher"}  # test accuracies; a change has no better way
    conformance_options = {"k": [0, 2], "seeds": 1, "recipe": {"steps": 5}}

    class Options(BaseModel):
        model_config = ConfigDict(extra="forbid")

        models: list[str] = Field([], description="architectures from [models] (default: all)")
        sets: list[str] = Field([], description="distilled sets (default: all; the random control is the baseline)")
        k: list[int] = Field([0, 2, 10, 50, 250], description="real images added per class (capped by the data)")
        seeds: int = Field(3, ge=1, description="trainings per cell; each seed draws its own nested real subsets")
        recipe: RecipeOverride = Field(RecipeOverride(), description="changes to the study's [train] recipe")
        training: Literal["auto", "batched", "sequential"] = Field(
            "auto", description="train models of one set stacked (vmap), one by one, or whichever is faster here")
        chunk: int = Field(32, ge=1, description="models per stacked batch")
        finding_k: int | None = Field(
            None, ge=1, description="real images per class the finding compares with k = 0 (default: the smallest "
                                    "k > 0; the paper's drop is at 2-10)")

        @field_validator("k")
        @classmethod
        def _counts(cls, v: list[int]) -> list[int]:
            if not v:
                raise ValueError("lists no count; give real images per class to add, e.g. k = [0, 2, 10]")
            if any(k < 0 for k in v):
                raise ValueError(f"counts must be >= 0, got {v}")
            return v

    def plan(self, ctx, options: Options):
        """A training per set, k, architecture and seed on the set plus k real images per class."""
        recipe = options.recipe.apply(ctx.recipe)
        cap = min(ctx.real.train.counts())
        items = []
        for set_name in ctx.select_sets(options.sets):
            for k in sorted({min(k, cap) for k in options.k}):
                n = ctx.set_size(set_name) + k * ctx.real.num_classes
                for model in ctx.select_models(options.models):
                    items.append(ctx.train_item(model, n, recipe, f"{model} on {set_name} + {k} real/class",
                                                options.seeds))
        return items

    def metric_names(self, sets: list[str], models: list[str], options: Options) -> list[str]:
        """The metric keys (or globs) run() can produce, given the study's sets and models (for validate)."""
        out = []
        for s in options.sets or sets:
            for m in options.models or models:
                # a count above the smallest class is capped to it (a smaller number, unknown before the data)
                digits = len(str(max(options.k)))
                out += [f"{s}/{m}/k{k}" for k in sorted(set(options.k))]
                out += [f"{s}/{m}/k" + "[0-9]" * n for n in range(1, digits + 1)]
                if 0 in options.k and any(k > 0 for k in options.k):
                    out.append(f"{s}/{m}/change")
        return out

    def run(self, ctx, options: Options) -> ProbeResult:
        from ..batched import compile_mark

        mark = compile_mark()  # info['compile']: the last bag this run trains
        import numpy as np
        import pandas as pd

        from ..batched import TrainJob
        from ..data import LabeledData
        from ..pools import trained_models
        from ..training import evaluate

        if any(k < 0 for k in options.k):
            raise ValueError(f"k must be >= 0, got {options.k}")
        cap = min(ctx.real.train.counts())
        ks = sorted({min(k, cap) for k in options.k})
        capped = sorted(k for k in options.k if k > cap)
        recipe = options.recipe.apply(ctx.recipe)
        models = ctx.select_models(options.models)
        sets = ctx.select_sets(options.sets)
        orders = [real_order(ctx, s) for s in range(options.seeds)]
        test = ctx.real.test.to(ctx.device)
        rows = []
        for model in models:
            for set_name, ds in sets.items():
                use = recipe.for_set(ds.manifest.learned_lr)
                jobs, ids, keys = [], [], []
                base = ds.as_data()
                for s in range(options.seeds):
                    for k in ks:
                        data = LabeledData.concat([base, ctx.real.train.subset(real_rows(orders[s], k))]) if k else base
                        # one init per (model, seed), shared across sets and k: a paired comparison
                        jobs.append(TrainJob(f"mixing:{model}:{s}", data, None, ds.manifest.learned_lr))
                        ids.append({"set": ds.manifest.sha256, "mixing_real": {"stream": f"mixing:real:{s}", "k": k}})
                        keys.append((s, k, len(data)))
                nets = trained_models(ctx, model, jobs, use, ids, mode=options.training, chunk=options.chunk,
                                      description=f"mixing: {set_name}")
                for (s, k, n), net in zip(keys, nets, strict=True):
                    rows.append({"set": set_name, "model": model, "k": k, "seed": s, "images": n,
                                 "accuracy": evaluate(net, test), "control": set_name in ctx.controls})
        runs = pd.DataFrame(rows)
        summary_rows, metrics = [], {}
        for (set_name, model, k), g in runs.groupby(["set", "model", "k"], sort=False):
            acc = np.asarray(g.accuracy, dtype=float)
            summary_rows.append({"set": set_name, "model": model, "k": int(k), "mean": float(acc.mean()),
                                 "std": float(acc.std()), "seeds": len(acc), "images": int(g.images.iloc[0]),
                                 "control": bool(g.control.iloc[0])})
            metrics[f"{set_name}/{model}/k{int(k)}"] = float(acc.mean())
        table = pd.DataFrame(summary_rows)
        first = next((k for k in ks if k > 0), None)
        changes = []
        if 0 in ks and first is not None:
            for (set_name, model), g in table.groupby(["set", "model"], sort=False):
                change = float(g[g.k == first]["mean"].iloc[0] - g[g.k == 0]["mean"].iloc[0])
                metrics[f"{set_name}/{model}/change"] = change
                changes.append((set_name, model, change, bool(g.control.iloc[0])))
        findings = self._findings(ctx, runs, ks, options, models)
        fig = self._figure(ctx, table, models, list(sets), ks, sets)
        declared = [c for c in changes if not c[3]] or changes
        summary = (f"adding {first} real/class changes accuracy by " +
                   ", ".join(f"{s}/{m} {c:+.3f}" for s, m, c, _ in declared[:4]) if declared else
                   "no k = 0 baseline to compare with")
        from ..batched import compile_info

        info = {"k": ks, "capped": capped, "cap": cap, "compile": compile_info(mark)}  # the last bag's [study] compile
        return ProbeResult(metrics, {"mixing": table, "runs": runs}, {"mixing": fig}, summary, info, findings)

    def _findings(self, ctx, runs, ks, options, models):
        """Per set: the seed-paired change from k = 0 to k = finding_k, against the same-ipc control's change."""
        from ..findings.collect import control_for_set

        k = options.finding_k if options.finding_k is not None else next((k for k in ks if k > 0), None)
        if k is not None:
            k = min(k, max(ks))
        out = []
        for set_name in runs.set.unique():
            control = set_name in ctx.controls
            if k is None or 0 not in ks or k not in ks:
                out.append(HURTS.judge(set_name, ctx.probe_id, None, None, 0, control=control,
                                       reason="the probe's k list needs 0 and a k > 0 to measure a change"))
                continue
            base = None if control else control_for_set(set_name, ctx)
            values, why = [], None
            for model in models:
                mine = self._changes(runs, set_name, model, k)
                if control:
                    values += list(mine.values())
                    continue
                if base is None or base not in set(runs.set):
                    why = "no random-real control at this set's images per class ran in this probe"
                    break
                theirs = self._changes(runs, base, model, k)
                values += [mine[s] - theirs[s] for s in sorted(mine) if s in theirs]
            statistic = f"accuracy(k = {k}) - accuracy(k = 0), " + (
                "against no change" if control else f"minus {base}'s change, paired by seed and model")
            out.append(HURTS.judge_runs(set_name, ctx.probe_id, values, control=control, reason=why,
                                        statistic=statistic, unit_of_n="seed x model pairs" if len(models) > 1
                                        else "seeds", details={"k": k}))
        return out

    @staticmethod
    def _changes(runs, set_name, model, k) -> dict[int, float]:
        g = runs[(runs.set == set_name) & (runs.model == model)]
        at = {int(s): float(a) for s, a in zip(g[g.k == k].seed, g[g.k == k].accuracy, strict=True)}
        zero = {int(s): float(a) for s, a in zip(g[g.k == 0].seed, g[g.k == 0].accuracy, strict=True)}
        return {s: at[s] - zero[s] for s in at if s in zero}

    def _figure(self, ctx, table, models, set_names, ks, sets):
        from ..report.figures import plt, save, series_style

        pyplot = plt()
        fig, axes = pyplot.subplots(1, len(models), figsize=(5 * len(models) + 1.5, 3.4), squeeze=False)
        for a, model in enumerate(models):
            ax = axes[0][a]
            i = 0
            for set_name in set_names:
                g = table[(table.set == set_name) & (table.model == model)].sort_values("k")
                if g.empty:
                    continue
                control = set_name in ctx.controls
                style = series_style(set_name, i, ctx.controls)
                if not control:
                    style["marker"] = MARKERS[i % len(MARKERS)]
                i += 0 if control else 1
                ax.errorbar(g.k, g["mean"], yerr=g["std"], capsize=2, ms=5, **style)
            ax.set_xscale("symlog", linthresh=1)
            ipc = next((ds.manifest.ipc for ds in sets.values() if ds.manifest.ipc), None)
            ax.set_xticks(ks, [f"{ipc}+{k}" if ipc else f"+{k}" for k in ks])
            ax.set_xlabel("images per class: distilled + real")
            ax.set_ylabel("test accuracy")
            ax.set_title(f"{model}: distilled set plus k real images per class", fontsize=9)
            if a == len(models) - 1:
                ax.legend(fontsize=7, frameon=False, loc="upper left", bbox_to_anchor=(1.01, 1.0))
        caption = ("Test accuracy of models trained on each distilled set with k real images per class added "
                   "(mean ± standard deviation over seeds).")
        return save(fig, ctx.figure_path("mixing"), caption)


PROBES = (Mixing,)
