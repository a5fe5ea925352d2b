"""Exceptions that ddprobe turns into clear messages and exit codes."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class DDProbeError(Exception):
    """Base class for errors that are reported to the user without a traceback."""


class SpecError(DDProbeError):
    """The study spec or the command line is invalid (exit code 2).

    Each problem names the file, the key path and what would be valid.
    """

    def __init__(self, problems: list[str] | str, file: str | None = None):
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        self.file = file
        prefix = f"{file}: " if file else ""
        super().__init__("\n".join(prefix + p for p in self.problems))


class DataMismatchError(DDProbeError):
    """A distilled set does not fit the real data it is compared with."""


class PluginError(DDProbeError):
    """A plugin registered something invalid, or two plugins registered the same name."""


def suggest(name: str, valid: Iterable[str]) -> str:
    """A 'did you mean' hint listing the closest valid names, or all of them when none is close."""
    valid = sorted(set(valid))
    close = difflib.get_close_matches(name, valid, n=3, cutoff=0.5)
    if close:
        return "did you mean " + " or ".join(repr(c) for c in close) + "?"
    if not valid:
        return "nothing is registered"
    return "valid: " + ", ".join(repr(v) for v in valid)
