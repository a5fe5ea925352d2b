"""``pixels`` (paper A.3 made quantitative): pixel statistics of distilled images against real ones."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from ..findings import FindingSpec
from ..results import ProbeResult

OUTSIDE = FindingSpec(
    "pixels", "distilled pixel values leave the valid range [0, 1] more often than real images do",
    "share of an image's pixel values outside [0, 1], minus the real training images' share; mean over the set's "
    "images with a percentile-bootstrap interval", "images", threshold=0.0, direction="greater",
    paper="Sec. 3, Fig. 3 (left)")


class Pixels:
    name = "pixels"
    description = "per-channel mean/std/min/max and fraction outside [0, 1] in pixel space, vs real images"
    findings = (OUTSIDE,)
    metric_directions = {"*/outside_01": "lower"}  # the rest describe the images, no better way (ddprobe compare)

    class Options(BaseModel):
        model_config = ConfigDict(extra="forbid")

        sets: list[str] = Field([], description="distilled sets (default: all)")
        bins: int = Field(80, ge=10, description="histogram bins of the density figure")

    def plan(self, ctx, options: Options):
        from ..plan import PlanItem

        return [PlanItem("pixel statistics and a density figure", "other", seconds=0.5)]

    def metric_names(self, sets: list[str], models: list[str], options: Options) -> list[str]:
        """The metric keys (or globs) run() can produce, given the study's sets and models (for validate)."""
        return [f"{s}/{stat}" for s in ["real", *(options.sets or sets)]
                for stat in ("outside_01", "min", "max", "mean", "std")]

    def run(self, ctx, options: Options) -> ProbeResult:
        import pandas as pd

        from ..findings import bootstrap_ci

        sets = ctx.select_sets(options.sets)
        groups = {"real": ctx.real.to_pixels(ctx.real.train.images)}
        groups.update({name: ctx.real.to_pixels(ds.images) for name, ds in sets.items()})
        rows, metrics = [], {}
        for name, pixels in groups.items():
            flat = pixels.float()
            outside = float(((flat < 0) | (flat > 1)).float().mean())
            metrics.update({f"{name}/outside_01": outside, f"{name}/min": float(flat.min()),
                            f"{name}/max": float(flat.max()), f"{name}/mean": float(flat.mean()),
                            f"{name}/std": float(flat.std())})
            for c in range(flat.shape[1]):
                ch = flat[:, c]
                rows.append({"set": name, "channel": c, "mean": float(ch.mean()), "std": float(ch.std()),
                             "min": float(ch.min()), "max": float(ch.max()),
                             "outside_01": float(((ch < 0) | (ch > 1)).float().mean())})
        findings = []
        for name, pixels in groups.items():
            if name == "real":
                continue
            per_image = ((pixels < 0) | (pixels > 1)).flatten(1).float().mean(1) - metrics["real/outside_01"]
            effect, ci, n = bootstrap_ci(per_image.tolist(), seed=ctx.seed_for(f"pixels:bootstrap:{name}"))
            findings.append(OUTSIDE.judge(name, ctx.probe_id, effect, ci, n, control=name in ctx.controls,
                                          details={"real_outside_01": metrics["real/outside_01"]}))
        fig = self._figure(ctx, groups, options.bins)
        worst = max(sets, key=lambda n: metrics[f"{n}/outside_01"]) if sets else None
        summary = (f"{worst}: {metrics[f'{worst}/outside_01']:.1%} of pixels outside [0, 1] "
                   f"(real: {metrics['real/outside_01']:.1%})" if worst else "no sets")
        return ProbeResult(metrics, {"pixel_stats": pd.DataFrame(rows)}, {"density": fig}, summary,
                           findings=findings)

    def _figure(self, ctx, groups, bins):
        import numpy as np

        from ..report.figures import plt, save, series_style

        pyplot = plt()
        fig, ax = pyplot.subplots(figsize=(6.5, 3.4))
        lo = min(float(p.min()) for p in groups.values())
        hi = max(float(p.max()) for p in groups.values())
        edges = np.linspace(min(lo, 0.0), max(hi, 1.0), bins + 1)
        i = 0
        for name, pixels in groups.items():
            hist, _ = np.histogram(pixels.flatten().numpy(), bins=edges, density=True)
            centers = (edges[:-1] + edges[1:]) / 2
            style = series_style(name, i, ctx.controls)
            style.pop("marker", None)
            ax.plot(centers, hist, **style)
            if name == "real":
                ax.fill_between(centers, hist, color=style["color"], alpha=0.15)
            else:
                i += name not in ctx.controls
        ax.axvspan(0, 1, color="#999999", alpha=0.08, lw=0)
        ax.set_xlabel("pixel value (shaded: the valid range [0, 1])")
        ax.set_ylabel("density")
        ax.set_title("Pixel value distribution", fontsize=10)
        ax.legend(fontsize=8, frameon=False, loc="upper left", bbox_to_anchor=(1.01, 1.0))
        caption = ("Distribution of pixel values over all channels of the real training images and of each "
                   "distilled set, in pixel space; mass outside the shaded [0, 1] band is no valid image.")
        return save(fig, ctx.figure_path("density"), caption)


PROBES = (Pixels,)
