"""The rich console report printed by ``ddprobe run``."""

from __future__ import annotations

from typing import Any

from ..results import StudyResults
from .tables import metric_matrices


def _fmt(v: Any) -> str:
    return "" if v is None else (f"{v:.3f}" if isinstance(v, float) else str(v))


def print_report(results: StudyResults, console: Any) -> None:
    from rich.table import Table

    from .findings import print_findings

    print_findings(results, console)
    sets = Table(title="distilled sets", title_justify="left")
    for col in ("set", "distiller", "ipc", "images", "seconds", "status"):
        sets.add_column(col, justify="left" if col in ("set", "distiller", "status") else "right")
    for name, d in results.distilled.items():
        status = "[green]ok[/green]" if d.status == "ok" else f"[red]error[/red] {d.error}"
        sets.add_row(name + (" [dim](control)[/dim]" if d.control else ""), str(d.distiller or d.source or ""),
                     str(d.ipc), str(d.images), "" if d.seconds is None else f"{d.seconds:.1f}", status)
    console.print(sets)
    for p in results.probes:
        head = f"[bold]{p.id}[/bold] [dim]({p.kind}, {p.seconds:.1f} s{', cached' if p.cached else ''})[/dim]"
        if p.status != "ok":
            console.print(f"{head}  [red]error:[/red] {p.error}")
            continue
        matrices, rest = metric_matrices(p.result.metrics)
        console.print(head)
        for m in matrices:
            table = Table()
            table.add_column("set" if "/" not in m.rows[0] else "set/model")
            for c in m.cols:
                table.add_column(c, justify="right")
            for r in m.rows:
                table.add_row(r, *(_fmt(m.cells.get((r, c))) for c in m.cols))
            console.print(table)
        if rest:
            extra = Table(show_header=True)
            extra.add_column("metric")
            extra.add_column("value", justify="right")
            for k, v in list(rest.items())[:40]:
                extra.add_row(k, _fmt(v))
            if len(rest) > 40:
                extra.add_row(f"... {len(rest) - 40} more in report.json", "")
            console.print(extra)
        if p.result.summary:
            console.print(f"  {p.result.summary}")
        for c in p.checks:
            mark = "[green]✓[/green]" if c.passed else "[red]✗[/red]"
            value = _fmt(c.value) if c.value is not None else c.message
            console.print(f"  {mark} {c.metric} {c.op} {c.threshold}  (got {value})")
    for err in results.errors:
        console.print(f"[red]error:[/red] {err}")
    verdict = {0: "[green]all expectations held[/green]", 1: "[red]an expectation failed[/red]",
               3: "[red]a probe or distiller failed[/red]"}[results.exit_code]
    console.print(f"{verdict} · {results.seconds:.1f} s · results in {results.output_dir}")
