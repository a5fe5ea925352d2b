"""``ddprobe compare OLD NEW``: every metric's change between two runs' report.json; exit 1 on a regression.

Direction rule: a metric is "higher is better" unless its key matches a ``--lower`` glob or, when no
``--higher`` glob matches it either, one of ``LOWER_IS_BETTER``. Globs match the metric key (``dm/convnet``) or
``PROBE_ID:KEY`` (``evaluate:dm/convnet``). A metric regresses when it moved in its worse direction by more
than the tolerance, became NaN, or is missing from NEW (a probe that failed or stopped reporting it).
"""

from __future__ import annotations

import fnmatch
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import typer

from .app import app, fail

LOWER_IS_BETTER = ("*loss*", "*error*", "*seconds*", "*outside_01*")


@dataclass
class Change:
    probe: str
    metric: str
    old: float | None
    new: float | None
    direction: str  # "higher" | "lower" | "ignored"
    status: str  # better | same | worse (within tolerance) | regressed | now NaN | new | missing | ignored
    regression: bool = False

    @property
    def delta(self) -> float | None:
        if self.old is None or self.new is None or _nan(self.old) or _nan(self.new):
            return None
        return self.new - self.old


def _nan(x: float | None) -> bool:
    return x is None or (isinstance(x, float) and math.isnan(x))


def _matches(probe: str, metric: str, globs: list[str]) -> bool:
    return any(fnmatch.fnmatchcase(metric, g) or fnmatch.fnmatchcase(f"{probe}:{metric}", g) for g in globs)


def direction(probe: str, metric: str, higher: list[str] = (), lower: list[str] = (), ignore: list[str] = ()) -> str:
    """Which way is better for one metric (the rule in the module docstring)."""
    if _matches(probe, metric, list(ignore)):
        return "ignored"
    if _matches(probe, metric, list(lower)):
        return "lower"
    if _matches(probe, metric, list(higher)):
        return "higher"
    return "lower" if _matches(probe, metric, list(LOWER_IS_BETTER)) else "higher"


def _metrics(report: dict) -> dict[tuple[str, str], float | None]:
    out: dict[tuple[str, str], float | None] = {}
    for probe in report.get("probes", []):
        for key, value in (probe.get("metrics") or {}).items():
            out[(probe["id"], key)] = None if value is None else float(value)
    return out


def compare(old: dict, new: dict, tolerance: float = 0.0, relative: bool = False, higher: list[str] = (),
            lower: list[str] = (), ignore: list[str] = (), allow_missing: bool = False) -> list[Change]:
    """Every metric of both reports, in OLD's order then NEW-only ones, with its verdict."""
    before, after = _metrics(old), _metrics(new)
    changes = []
    for probe, metric in [*before, *(k for k in after if k not in before)]:
        a, b = before.get((probe, metric)), after.get((probe, metric))
        way = direction(probe, metric, higher, lower, ignore)
        regression = False
        if way == "ignored":
            status = "ignored"
        elif (probe, metric) not in after:
            status, regression = "missing", not allow_missing
        elif (probe, metric) not in before or _nan(a):
            status = "new"
        elif _nan(b):
            status, regression = "now NaN", True
        else:
            gain = (b - a) if way == "higher" else (a - b)
            allowed = (tolerance * abs(a) if relative else tolerance) + 1e-9 * max(1.0, abs(a))  # float slack
            if gain == 0:
                status = "same"
            elif gain > 0:
                status = "better"
            elif -gain <= allowed:
                status = "worse"
            else:
                status, regression = "regressed", True
        changes.append(Change(probe, metric, a, b, way, status, regression))
    return changes


def _read(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise fail(f"{path} does not exist", 2) from None
    except (OSError, json.JSONDecodeError) as exc:
        raise fail(f"{path} is not a report.json: {exc}", 2) from None
    if not isinstance(data, dict) or not isinstance(data.get("probes"), list):
        raise fail(f"{path} is not a report.json (no 'probes' list)", 2)
    return data


def _fmt(x: float | None) -> str:
    return "—" if x is None else ("nan" if _nan(x) else f"{x:.4g}")


STYLE = {"better": "green", "same": "dim", "worse": "yellow", "regressed": "bold red", "now NaN": "bold red",
         "missing": "bold red", "new": "cyan", "ignored": "dim"}


@app.command("compare")
def compare_command(
    old: Path = typer.Argument(..., help="report.json of the earlier run (the baseline)"),
    new: Path = typer.Argument(..., help="report.json of the later run"),
    tolerance: float = typer.Option(0.0, "--tolerance", "-t", min=0.0,
                                    help="How far a metric may move the wrong way before it is a regression"),
    relative: bool = typer.Option(False, "--relative", help="Tolerance is a fraction of the old value"),
    higher: list[str] = typer.Option([], "--higher", help="Glob of metrics where higher is better (repeatable)"),
    lower: list[str] = typer.Option([], "--lower", help="Glob of metrics where lower is better (repeatable)"),
    ignore: list[str] = typer.Option([], "--ignore", help="Glob of metrics not to judge (repeatable)"),
    allow_missing: bool = typer.Option(False, "--allow-missing", help="A metric missing from NEW is no regression"),
    as_json: bool = typer.Option(False, "--json", help="Print the comparison as JSON instead of a table"),
) -> None:
    """Show every metric's change between two runs; exit 1 when one regresses beyond the tolerance.

    Higher is better unless a metric matches --lower or a default lower-is-better glob
    (*loss*, *error*, *seconds*, *outside_01*). Globs match KEY or PROBE_ID:KEY.
    """
    a, b = _read(old), _read(new)
    changes = compare(a, b, tolerance, relative, higher, lower, ignore, allow_missing)
    regressed = [c for c in changes if c.regression]
    if as_json:
        typer.echo(json.dumps({"old": str(old), "new": str(new), "tolerance": tolerance, "relative": relative,
                               "regressions": len(regressed),
                               "changes": [{**asdict(c), "delta": c.delta} for c in changes]}, indent=2))
        raise typer.Exit(1 if regressed else 0)
    from rich.console import Console
    from rich.table import Table

    console = Console(highlight=False)
    sa, sb = a.get("study", {}), b.get("study", {})
    if sa.get("spec_sha256") and sb.get("spec_sha256") and sa["spec_sha256"] != sb["spec_sha256"]:
        console.print("[yellow]note:[/yellow] the two runs come from different specs")
    table = Table(title=f"{old} → {new}", title_justify="left")
    for col, justify in (("probe", "left"), ("metric", "left"), ("better", "left"), ("old", "right"),
                         ("new", "right"), ("change", "right"), ("verdict", "left")):
        table.add_column(col, justify=justify)
    for c in changes:
        delta = c.delta
        shown = "" if delta is None else f"{delta:+.4g}"
        arrow = {"higher": "↑", "lower": "↓"}.get(c.direction, "")
        style = STYLE[c.status] if c.regression or c.status != "missing" else "yellow"
        table.add_row(c.probe, c.metric, arrow, _fmt(c.old), _fmt(c.new), shown, f"[{style}]{c.status}[/]")
    console.print(table)
    counts = {s: sum(1 for c in changes if c.status == s) for s in STYLE}
    summary = ", ".join(f"{n} {s}" for s, n in counts.items() if n)
    tol = f"{tolerance:g}" + (" (relative)" if relative else "")
    if regressed:
        console.print(f"[bold red]{len(regressed)} regression(s)[/bold red] beyond tolerance {tol}: {summary}")
        raise typer.Exit(1)
    console.print(f"[green]no regression[/green] beyond tolerance {tol}: {summary or 'no metrics'}")
