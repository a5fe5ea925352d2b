"""``ddprobe run`` and ``ddprobe distill``."""

from __future__ import annotations

from pathlib import Path

import typer

from .app import app, fail


def _console():
    from rich.console import Console

    return Console(highlight=False)


@app.command()
def run(
    spec: Path = typer.Argument(..., help="Study spec (TOML), e.g. specs/study.toml"),
    output: Path | None = typer.Option(None, "--output", "-o", help="Output folder (default runs/<study name>)"),
    only: list[str] | None = typer.Option(None, "--only", help="Run only this probe id (repeatable)"),
    no_cache: bool = typer.Option(False, "--no-cache", help="Recompute everything instead of reusing the cache"),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars or report on the console"),
) -> None:
    """Run a study: build the distilled sets, run every probe, write reports; exit 1 if an expectation fails."""
    from ..errors import DDProbeError, SpecError
    from ..report.console import print_report
    from ..spec import load_spec
    from ..study import run_study

    console = _console()
    try:
        parsed = load_spec(spec)
        results = run_study(parsed, output, only=only, no_cache=no_cache, console=None if quiet else console,
                            progress=not quiet)
    except SpecError as exc:
        raise fail(str(exc), 2) from None
    except DDProbeError as exc:
        raise fail(str(exc), 2) from None
    if not quiet:
        print_report(results, console)
    raise typer.Exit(results.exit_code)


@app.command()
def distill(
    spec: Path = typer.Argument(..., help="Study spec (TOML)"),
    output: Path | None = typer.Option(None, "--output", "-o", help="Folder (default runs/<study>/distilled)"),
    no_cache: bool = typer.Option(False, "--no-cache", help="Distill again even when a cached set exists"),
) -> None:
    """Build (or import) the spec's distilled sets and save each in ddprobe's format with a PNG grid."""
    from ..data import save_distilled
    from ..errors import DDProbeError, SpecError
    from ..progress import Progress
    from ..report.figures import image_grid
    from ..spec import load_spec
    from ..study import prepare

    console = _console()
    try:
        parsed = load_spec(spec)
        out = output or Path("runs") / parsed.study.name / "distilled"
        study = prepare(parsed, out, no_cache=no_cache, console=console, progress=Progress(True, console))
    except (SpecError, DDProbeError) as exc:
        raise fail(str(exc), 2) from None
    ctx = study.context
    for name, ds in ctx.distilled.items():
        path = save_distilled(ds, out / name)
        image_grid(ctx.real.to_pixels(ds.images), ds.hard_labels, ds.classes, out / f"{name}.png", title=name)
        console.print(f"[green]saved[/green] {path} and {out / (name + '.png')}")
    raise typer.Exit(3 if study.errors else 0)
