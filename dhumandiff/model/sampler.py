"""The PyTorch reference sampler: DHumanDiff's two inference modes on diffusers schedulers.

* ``single``: one pass per step; each identity reaches only its own person's region (masks from the layout
  boxes). This is what the exported runtimes run too, so it is the parity reference.
* ``cascade``: the paper's quality mode. Stage 1 samples with IP scale 0.7 and, at its last step, averages the
  ID tokens' cross-attention maps, upsamples them to the latent size and keeps the top 10 % as a mask. Stage 2
  samples again from the same noise with two UNet evaluations per step (IP scale 1.0 and 0.7) mixed by that
  mask: ``eps = mask * eps_1.0 + (1 - mask) * eps_0.7``.

Initial noise is drawn with NumPy (``default_rng(seed).standard_normal``) — the same noise the torch-free
runtimes draw — so a bundle's image can be compared with the reference image pixel for pixel.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
import diffusers
from diffusers import LCMScheduler, TCDScheduler

from ..contract.recipe import Recipe
from ..contract.schedulers import SAMPLERS
from ..utils.numerics import check_finite
from ..utils.regions import region_mask
from .attention import AttentionStore
from .cascade_mask import cascade_mask
from .dhumandiff_model import DHumanDiff
from .face_inputs import FaceInput
from .tiny_decoder import run_decoder

#: ``--sampler`` name -> the diffusers scheduler class, from the one sampler registry (the NumPy runtimes' twins).
SCHEDULERS = {name: getattr(diffusers, class_name) for name, class_name in SAMPLERS.items()}
#: TCD's gamma (diffusers' ``eta``): the share of each step re-noised; the runtimes' NumPy TCD uses the same.
TCD_ETA = 0.3


@dataclass
class SamplerOutput:
    """Decoded image in [0, 1] ``[3, H, W]``, final latents, UNet passes used, and cascade's mask if any."""

    image: torch.Tensor
    latents: torch.Tensor
    unet_passes: int
    mask: torch.Tensor | None = None
    extras: dict = field(default_factory=dict)


class NoiseSource:
    """The shared noise convention of the reference and the runtimes: ONE ``np.random.default_rng(seed)`` per
    image, drawing float64 normals cast to float32 — first the initial latents, then each stochastic
    scheduler step's noise (LCM, TCD), in order."""

    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)

    def draw(self, shape: tuple[int, ...]) -> torch.Tensor:
        return torch.from_numpy(self.rng.standard_normal(shape, dtype=np.float64).astype(np.float32))


def scheduler_step(sched, eps: torch.Tensor, t, latents: torch.Tensor, noise: NoiseSource | None) -> torch.Tensor:
    """One scheduler step; LCM's and TCD's re-noising use ``noise`` (the runtimes' NumPy draw), not torch's RNG."""
    if isinstance(sched, TCDScheduler):
        out = sched.step(eps, t, latents, eta=TCD_ETA)
        idx = sched.step_index - 1
        if TCD_ETA > 0 and noise is not None and idx != len(sched.timesteps) - 1:
            prev_t = int(sched.timesteps[idx + 1])
            s = int(np.floor((1 - TCD_ETA) * prev_t))
            ratio = sched.alphas_cumprod[prev_t] / sched.alphas_cumprod[s]
            return ratio.sqrt() * out.pred_noised_sample + (1 - ratio).sqrt() * noise.draw(tuple(latents.shape))
        return out.pred_noised_sample
    out = sched.step(eps, t, latents)
    if isinstance(sched, LCMScheduler) and noise is not None:
        idx = sched.step_index - 1  # step() already advanced it
        if idx != len(sched.timesteps) - 1:
            prev_t = sched.timesteps[idx + 1]
            a_prev = sched.alphas_cumprod[prev_t]
            return a_prev.sqrt() * out.denoised + (1 - a_prev).sqrt() * noise.draw(tuple(latents.shape))
        return out.denoised
    return out.prev_sample


def make_scheduler(model: DHumanDiff, sampler: str | None = None):
    name = sampler or model.config.defaults.get("sampler", "ddim")
    cfg = {k: v for k, v in model.config.scheduler.items() if not k.startswith("_")}
    return SCHEDULERS[name].from_config(cfg)


class ReferenceSampler:
    """Samples one dual portrait from prepared faces, a tokenised prompt and person positions."""

    def __init__(self, model: DHumanDiff) -> None:
        self.model = model.eval()
        self._vae_copies: dict[tuple[int, torch.dtype], torch.nn.Module] = {}

    @torch.no_grad()
    def conditions(self, faces: tuple[FaceInput, FaceInput], input_ids: torch.Tensor, positions: torch.Tensor,
                   input_ids_2: torch.Tensor | None = None, recipe: Recipe | None = None) -> dict[str, torch.Tensor]:
        """Text context (cond, uncond), ID tokens of both persons (cond, uncond) and the pooled/time inputs, as
        the model's conditioning recipe (or ``recipe``) makes them."""
        m = self.model
        recipe = recipe or m.config.conditioning
        clip = torch.stack([torch.from_numpy(f.clip_pixels) for f in faces])
        ids = torch.stack([torch.from_numpy(f.id_embedding) for f in faces])
        check_finite("identity_encoder", {"embedding": ids}, reference=True)
        ip, face_tok = m.identity_tokens(clip, ids)             # [2,16,C], [2,1,F]
        check_finite("face_projection", {"ip_tokens": ip, "face_token": face_tok}, reference=True)
        ip_tokens = ip.reshape(1, -1, ip.shape[-1])              # [1,32,C] person 1 then person 2
        uip_tokens = m.uncond_identity_tokens(clip, recipe.uncond_id_tokens).reshape(1, -1, ip.shape[-1])
        ctx, pooled = m.encode_prompt(input_ids, face_tok[:, 0][None], positions, input_ids_2,
                                      hidden_index=recipe.text_layer)
        negative = [recipe.negative_prompt]
        uctx, upooled = m.encode_prompt(m.tokenize(negative), torch.zeros_like(face_tok[:, 0][None]),
                                        torch.full_like(positions, -1), m.tokenize_2(negative),
                                        hidden_index=recipe.uncond_text_layer)
        check_finite("text_encoder", {"prompt_embeds": ctx, "pooled_prompt_embeds": pooled,
                                      "negative_prompt_embeds": uctx}, reference=True)
        return {"ctx": ctx, "uctx": uctx, "pooled": pooled, "upooled": upooled, "ip_tokens": ip_tokens,
                "uip_tokens": uip_tokens}

    def _eps(self, latents, t, cond, mask, ip_scale, guidance, attn_store=None) -> torch.Tensor:
        m = self.model
        if guidance > 1.0:
            x = torch.cat([latents, latents])
            ctx = torch.cat([cond["uctx"], cond["ctx"]])
            ip = torch.cat([cond["uip_tokens"], cond["ip_tokens"]])
            pooled = torch.cat([cond["upooled"], cond["pooled"]]) if cond["pooled"] is not None else None
            msk = torch.cat([mask, mask]) if mask is not None else None
            tt = torch.full((2,), float(t))
            out = m.identity_unet(x, tt, ctx, ip, msk, torch.tensor([ip_scale]), pooled, m.time_ids(2),
                                  attn_store=attn_store)
            u, c = out.chunk(2)
            return u + guidance * (c - u)
        return m.identity_unet(latents, torch.full((1,), float(t)), cond["ctx"], cond["ip_tokens"], mask,
                               torch.tensor([ip_scale]), cond["pooled"], m.time_ids(1), attn_store=attn_store)

    @torch.no_grad()
    def sample(self, faces: tuple[FaceInput, FaceInput], input_ids: torch.Tensor, positions: torch.Tensor,
               boxes: np.ndarray, steps: int, seed: int, guidance: float, ip_scale: float | None = None,
               mode: str = "single", sampler: str | None = None,
               progress: Callable[[int, int], None] | None = None,
               input_ids_2: torch.Tensor | None = None, vae_precision: str | None = None,
               recipe: Recipe | None = None) -> SamplerOutput:
        """``vae_precision``: "fp16" / "fp32" decode with a VAE of that dtype; None with the model's own.
        ``recipe``: the conditioning recipe (None: the model's own, ``config.conditioning``)."""
        m = self.model
        cfg = m.config
        recipe = recipe or cfg.conditioning
        ip_scale = cfg.defaults.get("ip_scale", 1.0) if ip_scale is None else ip_scale
        h = w = cfg.latent_size
        cond = self.conditions(faces, input_ids, positions, input_ids_2, recipe)
        layout_mask = torch.from_numpy(region_mask(boxes, h, w))[None] if recipe.region_masks else None
        source = NoiseSource(seed)
        noise = source.draw((1, 4, h, w))
        per_pass = 2 if guidance > 1.0 else 1
        if mode == "single":
            latents, n = self._loop(noise, steps, cond, layout_mask, ip_scale, guidance, sampler, progress,
                                    source=source)
            return SamplerOutput(self.decode(latents, vae_precision), latents, n * per_pass)
        if mode != "cascade":
            raise ValueError(f"mode must be 'single' or 'cascade', got {mode!r}")
        total = 2 * steps
        store = AttentionStore(kind="attention-mass" if recipe.cascade_mask == "attention-mass" else "token-maps")
        stage1, n1 = self._loop(noise, steps, cond, None, 0.7, guidance, sampler,
                                (lambda i, _: progress(i, total)) if progress else None, store_last=store)
        mask = cascade_mask(store, recipe.cascade_mask, h, w, per_pass)
        sched = make_scheduler(m, sampler)
        sched.set_timesteps(steps)
        latents = noise * sched.init_noise_sigma
        for i, t in enumerate(sched.timesteps):
            x = sched.scale_model_input(latents, t)
            e_hi = self._eps(x, t, cond, None, 1.0, guidance)
            e_lo = self._eps(x, t, cond, None, 0.7, guidance)
            check_finite("unet", {"noise_pred": e_hi, "noise_pred_ip0.7": e_lo}, f" at cascade step {i + 1}",
                         reference=True)
            latents = sched.step(mask * e_hi + (1 - mask) * e_lo, t, latents).prev_sample
            if progress:
                progress(steps + i + 1, total)
        return SamplerOutput(self.decode(latents, vae_precision), latents, (n1 + 2 * steps) * per_pass, mask,
                             {"stage1_latents": stage1})

    def _loop(self, noise, steps, cond, mask, ip_scale, guidance, sampler, progress, store_last=None, source=None):
        sched = make_scheduler(self.model, sampler)
        sched.set_timesteps(steps)
        latents = noise * sched.init_noise_sigma
        for i, t in enumerate(sched.timesteps):
            x = sched.scale_model_input(latents, t)
            store = store_last if (store_last is not None and i == len(sched.timesteps) - 1) else None
            eps = self._eps(x, t, cond, mask, ip_scale, guidance, attn_store=store)
            check_finite("unet", {"noise_pred": eps}, f" at step {i + 1}", reference=True)
            latents = scheduler_step(sched, eps, t, latents, source)
            if progress:
                progress(i + 1, steps)
        return latents, len(sched.timesteps)

    def _vae_in(self, vae: torch.nn.Module, dtype: torch.dtype) -> torch.nn.Module:
        """``vae`` (the model's active decoder), or (once, cached) a copy in ``dtype``: the model itself is never
        cast."""
        if vae.dtype == dtype:
            return vae
        key = (id(vae), dtype)
        if key not in self._vae_copies:
            twin = copy.deepcopy(vae)  # .half()/.float(), not diffusers' .to(dtype), which warns on every call
            self._vae_copies[key] = twin.half() if dtype == torch.float16 else twin.float()
        return self._vae_copies[key]

    @torch.no_grad()
    def decode(self, latents: torch.Tensor, precision: str | None = None) -> torch.Tensor:
        """Latents -> image in [0, 1] ``[3, H, W]`` float32; ``precision`` "fp16"/"fp32" (None: the VAE's own).

        A NaN/Inf from the decoder raises :class:`NumericalError` (fp16 overflow: ``--vae-precision fp32``).
        """
        own = "fp16" if self.model.vae.dtype == torch.float16 else "fp32"
        precision = precision or own
        decoder, input_scale = self.model.active_decoder()
        vae = self._vae_in(decoder, torch.float16 if precision == "fp16" else torch.float32)
        latent_sample = latents / self.model.vae.config.scaling_factor  # what the exported graph is given
        img = run_decoder(vae, input_scale, latent_sample.to(vae.dtype))[0]
        check_finite("vae_decoder", {"sample": img}, f" (torch {precision} on {img.device.type})",
                     precision=precision, reference=True)
        return (img.float().clamp(-1, 1) + 1) / 2
