"""Built-in probes. Each module in ``ddprobe.builtin.probe_*`` registers its probes here."""

from __future__ import annotations

import importlib

from ..hookspecs import hookimpl

PROBE_MODULES = (
    "ddprobe.builtin.probe_evaluate",
    "ddprobe.builtin.probe_recognition",
    "ddprobe.builtin.probe_pixels",
    "ddprobe.builtin.probe_agreement",
    "ddprobe.builtin.probe_mixing",
    "ddprobe.builtin.probe_recognition_curve",
    "ddprobe.builtin.probe_sensitivity",
    "ddprobe.builtin.probe_embedding",
    "ddprobe.builtin.probe_influence",
    "ddprobe.builtin.probe_hessian",
)


@hookimpl
def register_probes(register):
    for name in PROBE_MODULES:
        module = importlib.import_module(name)
        for probe in module.PROBES:
            register(probe())
