"""What ``ddprobe cache`` shows and does: list a cache's entries, verify them, prune bad or unused ones, clear it.

Layout of a cache root: ``<kind>/<key>/`` entry directories sealed by ``done`` (see :mod:`.integrity`),
``distill-checkpoints/<key>.pt`` files with digest sidecars, and ``.tmp-*``/``.del-*`` directories that a write or
a removal in progress (or one that was interrupted) leaves inside a kind's directory.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from . import DRIVER_TOKEN_PREFIX
from .integrity import DONE, SIDECAR_SUFFIX, entry_problem, file_problem, sidecar

CHECKPOINTS = "distill-checkpoints"
LEFTOVER_AGE = 3600.0  # seconds after which an unfinished write is abandoned, not in progress


@dataclass
class Entry:
    kind: str
    key: str
    path: Path
    bytes: int
    last_used: float  # epoch seconds: when it was last read (or written)
    leftover: bool = False  # an unfinished write or removal, not an entry
    problem: str | None = None  # set by :func:`verify`

    @property
    def files(self) -> list[Path]:
        if self.path.is_dir():
            return [self.path]
        return [p for p in (self.path, sidecar(self.path)) if p.exists()]


def _size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    total = 0
    for p in path.rglob("*"):
        try:
            if p.is_file() and not p.is_symlink():
                total += p.stat().st_size
        except OSError:
            pass
    return total


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


def is_cache(root: Path) -> bool:
    """Whether ``root`` looks like a ddprobe cache (every child a kind directory of entries, or a running study's
    token file)."""
    return root.is_dir() and all(_is_kind_dir(p) or _is_token(p) for p in root.iterdir())


def _is_token(path: Path) -> bool:
    """A file a study's driver keeps in its cache while its workers distill sets (:mod:`ddprobe.sets`)."""
    return path.name.startswith(DRIVER_TOKEN_PREFIX) and path.is_file() and not path.is_symlink()


def _is_kind_dir(path: Path) -> bool:
    if not path.is_dir() or path.is_symlink():
        return False
    if path.name == CHECKPOINTS:
        return True
    return all(p.is_dir() and not p.is_symlink() for p in path.iterdir())


def scan(root: Path) -> Iterator[Entry]:
    """Every entry (and leftover) under ``root``, kind by kind, without reading file contents."""
    if not root.is_dir():
        return
    for kind_dir in sorted(p for p in root.iterdir() if _is_kind_dir(p)):
        kind = kind_dir.name
        if kind == CHECKPOINTS:
            for p in sorted(kind_dir.iterdir()):
                if p.name.endswith(SIDECAR_SUFFIX):
                    continue
                leftover = not p.name.endswith(".pt")
                size = _size(p) + (_size(sidecar(p)) if sidecar(p).exists() else 0)
                yield Entry(kind, p.stem, p, size, _mtime(p), leftover)
            continue
        for p in sorted(kind_dir.iterdir()):
            leftover = p.name.startswith((".tmp-", ".del-"))
            used = _mtime(p / DONE) if (p / DONE).exists() else _mtime(p)
            yield Entry(kind, p.name, p, _size(p), used, leftover)


def verify(entry: Entry) -> str | None:
    """Why the entry cannot be trusted (its files hashed against their digests), or ``None``."""
    if entry.leftover:
        return None
    entry.problem = file_problem(entry.path) if entry.kind == CHECKPOINTS else entry_problem(entry.path)
    return entry.problem


def abandoned(entry: Entry, now: float | None = None) -> bool:
    """A leftover old enough that no write is still filling it."""
    return entry.leftover and (now or time.time()) - entry.last_used > LEFTOVER_AGE


def remove(entry: Entry) -> None:
    from . import remove_tree

    if entry.path.is_dir():
        remove_tree(entry.path)
    else:
        for p in entry.files:
            p.unlink(missing_ok=True)


def clear(root: Path) -> tuple[int, list[Path]]:
    """Remove every kind directory under ``root``; returns (bytes freed, paths left because not the cache's)."""
    freed, kept = 0, []
    for p in sorted(root.iterdir()) if root.is_dir() else []:
        if _is_kind_dir(p):
            freed += _size(p)
            shutil.rmtree(p, ignore_errors=True)
        elif _is_token(p):  # a study still running falls back to its workers' own caches
            p.unlink(missing_ok=True)
        else:
            kept.append(p)
    return freed, kept


def human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1024 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"
