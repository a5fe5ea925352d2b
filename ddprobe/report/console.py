"""The rich console report printed by ``ddprobe run``."""

from __future__ import annotations

from typing import Any

from ..results import StudyResults
from .numbers import fmt, fmt_seconds, plural
from .tables import metric_matrices

VERDICT_STYLE = {"passed": "bold green", "expectation failed": "bold red", "probe failed": "bold red",
                 "interrupted": "bold yellow"}


def status_line(results: StudyResults) -> str:
    """The final line of a run (printed even with ``--quiet``): the overall result, time and where the files are."""
    from rich.markup import escape

    checks = [c for p in results.probes for c in p.checks]
    failed = sum(not c.passed for c in checks)
    detail = (f"{failed} of {plural(len(checks), 'expectation')} failed" if failed else
              f"{plural(len(checks), 'expectation')} held" if checks else "no expectations")
    style = VERDICT_STYLE.get(results.status, "bold red")
    return (f"[{style}]{results.status}[/{style}] · {detail} · {plural(len(results.probes), 'probe')} · "
            f"{fmt_seconds(results.seconds)} · results in {escape(str(results.output_dir))}")


def print_report(results: StudyResults, console: Any) -> None:
    from rich.markup import escape
    from rich.table import Table

    from .findings import print_findings

    print_findings(results, console)
    sets = Table(title="distilled sets", title_justify="left")
    for col in ("set", "made by", "ipc", "images", "time", "status"):
        sets.add_column(col, justify="left" if col in ("set", "made by", "status") else "right")
    for name, d in results.distilled.items():
        status = "[green]ok[/green]" if d.status == "ok" else f"[red]{d.status}[/red] {escape(d.error or '')}"
        sets.add_row(escape(name) + (" [dim](control)[/dim]" if d.control else ""),
                     escape(str(d.distiller or d.source or "")), fmt(d.ipc), fmt(d.images), fmt_seconds(d.seconds),
                     status)
    console.print(sets)
    names = list(results.distilled)
    for p in results.probes:
        if p.cached:
            took = f"cached, loaded in {fmt_seconds(p.seconds)}" + (
                f"; computed in {fmt_seconds(p.computed_seconds)} earlier" if p.computed_seconds is not None else "")
        else:
            took = fmt_seconds(p.seconds)
        head = f"[bold]{escape(p.id)}[/bold] [dim]({escape(p.kind)}, {took})[/dim]"
        if p.status != "ok":
            console.print(f"{head}  [red]{p.status}:[/red] {escape(p.error or '')}")
            continue
        matrices, rest = metric_matrices(p.result.metrics, names)
        console.print(head)
        for m in matrices:
            table = Table()
            table.add_column("set" if "/" not in m.rows[0] else "set/model")
            for c in m.cols:
                table.add_column(escape(c), justify="right")
            for r in m.rows:
                table.add_row(escape(r), *(fmt(m.cells.get((r, c))) for c in m.cols))
            console.print(table)
        if rest:
            extra = Table(show_header=True)
            extra.add_column("metric")
            extra.add_column("value", justify="right")
            for k, v in list(rest.items())[:40]:
                extra.add_row(escape(k), fmt(v))
            if len(rest) > 40:
                extra.add_row(f"... {len(rest) - 40} more in report.json", "")
            console.print(extra)
        if p.result.summary:
            console.print(f"  {escape(p.result.summary)}")
        for c in p.checks:
            mark = "[green]✓[/green]" if c.passed else "[red]✗[/red]"
            value = f"got {fmt(c.value)}" if c.value is not None else escape(c.message or "no value")
            console.print(f"  {mark} {escape(c.metric)} {c.op} {fmt(c.threshold)}  ({value})")
    for err in results.errors:
        console.print(f"[red]error:[/red] {escape(err)}")
    for warning in results.warnings:
        console.print(f"[yellow]warning:[/yellow] {escape(warning)}")
    console.print(status_line(results), soft_wrap=True)
