"""Train and evaluate loops, recipes and callbacks. The default recipe is the paper's distilled-data protocol."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

if TYPE_CHECKING:
    import torch

    from .data import LabeledData


PositiveLR = Annotated[float, Field(gt=0, allow_inf_nan=False)]
NonNegative = Annotated[float, Field(ge=0, allow_inf_nan=False)]
BatchSize = Annotated[int, Field(ge=1)]


def _known_augmentation(name: str) -> str:
    from . import augment
    from .errors import suggest

    if name not in augment.names():
        raise ValueError(f"unknown augmentation {name!r}; {suggest(name, augment.names())}")
    return name


class TrainRecipe(BaseModel):
    """How to train a model. Defaults: full-batch SGD lr 0.01 momentum 0.9 for 300 steps (paper, section 1.3)."""

    model_config = ConfigDict(extra="forbid")

    optimizer: Literal["sgd", "adam"] = "sgd"
    lr: PositiveLR | Literal["learned"] = Field(0.01, description="learning rate, or 'learned' for a set's own lr")
    momentum: NonNegative = 0.9
    weight_decay: NonNegative = 0.0
    steps: int | None = Field(300, ge=0, description="optimizer steps; ignored when epochs is set")
    epochs: int | None = Field(None, ge=0, description="passes over the data (overrides steps)")
    batch_size: BatchSize | Literal["full"] = "full"
    schedule: Literal["none", "step", "cosine"] = Field(
        "none", description="'step' multiplies the lr by 0.1 at half of training (DC/DM/MTT protocol)"
    )
    augment: str = Field("none", description="none, flip_crop, or a registered augmentation such as dsa")

    _augment_known = field_validator("augment")(lambda cls, v: _known_augmentation(v))

    @model_validator(mode="after")
    def _needs_length(self) -> TrainRecipe:
        if self.steps is None and self.epochs is None:
            raise ValueError("set steps or epochs")
        return self

    def total_steps(self, n: int) -> int:
        if self.epochs is not None:
            return self.epochs * math.ceil(n / self.batch(n))
        return int(self.steps or 0)

    def batch(self, n: int) -> int:
        return n if self.batch_size == "full" else min(int(self.batch_size), n)

    def resolved_lr(self, learned_lr: float | None = None) -> float:
        if self.lr == "learned":
            if learned_lr is None:
                raise ValueError("recipe asks for lr = 'learned' but this set has no learned learning rate")
            return float(learned_lr)
        return float(self.lr)

    def for_set(self, learned_lr: float | None, fallback: float = 0.01) -> TrainRecipe:
        """This recipe for one set: ``lr = "learned"`` becomes ``fallback`` when the set has no learned lr."""
        if self.lr != "learned" or learned_lr is not None:
            return self
        return self.model_copy(update={"lr": fallback})

    def key(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


@dataclass
class TrainState:
    """What a training callback sees: ``step`` optimizer steps are done (0 = before the first)."""

    step: int
    total: int
    model: Any
    loss: float | None


Callback = Callable[[TrainState], None]


def loss_fn(logits: torch.Tensor, labels: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Cross-entropy for hard labels, soft cross-entropy for soft ``[N, K]`` targets."""
    import torch.nn.functional as F

    if labels.dim() == 2:
        losses = -(labels * F.log_softmax(logits, dim=1)).sum(dim=1)
        return losses.mean() if reduction == "mean" else losses
    return F.cross_entropy(logits, labels, reduction=reduction)


def _batches(n: int, batch: int, steps: int, generator: torch.Generator) -> Iterator[torch.Tensor | None]:
    """Index batches for ``steps`` steps: reshuffled each epoch; ``None`` means the whole set in order."""
    import torch

    if batch >= n:
        for _ in range(steps):
            yield None
        return
    done = 0
    while done < steps:
        perm = torch.randperm(n, generator=generator)
        for start in range(0, n, batch):
            if done >= steps:
                return
            yield perm[start : start + batch]
            done += 1


def make_optimizer(params, recipe: TrainRecipe, lr: float):
    import torch

    if recipe.optimizer == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=recipe.weight_decay)
    return torch.optim.SGD(params, lr=lr, momentum=recipe.momentum, weight_decay=recipe.weight_decay)


def train(
    model: torch.nn.Module,
    data: LabeledData,
    recipe: TrainRecipe,
    *,
    generator: torch.Generator,
    callbacks: Sequence[Callback] = (),
    learned_lr: float | None = None,
    forward: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> torch.nn.Module:
    """Train ``model`` in place on ``data`` (already on the model's device) and return it in eval mode.

    ``forward`` replaces ``model(x)`` in the training steps: a compiled forward of the same model
    (:func:`ddprobe.compiled.forward`), computing the same function.
    """
    import torch

    from .augment import get_augmentation

    n = len(data)
    steps = recipe.total_steps(n)
    lr = recipe.resolved_lr(learned_lr)
    opt = make_optimizer(model.parameters(), recipe, lr)
    sched = None
    if recipe.schedule == "step":
        sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=[max(1, steps // 2)], gamma=0.1)
    elif recipe.schedule == "cosine":
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, steps))
    augment = get_augmentation(recipe.augment)
    images, labels = data.images, data.labels
    model.train()
    for cb in callbacks:
        cb(TrainState(0, steps, model, None))
    for step, idx in enumerate(_batches(n, recipe.batch(n), steps, generator), start=1):
        x, y = (images, labels) if idx is None else (images[idx.to(images.device)], labels[idx.to(labels.device)])
        if augment is not None:
            x = augment(x, generator)
        loss = loss_fn((forward or model)(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if sched is not None:
            sched.step()
        if callbacks:
            state = TrainState(step, steps, model, float(loss.detach()))
            for cb in callbacks:
                cb(state)
    opt.zero_grad(set_to_none=True)  # a trained model looks the same whether it was trained now or cached
    model.eval()
    return model


@contextlib.contextmanager
def eval_mode(model: torch.nn.Module):
    """Put a model in eval mode for the block and restore each module's previous mode afterwards."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for m, training in modes:
            m.train(training)


def predict(model: torch.nn.Module, images: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
    """Logits for ``images`` in eval mode (mode restored afterwards), without gradients."""
    import torch

    device = next(model.parameters()).device
    outs = []
    with eval_mode(model), torch.no_grad():
        for start in range(0, images.shape[0], batch_size):
            outs.append(model(images[start : start + batch_size].to(device)))
    return torch.cat(outs) if outs else torch.empty(0)


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    hard = labels.argmax(1) if labels.dim() == 2 else labels
    if hard.numel() == 0:
        return float("nan")
    return float((logits.argmax(1).to(hard.device) == hard).float().mean())


def evaluate(model: torch.nn.Module, data: LabeledData, batch_size: int = 1024) -> float:
    """Top-1 accuracy of ``model`` on ``data``."""
    return accuracy(predict(model, data.images, batch_size), data.labels)


def per_example_loss(model: torch.nn.Module, data: LabeledData, batch_size: int = 1024) -> torch.Tensor:
    logits = predict(model, data.images, batch_size)
    return loss_fn(logits, data.labels.to(logits.device), reduction="none")


class RecipeOverride(BaseModel):
    """Fields of a :class:`TrainRecipe` to change for one probe or preset; unset fields keep the study's."""

    model_config = ConfigDict(extra="forbid")

    optimizer: Literal["sgd", "adam"] | None = None
    lr: PositiveLR | Literal["learned"] | None = None
    momentum: NonNegative | None = None
    weight_decay: NonNegative | None = None
    steps: int | None = Field(None, ge=0)
    epochs: int | None = Field(None, ge=0)
    batch_size: BatchSize | Literal["full"] | None = None
    schedule: Literal["none", "step", "cosine"] | None = None
    augment: str | None = None

    _augment_known = field_validator("augment")(lambda cls, v: v if v is None else _known_augmentation(v))

    def apply(self, base: TrainRecipe) -> TrainRecipe:
        changes = self.model_dump(exclude_none=True)
        merged = {**base.model_dump(), **changes}
        if "epochs" in changes and "steps" not in changes:
            merged["steps"] = None
        return TrainRecipe.model_validate(merged)
