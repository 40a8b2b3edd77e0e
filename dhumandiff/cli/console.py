"""Shared rich consoles and the progress bar used by every long-running command."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

console = Console()
err_console = Console(stderr=True)


@contextmanager
def progress_bar(description: str, total: int | None = None) -> Iterator:
    """Yields ``update(done, total=None, **fields)``; draws on stderr so stdout stays scriptable."""
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  TimeRemainingColumn(), TextColumn("{task.fields[info]}"), console=err_console,
                  transient=False) as prog:
        task = prog.add_task(description, total=total, info="")

        def update(done: int, total_: int | None = None, info: str = "") -> None:
            prog.update(task, completed=done, total=total_ if total_ is not None else prog.tasks[0].total, info=info)

        yield update
