"""Core ML adapter: ``coremltools.models.MLModel(...).predict`` per component (``.mlpackage`` folders).

Core ML prediction exists only on macOS; coremltools installs on Linux (it converts there) but its
``predict`` raises, so this adapter refuses up front with a message instead of failing mid-generation.

A component may be chunked (a UNet over 1 GB ships as two mlpackages): ``file`` is chunk 1 and the
``.mlpackage`` entries of ``extra_files`` are the later chunks, run in that order; each chunk reads what it
declares from the component's inputs and the earlier chunks' outputs. Inputs are cast to the types each
mlpackage declares (Core ML has no int64: ``input_ids`` travel as int32).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from dhumandiff.errors import BundleError, RuntimeUnavailableError
from dhumandiff.runtimes.adapters.base import BaseRunner, load_failure

#: Core ML ``ArrayFeatureType`` data types (FLOAT32, FLOAT16, DOUBLE, INT32) -> NumPy.
_ARRAY_DTYPES = {65568: np.float32, 65552: np.float16, 65600: np.float64, 131104: np.int32}

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

    def __init__(self, components: Mapping[str, Any], root: str | Path, device: str = "auto", precision: str = "fp16",
                 num_threads: int | None = None) -> None:
        """``precision`` and ``num_threads`` are accepted for a uniform adapter interface: Core ML chooses both."""
        ct = _ct()
        if device.lower() not in COMPUTE_UNITS:
            raise RuntimeUnavailableError(f"unknown Core ML device {device!r}; choose auto, cpu, gpu or ane")
        super().__init__(components, root, device.lower())
        self._units = getattr(ct.ComputeUnit, COMPUTE_UNITS[self.device])

    @property
    def providers(self) -> list[str]:
        return [f"CoreML:{COMPUTE_UNITS[self.device]}"]

    def chunk_paths(self, component: str) -> list[Path]:
        """The mlpackage(s) of a component, in run order (chunk 1 = ``file``, then chunked ``extra_files``)."""
        comp = self.components[component]
        return [self.path_of(component)] + [self.root / f for f in comp.extra_files if f.endswith(".mlpackage")]

    def _load(self, component: str) -> Any:
        ct = _ct()
        graphs = []
        for path in self.chunk_paths(component):
            try:
                model = ct.models.MLModel(str(path), compute_units=self._units)
            except Exception as e:
                raise load_failure("Core ML cannot load", path, component, e) from None
            types = {f.name: _ARRAY_DTYPES.get(f.type.multiArrayType.dataType, np.float32)
                     for f in model.get_spec().description.input}
            graphs.append((path.name, model, types))
        return graphs

    def _run(self, component: str, handle: Any, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        values = dict(inputs)
        out: dict[str, np.ndarray] = {}
        for name, model, types in handle:
            missing = [n for n in types if n not in values]
            if missing:
                raise BundleError(
                    f"{name} ({component}) takes input(s) {missing} that neither bundle.json nor an earlier chunk "
                    f"provides; re-export the bundle"
                )
            # Core ML has no int64 model inputs: ids and positions travel as int32 (the graph's declared type)
            feed = {n: np.ascontiguousarray(values[n], dtype=dt) for n, dt in types.items()}
            out = {k: np.asarray(v) for k, v in model.predict(feed).items()}
            values.update(out)
        return out


def describe(probe: bool = True) -> dict[str, Any]:
    import importlib.util

    installed = importlib.util.find_spec("coremltools") is not None
    on_mac = sys.platform == "darwin"
    return {
        "installed": installed,
        "version": None,
        "providers": ["predict needs macOS"] if installed and not on_mac else [],
        "devices": ["cpu", "gpu", "ane"] if installed and on_mac else [],
    }
