"""The backend contract: ``InfluenceProblem`` in, ``BackendResult`` out, and the registry of backend classes.

A backend is a class with ``name``, ``description``, a pydantic ``Options`` and ``_compute(problem) ->
BackendResult``; ``compute`` (inherited) times it and turns failures and non-finite scores into statuses.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, MutableMapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import torch
from pydantic import BaseModel, ConfigDict
from torch import nn

from .objective import Objective, ParamSubset


@dataclass
class InfluenceProblem:
    """What a backend gets: the model trained on the full set, the data, and the training run's checkpoints.

    ``checkpoints`` are ``(step, state_dict)`` pairs of the same training run, for TracIn; ``lr`` its step size;
    ``l2`` the recipe's weight decay (added to the Hessian: the trained objective includes it).
    """

    model: nn.Module
    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    lr: float = 0.01
    l2: float = 0.0
    checkpoints: list[tuple[int, dict[str, torch.Tensor]]] = field(default_factory=list)
    _objectives: dict[str, Objective] = field(default_factory=dict, repr=False)

    @property
    def n(self) -> int:
        return int(self.train_x.shape[0])

    def objective(self, params: ParamSubset) -> Objective:
        if params not in self._objectives:
            self._objectives[params] = Objective(self.model, self.train_x, self.train_y, params, self.l2)
        return self._objectives[params]

    def removal_gradients(self, obj: Objective) -> torch.Tensor:
        """``[p, n]`` columns ``g_i + l2 theta``: what removing example ``i`` adds to the gradient, times ``n - 1``.

        Retraining without ``i`` minimizes the mean loss over the other ``n - 1`` examples plus the L2 term. At the
        full-set optimum that objective's gradient is ``-(g_i + l2 theta) / (n - 1)``, so one Newton step moves the
        parameters by ``H^-1 (g_i + l2 theta) / (n - 1)`` (Koh & Liang's removal estimate, exact to first order).
        """
        return (obj.train_grads() + obj.l2 * obj.theta0).T.contiguous()

    def scores_from_ihvp(self, obj: Objective, ihvp: torch.Tensor) -> torch.Tensor:
        """``[n, m]`` predicted ``loss_without_i - loss_full = g_test_j . H^-1 (g_i + l2 theta) / (n - 1)``."""
        rows = []
        for _, g in obj.test_grad_chunks(self.test_x, self.test_y):
            rows.append((g @ ihvp).T)
        return (torch.cat(rows, 1) / max(1, self.n - 1)).cpu()


@dataclass
class BackendResult:
    """A backend's estimate of the influence matrix ``[n, m]`` (None when it failed), its status and timing."""

    scores: torch.Tensor | None
    status: Literal["ok", "diverged", "failed"] = "ok"
    seconds: float = 0.0
    info: dict[str, Any] = field(default_factory=dict)


class InfluenceBackend:
    """Base class. Subclass, set ``name``/``description``/``Options`` and implement ``_compute``; register it."""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""

    class Options(BaseModel):
        model_config = ConfigDict(extra="forbid")

    def __init__(self, options: BaseModel | dict[str, Any] | None = None):
        self.options = options if isinstance(options, BaseModel) else self.Options(**(options or {}))

    def compute(self, problem: InfluenceProblem) -> BackendResult:
        """Run the backend and time it; a backend never returns NaN scores (it reports a status instead)."""
        t0 = time.perf_counter()
        try:
            result = self._compute(problem)
        except (RuntimeError, ValueError) as exc:  # numerical failure or unsupported model: report, do not crash
            result = BackendResult(None, "failed", info={"error": f"{type(exc).__name__}: {exc}"})
        result.seconds = time.perf_counter() - t0
        if result.scores is not None and not bool(torch.isfinite(result.scores).all()):
            result = BackendResult(None, "diverged", result.seconds, {**result.info, "error": "non-finite scores"})
        return result

    def _compute(self, problem: InfluenceProblem) -> BackendResult:  # pragma: no cover - abstract
        raise NotImplementedError


class BackendTable(MutableMapping[str, type[InfluenceBackend]]):
    """Every influence backend class by name, looked up live.

    Two sources: plugins, which register classes through the ``register_influence_backends`` hook (the built-in
    backends are registered that way, by the default plugin ``ddprobe.builtin.influence_backends``), and Python code
    that calls ``register_backend`` (a decorator). A name may come from only one of them.
    """

    def __init__(self) -> None:
        self._direct: dict[str, type[InfluenceBackend]] = {}

    def _plugins(self) -> dict[str, type[InfluenceBackend]]:
        from .. import registry

        return registry.get_all("influence_backend")

    def _all(self) -> dict[str, type[InfluenceBackend]]:
        found = self._plugins()
        for name, cls in self._direct.items():
            if name in found and found[name] is not cls:
                from .. import registry
                from ..errors import PluginError

                raise PluginError(f"influence backend name {name!r} is registered twice: by plugin "
                                  f"{registry.owner_of('influence_backend', name)!r} and by register_backend in "
                                  f"{cls.__module__}")
            found[name] = cls
        return found

    def owner(self, name: str) -> str:
        """Who registered ``name``: the plugin's name, or the module that called ``register_backend``."""
        if name in self._direct:
            return self._direct[name].__module__
        from .. import registry

        return registry.owner_of("influence_backend", name)

    def __getitem__(self, name: str) -> type[InfluenceBackend]:
        return self._all()[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._all())

    def __len__(self) -> int:
        return len(self._all())

    def __setitem__(self, name: str, cls: type[InfluenceBackend]) -> None:
        if name != getattr(cls, "name", None):
            raise ValueError(f"influence backend {cls!r} is registered under its own name, not {name!r}")
        register_backend(cls)

    def __delitem__(self, name: str) -> None:
        """Forget a backend registered with ``register_backend`` (plugins' backends go with their plugin)."""
        if name not in self._direct:
            raise KeyError(f"influence backend {name!r} was not registered with register_backend")
        del self._direct[name]


BACKENDS = BackendTable()


def register_backend(cls: type[InfluenceBackend]) -> type[InfluenceBackend]:
    """Register a backend class under ``cls.name`` from Python (a decorator); duplicate names are an error.

    A plugin distributed as a package uses the ``register_influence_backends`` hook instead (docs/plugins/hooks.md).
    """
    from .. import registry

    if not isinstance(cls, type):
        raise ValueError(f"register_backend takes a backend class, not {cls!r}")
    registry._check("influence_backend", cls, cls.__module__)
    if cls.name in BACKENDS and BACKENDS[cls.name] is not cls:
        raise ValueError(f"influence backend {cls.name!r} is already registered by {BACKENDS.owner(cls.name)}")
    BACKENDS._direct[cls.name] = cls
    return cls


def get_backend(name: str, options: dict[str, Any] | None = None) -> InfluenceBackend:
    """An instance of the backend ``name`` with ``options`` validated by its ``Options`` (pydantic errors)."""
    table = BACKENDS._all()
    if name not in table:
        import difflib

        near = difflib.get_close_matches(name, list(table), n=1)
        hint = f"; did you mean {near[0]!r}?" if near else ""
        raise KeyError(f"no influence backend {name!r}{hint} (registered: {', '.join(sorted(table))})")
    return table[name](options)
