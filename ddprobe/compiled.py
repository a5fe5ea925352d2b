"""Compiled training for bags of same-architecture models ([study] compile = auto | always | never).

``torch.compile`` of a model's forward pass is 1.25-1.7x faster per step on CPU, after a one-off compile of tens of
seconds (a few with the on-disk cache warm). One model never pays that back; a bag of trainings of one architecture
(agreement pools, leave-one-out retrainings, seeds) may. This module:

* compiles one *functional* forward per architecture and device (``functional_call`` of a template module with the
  parameters passed in), so every model of the bag, with its own parameter tensors, reuses the same compiled code;
* decides per bag (:func:`decide`): ``always``, ``never``, or for ``auto`` compile only when the predicted saving
  ``bag steps x eager step seconds x (1 - 1 / gain)`` exceeds the predicted compile seconds. Until a gain and a
  compile time were measured in this process, the prediction is conservative (gain 1.25, compile 30 s), so small
  bags never compile;
* falls back to eager silently when compilation is unavailable or fails (no ``torch.compile``, no C++ compiler, a
  platform where it raises): the failure is remembered for the process and recorded in :data:`LAST`, which probes
  copy into their info.

Only models without buffers and dropout are compiled (their forward is a pure function of parameters and input;
BatchNorm statistics and dropout draws would make the compiled and eager runs differ). The compiled forward computes
the same function as the eager one: results agree up to floating-point rounding, and the decision is made once per
bag on the driver, so every worker of a bag trains the same way.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    import torch

Setting = Literal["auto", "always", "never"]

DEFAULT_GAIN = 1.25  # the low end of the measured steady-state speed-up on CPU (issue 18)
DEFAULT_COMPILE_S = 30.0  # a cold compile on a 2-core CPU measured 24.5 s

_FORWARDS: dict[str, Callable[..., Any]] = {}
_SHAPES: dict[str, tuple[int, ...]] = {}  # key -> the input shape it was compiled for
_FAILED: dict[str, str] = {}  # key -> why compiling failed (remembered: never retried in this process)
_MEASURED: dict[str, dict[str, float]] = {}  # key -> {"gain": ..., "compile_s": ...}
LAST: dict[str, Any] = {}  # the last bag's decision, for probe info


@dataclass(frozen=True)
class Decision:
    compile: bool
    reason: str
    predicted_saving_s: float = 0.0
    predicted_compile_s: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {"compile": self.compile, "reason": self.reason,
                "predicted_saving_s": round(self.predicted_saving_s, 3),
                "predicted_compile_s": round(self.predicted_compile_s, 3)}


def decide(setting: str, bag_steps: int, eager_step_s: float | None, *, gain: float | None = None,
           compile_s: float | None = None, compilers: int = 1) -> Decision:
    """Whether a bag of ``bag_steps`` optimizer steps (over all its models) should train compiled.

    ``eager_step_s`` is the measured seconds of one eager step; ``gain`` and ``compile_s`` the measured steady-state
    speed-up and compile seconds (``None``: not measured yet, the conservative defaults apply); ``compilers`` how
    many processes compile (each worker of a bag compiles once).
    """
    if setting == "never":
        return Decision(False, "compile = never")
    if setting == "always":
        return Decision(True, "compile = always")
    if setting != "auto":
        raise ValueError(f"compile must be auto, always or never, not {setting!r}")
    if eager_step_s is None or bag_steps <= 0:
        return Decision(False, "auto: no eager step time measured")
    g = DEFAULT_GAIN if gain is None else gain
    cost = (DEFAULT_COMPILE_S if compile_s is None else compile_s) * max(1, compilers)
    saving = bag_steps * eager_step_s * (1.0 - 1.0 / g) if g > 1.0 else 0.0
    if saving > cost:
        return Decision(True, f"auto: predicted saving {saving:.1f} s > compile {cost:.1f} s", saving, cost)
    return Decision(False, f"auto: predicted saving {saving:.1f} s <= compile {cost:.1f} s", saving, cost)


def eligible(model: torch.nn.Module) -> str | None:
    """Why ``model`` cannot train compiled (None when it can): buffers or dropout make its forward impure."""
    import torch

    if not hasattr(torch, "compile"):
        return "torch.compile is not available"
    if any(True for _ in model.buffers()):
        return "the model has buffers (BatchNorm statistics)"
    if any(isinstance(m, torch.nn.modules.dropout._DropoutNd) for m in model.modules()):
        return "the model has dropout"
    return None


def arch_key(arch: Any, device: Any, batch: int) -> str:
    """The key of one architecture (a ModelSpec key, or anything JSON-able) on one device at one batch size.

    A compiled forward serves only inputs of ``batch`` rows, so which steps run compiled depends on the bag alone,
    never on which worker process trained which job.
    """
    return json.dumps([str(device), arch, int(batch)], sort_keys=True, default=str)


def key_batch(key: str) -> int:
    return int(json.loads(key)[2])


def measured(key: str) -> dict[str, float]:
    """What this process measured for an architecture: ``gain`` and ``compile_s`` when known."""
    return dict(_MEASURED.get(key, {}))


def record(key: str, *, gain: float | None = None, compile_s: float | None = None) -> None:
    entry = _MEASURED.setdefault(key, {})
    if gain is not None:
        entry["gain"] = float(gain)
    if compile_s is not None:
        entry["compile_s"] = float(compile_s)


def failure(key: str) -> str | None:
    return _FAILED.get(key)


def forward(model: torch.nn.Module, key: str, sample: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """A compiled forward for ``model`` (bound to its own parameters), or None when it cannot be compiled.

    The compiled function is shared by every model with the same ``key``. The first request whose ``sample`` has
    the key's batch size compiles it with one
    forward and backward pass on ``sample`` (on copies of the parameters, so ``model`` is untouched) and records
    the seconds it took; if that raises, the key is marked failed and None (train eagerly) is returned, now and for
    the rest of the process. The function is compiled for ``sample``'s shape only: an input of another shape (a
    last partial batch, a set of another size) runs eagerly rather than recompiling. A later call that raises
    falls back to the eager forward the same way.
    """
    if key in _FAILED or eligible(model) is not None:
        return None
    fn = _FORWARDS.get(key)
    if fn is None and sample.shape[0] != key_batch(key):
        return None  # this run's batches have another size: eager (it would never use the compiled shape)
    if fn is None:
        import copy

        import torch
        from torch.func import functional_call

        template = copy.deepcopy(model)
        t0 = time.perf_counter()
        try:
            fn = torch.compile(lambda p, x: functional_call(template, p, (x,)), dynamic=False)
            trial = {n: torch.nn.Parameter(p.detach().clone()) for n, p in model.named_parameters()}
            out = fn(trial, sample)
            torch.autograd.grad(out.float().sum(), list(trial.values()))
        except Exception as exc:  # noqa: BLE001 - no C++ compiler, unsupported platform...: train eagerly
            _FAILED[key] = f"{type(exc).__name__}: {exc}"[:300]
            return None
        record(key, compile_s=time.perf_counter() - t0)
        _FORWARDS[key] = fn
        _SHAPES[key] = tuple(sample.shape)
    compiled = fn
    params = dict(model.named_parameters())

    shape = _SHAPES[key]

    def call(x: torch.Tensor) -> torch.Tensor:
        if key in _FAILED or tuple(x.shape) != shape:  # another shape would recompile: that step runs eagerly
            return model(x)
        try:
            return compiled(params, x)
        except Exception as exc:  # noqa: BLE001
            _FAILED[key] = f"{type(exc).__name__}: {exc}"[:300]
            return model(x)

    return call


def clear() -> None:
    """Forget compiled forwards, failures and measurements (tests)."""
    _FORWARDS.clear()
    _SHAPES.clear()
    _FAILED.clear()
    _MEASURED.clear()
    LAST.clear()
