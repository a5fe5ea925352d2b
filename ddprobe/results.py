"""What probes return and what a study collects."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd

    from .findings import Finding


@dataclass
class ProbeResult:
    """A probe's output: flat metrics (keys like ``dm/convnet``), tables, figure paths and a one-line summary.

    ``metrics`` are scientific results: the same for the same spec and seed, whatever the machine. Wall-clock
    measurements (seconds, throughput) go to ``timings``, flat ``{str: float}`` too, which report.json keeps apart
    and which ``compare`` and the determinism checks leave out.
    """

    metrics: dict[str, float] = field(default_factory=dict)
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)
    figures: dict[str, Path] = field(default_factory=dict)
    summary: str = ""
    info: dict[str, Any] = field(default_factory=dict)
    findings: list[Finding] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)


@dataclass
class Check:
    """One expectation evaluated against one metric."""

    metric: str
    op: str
    threshold: float | str
    value: float | str | None
    passed: bool
    message: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"metric": self.metric, "op": self.op, "threshold": self.threshold, "value": self.value,
                "passed": self.passed, **({"message": self.message} if self.message else {})}


@dataclass
class ProbeRecord:
    """A probe as it ran in a study: its id, kind, status, timing, result, checks and error if any."""

    id: str
    kind: str
    status: str  # "ok" | "error"
    seconds: float
    result: ProbeResult
    checks: list[Check] = field(default_factory=list)
    error: str | None = None
    traceback: str | None = None
    cached: bool = False
    computed_seconds: float | None = None  # a cached record: how long computing it took originally

    @property
    def metrics(self) -> dict[str, float]:
        return self.result.metrics

    @property
    def passed(self) -> bool:
        return self.status == "ok" and all(c.passed for c in self.checks)


@dataclass
class DistilledRecord:
    name: str
    distiller: str | None
    ipc: int | None
    images: int
    sha256: str
    seconds: float | None
    source: str | None = None
    control: bool = False
    status: str = "ok"
    error: str | None = None
    figure: Path | None = None  # a picture of the set's images (figures/distilled-<name>.png)


STATUS = {0: "passed", 1: "expectation failed", 3: "probe failed", 130: "interrupted"}
@dataclass
class StudyResults:
    """Everything a study produced; reporters turn it into files."""

    name: str
    seed: int
    spec_sha256: str
    spec_path: str | None
    provenance: dict[str, Any]
    distilled: dict[str, DistilledRecord]
    probes: list[ProbeRecord]
    output_dir: Path
    seconds: float = 0.0
    errors: list[str] = field(default_factory=list)

    @property
    def findings(self) -> list[Finding]:
        """Every probe's findings, each beside the random-real control's verdict (see ddprobe.findings)."""
        from .findings.collect import study_findings

        return study_findings(self.probes, self.distilled)

    @property
    def exit_code(self) -> int:
        """0 all ran and held; 1 an expectation failed; 3 a probe or distiller raised."""
        if self.errors or any(p.status != "ok" for p in self.probes) or any(
            d.status != "ok" for d in self.distilled.values()
        ):
            return 3
        if any(not c.passed for p in self.probes for c in p.checks):
            return 1
        return 0

    @property
    def status(self) -> str:
        """The overall result in words: ``passed``, ``expectation failed`` or ``probe failed`` (exit 0, 1, 3)."""
        return STATUS.get(self.exit_code, f"exit code {self.exit_code}")

    def probe(self, probe_id: str) -> ProbeRecord:
        """The record of one probe by its id (``results.probe("recognition").metrics``)."""
        for record in self.probes:
            if record.id == probe_id:
                return record
        known = ", ".join(p.id for p in self.probes) or "none"
        raise KeyError(f"no probe {probe_id!r} in these results (probes: {known})")

    def __getitem__(self, probe_id: str) -> ProbeRecord:
        """``results["recognition"]`` is ``results.probe("recognition")``."""
        return self.probe(probe_id)

    def __contains__(self, probe_id: object) -> bool:
        return any(p.id == probe_id for p in self.probes)
