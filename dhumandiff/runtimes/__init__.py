"""runtimes stage: run an exported bundle on the edge with one torch-free NumPy sampler loop.

Import rule (checked by ``tests/test_runtime_imports.py``): nothing here imports torch, diffusers,
transformers or another dhumandiff stage; only :mod:`dhumandiff.errors` and :mod:`dhumandiff.utils`.
Backends (onnxruntime, openvino, coremltools, torch for TorchScript) are imported inside adapter methods, so a
runtime-only install pays only for the backend it uses.

Public entry points are re-exported lazily (PEP 562) so ``import dhumandiff.runtimes`` stays cheap.
"""

from __future__ import annotations

from typing import Any

_EXPORTS = {
    "load_bundle": "dhumandiff.runtimes.generator",
    "BundleGenerator": "dhumandiff.runtimes.generator",
    "GenerationResult": "dhumandiff.runtimes.generator",
    "available_runtimes": "dhumandiff.runtimes.generator",
    "describe": "dhumandiff.runtimes.generator",
    "RuntimeInfo": "dhumandiff.runtimes.adapters",
    "load_manifest": "dhumandiff.contract.bundle",
    "write_manifest": "dhumandiff.contract.bundle",
    "Manifest": "dhumandiff.contract.bundle",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'dhumandiff.runtimes' has no attribute {name!r}")
