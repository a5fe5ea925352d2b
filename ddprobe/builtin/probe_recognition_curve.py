"""``recognition_curve`` (paper A.7): while a model trains on real data, when does it recognize distilled images?"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from ..findings import FindingSpec
from ..results import ProbeResult
from ..training import RecipeOverride

EARLY = FindingSpec(
    "recognition_curve", "a model training on real data recognizes the distilled images before its own real test "
    "accuracy plateaus",
    "steps until real test accuracy completes 90 % of its rise minus steps until the set's recognition does, as a "
    "fraction of the window; one value per run (seed x model)", "runs", threshold=0.0, direction="greater",
    paper="Sec. 4.2")


MIN_POINTS = 20  # recorded steps below which no plateau can be told from noise
MIN_RISE = 0.05  # real test accuracy must rise at least this much for "its plateau" to mean anything


def rise_step(curve, fraction: float = 0.9, tail: float = 0.1) -> int:
    """The first index where the curve completes ``fraction`` of its rise from its start to its plateau.

    The plateau is the mean of the last ``tail`` of the window, so one noisy last point does not move it.
    """
    import numpy as np

    curve = np.asarray(curve, dtype=float)
    plateau = curve[-max(1, int(round(tail * len(curve)))):].mean()
    target = curve[0] + fraction * (plateau - curve[0])
    hits = np.nonzero(curve >= target - 1e-12)[0] if plateau >= curve[0] else np.nonzero(curve <= target)[0]
    return int(hits[0]) if hits.size else len(curve) - 1


def still_rising(curve, tail: float = 0.2, tolerance: float = 0.01) -> float | None:
    """How much the curve rose over the last ``tail`` of the window, when that exceeds ``tolerance``; else None."""
    import numpy as np

    curve = np.asarray(curve, dtype=float)
    k = min(len(curve), max(2, int(round(tail * len(curve)))))
    half = k // 2
    rise = float(curve[-half:].mean() - curve[-k:len(curve) - half].mean()) * k / max(1, k - half)
    return rise if rise > tolerance else None


def first_reaching(curve, fraction: float) -> int:
    """The first index whose value is at least ``fraction`` of the curve's last value."""
    import numpy as np

    curve = np.asarray(curve, dtype=float)
    target = fraction * curve[-1]
    hits = np.nonzero(curve >= target - 1e-12)[0]
    return int(hits[0]) if hits.size else len(curve) - 1


class RecognitionCurve:
    name = "recognition_curve"
    description = "recognition of each distilled set by a real-data model after every training step (paper 4.2)"
    findings = (EARLY,)
    metric_directions = {"*/final": "higher"}  # steps and test-at-step describe the curve (ddprobe compare)
    conformance_options = {"steps": 6, "seeds": 1}

    class Options(BaseModel):
        model_config = ConfigDict(extra="forbid")

        models: list[str] = Field([], description="architectures from [models] (default: all)")
        sets: list[str] = Field([], description="distilled sets (default: all, controls included)")
        steps: int = Field(300, ge=1, description="real-data training steps recorded (paper: 300 plotted)")
        seeds: int = Field(3, ge=1, description="independent real-data runs (paper: 1)")
        every: int = Field(1, ge=1, description="record after every this many steps")
        recipe: RecipeOverride = Field(
            RecipeOverride(), description="changes to [pretrain] (paper: SGD 0.01, momentum 0.9, batch 256)")
        training: Literal["auto", "batched", "sequential"] = Field(
            "auto", description="train the seeds stacked (vmap), one by one, or whichever is faster here")
        flat_tolerance: float = Field(
            0.01, ge=0, description="real test accuracy counts as plateaued when it rose by at most this much over "
                                    "the last 20 % of the window (else the finding is inconclusive)")

    def plan(self, ctx, options: Options):
        """Real-data runs of ``steps`` steps, with forward passes over the test set and every set as they go."""
        recipe = options.recipe.apply(ctx.pretrain_recipe).model_copy(update={"steps": options.steps, "epochs": None})
        items = []
        records = options.seeds * (options.steps // options.every)
        for model in ctx.select_models(options.models):
            items.append(ctx.train_item(model, len(ctx.real.train), recipe, f"{options.seeds} real-data {model} runs",
                                        options.seeds))
            items.append(ctx.forward_item(model, len(ctx.real.test), "test set after each recorded step", records))
        return items

    def metric_names(self, sets: list[str], models: list[str], options: Options) -> list[str]:
        """The metric keys (or globs) run() can produce, given the study's sets and models (for validate)."""
        chosen = options.models or models
        return [f"real_test/{m}/final" for m in chosen] + [
            f"{s}/{m}/{key}" for s in options.sets or sets for m in chosen
            for key in ("final", "step90", "step99", "test_at_step90")]

    def run(self, ctx, options: Options) -> ProbeResult:
        from ..batched import compile_mark

        mark = compile_mark()  # info['compile']: the last bag this run trains
        import numpy as np
        import pandas as pd
        import torch

        from ..batched import TrainJob, train_bag

        recipe = options.recipe.apply(ctx.pretrain_recipe).model_copy(
            update={"steps": options.steps, "epochs": None})
        models = ctx.select_models(options.models)
        sets = ctx.select_sets(options.sets)
        test_x, test_y = ctx.real.test.images.to(ctx.device), ctx.real.test.labels.to(ctx.device)
        set_data = {n: (ds.images.to(ctx.device), ds.labels.to(ctx.device)) for n, ds in sets.items()}
        frames, per_run = [], []
        for model in models:
            def compute(model=model) -> dict[str, torch.Tensor]:
                points = (options.steps // options.every) + 1 + (options.steps % options.every != 0)
                acc = torch.full((options.seeds, len(sets) + 1, points), float("nan"))
                loss = torch.full_like(acc, float("nan"))
                step_of = torch.zeros(points, dtype=torch.long)

                def done(i: int, run: dict[str, torch.Tensor]) -> None:
                    n = run["step"].numel()
                    acc[i, :, :n], loss[i, :, :n], step_of[:n] = run["accuracy"], run["loss"], run["step"]

                jobs = [TrainJob(f"recognition_curve:{model}:{s}", ctx.real.train) for s in range(options.seeds)]
                with ctx.progress.task(f"recognition curve ({model})", total=len(jobs)) as task:
                    train_bag(ctx, model, jobs, recipe, CurveCollector([(test_x, test_y), *set_data.values()]),
                              done, every=options.every, mode=options.training, task=task)
                return {"accuracy": acc, "loss": loss, "step": step_of}

            parts = {"model": ctx.models[model].key(), "recipe": recipe.key(), "seeds": options.seeds,
                     "every": options.every, "seed": ctx.seed, "real": ctx.data_key,
                     "sets": [ds.manifest.sha256 for ds in sets.values()]}
            got = ctx.cache.tensors("recognition-curves", parts, compute)
            steps = got["step"].tolist()
            per_run.append((model, got["accuracy"], steps))
            for si, series in enumerate(["real_test", *sets]):
                for s in range(options.seeds):
                    frames.append(pd.DataFrame({"model": model, "series": series, "seed": s, "step": steps,
                                                "accuracy": got["accuracy"][s, si].numpy(),
                                                "loss": got["loss"][s, si].numpy()}))
        curves = pd.DataFrame(pd.concat(frames, ignore_index=True))
        mean = curves.groupby(["model", "series", "step"], sort=False)[["accuracy", "loss"]].mean().reset_index()
        metrics, rows = {}, []
        for model in models:
            test_curve = mean[(mean.model == model) & (mean.series == "real_test")]
            metrics[f"real_test/{model}/final"] = float(test_curve.accuracy.iloc[-1])
            for set_name in sets:
                c = mean[(mean.model == model) & (mean.series == set_name)]
                vals, steps = np.asarray(c.accuracy), np.asarray(c.step)
                i90, i99 = first_reaching(vals, 0.9), first_reaching(vals, 0.99)
                row = {"set": set_name, "model": model, "final": float(vals[-1]), "step90": int(steps[i90]),
                       "step99": int(steps[i99]), "test_at_step90": float(test_curve.accuracy.iloc[i90]),
                       "test_at_step99": float(test_curve.accuracy.iloc[i99]),
                       "test_final": float(test_curve.accuracy.iloc[-1]), "control": set_name in ctx.controls}
                rows.append(row)
                for key in ("final", "step90", "step99", "test_at_step90"):
                    metrics[f"{set_name}/{model}/{key}"] = float(row[key])
        from ..batched import compile_info

        table = pd.DataFrame(rows)
        findings, runs_table = self._findings(ctx, per_run, list(sets), options)
        fig = self._figure(ctx, curves, models, list(sets))
        declared = [r for r in rows if not r["control"]] or rows
        summary = "; ".join(f"{r['set']}/{r['model']}: 90% of final recognition {r['final']:.2f} at step "
                            f"{r['step90']} (real test {r['test_at_step90']:.2f})" for r in declared[:4])
        return ProbeResult(metrics, {"recognition_curve": table, "curves": curves, "runs": runs_table},
                           {"recognition_curve": fig}, summary, {"recipe": recipe.key(), "compile": compile_info(mark)},
                           findings)

    def _findings(self, ctx, per_run, set_names, options):
        """Per run: (real test's 90 %-rise step - the set's) / window; inconclusive while real test still rises."""
        import pandas as pd

        rows, flat_start = [], []
        for model, acc, steps in per_run:
            window = max(1, steps[-1] - steps[0])
            for s in range(acc.shape[0]):
                test = acc[s, 0].numpy()
                rising = still_rising(test, tolerance=options.flat_tolerance)
                tail = test[-max(1, len(test) // 10):].mean()
                if tail - test[0] < MIN_RISE:
                    flat_start.append(float(tail - test[0]))
                t_real = steps[rise_step(test)]
                for j, set_name in enumerate(set_names, start=1):
                    t_set = steps[rise_step(acc[s, j].numpy())]
                    rows.append({"model": model, "seed": s, "set": set_name, "real_test_rise90": t_real,
                                 "set_rise90": t_set, "effect": (t_real - t_set) / window,
                                 "real_test_still_rising": rising})
        runs = pd.DataFrame(rows)
        findings = []
        for set_name in set_names:
            g = runs[runs.set == set_name]
            rising = [r for r in g.real_test_still_rising if r is not None and r == r]
            points = len(per_run[0][2]) if per_run else 0
            reason = None
            if points < MIN_POINTS:
                reason = (f"the window of {options.steps} steps is too short to see a plateau: {points} recorded "
                          f"steps, at least {MIN_POINTS} needed (raise `steps` or lower `every`)")
            elif flat_start:
                reason = (f"real test accuracy did not rise (by {max(flat_start):.3f}); the real-data training "
                          f"recipe learns nothing in {options.steps} steps")
            elif rising:
                reason = (f"the window of {options.steps} steps is too short: real test accuracy still rose by "
                          f"{max(rising):.3f} over its last 20 % (raise `steps`)")
            findings.append(EARLY.judge_runs(set_name, ctx.probe_id, list(g.effect), reason=reason,
                                             control=set_name in ctx.controls,
                                             details={"set_rise90_mean": float(g.set_rise90.mean()),
                                                      "real_test_rise90_mean": float(g.real_test_rise90.mean())}))
        return findings, runs

    def _figure(self, ctx, curves, models, sets):
        from ..report.figures import plt, save, series_style

        pyplot = plt()
        fig, axes = pyplot.subplots(1, len(models), figsize=(5 * len(models) + 1.5, 3.2), squeeze=False)
        for a, model in enumerate(models):
            ax = axes[0][a]
            i = 0
            for series in ["real_test", *sets]:
                g = curves[(curves.model == model) & (curves.series == series)].groupby("step").accuracy
                m, s = g.mean(), g.std().fillna(0)
                style = series_style(series, i, ctx.controls)
                style.pop("marker", None)
                i += series not in ctx.controls and series != "real_test"
                ax.plot(m.index, m.values, **style)
                ax.fill_between(m.index, (m - s).values, (m + s).values, color=style["color"], alpha=0.15, lw=0)
            ax.set_xlabel("real-data training step")
            ax.set_ylabel("accuracy")
            ax.set_ylim(0, 1.02)
            ax.set_title(f"{model} trained on real data", fontsize=9)
            if a == len(models) - 1:
                ax.legend(fontsize=7, frameon=False, loc="upper left", bbox_to_anchor=(1.01, 1.0))
        caption = ("While a model trains on real data: its accuracy on the real test set and on each distilled "
                   "set's images (mean ± standard deviation over runs).")
        return save(fig, ctx.figure_path("recognition_curve"), caption)


class CurveCollector:
    """Each run's accuracy and loss on each series ((images, labels) pairs) at every observed step, in order."""

    observes = True

    def __init__(self, series: list) -> None:
        self.series = series
        self.seen: dict[int, list] = {}  # job -> [(step, accuracy [series], loss [series])]

    def observe(self, step: int, ids: list[int], logits_fn) -> None:
        import torch

        from ..training import loss_fn

        accs, losses = [], []
        for x, y in self.series:
            out = logits_fn(x)
            hard = y.argmax(1) if y.dim() == 2 else y
            accs.append((out.argmax(2) == hard).float().mean(1).cpu())
            losses.append(torch.stack([loss_fn(o, y) for o in out]).cpu())
        for row, i in enumerate(ids):
            self.seen.setdefault(i, []).append((step, [a[row] for a in accs], [v[row] for v in losses]))

    def done(self, i: int, net) -> dict:
        import torch

        seen = self.seen.pop(i, [])
        return {"step": torch.tensor([s for s, _, _ in seen], dtype=torch.long),
                "accuracy": torch.stack([torch.stack(a) for _, a, _ in seen], 1),
                "loss": torch.stack([torch.stack(v) for _, _, v in seen], 1)}


PROBES = (RecognitionCurve,)
