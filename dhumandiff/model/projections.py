"""The identity projections: Resampler (path A), ProjPlus (path B) and the subject MLP.

The Resampler and ProjPlus reuse diffusers' IP-Adapter projection modules (same maths as the official
``Resampler`` and ``ProjPlusModel``), wrapped as ``ModelMixin``/``ConfigMixin`` so they save and load as
``config.json`` + safetensors. ``official.py`` maps the official key names onto these modules.
"""

from __future__ import annotations

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.embeddings import IPAdapterFaceIDPlusImageProjection, IPAdapterPlusImageProjection
from diffusers.models.modeling_utils import ModelMixin
from torch import nn


class Resampler(ModelMixin, ConfigMixin):
    """Perceiver resampler: a person's CLIP image features ``[B, T, H]`` -> ``num_queries`` ID tokens."""

    @register_to_config
    def __init__(self, embed_dims: int = 1280, output_dims: int = 2048, hidden_dims: int = 1280, depth: int = 4,
                 dim_head: int = 64, heads: int = 20, num_queries: int = 16, ffn_ratio: float = 4) -> None:
        super().__init__()
        self.proj = IPAdapterPlusImageProjection(embed_dims=embed_dims, output_dims=output_dims,
                                                 hidden_dims=hidden_dims, depth=depth, dim_head=dim_head,
                                                 heads=heads, num_queries=num_queries, ffn_ratio=ffn_ratio)

    def forward(self, image_embeds: torch.Tensor) -> torch.Tensor:
        return self.proj(image_embeds)


class FaceProjPlus(ModelMixin, ConfigMixin):
    """ProjPlusModel: ArcFace ID embedding + CLIP tokens -> ``num_tokens`` face token(s) for the subject MLP."""

    @register_to_config
    def __init__(self, embed_dims: int = 1024, output_dims: int = 1024, hidden_dims: int = 1280,
                 id_embeddings_dim: int = 512, depth: int = 4, dim_head: int = 64, heads: int = 16,
                 num_tokens: int = 1, num_queries: int = 1, ffn_ratio: float = 4, ffproj_ratio: int = 2,
                 shortcut: bool = False, shortcut_scale: float = 1.0) -> None:
        super().__init__()
        self.proj = IPAdapterFaceIDPlusImageProjection(
            embed_dims=embed_dims, output_dims=output_dims, hidden_dims=hidden_dims,
            id_embeddings_dim=id_embeddings_dim, depth=depth, dim_head=dim_head, heads=heads, num_tokens=num_tokens,
            num_queries=num_queries, ffn_ratio=ffn_ratio, ffproj_ratio=ffproj_ratio)

    def forward(self, id_embeds: torch.Tensor, clip_embeds: torch.Tensor) -> torch.Tensor:
        """``id_embeds`` [B, 512], ``clip_embeds`` [B, T, H] -> ``[B, num_tokens, output_dims]``.

        Written out (instead of diffusers' stateful ``clip_embeds`` attribute) so the graph exports cleanly.
        """
        p = self.proj
        x = p.proj(id_embeds.to(clip_embeds.dtype)).reshape(-1, p.num_tokens, p.embed_dim)
        x = p.norm(x)
        latents = x
        feats = p.proj_in(clip_embeds)
        for block in p.layers:
            latents = block(feats, latents, latents)
        out = p.norm_out(p.proj_out(latents))
        if self.config.shortcut:
            out = x + self.config.shortcut_scale * out
        return out


class SubjectMLP(ModelMixin, ConfigMixin):
    """FastComposer-style fusion: [word embedding | face token] -> the person word's new embedding.

    LayerNorm over the concatenated input, Linear, GELU, Linear; no residual (as DHumanDiff's ``mapping.pt``).
    """

    @register_to_config
    def __init__(self, in_dim: int = 1792, hidden_dim: int = 1024, out_dim: int = 768) -> None:
        super().__init__()
        self.layernorm = nn.LayerNorm(in_dim)
        self.fc1 = nn.Linear(in_dim, hidden_dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_dim, out_dim)

    def forward(self, word_embeds: torch.Tensor, face_tokens: torch.Tensor) -> torch.Tensor:
        x = torch.cat([word_embeds, face_tokens.to(word_embeds.dtype)], dim=-1)
        return self.fc2(self.act(self.fc1(self.layernorm(x))))
