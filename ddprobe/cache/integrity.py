"""Digests that let the cache check what it reads: every entry records the size and sha256 of its files.

An entry is a directory ``<root>/<kind>/<key>/`` whose last file written is ``done``: a JSON record
``{"format": 1, "files": {"<relative path>": [size, "<sha256>"]}}`` of every other file in it. A reader trusts the
entry only when ``done`` parses and every listed file is present with that size and digest. Files are hashed once
when the entry is written and again when it is read (sha256 runs at about a gigabyte a second, a few milliseconds
for the models, pool members and distilled sets ddprobe caches), so a truncated, flipped, replaced or half-written
file is found before anything uses it, whatever caused it (a full disk, a crash before the data reached the disk,
an edit by hand).

Single files kept outside an entry (a distillation's checkpoints) carry the same record in a sidecar
``<file>.digest.json``.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

DONE = "done"
FORMAT = 1
SIDECAR_SUFFIX = ".digest.json"
_CHUNK = 1 << 20


def file_digest(path: Path) -> str:
    """The sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def describe(directory: Path) -> dict[str, list]:
    """``{relative path: [size, sha256]}`` for every regular file under ``directory`` except ``done``."""
    out: dict[str, list] = {}
    for path in sorted(directory.rglob("*")):
        if path.is_file() and not path.is_symlink():
            rel = path.relative_to(directory).as_posix()
            if rel != DONE:
                out[rel] = [path.stat().st_size, file_digest(path)]
    return out


def write_done(directory: Path) -> None:
    """Seal an entry: record its files' sizes and digests in ``done`` (written last)."""
    record = {"format": FORMAT, "files": describe(directory)}
    (directory / DONE).write_text(json.dumps(record, sort_keys=True))


def _read_record(path: Path) -> tuple[dict | None, str | None]:
    try:
        text = path.read_text()
        if not text:
            return None, f"unverifiable: its {path.name} is empty (written by an older ddprobe, without digests)"
        record = json.loads(text)
    except FileNotFoundError:
        return None, f"incomplete (no {path.name})"
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        return None, f"unreadable: {path.name} is not a digest record ({type(exc).__name__})"
    files = record.get("files") if isinstance(record, dict) else None
    if not isinstance(files, dict) or record.get("format") != FORMAT or not all(
            isinstance(v, list) and len(v) == 2 for v in files.values()):
        return None, f"unreadable: {path.name} is not a digest record of format {FORMAT}"
    return files, None


def _check_files(base: Path, files: dict[str, list], full: bool) -> str | None:
    for rel, (size, digest) in sorted(files.items()):
        path = base / rel
        try:
            actual = path.stat().st_size
        except OSError:
            return f"incomplete: {rel} is missing"
        if actual != size:
            return f"damaged: {rel} has {actual} bytes, its digest record says {size}"
        if full:
            try:
                actual_digest = file_digest(path)
            except OSError as exc:  # removed or unreadable while being read
                return f"unreadable: {rel} ({type(exc).__name__}: {exc})"
            if actual_digest != digest:
                return f"damaged: {rel} does not match the sha256 recorded when it was written"
    return None


def entry_problem(directory: Path, full: bool = True) -> str | None:
    """Why the entry in ``directory`` cannot be trusted, or ``None`` when it checks out.

    ``full=False`` checks only presence and sizes (a few ``stat`` calls; what ``ddprobe plan`` needs).
    """
    if not directory.is_dir():
        return "missing"
    files, problem = _read_record(directory / DONE)
    if files is None:
        return problem
    return _check_files(directory, files, full)


# -- single files with a sidecar ----------------------------------------------------------------------------------
def sidecar(path: Path) -> Path:
    return path.with_name(path.name + SIDECAR_SUFFIX)


def write_sidecar(path: Path) -> None:
    """Record ``path``'s size and digest beside it (atomically)."""
    record = {"format": FORMAT, "files": {path.name: [path.stat().st_size, file_digest(path)]}}
    side = sidecar(path)
    tmp = side.with_name(f"{side.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(record, sort_keys=True))
    os.replace(tmp, side)


def file_problem(path: Path) -> str | None:
    """Why a single file with a sidecar cannot be trusted, or ``None``."""
    if not path.is_file():
        return "missing"
    files, problem = _read_record(sidecar(path))
    if files is None:
        return problem
    if set(files) != {path.name}:
        return f"unreadable: {sidecar(path).name} describes another file"
    return _check_files(path.parent, files, full=True)
