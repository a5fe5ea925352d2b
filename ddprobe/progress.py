"""Progress bars for long loops (rich), silent when disabled."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any


class Task:
    def __init__(self, progress: Any = None, task_id: Any = None):
        self._progress, self._id = progress, task_id

    def advance(self, n: float = 1) -> None:
        if self._progress is not None:
            self._progress.advance(self._id, n)

    def update(self, **fields: Any) -> None:
        """Change ``description`` or ``total``, or set extra fields such as ``status``."""
        if self._progress is not None:
            self._progress.update(self._id, **fields)


class Progress:
    """``with ctx.progress.task("training pool", total=30) as t: ... t.advance()``."""

    def __init__(self, enabled: bool = True, console: Any = None):
        self.enabled = enabled
        self.console = console
        self._rich: Any = None
        self._depth = 0

    @contextlib.contextmanager
    def task(self, description: str, total: float | None = None) -> Iterator[Task]:
        if not self.enabled:
            yield Task()
            return
        from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn
        from rich.progress import Progress as RichProgress

        if self._rich is None:
            self._rich = RichProgress(
                TextColumn("[progress.description]{task.description}"), BarColumn(), MofNCompleteColumn(),
                TimeElapsedColumn(), TextColumn("{task.fields[status]}"), console=self.console, transient=True,
            )
            self._rich.start()
        self._depth += 1
        task_id = self._rich.add_task(description, total=total, status="")
        try:
            yield Task(self._rich, task_id)
        finally:
            self._rich.remove_task(task_id)
            self._depth -= 1
            if self._depth == 0:
                self._rich.stop()
                self._rich = None
