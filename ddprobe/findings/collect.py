"""Gather a study's findings and set each one beside the random-real control's verdict for the same claim."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..results import DistilledRecord, ProbeRecord
    from .model import Finding


def control_for(set_name: str, distilled: dict[str, DistilledRecord]) -> str | None:
    """The control a set is compared with: the random-real set at the same images per class."""
    record = distilled.get(set_name)
    if record is None or record.control:
        return None
    for name, other in distilled.items():
        if other.control and other.ipc == record.ipc and other.status == "ok":
            return name
    return None


def control_for_set(set_name: str, ctx: Any) -> str | None:
    """Inside a probe: the random-real control of ``ctx.distilled[set_name]`` (same images per class), if any."""
    ds = ctx.distilled.get(set_name)
    if ds is None or set_name in ctx.controls:
        return None
    ipc = ds.manifest.ipc
    for name in ctx.controls:
        other = ctx.distilled.get(name)
        if other is not None and (other.manifest.ipc == ipc or ipc is None and len(other) == len(ds)):
            return name
    return None


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
