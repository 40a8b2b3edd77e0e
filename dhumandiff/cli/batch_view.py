"""The terminal side of ``--batch`` (``dhumandiff export <runtime> --batch``, ``dhumandiff convert official --batch``):
two progress bars (models, and the current model's components) on stderr, then a summary table on stdout, then a
non-zero exit when anything failed. The batch logic itself is :mod:`dhumandiff.export.batch`.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from .console import console, err_console


@contextmanager
def _bars(total: int) -> Iterator[tuple[Callable, Callable]]:
    """``(on_item, on_component)`` callbacks driving a models bar and a components bar."""
    with Progress(TextColumn("[bold]{task.description:<10}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  TextColumn("{task.fields[info]}"), console=err_console, transient=False) as prog:
        models = prog.add_task("models", total=total, info="")
        parts = prog.add_task("components", total=None, info="")

        def on_item(index: int, n: int, item: Any) -> None:
            prog.update(models, completed=index, info=item.name)
            prog.reset(parts, total=None, info="")

        def on_component(done: int, total_: int, info: str = "") -> None:
            prog.update(parts, completed=done, total=total_, info=info)

        yield on_item, on_component
        prog.update(models, completed=total, info="done")
        prog.update(parts, visible=False)


def _size(n: int | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"


def summary_table(report, title: str) -> Table:
    """One row per item: model, status, seconds, size, and the one-line error of a failure."""
    table = Table(title=title)
    for col, kw in (("model", {}), ("status", {}), ("seconds", {"justify": "right"}),
                    ("size", {"justify": "right"}), ("error", {"overflow": "fold"})):
        table.add_column(col, **kw)
    colour = {"converted": "green", "skipped": "cyan", "failed": "red"}
    for r in report.results:
        table.add_row(r.name, f"[{colour[r.status]}]{r.status}[/]", f"{r.seconds:.1f}", _size(r.size_bytes),
                      r.error or "")
    return table


def run_cli_batch(items: Sequence, job: Callable, *, kind: str, options: Mapping[str, Any], overwrite: bool,
                  title: str) -> None:
    """Run the batch with bars, print the table and a totals line, raise BatchError if anything failed."""
    from ..export.batch import run_batch

    with _bars(len(items)) as (on_item, on_component):
        report = run_batch(items, job, kind=kind, options=options, overwrite=overwrite, on_item=on_item,
                           progress=on_component)
    console.print(summary_table(report, title))
    console.print(f"{report.count('converted')} converted, {report.count('skipped')} skipped, "
                  f"{report.count('failed')} failed")
    report.raise_for_failures()


def batch_items(sources: Sequence[Path], out_root: Path, extra: Callable[[Path], tuple[Path, ...]] | None = None):
    """One item per source folder, written to ``out_root/<source name>``."""
    from ..export.batch import BatchItem

    return [BatchItem(p.name, p, out_root / p.name, extra(p) if extra else ()) for p in sources]
