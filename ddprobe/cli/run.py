"""``ddprobe run`` and ``ddprobe distill``."""

from __future__ import annotations

from pathlib import Path

import typer

from .app import app, fail


def _console():
    from rich.console import Console

    return Console(highlight=False)


RESUME = "interrupted: everything that finished is cached and the partial report is in {out}; " \
         "run the same command again to resume"


def parse_threads(value: str | None) -> int | str | None:
    """``--threads``: ``auto`` or a positive integer (exit 2 otherwise)."""
    if value is None or value == "auto":
        return value
    try:
        threads = int(value)
    except ValueError:
        threads = 0
    if threads < 1:
        raise fail(f"--threads {value}: expected 'auto' or a positive integer", 2)
    return threads


@app.command()
def run(
    spec: Path = typer.Argument(..., metavar="SPEC", help="Study spec (TOML), e.g. specs/study.toml"),
    output: Path | None = typer.Option(None, "--output", "-o", metavar="DIR",
                                       help="Output folder (default runs/<study name>)"),
    only: list[str] | None = typer.Option(None, "--only", metavar="PROBE_ID", help="Run only this probe (repeatable)"),
    overrides: list[str] | None = typer.Option(
        None, "--set", metavar="KEY=VALUE",
        help="Change the spec for this run, e.g. --set train.lr=0.1 --set 'probe.evaluate.seeds=5' (repeatable; "
             "the value is read as TOML, bare words as text)"),
    seed: int | None = typer.Option(None, "--seed", metavar="N", help="Study seed (same as --set study.seed=N)"),
    device: str | None = typer.Option(None, "--device", metavar="DEVICE",
                                      help="auto, cpu, cuda, cuda:N or mps (same as --set study.device=...)"),
    no_cache: bool = typer.Option(False, "--no-cache",
                                  help="Recompute everything earlier runs cached (this run still computes each thing "
                                       "once)"),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress or report on the console, only the result"),
    open_report: bool = typer.Option(False, "--open", help="Open report.html in the web browser when done"),
    executor: str | None = typer.Option(None, "--executor", metavar="NAME",
                                        help="serial, processes or ray (same as --set study.executor=...)"),
    threads: str | None = typer.Option(None, "--threads", metavar="N",
                                       help="CPU threads for all processes together: auto (the cores this process "
                                            "may use) or N; overrides [study] threads"),
) -> None:
    """Run a study: build the distilled sets, run every probe, write reports; exit 1 if an expectation fails.

    Ctrl-C (or SIGTERM) stops within seconds and writes a partial report (exit 130); rerun to resume.
    """
    from ..threads import prefer_passive_waits

    prefer_passive_waits()  # before torch is imported, or it has no effect
    wanted = parse_threads(threads)
    from ..errors import DDProbeError, SpecError
    from ..report.console import print_report, status_line
    from ..spec import load_spec
    from ..study import run_study

    console = _console()
    assignments = list(overrides or [])
    assignments += [f"study.seed={seed}"] if seed is not None else []
    assignments += [f"study.device={device!r}"] if device is not None else []
    assignments += [f"study.executor={executor!r}"] if executor is not None else []
    try:
        parsed = load_spec(spec, overrides=assignments)
        results = run_study(parsed, output, only=only, no_cache=no_cache, console=None if quiet else console,
                            progress=not quiet, threads=wanted)
    except SpecError as exc:
        raise fail(str(exc), 2) from None
    except DDProbeError as exc:
        raise fail(str(exc), 2) from None
    if quiet or results.interrupted:
        console.print(status_line(results), soft_wrap=True)
    else:
        print_report(results, console)
    if results.interrupted:
        typer.echo(RESUME.format(out=results.output_dir), err=True)
    elif open_report:
        open_in_browser(results.output_dir / "report.html", console)
    raise typer.Exit(results.exit_code)


def open_in_browser(path: Path, console) -> bool:
    """Open a report in the default browser (``webbrowser``); say where it is when no browser can be started."""
    import webbrowser

    if not path.exists():
        console.print(f"[yellow]no report to open:[/yellow] {path} does not exist")
        return False
    opened = webbrowser.open(path.resolve().as_uri())
    if not opened:
        console.print(f"[yellow]could not start a web browser;[/yellow] open {path} yourself")
    return opened


@app.command("open")
def open_command(
    target: Path = typer.Argument(Path("runs"), metavar="RUN",
                                  help="A run folder or its report.html (default: the newest run under runs/)"),
) -> None:
    """Open a run's report.html in the web browser."""
    console = _console()
    path = target / "report.html" if target.is_dir() else target
    if target.is_dir() and not path.exists():
        reports = sorted(target.glob("*/report.html"), key=lambda p: p.stat().st_mtime)
        if not reports:
            raise fail(f"no report.html in {target} or its subfolders; run a study first (ddprobe run SPEC)", 2)
        path = reports[-1]
    if not path.exists():
        raise fail(f"{path} does not exist; run a study first (ddprobe run SPEC)", 2)
    console.print(f"opening {path}")
    raise typer.Exit(0 if open_in_browser(path, console) else 1)


@app.command()
def distill(
    spec: Path = typer.Argument(..., metavar="SPEC", help="Study spec (TOML)"),
    output: Path | None = typer.Option(None, "--output", "-o", metavar="DIR",
                                       help="Folder (default runs/<study>/distilled)"),
    no_cache: bool = typer.Option(False, "--no-cache", help="Distill again even when a cached set exists"),
) -> None:
    """Build (or import) the spec's distilled sets and save each in ddprobe's format with a PNG grid."""
    from ..threads import configure, prefer_passive_waits

    prefer_passive_waits()  # before torch is imported, or it has no effect
    from ..data import save_distilled
    from ..errors import DDProbeError, SpecError
    from ..progress import Progress
    from ..report.figures import image_grid
    from ..spec import load_spec
    from ..study import prepare

    console = _console()
    try:
        parsed = load_spec(spec)
        configure(parsed.study.threads)
        out = output or Path("runs") / parsed.study.name / "distilled"
        study = prepare(parsed, out, no_cache=no_cache, console=console, progress=Progress(True, console))
    except (SpecError, DDProbeError) as exc:
        raise fail(str(exc), 2) from None
    except KeyboardInterrupt:
        typer.echo("interrupted: the sets that finished are cached; run the same command again to resume", err=True)
        raise typer.Exit(130) from None
    ctx = study.context
    for name, ds in ctx.distilled.items():
        path = save_distilled(ds, out / name)
        image_grid(ctx.real.to_pixels(ds.images), ds.hard_labels, ds.classes, out / f"{name}.png", title=name)
        console.print(f"[green]saved[/green] {path} and {out / (name + '.png')}")
    raise typer.Exit(3 if study.errors else 0)
