"""The ``ddprobe`` command line (Typer). Heavy modules are imported inside commands, never at import time."""

from __future__ import annotations

from .app import app, main

__all__ = ["app", "main"]
