"""The records passed between the export loop and the per-runtime exporters.

A :class:`GraphJob` is everything an exporter needs to write one graph (module, names, example inputs, axes,
precision); it returns the bundle-relative files it wrote. An :class:`ExportedComponent` is what the manifest
writer needs to describe that graph. Keeping these as plain records lets every exporter stay a pair of small
functions, ``export(job) -> files`` and ``run(root, files, inputs, output_names) -> outputs``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
from torch import nn

_DTYPES = {torch.float32: "float32", torch.float16: "float16", torch.int64: "int64", torch.int32: "int32"}


@dataclass
class GraphJob:
    """One graph to write into ``out_dir``. ``precision`` is the graph's own precision (fp32/fp16)."""

    name: str
    module: nn.Module
    input_names: tuple[str, ...]
    output_names: tuple[str, ...]
    example: Mapping[str, torch.Tensor]
    dynamic_axes: Mapping[str, Mapping[int, str]]
    out_dir: Path
    precision: str = "fp32"
    fp16_op_block_list: tuple[str, ...] = ()

    @property
    def args(self) -> tuple[torch.Tensor, ...]:
        return tuple(self.example[n] for n in self.input_names)


@dataclass
class ExportedComponent:
    """A written graph as the manifest describes it (paths relative to the bundle root, ``/`` separators)."""

    name: str
    file: str
    extra_files: list[str]
    inputs: dict[str, dict[str, Any]]
    outputs: dict[str, dict[str, Any]]
    precision: str
    validation: dict[str, Any] | None = None
    sha256: dict[str, str] = field(default_factory=dict)

    def manifest_entry(self) -> dict[str, Any]:
        return {"file": self.file, "extra_files": list(self.extra_files), "sha256": dict(self.sha256),
                "inputs": self.inputs, "outputs": self.outputs}


def tensor_entry(t: torch.Tensor | np.ndarray, axes: Mapping[int, str] | None = None) -> dict[str, Any]:
    """``{"shape": [...], "dtype": ...}`` with dynamic axes written as their symbolic names."""
    axes = axes or {}
    shape: list[int | str] = [axes.get(i, int(d)) for i, d in enumerate(t.shape)]
    if isinstance(t, torch.Tensor):
        dtype = _DTYPES[t.dtype]
    else:
        dtype = str(np.asarray(t).dtype)
    return {"shape": shape, "dtype": dtype}
