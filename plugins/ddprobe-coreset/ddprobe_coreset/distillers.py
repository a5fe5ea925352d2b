"""The ``herding`` and ``kcenter`` distillers: coreset selections of real images, per class."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from .selection import herding, kcenter

FEATURE_CACHE = "coreset-features"


# -- start options --
class CoresetOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")  # a misspelled option is an error, not silently ignored

    space: Literal["features", "pixels"] = Field(
        "features", description="select in a real-trained model's penultimate features, or on raw pixels")
    model: str | None = Field(None, description="a [models] architecture for the features (default: the first)")
    epochs: int = Field(10, ge=1, description="epochs of training the feature model on the real training set")
    batch_size: int = Field(256, ge=1, description="batch size of that training")
    lr: float = Field(0.01, gt=0, description="learning rate of that training (SGD, momentum 0.9)")
    normalize: bool = Field(True, description="L2-normalize each image's features before selecting")
# -- end options --


def _recipe(options: CoresetOptions):
    from ddprobe.training import TrainRecipe

    return TrainRecipe(optimizer="sgd", lr=options.lr, momentum=0.9, epochs=options.epochs, steps=None,
                       batch_size=options.batch_size)


def _model_name(options: CoresetOptions, models: dict) -> str:
    if options.model is not None:
        if options.model not in models:
            valid = ", ".join(models) or "none"
            raise ValueError(f"model {options.model!r} is not in [models]; valid: {valid}")
        return options.model
    if not models:
        raise ValueError("space = 'features' needs an architecture in [models] (or use space = 'pixels')")
    return next(iter(models))


def _feature_parts(options: CoresetOptions, ctx, model: str) -> dict:
    """What determines the feature model: its cache key (shared by herding and kcenter)."""
    return {"model": ctx.models[model].key(), "recipe": _recipe(options).key(), "seed": ctx.seed,
            "real": ctx.data_key}


# -- start features --
def features(real, options: CoresetOptions, ctx):
    """One row per real training image: its pixels, or the penultimate features of a real-trained model."""
    import torch

    from ddprobe.training import eval_mode, train

    images = real.train.images
    if options.space == "pixels":
        out = images.flatten(1).float()
    else:
        model = _model_name(options, ctx.models)
        recipe = _recipe(options)
        net = ctx.cache.model(
            FEATURE_CACHE, _feature_parts(options, ctx, model),
            build=lambda: ctx.build_model(model, "coreset:features"),  # seeded from the study seed
            train=lambda net: train(net, real.train.to(ctx.device), recipe,
                                    generator=ctx.rng("coreset:features:train")),
        )
        rows = []
        with eval_mode(net), torch.no_grad():
            for start in range(0, images.shape[0], 1024):
                rows.append(net.embed(images[start : start + 1024].to(ctx.device)).flatten(1).cpu())
        out = torch.cat(rows)
    if options.normalize:
        out = torch.nn.functional.normalize(out, dim=1)
    return out
# -- end features --


class _Coreset:
    name = ""
    description = ""
    Options = CoresetOptions

    def select(self, feats, k: int, ctx, label: int):  # pragma: no cover - overridden
        raise NotImplementedError

    # -- start distill --
    def distill(self, real, ipc: int, options: CoresetOptions, ctx):
        import torch

        from ddprobe import DistilledSet, Manifest

        per_class = real.train.class_indices()
        for c, idx in enumerate(per_class):
            if idx.numel() < ipc:
                raise ValueError(f"class {real.classes[c]!r} has {idx.numel()} training images, "
                                 f"fewer than ipc = {ipc}")
        feats = features(real, options, ctx)
        picks = [idx[self.select(feats[idx], ipc, ctx, c)] for c, idx in enumerate(per_class)]
        index = torch.cat(picks)
        chosen = real.train.subset(index)
        feature_model = None if options.space == "pixels" else _model_name(options, ctx.models)
        manifest = Manifest(distiller=self.name, ipc=ipc, indices=index.tolist(), space=options.space,
                            feature_model=feature_model)
        return DistilledSet(chosen.images.clone(), chosen.hard_labels.clone(), list(real.classes),
                            manifest=manifest)
    # -- end distill --

    # -- start plan --
    def plan(self, ctx, ipc: int, options: CoresetOptions) -> list:
        """For ``ddprobe plan``: training the feature model (unless cached) and one pass over the data."""
        if options.space == "pixels":
            return []
        model = _model_name(options, ctx.models)
        key = ctx.cache.key(FEATURE_CACHE, _feature_parts(options, ctx, model))
        cached = ctx.cache.has(FEATURE_CACHE, key)
        n = len(ctx.real.train)
        # The key is the feature model's cache key: herding and kcenter share the model, so it is counted once.
        return [ctx.train_item(model, n, _recipe(options), f"feature model {model} on real data", cached=cached,
                               key=key),
                ctx.forward_item(model, n, f"features of {n} real images")]
    # -- end plan --


# -- start classes --
class Herding(_Coreset):
    name = "herding"
    description = "per class, real images whose running feature mean tracks the class mean (herding coreset)"
    conformance_options = {"epochs": 1}  # keeps ddprobe.testing's conformance run fast

    def select(self, feats, k: int, ctx, label: int):
        return herding(feats, k)


class KCenter(_Coreset):
    name = "kcenter"
    description = "per class, greedy k-center: each new real image is the farthest from those already picked"
    conformance_options = {"epochs": 1}

    def select(self, feats, k: int, ctx, label: int):
        import torch

        start = int(torch.randint(feats.shape[0], (1,), generator=ctx.rng(f"kcenter:start:{label}")))
        return kcenter(feats, k, start)
# -- end classes --
