"""``influence`` (paper A.9, Fig. 10): exact leave-one-out influence of each distilled image on real test images.

Sign convention: ``influence[i, j] = loss_j(trained without i) - loss_j(trained on the whole set)``; positive means
distilled image ``i`` helps test image ``j`` (docs/influence.md). Exact leave-one-out is averaged over several
initializations, compared with a noise floor, and used to audit the registered approximation backends.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from ..results import ProbeResult
from ..training import RecipeOverride
from .influence_coherence import FEATURES, LABEL

DEFAULT_BACKENDS = ["explicit", "cg", "lissa", "arnoldi", "ekfac", "tracin"]


class Influence:
    name = "influence"
    findings = (LABEL, FEATURES)
    description = "exact leave-one-out influence of distilled images on real test images, audited approximations"
    # a cheap preset for ddprobe.testing's conformance suite (seconds, every backend exercised)
    conformance_options = {"inits": 2, "k": 2, "recipe": {"steps": 5}, "test_images": 20, "gallery_classes": 1,
                           "tracin_checkpoints": 2, "backend_options": {"lissa": {"depth": 20}}}

    class Options(BaseModel):
        model_config = ConfigDict(extra="forbid")

        model: str | None = Field(None, description="architecture from [models] (default: the first one)")
        sets: list[str] = Field([], description="distilled sets (default: all, controls included)")
        inits: int = Field(3, ge=1, description="shared initializations; influence is averaged over them")
        k: int = Field(9, ge=1, description="top-k real test images per distilled image (the paper shows 9)")
        recipe: RecipeOverride = Field(RecipeOverride(), description="changes to the study's [train] recipe")
        backends: list[str] = Field(DEFAULT_BACKENDS, description="approximations audited against exact LOO")
        backend_options: dict[str, dict[str, Any]] = Field(
            {}, description="per-backend options, e.g. { lissa = { depth = 200 } } (docs/influence.md)")
        tracin_checkpoints: int = Field(10, ge=1, description="checkpoints of the training run that TracIn sums")
        strategy: Literal["auto", "serial", "processes", "vmap"] = Field(
            "auto", description="how retrainings run: auto = vmap on CUDA, processes when workers > 1, else serial")
        workers: int | None = Field(None, ge=1, description="worker processes (default: [study] workers)")
        test_images: int | None = Field(None, ge=1, description="use a random subset of the real test set")
        gallery_classes: int = Field(10, ge=0, description="gallery figures per set, one per class (first N)")
        reverse: bool = Field(False, description="also rank real training images by gradient similarity to each "
                                                 "distilled image under the real-trained model")
        reverse_pool: int = Field(2000, ge=1, description="real training images searched by the reverse direction")

        @model_validator(mode="after")
        def _check_backends(self) -> Influence.Options:
            from ..influence import get_backend

            for name in self.backends:
                try:
                    get_backend(name, self.backend_options.get(name))  # unknown names and bad options fail here
                except KeyError as exc:
                    raise ValueError(exc.args[0]) from None
            extra = set(self.backend_options) - set(self.backends)
            if extra:
                raise ValueError(f"backend_options for backends not listed in backends: {sorted(extra)}")
            return self

    def plan(self, ctx, options: Options):
        """Per set and initialization: the full run, one retraining without each image, and a noise-floor run."""
        from ..plan import PlanItem

        model = options.model or next(iter(ctx.models))
        recipe = options.recipe.apply(ctx.recipe)
        items = []
        for set_name in ctx.select_sets(options.sets):
            n = ctx.set_size(set_name)
            items.append(ctx.train_item(model, n, recipe, f"{options.inits} x ({n} leave-one-out + 2) retrainings "
                                        f"on {set_name}", options.inits * (n + 2)))
            items.append(PlanItem(f"audit of {len(options.backends)} approximations", "other", seconds=2.0))
        item = ctx.pretrained_item(model)  # its features measure the top-k's coherence beyond the label
        item.key = f"pretrained:{model}"
        return [*items, item]

    def metric_names(self, sets: list[str], models: list[str], options: Options) -> list[str]:
        """The metric keys (or globs) run() can produce, given the study's sets and models (for validate)."""
        keys = ["label_agreement", "label_agreement_chance", "noise_floor", "signal_rms", "above_noise",
                *(f.id.replace("influence_", "coherence_") for f in self.findings)]  # the findings' effects
        keys += ["rank_agreement"] if options.inits > 1 else []
        keys += ["reverse_label_agreement"] if options.reverse else []
        for b in options.backends:  # spearman and pearson, or the backend's status when it gave no scores
            keys += [f"audit/{b}/spearman", f"audit/{b}/pearson", f"audit/{b}/*"]  # (timings are not metrics)
        return [f"{s}/{key}" for s in options.sets or sets for key in keys]

    def run(self, ctx, options: Options) -> ProbeResult:
        import pandas as pd

        model = options.model or next(iter(ctx.models))
        recipe = options.recipe.apply(ctx.recipe)
        test = ctx.real.test
        test_idx = None
        if options.test_images is not None and options.test_images < len(test):
            import torch

            test_idx = torch.randperm(len(test), generator=ctx.rng("influence:test"))[: options.test_images].sort()[0]
            test = test.subset(test_idx)
        metrics: dict[str, float] = {}
        timings: dict[str, float] = {}
        top_rows: list[dict] = []
        audit_rows: list[dict] = []
        set_rows: list[dict] = []
        reverse_rows: list[dict] = []
        figures: dict[str, Any] = {}
        info: dict[str, Any] = {"model": model, "sign": "loss_without_i - loss_full (positive: i helps j)",
                                "test_images": len(test), "sets": {}}
        findings: list = []
        space: dict[str, Any] = {}  # the real-trained model's test features, computed once for every set
        for set_name, ds in ctx.select_sets(options.sets).items():
            out = self._one_set(ctx, options, model, recipe, set_name, ds, test, test_idx)
            findings += self._findings(ctx, options, model, set_name, ds, test, out.pop("per_init"), space)
            for f in findings[-2:]:
                if f.effect is not None:
                    out["metrics"][f.id.replace("influence_", "coherence_")] = f.effect
            metrics.update({f"{set_name}/{k}": v for k, v in out["metrics"].items()})
            timings.update({f"{set_name}/{k}": v for k, v in out["timings"].items()})
            top_rows += out["top"]
            audit_rows += out["audit"]
            set_rows.append({"set": set_name, "control": set_name in ctx.controls, **out["metrics"],
                             "seconds_per_retrain": out["timings"]["seconds_per_retrain"]})
            info["sets"][set_name] = out["info"]
            for c, path in out["figures"].items():
                figures[f"gallery-{set_name}-{c}"] = path
            if options.reverse:
                rows, agree = self._reverse(ctx, options, model, set_name, ds)
                reverse_rows += rows
                metrics[f"{set_name}/reverse_label_agreement"] = agree
        tables = {"sets": pd.DataFrame(set_rows), "top_k": pd.DataFrame(top_rows), "audit": pd.DataFrame(audit_rows)}
        if options.reverse:
            tables["reverse"] = pd.DataFrame(reverse_rows)
        return ProbeResult(metrics, tables, figures, self._summary(set_rows, audit_rows, options.k), info,
                           findings=findings, timings=timings)

    def _findings(self, ctx, options, model, set_name, ds, test, per_init, space) -> list:
        """influence_label and influence_features for one set, from each initialization's influence matrix."""
        from .influence_coherence import coherence, judge, unit_features
        from .probe_embedding import features

        if "units" not in space:
            try:
                space["units"] = unit_features(features(ctx.pretrained(model), test.images, ctx.device))
            except TypeError as exc:  # an architecture without penultimate features (embed)
                space["units"], space["why"] = None, str(exc)
        hard, labels = ds.hard_labels.cpu(), test.labels.cpu()
        per = [coherence(x.cpu(), options.k, hard, labels, space["units"], ds.num_classes) for x in per_init]
        return judge(set_name, ctx.probe_id or self.name, per, min(options.k, int(per_init.shape[-1])),
                     control=set_name in ctx.controls,
                     no_features=None if space["units"] is not None else f"no feature space: {space['why']}")

    # -- one distilled set -------------------------------------------------------------------------------------
    def _one_set(self, ctx, options, model, recipe, set_name, ds, test, test_idx) -> dict[str, Any]:
        import time

        import numpy as np
        import torch

        from .. import influence as inf

        lr = ds.manifest.learned_lr
        recipe = recipe.for_set(lr)
        executor = None if options.workers else getattr(ctx, "executor", None)  # [study] executor
        workers = options.workers or (executor.workers if executor and executor.parallel(ctx.device) else 1)
        data = ds.to(ctx.device)
        test_x, test_y = test.images.to(ctx.device), test.labels.to(ctx.device)
        n = len(ds)
        base = {"model": ctx.models[model].key(), "set": ds.manifest.sha256, "recipe": recipe.key(), "seed": ctx.seed,
                "learned_lr": lr, "real": ctx.data_key, "test": None if test_idx is None else test_idx.tolist(),
                "version": 1}
        steps = recipe.total_steps(n)
        every = max(1, steps // options.tracin_checkpoints)
        ckpt_steps = list(range(0, steps, every))[: options.tracin_checkpoints]
        results = []
        compile_info: list[dict[str, Any]] = []  # [study] compile decisions of the bags retrained now (not cached)
        with ctx.progress.task(f"influence: {set_name} leave-one-out", total=options.inits * (n + 2)) as task:
            for r in range(options.inits):
                init = ctx.build_model(model, seed_name=f"influence:{r}")
                record = ckpt_steps if r == 0 else []  # initialization 0's full run is the audited model
                parts = {**base, "init": f"influence:{r}", "checkpoint_steps": record}

                def compute(init=init, r=r, record=record) -> dict[str, torch.Tensor]:
                    res = inf.exact_loo(init, data.images, data.labels, test_x, test_y, recipe, learned_lr=lr,
                                        strategy=options.strategy, workers=workers, executor=executor,
                                        noise_generator=ctx.rng(f"influence:noise:{set_name}:{r}"),
                                        checkpoint_steps=record, advance=task.advance,
                                        compile=getattr(ctx, "compile_mode", "never"))
                    compile_info.append(res.compile)
                    out = {**res.tensors(), "seconds": torch.tensor([res.seconds]),
                           "retrains": torch.tensor([res.retrains]),
                           "ckpt_steps": torch.tensor([s for s, _ in res.checkpoints], dtype=torch.long)}
                    out.update({f"final.{k}": v for k, v in res.final_state.items()})
                    for c, (_, state) in enumerate(res.checkpoints):
                        out.update({f"ckpt{c}.{k}": v for k, v in state.items()})
                    return out

                before = ctx.cache.misses["influence-loo"]
                t = ctx.cache.tensors("influence-loo", parts, compute)
                if ctx.cache.misses["influence-loo"] == before:
                    task.advance(n + 2)
                if r == 0:
                    stored = t
                results.append(inf.LOOResult.from_tensors(t, seconds=float(t["seconds"][0]),
                                                          retrains=int(t["retrains"][0])))
        strategy = inf.resolve_strategy(options.strategy, ctx.device, workers, recipe, n)
        infl = torch.stack([res.influence for res in results])  # [R, n, m]
        mean = infl.mean(0)
        margin_mean = torch.stack([res.margin_influence for res in results]).mean(0)
        sem = infl.std(0) / np.sqrt(len(results)) if len(results) > 1 else torch.zeros_like(mean)
        noise = torch.stack([res.noise.abs() for res in results])
        noise_floor = float(torch.quantile(noise.flatten().double(), 0.99))
        hard = ds.hard_labels.cpu()
        test_labels = test.labels.cpu()
        k = min(options.k, mean.shape[1])
        helped_idx, helped_val = inf.top_k(mean, k, helped=True)
        harmed_idx, harmed_val = inf.top_k(mean, k, helped=False)
        threshold = torch.maximum(torch.full_like(mean, noise_floor), 2 * sem)
        above = float((helped_val > threshold.gather(1, helped_idx)).float().mean())
        freq = torch.bincount(test_labels, minlength=ds.num_classes).double() / len(test_labels)
        seconds = sum(res.seconds for res in results)
        retrains = sum(res.retrains for res in results)
        metrics = {
            "label_agreement": inf.label_agreement(mean, hard, test_labels, k),
            "label_agreement_chance": float(freq[hard].mean()),
            "noise_floor": noise_floor,
            "signal_rms": float(mean.pow(2).mean().sqrt()),
            "above_noise": above,
        }
        timings = {"seconds_per_retrain": seconds / max(1, retrains)}  # wall clock: apart from the science
        if len(results) > 1:
            metrics["rank_agreement"] = inf.rank_agreement([x for x in infl])
        top = []
        test_ids = (test_idx if test_idx is not None else torch.arange(len(test_labels))).tolist()
        for i in range(n):
            for direction, idx, val in (("helped", helped_idx, helped_val), ("harmed", harmed_idx, harmed_val)):
                for rank in range(k):
                    j = int(idx[i, rank])
                    top.append({"set": set_name, "distilled": i, "distilled_label": ds.classes[int(hard[i])],
                                "direction": direction, "rank": rank + 1, "test_index": test_ids[j],
                                "test_label": ds.classes[int(test_labels[j])], "influence": float(val[i, rank]),
                                "influence_sem": float(sem[i, j]), "margin_influence": float(margin_mean[i, j]),
                                "above_noise": bool(abs(float(val[i, rank])) > float(threshold[i, j]))})
        # the approximation audit: each backend against exact LOO of initialization 0
        audit = []
        t0 = time.perf_counter()
        problem = self._problem(ctx, model, recipe, lr, data, test_x, test_y, stored)
        setup = time.perf_counter() - t0
        exact0 = results[0].influence
        for name in options.backends:
            backend = inf.get_backend(name, options.backend_options.get(name))
            res = backend.compute(problem)
            row = {"set": set_name, "backend": name, "status": res.status, "seconds": res.seconds,
                   "exact_seconds": results[0].seconds, "pearson": None, "spearman": None, "row_spearman": None,
                   "label_agreement": None, "info": _jsonable(res.info)}
            timings[f"audit/{name}/seconds"] = res.seconds
            if res.scores is not None:
                corr = inf.correlations(res.scores, exact0)
                row.update(corr, label_agreement=inf.label_agreement(res.scores, hard, test_labels, k))
                for key in ("spearman", "pearson"):
                    metrics[f"audit/{name}/{key}"] = corr[key]
            else:
                metrics[f"audit/{name}/{res.status}"] = 1.0
            audit.append(row)
        figures = {}
        for c in range(min(options.gallery_classes, ds.num_classes)):
            rows = torch.nonzero(hard == c).flatten()
            if len(rows):
                figures[ds.classes[c]] = self._gallery(ctx, ds, test, rows, helped_idx, helped_val, set_name, c)
        info = {"strategy": strategy, "workers": workers, "retrains": retrains, "exact_seconds": seconds,
                "audit_setup_seconds": setup, "inits": options.inits,
                "full_run_check": float((problem.full_losses - results[0].loss_full).abs().max()),
                "compile": compile_info}
        return {"metrics": metrics, "timings": timings, "top": top, "audit": audit, "figures": figures, "info": info,
                "per_init": infl}

    def _problem(self, ctx, model, recipe, lr, data, test_x, test_y, stored):
        """Initialization 0's full-set model and its training checkpoints (from the LOO cache entry)."""
        from .. import influence as inf

        net = ctx.build_model(model, seed_name="influence:0")
        names = list(net.state_dict())
        net.load_state_dict({k: stored[f"final.{k}"] for k in names})
        net.eval()
        ckpts = [(int(s), {k: stored[f"ckpt{c}.{k}"].to(ctx.device) for k in names})
                 for c, s in enumerate(stored["ckpt_steps"].tolist())]
        problem = inf.InfluenceProblem(net, data.images, data.labels, test_x, test_y,
                                       lr=recipe.resolved_lr(lr), l2=recipe.weight_decay, checkpoints=ckpts)
        problem.full_losses = inf.test_outputs(net, test_x, test_y)[0]
        return problem

    def _gallery(self, ctx, ds, test, rows, helped_idx, helped_val, set_name, c):
        """Paper Fig. 10: each distilled image of class ``c``, then its top-k most helped real test images."""
        from ..report.figures import plt, save
        from ..report.numbers import fmt

        pyplot = plt()
        k = helped_idx.shape[1]
        dist_px = ctx.real.to_pixels(ds.images[rows].cpu()).clamp(0, 1)
        fig, axes = pyplot.subplots(len(rows), k + 1, figsize=(1.35 * (k + 1) + 0.4, 1.6 * len(rows) + 0.8),
                                    squeeze=False)
        for r, i in enumerate(rows.tolist()):
            real_px = ctx.real.to_pixels(test.images[helped_idx[i]].cpu()).clamp(0, 1)
            for col in range(k + 1):
                ax = axes[r][col]
                img = dist_px[r] if col == 0 else real_px[col - 1]
                ax.imshow((img[0] if img.shape[0] == 1 else img.permute(1, 2, 0)).numpy(),
                          cmap="gray" if img.shape[0] == 1 else None, vmin=0, vmax=1)
                ax.set_xticks([])
                ax.set_yticks([])
                if col == 0:
                    for spine in ax.spines.values():
                        spine.set_color("#E69F00")
                        spine.set_linewidth(2)
                    ax.set_title(f"distilled #{i}\nlabel {ds.classes[c]}", fontsize=8, pad=2)
                else:
                    label = int(test.labels[helped_idx[i, col - 1]])
                    ax.set_title(f"label {test.classes[label]}\ninfluence {fmt(float(helped_val[i, col - 1]))}",
                                 fontsize=8, color="#000000" if label == c else "#D55E00", pad=2)
        fig.suptitle(f"{set_name}, class {ds.classes[c]}: the real test images each distilled image helps most",
                     fontsize=9)
        caption = (f"Each row: a distilled image of class {ds.classes[c]} from {set_name} (orange frame), then the "
                   "real test images whose loss rises most when it is removed from training (influence = that loss "
                   "increase); labels in red differ from the distilled image's class.")
        return save(fig, ctx.figure_path(f"gallery-{set_name}-{ds.classes[c]}"), caption)

    def _reverse(self, ctx, options, model, set_name, ds):
        """Real training images whose loss gradient (real-trained model, head) is most aligned with each distilled
        image's: where a distilled image's content comes from."""
        import torch

        from .. import influence as inf

        net = ctx.pretrained(model)
        real = ctx.real.train
        pool = torch.arange(len(real))
        if options.reverse_pool < len(real):
            pool = torch.randperm(len(real), generator=ctx.rng("influence:reverse"))[: options.reverse_pool]
        sim = inf.gradient_similarity(net, ds.images.to(ctx.device), ds.labels.to(ctx.device),
                                      real.images[pool].to(ctx.device), real.labels[pool].to(ctx.device))
        k = min(options.k, sim.shape[1])
        idx, val = inf.top_k(sim, k)
        hard = ds.hard_labels.cpu()
        rows = []
        for i in range(len(ds)):
            for rank in range(k):
                j = int(pool[idx[i, rank]])
                rows.append({"set": set_name, "distilled": i, "distilled_label": ds.classes[int(hard[i])],
                             "rank": rank + 1, "real_train_index": j, "real_label": ds.classes[int(real.labels[j])],
                             "gradient_cosine": float(val[i, rank])})
        agree = float((real.labels[pool][idx] == hard.view(-1, 1)).float().mean())
        return rows, agree

    @staticmethod
    def _summary(set_rows, audit_rows, k) -> str:
        parts = []
        for row in set_rows:
            text = (f"{row['set']}: top-{k} label agreement {row['label_agreement']:.2f} "
                    f"(chance {row['label_agreement_chance']:.2f})")
            if "rank_agreement" in row:
                text += f", rank agreement across inits {row['rank_agreement']:.2f}"
            ok = [a for a in audit_rows if a["set"] == row["set"] and a["spearman"] is not None]
            if ok:
                best = max(ok, key=lambda a: a["spearman"])
                text += f"; best approximation {best['backend']} (Spearman {best['spearman']:.2f})"
            parts.append(text)
        return "; ".join(parts) or "no sets"


def _jsonable(obj: Any) -> Any:
    import json

    return json.loads(json.dumps(obj, default=str))


PROBES = (Influence,)
