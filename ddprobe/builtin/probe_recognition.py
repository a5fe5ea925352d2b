"""``recognition`` (paper A.1): do models trained on real data classify distilled images as their labels?"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from ..findings import FindingSpec
from ..results import ProbeResult
from ..training import RecipeOverride

RECOGNIZED = FindingSpec(
    "recognition", "real-trained models recognize the distilled images at least as well as real test images",
    "recognition accuracy of the set's images minus the same model's real test accuracy, one value per "
    "real-trained model (architectures x seeds); Student-t interval", "real-trained models", threshold=0.0,
    direction="greater", paper="Sec. 3, Fig. 2 (left)")


def pretrained_seed_name(seed: int) -> str:
    """Seed 0 is the study-wide real-trained model every probe shares; later seeds are independent runs."""
    return "pretrained" if seed == 0 else f"pretrained:{seed}"


def real_trained(ctx, model: str, seed: int, override: RecipeOverride):
    """The probe's real-trained model: the shared ``ctx.pretrained`` one, or one trained with its own recipe."""
    if ctx.models[model].weights is not None or override == RecipeOverride():
        return ctx.pretrained(model, pretrained_seed_name(seed))
    recipe = override.apply(ctx.pretrain_recipe)
    return ctx.trained(model, ctx.real.train, recipe, seed_name=pretrained_seed_name(seed),
                       data_id={"real-train": ctx.data_key}).eval()


class Recognition:
    name = "recognition"
    description = "accuracy of real-trained models on each distilled set's images (paper section 3)"
    findings = (RECOGNIZED,)
    metric_directions = {"*": "higher"}  # accuracies (ddprobe compare)

    class Options(BaseModel):
        model_config = ConfigDict(extra="forbid")

        models: list[str] = Field([], description="architectures from [models] to train on real data (default all)")
        sets: list[str] = Field([], description="distilled sets (default: all, controls included)")
        seeds: int = Field(2, ge=1, description="real-trained models per architecture (independent trainings); "
                                                "a [models] entry with `weights` counts once")
        recipe: RecipeOverride = Field(
            RecipeOverride(), description="changes to [pretrain] for this probe's real-trained models (e.g. fewer "
                                          "epochs, so that recognition is not at its ceiling on an easy dataset)")

    def plan(self, ctx, options: Options):
        """One real-trained model per architecture (shared with other probes), then forward passes."""
        items = []
        for model in ctx.select_models(options.models):
            for seed in range(1 if ctx.models[model].weights else options.seeds):
                if not ctx.models[model].weights and options.recipe == RecipeOverride():
                    item = ctx.pretrained_item(model, pretrained_seed_name(seed))
                    item.key = f"pretrained:{model}:{seed}"
                    items.append(item)
                elif not ctx.models[model].weights:
                    recipe = options.recipe.apply(ctx.pretrain_recipe)
                    items.append(ctx.train_item(model, len(ctx.real.train), recipe,
                                                f"{model} on the real training set (seed {seed})"))
                items.append(ctx.forward_item(model, len(ctx.real.test), f"{model} on the real test set"))
        return items

    def metric_names(self, sets: list[str], models: list[str], options: Options) -> list[str]:
        """The metric keys (or globs) run() can produce, given the study's sets and models (for validate)."""
        chosen = options.models or models
        return [f"real_test/{m}" for m in chosen] + [f"{s}/{m}" for s in options.sets or sets for m in chosen]

    def run(self, ctx, options: Options) -> ProbeResult:
        import pandas as pd

        from ..training import evaluate, predict

        models = ctx.select_models(options.models)
        sets = ctx.select_sets(options.sets)
        metrics: dict[str, float] = {}
        rows, class_rows, run_rows = [], [], []
        test = ctx.real.test.to(ctx.device)
        runs = [(m, s) for m in models for s in range(1 if ctx.models[m].weights else options.seeds)]
        nets, test_acc = {}, {}
        with ctx.progress.task("recognition: real-trained models", total=len(runs)) as task:
            for model, seed in runs:
                nets[model, seed] = real_trained(ctx, model, seed, options.recipe)
                test_acc[model, seed] = evaluate(nets[model, seed], test)
                task.advance()
        for model in models:
            metrics[f"real_test/{model}"] = _mean([test_acc[r] for r in runs if r[0] == model])
        for set_name, ds in sets.items():
            labels = ds.hard_labels
            for model in models:
                accs, correct_sum = [], None
                for (m, seed) in runs:
                    if m != model:
                        continue
                    pred = predict(nets[m, seed], ds.images).argmax(1).cpu()
                    correct = (pred == labels).float()
                    accs.append(float(correct.mean()))
                    correct_sum = correct if correct_sum is None else correct_sum + correct
                    run_rows.append({"set": set_name, "model": model, "seed": seed, "recognition": accs[-1],
                                     "real_test_accuracy": test_acc[m, seed],
                                     "control": set_name in ctx.controls})
                acc = _mean(accs)
                metrics[f"{set_name}/{model}"] = acc
                rows.append({"set": set_name, "model": model, "recognition": acc,
                             "real_test_accuracy": metrics[f"real_test/{model}"], "models": len(accs),
                             "control": set_name in ctx.controls})
                correct = correct_sum / len(accs)
                for c, cname in enumerate(ds.classes):
                    mask = labels == c
                    if mask.any():
                        class_rows.append({"set": set_name, "model": model, "class": cname,
                                           "recognition": float(correct[mask].mean()), "images": int(mask.sum())})
        table = pd.DataFrame(rows)
        per_run = pd.DataFrame(run_rows)
        findings = [RECOGNIZED.judge_runs(
            set_name, ctx.probe_id,
            [r["recognition"] - r["real_test_accuracy"] for r in run_rows if r["set"] == set_name],
            control=set_name in ctx.controls,
            details={"recognition": metrics.get(f"{set_name}/{models[0]}") if models else None})
            for set_name in sets]
        fig = self._figure(ctx, table, models, list(sets))
        declared = [r for r in rows if not r["control"]] or rows
        lowest = min(declared, key=lambda r: r["recognition"]) if declared else None
        summary = ("lowest recognition: " + f"{lowest['set']} by {lowest['model']} {lowest['recognition']:.2f} "
                   f"(real test accuracy {lowest['real_test_accuracy']:.2f}, {lowest['models']} model"
                   f"{'s' if lowest['models'] != 1 else ''})" if lowest else "no sets")
        return ProbeResult(metrics, {"recognition": table, "per_class": pd.DataFrame(class_rows), "runs": per_run},
                           {"recognition": fig}, summary, findings=findings)

    def _figure(self, ctx, table, models, sets):
        import numpy as np

        from ..report.figures import CONTROL_HATCH, color, control_label, plt, save

        pyplot = plt()
        fig, ax = pyplot.subplots(figsize=(max(4.5, 1.4 * len(sets) + 2.5), 3.4))
        width = 0.8 / max(1, len(models))
        x = np.arange(len(sets))
        hatch = [CONTROL_HATCH if s in ctx.controls else "" for s in sets]
        for i, model in enumerate(models):
            vals = [float(table[(table.set == s) & (table.model == model)].recognition.iloc[0]) for s in sets]
            # Bars are labelled by the model that produced them (the paper's notebook mislabels them).
            n = int(table[table.model == model].models.max()) if "models" in table and len(table) else 1
            label = model if n == 1 else f"{model} (mean of {n} models)"
            ax.bar(x + (i - (len(models) - 1) / 2) * width, vals, width, label=label, color=color(i),
                   hatch=hatch, edgecolor="white" if not any(hatch) else "#333333", linewidth=0.5)
            real = float(table[table.model == model].real_test_accuracy.iloc[0]) if len(table) else None
            if real is not None:
                ax.axhline(real, color=color(i), linestyle=":", linewidth=1.5, label=f"{model} on real test images")
        ax.set_xticks(x, [control_label(s) if s in ctx.controls else s for s in sets], rotation=20, ha="right")
        ax.set_ylim(0, 1.05)
        ax.set_xlabel("distilled set")
        ax.set_ylabel("recognition accuracy")
        ax.set_title("Recognition: real-trained models classify distilled images", fontsize=10)
        ax.legend(fontsize=8, frameon=False, title="model", loc="upper left", bbox_to_anchor=(1.01, 1.0))
        caption = ("Accuracy of models trained on real data when classifying each distilled set's images as their "
                   "labels (bars), beside each model's accuracy on the real test set (dotted line).")
        return save(fig, ctx.figure_path("recognition"), caption)


def _mean(values: list[float]) -> float:
    return float(sum(values) / len(values)) if values else float("nan")


PROBES = (Recognition,)
