"""Backend adapters, built for a bundle from the runtime registry (:mod:`dhumandiff.contract.registry`).

Importing this package imports no backend: each adapter module imports onnxruntime / openvino / coremltools /
torch inside its functions, so ``dhumandiff doctor`` and a runtime-only install stay light.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from dhumandiff.contract.registry import RUNTIME_REGISTRY
from dhumandiff.errors import RuntimeUnavailableError
from dhumandiff.runtimes.adapters.base import BaseRunner, GraphRunner, check_finite

__all__ = ["BaseRunner", "GraphRunner", "RuntimeInfo", "available_runtimes", "check_finite", "make_runner"]

@dataclass(frozen=True)
class RuntimeInfo:
    """One runtime as ``dhumandiff doctor`` reports it."""

    name: str
    installed: bool
    devices: list[str] = field(default_factory=list)
    providers: list[str] = field(default_factory=list)
    version: str | None = None


def make_runner(runtime: str, components: Mapping[str, Any], root: str | Path, device: str = "cpu",
                precision: str = "fp32", num_threads: int | None = None) -> GraphRunner:
    """The adapter for ``runtime`` over a bundle's components (graphs load lazily, on first run)."""
    entry = RUNTIME_REGISTRY.get(runtime)
    if entry is None:
        raise RuntimeUnavailableError(f"unknown runtime {runtime!r}; choose one of {', '.join(RUNTIME_REGISTRY)}")
    runner_class = getattr(importlib.import_module(entry.module), entry.class_name)
    return runner_class(components, root, device=device, precision=precision, num_threads=num_threads)


def available_runtimes(probe_torch: bool = True) -> list[RuntimeInfo]:
    """Every runtime, whether it is installed here, and the devices it can use.

    ``probe_torch=False`` reports TorchScript from package metadata only (importing torch takes seconds).
    """
    infos = []
    for name, entry in RUNTIME_REGISTRY.items():
        d = importlib.import_module(entry.module).describe(probe_torch)
        infos.append(RuntimeInfo(name, d["installed"], list(d["devices"]), list(d["providers"]), d["version"]))
    return infos
