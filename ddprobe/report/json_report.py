"""report.json: the machine-readable record of a study (schema in DESIGN.md and docs/reports.md)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from .. import __version__
from ..results import StudyResults


def _num(v: Any) -> Any:
    if isinstance(v, float) and (math.isnan(v) or math.isinf(v)):
        return None
    return v


def to_dict(results: StudyResults) -> dict[str, Any]:
    out = results.output_dir
    probes = []
    for p in results.probes:
        probes.append({
            "id": p.id, "kind": p.kind, "status": p.status, "seconds": round(p.seconds, 3), "cached": p.cached,
            "computed_seconds": None if p.computed_seconds is None else round(p.computed_seconds, 3),
            "summary": p.result.summary,
            "metrics": {k: _num(float(v)) for k, v in p.result.metrics.items()},
            "timings": {k: _num(float(v)) for k, v in p.result.timings.items()},
            "checks": [{k: _num(v) for k, v in c.to_json().items()} for c in p.checks],
            "findings": [f.id + "/" + f.set for f in p.result.findings],
            "tables": {name: f"tables/{p.id}-{name}.csv" for name in p.result.tables},
            "figures": {name: _rel(path, out) for name, path in p.result.figures.items()},
            "info": p.result.info,
            "directions": metric_directions(p.kind),
            "error": p.error,
        })
    return {
        "ddprobe_version": __version__,
        "study": {"name": results.name, "spec_sha256": results.spec_sha256, "seed": results.seed,
                  "spec_path": results.spec_path},
        "provenance": results.provenance,
        "distilled": {
            name: {"distiller": d.distiller, "ipc": d.ipc, "images": d.images, "sha256": d.sha256,
                   "seconds": None if d.seconds is None else round(d.seconds, 3), "control": d.control,
                   "source": d.source, "status": d.status, "error": d.error,
                   "figure": _rel(d.figure, out) if d.figure else None}
            for name, d in results.distilled.items()
        },
        "findings": [f.to_json() for f in results.findings],
        "probes": probes,
        "errors": results.errors,
        "warnings": results.warnings,
        "exit_code": results.exit_code,
        "status": results.status,
        "interrupted": results.interrupted,
        "seconds": round(results.seconds, 3),
    }


def metric_directions(kind: str) -> dict[str, str]:
    """The probe's declared ``metric_directions`` (glob -> higher | lower | none), for ``ddprobe compare``."""
    from .. import registry

    try:
        declared = getattr(registry.get("probe", kind), "metric_directions", None)
    except Exception:  # a probe no longer installed: compare falls back to its defaults
        return {}
    if not isinstance(declared, dict):
        return {}
    return {str(k): v for k, v in declared.items() if v in ("higher", "lower", "none")}


def _rel(path: Any, base: Path) -> str:
    path = Path(path)
    try:
        return str(path.resolve().relative_to(base.resolve()))
    except ValueError:
        return str(path)


class JsonReporter:
    name = "json"
    description = "report.json: metrics, checks, provenance and file references"

    def write(self, results: StudyResults, directory: Path) -> Path:
        path = Path(directory) / "report.json"
        path.write_text(json.dumps(to_dict(results), indent=2, default=str) + "\n")
        return path
