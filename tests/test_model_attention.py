"""The dual decoupled cross-attention equals its definition, and region masks route identities."""

import math

import torch
from diffusers import UNet2DConditionModel

from dhumandiff.model.attention import DualIPAttnProcessor, SelfAttnProcessor, install_dual_processors, processor_list
from dhumandiff.model.configs import get_backbone_config


def _attend(q, k, v, heads):
    """Multi-head softmax attention written out by hand (no SDPA), as an independent reference."""
    b, n, c = q.shape
    d = c // heads
    q = q.view(b, n, heads, d).transpose(1, 2)
    k = k.view(b, -1, heads, d).transpose(1, 2)
    v = v.view(b, -1, heads, d).transpose(1, 2)
    w = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d), dim=-1)
    return (w @ v).transpose(1, 2).reshape(b, n, c)


def _unet():
    torch.manual_seed(0)
    cfg = get_backbone_config("sd15-test")
    unet = UNet2DConditionModel(**cfg.unet)
    install_dual_processors(unet, 77, 16, 1.0)
    for p in processor_list(unet).parameters():
        torch.nn.init.normal_(p, std=0.2)
    return unet


def _first_cross_attention(unet):
    for name, module in unet.named_modules():
        if name.endswith("attn2"):
            return module
    raise AssertionError("no cross-attention")


def test_dual_attention_equals_text_plus_scaled_person_attentions():
    unet = _unet()
    attn = _first_cross_attention(unet)
    proc = attn.processor
    assert isinstance(proc, DualIPAttnProcessor)
    c = proc.hidden_size
    x = torch.randn(2, 16, c)
    ctx = torch.randn(2, 77 + 32, unet.config.cross_attention_dim)
    scale = 0.7
    got = attn(x, encoder_hidden_states=ctx, ip_scale=scale)
    text, id1, id2 = ctx[:, :77], ctx[:, 77:93], ctx[:, 93:]
    q = attn.to_q(x)
    ref_text = _attend(q, attn.to_k(text), attn.to_v(text), attn.heads)
    ref_1 = _attend(q, proc.to_k_ip1(id1), proc.to_v_ip1(id1), attn.heads)
    ref_2 = _attend(q, proc.to_k_ip2(id2), proc.to_v_ip2(id2), attn.heads)
    expected = attn.to_out[0](ref_text + scale * (ref_1 + ref_2))
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    # scale 0 leaves only text attention: the identities are really switched off
    only_text = attn(x, encoder_hidden_states=ctx, ip_scale=0.0)
    torch.testing.assert_close(only_text, attn.to_out[0](ref_text), atol=1e-5, rtol=1e-5)


def test_region_masks_route_each_person_to_its_own_region():
    unet = _unet()
    attn = _first_cross_attention(unet)
    proc = attn.processor
    c = proc.hidden_size
    h = w = 4  # a 4x4 layer; masks given at 8x8 latent resolution are pooled down
    x = torch.randn(1, h * w, c)
    ctx = torch.randn(1, 109, unet.config.cross_attention_dim)
    mask = torch.zeros(1, 2, 8, 8)
    mask[:, 0, :, :4] = 1.0  # person 1: left half
    mask[:, 1, :, 4:] = 1.0  # person 2: right half
    base = attn(x, encoder_hidden_states=ctx, region_mask=mask, ip_scale=1.0)
    # Change only person 2's tokens: the left half (person 1's region) must not move.
    ctx2 = ctx.clone()
    ctx2[:, 93:] = torch.randn(1, 16, ctx.shape[-1]) * 3
    changed = attn(x, encoder_hidden_states=ctx2, region_mask=mask, ip_scale=1.0)
    diff = (changed - base).abs().sum(-1).view(h, w)
    assert diff[:, :2].max() < 1e-5, "person 2's tokens leaked into person 1's region"
    assert diff[:, 2:].min() > 1e-3, "person 2's tokens did not reach its own region"
    # and symmetrically for person 1
    ctx1 = ctx.clone()
    ctx1[:, 77:93] = torch.randn(1, 16, ctx.shape[-1]) * 3
    diff1 = (attn(x, encoder_hidden_states=ctx1, region_mask=mask, ip_scale=1.0) - base).abs().sum(-1).view(h, w)
    assert diff1[:, 2:].max() < 1e-5
    assert diff1[:, :2].min() > 1e-3


def test_processor_layout_matches_official_index_convention():
    unet = _unet()
    procs = list(unet.attn_processors.items())
    state = processor_list(unet).state_dict()
    for i, (name, proc) in enumerate(procs):
        if name.endswith("attn1.processor"):
            assert isinstance(proc, SelfAttnProcessor)
            assert not any(k.startswith(f"{i}.") for k in state)
        else:
            assert f"{i}.to_k_ip1.weight" in state and f"{i}.to_v_ip2.weight" in state
            assert state[f"{i}.to_k_ip1.weight"].shape[1] == unet.config.cross_attention_dim


def test_identity_tokens_change_the_unet_output_only_through_the_adapters():
    unet = _unet()
    x = torch.randn(1, 4, 8, 8)
    ctx = torch.randn(1, 109, unet.config.cross_attention_dim)
    ctx2 = ctx.clone()
    ctx2[:, 77:] = 0
    a = unet(x, 10, encoder_hidden_states=ctx, cross_attention_kwargs={"ip_scale": 0.0}).sample
    b = unet(x, 10, encoder_hidden_states=ctx2, cross_attention_kwargs={"ip_scale": 0.0}).sample
    torch.testing.assert_close(a, b)  # ID tokens are invisible at scale 0 (they are not text tokens)
    c = unet(x, 10, encoder_hidden_states=ctx, cross_attention_kwargs={"ip_scale": 1.0}).sample
    assert (c - a).abs().max() > 1e-4
