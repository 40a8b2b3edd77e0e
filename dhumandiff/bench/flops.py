"""FLOPs of each component, counted once on its PyTorch module with ``torch.utils.flop_counter``.

``FlopCounterMode`` counts the matmuls, convolutions and attention kernels (``scaled_dot_product_attention``)
that dominate a diffusion UNet, at 2 FLOPs per multiply-add; elementwise ops, norms and softmax are not counted,
the usual convention for GFLOP/s figures (and the same one as the matmul peaks in ``peaks``). Graphs exported from
the same module do the same arithmetic, so one count serves every runtime and precision of that component.
"""

from __future__ import annotations

from typing import Any, Mapping

import torch
from torch import nn


@torch.no_grad()
def count_flops(module: nn.Module, inputs: Mapping[str, torch.Tensor] | tuple[torch.Tensor, ...]) -> int:
    """FLOPs of one forward call of ``module`` on ``inputs`` (positional, in the given order)."""
    return counted_forward(module, inputs)[0]


@torch.no_grad()
def counted_forward(module: nn.Module, inputs: Mapping[str, torch.Tensor] | tuple[torch.Tensor, ...]
                    ) -> tuple[int, Any]:
    """``(FLOPs, outputs)`` of one forward call: the count and the fp32 reference from the same (costly) pass."""
    from torch.utils.flop_counter import FlopCounterMode

    args = tuple(inputs.values()) if isinstance(inputs, Mapping) else tuple(inputs)
    with FlopCounterMode(display=False) as counter:
        out = module(*args)
    return int(counter.get_total_flops()), out

