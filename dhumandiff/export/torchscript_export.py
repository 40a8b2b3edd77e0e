"""TorchScript graphs: ``torch.jit.trace`` of each wrapper, saved as ``{name}.pt``.

The torch runtime adapter loads these with ``torch.jit.load`` and calls them positionally in the manifest's
input order, so a device with PyTorch but without this package's model code (or diffusers) can still run a
bundle. fp16 graphs compute in half precision behind float32 inputs/outputs (:class:`CastWrapper`), the same
interface as every other runtime's fp16 bundle.

Tracing bakes the trace-time device into a few constants (``torch.arange(..., device=...)``), so a bundle traced
on CPU is meant for CPU; ``map_location`` moves the weights, not those constants.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Mapping

import numpy as np
import torch

from .artifacts import GraphJob
from .wrappers import CastWrapper


def export(job: GraphJob) -> list[str]:
    """Write ``{name}.pt`` into ``job.out_dir``; returns the file name."""
    if job.precision == "fp32":
        module = job.module
    elif job.precision == "fp16":
        module = CastWrapper(job.module, torch.float16)
    else:
        raise ValueError(f"the TorchScript exporter writes fp32 or fp16 graphs, not {job.precision!r}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings about python-int shapes are expected here
        traced = torch.jit.trace(module.eval(), job.args, check_trace=False)
    path = job.out_dir / f"{job.name}.pt"
    torch.jit.save(traced, str(path))
    return [path.name]


def run(root: Path, files: list[str], inputs: Mapping[str, np.ndarray],
        output_names: tuple[str, ...]) -> dict[str, np.ndarray]:
    """Load the saved graph (not the in-memory trace: the file is what ships) and run it on CPU."""
    module = torch.jit.load(str(root / files[0]), map_location="cpu").eval()
    with torch.inference_mode():
        out = module(*(torch.from_numpy(np.ascontiguousarray(a)) for a in inputs.values()))
    values = out if isinstance(out, (tuple, list)) else (out,)
    return {name: v.float().numpy() for name, v in zip(output_names, values)}
