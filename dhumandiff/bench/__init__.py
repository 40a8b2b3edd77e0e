"""bench: ``dhumandiff bench`` — how fast, how big and how hungry each runtime and precision is, side by side.

It sits beside ``checks/``: above both ``export`` (it exports the bundles it measures) and ``runtimes`` (it runs
bundles through the shipped adapters), so it may import both; only the CLI sits above it. Modules, one job each:

* ``measure`` — timing statistics, resident-memory readings, machine facts (CPU flags, load average);
* ``peaks`` — this machine's measured fp32 / bf16 / int8 matmul peaks (the ceilings a UNet step is held to);
* ``flops`` — FLOPs of each component, counted once on the PyTorch module;
* ``torch_runner`` — the PyTorch modules behind the runtimes' ``GraphRunner`` interface (fp32 or bf16 autocast);
* ``worker`` / ``jobs`` — one measured variant in its own process (so its peak RSS is its own), JSON in, JSON out;
* ``tiny`` — the variants of a model and its bundles; ``report`` — markdown, JSON and the PNG plot;
* ``run`` — the frame of a measured run, and the entry point the CLI calls.

Larger, machine-specific studies (the repository's ``benchmarks/``) are built from these public pieces.

Importing this package imports neither torch nor any runtime: a bundle variant's worker process stays
torch-free, so its memory reading is the runtime's alone.
"""

from __future__ import annotations

from ..utils.lazy import lazy_exports

__getattr__, __all__ = lazy_exports(__name__, {
    "run_bench": "dhumandiff.bench.run",
    "BenchSettings": "dhumandiff.bench.run",
    "matmul_peaks": "dhumandiff.bench.peaks",
    "count_flops": "dhumandiff.bench.flops",
})
