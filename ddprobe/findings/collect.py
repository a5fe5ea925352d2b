"""Gather a study's findings and set each one beside the random-real control's verdict for the same claim."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..results import DistilledRecord, ProbeRecord
    from .model import Finding


def same_ipc_control(ipc: int | None, controls: Iterable[tuple[str, int | None]]) -> str | None:
    """The control a set is compared with: the first (by name) random-real set at the same images per class."""
    return next((name for name, other in sorted(controls) if ipc is not None and other == ipc), None)


def control_for(set_name: str, distilled: dict[str, DistilledRecord]) -> str | None:
    """After a study: a set's control among the distilled records (none for a control or a failed set)."""
    record = distilled.get(set_name)
    if record is None or record.control:
        return None
    return same_ipc_control(record.ipc, [(n, r.ipc) for n, r in distilled.items() if r.control and r.status == "ok"])


def control_for_set(set_name: str, ctx: Any) -> str | None:
    """Inside a probe: the control of ``ctx.distilled[set_name]`` among ``ctx.controls``, if any."""
    ds = ctx.distilled.get(set_name)
    if ds is None or set_name in ctx.controls:
        return None
    return same_ipc_control(ds.manifest.ipc, [(n, ctx.distilled[n].manifest.ipc) for n in ctx.controls
                                              if n in ctx.distilled])


def study_findings(probes: list[ProbeRecord], distilled: dict[str, DistilledRecord]) -> list[Finding]:
    """Every probe's findings, in probe order, each carrying its control's verdict."""
    out: list[Finding] = []
    for record in probes:
        found = {(f.id, f.set): f for f in record.result.findings}
        for f in record.result.findings:
            f.control = f.control or bool(distilled.get(f.set) and distilled[f.set].control)
            if not f.control:
                f.control_set = control_for(f.set, distilled)
                twin = found.get((f.id, f.control_set)) if f.control_set else None
                f.control_verdict = twin.verdict if twin is not None else None
            out.append(f)
    return out
