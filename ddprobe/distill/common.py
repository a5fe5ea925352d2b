"""What every matching distiller shares: the network, the initial images, per-class sampling, the outer loop
with progress and resumable checkpoints, and flat-parameter functional models."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..context import DistillContext, ModelSpec
from ..data import DistilledSet, Manifest, RealData


# -- the distillation network -----------------------------------------------------------------------------------
def resolve_model(ctx: DistillContext, model: str | dict[str, Any], owner: str) -> ModelSpec:
    """The ``model`` option: a name from the spec's [models] table, or an inline ``{arch = ..., ...}`` table."""
    from .. import registry
    from ..errors import DDProbeError, suggest

    if isinstance(model, str):
        if model not in ctx.models:
            raise DDProbeError(f"{owner}: model = {model!r} is not in [models]; {suggest(model, ctx.models)}")
        return ctx.models[model]
    table = dict(model)
    arch = table.pop("arch", None)
    if arch is None:
        raise DDProbeError(f"{owner}: an inline model table needs arch = \"...\" (e.g. arch = \"convnet\")")
    plugin = registry.get_model(arch)
    return ModelSpec(f"{owner}-net", arch, plugin.Options(**table), plugin)


def validate_model_option(value: Any) -> Any:
    """Pydantic-side check of a ``model`` option (types only; names are checked when the set is distilled)."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict):
        if "arch" not in value:
            raise ValueError("an inline model table needs arch = \"...\" (e.g. { arch = \"convnet\", width = 128 })")
        from .. import registry

        plugin = registry.get_model(str(value["arch"]))
        rest = {k: v for k, v in value.items() if k != "arch"}
        plugin.Options(**rest)
        return value
    raise ValueError("model must be the name of a [models] entry or a table like { arch = \"convnet\" }")


# -- images ---------------------------------------------------------------------------------------------------
def class_major_labels(num_classes: int, ipc: int, device: Any = "cpu") -> torch.Tensor:
    return torch.arange(num_classes, device=device).repeat_interleave(ipc)


def initial_images(real: RealData, ipc: int, init: str, gen: torch.Generator, noise: str = "gaussian") -> torch.Tensor:
    """Class-major starting images: random real training images, or noise in the input space.

    ``noise = "gaussian"`` draws N(0, 1) (DC's reference init); ``"xavier"`` draws Xavier-uniform rows of an
    ``[N, C*H*W]`` table (BPTT's reference init: about the mean image).
    """
    k, shape = real.num_classes, tuple(real.input_shape)
    if init == "real":
        picks = []
        for c, idx in enumerate(real.train.class_indices()):
            if idx.numel() == 0:
                raise ValueError(f"class {real.classes[c]!r} has no training images to initialize from")
            perm = torch.randperm(idx.numel(), generator=gen)
            reps = math.ceil(ipc / idx.numel())
            picks.append(idx[perm.repeat(reps)[:ipc]])
        return real.train.images[torch.cat(picks).to(real.train.images.device)].detach().clone().cpu()
    n, d = k * ipc, math.prod(shape)
    if noise == "xavier":
        bound = math.sqrt(6.0 / (n + d))
        flat = (torch.rand(n, d, generator=gen) * 2 - 1) * bound
        return flat.view(n, *shape)
    return torch.randn(n, *shape, generator=gen)


class ClassSampler:
    """Random real images of one class: ``sample(c, n, gen)`` without replacement (all of them if fewer)."""

    def __init__(self, real: RealData, device: Any):
        self.images = real.train.images.to(device)
        self.labels = real.train.hard_labels.to(device)
        self.indices = [ix.to(device) for ix in real.train.class_indices()]

    def sample(self, c: int, n: int, gen: torch.Generator) -> torch.Tensor:
        idx = self.indices[c]
        perm = torch.randperm(idx.numel(), generator=gen)[: min(n, idx.numel())].to(idx.device)
        return self.images[idx[perm]]

    def sample_all(self, n_per_class: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        xs, ys = [], []
        for c in range(len(self.indices)):
            x = self.sample(c, n_per_class, gen)
            xs.append(x)
            ys.append(torch.full((x.shape[0],), c, dtype=torch.long, device=x.device))
        return torch.cat(xs), torch.cat(ys)


# -- functional models over a flat parameter vector ----------------------------------------------------------------
class FlatModel:
    """Call ``net`` with its parameters taken from one flat vector (for trajectory matching and unrolling)."""

    def __init__(self, net: nn.Module):
        self.net = net
        self.names = [n for n, _ in net.named_parameters()]
        self.shapes = [p.shape for _, p in net.named_parameters()]
        self.sizes = [p.numel() for _, p in net.named_parameters()]
        self.buffers = dict(net.named_buffers())

    @property
    def numel(self) -> int:
        return sum(self.sizes)

    def flat(self) -> torch.Tensor:
        return torch.cat([p.detach().reshape(-1) for p in self.net.parameters()])

    def params(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        out = {}
        for name, shape, piece in zip(self.names, self.shapes, torch.split(flat, self.sizes), strict=True):
            out[name] = piece.view(shape)
        return out

    def __call__(self, flat: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        from torch.func import functional_call

        return functional_call(self.net, {**self.params(flat), **self.buffers}, (x,))


# -- checkpoints -------------------------------------------------------------------------------------------------
def run_key(distiller: str, options: Any, ipc: int, ctx: DistillContext, model: ModelSpec | None) -> str:
    """The cache key of a distillation in progress: what the study's key for the set holds, plus the resolved
    network (``Cache.key`` adds the code fingerprint, so a checkpoint is never resumed by different code)."""
    opts = options.model_dump(mode="json") if hasattr(options, "model_dump") else dict(options)
    opts.pop("checkpoint_every", None)
    parts = {"distiller": distiller, "options": opts, "ipc": ipc, "seed": ctx.seed, "real": ctx.data_key,
             "model": model.key() if model is not None else None}
    return ctx.cache.key("distill-checkpoint", parts)


class Checkpointer:
    """Periodic, atomic checkpoints of a distillation's state under ``ctx.checkpoint_dir`` (none when unset).

    Each checkpoint carries a digest sidecar (``<key>.pt.digest.json``); one that is missing, damaged or unreadable
    is reported as a cache warning, removed, and the distillation starts from the beginning.
    """

    def __init__(self, ctx: DistillContext, key: str, every: int):
        self.every = every
        self.cache = ctx.cache
        self.path: Path | None = None
        if ctx.checkpoint_dir is not None and every > 0:
            self.path = Path(ctx.checkpoint_dir) / f"{key}.pt"

    def load(self) -> dict[str, Any] | None:
        from ..cache.integrity import file_problem

        if self.path is None or not self.path.exists() or not self.cache.read:
            return None
        problem = file_problem(self.path)
        if problem is None:
            try:
                state = torch.load(self.path, map_location="cpu", weights_only=True)
                if isinstance(state, dict) and "iteration" in state:
                    return state
                problem = "unreadable (not a distillation state)"
            except Exception as exc:
                problem = f"unreadable ({type(exc).__name__}: {exc})"
        self.cache.warn(f"distillation checkpoint {self.path} is {problem}; ignoring it and starting over")
        self.clear()
        return None

    def due(self, done: int, total: int) -> bool:
        return self.path is not None and done < total and done % self.every == 0

    def save(self, state: dict[str, Any]) -> None:
        from ..cache.integrity import write_sidecar

        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(f".tmp{os.getpid()}")
        torch.save(state, tmp)
        os.replace(tmp, self.path)
        write_sidecar(self.path)

    def clear(self) -> None:
        from ..cache.integrity import sidecar

        if self.path is not None:
            for p in (self.path, sidecar(self.path)):
                p.unlink(missing_ok=True)


def _to_cpu(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu().clone()
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_cpu(v) for v in obj)
    return obj


# -- the outer loop ------------------------------------------------------------------------------------------------
class Matching:
    """Base of a matching distiller run: learnable images, their optimizer, the loop, progress and checkpoints.

    Subclasses set ``self.images`` (a leaf on the device) and ``self.optimizers`` in ``__init__`` and implement
    ``iteration(it) -> float`` (one outer iteration, returning the matching loss) and optionally
    ``extra_state()/load_extra(state)``. Every random draw of iteration ``it`` comes from streams named after
    ``it``, so a resumed run repeats exactly what the uninterrupted one would have done.
    """

    name = "matching"

    def __init__(self, real: RealData, ipc: int, options: Any, ctx: DistillContext, model: ModelSpec | None):
        self.real, self.ipc, self.options, self.ctx, self.model_spec = real, ipc, options, ctx, model
        self.device = ctx.device
        self.labels = class_major_labels(real.num_classes, ipc, self.device)
        self.optimizers: dict[str, torch.optim.Optimizer] = {}
        self.losses: list[float] = []
        self.checkpoints = Checkpointer(ctx, run_key(self.name, options, ipc, ctx, model),
                                        getattr(options, "checkpoint_every", 0))

    def learnable_images(self, noise: str = "gaussian") -> None:
        """Initialize ``self.images`` (real images or noise, per ``options.init``) and their SGD optimizer."""
        init = initial_images(self.real, self.ipc, self.options.init, self.rng("init", 0), noise=noise)
        self.images = init.to(self.device).requires_grad_(True)
        self.optimizers["images"] = torch.optim.SGD([self.images], lr=self.options.lr_img,
                                                    momentum=self.options.momentum_img)

    # hooks
    def iteration(self, it: int) -> float:  # pragma: no cover - abstract
        raise NotImplementedError

    def extra_state(self) -> dict[str, Any]:
        return {}

    def load_extra(self, state: dict[str, Any]) -> None:
        pass

    def rng(self, stream: str, it: int | str) -> torch.Generator:
        return self.ctx.rng(f"{self.name}:{stream}:{it}")

    def net(self, it: int | str) -> nn.Module:
        assert self.model_spec is not None
        return self.ctx.build_model(self.model_spec, f"{self.name}:net:{it}")

    def state(self, done: int) -> dict[str, Any]:
        return _to_cpu({"iteration": done, "images": self.images.detach(),
                        "losses": torch.tensor(self.losses, dtype=torch.float64),
                        "optimizers": {k: o.state_dict() for k, o in self.optimizers.items()},
                        "extra": self.extra_state()})

    def restore(self, state: dict[str, Any]) -> int:
        with torch.no_grad():
            self.images.copy_(state["images"].to(self.images.device))
        for k, o in self.optimizers.items():
            o.load_state_dict(state["optimizers"][k])
        self.losses = [float(v) for v in state["losses"].tolist()]
        self.load_extra(state.get("extra", {}))
        return int(state["iteration"])

    def run(self, iterations: int) -> DistilledSet:
        start = 0
        found = self.checkpoints.load()
        if found is not None:
            start = self.restore(found)
        label = f"{self.name} {self.ctx.name}".strip()
        with self.ctx.progress.task(label, total=iterations) as task:
            if start:
                task.advance(start)
            for it in range(start, iterations):
                loss = self.iteration(it)
                self.losses.append(loss)
                if self.checkpoints.due(it + 1, iterations):
                    self.checkpoints.save(self.state(it + 1))
                task.advance()
                task.update(status=f"loss {loss:.4f}")
        self.checkpoints.clear()
        return self.result()

    def manifest(self) -> Manifest:
        curve = self.losses
        if len(curve) > 200:  # keep the manifest small: at most ~200 points of the loss curve
            step = math.ceil(len(curve) / 200)
            curve = [sum(curve[i : i + step]) / len(curve[i : i + step]) for i in range(0, len(curve), step)]
        return Manifest(distiller=self.name, ipc=self.ipc, iterations=len(self.losses),
                        final_loss=self.losses[-1] if self.losses else None, loss_curve=curve)

    def result(self) -> DistilledSet:
        images = self.images.detach().to("cpu").clone()
        return DistilledSet(images, self.labels.cpu().clone(), list(self.real.classes), manifest=self.manifest())
