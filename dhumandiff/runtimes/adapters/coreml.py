"""Core ML adapter: ``coremltools.models.MLModel(...).predict`` per component (``.mlpackage`` folders).

Core ML prediction exists only on macOS; coremltools installs on Linux (it converts there) but its
``predict`` raises, so this adapter refuses up front with a message instead of failing mid-generation.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from dhumandiff.errors import BundleError, RuntimeUnavailableError
from dhumandiff.runtimes.adapters.base import BaseRunner

#: ``--device`` -> coremltools ComputeUnit name.
COMPUTE_UNITS = {"auto": "ALL", "all": "ALL", "cpu": "CPU_ONLY", "gpu": "CPU_AND_GPU", "ane": "CPU_AND_NE",
                 "npu": "CPU_AND_NE"}


def _ct() -> Any:
    if sys.platform != "darwin":
        raise RuntimeUnavailableError(
            "Core ML bundles run on macOS only; on this machine export for onnx or openvino "
            "(dhumandiff export --runtime onnx)"
        )
    try:
        import coremltools
    except ImportError:
        raise RuntimeUnavailableError("coremltools is not installed; pip install 'dhumandiff[coreml]'") from None
    return coremltools


class CoreMLRunner(BaseRunner):
    runtime = "coreml"

    def __init__(self, components: Mapping[str, Any], root: str | Path, device: str = "auto") -> None:
        ct = _ct()
        if device.lower() not in COMPUTE_UNITS:
            raise RuntimeUnavailableError(f"unknown Core ML device {device!r}; choose auto, cpu, gpu or ane")
        super().__init__(components, root, device.lower())
        self._units = getattr(ct.ComputeUnit, COMPUTE_UNITS[self.device])

    @property
    def providers(self) -> list[str]:
        return [f"CoreML:{COMPUTE_UNITS[self.device]}"]

    def _load(self, component: str) -> Any:
        ct = _ct()
        path = self.path_of(component)
        try:
            return ct.models.MLModel(str(path), compute_units=self._units)
        except Exception as e:
            first = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise BundleError(f"Core ML cannot load {path.name} ({component}): {first}; re-export the bundle") from None

    def _run(self, component: str, handle: Any, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        # Core ML has no int64 model inputs: ids and positions travel as int32
        feed = {k: v.astype(np.int32) if v.dtype == np.int64 else v for k, v in inputs.items()}
        out = handle.predict(feed)
        return {k: np.asarray(v) for k, v in out.items()}


def describe() -> dict[str, Any]:
    import importlib.util

    installed = importlib.util.find_spec("coremltools") is not None
    on_mac = sys.platform == "darwin"
    return {
        "installed": installed,
        "version": None,
        "providers": ["predict needs macOS"] if installed and not on_mac else [],
        "devices": ["cpu", "gpu", "ane"] if installed and on_mac else [],
    }
