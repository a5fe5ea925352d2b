"""``ddprobe plan SPEC``: a dry run listing what a study would compute, what is cached, and an estimate."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from .app import app, fail


@app.command("plan")
def plan_command(
    spec: Path = typer.Argument(..., help="Study spec (TOML)"),
    no_measure: bool = typer.Option(False, "--no-measure", help="Skip timing training steps (no estimate)"),
    as_json: bool = typer.Option(False, "--json", help="Print the plan as JSON"),
    workers: int | None = typer.Option(None, "--workers", min=1,
                                       help="Also estimate with N tasks at once (processes or Ray workers; "
                                            "default: [study] workers)"),
    threads: str | None = typer.Option(None, "--threads", help="time steps with this thread budget (auto or N), "
                                       "as `ddprobe run --threads` would run them"),
) -> None:
    """Dry run: what a study would compute, what is cached, and an estimate of the time it takes here.

    Lists distilled sets (controls included) and probes as cached or to compute, the models and other work that
    plugins describe through plan(), and an estimate from training steps timed on this machine. Trains nothing
    and writes nothing.
    """
    from ..threads import prefer_passive_waits
    from .run import parse_threads

    prefer_passive_waits()  # before torch is imported, as `ddprobe run` does
    wanted = parse_threads(threads)
    from ..errors import DDProbeError, SpecError
    from ..plan import describe, human_range, human_seconds, plan_study
    from ..spec import load_spec
    from ..spec_checks import device_problem

    try:
        parsed = load_spec(spec)
        problem = device_problem(parsed.study.device)
        if problem is not None:
            raise SpecError(problem, file=str(spec))
        plan = plan_study(parsed, measure=not no_measure, threads=wanted, count_startup=True)
    except (SpecError, DDProbeError) as exc:
        raise fail(str(exc), 2) from None
    n = workers or parsed.study.workers
    if as_json:
        typer.echo(json.dumps({**plan.to_dict(), "workers": n, "seconds_with_workers": plan.seconds_with(n)},
                              indent=2, default=str))
        return
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    console = Console(highlight=False)
    console.print(f"[bold]plan[/bold] for study {plan.study!r} on {plan.device} (cache {plan.cache_dir})")
    style = {"cached": "green", "to compute": "yellow", "import": "cyan", "error": "red", "unknown": "red"}
    for section, title in (("distilled", "distilled sets"), ("probe", "probes")):
        table = Table(title=title, title_justify="left")
        for col in ("name", "made by" if section == "distilled" else "kind", "status", "work", "estimate"):
            table.add_column(col, justify="right" if col == "estimate" else "left")
        for e in (e for e in plan.entries if e.section == section):
            work = "\n".join(describe(i) for i in e.items) or e.note
            if e.items and e.note:
                work += f"\n{e.note}"
            estimate = "" if e.status != "to compute" else human_range(e.seconds, e.low, e.high)
            table.add_row(e.name, e.kind, f"[{style.get(e.status, '')}]{e.status}[/]", escape(work), estimate)
        console.print(table)
    for model, steps in plan.throughput.items():
        shown = ", ".join(f"{float(steps[b]) * 1000:.1f} ms at batch {b}" for b in sorted(steps, key=int))
        console.print(f"[dim]measured training step of {model} (median): {shown}[/dim]")
    if plan.threads:
        console.print(f"[dim]timed with {plan.threads['threads']} thread(s): {plan.threads['reason']}[/dim]")
    todo = sum(1 for e in plan.entries if e.status == "to compute")
    line = f"{todo} to compute, {sum(1 for e in plan.entries if e.status == 'cached')} cached; "
    line += f"estimated time: {human_range(plan.seconds, plan.low, plan.high)}"
    if plan.startup:
        line += f" (of which {human_seconds(plan.startup)} starting up, loading the data and drawing figures)"
    if plan.unknown:
        line += f" + unknown for {', '.join(plan.unknown)}"
    console.print(line)
    if n > 1 and plan.seconds > 0:
        console.print(f"with {n} workers (bags of independent trainings spread over them; docs/scaling.md): "
                      f"about {human_seconds(plan.seconds_with(n))}")
