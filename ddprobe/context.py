"""The study context a probe (``StudyContext``) or a distiller (``DistillContext``) receives."""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .cache import Cache
from .progress import Progress
from .rng import derive_seed, numpy_generator, seeded_init, torch_generator
from .training import Callback, TrainRecipe

if TYPE_CHECKING:
    import numpy as np
    import torch
    from pydantic import BaseModel

    from .data import DistilledSet, LabeledData, RealData
    from .executor import Executor


@dataclass
class ModelSpec:
    """A named architecture from the spec's [models] table."""

    name: str
    arch: str
    options: BaseModel
    plugin: Any
    weights: Path | None = None  # a user's own real-trained state dict: ctx.pretrained loads it instead of training

    def build(self, input_shape: Sequence[int], num_classes: int) -> torch.nn.Module:
        return self.plugin.build(self.options, tuple(input_shape), num_classes)

    def key(self) -> dict[str, Any]:
        key = {"arch": self.arch, "options": self.options.model_dump(mode="json")}
        if self.weights is not None:
            key["weights"] = _file_sha256(self.weights)
        return key

    def load_weights(self, input_shape: Sequence[int], num_classes: int) -> torch.nn.Module:
        """The architecture with the state dict of ``weights`` loaded (never unpickles code), in eval mode."""
        import torch

        from .errors import DDProbeError

        assert self.weights is not None
        net = self.build(input_shape, num_classes)
        try:
            if self.weights.suffix == ".safetensors":
                from safetensors.torch import load_file

                state = load_file(str(self.weights))
            else:
                state = torch.load(self.weights, map_location="cpu", weights_only=True)
                if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
                    state = state["state_dict"]
            net.load_state_dict(state)
        except Exception as exc:
            raise DDProbeError(f"{self.weights}: cannot load as the state dict of models.{self.name} "
                               f"(arch {self.arch!r}): {type(exc).__name__}: {exc}") from None
        return net.eval()


def _file_sha256(path: Path) -> str:
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def model_cache_parts(models: dict[str, ModelSpec], seed: int, data_key: dict[str, Any], model: str, data_id: Any,
                      recipe: TrainRecipe, seed_name: str, learned_lr: float | None = None) -> dict[str, Any]:
    """The cache key parts of a trained model (``StudyContext.trained``; ``ddprobe plan`` looks them up)."""
    return {"model": models[model].key(), "data": data_id, "recipe": recipe.key(), "seed": seed,
            "seed_name": seed_name, "learned_lr": learned_lr, "real": data_key}


def resolve_device(device: str) -> str:
    import torch

    if device != "auto":
        return device
    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


_NOTHING: Any = object()


@dataclass
class TaskContext:
    """The part of a study a task needs on a worker: build, seed and train its models. Picklable, without data.

    :class:`StudyContext` builds and trains through it, so a task trains exactly as the driver would.
    """

    seed: int
    models: dict[str, ModelSpec]
    input_shape: tuple[int, ...]
    num_classes: int
    recipe: TrainRecipe
    device: str = "cpu"

    def rng(self, name: str) -> torch.Generator:
        return torch_generator(self.seed, name)

    def build_model(self, model: str | ModelSpec, seed_name: str) -> torch.nn.Module:
        spec = self.models[model] if isinstance(model, str) else model
        with seeded_init(self.seed, f"init:{seed_name}"):
            net = spec.build(self.input_shape, self.num_classes)
        return net.to(self.device)

    def train(self, model: torch.nn.Module, data: LabeledData, recipe: TrainRecipe | None = None, *,
              seed_name: str, callbacks: Sequence[Callback] = (), learned_lr: float | None = None,
              compile_key: str | None = None) -> torch.nn.Module:
        """Train ``model`` in place; ``compile_key`` (see :mod:`ddprobe.compiled`) trains through a compiled forward."""
        from .training import train

        recipe = recipe or self.recipe
        data = data.to(self.device)
        fwd = None
        if compile_key is not None:
            from . import compiled

            fwd = compiled.forward(model, compile_key, data.images[: recipe.batch(len(data))])
        return train(model, data, recipe, generator=self.rng(f"train:{seed_name}"), callbacks=callbacks,
                     learned_lr=learned_lr, forward=fwd)


@dataclass
class _Base:
    seed: int
    real: RealData
    models: dict[str, ModelSpec]
    recipe: TrainRecipe
    cache: Cache
    device: str = "cpu"
    progress: Progress = field(default_factory=lambda: Progress(enabled=False))
    data_key: dict[str, Any] = field(default_factory=dict)
    workers: int = 1
    executor_kind: str = "processes"  # [study] executor
    ray_options: Any = None  # [study.ray]
    compile_mode: str = "auto"  # [study] compile

    @property
    def executor(self) -> Executor:
        """Where bags of independent work run ([study] executor); see :mod:`ddprobe.executor`."""
        from .executor import make_executor

        key = (self.executor_kind, self.workers)
        cached = self.__dict__.get("_executor")
        if cached is None or cached[0] != key:
            cached = (key, make_executor(self.executor_kind, self.workers, self.ray_options))
            self.__dict__["_executor"] = cached
        return cached[1]

    def use_executor(self, executor: Executor) -> None:
        """Run this context's bags on ``executor`` (made for the same ``[study] executor`` and ``workers``)."""
        self.__dict__["_executor"] = ((self.executor_kind, self.workers), executor)

    def task_context(self) -> TaskContext:
        """What a task on a worker needs to build, seed and train this study's models (picklable, no data)."""
        return TaskContext(self.seed, self.models, tuple(self.real.input_shape), self.real.num_classes, self.recipe,
                           self.device)

    def rng(self, name: str) -> torch.Generator:
        """A CPU torch generator seeded from the study seed and ``name``: results never depend on probe order."""
        return torch_generator(self.seed, name)

    def np_rng(self, name: str) -> np.random.Generator:
        return numpy_generator(self.seed, name)

    def seed_for(self, name: str) -> int:
        return derive_seed(self.seed, name)

    def build_model(self, model: str | ModelSpec, seed_name: str) -> torch.nn.Module:
        """A fresh model of a named architecture, initialized from the seed stream ``seed_name``, on the device."""
        return self.task_context().build_model(model, seed_name)

    def train(self, model: torch.nn.Module, data: LabeledData, recipe: TrainRecipe | None = None, *,
              seed_name: str, callbacks: Sequence[Callback] = (), learned_lr: float | None = None,
              compile_key: str | None = None) -> torch.nn.Module:
        """Train ``model`` in place; data order and augmentation draw from the stream ``seed_name``."""
        return self.task_context().train(model, data, recipe, seed_name=seed_name, callbacks=callbacks,
                                         learned_lr=learned_lr, compile_key=compile_key)

    def trained(self, model: str, data: LabeledData, recipe: TrainRecipe | None = None, *, seed_name: str,
                learned_lr: float | None = None, data_id: Any = None) -> torch.nn.Module:
        """A model of architecture ``model`` trained on ``data``: from the cache when it was trained before.

        The cache key holds the architecture, the data's content (or ``data_id``), the recipe and the seeds.
        """
        from .data import DistilledSet, content_hash

        recipe = recipe or self.recipe
        if data_id is None:
            data_id = data.manifest.sha256 if isinstance(data, DistilledSet) else content_hash(data.images, data.labels)
        parts = self.model_cache_parts(model, data_id, recipe, seed_name, learned_lr)
        return self.cache.model(
            "models", parts, lambda: self.build_model(model, seed_name),
            lambda net: self.train(net, data, recipe, seed_name=seed_name, learned_lr=learned_lr),
        )

    def model_cache_parts(self, model: str, data_id: Any, recipe: TrainRecipe, seed_name: str,
                          learned_lr: float | None = None) -> dict[str, Any]:
        """What determines a trained model: architecture, data, recipe, seeds and real data (the cache adds code)."""
        return model_cache_parts(self.models, self.seed, self.data_key, model, data_id, recipe, seed_name, learned_lr)

    def map(self, fn: Callable[..., Any], items: Iterable[Any], description: str = "", *,
            shared: Any = _NOTHING) -> list[Any]:
        """Apply ``fn`` to each item (a pure function of its inputs), with progress; results in item order.

        ``fn(item)``, or ``fn(shared, item)`` when ``shared`` is given: a large input (data, an initial model) sent
        to each worker once rather than with every item (``ctx.executor.share(obj)`` makes a handle to reuse it
        across maps). The items run on ``[study] executor``: serially, in ``[study] workers`` local processes (CPU)
        or as Ray tasks; ``fn`` must then be importable by name (a module-level function or a
        ``functools.partial`` of one), its inputs and results picklable, and its results small.
        """
        from .executor import call_plain

        items = list(items)
        task_fn, payload = (call_plain, fn) if shared is _NOTHING else (fn, shared)
        with self.progress.task(description or getattr(fn, "__name__", "tasks"), total=len(items)) as task:
            ex = self.executor
            if len(items) > 1 and ex.parallel(self.device):
                return ex.map(task_fn, items, shared=payload, on_result=lambda i, r: task.advance())
            out = []
            for item in items:
                out.append(task_fn(payload, item))
                task.advance()
            return out


@dataclass
class StudyContext(_Base):
    """What a probe's ``run(ctx, options)`` receives. See docs/plugins/writing.md."""

    distilled: dict[str, DistilledSet] = field(default_factory=dict)
    pretrain_recipe: TrainRecipe = field(default_factory=lambda: TrainRecipe(epochs=20, batch_size=256, steps=None))
    output_dir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="ddprobe-out-")))
    probe_id: str = ""
    controls: set[str] = field(default_factory=set)

    def pretrained(self, model: str, seed_name: str = "pretrained") -> torch.nn.Module:
        """A model of architecture ``model`` trained on the real training set (cached), in eval mode.

        A [models] entry with ``weights`` is the user's own real-trained model: its state dict is loaded instead.
        """
        spec = self.models[model]
        if spec.weights is not None:
            return spec.load_weights(self.real.input_shape, self.real.num_classes).to(self.device)
        return self.trained(model, self.real.train, self.pretrain_recipe, seed_name=seed_name,
                            data_id={"real-train": self.data_key})

    def figure_path(self, name: str) -> Path:
        """Where a probe should save figure ``name`` (PNG); the directory exists.

        The file lies in ``<output>/figures/`` whatever ``name`` holds (a class name such as ``T-shirt/top``):
        characters that are not plain file-name characters become ``_``.
        """
        from .names import file_part

        d = self.output_dir / "figures"
        d.mkdir(parents=True, exist_ok=True)
        stem = f"{self.probe_id}-{name}" if self.probe_id else str(name)
        return d / f"{file_part(stem)}.png"

    def select_models(self, names: list[str] | None) -> list[str]:
        """The probe's ``models`` option resolved: all study models when it is empty."""
        return list(names) if names else list(self.models)

    def select_sets(self, names: list[str] | None) -> dict[str, DistilledSet]:
        if not names:
            return dict(self.distilled)
        return {n: self.distilled[n] for n in names}


@dataclass
class DistillContext(_Base):
    """What a distiller's ``distill(real, ipc, options, ctx)`` receives."""

    name: str = ""
    checkpoint_dir: Path | None = None
