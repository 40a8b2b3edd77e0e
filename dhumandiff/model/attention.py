"""DHumanDiff's dual decoupled cross-attention, as diffusers attention processors.

Every cross-attention (``attn2``) of the UNet gets a :class:`DualIPAttnProcessor` with its own key/value
projections per person (``to_k_ip1``, ``to_v_ip1``, ``to_k_ip2``, ``to_v_ip2``; Linear context->hidden, no
bias). The context is ``[text tokens | person-1 ID tokens | person-2 ID tokens]`` and the output is::

    text_attention + ip_scale * (m1 * attention(person-1 tokens) + m2 * attention(person-2 tokens))

where ``m1``/``m2`` are the optional per-person region masks (1 everywhere when absent, which is the official
behaviour). Self-attention (``attn1``) gets :class:`SelfAttnProcessor`, which holds no weights, so
``ModuleList(unet.attn_processors.values())`` has the official checkpoint's index layout.

Per-call inputs (``region_mask``, ``ip_scale``, ``attn_store``) travel through ``cross_attention_kwargs`` so that
the exported graphs take them as ordinary inputs.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


def _heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    b, n, c = x.shape
    return x.view(b, n, heads, c // heads).transpose(1, 2)


def _merge(x: torch.Tensor) -> torch.Tensor:
    b, h, n, d = x.shape
    return x.transpose(1, 2).reshape(b, n, h * d)


def resize_region_mask(mask: torch.Tensor, seq_len: int) -> torch.Tensor:
    """Downsample a latent-resolution mask ``[B, P, H, W]`` to a layer with ``seq_len`` = h*w tokens.

    Returns ``[B, seq_len, P]``. Average pooling (not nearest) keeps box edges soft at coarse layers and exports
    to ONNX / Core ML as a plain AvgPool.
    """
    b, p, h, w = mask.shape
    factor = int(round(math.sqrt(h * w / seq_len)))
    if factor > 1:
        mask = F.avg_pool2d(mask, kernel_size=factor, stride=factor)
    return mask.flatten(2).transpose(1, 2)


class AttentionStore(list):
    """Where the ID tokens' attention maps are collected, one entry per cross-attention layer.

    ``kind="attention-mass"``: a ``[B, 2, N]`` tensor, each person's share of one softmax over the whole context
    (the project's cascade mask and the training region loss). ``kind="token-maps"``: a pair of ``[B, N, 16]``
    tensors, ``query @ softmax_over_tokens(k_ip^T)`` averaged over heads, per person (the official cascade mask;
    see ``cascade_mask.py``). The cascade sampler reads them detached; the training region loss needs them with
    their gradients, which ``keep_grad=True`` keeps.
    """

    def __init__(self, keep_grad: bool = False, kind: str = "attention-mass") -> None:
        super().__init__()
        self.keep_grad = keep_grad
        self.kind = kind


class SelfAttnProcessor(nn.Module):
    """Plain scaled-dot-product attention for ``attn1``; accepts (and ignores) the identity kwargs.

    An ``nn.Module`` with no parameters so that it occupies an index in the official processor ModuleList.
    """

    def __call__(self, attn: Any, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None, temb: torch.Tensor | None = None,
                 region_mask: torch.Tensor | None = None, ip_scale: torch.Tensor | float | None = None,
                 attn_store: list | None = None) -> torch.Tensor:
        return _attention_forward(attn, hidden_states, encoder_hidden_states, self._core)

    @staticmethod
    def _core(attn: Any, query: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        key, value = attn.to_k(context), attn.to_v(context)
        out = F.scaled_dot_product_attention(_heads(query, attn.heads), _heads(key, attn.heads),
                                             _heads(value, attn.heads))
        return _merge(out)


class DualIPAttnProcessor(nn.Module):
    """Cross-attention over text plus two persons' identity tokens, each with its own K/V projections."""

    def __init__(self, hidden_size: int, cross_attention_dim: int, num_text_tokens: int = 77,
                 num_id_tokens: int = 16, scale: float = 1.0) -> None:
        super().__init__()
        self.hidden_size = hidden_size
        self.cross_attention_dim = cross_attention_dim
        self.num_text_tokens = num_text_tokens
        self.num_id_tokens = num_id_tokens
        self.scale = scale
        self.to_k_ip1 = nn.Linear(cross_attention_dim, hidden_size, bias=False)
        self.to_v_ip1 = nn.Linear(cross_attention_dim, hidden_size, bias=False)
        self.to_k_ip2 = nn.Linear(cross_attention_dim, hidden_size, bias=False)
        self.to_v_ip2 = nn.Linear(cross_attention_dim, hidden_size, bias=False)

    def __call__(self, attn: Any, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None, temb: torch.Tensor | None = None,
                 region_mask: torch.Tensor | None = None, ip_scale: torch.Tensor | float | None = None,
                 attn_store: list | None = None) -> torch.Tensor:
        def core(attn: Any, query: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
            return self.attend(attn, query, context, region_mask, ip_scale, attn_store)

        return _attention_forward(attn, hidden_states, encoder_hidden_states, core)

    def attend(self, attn: Any, query: torch.Tensor, context: torch.Tensor, region_mask: torch.Tensor | None,
               ip_scale: torch.Tensor | float | None, attn_store: list | None) -> torch.Tensor:
        """The DHumanDiff combination, given the projected query and the full context."""
        t, k = self.num_text_tokens, self.num_id_tokens
        text, id1, id2 = context[:, :t], context[:, t:t + k], context[:, t + k:t + 2 * k]
        heads = attn.heads
        q = _heads(query, heads)
        out = _merge(F.scaled_dot_product_attention(q, _heads(attn.to_k(text), heads),
                                                    _heads(attn.to_v(text), heads)))
        k1, v1 = _heads(self.to_k_ip1(id1), heads), _heads(self.to_v_ip1(id1), heads)
        k2, v2 = _heads(self.to_k_ip2(id2), heads), _heads(self.to_v_ip2(id2), heads)
        if attn_store is not None and getattr(attn_store, "kind", "attention-mass") == "token-maps":
            # The official code's map: the query against each key channel's softmax over the person's tokens.
            attn_store.append(tuple((q @ kk.transpose(-2, -1).softmax(dim=-1)).mean(1).detach() for kk in (k1, k2)))
        elif attn_store is not None:
            # Cascade stage 1 reads where the ID tokens are attended: softmax over the whole context (text and
            # both persons' tokens, as one attention would see it), mass on each person's tokens, mean over heads.
            kt = _heads(attn.to_k(text), heads)
            logits = q @ torch.cat([kt, k1, k2], dim=2).transpose(-1, -2) / math.sqrt(q.shape[-1])
            probs = torch.softmax(logits, dim=-1)
            p1 = probs[..., t:t + k].sum(-1).mean(1)
            p2 = probs[..., t + k:].sum(-1).mean(1)
            maps = torch.stack([p1, p2], dim=1)
            attn_store.append(maps if getattr(attn_store, "keep_grad", False) else maps.detach())
        ip1 = _merge(F.scaled_dot_product_attention(q, k1, v1))
        ip2 = _merge(F.scaled_dot_product_attention(q, k2, v2))
        if region_mask is not None:
            m = resize_region_mask(region_mask.to(ip1.dtype), ip1.shape[1])
            ip1 = ip1 * m[..., 0:1]
            ip2 = ip2 * m[..., 1:2]
        scale = self.scale if ip_scale is None else ip_scale
        if isinstance(scale, torch.Tensor):
            scale = scale.to(out.dtype).reshape(-1, 1, 1)
        return out + scale * (ip1 + ip2)


def _attention_forward(attn: Any, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None,
                       core: Any) -> torch.Tensor:
    """The shared scaffolding of diffusers' AttnProcessor2_0 around a pluggable attention core."""
    residual = hidden_states
    input_ndim = hidden_states.ndim
    if input_ndim == 4:
        b, c, h, w = hidden_states.shape
        hidden_states = hidden_states.view(b, c, h * w).transpose(1, 2)
    if attn.group_norm is not None:
        hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
    query = attn.to_q(hidden_states)
    if encoder_hidden_states is None:
        context = hidden_states
    elif attn.norm_cross:
        context = attn.norm_encoder_hidden_states(encoder_hidden_states)
    else:
        context = encoder_hidden_states
    out = core(attn, query, context)
    out = attn.to_out[1](attn.to_out[0](out))
    if input_ndim == 4:
        out = out.transpose(-1, -2).reshape(b, c, h, w)
    if attn.residual_connection:
        out = out + residual
    return out / attn.rescale_output_factor


def block_level(name: str, levels: int) -> int:
    """How many times the latent is halved at the attention processor ``name`` (diffusers' naming): its UNet
    level, which also indexes ``block_out_channels``."""
    if name.startswith("mid_block"):
        return levels - 1
    block = int(name.split(".")[1])
    return block if name.startswith("down_blocks") else levels - 1 - block


def install_dual_processors(unet: nn.Module, num_text_tokens: int = 77, num_id_tokens: int = 16,
                            scale: float = 1.0) -> nn.ModuleList:
    """Give every ``attn2`` a :class:`DualIPAttnProcessor` and every ``attn1`` a :class:`SelfAttnProcessor`.

    Returns ``ModuleList(unet.attn_processors.values())`` — the object whose state dict is the official
    ``ip_adapter_ca.pt`` layout (``"{index}.to_k_ip1.weight"`` ...).
    """
    cross_dim = unet.config.cross_attention_dim
    procs: dict[str, nn.Module] = {}
    for name in unet.attn_processors.keys():
        if name.endswith("attn1.processor"):
            procs[name] = SelfAttnProcessor()
            continue
        channels = unet.config.block_out_channels
        hidden = channels[block_level(name, len(channels))]
        procs[name] = DualIPAttnProcessor(hidden, cross_dim, num_text_tokens, num_id_tokens, scale)
    unet.set_attn_processor(procs)
    return processor_list(unet)


def processor_list(unet: nn.Module) -> nn.ModuleList:
    """The processors in diffusers' ``attn_processors`` order, as the official checkpoint stores them."""
    return nn.ModuleList(list(unet.attn_processors.values()))
