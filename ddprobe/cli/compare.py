"""``ddprobe compare OLD NEW``: every metric's change between two runs; exit 1 on a regression.

OLD and NEW are run folders (their ``report.json`` is read) or report.json files. Which way is better, per metric
(the first rule that applies):

1. a metric matching an ``--ignore`` glob: shown, not judged;
2. a timing (the key's last part is ``seconds``, ``*_seconds`` or ``seconds_*``; report.json's separate
   ``timings`` section is not read at all): shown, never judged, since two runs of the same science differ in time;
3. ``--lower`` then ``--higher`` globs;
4. the probe's declared ``metric_directions`` (glob -> ``higher``, ``lower`` or ``none``, first match), as the
   run recorded them in report.json, else as the installed probe declares them;
5. defaults: ``*loss*`` and ``*error*`` are lower-is-better, accuracy-like keys (``*accuracy*``, ``*acc``) are
   higher-is-better, and anything else has no better direction: its change is shown, not judged.

Globs match the metric key (``dm/convnet``) or ``PROBE_ID:KEY`` (``evaluate:dm/convnet``). A judged metric
regresses when it moved in its worse direction by more than the tolerance; any metric regresses when it became
NaN or is missing from NEW (a probe that failed or stopped reporting it).
"""

from __future__ import annotations

import fnmatch
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import typer

from .app import app, fail

LOWER_IS_BETTER = ("*loss*", "*error*")
HIGHER_IS_BETTER = ("*accuracy*", "*acc")
DIRECTIONS = ("higher", "lower", "none")


@dataclass
class Change:
    probe: str
    metric: str
    old: float | None
    new: float | None
    direction: str  # "higher" | "lower" | "none" (not judged) | "timing" (never judged) | "ignored"
    status: str  # better | same | worse (within tolerance) | regressed | changed | now NaN | new | missing | ignored
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


def is_timing(metric: str) -> bool:
    last = metric.rsplit("/", 1)[-1]
    return last == "seconds" or last.endswith("_seconds") or last.startswith("seconds_")


def direction(probe: str, metric: str, higher: list[str] = (), lower: list[str] = (), ignore: list[str] = (),
              declared: dict[str, str] | None = None) -> str:
    """Which way is better for one metric (the rules in the module docstring)."""
    if _matches(probe, metric, list(ignore)):
        return "ignored"
    if is_timing(metric):
        return "timing"
    if _matches(probe, metric, list(lower)):
        return "lower"
    if _matches(probe, metric, list(higher)):
        return "higher"
    for glob, way in (declared or {}).items():
        if way in DIRECTIONS and (fnmatch.fnmatchcase(metric, glob)):
            return way
    if _matches(probe, metric, list(LOWER_IS_BETTER)):
        return "lower"
    if _matches(probe, metric, list(HIGHER_IS_BETTER)):
        return "higher"
    return "none"


def _metrics(report: dict) -> dict[tuple[str, str], float | None]:
    out: dict[tuple[str, str], float | None] = {}
    for probe in report.get("probes", []):
        for key, value in (probe.get("metrics") or {}).items():
            out[(probe["id"], key)] = None if value is None else float(value)
    return out


def _declared(report: dict) -> dict[str, dict[str, str]]:
    """Per probe id: the directions the run recorded, else those of the installed probe of that kind."""
    out = {}
    for probe in report.get("probes", []):
        found = probe.get("directions")
        if not isinstance(found, dict) and probe.get("kind"):
            from ..report.json_report import metric_directions

            found = metric_directions(probe["kind"])
        out[probe["id"]] = found or {}
    return out


def compare(old: dict, new: dict, tolerance: float = 0.0, relative: bool = False, higher: list[str] = (),
            lower: list[str] = (), ignore: list[str] = (), allow_missing: bool = False) -> list[Change]:
    """Every metric of both reports, in OLD's order then NEW-only ones, with its verdict."""
    before, after = _metrics(old), _metrics(new)
    declared = {**_declared(old), **_declared(new)}
    changes = []
    for probe, metric in [*before, *(k for k in after if k not in before)]:
        a, b = before.get((probe, metric)), after.get((probe, metric))
        way = direction(probe, metric, higher, lower, ignore, declared.get(probe))
        regression = False
        if way in ("ignored", "timing"):
            status = "ignored" if way == "ignored" else ("same" if a == b else "changed")
        elif (probe, metric) not in after:
            status, regression = "missing", not allow_missing
        elif (probe, metric) not in before or _nan(a):
            status = "new"
        elif _nan(b):
            status, regression = "now NaN", True
        elif way == "none":
            status = "same" if a == b else "changed"
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
    """A report.json, given as the file or as the run folder that holds it."""
    if path.is_dir():
        if not (path / "report.json").is_file():
            raise fail(f"{path} is a folder without a report.json; give a run folder (ddprobe run -o DIR) or "
                       "a report.json file", 2)
        path = path / "report.json"
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise fail(f"{path} does not exist", 2) from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise fail(f"{path} is not a report.json: {exc}", 2) from None
    if not isinstance(data, dict) or not isinstance(data.get("probes"), list):
        raise fail(f"{path} is not a report.json (no 'probes' list)", 2)
    return data


def _fmt(x: float | None) -> str:
    from ..report.numbers import fmt

    return fmt(x, missing="—")


STYLE = {"better": "green", "same": "dim", "worse": "yellow", "regressed": "bold red", "now NaN": "bold red",
         "missing": "bold red", "new": "cyan", "changed": "", "ignored": "dim"}


@app.command("compare")
def compare_command(
    old: Path = typer.Argument(..., metavar="OLD", help="The baseline: a run folder or its report.json"),
    new: Path = typer.Argument(..., metavar="NEW", help="The later run: a run folder or its report.json"),
    tolerance: float = typer.Option(0.0, "--tolerance", "-t", min=0.0, metavar="T",
                                    help="How far a metric may move the wrong way before it is a regression"),
    relative: bool = typer.Option(False, "--relative", help="Tolerance is a fraction of the old value"),
    higher: list[str] = typer.Option([], "--higher", metavar="GLOB",
                                     help="Metrics where higher is better (repeatable)"),
    lower: list[str] = typer.Option([], "--lower", metavar="GLOB", help="Metrics where lower is better (repeatable)"),
    ignore: list[str] = typer.Option([], "--ignore", metavar="GLOB", help="Metrics not to judge (repeatable)"),
    allow_missing: bool = typer.Option(False, "--allow-missing", help="A metric missing from NEW is no regression"),
    as_json: bool = typer.Option(False, "--json", help="Print the comparison as JSON instead of a table"),
) -> None:
    """Show every metric's change between two runs; exit 1 when one regresses beyond the tolerance.

    Timings (keys whose last part is seconds, *_seconds or seconds_*) are never judged. Otherwise --ignore,
    --lower and --higher globs decide, then the directions each probe declares (recorded in report.json), then
    the defaults: *loss* and *error* lower-is-better, *accuracy* and *acc higher-is-better, anything else shown
    but not judged.
    Globs match KEY or PROBE_ID:KEY.
    """
    from ..report.numbers import fmt_delta, plural

    a, b = _read(old), _read(new)
    changes = compare(a, b, tolerance, relative, higher, lower, ignore, allow_missing)
    regressed = [c for c in changes if c.regression]
    if as_json:
        typer.echo(json.dumps({"old": str(old), "new": str(new), "tolerance": tolerance, "relative": relative,
                               "regressions": len(regressed),
                               "changes": [{**asdict(c), "delta": c.delta} for c in changes]}, indent=2))
        raise typer.Exit(1 if regressed else 0)
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    console = Console(highlight=False)
    sa, sb = a.get("study", {}), b.get("study", {})
    if sa.get("spec_sha256") and sb.get("spec_sha256") and sa["spec_sha256"] != sb["spec_sha256"]:
        console.print("[yellow]note:[/yellow] the two runs come from different specs")
    console.print(f"{escape(str(old))} → {escape(str(new))}", soft_wrap=True)
    # Metric names are what a reader looks for, so they are never cut: when the table does not fit the terminal,
    # each metric's name gets a line of its own with its numbers on the next.
    width = max((len(f"{c.probe}:{c.metric}") for c in changes), default=6)
    stacked = width + 48 > console.width

    def numbers_table(header: bool) -> Table:
        table = Table(box=None, padding=(0, 1), header_style="bold", show_header=header)
        if header:
            table.add_column("metric", no_wrap=True, min_width=width)
        for col in ("better", "old", "new", "change", "verdict"):
            table.add_column(col, justify="left" if col in ("better", "verdict") else "right", no_wrap=True)
        return table

    table = numbers_table(header=not stacked)
    for c in changes:
        arrow = {"higher": "↑", "lower": "↓", "timing": "time", "none": "·"}.get(c.direction, "")
        style = STYLE[c.status] if c.regression or c.status != "missing" else "yellow"
        status = f"[{style}]{c.status}[/]" if style else c.status
        cells = [_fmt(c.old), _fmt(c.new), fmt_delta(c.delta), status]
        if stacked:
            console.print(f"[bold]{escape(f'{c.probe}:{c.metric}')}[/bold]", soft_wrap=True)
            row = numbers_table(header=False)
            row.add_row("  " + arrow, *cells)
            console.print(row)
        else:
            table.add_row(escape(f"{c.probe}:{c.metric}"), arrow, *cells)
    if not stacked:
        console.print(table)
    counts = {s: sum(1 for c in changes if c.status == s) for s in STYLE}
    summary = ", ".join(f"{n} {s}" for s, n in counts.items() if n)
    tol = f"{tolerance:g}" + (" (relative)" if relative else "")
    console.print("[dim]better: ↑ higher, ↓ lower, · no better direction (change shown, not judged), "
                  "time: a timing (never judged)[/dim]")
    if regressed:
        console.print(f"[bold red]{plural(len(regressed), 'regression')}[/bold red] beyond tolerance {tol}: "
                      f"{summary}")
        raise typer.Exit(1)
    console.print(f"[green]no regression[/green] beyond tolerance {tol}: {summary or 'no metrics'}")
