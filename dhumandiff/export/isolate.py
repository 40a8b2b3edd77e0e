"""Large graphs are converted, checked and quantised in a child process, so the converters' memory goes back.

Measured on the full-size SDXL UNet (BENCHMARKS.md, "Full-scale SDXL conversion and export"):
``openvino.convert_model`` + ``save_model`` leave ~7 GiB of anonymous memory in the process that nothing gives
back (``del``, ``gc.collect()``, ``malloc_trim``), and TorchScript's ``torch.onnx.export`` holds a copy of every
folded weight (10 GB). One process doing every graph of a bundle, then compiling each to check it, needs ~40 GB;
the same work with each large graph's steps in a process of their own fits 24 GB.

A child is started with the *spawn* method (a forked child of a process whose torch threads already ran can
deadlock in OpenMP) and rebuilds what it needs from what is on disk:

* the graph export reloads the model (``load_model(source)``, the folder or embedded name the export was given;
  its safetensors are memory-mapped, so the page cache the parent already holds serves both) and rebuilds the
  component's wrapper and seeded example inputs exactly as the parent does (``graph_job``). The parent then
  checks the written graph against *its own* torch reference: a child that rebuilt anything differently fails
  that gate, it cannot slip into a bundle.
* the check (``run``) and the OpenVINO quantiser need only files and NumPy arrays.

Which graphs: ``$DHUMANDIFF_EXPORT_ISOLATE`` = ``auto`` (default: graphs with more than :data:`ISOLATE_BYTES` of
weights, i.e. the sd15/xl UNets and xl's big encoders), ``always`` (every graph: what the tests use on the tiny
model) or ``never``. A model that was not loaded from a source (``export_bundle(..., source_model=None)``) is
always exported in-process.
"""

from __future__ import annotations

import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import torch

from ..errors import DHumanDiffError

ENV = "DHUMANDIFF_EXPORT_ISOLATE"
MODES = ("auto", "always", "never")
#: Graphs with more weight bytes than this go to a child under ``auto`` (the xl text encoder 2 holds 2.8 GB,
#: the sd15 UNet 3.4 GB, the xl UNet 10.3 GB; the tiny model's whole bundle a few MB).
ISOLATE_BYTES = 2 * 1024 ** 3


def mode() -> str:
    value = os.environ.get(ENV, "auto").strip().lower() or "auto"
    if value not in MODES:
        raise DHumanDiffError(f"${ENV}={value!r}; choose one of {', '.join(MODES)}")
    return value


def weight_bytes(module: torch.nn.Module) -> int:
    """Bytes of the module's parameters and buffers (a tensor shared by two modules counted once)."""
    seen: dict[tuple[int, int], int] = {}
    for t in [*module.parameters(), *module.buffers()]:
        seen[(t.untyped_storage().data_ptr(), t.untyped_storage().nbytes())] = t.untyped_storage().nbytes()
    return sum(seen.values())


def wanted(nbytes: int, can: bool = True) -> bool:
    """Whether a graph of ``nbytes`` of weights is handled in a child (``can``: the caller is able to)."""
    m = mode()
    return can and m != "never" and (m == "always" or nbytes > ISOLATE_BYTES)


def _init_child(threads: int) -> None:
    torch.set_num_threads(threads)


def call(fn: Callable[..., Any], *args: Any, what: str = "", **kwargs: Any) -> Any:
    """``fn(*args, **kwargs)`` in a fresh spawned process (torch's thread budget passed on); its result, or the
    exception it raised. A child killed from outside (the kernel's OOM killer) is a :class:`DHumanDiffError`."""
    ctx = multiprocessing.get_context("spawn")
    try:
        with ProcessPoolExecutor(max_workers=1, mp_context=ctx, initializer=_init_child,
                                 initargs=(torch.get_num_threads(),)) as pool:
            return pool.submit(fn, *args, **kwargs).result()
    except BrokenProcessPool:
        raise DHumanDiffError(f"the child process {what or getattr(fn, '__name__', 'of the export')} died before it "
                              f"finished (killed for memory?); free memory or run on a larger machine, then re-run "
                              f"the same command") from None


# ------------------------------------------------------------------------------------------- graph export


@dataclass(frozen=True)
class GraphRecipe:
    """How a child rebuilds the parent's :class:`~.artifacts.GraphJob` from disk (all plain, picklable data)."""

    source: str
    token_merging: Mapping[str, Any] | None
    component: str
    runtime: str
    precision: str
    dynamic: bool
    seed: int
    out_dir: str


def export_graph(recipe: GraphRecipe) -> list[str]:
    """(In the child.) Load the model, rebuild the component's job and write its graph; returns the files."""
    from pathlib import Path

    from ..model.generate import load_model
    from .bundle import ExportOptions, exporter, graph_job
    from .specs import get_spec

    model = load_model(recipe.source)
    if recipe.token_merging:
        model.set_token_merging(recipe.token_merging["ratio"], recipe.token_merging.get("max_downsample", 1))
    spec = get_spec(recipe.component, model)
    options = ExportOptions(recipe.runtime, recipe.precision, recipe.dynamic, True, recipe.seed)
    job = graph_job(spec, model, Path(recipe.out_dir), options)
    with torch.no_grad():
        return exporter(recipe.runtime).export(job)


def run_graph(runtime: str, root: str, files: list[str], inputs: Mapping[str, Any],
              outputs: tuple[str, ...]) -> dict[str, Any]:
    """(In the child.) The runtime exporter's own ``run`` on NumPy inputs."""
    from pathlib import Path

    from .bundle import exporter

    return exporter(runtime).run(Path(root), files, inputs, outputs)
