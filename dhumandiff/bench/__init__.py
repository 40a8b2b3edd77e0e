"""bench: ``dhumandiff bench`` — how fast, how big and how hungry each runtime and precision is, side by side.

It sits beside ``checks/``: above both ``export`` (it exports the bundles it measures, and the sd15-scale UNet)
and ``runtimes`` (it runs bundles through the shipped adapters), so it may import both; only the CLI sits above
it. Modules, one job each:

* ``measure`` — timing statistics, resident-memory readings, machine facts (CPU flags, load average);
* ``peaks`` — this machine's measured fp32 / bf16 / int8 matmul peaks (the ceilings a UNet step is held to);
* ``flops`` — FLOPs of each component, counted once on the PyTorch module;
* ``torch_runner`` — the PyTorch modules behind the runtimes' ``GraphRunner`` interface (fp32 or bf16 autocast);
* ``worker`` — one measured variant in its own process (so its peak RSS is its own), JSON in, JSON out;
* ``tiny`` / ``sd15`` — what is measured at each scale; ``report`` — markdown, JSON and the PNG plot;
* ``run`` — the entry point the CLI calls.

Importing this package imports neither torch nor any runtime: a bundle variant's worker process stays
torch-free, so its memory reading is the runtime's alone.
"""

from __future__ import annotations

from typing import Any

_EXPORTS = {
    "run_bench": "dhumandiff.bench.run",
    "BenchSettings": "dhumandiff.bench.run",
    "matmul_peaks": "dhumandiff.bench.peaks",
    "count_flops": "dhumandiff.bench.flops",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'dhumandiff.bench' has no attribute {name!r}")
