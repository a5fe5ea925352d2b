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


def result_problems(result: Any) -> list[str]:
    """What is wrong with what a probe's ``run()`` returned (empty when it is a well-formed ProbeResult).

    The study turns any problem into that probe's failure, so reporters only ever see numbers for metrics,
    DataFrame-like tables under plain names, paths for figures and a string summary.
    """
    import numbers

    from .names import name_problem

    if not isinstance(result, ProbeResult):
        return [f"run() returned {type(result).__name__}, not a ProbeResult"]
    problems: list[str] = []
    if not isinstance(result.metrics, dict):
        return [f"metrics is a {type(result.metrics).__name__}, not a dict of metric name -> number"]
    for key, value in result.metrics.items():
        if not isinstance(key, str) or not key:
            problems.append(f"metric key {key!r} is not a non-empty string")
        elif isinstance(value, bool) or not isinstance(value, numbers.Real):
            problems.append(f"metric {key!r} is {type(value).__name__} {_short(value)}, not a number "
                            f"(return float(x); float('nan') for a value that could not be computed)")
    if not isinstance(result.tables, dict):
        problems.append(f"tables is a {type(result.tables).__name__}, not a dict of name -> DataFrame")
    else:
        for name, table in result.tables.items():
            problem = name_problem(name)
            if problem is not None:
                problems.append(f"table name {name!r} {problem}")
            if not callable(getattr(table, "to_csv", None)):
                problems.append(f"table {name!r} is a {type(table).__name__}, not a pandas DataFrame")
    if not isinstance(result.figures, dict):
        problems.append(f"figures is a {type(result.figures).__name__}, not a dict of name -> file path")
    else:
        for name, path in result.figures.items():
            if not isinstance(name, str) or not isinstance(path, (str, Path)):
                problems.append(f"figure {name!r} -> {_short(path)} is not a name -> file path")
    if not isinstance(result.summary, str):
        problems.append(f"summary is a {type(result.summary).__name__}, not a string")
    if not isinstance(result.info, dict):
        problems.append(f"info is a {type(result.info).__name__}, not a dict")
    return problems


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


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
    status: str  # "ok" | "error" | "interrupted"
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
    warnings: list[str] = field(default_factory=list)  # e.g. a plugin's lifecycle hook that raised (no exit code)
    interrupted: bool = False  # stopped by Ctrl-C or SIGTERM: a partial record of what finished

    @property
    def findings(self) -> list[Finding]:
        """Every probe's findings, each beside the random-real control's verdict (see ddprobe.findings)."""
        from .findings.collect import study_findings

        return study_findings(self.probes, self.distilled)

    @property
    def exit_code(self) -> int:
        """0 all ran and held; 1 an expectation failed; 3 a probe or distiller raised; 130 interrupted."""
        if self.interrupted:
            return 130
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
