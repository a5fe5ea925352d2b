"""Names that become file names: what is allowed, and joining them under a folder without leaving it.

Study names, probe ids, distilled-set names and model names end up in paths (``runs/<study>/``,
``figures/<probe id>-<figure>.png``, ``tables/<probe id>-<table>.csv``, ``<output>/<set>.png``) and in metric
keys (``<set>/<model>``). They are restricted to a pattern that is a plain file name on every system: no
separator, no ``..``, no leading dot or dash, no control character.
"""

from __future__ import annotations

import re
from pathlib import Path

MAX_LENGTH = 100
SAFE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")
NAME_PATTERN = r"^(?!.*\.\.)[A-Za-z0-9_][A-Za-z0-9_.-]*$"  # the same rule as a JSON Schema pattern
VALID_TEXT = ("letters, digits, '_', '.' and '-' (starting with a letter, digit or '_'), at most "
              f"{MAX_LENGTH} characters")


def name_problem(name: object) -> str | None:
    """Why ``name`` cannot name a study, probe, set or model (``None`` when it can)."""
    if not isinstance(name, str):
        return f"must be a string of {VALID_TEXT} (got {type(name).__name__})"
    if not name:
        return f"must not be empty; use {VALID_TEXT}"
    if len(name) > MAX_LENGTH:
        return f"is {len(name)} characters long; use at most {MAX_LENGTH}"
    if not SAFE_NAME.fullmatch(name) or ".." in name:
        return f"would not be a plain file name; use {VALID_TEXT} (no '..')"
    return None


class UnsafePathError(ValueError):
    """A path made from a name would lie outside the folder it belongs in."""


def inside(folder: Path, name: str) -> Path:
    """``folder / name`` for a single-component ``name``; raises :class:`UnsafePathError` if it would escape."""
    part = Path(name)
    if (not name or "\x00" in name or part.is_absolute() or len(part.parts) != 1
            or part.name in (".", "..") or "\\" in name):
        raise UnsafePathError(f"{name!r} is not a plain file name inside {folder}")
    return folder / name


def file_part(name: str) -> str:
    """``name`` made into a plain file-name part: every character outside letters, digits, ``_ . -`` becomes
    ``_`` and a leading dot is dropped (``"gallery-dm-T-shirt/top"`` -> ``"gallery-dm-T-shirt_top"``)."""
    out = re.sub(r"[^A-Za-z0-9_.-]", "_", str(name)).lstrip(".")
    return out[:MAX_LENGTH] or "_"  # no separator and no leading dot: never "." or "..", never a sub-path
