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
    """Yields ``update(done, total=None, **fields)``; draws on stderr so stdout stays scriptable.

    The bar starts with the first ``update``, and is erased when the block raises: a command refused for a
    user mistake before any work began leaves only its one-line error on stderr, not an empty bar.
    """
    state: dict = {}

    def update(done: int, total_: int | None = None, info: str = "") -> None:
        if "prog" not in state:
            prog = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                            TimeElapsedColumn(), TimeRemainingColumn(), TextColumn("{task.fields[info]}"),
                            console=err_console, transient=False)
            prog.start()
            state["prog"], state["task"] = prog, prog.add_task(description, total=total, info="")
        prog, task = state["prog"], state["task"]
        prog.update(task, completed=done, total=total_ if total_ is not None else prog.tasks[0].total, info=info)

    try:
        yield update
    except BaseException:
        if "prog" in state:
            state["prog"].live.transient = True
        raise
    finally:
        if "prog" in state:
            state["prog"].stop()
