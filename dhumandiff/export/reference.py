"""The torch fp32 reference of one component: its export wrapper run once on given inputs, outputs named.

What every exported or quantised graph is compared with (``bundle``, ``quantize_modes``, ``checks.parity``).
It sits below both the export loop and the quantisation loop, so neither has to import the other for it.
"""

from __future__ import annotations

import numpy as np
import torch

from ..errors import DHumanDiffError
from .specs import ComponentSpec


@torch.no_grad()
def torch_outputs(spec: ComponentSpec, module: torch.nn.Module, example: dict[str, torch.Tensor],
                  ) -> dict[str, np.ndarray]:
    """The torch fp32 reference: the wrapper run on ``example``, outputs named by the spec."""
    value = module(*example.values())
    values = value if isinstance(value, (tuple, list)) else (value,)
    if len(values) != len(spec.outputs):
        raise DHumanDiffError(f"{spec.name} wrapper returned {len(values)} outputs, its spec names {len(spec.outputs)}")
    return {name: v.detach().float().cpu().numpy() for name, v in zip(spec.outputs, values)}
