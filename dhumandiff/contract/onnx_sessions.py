"""One onnxruntime setting shared by the export-time check and the runtimes: weights kept in their mapped file.

At ``ORT_ENABLE_ALL`` onnxruntime's CPU provider makes an fp32 copy of every fp16 weight when a session loads (most
CPUs have no fp16 kernels): the fp16 SDXL UNet's session holds 18 GiB. At ``ORT_ENABLE_EXTENDED`` without the memory
arena the weights stay in the memory-mapped ``.onnx.data`` file and each is cast as its layer runs, the cast freed
after it: 12 GiB at peak, but each UNet step ~2.6x slower (BENCHMARKS.md, "Full-scale SDXL"). The two levels round
differently, so it is used only for graphs whose weights lie in an external file (the ones it helps).
"""

from __future__ import annotations

from typing import Any


def keep_weights_mapped(opts: Any, ort: Any) -> None:
    """Set ``opts`` (an ``ort.SessionOptions``) so a graph's external weights stay in their mapped file."""
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    opts.enable_cpu_mem_arena = False
