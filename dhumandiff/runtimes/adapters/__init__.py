"""Backend adapters and the registry that picks one for a bundle.

Importing this package imports no backend: each adapter module imports onnxruntime / openvino / coremltools /
torch inside its functions, so ``dhumandiff doctor`` and a runtime-only install stay light.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from dhumandiff.errors import RuntimeUnavailableError
from dhumandiff.runtimes.adapters.base import BaseRunner, GraphRunner, check_finite

__all__ = ["BaseRunner", "GraphRunner", "RuntimeInfo", "available_runtimes", "check_finite", "make_runner"]

_MODULES = {
    "onnx": "dhumandiff.runtimes.adapters.onnx",
    "openvino": "dhumandiff.runtimes.adapters.openvino",
    "coreml": "dhumandiff.runtimes.adapters.coreml",
    "torchscript": "dhumandiff.runtimes.adapters.torchscript",
}


@dataclass(frozen=True)
class RuntimeInfo:
    """One runtime as ``dhumandiff doctor`` reports it."""

    name: str
    installed: bool
    devices: list[str] = field(default_factory=list)
    providers: list[str] = field(default_factory=list)
    version: str | None = None


def make_runner(
    runtime: str,
    components: Mapping[str, Any],
    root: str | Path,
    device: str = "cpu",
    precision: str = "fp32",
    num_threads: int | None = None,
) -> GraphRunner:
    """The adapter for ``runtime`` over a bundle's components (graphs load lazily, on first run)."""
    if runtime not in _MODULES:
        raise RuntimeUnavailableError(f"unknown runtime {runtime!r}; choose one of {', '.join(_MODULES)}")
    mod = importlib.import_module(_MODULES[runtime])
    if runtime == "onnx":
        return mod.OnnxRunner(components, root, device=device, num_threads=num_threads)
    if runtime == "openvino":
        return mod.OpenVINORunner(components, root, device=device, precision=precision, num_threads=num_threads)
    if runtime == "coreml":
        return mod.CoreMLRunner(components, root, device=device)
    return mod.TorchScriptRunner(components, root, device=device, num_threads=num_threads)


def available_runtimes(probe_torch: bool = True) -> list[RuntimeInfo]:
    """Every runtime, whether it is installed here, and the devices it can use.

    ``probe_torch=False`` reports TorchScript from package metadata only (importing torch takes seconds).
    """
    infos = []
    for name, modname in _MODULES.items():
        mod = importlib.import_module(modname)
        d = mod.describe(probe_torch) if name == "torchscript" else mod.describe()
        infos.append(RuntimeInfo(name, d["installed"], list(d["devices"]), list(d["providers"]), d["version"]))
    return infos
