"""``recognition`` (paper A.1): do models trained on real data classify distilled images as their labels?"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from ..results import ProbeResult


class Recognition:
    name = "recognition"
    description = "accuracy of real-trained models on each distilled set's images (paper section 3)"

    class Options(BaseModel):
        model_config = ConfigDict(extra="forbid")

        models: list[str] = Field([], description="architectures from [models] to train on real data (default all)")
        sets: list[str] = Field([], description="distilled sets (default: all, controls included)")

    def plan(self, ctx, options: Options):
        """One real-trained model per architecture (shared with other probes), then forward passes."""
        items = []
        for model in ctx.select_models(options.models):
            item = ctx.pretrained_item(model)
            item.key = f"pretrained:{model}"
            items += [item, ctx.forward_item(model, len(ctx.real.test), f"{model} on the real test set")]
        return items

    def run(self, ctx, options: Options) -> ProbeResult:
        import pandas as pd

        from ..training import evaluate, predict

        models = ctx.select_models(options.models)
        sets = ctx.select_sets(options.sets)
        metrics: dict[str, float] = {}
        rows, class_rows = [], []
        test = ctx.real.test.to(ctx.device)
        with ctx.progress.task("recognition: real-trained models", total=len(models)) as task:
            nets = {}
            for model in models:
                nets[model] = ctx.pretrained(model)
                metrics[f"real_test/{model}"] = evaluate(nets[model], test)
                task.advance()
        for set_name, ds in sets.items():
            labels = ds.hard_labels
            for model, net in nets.items():
                pred = predict(net, ds.images).argmax(1).cpu()
                correct = (pred == labels).float()
                acc = float(correct.mean())
                metrics[f"{set_name}/{model}"] = acc
                rows.append({"set": set_name, "model": model, "recognition": acc,
                             "real_test_accuracy": metrics[f"real_test/{model}"], "control": set_name in ctx.controls})
                for c, cname in enumerate(ds.classes):
                    mask = labels == c
                    if mask.any():
                        class_rows.append({"set": set_name, "model": model, "class": cname,
                                           "recognition": float(correct[mask].mean()), "images": int(mask.sum())})
        table = pd.DataFrame(rows)
        fig = self._figure(ctx, table, models, list(sets))
        declared = [r for r in rows if not r["control"]] or rows
        lowest = min(declared, key=lambda r: r["recognition"]) if declared else None
        summary = ("lowest recognition: " + f"{lowest['set']} by {lowest['model']} {lowest['recognition']:.2f}"
                   if lowest else "no sets")
        return ProbeResult(metrics, {"recognition": table, "per_class": pd.DataFrame(class_rows)},
                           {"recognition": fig}, summary)

    def _figure(self, ctx, table, models, sets):
        import numpy as np

        from ..report.figures import color, plt, save

        pyplot = plt()
        fig, ax = pyplot.subplots(figsize=(max(4, 1.4 * len(sets) + 1), 3.2))
        width = 0.8 / max(1, len(models))
        x = np.arange(len(sets))
        for i, model in enumerate(models):
            vals = [float(table[(table.set == s) & (table.model == model)].recognition.iloc[0]) for s in sets]
            # Bars are labelled by the model that produced them (the paper's notebook mislabels them).
            ax.bar(x + (i - (len(models) - 1) / 2) * width, vals, width, label=model, color=color(i + 1))
        ax.set_xticks(x, sets, rotation=20, ha="right")
        ax.set_ylim(0, 1.05)
        ax.set_ylabel("recognition accuracy")
        ax.legend(fontsize=8, frameon=False)
        return save(fig, ctx.figure_path("recognition"))


PROBES = (Recognition,)
