"""``evaluate``: the field's standard evaluation, train on each distilled set and test on real test data."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from ..results import ProbeResult
from ..training import RecipeOverride


class Evaluate:
    name = "evaluate"
    description = "train each architecture on each distilled set over several seeds; real test accuracy"
    metric_directions = {"*": "higher"}  # every metric is a test accuracy (ddprobe compare)

    class Options(BaseModel):
        model_config = ConfigDict(extra="forbid")

        models: list[str] = Field([], description="architectures from [models] (default: all)")
        sets: list[str] = Field([], description="distilled sets (default: all, controls included)")
        seeds: int = Field(3, ge=1, description="trainings per set and model (different init and order)")
        recipe: RecipeOverride = Field(RecipeOverride(), description="changes to the study's [train] recipe")

    def plan(self, ctx, options: Options):
        """Trainings of every architecture on every set (``ddprobe plan``); cached ones are marked."""
        recipe = options.recipe.apply(ctx.recipe)
        recipe = recipe.for_set(None)  # the length of training is what the plan needs, not its lr
        items = []
        for set_name, info in ctx.select_sets(options.sets).items():
            for model in ctx.select_models(options.models):
                sha = info.get("sha256")
                cached = sha is not None and all(
                    ctx.trained_cached(model, sha, recipe, f"evaluate:{set_name}:{model}:{s}")
                    for s in range(options.seeds))
                items.append(ctx.train_item(model, ctx.set_size(set_name), recipe, f"{model} on {set_name}",
                                            options.seeds, cached, key=f"evaluate:{set_name}:{model}:{recipe.key()}"))
        return items

    def metric_names(self, sets: list[str], models: list[str], options: Options) -> list[str]:
        """The metric keys (or globs) run() can produce, given the study's sets and models (for validate)."""
        return [f"{s}/{m}" for s in options.sets or sets for m in options.models or models]

    def run(self, ctx, options: Options) -> ProbeResult:
        import numpy as np
        import pandas as pd

        from ..batched import TrainJob
        from ..pools import trained_models
        from ..training import evaluate

        recipe = options.recipe.apply(ctx.recipe)
        rows = []
        sets = ctx.select_sets(options.sets)
        models = ctx.select_models(options.models)
        test = ctx.real.test.to(ctx.device)  # once, not per trained model
        with ctx.progress.task("evaluate", total=len(sets) * len(models) * options.seeds) as task:
            for set_name, ds in sets.items():
                lr = ds.manifest.learned_lr
                set_recipe = recipe.for_set(lr, fallback=ctx.recipe.lr if ctx.recipe.lr != "learned" else 0.01)
                for model in models:
                    # the seeds are one bag on [study] executor; trained one by one, as ctx.trained would
                    jobs = [TrainJob(f"evaluate:{set_name}:{model}:{s}", ds, None, lr) for s in range(options.seeds)]
                    nets = trained_models(ctx, model, jobs, set_recipe, [ds.manifest.sha256] * options.seeds,
                                          mode="sequential", description=f"evaluate {set_name}")
                    accs = [evaluate(net, test) for net in nets]
                    task.advance(options.seeds)
                    rows.append({"set": set_name, "model": model, "mean": float(np.mean(accs)),
                                 "std": float(np.std(accs)), "seeds": len(accs),
                                 "lr": set_recipe.resolved_lr(lr), "control": set_name in ctx.controls})
        table = pd.DataFrame(rows)
        metrics = {f"{r['set']}/{r['model']}": r["mean"] for r in rows}
        best = max(rows, key=lambda r: r["mean"]) if rows else None
        from ..report.numbers import fmt_mean

        summary = (f"best: {best['set']} on {best['model']} {fmt_mean(best['mean'], best['std'], best['seeds'])} "
                   "test accuracy" if best else "no sets")
        return ProbeResult(metrics=metrics, tables={"accuracy": table}, summary=summary)


PROBES = (Evaluate,)
