"""The plugin contract: ddprobe's hooks. Built-ins implement them exactly as third-party plugins do."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from pluggy import HookimplMarker, HookspecMarker

if TYPE_CHECKING:
    import typer

hookspec = HookspecMarker("ddprobe")
hookimpl = HookimplMarker("ddprobe")

Register = Callable[[Any], None]


@hookspec
def register_datasets(register: Register) -> None:
    """Register dataset classes (``name``, ``description``, ``Options``, ``load(options, root)``)."""


@hookspec
def register_models(register: Register) -> None:
    """Register model classes (``build(options, input_shape, num_classes) -> nn.Module``)."""


@hookspec
def register_distillers(register: Register) -> None:
    """Register distillers (``distill(real, ipc, options, ctx) -> DistilledSet``)."""


@hookspec
def register_probes(register: Register) -> None:
    """Register probes (``run(ctx, options) -> ProbeResult``)."""


@hookspec
def register_reporters(register: Register) -> None:
    """Register reporters (``write(results, directory)``) that write a study's results in some format."""


@hookspec
def register_importers(register: Register) -> None:
    """Register importers (``sniff(path) -> bool``, ``load(path) -> DistilledSet``) for distilled-set files."""


@hookspec
def register_influence_backends(register: Register) -> None:
    """Register influence backend classes (``name``, ``description``, ``Options``, ``compute(problem)``)."""


@hookspec
def register_commands(app: typer.Typer) -> None:
    """Add commands to the ``ddprobe`` command line."""


@hookspec
def study_started(study: Any) -> None:
    """Called once the study's data, models and distilled sets are resolved, before the first probe."""


@hookspec
def probe_finished(study: Any, probe: Any, result: Any) -> None:
    """Called after each probe, with its ``ProbeRecord`` (status ok or error)."""


@hookspec
def study_finished(study: Any, results: Any) -> None:
    """Called once with the ``StudyResults`` after every probe ran and before reports are written."""
