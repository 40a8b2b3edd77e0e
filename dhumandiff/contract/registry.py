"""The runtimes a bundle may name, and where each one's adapter lives: one entry per runtime.

A bundle's ``runtime`` field must be one of these (the bundle reader checks it), the exporter writes them, the
CLI lists them in its help, and :func:`dhumandiff.runtimes.adapters.make_runner` builds the adapter an entry
names. Adding a runtime is an adapter module under ``dhumandiff/runtimes/adapters/`` (a ``BaseRunner`` subclass
taking ``(components, root, device, precision, num_threads)`` and a module-level ``describe(probe)``), one entry
here, and its test. The adapter is named by import path, not imported: this layer stays free of any backend.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class RuntimeEntry:
    """One runtime: its bundle name, its adapter (``module:Class``), the pip extra that installs its backend."""

    name: str
    adapter: str
    extra: str
    summary: str

    @property
    def module(self) -> str:
        return self.adapter.partition(":")[0]

    @property
    def class_name(self) -> str:
        return self.adapter.partition(":")[2]


_ADAPTERS = "dhumandiff.runtimes.adapters"

#: Every runtime, in the order ``dhumandiff doctor`` reports them.
RUNTIME_REGISTRY: dict[str, RuntimeEntry] = {e.name: e for e in (
    RuntimeEntry("onnx", f"{_ADAPTERS}.onnx:OnnxRunner", "onnx", "onnxruntime (CPU, CUDA, CoreML / OpenVINO EPs)"),
    RuntimeEntry("openvino", f"{_ADAPTERS}.openvino:OpenVINORunner", "openvino", "OpenVINO (CPU, GPU, NPU)"),
    RuntimeEntry("coreml", f"{_ADAPTERS}.coreml:CoreMLRunner", "coreml", "Core ML (macOS: CPU, GPU, Neural Engine)"),
    RuntimeEntry("torchscript", f"{_ADAPTERS}.torchscript:TorchScriptRunner", "torch", "TorchScript (CPU, CUDA, MPS)"),
)}
#: The names a bundle's ``runtime`` field may hold.
RUNTIMES: tuple[str, ...] = tuple(RUNTIME_REGISTRY)
