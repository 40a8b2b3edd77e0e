"""Training the tiny backbone's VAE (64x64 RGB -> 16x16x4 latents) on the synthetic world's images.

Small and quick on purpose (a few minutes on 2 CPU cores): an L1 + MSE reconstruction objective with a small KL
weight, then the latent ``scaling_factor`` is set from the latents' std, as Stable Diffusion's VAEs are.
"""

from __future__ import annotations

import math
import time
from typing import Callable

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL

from ..contract import metrics


#: ``10 log10(4 / 1e-12)``: the PSNR of an MSE of 1e-12 or less (what this module always reported for a match).
_PSNR_CAP_DB = 10 * math.log10(4.0 / 1e-12)


def psnr_db(images: torch.Tensor, reference: torch.Tensor) -> float:
    """PSNR (dB) of images in [-1, 1] (clamped; peak-to-peak 2) against ``reference``, at most ~126 dB.

    :func:`dhumandiff.contract.metrics.psnr_db` on the tensors' values (float64 there, so it agrees with the former
    float32 ``F.mse_loss`` form to float32 precision).
    """
    def values(x: torch.Tensor):
        return x.detach().clamp(-1, 1).float().cpu().numpy()

    return metrics.psnr_db(values(reference), values(images), peak=2.0, cap=_PSNR_CAP_DB)


def train_vae(vae: AutoencoderKL, images: torch.Tensor, steps: int, batch: int = 32, lr: float = 1e-3,
              kl_weight: float = 1e-6, seed: int = 0, progress: Callable[[int, float], None] | None = None) -> dict:
    """Train ``vae`` in place on ``images`` [N,3,H,W] in [-1,1]; returns metrics incl. the scaling factor."""
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(vae.parameters(), lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.05)
    vae.train()
    t0 = time.time()
    loss_v = 0.0
    for step in range(steps):
        idx = torch.randint(0, images.shape[0], (batch,), generator=g)
        x = images[idx]
        post = vae.encode(x).latent_dist
        z = post.sample(generator=g)
        rec = vae.decode(z).sample
        loss = F.l1_loss(rec, x) + F.mse_loss(rec, x) + kl_weight * post.kl().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        loss_v = float(loss.detach())
        if progress is not None:
            progress(step + 1, loss_v)
    vae.eval()
    with torch.no_grad():
        sample = images[: min(512, images.shape[0])]
        z = torch.cat([vae.encode(sample[i:i + 64]).latent_dist.mean for i in range(0, sample.shape[0], 64)])
        rec = torch.cat([vae.decode(z[i:i + 64]).sample for i in range(0, z.shape[0], 64)])
        psnr = psnr_db(rec, sample)
        scaling = float(1.0 / z.std())
    vae.register_to_config(scaling_factor=scaling)
    return {"vae_loss": loss_v, "vae_psnr_db": psnr, "scaling_factor": scaling, "vae_minutes": (time.time() - t0) / 60}
