"""``embedding`` (paper A.2, Fig. 2 right): where do distilled images fall among real images in feature space?"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from ..results import ProbeResult

MARKERS = ["^", "o", "s", "*", "v", "P", "X", "h"]  # "D" is the control's marker (report.figures)


def features(net, images, device, batch: int = 1024):
    """Penultimate features (``net.embed``) in eval mode, without gradients, on the CPU."""
    import torch

    from ..training import eval_mode

    if not hasattr(net, "embed"):
        raise TypeError(f"{type(net).__name__} has no embed(x) method: the embedding probe needs penultimate features")
    outs = []
    with eval_mode(net), torch.no_grad():
        for s in range(0, images.shape[0], batch):
            outs.append(net.embed(images[s : s + batch].to(device)).flatten(1).cpu())
    return torch.cat(outs)


def knn_label_agreement(query, query_labels, ref, ref_labels, k: int, exclude_self: bool = False):
    """Per query point: the fraction of its k nearest reference points (Euclidean) that share its label."""
    import torch

    d = torch.cdist(query.double(), ref.double())
    if exclude_self:
        d.fill_diagonal_(float("inf"))
    k = min(k, ref.shape[0] - int(exclude_self))
    nearest = d.topk(k, largest=False).indices
    return (ref_labels[nearest] == query_labels.view(-1, 1)).double().mean(1)


class Embedding:
    name = "embedding"
    description = "UMAP of a real-trained model's penultimate features: real test images and distilled images"
    conformance_options = {"projection": "pca"}

    class Options(BaseModel):
        model_config = ConfigDict(extra="forbid")

        model: str | None = Field(None, description="architecture from [models] (default: the first)")
        sets: list[str] = Field([], description="distilled sets (default: all, controls included)")
        projection: Literal["umap", "pca"] = Field(
            "umap", description="umap (the paper: umap-learn, joint fit) or pca (fast, linear, no numba compile)")
        n_neighbors: int = Field(5, ge=2, description="UMAP n_neighbors (paper: 5)")
        min_dist: float = Field(0.1, ge=0, description="UMAP min_dist (paper: umap-learn's default 0.1)")
        k: int = Field(5, ge=1, description="neighbours for the kNN label-agreement metric")
        max_real: int | None = Field(None, ge=1, description="embed at most this many real test images (default all)")

    def plan(self, ctx, options: Options):
        from ..plan import PlanItem

        model = options.model or next(iter(ctx.models))
        item = ctx.pretrained_item(model)
        item.key = f"pretrained:{model}"
        fit = 60.0 if options.projection == "umap" else 0.5  # umap's first call compiles numba code
        return [item, ctx.forward_item(model, len(ctx.real.test), "features of the real test set"),
                PlanItem(f"{options.projection} projection", "other", seconds=fit)]

    def metric_names(self, sets: list[str], models: list[str], options: Options) -> list[str]:
        """The metric keys (or globs) run() can produce, given the study's sets and models (for validate)."""
        return ["real_test/knn_agreement"] + [f"{s}/knn_agreement" for s in options.sets or sets]

    def run(self, ctx, options: Options) -> ProbeResult:
        import numpy as np
        import pandas as pd
        import torch

        model = options.model or next(iter(ctx.models))
        sets = ctx.select_sets(options.sets)
        net = ctx.pretrained(model)
        test = ctx.real.test
        idx = torch.arange(len(test))
        if options.max_real is not None and options.max_real < len(test):
            idx = torch.randperm(len(test), generator=ctx.rng("embedding:real"))[: options.max_real].sort().values
        real_f = features(net, test.images[idx], ctx.device)
        real_y = test.labels[idx].cpu()
        metrics: dict[str, float] = {}
        real_frac = knn_label_agreement(real_f, real_y, real_f, real_y, options.k, exclude_self=True)
        metrics["real_test/knn_agreement"] = float((real_frac > 0.5).double().mean())
        blocks, rows, point_rows = [real_f], [], []
        for set_name, ds in sets.items():
            f = features(net, ds.images, ctx.device)
            y = ds.hard_labels.cpu()
            frac = knn_label_agreement(f, y, real_f, real_y, options.k)
            majority = float((frac > 0.5).double().mean())
            metrics[f"{set_name}/knn_agreement"] = majority
            rows.append({"set": set_name, "model": model, "knn_agreement": majority,
                         "mean_neighbour_agreement": float(frac.mean()), "images": len(ds),
                         "control": set_name in ctx.controls})
            for i in range(len(ds)):
                point_rows.append((set_name, i, int(y[i]), float(frac[i])))
            blocks.append(f)
        stacked = torch.cat(blocks).numpy().astype(np.float32)
        coords = self._project(ctx, stacked, options)
        source = ["real_test"] * len(idx) + [p[0] for p in point_rows]
        index = idx.tolist() + [p[1] for p in point_rows]
        labels = real_y.tolist() + [p[2] for p in point_rows]
        agree = real_frac.tolist() + [p[3] for p in point_rows]
        coord_t = pd.DataFrame({"source": source, "index": index, "label": labels, "x": coords[:, 0],
                                "y": coords[:, 1], "neighbour_agreement": agree})
        table = pd.DataFrame(rows)
        fig = self._figure(ctx, coord_t, list(sets), ctx.real.classes, model, options.projection)
        declared = [r for r in rows if not r["control"]] or rows
        summary = (f"real test {metrics['real_test/knn_agreement']:.2f}; " +
                   ", ".join(f"{r['set']} {r['knn_agreement']:.2f}" for r in declared[:4]) +
                   f" of points have a {options.k}-NN real majority of their label ({model})")
        return ProbeResult(metrics, {"embedding": table, "coordinates": coord_t}, {"embedding": fig}, summary,
                           {"model": model, "projection": options.projection, "real_points": len(idx)})

    def _project(self, ctx, x, options):
        import numpy as np

        if options.projection == "pca":
            centered = x - x.mean(0, keepdims=True)
            _, _, vt = np.linalg.svd(centered.astype(np.float64), full_matrices=False)
            return centered @ vt[:2].T
        import warnings

        import umap

        seed = int(ctx.np_rng("embedding:umap").integers(0, 2**31 - 1))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "n_jobs overridden by random_state": we want the seeded, serial run
            reducer = umap.UMAP(n_components=2, n_neighbors=min(options.n_neighbors, len(x) - 1),
                                min_dist=options.min_dist, random_state=seed)
            return reducer.fit_transform(x)

    def _figure(self, ctx, coords, sets, classes, model="", projection="umap"):
        import numpy as np
        from matplotlib.lines import Line2D

        from ..report.figures import CONTROL_STYLE, class_colors, control_label, plt, save

        pyplot = plt()
        colors = np.array(class_colors(len(classes)))
        fig, ax = pyplot.subplots(figsize=(7.5, 5.5))
        real = coords[coords.source == "real_test"]
        ax.scatter(real.x, real.y, c=colors[real.label.to_numpy()], s=2, alpha=0.6, rasterized=True)
        set_handles = [Line2D([], [], ls="", marker=".", color="#7F7F7F", label="real test images")]
        i = 0
        for set_name in sets:
            pts = coords[coords.source == set_name]
            control = set_name in ctx.controls
            marker = CONTROL_STYLE["marker"] if control else MARKERS[i % len(MARKERS)]
            i += not control
            ax.scatter(pts.x, pts.y, c=colors[pts.label.to_numpy()], s=40, marker=marker, edgecolors="black",
                       linewidths=0.9, linestyle="--" if control else "-")
            set_handles.append(Line2D([], [], ls="", marker=marker, markerfacecolor="white", markeredgecolor="black",
                                      markersize=7, label=control_label(set_name) if control else set_name))
        name = "PCA" if projection == "pca" else "UMAP"
        ax.set_xlabel(f"{name} 1")
        ax.set_ylabel(f"{name} 2")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(f"{name} of {model} penultimate features (real-trained)", fontsize=10)
        fig.legend(handles=set_handles, fontsize=7, frameon=False, title="points", title_fontsize=8,
                   loc="upper left", bbox_to_anchor=(0.91, 0.88))
        class_handles = [Line2D([], [], ls="", marker="o", color=colors[c], markersize=6, label=str(cls))
                         for c, cls in enumerate(classes)]
        ax.legend(handles=class_handles, fontsize=7, frameon=False, title="class (colour)", title_fontsize=8,
                  loc="lower left", bbox_to_anchor=(1.01, 0.0), ncol=1 if len(classes) <= 12 else 2)
        caption = (f"Real test images (small dots) and distilled images (markers, one shape per set) in a 2-D "
                   f"{name} projection of the penultimate features of a {model} trained on real data; colour is "
                   "the class label.")
        return save(fig, ctx.figure_path("embedding"), caption)


PROBES = (Embedding,)
