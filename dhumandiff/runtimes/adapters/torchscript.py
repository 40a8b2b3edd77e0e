"""TorchScript adapter: ``torch.jit.load`` of ``.pt`` files on cpu, cuda or mps.

The only adapter that uses torch, and it imports torch inside its methods: importing this module (as the
registry does) must stay torch-free so an onnx-only install never pays for, or needs, PyTorch.
Graphs are called positionally in the manifest's input order, and their outputs (a tensor, a tuple or a dict)
are named by the manifest's output order.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from dhumandiff.errors import BundleError, RuntimeUnavailableError
from dhumandiff.runtimes.adapters.base import BaseRunner, load_failure


def _torch() -> Any:
    try:
        import torch
    except ImportError:
        raise RuntimeUnavailableError(
            "TorchScript bundles need PyTorch; pip install 'dhumandiff[torch]' or export for onnx"
        ) from None
    return torch


def resolve_device(device: str) -> str:
    torch = _torch()
    d = device.lower()
    if d == "auto":
        if torch.cuda.is_available():
            return "cuda"
        mps = getattr(torch.backends, "mps", None)
        return "mps" if mps is not None and mps.is_available() else "cpu"
    if d == "cuda" and not torch.cuda.is_available():
        raise RuntimeUnavailableError("CUDA is not available to PyTorch here; use --device cpu")
    if d == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise RuntimeUnavailableError("Apple MPS is not available to PyTorch here; use --device cpu")
    if d not in ("cpu", "cuda", "mps"):
        raise RuntimeUnavailableError(f"unknown TorchScript device {device!r}; choose auto, cpu, cuda or mps")
    return d


class TorchScriptRunner(BaseRunner):
    runtime = "torchscript"

    def __init__(self, components: Mapping[str, Any], root: str | Path, device: str = "cpu", precision: str = "fp32",
                 num_threads: int | None = None) -> None:
        """``precision`` is the bundle's (TorchScript modules carry their own dtypes)."""
        super().__init__(components, root, resolve_device(device))
        if num_threads:
            _torch().set_num_threads(int(num_threads))

    @property
    def providers(self) -> list[str]:
        return [f"torch:{self.device}"]

    def _load(self, component: str) -> Any:
        torch = _torch()
        path = self.path_of(component)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)  # TorchScript is this bundle's format by choice
                module = torch.jit.load(str(path), map_location=self.device)
        except Exception as e:
            raise load_failure("torch.jit.load cannot read", path, component, e) from None
        return module.eval()

    def _run(self, component: str, handle: Any, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        torch = _torch()
        spec = self.components[component]
        args = [torch.from_numpy(inputs[name]).to(self.device) for name in spec.inputs]
        with torch.inference_mode():
            result = handle(*args)
        names = list(spec.outputs)
        if isinstance(result, dict):
            values = [result[n] for n in names]
        elif isinstance(result, (tuple, list)):
            values = list(result)
        else:
            values = [result]
        if len(values) != len(names):
            raise BundleError(
                f"{component} TorchScript graph returned {len(values)} output(s), bundle.json names {len(names)}; "
                "re-export the bundle"
            )
        return {n: v.detach().float().cpu().numpy() if v.is_floating_point() else v.cpu().numpy()
                for n, v in zip(names, values)}


def describe(probe: bool = True) -> dict[str, Any]:
    """Installed? which devices? ``probe=False`` answers from package metadata without importing torch."""
    import importlib.util

    if importlib.util.find_spec("torch") is None:
        return {"installed": False, "version": None, "providers": [], "devices": []}
    if not probe:
        return {"installed": True, "version": None, "providers": [], "devices": ["cpu"]}
    torch = _torch()
    devices = ["cpu"]
    if torch.cuda.is_available():
        devices.append("cuda")
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        devices.append("mps")
    return {"installed": True, "version": torch.__version__, "providers": [f"torch:{d}" for d in devices],
            "devices": devices}
