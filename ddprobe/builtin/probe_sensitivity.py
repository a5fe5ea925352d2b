"""``sensitivity``: how much does a distilled set's accuracy depend on the training setup and architecture?

Each set trains under every cell of a grid (recipe fields x architectures), next to named presets: the paper's
analysis protocol and the native evaluation protocols of DC, DM and MTT (paper-methods.md section C and 1.3).
"""

from __future__ import annotations

import itertools
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ..results import ProbeResult
from ..training import RecipeOverride

# Complete recipes (every field set), so a preset means the same thing whatever the study's [train] says.
_PAPER = {"optimizer": "sgd", "lr": 0.01, "momentum": 0.9, "weight_decay": 0.0, "steps": 300, "epochs": None,
          "batch_size": "full", "schedule": "none", "augment": "none"}
PRESETS: dict[str, dict[str, Any]] = {
    # the analysis repo's / RTP's protocol: 300 full-batch SGD steps, no weight decay, schedule or augmentation
    "paper": _PAPER,
    # DC (main.py, ConvNet on CIFAR-10): 300 epochs, batch 256, wd 5e-4, lr x0.1 at half, no augmentation
    "dc": {**_PAPER, "weight_decay": 5e-4, "steps": None, "epochs": 300, "batch_size": 256, "schedule": "step"},
    # DSA: DC's protocol for 1000 epochs with DSA augmentation
    "dsa": {**_PAPER, "weight_decay": 5e-4, "steps": None, "epochs": 1000, "batch_size": 256, "schedule": "step",
            "augment": "dsa"},
    # DM (main_DM.py): 1000 epochs with DSA augmentation, wd 5e-4, x0.1 at epoch 500, batch 256
    "dm": {**_PAPER, "weight_decay": 5e-4, "steps": None, "epochs": 1000, "batch_size": 256, "schedule": "step",
           "augment": "dsa"},
    # MTT (distill.py evaluation): DM's protocol with the set's learned learning rate
    "mtt": {**_PAPER, "lr": "learned", "weight_decay": 5e-4, "steps": None, "epochs": 1000, "batch_size": 256,
            "schedule": "step", "augment": "dsa"},
}
FIELDS = list(RecipeOverride.model_fields)


class Sensitivity:
    name = "sensitivity"
    description = "accuracy of each set across training recipes, native DC/DM/MTT protocols and architectures"
    metric_directions = {"*/spread": "none", "*/spread_ratio": "none", "*/*/*": "higher"}  # accuracies per recipe
    conformance_options = {"presets": ["paper"], "grid": {"lr": [0.01, 0.05]}, "seeds": 1, "length_scale": 0.02}

    class Options(BaseModel):
        model_config = ConfigDict(extra="forbid")

        models: list[str] = Field([], description="architectures from [models] (the architecture axis; default all)")
        sets: list[str] = Field([], description="distilled sets (default: all; random controls are always added)")
        seeds: int = Field(2, ge=1, description="trainings per cell")
        presets: list[str] = Field(["paper", "dc", "dm", "mtt"], description=f"named protocols: {', '.join(PRESETS)}")
        grid: dict[str, list[Any]] = Field(
            {}, description="recipe field -> values, e.g. { lr = [0.001, 0.01, 0.1], steps = [100, 300] }")
        grid_mode: Literal["one_at_a_time", "product"] = Field(
            "one_at_a_time", description="vary each grid field alone from [train], or all combinations")
        recipes: dict[str, RecipeOverride] = Field({}, description="extra named cells: changes to [train]")
        include_study: bool = Field(True, description="include the study's [train] recipe as the cell 'study'")
        length_scale: float = Field(
            1.0, gt=0, description="multiply every cell's steps or epochs (e.g. 0.1 for a quick look)")
        training: Literal["auto", "batched", "sequential"] = Field(
            "auto", description="train a cell's models stacked (vmap), one by one, or whichever is faster here")
        chunk: int = Field(32, ge=1, description="models per stacked batch")
        diverged_margin: float = Field(
            0.05, ge=0, description="a run diverged when its test accuracy is at most chance + this margin; a cell "
                                    "diverged when all its seeds did (reported, and left out of spread_converged)")

        @field_validator("presets")
        @classmethod
        def _known_presets(cls, v: list[str]) -> list[str]:
            from ..errors import suggest

            for name in v:
                if name not in PRESETS:
                    raise ValueError(f"unknown preset {name!r}; {suggest(name, PRESETS)}")
            return v

        @field_validator("grid")
        @classmethod
        def _valid_grid(cls, v: dict[str, list[Any]]) -> dict[str, list[Any]]:
            from ..errors import suggest

            for key, values in v.items():
                if key not in FIELDS:
                    raise ValueError(f"grid key {key!r} is not a recipe field; {suggest(key, FIELDS)}")
                if not values:
                    raise ValueError(f"grid.{key} is empty")
                for value in values:
                    RecipeOverride.model_validate({key: value})
            return v

        @model_validator(mode="after")
        def _some_cell(self):
            if not (self.include_study or self.presets or self.grid or self.recipes):
                raise ValueError("no cell to train: set include_study = true or give presets, grid or recipes")
            return self

    def cells(self, ctx, options: Options) -> list[tuple[str, Any, str]]:
        """(name, recipe, note) for every cell, duplicates (same recipe) removed, first name kept."""
        from .. import augment
        from ..training import TrainRecipe

        base = ctx.recipe
        out: list[tuple[str, Any, str]] = []
        if options.include_study:
            out.append(("study", base, ""))
        for name in options.presets:
            fields, note = dict(PRESETS[name]), ""
            if fields["augment"] not in augment.names():
                note = f"augment {fields['augment']!r} unavailable, used 'flip_crop'"
                fields["augment"] = "flip_crop"
            out.append((name, TrainRecipe.model_validate(fields), note))
        if options.grid:
            keys = list(options.grid)
            if options.grid_mode == "product":
                combos = [dict(zip(keys, vals, strict=True)) for vals in itertools.product(*options.grid.values())]
            else:
                combos = [{k: v} for k in keys for v in options.grid[k]]
            for combo in combos:
                name = ",".join(f"{k}={v}" for k, v in combo.items()).replace(" ", "")
                out.append((name, RecipeOverride.model_validate(combo).apply(base), ""))
        for name, override in options.recipes.items():
            out.append((name, override.apply(base), ""))
        if options.length_scale != 1.0:
            scaled = []
            for name, r, note in out:
                upd = {"epochs": max(1, round(r.epochs * options.length_scale))} if r.epochs is not None else {
                    "steps": max(1, round((r.steps or 0) * options.length_scale))}
                scaled.append((name, r.model_copy(update=upd), note))
            out = scaled
        seen: dict[str, str] = {}
        unique = []
        for name, r, note in out:
            key = str(sorted(r.key().items()))
            if key in seen:
                continue
            seen[key] = name
            unique.append((name, r, note))
        return unique

    def plan(self, ctx, options: Options):
        """A training per cell of the grid, architecture, set (controls included) and seed."""
        cells = self.cells(ctx, options)
        items = []
        for set_name in ctx.select_sets(options.sets):
            for model in ctx.select_models(options.models):
                for cell, recipe, _ in cells:
                    items.append(ctx.train_item(model, ctx.set_size(set_name), recipe,
                                                f"{model} on {set_name}, cell {cell}", options.seeds))
        return items

    def metric_names(self, sets: list[str], models: list[str], options: Options) -> list[str]:
        """The metric keys (or globs) run() can produce, given the study's sets and models (for validate)."""
        chosen = list(options.sets or sets)
        chosen += [s for s in sets if s not in chosen and s.startswith("random_ipc")]  # controls are always added
        out = []
        for s in chosen:
            out += [f"{s}/{m}/*" for m in options.models or models]  # one key per cell (cell names vary)
            out += [f"{s}/spread", f"{s}/spread_ratio", f"{s}/diverged_cells", f"{s}/spread_converged"]
        return out

    def run(self, ctx, options: Options) -> ProbeResult:
        from ..batched import compile_mark

        mark = compile_mark()  # info['compile']: the last bag this run trains
        import numpy as np
        import pandas as pd

        from ..pools import distilled_jobs, trained_models
        from ..training import evaluate

        models = ctx.select_models(options.models)
        sets = ctx.select_sets(options.sets)
        for name in sorted(ctx.controls):
            if name in ctx.distilled and name not in sets:
                sets[name] = ctx.distilled[name]
        cells = self.cells(ctx, options)
        test = ctx.real.test.to(ctx.device)
        runs = []
        with ctx.progress.task("sensitivity cells", total=len(cells) * len(models)) as task:
            for cell, recipe, note in cells:
                for model in models:
                    jobs, ids, keys, recipes = distilled_jobs(ctx, sets, options.seeds, recipe, model)
                    groups: dict[str, list[int]] = {}
                    for i, (set_name, _) in enumerate(keys):
                        groups.setdefault(str(sorted(recipes[set_name].key().items())), []).append(i)
                    for members in groups.values():
                        use = recipes[keys[members[0]][0]]
                        nets = trained_models(ctx, model, [jobs[i] for i in members], use, [ids[i] for i in members],
                                              mode=options.training, chunk=options.chunk,
                                              description=f"sensitivity: {cell}")
                        for i, net in zip(members, nets, strict=True):
                            set_name, s = keys[i]
                            lr_note = note
                            if recipe.lr == "learned" and sets[set_name].manifest.learned_lr is None:
                                lr_note = "; ".join(filter(None, [note, "no learned lr: used 0.01"]))
                            runs.append({"set": set_name, "model": model, "cell": cell, "seed": s,
                                         "accuracy": evaluate(net, test), "control": set_name in ctx.controls,
                                         "note": lr_note})
                    task.advance()
        runs_t = pd.DataFrame(runs)
        chance = 1.0 / ctx.real.num_classes
        runs_t["diverged"] = runs_t.accuracy <= chance + options.diverged_margin
        table = (runs_t.groupby(["set", "model", "cell"], sort=False)
                 .agg(mean=("accuracy", "mean"), std=("accuracy", "std"), seeds=("accuracy", "size"),
                      diverged=("diverged", "sum"), control=("control", "first"), note=("note", "first"))
                 .reset_index())
        table["std"] = table["std"].fillna(0.0)
        table["diverged"] = table["diverged"].astype(int)
        metrics: dict[str, float] = {}
        for _, r in table.iterrows():
            metrics[f"{r.set}/{r.model}/{r.cell}"] = float(r["mean"])
        spreads, diverged = {}, {}
        for set_name, g in table.groupby("set", sort=False):
            spreads[set_name] = float(g["mean"].max() - g["mean"].min())
            metrics[f"{set_name}/spread"] = spreads[set_name]
            # a cell whose every seed ended at chance diverged: its accuracy says nothing about the set's value
            ok = g[g.diverged < g.seeds]
            diverged[set_name] = [f"{r.model}:{r.cell}" for r in g[g.diverged == g.seeds].itertuples()]
            metrics[f"{set_name}/diverged_cells"] = float(len(diverged[set_name]))
            metrics[f"{set_name}/spread_converged"] = float(ok["mean"].max() - ok["mean"].min()) if len(ok) else \
                float("nan")
        spread_rows = []
        for set_name in sets:
            control = self._control_for(ctx, set_name)
            ratio = float("nan")
            if control is not None and spreads.get(control, 0) > 0:
                ratio = spreads[set_name] / spreads[control]
                metrics[f"{set_name}/spread_ratio"] = ratio
            g = table[table.set == set_name]
            best, worst = g.loc[g["mean"].idxmax()], g.loc[g["mean"].idxmin()]
            spread_rows.append({"set": set_name, "spread": spreads[set_name],
                                "spread_converged": metrics[f"{set_name}/spread_converged"],
                                "diverged": ", ".join(diverged[set_name]), "control": control,
                                "spread_ratio": ratio, "best": f"{best.model}:{best.cell}", "best_acc": best["mean"],
                                "worst": f"{worst.model}:{worst.cell}", "worst_acc": worst["mean"]})
        spread_t = pd.DataFrame(spread_rows)
        fig = self._figure(ctx, table, list(sets), models, [c[0] for c in cells])
        declared = [r for r in spread_rows if r["set"] not in ctx.controls] or spread_rows
        summary = "; ".join(f"{r['set']}: spread {r['spread']:.3f}" + (
            f" ({r['spread_ratio']:.2f}x the control's)" if np.isfinite(r["spread_ratio"]) else "") + (
            f", {r['spread_converged']:.3f} without {len(diverged[r['set']])} diverged cell"
            f"{'s' if len(diverged[r['set']]) != 1 else ''} ({r['diverged']})" if diverged[r["set"]] else "")
            for r in declared[:4])
        from ..batched import compile_info

        info = {"cells": {name: r.key() for name, r, _ in cells}, "compile": compile_info(mark)}  # last bag's
        return ProbeResult(metrics, {"sensitivity": table, "spread": spread_t, "runs": runs_t},
                           {"sensitivity": fig}, summary, info)

    @staticmethod
    def _control_for(ctx, set_name):
        """The set's own control (a control is its own); without one at its images per class, the first control."""
        from ..findings.collect import control_for_set

        if set_name in ctx.controls:
            return set_name
        return control_for_set(set_name, ctx) or (sorted(ctx.controls)[0] if ctx.controls else None)

    def _figure(self, ctx, table, sets, models, cells):
        import numpy as np

        from ..report.figures import control_label, plt, save

        cols = [(m, c) for m in models for c in cells]
        grid = np.full((len(sets), len(cols)), np.nan)
        for i, s in enumerate(sets):
            for j, (m, c) in enumerate(cols):
                v = table[(table.set == s) & (table.model == m) & (table.cell == c)]
                if not v.empty:
                    grid[i, j] = float(v["mean"].iloc[0])
        pyplot = plt()
        fig, ax = pyplot.subplots(figsize=(max(4, 0.75 * len(cols) + 2), max(2, 0.5 * len(sets) + 1.2)))
        im = ax.imshow(grid, cmap="viridis", aspect="auto", vmin=np.nanmin(grid), vmax=np.nanmax(grid))
        for i in range(grid.shape[0]):
            for j in range(grid.shape[1]):
                if np.isfinite(grid[i, j]):
                    ax.text(j, i, f"{grid[i, j]:.2f}", ha="center", va="center", fontsize=7,
                            color="white" if grid[i, j] < np.nanmean(grid) else "black")
        label = (lambda m, c: c) if len(models) == 1 else (lambda m, c: f"{m}:{c}")
        ax.set_xticks(range(len(cols)), [label(m, c) for m, c in cols], rotation=35, ha="right", fontsize=8)
        ax.set_yticks(range(len(sets)), [control_label(s) if s in ctx.controls else s for s in sets], fontsize=8)
        ax.set_xlabel("training recipe" if len(models) == 1 else "model: training recipe")
        ax.set_ylabel("distilled set")
        ax.set_title("Test accuracy under changed training recipes", fontsize=10)
        fig.colorbar(im, ax=ax, label="test accuracy")
        caption = ("Mean test accuracy of models trained on each distilled set (rows) with each training recipe "
                   "of the grid (columns).")
        return save(fig, ctx.figure_path("sensitivity"), caption)


PROBES = (Sensitivity,)
