"""Distilling a tiny VAE (TAESD-style ``AutoencoderTiny``) from a model's own VAE.

The decoder is the part that matters for speed (the full decoder dominates a few-step image at sd15 scale), so it
learns to reproduce the *full decoder's output* from the same latents (L1 + MSE), not the training photo: the
measure of success is how close the cheap decoder's image is to what the full decoder would have shown. The tiny
encoder learns the full encoder's scaled mean latents (MSE), so the pair is a complete TAESD-like stand-in.

Held-out images give the report: PSNR of the tiny decoder against the full decoder (the fidelity cost), and of
each decoder against the photo itself.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from ..model.dhumandiff_model import DHumanDiff
from ..model.tiny_decoder import build_tiny_autoencoder


@dataclass
class TinyVaeConfig:
    steps: int = 2000
    batch_size: int = 32
    lr: float = 1e-3
    encoder_weight: float = 1.0
    max_minutes: float | None = None
    seed: int = 0


def psnr_db(a: torch.Tensor, b: torch.Tensor) -> float:
    """PSNR of two images in [-1, 1] (peak-to-peak 2)."""
    mse = F.mse_loss(a.clamp(-1, 1), b.clamp(-1, 1)).item()
    return 10 * math.log10(4.0 / max(mse, 1e-12))


@torch.no_grad()
def teacher_pairs(teacher: DHumanDiff, images: torch.Tensor, chunk: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """The full VAE's mean latents (unscaled) and its decoder's images for ``images`` [N,3,H,W] in [-1, 1]."""
    vae = teacher.vae.eval()
    latents, decoded = [], []
    for i in range(0, images.shape[0], chunk):
        z = vae.encode(images[i:i + chunk]).latent_dist.mean
        latents.append(z)
        decoded.append(vae.decode(z).sample.clamp(-1, 1))
    return torch.cat(latents), torch.cat(decoded)


class TinyVaeDistiller:
    """Trains ``teacher.vae_tiny`` (a fresh ``AutoencoderTiny`` shaped for the teacher's VAE)."""

    def __init__(self, teacher: DHumanDiff, images: torch.Tensor, config: TinyVaeConfig,
                 held_out: torch.Tensor | None = None) -> None:
        self.teacher = teacher
        self.cfg = config
        self.images = images
        self.held_out = held_out
        torch.manual_seed(config.seed)
        self.student = build_tiny_autoencoder(teacher.vae.config)
        self.scale = float(teacher.vae.config.scaling_factor)
        self.latents, self.targets = teacher_pairs(teacher, images)

    def train(self, progress: Callable[[int, int, dict], None] | None = None) -> dict:
        cfg = self.cfg
        g = torch.Generator().manual_seed(cfg.seed)
        opt = torch.optim.AdamW(self.student.parameters(), lr=cfg.lr, weight_decay=0.0)
        warm = max(1, cfg.steps // 20)  # linear warm-up over 5 %, then cosine to zero (any step count)
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda i: min(1.0, (i + 1) / warm) * 0.5 * (1 + math.cos(math.pi * min(1.0, i / cfg.steps))))
        self.student.train()
        t0 = time.time()
        step, loss_v = 0, float("nan")
        for step in range(1, cfg.steps + 1):
            idx = torch.randint(0, self.images.shape[0], (cfg.batch_size,), generator=g)
            z = self.latents[idx] * self.scale
            dec = self.student.decode(z).sample
            target = self.targets[idx]
            loss = F.l1_loss(dec, target) + F.mse_loss(dec, target)
            if cfg.encoder_weight > 0:
                few = max(1, cfg.batch_size // 4)  # the encoder is not on the speed path: a quarter batch is enough
                enc = self.student.encode(self.images[idx[:few]]).latents
                loss = loss + cfg.encoder_weight * F.mse_loss(enc, z[:few])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            loss_v = float(loss.detach())
            if progress is not None:
                progress(step, cfg.steps, {"loss": loss_v})
            if cfg.max_minutes is not None and (time.time() - t0) / 60 >= cfg.max_minutes:
                break
        self.student.eval()
        report = {"steps_done": step, "loss": loss_v, "minutes": (time.time() - t0) / 60, "config": asdict(cfg),
                  "decoder_params": sum(p.numel() for p in self.student.decoder.parameters()),
                  "full_decoder_params": sum(p.numel() for p in self.teacher.vae.decoder.parameters())
                  + sum(p.numel() for p in self.teacher.vae.post_quant_conv.parameters())}
        if self.held_out is not None:
            report.update(self.fidelity(self.held_out))
        return report

    @torch.no_grad()
    def fidelity(self, images: torch.Tensor) -> dict:
        """PSNR (dB) of the tiny decoder vs the full decoder, and of each vs the photos, on ``images``."""
        latents, full = teacher_pairs(self.teacher, images)
        tiny = torch.cat([self.student.decode(latents[i:i + 64] * self.scale).sample.clamp(-1, 1)
                          for i in range(0, latents.shape[0], 64)])
        enc = torch.cat([self.student.encode(images[i:i + 64]).latents for i in range(0, images.shape[0], 64)])
        return {"held_out_images": int(images.shape[0]),
                "psnr_tiny_vs_full_decoder_db": psnr_db(tiny, full),
                "psnr_full_decoder_vs_photo_db": psnr_db(full, images),
                "psnr_tiny_decoder_vs_photo_db": psnr_db(tiny, images),
                "encoder_latent_mse": F.mse_loss(enc, latents * self.scale).item()}

    def student_model(self) -> DHumanDiff:
        """The teacher with the tiny VAE attached and selected (``defaults["vae_decoder"] = "tiny"``)."""
        self.teacher.vae_tiny = self.student
        self.teacher.config.defaults = {**self.teacher.config.defaults, "vae_decoder": "tiny"}
        return self.teacher
