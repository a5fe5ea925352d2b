"""ddprobe: what does a distilled dataset really contain?

The public API is imported lazily so that ``ddprobe --help`` never pays for torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .hookspecs import hookimpl

__version__ = "0.1.0"

__all__ = [
    "hookimpl", "run_study", "load_spec", "LabeledData", "DistilledSet", "RealData", "Manifest", "ProbeResult",
    "TrainRecipe", "StudyContext", "DistillContext", "__version__",
]

_LAZY = {
    "run_study": "ddprobe.study", "load_spec": "ddprobe.spec", "LabeledData": "ddprobe.data",
    "DistilledSet": "ddprobe.data", "RealData": "ddprobe.data", "Manifest": "ddprobe.data",
    "ProbeResult": "ddprobe.results", "TrainRecipe": "ddprobe.training", "StudyContext": "ddprobe.context",
    "DistillContext": "ddprobe.context",
}

if TYPE_CHECKING:
    from .context import DistillContext, StudyContext
    from .data import DistilledSet, LabeledData, Manifest, RealData
    from .results import ProbeResult
    from .spec import load_spec
    from .study import run_study
    from .training import TrainRecipe


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'ddprobe' has no attribute {name!r}")
