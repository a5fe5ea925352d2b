"""``ddprobe cache``: see what the cache holds, verify it, prune bad or unused entries, clear it."""

from __future__ import annotations

import time
from pathlib import Path

import typer

from .app import app, fail

cache_app = typer.Typer(
    help="Inspect and manage the artifact cache (trained models, distilled sets, probe results).",
    no_args_is_help=True,
)
app.add_typer(cache_app, name="cache")

_DIR = typer.Option(None, "--cache-dir", "-d",
                    help="Cache folder (default: $DDPROBE_CACHE_DIR, else ~/.cache/ddprobe)")
_SPEC = typer.Option(None, "--spec", "-s", help="Use this study spec's [study] cache_dir")


def _root(cache_dir: Path | None, spec: Path | None) -> Path:
    from ..cache import default_cache_dir

    if cache_dir is not None and spec is not None:
        raise fail("give --cache-dir or --spec, not both")
    if spec is not None:
        from ..errors import SpecError
        from ..spec import load_spec

        try:
            parsed = load_spec(spec)
        except SpecError as exc:
            raise fail(str(exc)) from None
        if parsed.study.cache_dir:
            return parsed.base_dir / parsed.study.cache_dir
        return default_cache_dir()
    return Path(cache_dir) if cache_dir is not None else default_cache_dir()


def _when(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(t)) if t else "-"


def _plural(n: int, word: str, many: str | None = None) -> str:
    return f"{n} {word if n == 1 else (many or word + 's')}"


def _check_root(root: Path) -> None:
    if root.exists() and not root.is_dir():
        raise fail(f"{root}: not a folder; --cache-dir must name the cache folder")


@cache_app.command("ls")
def ls(
    cache_dir: Path | None = _DIR,
    spec: Path | None = _SPEC,
    entries: bool = typer.Option(False, "--entries", "-e", help="List every entry, not only each kind's totals"),
) -> None:
    """Entries per kind, their size on disk and when they were last used."""
    from ..cache.scan import human, scan

    root = _root(cache_dir, spec)
    _check_root(root)
    found = list(scan(root))
    kinds: dict[str, list] = {}
    for e in found:
        kinds.setdefault(e.kind, []).append(e)
    total = sum(e.bytes for e in found)
    typer.echo(f"cache {root}: {_plural(sum(not e.leftover for e in found), 'entry', 'entries')}, "
               f"{human(total)}")
    if not found:
        return
    typer.echo(f"{'kind':<24} {'entries':>8} {'size':>10}  last used")
    for kind, items in kinds.items():
        real = [e for e in items if not e.leftover]
        typer.echo(f"{kind:<24} {len(real):>8} {human(sum(e.bytes for e in items)):>10}  "
                   f"{_when(max(e.last_used for e in items))}")
    leftovers = [e for e in found if e.leftover]
    if leftovers:
        typer.echo(f"({_plural(len(leftovers), 'unfinished write')} among them: in progress, or left by an "
                   f"interrupted run; `ddprobe cache prune` removes those older than an hour)")
    if entries:
        typer.echo("")
        for e in found:
            tag = "  (unfinished)" if e.leftover else ""
            typer.echo(f"{e.kind}/{e.key}  {human(e.bytes)}  {_when(e.last_used)}{tag}")


@cache_app.command("verify")
def verify(cache_dir: Path | None = _DIR, spec: Path | None = _SPEC) -> None:
    """Check every entry's files against the digests recorded when it was written; exit 1 if any is bad."""
    from ..cache.scan import scan
    from ..cache.scan import verify as check

    root = _root(cache_dir, spec)
    _check_root(root)
    checked = bad = 0
    for e in scan(root):
        if e.leftover:
            continue
        checked += 1
        problem = check(e)
        if problem:
            bad += 1
            typer.echo(f"bad: {e.kind}/{e.key} ({e.path}) is {problem}")
    typer.echo(f"{_plural(checked, 'entry', 'entries')} checked in {root}: "
               + (f"{bad} bad (a run recomputes them; `ddprobe cache prune` removes them)" if bad else "all good"))
    raise typer.Exit(1 if bad else 0)


@cache_app.command("prune")
def prune(
    older_than: float | None = typer.Option(None, "--older-than", min=0,
                                            help="Also remove entries not used for this many days"),
    dry_run: bool = typer.Option(False, "--dry-run", "-n", help="Only say what would be removed"),
    cache_dir: Path | None = _DIR,
    spec: Path | None = _SPEC,
) -> None:
    """Remove bad entries (see verify), abandoned unfinished writes, and with --older-than unused entries."""
    from ..cache.scan import abandoned, human, remove, scan
    from ..cache.scan import verify as check

    root = _root(cache_dir, spec)
    _check_root(root)
    now = time.time()
    removed, freed = 0, 0
    for e in scan(root):
        if e.leftover:
            why = "an abandoned unfinished write" if abandoned(e, now) else None
        elif older_than is not None and now - e.last_used > older_than * 86400:
            why = f"unused since {_when(e.last_used)}"
        else:
            problem = check(e)
            why = f"bad: {problem}" if problem else None
        if why is None:
            continue
        removed += 1
        freed += e.bytes
        typer.echo(f"{'would remove' if dry_run else 'removed'} {e.kind}/{e.key} ({human(e.bytes)}): {why}")
        if not dry_run:
            remove(e)
    verb = "would free" if dry_run else "freed"
    typer.echo(f"{_plural(removed, 'entry', 'entries')} {'to remove' if dry_run else 'removed'}, "
               f"{verb} {human(freed)}")


@cache_app.command("clear")
def clear(
    yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask for confirmation"),
    cache_dir: Path | None = _DIR,
    spec: Path | None = _SPEC,
) -> None:
    """Remove everything in the cache (asks first unless --yes). Runs then recompute what they need."""
    from ..cache.scan import clear as wipe
    from ..cache.scan import human, scan

    root = _root(cache_dir, spec)
    _check_root(root)
    found = [e for e in scan(root)]
    if not found:
        typer.echo(f"cache {root} is empty")
        return
    size = human(sum(e.bytes for e in found))
    if not yes and not typer.confirm(f"remove {_plural(len(found), 'entry', 'entries')} "
                                     f"({size}) from {root}?", default=False):
        typer.echo("nothing removed")
        raise typer.Exit(1)
    freed, kept = wipe(root)
    typer.echo(f"cleared {root}: freed {human(freed)}")
    for p in kept:
        typer.echo(f"left {p}: not a cache folder ddprobe wrote")
