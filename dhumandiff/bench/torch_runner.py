"""The PyTorch modules behind the runtimes' ``GraphRunner`` interface: the torch rows of the benchmark.

The torch reference is run through the *same* NumPy sampler loop as every bundle
(:class:`~dhumandiff.runtimes.generator.BundleGenerator`), with each component's export wrapper (``export.specs``)
as its "graph". So two rows of a table differ only in what executes the graphs, the images they generate can be
compared pixel for pixel (same preprocessing, same noise), and the torch fp32 row is the reference every other
row's PSNR is measured against.
"""

from __future__ import annotations

import contextlib
from typing import Any

import numpy as np
import torch

from ..export.specs import get_spec
from ..model.dhumandiff_model import DHumanDiff

#: Precisions the torch rows run in: fp32 eager, or bf16 by ``torch.autocast`` (weights stay fp32; matmuls and
#: convolutions run in bf16 where this CPU has bf16 kernels).
TORCH_PRECISIONS = ("fp32", "bf16")


class TorchRunner:
    """Runs a model's components by name on NumPy inputs, like a runtime adapter."""

    runtime = "torch"

    def __init__(self, model: DHumanDiff, precision: str = "fp32", components: tuple[str, ...] | None = None
                 ) -> None:
        if precision not in TORCH_PRECISIONS:
            raise ValueError(f"torch rows run in {' or '.join(TORCH_PRECISIONS)}, not {precision!r}")
        self.model = model.eval()
        self.precision = precision
        self._modules: dict[str, tuple[torch.nn.Module, tuple[str, ...], tuple[str, ...]]] = {}
        for name in components or ():
            self.handle(name)

    @property
    def providers(self) -> list[str]:
        return [f"torch:cpu:{self.precision}:{torch.get_num_threads()} threads"]

    def handle(self, component: str) -> Any:
        """The component's wrapper module (built on first use, like an adapter compiling a graph)."""
        if component not in self._modules:
            spec = get_spec(component)
            self._modules[component] = (spec.build(self.model).eval(), spec.input_names(self.model), spec.outputs)
        return self._modules[component]

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.precision == "bf16":
            return torch.autocast("cpu", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    @torch.inference_mode()
    def run(self, component: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        module, names, outputs = self.handle(component)
        args = []
        for name in names:
            a = np.asarray(inputs[name])
            a = a.astype(np.int64) if a.dtype.kind in "iu" else a.astype(np.float32)
            args.append(torch.from_numpy(np.ascontiguousarray(a)))
        with self._autocast():
            value = module(*args)
        values = value if isinstance(value, (tuple, list)) else (value,)
        return {name: v.detach().float().cpu().numpy() for name, v in zip(outputs, values)}


def weights_fingerprint(module: torch.nn.Module) -> float:
    """A cheap checksum of a module's weights (sum of |w| over a few tensors), to prove that a model rebuilt from
    the same backbone and seed is the one that was exported."""
    with torch.no_grad():
        params = list(module.parameters())
        picks = params[:: max(1, len(params) // 16)]
        return float(sum(p.detach().double().abs().sum().item() for p in picks))
