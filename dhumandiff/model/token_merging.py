"""Token merging (ToMe for SD, Bolya & Hoffman 2023) in the UNet's self-attention, training-free and exportable.

Self-attention at the largest latent sizes costs O(N^2) in its N = h*w tokens. ToMe merges the ``r = ratio * N``
most redundant tokens before ``attn1`` and copies the results back after it, so attention runs on N - r tokens:

1. bipartite split: one *destination* token per 2x2 window (its top-left token), the other 3/4 are *sources*;
2. each source's most similar destination (cosine of the normed hidden states); the ``r`` sources with the highest
   similarity are averaged into their destinations, the rest stay;
3. attention over [unmerged sources | destinations]; each merged source then takes its destination's output.

Only ``attn1`` changes (its processor holds no weights: the official checkpoint layout and the dual identity
cross-attention with its region masks are untouched). The split is fixed (not tomesd's random pick per window) and
every index is computed in the graph from static shapes, so ONNX (TopK, GatherElements, ScatterElements with
``add``) and OpenVINO export it with static shapes and the same numbers as PyTorch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..errors import SettingsError
from .attention import SelfAttnProcessor, _attention_forward, block_level

__all__ = ["TokenMerging", "ToMeSelfAttnProcessor", "apply_token_merging", "bipartite_merge"]


@dataclass(frozen=True)
class TokenMerging:
    """``ratio``: share of a layer's tokens merged away (0 < ratio <= 0.75); ``max_downsample``: merge in layers whose
    latent is downsampled at most this much (1: only the full-size latent, as tomesd's default; 2, 4, 8: deeper)."""

    ratio: float
    max_downsample: int = 1

    def __post_init__(self) -> None:
        if not (isinstance(self.ratio, (int, float)) and 0.0 < float(self.ratio) <= 0.75):
            raise SettingsError(f"--token-merging must be a share of tokens in (0, 0.75] (got {self.ratio})")
        if self.max_downsample not in (1, 2, 4, 8):
            raise SettingsError(f"--token-merging-depth must be 1, 2, 4 or 8 (got {self.max_downsample})")

    def to_dict(self) -> dict[str, Any]:
        return {"ratio": float(self.ratio), "max_downsample": int(self.max_downsample)}


def _split(h: int, w: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Token positions of the sources and destinations, and the permutation back from [sources | destinations]."""
    grid = torch.arange(h * w).view(h, w)
    is_dst = torch.zeros(h, w, dtype=torch.bool)
    is_dst[::2, ::2] = True
    src, dst = grid[~is_dst], grid[is_dst]
    order = torch.cat([src, dst])
    return src, dst, torch.argsort(order)


def bipartite_merge(metric: torch.Tensor, h: int, w: int, r: int) -> tuple[Any, Any]:
    """``(merge, unmerge)`` for tokens ``metric`` [B, h*w, C]: ``merge`` -> [B, h*w - r, C], ``unmerge`` back."""
    b, n, _ = metric.shape
    src_pos, dst_pos, inverse = (t.to(metric.device) for t in _split(h, w))
    n_src = src_pos.numel()
    r = max(0, min(int(r), n_src))
    unit = metric / metric.norm(dim=-1, keepdim=True).clamp_min(1e-6)
    scores = unit.index_select(1, src_pos) @ unit.index_select(1, dst_pos).transpose(-1, -2)
    best, best_dst = scores.max(dim=-1)  # [B, n_src]
    order = best.argsort(dim=-1, descending=True).unsqueeze(-1)  # most redundant sources first
    merged_src, kept_src = order[:, :r], order[:, r:]
    into = best_dst.unsqueeze(-1).gather(1, merged_src)  # each merged source's destination

    def merge(x: torch.Tensor) -> torch.Tensor:
        c = x.shape[-1]
        src, dst = x.index_select(1, src_pos), x.index_select(1, dst_pos)
        kept = src.gather(1, kept_src.expand(-1, -1, c))
        moved = src.gather(1, merged_src.expand(-1, -1, c))
        total = dst.scatter_add(1, into.expand(-1, -1, c), moved)
        count = torch.ones_like(dst[..., :1]).scatter_add(1, into, torch.ones_like(moved[..., :1]))
        return torch.cat([kept, total / count], dim=1)

    def unmerge(y: torch.Tensor) -> torch.Tensor:
        c = y.shape[-1]
        kept, dst = y[:, : n_src - r], y[:, n_src - r:]
        moved = dst.gather(1, into.expand(-1, -1, c))
        src = torch.zeros(b, n_src, c, dtype=y.dtype, device=y.device)
        src = src.scatter(1, kept_src.expand(-1, -1, c), kept).scatter(1, merged_src.expand(-1, -1, c), moved)
        return torch.cat([src, dst], dim=1).index_select(1, inverse)

    return merge, unmerge


class ToMeSelfAttnProcessor(SelfAttnProcessor):
    """:class:`SelfAttnProcessor` on merged tokens for a layer of ``size`` = (h, w) tokens (others pass through)."""

    def __init__(self, ratio: float, size: tuple[int, int]) -> None:
        super().__init__()
        self.ratio, self.size = float(ratio), (int(size[0]), int(size[1]))

    def __call__(self, attn: Any, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None, temb: torch.Tensor | None = None,
                 region_mask: torch.Tensor | None = None, ip_scale: torch.Tensor | float | None = None,
                 attn_store: list | None = None) -> torch.Tensor:
        h, w = self.size
        if (encoder_hidden_states is not None or hidden_states.ndim != 3 or hidden_states.shape[1] != h * w
                or attn.residual_connection):
            return super().__call__(attn, hidden_states, encoder_hidden_states)
        merge, unmerge = bipartite_merge(hidden_states, h, w, int(hidden_states.shape[1] * self.ratio))
        return unmerge(_attention_forward(attn, merge(hidden_states), None, self._core))


def apply_token_merging(unet: nn.Module, merging: TokenMerging | None, latent_size: tuple[int, int]) -> int:
    """Give the ``attn1`` of every layer within ``merging.max_downsample`` a :class:`ToMeSelfAttnProcessor` for a
    latent of ``latent_size`` (None: plain :class:`SelfAttnProcessor` everywhere again). Returns layers merged."""
    levels = len(unet.config.block_out_channels)
    procs: dict[str, Any] = {}
    merged = 0
    for name, proc in unet.attn_processors.items():
        if not name.endswith("attn1.processor"):
            procs[name] = proc
            continue
        down = 2 ** block_level(name, levels)
        h, w = latent_size[0] // down, latent_size[1] // down
        if merging is not None and down <= merging.max_downsample and h % 2 == 0 and w % 2 == 0:
            procs[name] = ToMeSelfAttnProcessor(merging.ratio, (h, w))
            merged += 1
        else:
            procs[name] = SelfAttnProcessor()
    unet.set_attn_processor(procs)
    return merged
