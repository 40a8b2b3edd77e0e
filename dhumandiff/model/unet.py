"""The identity-conditioned UNet as one module with flat tensor inputs.

This is the exact callable that the reference sampler, the trainer and every exporter use, so what is exported
is what was tested: context = ``[text (77) | person-1 ID tokens | person-2 ID tokens]``, the region masks and the
IP scale are ordinary inputs (routed to the attention processors through ``cross_attention_kwargs``).
"""

from __future__ import annotations

import torch
from torch import nn


class IdentityUNet(nn.Module):
    """``(sample, timestep, encoder_hidden_states, ip_tokens, region_mask, ip_scale[, text_embeds, time_ids])``."""

    def __init__(self, unet: nn.Module) -> None:
        super().__init__()
        self.unet = unet

    @property
    def is_xl(self) -> bool:
        return getattr(self.unet.config, "addition_embed_type", None) == "text_time"

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor, encoder_hidden_states: torch.Tensor,
                ip_tokens: torch.Tensor, region_mask: torch.Tensor | None = None,
                ip_scale: torch.Tensor | float = 1.0, text_embeds: torch.Tensor | None = None,
                time_ids: torch.Tensor | None = None, attn_store: list | None = None) -> torch.Tensor:
        context = torch.cat([encoder_hidden_states, ip_tokens.to(encoder_hidden_states.dtype)], dim=1)
        added = {"text_embeds": text_embeds, "time_ids": time_ids} if self.is_xl else None
        kwargs = {"region_mask": region_mask, "ip_scale": ip_scale}
        if attn_store is not None:
            kwargs["attn_store"] = attn_store
        if timestep.ndim == 0:
            timestep = timestep.expand(sample.shape[0])
        return self.unet(sample, timestep, encoder_hidden_states=context, added_cond_kwargs=added,
                         cross_attention_kwargs=kwargs, return_dict=False)[0]
