"""onnxruntime adapter: one InferenceSession per component, created on first use.

Execution providers are picked from what this onnxruntime build actually has, so the same bundle runs on a
CUDA box, a Mac (CoreML EP) or an Intel box (OpenVINO EP) with no flags; CPU is always the fallback for ops an
accelerator provider does not take.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import numpy as np

from dhumandiff.contract.onnx_sessions import keep_weights_mapped
from dhumandiff.errors import BundleError, RuntimeUnavailableError
from dhumandiff.runtimes.adapters.base import BaseRunner, check_graph_io, load_failure

#: ``--device`` name -> onnxruntime execution provider.
DEVICE_PROVIDERS = {
    "cuda": "CUDAExecutionProvider",
    "coreml": "CoreMLExecutionProvider",
    "openvino": "OpenVINOExecutionProvider",
    "cpu": "CPUExecutionProvider",
}
_AUTO_ORDER = ("CUDAExecutionProvider", "CoreMLExecutionProvider", "OpenVINOExecutionProvider")


def _ort() -> Any:
    try:
        import onnxruntime
    except ImportError:
        raise RuntimeUnavailableError(
            "onnxruntime is not installed; pip install 'dhumandiff[onnx]' (or onnxruntime-gpu for CUDA)"
        ) from None
    return onnxruntime


def choose_providers(device: str, available: list[str]) -> list[str]:
    """Providers for ``device`` ("auto", "cpu", "cuda", "coreml", "openvino"), CPU appended as fallback."""
    device = device.lower()
    if device == "gpu":
        device = "cuda"
    if device == "auto":
        chosen = [p for p in _AUTO_ORDER if p in available]
    elif device in DEVICE_PROVIDERS:
        provider = DEVICE_PROVIDERS[device]
        if provider not in available:
            raise RuntimeUnavailableError(
                f"onnxruntime here has no {provider} (available: {', '.join(available)}); use --device cpu or "
                f"install the onnxruntime build for {device}"
            )
        chosen = [provider] if provider != "CPUExecutionProvider" else []
    else:
        raise RuntimeUnavailableError(
            f"unknown onnx device {device!r}; choose auto, cpu, cuda, coreml or openvino"
        )
    return chosen + ["CPUExecutionProvider"]


class OnnxRunner(BaseRunner):
    runtime = "onnx"

    def __init__(self, components: Mapping[str, Any], root: str | Path, device: str = "cpu", precision: str = "fp32",
                 num_threads: int | None = None) -> None:
        """``precision`` is the bundle's (the graphs carry their own types; onnxruntime needs no hint)."""
        super().__init__(components, root, device)
        ort = _ort()
        self._providers = choose_providers(device, list(ort.get_available_providers()))
        self.num_threads = num_threads
        #: Set by ``load_bundle(..., low_memory=True)``: graphs whose weights lie in an external file keep them in
        #: that mapped file (:mod:`dhumandiff.contract.onnx_sessions`: 12 instead of 18 GiB for the fp16 SDXL UNet, at ~2.6x
        #: the step time); smaller graphs open as usual, so their outputs stay bit-identical to a normal run's.
        self.mapped_weights = False

    @property
    def providers(self) -> list[str]:
        return list(self._providers)

    def _load(self, component: str) -> Any:
        ort = _ort()
        opts = ort.SessionOptions()
        if self.num_threads:
            opts.intra_op_num_threads = self.num_threads
            opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        if self.mapped_weights and self.components[component].extra_files:  # weights in an external .onnx.data
            keep_weights_mapped(opts, ort)
        path = self.path_of(component)
        try:
            session = ort.InferenceSession(str(path), sess_options=opts, providers=self._providers)
        except Exception as e:  # onnxruntime raises its own Fail/InvalidGraph/... types
            raise load_failure("onnxruntime cannot load", path, component, e) from None
        spec = self.components[component]
        check_graph_io(component, spec, {i.name: i.shape for i in session.get_inputs()}, "input")
        check_graph_io(component, spec, {o.name: o.shape for o in session.get_outputs()}, "output")
        return session

    def _run(self, component: str, handle: Any, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        names = [i.name for i in handle.get_inputs()]
        absent = [n for n in names if n not in inputs]
        if absent:
            raise BundleError(
                f"{component} graph takes input(s) {absent} that bundle.json does not declare; re-export the bundle"
            )
        out_names = [o.name for o in handle.get_outputs()]
        values = handle.run(out_names, {n: inputs[n] for n in names})
        return dict(zip(out_names, values))


def describe(probe: bool = True) -> dict[str, Any]:
    """Installed? which providers/devices? (for ``dhumandiff doctor``)."""
    try:
        ort = _ort()
    except RuntimeUnavailableError:
        return {"installed": False, "version": None, "providers": [], "devices": []}
    providers = list(ort.get_available_providers())
    devices = [d for d, p in DEVICE_PROVIDERS.items() if p in providers]
    return {"installed": True, "version": ort.__version__, "providers": providers, "devices": devices}
