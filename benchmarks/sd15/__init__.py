"""The sd15-scale study: DHumanDiff's sd15-size graphs (random weights, 512x512) per variant, one step or one call
each, and a 512x512 image composed from them and measured in one process.

Modules: ``prepare`` (exports and quantised graphs, cached, each step in a worker process), ``measure`` (the
variants, their measurement, the composed end-to-end estimate), ``pipeline`` (one image in one process),
``report`` (markdown and plot), ``run`` (settings and the whole run). ``benchmarks/bench_sd15.py`` is the command.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dhumandiff.bench.jobs import run_worker

#: The folder to put on a worker's import path so that it finds this package under the name it was imported by
#: (``benchmarks.sd15`` from the repository root).
IMPORT_ROOT = str(Path(__file__).resolve().parents[len(__name__.split("."))])


def run_job(job: dict[str, Any], work: Path, name: str, timeout: float | None = None) -> dict[str, Any]:
    """:func:`dhumandiff.bench.jobs.run_worker` with this package importable in the worker (``call`` jobs name
    functions of its modules)."""
    return run_worker(job, work, name, timeout=timeout, pythonpath=(IMPORT_ROOT,))
