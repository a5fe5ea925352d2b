"""``ddprobe validate``, ``schema``, ``list`` and ``plugins``."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from .app import app, fail

KIND_PLURALS = {"datasets": "dataset", "models": "model", "distillers": "distiller", "probes": "probe",
                "importers": "importer", "reporters": "reporter", "influence-backends": "influence_backend"}


@app.command()
def validate(spec: Path = typer.Argument(..., metavar="SPEC", help="Study spec (TOML)")) -> None:
    """Check a spec without running anything; exit 2 with every problem listed when it is invalid.

    Checks everything that needs no data and no training: each key and each plugin's options with their
    ranges, names that become files, cross-references (sets, models, expectation metrics the study's probes can
    produce), and this machine (the device exists, imported files exist).
    """
    from ..errors import DDProbeError
    from ..spec import load_spec
    from ..spec_checks import check_environment

    try:
        parsed = load_spec(spec)
        check_environment(parsed)
    except DDProbeError as exc:
        raise fail(str(exc), 2) from None
    check = getattr(parsed.data.plugin, "check", None)  # optional dataset extension: is the data there?
    problems = check(parsed.data.options, parsed.base_dir) if check is not None else []
    if problems:
        raise fail("\n".join(f"{spec}: [data] {p}" for p in problems), 2)
    from ..report.numbers import plural

    typer.echo(f"{spec}: ok ({plural(len(parsed.distilled), 'distilled set')}, {plural(len(parsed.models), 'model')}, "
               f"{plural(len(parsed.probes), 'probe')})")


@app.command()
def schema() -> None:
    """Print the JSON Schema of study specs (for editor validation of TOML)."""
    from ..spec import json_schema

    typer.echo(json.dumps(json_schema(), indent=2))


@app.command("list")
def list_(
    kind: str = typer.Argument(None, metavar="KIND",
                               help="datasets, models, distillers, probes, importers, reporters or "
                                    "influence-backends"),
) -> None:
    """List what is registered (built-ins and plugins), with one-line descriptions."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    from .. import registry
    from ..errors import suggest

    kinds = list(KIND_PLURALS)
    if kind is not None and kind not in KIND_PLURALS:
        raise fail(f"unknown kind {kind!r}; {suggest(kind, kinds)}", 2)
    console = Console(highlight=False)
    for plural in [kind] if kind else kinds:
        table = Table(title=plural, title_justify="left", show_header=False, box=None, padding=(0, 2))
        for name, obj in sorted(registry.get_all(KIND_PLURALS[plural]).items()):
            owner = registry.owner_of(KIND_PLURALS[plural], name)
            origin = "" if owner.startswith("ddprobe.builtin") else f"[dim]({escape(owner)})[/dim]"
            table.add_row(f"[bold]{escape(name)}[/bold]", escape(obj.description), origin)
        console.print(table)


@app.command()
def plugins(
    all_: bool = typer.Option(False, "--all", help="Include ddprobe's built-in default plugins"),
    as_json: bool = typer.Option(False, "--json", help="Print JSON (name, distribution, version, hooks)"),
) -> None:
    """Show installed plugins: name, distribution and version, and the hooks they implement."""
    from ..plugins import get_plugins

    found = get_plugins(include_builtin=all_)
    if as_json:
        typer.echo(json.dumps(found, indent=2))
        return
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    console = Console(highlight=False)
    if not found:
        console.print("no plugins installed" + ("" if all_ else " (--all also lists ddprobe's built-in ones)")
                      + "; see docs/plugins/writing.md to write one")
        return
    table = Table(title="plugins", title_justify="left")
    for col in ("name", "distribution", "version", "hooks"):
        table.add_column(col)
    for p in found:
        table.add_row(escape(p["name"]), escape(str(p.get("distribution") or "")), escape(str(p.get("version") or "")),
                      escape(", ".join(p.get("hooks", []))))
    console.print(table)
