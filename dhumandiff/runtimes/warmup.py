"""Warm-up: run every graph of a bundle once before the first guest, so the first portrait costs what the next do.

Loading a graph is only part of a cold start: each runtime also allocates its buffers, selects kernels and (OpenVINO)
finishes packing weights on a graph's *first* call. A kiosk that runs each graph once on stand-in inputs at start-up
pays that while nobody waits. The inputs have each graph's declared shapes (``bundle.json``); their values only
need to be finite (small noise: an all-zero face would normalise to NaN in a recogniser and trip the NaN gate).
Graphs with a named dynamic axis other than a batch axis are skipped: their first real call decides the shapes.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from dhumandiff.contract.bundle import Manifest, TensorSpec

#: Dynamic axis names taken as 1 when warming up (any other named axis skips that graph).
_BATCH_AXES = ("batch", "batch_size", "n", "B")


def stand_in(spec: TensorSpec, rng: np.random.Generator) -> np.ndarray | None:
    """A finite input of ``spec``'s shape and dtype, or None when its shape is not known before a real call."""
    shape = []
    for dim in spec.shape:
        if isinstance(dim, str):
            if dim not in _BATCH_AXES:
                return None
            dim = 1
        shape.append(int(dim))
    dtype = np.dtype(spec.dtype)
    if dtype.kind in "iub":
        return np.zeros(shape, dtype=dtype)
    return (rng.standard_normal(shape) * 0.1).astype(dtype)


def warm_up(manifest: Manifest, runner: Any) -> dict[str, float]:
    """Load and run each graph once; returns seconds per graph warmed (skipped graphs are absent)."""
    rng = np.random.default_rng(0)
    seconds: dict[str, float] = {}
    for name, comp in manifest.components.items():
        inputs = {key: stand_in(spec, rng) for key, spec in comp.inputs.items()}
        if any(v is None for v in inputs.values()):
            continue
        t0 = time.perf_counter()
        runner.run(name, inputs)
        seconds[name] = time.perf_counter() - t0
    return seconds
