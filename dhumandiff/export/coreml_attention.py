"""Neural Engine friendly attention for the Core ML export: DHumanDiff's processors with heads split (SPLIT_EINSUM).

Apple's ml-stable-diffusion observed that the Neural Engine runs attention fastest when tensors stay in a
``(B, C, 1, S)`` layout (channels first, sequence last, as a 1xS image), projections are 1x1 convolutions and
each head is its own pair of einsums instead of one batched ``(B, heads, S, d)`` matmul with reshapes and
transposes around it. This module applies that idea to DHumanDiff's two processors, without touching the model:

- :class:`SplitEinsumSelfAttnProcessor` (for ``attn1``): same maths as
  :class:`~dhumandiff.model.attention.SelfAttnProcessor`;
- :class:`SplitEinsumDualProcessor` (for the dual decoupled ``attn2``): same maths as
  :class:`~dhumandiff.model.attention.DualIPAttnProcessor`, i.e. ``text attention + ip_scale * (m1 * attention
  over person-1 tokens + m2 * attention over person-2 tokens)`` with the region masks ``m1``/``m2``. It *is* a
  ``DualIPAttnProcessor`` (subclass, same ``to_k_ip1``... modules), so state-dict keys and the official
  checkpoint's index layout do not change.

Both are selected by a flag (:data:`ATTENTIONS`): ``"original"`` traces the model's own processors (best on the
GPU), ``"split_einsum"`` swaps these in (best on the Neural Engine). Swapping happens in place for the time of a
trace (:func:`attention_implementation`, which restores the original processors afterwards: no copy of a
multi-GB UNet) or on a deep copy (:func:`with_attention`). The cascade's attention-store path is not an export
path; the split processors hand it to the original maths.
"""

from __future__ import annotations

import contextlib
import copy
import math
from typing import Any, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import DHumanDiffError
from ..model.attention import DualIPAttnProcessor, SelfAttnProcessor, resize_region_mask

#: Attention implementations the Core ML exporter can trace.
ATTENTIONS = ("original", "split_einsum")


# ----------------------------------------------------------------------------------------- (B, C, 1, S) maths


def to_bc1s(x: torch.Tensor) -> torch.Tensor:
    """``(B, S, C)`` -> ``(B, C, 1, S)``."""
    return x.transpose(1, 2).unsqueeze(2)


def from_bc1s(x: torch.Tensor) -> torch.Tensor:
    """``(B, C, 1, S)`` -> ``(B, S, C)``."""
    return x.squeeze(2).transpose(1, 2)


def conv1x1(x: torch.Tensor, linear: nn.Linear) -> torch.Tensor:
    """``linear`` applied over the channels of a ``(B, C, 1, S)`` tensor, as the 1x1 convolution it is."""
    return F.conv2d(x, linear.weight[:, :, None, None], linear.bias)


def split_einsum_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int) -> torch.Tensor:
    """Softmax attention with one einsum pair per head. ``q [B,C,1,Sq]``, ``k``/``v [B,C,1,Sk]`` -> ``[B,C,1,Sq]``.

    Per head ``h`` (channels ``h*d .. (h+1)*d``): weights ``[B, Sk, 1, Sq]`` = einsum over the head's channels,
    softmax over keys (dim 1), then the value einsum back to ``[B, d, 1, Sq]``; heads are concatenated on the
    channel axis, which is already the merged-heads layout. The einsum forms are the two Core ML lowers to plain
    matmuls without transposes.
    """
    d = q.shape[1] // heads
    scale = 1.0 / math.sqrt(d)
    kt = k.transpose(1, 3)  # [B, Sk, 1, C]
    outs = []
    for h in range(heads):
        qh = q[:, h * d:(h + 1) * d]
        kh = kt[:, :, :, h * d:(h + 1) * d]
        vh = v[:, h * d:(h + 1) * d]
        weights = torch.einsum("bchq,bkhc->bkhq", qh, kh) * scale
        weights = weights.softmax(dim=1)
        outs.append(torch.einsum("bkhq,bchk->bchq", weights, vh))
    return torch.cat(outs, dim=1)


def _region_bc1s(region_mask: torch.Tensor, seq_len: int, dtype: torch.dtype) -> torch.Tensor:
    """The per-person masks at this layer's resolution as ``[B, P, 1, S]`` (same pooling as the original)."""
    return to_bc1s(resize_region_mask(region_mask.to(dtype), seq_len))


def _forward_bc1s(attn: Any, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None,
                  core: Any) -> torch.Tensor:
    """The scaffolding of :func:`dhumandiff.model.attention._attention_forward`, in the (B, C, 1, S) layout.

    A 4-D ``(B, C, H, W)`` input is already channels-first (a view, no transpose); diffusers' transformer blocks
    hand processors ``(B, S, C)``, which is transposed once in and once out.
    """
    residual = hidden_states
    input_ndim = hidden_states.ndim
    if input_ndim == 4:
        b, c, h, w = hidden_states.shape
        x = hidden_states.reshape(b, c, 1, h * w)
    else:
        x = to_bc1s(hidden_states)
    if attn.group_norm is not None:
        x = attn.group_norm(x)
    query = conv1x1(x, attn.to_q)
    if encoder_hidden_states is None:
        context = x
    elif attn.norm_cross:
        context = to_bc1s(attn.norm_encoder_hidden_states(encoder_hidden_states))
    else:
        context = to_bc1s(encoder_hidden_states)
    out = core(attn, query, context)
    out = attn.to_out[1](conv1x1(out, attn.to_out[0]))
    out = out.reshape(b, c, h, w) if input_ndim == 4 else from_bc1s(out)
    if attn.residual_connection:
        out = out + residual
    return out / attn.rescale_output_factor


# ---------------------------------------------------------------------------------------------- processors


class SplitEinsumSelfAttnProcessor(SelfAttnProcessor):
    """``attn1`` with heads split into einsums over (B, C, 1, S); same maths as :class:`SelfAttnProcessor`."""

    def __call__(self, attn: Any, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None, temb: torch.Tensor | None = None,
                 region_mask: torch.Tensor | None = None, ip_scale: torch.Tensor | float | None = None,
                 attn_store: list | None = None) -> torch.Tensor:
        return _forward_bc1s(attn, hidden_states, encoder_hidden_states, self._split_core)

    @staticmethod
    def _split_core(attn: Any, query: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        return split_einsum_attention(query, conv1x1(context, attn.to_k), conv1x1(context, attn.to_v), attn.heads)


class SplitEinsumDualProcessor(DualIPAttnProcessor):
    """The dual decoupled ``attn2`` with heads split into einsums over (B, C, 1, S).

    ``text attention + ip_scale * (m1 * attention(person-1 tokens) + m2 * attention(person-2 tokens))``, exactly
    :meth:`DualIPAttnProcessor.attend`; shares the per-person K/V modules of the processor it replaces.
    """

    @classmethod
    def from_processor(cls, proc: DualIPAttnProcessor) -> "SplitEinsumDualProcessor":
        new = cls(proc.hidden_size, proc.cross_attention_dim, proc.num_text_tokens, proc.num_id_tokens, proc.scale)
        for name in ("to_k_ip1", "to_v_ip1", "to_k_ip2", "to_v_ip2"):
            setattr(new, name, getattr(proc, name))
        return new.train(proc.training)

    def __call__(self, attn: Any, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None, temb: torch.Tensor | None = None,
                 region_mask: torch.Tensor | None = None, ip_scale: torch.Tensor | float | None = None,
                 attn_store: list | None = None) -> torch.Tensor:
        if attn_store is not None:  # cascade stage 1 (a torch-only path): the original maths records the maps
            return super().__call__(attn, hidden_states, encoder_hidden_states, attention_mask, temb, region_mask,
                                    ip_scale, attn_store)

        def core(attn: Any, query: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
            return self.attend_bc1s(attn, query, context, region_mask, ip_scale)

        return _forward_bc1s(attn, hidden_states, encoder_hidden_states, core)

    def attend_bc1s(self, attn: Any, query: torch.Tensor, context: torch.Tensor, region_mask: torch.Tensor | None,
                    ip_scale: torch.Tensor | float | None) -> torch.Tensor:
        """``query [B,C,1,S]``, ``context [B,Cc,1,T]`` (text | person 1 | person 2) -> ``[B,C,1,S]``."""
        t, k, heads = self.num_text_tokens, self.num_id_tokens, attn.heads
        text, id1, id2 = context[..., :t], context[..., t:t + k], context[..., t + k:t + 2 * k]
        out = split_einsum_attention(query, conv1x1(text, attn.to_k), conv1x1(text, attn.to_v), heads)
        ip1 = split_einsum_attention(query, conv1x1(id1, self.to_k_ip1), conv1x1(id1, self.to_v_ip1), heads)
        ip2 = split_einsum_attention(query, conv1x1(id2, self.to_k_ip2), conv1x1(id2, self.to_v_ip2), heads)
        if region_mask is not None:
            m = _region_bc1s(region_mask, ip1.shape[-1], ip1.dtype)
            ip1 = ip1 * m[:, 0:1]
            ip2 = ip2 * m[:, 1:2]
        scale = self.scale if ip_scale is None else ip_scale
        if isinstance(scale, torch.Tensor):
            scale = scale.to(out.dtype).reshape(-1, 1, 1, 1)
        return out + scale * (ip1 + ip2)


# ------------------------------------------------------------------------------------------------ swapping


def _split_processor(proc: nn.Module) -> nn.Module:
    if isinstance(proc, (SplitEinsumDualProcessor, SplitEinsumSelfAttnProcessor)):
        return proc
    if isinstance(proc, DualIPAttnProcessor):
        return SplitEinsumDualProcessor.from_processor(proc)
    if isinstance(proc, SelfAttnProcessor):
        return SplitEinsumSelfAttnProcessor()
    raise DHumanDiffError(f"split_einsum attention knows DHumanDiff's processors, not {type(proc).__name__}; "
                          f"export with attention='original'")


def _unets(module: nn.Module) -> list[nn.Module]:
    """Every diffusers UNet (anything with ``attn_processors`` / ``set_attn_processor``) inside ``module``."""
    return [m for m in module.modules() if hasattr(m, "set_attn_processor") and hasattr(m, "attn_processors")]


def check_attention(attention: str) -> str:
    if attention not in ATTENTIONS:
        raise DHumanDiffError(f"unknown attention {attention!r}; choose one of {', '.join(ATTENTIONS)}")
    return attention


@contextlib.contextmanager
def attention_implementation(module: nn.Module, attention: str) -> Iterator[nn.Module]:
    """Run the block with every UNet inside ``module`` using ``attention``; the original processors come back
    afterwards (also on error). ``"original"`` changes nothing. Weights are shared, never copied."""
    check_attention(attention)
    if attention == "original":
        yield module
        return
    saved = []
    try:
        for unet in _unets(module):
            procs = dict(unet.attn_processors)
            saved.append((unet, procs))
            unet.set_attn_processor({name: _split_processor(p) for name, p in procs.items()})
        yield module
    finally:
        for unet, procs in reversed(saved):
            unet.set_attn_processor(procs)


def with_attention(module: nn.Module, attention: str) -> nn.Module:
    """A deep copy of ``module`` whose UNets use ``attention`` (the caller's module is left as it was)."""
    check_attention(attention)
    out = copy.deepcopy(module)
    if attention == "split_einsum":
        for unet in _unets(out):
            unet.set_attn_processor({name: _split_processor(p) for name, p in unet.attn_processors.items()})
    return out


def count_processors(module: nn.Module) -> dict[str, int]:
    """``{processor class name: count}`` over every UNet in ``module`` (what a trace will see)."""
    counts: dict[str, int] = {}
    for unet in _unets(module):
        for proc in unet.attn_processors.values():
            counts[type(proc).__name__] = counts.get(type(proc).__name__, 0) + 1
    return counts
