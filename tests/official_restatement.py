"""An independent re-statement of the official DHumanDiff inference computation (annaoooo/DHumanDiff ``src/``,
commit 4463aae), written for the equivalence test from reading that code: it shares no code with
``dhumandiff.model`` and loads the release files (SDXL folder + ``ip_adapter_ca.pt``, ``face_projection.pt``,
``face_projection2.pt``, ``mapping.pt``) the way the official code does, into modules with the official state-dict
layout. Sizes are read from the tensors (the official classes hard-code SDXL's; the tests use a test-sized
backbone). The SDXL text encoding, the scheduler and the single-stage loop are diffusers' own
``StableDiffusionXLPipeline``, as in the official code.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
from torch import nn
from transformers import AutoTokenizer, CLIPTextModel, CLIPTextModelWithProjection, CLIPVisionModel
from transformers.modeling_attn_mask_utils import _create_4d_causal_attention_mask

NEGATIVE = "monochrome, lowres, bad anatomy, worst quality, low quality"


def _load(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)


# ------------------------------------------------------------------ resampler.py / functions.py / mapping.py
def _feed_forward(dim: int, inner: int) -> nn.Sequential:
    return nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, inner, bias=False), nn.GELU(),
                         nn.Linear(inner, dim, bias=False))


class _PerceiverAttention(nn.Module):
    def __init__(self, dim: int, dim_head: int, heads: int) -> None:
        super().__init__()
        self.dim_head, self.heads = dim_head, heads
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.to_q = nn.Linear(dim, dim_head * heads, bias=False)
        self.to_kv = nn.Linear(dim, dim_head * heads * 2, bias=False)
        self.to_out = nn.Linear(dim_head * heads, dim, bias=False)

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        return x.view(b, n, self.heads, -1).transpose(1, 2).reshape(b, self.heads, n, -1)

    def forward(self, x: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        x, latents = self.norm1(x), self.norm2(latents)
        b, n, _ = latents.shape
        q = self.to_q(latents)
        k, v = self.to_kv(torch.cat((x, latents), dim=-2)).chunk(2, dim=-1)
        q, k, v = self._split(q), self._split(k), self._split(v)
        scale = 1 / math.sqrt(math.sqrt(self.dim_head))
        weight = torch.softmax(((q * scale) @ (k * scale).transpose(-2, -1)).float(), dim=-1)
        return self.to_out((weight @ v).permute(0, 2, 1, 3).reshape(b, n, -1))


def _layers(state: dict, prefix: str, dim: int) -> nn.ModuleList:
    depth = len({k[len(prefix):].split(".")[1] for k in state if k.startswith(prefix + "layers.")})
    inner = state[f"{prefix}layers.0.0.to_q.weight"].shape[0]
    ff = state[f"{prefix}layers.0.1.1.weight"].shape[0]
    return nn.ModuleList(nn.ModuleList([_PerceiverAttention(dim, 64, inner // 64), _feed_forward(dim, ff)])
                         for _ in range(depth))


class OfficialResampler(nn.Module):
    """IP-Adapter Plus's Resampler (``face_projection.pt``)."""

    def __init__(self, state: dict) -> None:
        super().__init__()
        dim = state["latents"].shape[2]
        self.latents = nn.Parameter(torch.zeros_like(state["latents"]))
        self.proj_in = nn.Linear(state["proj_in.weight"].shape[1], dim)
        self.proj_out = nn.Linear(dim, state["proj_out.weight"].shape[0])
        self.norm_out = nn.LayerNorm(state["proj_out.weight"].shape[0])
        self.layers = _layers(state, "", dim)
        self.load_state_dict(state, strict=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        latents = self.latents.repeat(x.size(0), 1, 1)
        x = self.proj_in(x)
        for attn, ff in self.layers:
            latents = attn(x, latents) + latents
            latents = ff(latents) + latents
        return self.norm_out(self.proj_out(latents))


class _FacePerceiverResampler(nn.Module):
    def __init__(self, state: dict, prefix: str, dim: int) -> None:
        super().__init__()
        self.proj_in = nn.Linear(state[prefix + "proj_in.weight"].shape[1], dim)
        self.proj_out = nn.Linear(dim, state[prefix + "proj_out.weight"].shape[0])
        self.norm_out = nn.LayerNorm(state[prefix + "proj_out.weight"].shape[0])
        self.layers = _layers(state, prefix, dim)

    def forward(self, latents: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        x = self.proj_in(x)
        for attn, ff in self.layers:
            latents = attn(x, latents) + latents
            latents = ff(latents) + latents
        return self.norm_out(self.proj_out(latents))


class OfficialProjPlus(nn.Module):
    """``functions.ProjPlusModel`` (``face_projection2.pt``), called with ``shortcut=False``."""

    def __init__(self, state: dict) -> None:
        super().__init__()
        self.dim = state["norm.weight"].shape[0]
        id_dim = state["proj.0.weight"].shape[1]
        self.proj = nn.Sequential(nn.Linear(id_dim, id_dim * 2), nn.GELU(),
                                  nn.Linear(id_dim * 2, state["proj.2.weight"].shape[0]))
        self.norm = nn.LayerNorm(self.dim)
        self.perceiver_resampler = _FacePerceiverResampler(state, "perceiver_resampler.", self.dim)
        self.load_state_dict(state, strict=True)

    def forward(self, id_embeds: torch.Tensor, clip_embeds: torch.Tensor) -> torch.Tensor:
        x = self.norm(self.proj(id_embeds).reshape(-1, self.proj[2].out_features // self.dim, self.dim))
        return self.perceiver_resampler(x, clip_embeds)


class OfficialMLP(nn.Module):
    """``mapping.MLP(use_residual=False)`` (``mapping.pt``)."""

    def __init__(self, state: dict) -> None:
        super().__init__()
        self.layernorm = nn.LayerNorm(state["layernorm.weight"].shape[0])
        self.fc1 = nn.Linear(*reversed(state["fc1.weight"].shape))
        self.fc2 = nn.Linear(*reversed(state["fc2.weight"].shape))
        self.load_state_dict(state, strict=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(self.layernorm(x))))


# ------------------------------------------------------------------ attention_processor_faceid.py
class OfficialSelfAttn(nn.Module):
    """``AttnProcessor2_0`` (an ``nn.Module`` in the official code, so it takes a slot in the ModuleList)."""

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kw):
        return _run(attn, hidden_states, encoder_hidden_states, lambda q, ctx: _sdpa(attn, q, attn.to_k(ctx),
                                                                                     attn.to_v(ctx)))


class OfficialDualCA(nn.Module):
    """``IPAttnProcessor2_0_dual_ca_worse``: text attention + scale * (person 1 + person 2), no masks; keeps the
    last call's ``query @ softmax(k_ip^T)`` maps as the official stage-1 pipeline reads them."""

    def __init__(self, hidden: int, cross: int, scale: float, num_tokens: int = 16) -> None:
        super().__init__()
        self.scale, self.num_tokens = scale, num_tokens
        self.to_k_ip1 = nn.Linear(cross, hidden, bias=False)
        self.to_v_ip1 = nn.Linear(cross, hidden, bias=False)
        self.to_k_ip2 = nn.Linear(cross, hidden, bias=False)
        self.to_v_ip2 = nn.Linear(cross, hidden, bias=False)

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kw):
        def core(query, ctx):
            end = ctx.shape[1] - 2 * self.num_tokens
            text, ip = ctx[:, :end], ctx[:, end:]
            ip1, ip2 = ip[:, :self.num_tokens], ip[:, self.num_tokens:]
            out = _sdpa(attn, query, attn.to_k(text), attn.to_v(text))
            b, heads = query.shape[0], attn.heads
            q = query.view(b, -1, heads, query.shape[-1] // heads).transpose(1, 2)
            k1 = self.to_k_ip1(ip1).view(b, -1, heads, q.shape[-1]).transpose(1, 2)
            k2 = self.to_k_ip2(ip2).view(b, -1, heads, q.shape[-1]).transpose(1, 2)
            self.attn_map1 = q @ k1.transpose(-2, -1).softmax(dim=-1)
            self.attn_map2 = q @ k2.transpose(-2, -1).softmax(dim=-1)
            o1 = _sdpa(attn, query, self.to_k_ip1(ip1), self.to_v_ip1(ip1))
            o2 = _sdpa(attn, query, self.to_k_ip2(ip2), self.to_v_ip2(ip2))
            return out + self.scale * (o1 + o2)

        return _run(attn, hidden_states, encoder_hidden_states, core)


def _sdpa(attn, query, key, value):
    b, heads = query.shape[0], attn.heads
    d = query.shape[-1] // heads
    q, k, v = (x.view(b, -1, heads, d).transpose(1, 2) for x in (query, key, value))
    return F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, -1, heads * d)


def _run(attn, hidden_states, encoder_hidden_states, core):
    residual = hidden_states
    four = hidden_states.ndim == 4
    if four:
        b, c, h, w = hidden_states.shape
        hidden_states = hidden_states.view(b, c, h * w).transpose(1, 2)
    if attn.group_norm is not None:
        hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
    query = attn.to_q(hidden_states)
    ctx = hidden_states if encoder_hidden_states is None else encoder_hidden_states
    out = attn.to_out[1](attn.to_out[0](core(query, ctx)))
    if four:
        out = out.transpose(-1, -2).reshape(b, c, h, w)
    if attn.residual_connection:
        out = out + residual
    return out / attn.rescale_output_factor


# ------------------------------------------------------------------ ip_adapter.py + the two custom pipelines
class OfficialDHumanDiff:
    """The official ``IPAdapterPlusXL_scale`` / ``_worse`` pair on one UNet (scale set per call)."""

    def __init__(self, sdxl: Path, weights: Path, image_encoder: Path) -> None:
        self.unet = UNet2DConditionModel.from_pretrained(sdxl / "unet").eval()
        procs = {}
        cross = self.unet.config.cross_attention_dim
        for name in self.unet.attn_processors:
            if name.endswith("attn1.processor"):
                procs[name] = OfficialSelfAttn()
                continue
            if name.startswith("mid_block"):
                hidden = self.unet.config.block_out_channels[-1]
            elif name.startswith("up_blocks"):
                hidden = list(reversed(self.unet.config.block_out_channels))[int(name[len("up_blocks.")])]
            else:
                hidden = self.unet.config.block_out_channels[int(name[len("down_blocks.")])]
            procs[name] = OfficialDualCA(hidden, cross, 1.0)
        self.unet.set_attn_processor(procs)
        nn.ModuleList(self.unet.attn_processors.values()).load_state_dict(_load(weights / "ip_adapter_ca.pt"),
                                                                          strict=True)
        self.pipe = StableDiffusionXLPipeline(
            vae=AutoencoderKL.from_pretrained(sdxl / "vae"), text_encoder=CLIPTextModel.from_pretrained(
                sdxl / "text_encoder"), text_encoder_2=CLIPTextModelWithProjection.from_pretrained(
                sdxl / "text_encoder_2"), tokenizer=AutoTokenizer.from_pretrained(sdxl / "tokenizer"),
            tokenizer_2=AutoTokenizer.from_pretrained(sdxl / "tokenizer_2"), unet=self.unet,
            scheduler=EulerDiscreteScheduler.from_pretrained(sdxl / "scheduler"), add_watermarker=False)
        self.pipe.set_progress_bar_config(disable=True)
        self.image_encoder = CLIPVisionModel.from_pretrained(image_encoder).eval()
        self.resampler = OfficialResampler(_load(weights / "face_projection.pt")).eval()
        self.proj_plus = OfficialProjPlus(_load(weights / "face_projection2.pt")).eval()
        self.mapping = OfficialMLP(_load(weights / "mapping.pt")).eval()

    def set_scale(self, scale: float) -> None:
        for p in self.unet.attn_processors.values():
            if isinstance(p, OfficialDualCA):
                p.scale = scale

    # get_image_embeds
    @torch.no_grad()
    def id_tokens(self, clip1: torch.Tensor, clip2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feats = lambda px: self.image_encoder(px, output_hidden_states=True).hidden_states[-2]  # noqa: E731
        cond = torch.cat([self.resampler(feats(clip1)), self.resampler(feats(clip2))], dim=1)
        uncond = torch.cat([self.resampler(feats(torch.zeros_like(clip1))),
                            self.resampler(feats(torch.zeros_like(clip2)))], dim=1)
        return cond, uncond

    # generate(): the fused CLIP-L re-encode, then the pipeline's encode_prompt with the negative prompt
    @torch.no_grad()
    def prompt_embeds(self, prompt: str, idx1: int, idx2: int, clip1, clip2, faceid1, faceid2):
        tok, te = self.pipe.tokenizer, self.pipe.text_encoder
        ids = tok([prompt], max_length=tok.model_max_length, padding="max_length", truncation=True,
                  return_tensors="pt").input_ids
        pre = te.get_input_embeddings()(ids)
        feats = lambda px: self.image_encoder(px, output_hidden_states=True).hidden_states[-2]  # noqa: E731
        f1 = self.proj_plus(faceid1, feats(clip1)).squeeze(1)
        f2 = self.proj_plus(faceid2, feats(clip2)).squeeze(1)
        hybrid = torch.cat([torch.cat([pre[:, idx1, :], f1], dim=1), torch.cat([pre[:, idx2, :], f2], dim=1)])
        person = self.mapping(hybrid)
        pre[:, idx1, :] = person[0]
        pre[:, idx2, :] = person[1]
        # model_clip.CLIPTextModel(inputs_embeds=...)[0]: embeddings, causal encoder, final LayerNorm
        tm = te.text_model
        hidden = tm.embeddings(inputs_embeds=pre)
        mask = _create_4d_causal_attention_mask(ids.shape, hidden.dtype, device=hidden.device)
        first = tm.final_layer_norm(tm.encoder(inputs_embeds=hidden, causal_attention_mask=mask).last_hidden_state)
        pe, ne, pp, npool = self.pipe.encode_prompt(prompt, num_images_per_prompt=1,
                                                    do_classifier_free_guidance=True, negative_prompt=NEGATIVE)
        pe[:, :, :first.shape[-1]] = first
        return pe, ne, pp, npool

    @torch.no_grad()
    def conditions(self, prompt, idx1, idx2, clip1, clip2, faceid1, faceid2) -> dict[str, torch.Tensor]:
        ip, uip = self.id_tokens(clip1, clip2)
        pe, ne, pp, npool = self.prompt_embeds(prompt, idx1, idx2, clip1, clip2, faceid1, faceid2)
        return {"prompt_embeds": torch.cat([pe, ip], dim=1), "negative_prompt_embeds": torch.cat([ne, uip], dim=1),
                "pooled": pp, "negative_pooled": npool, "text": pe, "negative_text": ne}

    @torch.no_grad()
    def single(self, cond: dict, noise: torch.Tensor, steps: int, scale: float, size: int,
               guidance: float = 5.0) -> torch.Tensor:
        """Stage 1 / single mode: the SDXL pipeline at IP scale ``scale``; final latents."""
        self.set_scale(scale)
        return self.pipe(prompt_embeds=cond["prompt_embeds"], negative_prompt_embeds=cond["negative_prompt_embeds"],
                         pooled_prompt_embeds=cond["pooled"], negative_pooled_prompt_embeds=cond["negative_pooled"],
                         num_inference_steps=steps, guidance_scale=guidance, height=size, width=size,
                         latents=noise.clone(), output_type="latent").images

    def stage1_mask(self, latent: int, two_person: bool = False, top: float = 90) -> np.ndarray:
        """``custom_pipelines_worse``: the last step's maps -> the uint8 ``vis_map`` with cells below the
        ``top`` percentile zeroed (``two_person``: person 2's map where the official code reads person 1's)."""
        def upscale(a):
            a = torch.mean(a, dim=0).permute(1, 0)
            side = int(np.sqrt(a.shape[1]))
            a = F.interpolate(a.view(a.shape[0], side, side).unsqueeze(0).float(), size=(latent, latent),
                              mode="bilinear", align_corners=False)[0]
            return torch.softmax(a, dim=0)

        v1, v2 = [], []
        for name, proc in self.unet.attn_processors.items():
            if "attn2" in name:
                v1.append(upscale(torch.chunk(proc.attn_map1, 2)[0].squeeze(0)))
                v2.append(upscale(torch.chunk(proc.attn_map2, 2)[0].squeeze(0)))
        m1, m2 = torch.stack(v1).mean(0), torch.stack(v2).mean(0)
        vis = (m1[0] + (m2[0] if two_person else m1[0])).cpu().numpy()
        norm = ((vis - np.min(vis)) / (np.max(vis) - np.min(vis)) * 255).astype(np.uint8)
        norm[norm < np.percentile(norm, top)] = 0
        return norm

    @torch.no_grad()
    def stage2(self, cond: dict, noise: torch.Tensor, steps: int, vis_map: np.ndarray, size: int,
               guidance: float = 5.0) -> torch.Tensor:
        """``custom_pipelines_advanced_scale``: each step the UNet at scale 1.0 and the 'worse' one at 0.7,
        mixed by the binarised stage-1 map."""
        sched = EulerDiscreteScheduler.from_config(self.pipe.scheduler.config)
        sched.set_timesteps(steps)
        latents = noise.clone() * sched.init_noise_sigma
        ctx = torch.cat([cond["negative_prompt_embeds"], cond["prompt_embeds"]])
        tid = torch.tensor([[size, size, 0, 0, size, size]], dtype=torch.float32).repeat(2, 1)
        added = {"text_embeds": torch.cat([cond["negative_pooled"], cond["pooled"]]), "time_ids": tid}
        mask = torch.tensor(vis_map, dtype=torch.float32)[None, None]
        mask[mask > 0] = 1.0
        mask = mask.repeat(1, 4, 1, 1)
        for t in sched.timesteps:
            x = sched.scale_model_input(torch.cat([latents] * 2), t)
            eps = {}
            for scale in (1.0, 0.7):
                self.set_scale(scale)
                u, c = self.unet(x, t, encoder_hidden_states=ctx, added_cond_kwargs=added).sample.chunk(2)
                eps[scale] = u + guidance * (c - u)
            latents = sched.step((1 - mask) * eps[0.7] + mask * eps[1.0], t, latents).prev_sample
        return latents
