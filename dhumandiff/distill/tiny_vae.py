"""Distilling a tiny VAE (TAESD-style ``AutoencoderTiny``) from a model's own VAE.

The decoder is the part that matters for speed (the full decoder dominates a few-step image at sd15 scale), so it
learns to reproduce the *full decoder's output* from the same latents (L1 + MSE, faces weighted up, optionally an
identity term on the face crops), not the training photo: the measure of success is how close the cheap decoder's
image is to what the full decoder would have shown. The tiny encoder learns the full encoder's scaled mean latents
(MSE), so the pair is a complete TAESD-like stand-in.

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
from ..training.vae import psnr_db


@dataclass
class TinyVaeConfig:
    steps: int = 2000
    batch_size: int = 32
    lr: float = 1e-3
    encoder_weight: float = 1.0
    face_weight: float = 3.0        # extra loss weight inside the annotated face boxes (identity lives there)
    identity_weight: float = 0.0    # 1 - cos of the model's identity encoder on face crops, tiny vs full decoder
    init_from: str | None = None    # continue from an earlier tiny VAE (a model folder / name with vae_tiny/)
    max_minutes: float | None = None
    seed: int = 0


def face_weight_maps(face_boxes: torch.Tensor, size: int, boost: float) -> torch.Tensor:
    """Per-pixel loss weights [N,1,size,size]: 1 everywhere, ``1 + boost`` inside either face box
    (``face_boxes`` [N,2,4] normalised x0,y0,x1,y1, as the dataset gives them)."""
    grid = (torch.arange(size, dtype=torch.float32) + 0.5) / size
    ys, xs = grid[None, :, None], grid[None, None, :]
    inside = torch.zeros(face_boxes.shape[0], size, size)
    for k in range(face_boxes.shape[1]):
        b = face_boxes[:, k, :, None, None]
        inside = torch.maximum(inside, ((xs >= b[:, 0]) & (xs < b[:, 2]) & (ys >= b[:, 1]) & (ys < b[:, 3])).float())
    return (1.0 + boost * inside)[:, None]


def load_tiny_autoencoder(source: str):
    """An earlier tiny VAE: a ``vae_tiny`` folder itself, or a model (name or folder) that holds one."""
    from pathlib import Path

    from diffusers import AutoencoderTiny
    from diffusers.utils import logging as diffusers_logging

    from ..errors import CheckpointError
    from ..model.registry import resolve_model

    folder = Path(source)
    if not (folder / "config.json").is_file():
        folder = resolve_model(source) / "vae_tiny"
    if not (folder / "config.json").is_file():
        raise CheckpointError(f"{source} holds no tiny VAE (vae_tiny/); pass a folder written by "
                              f"`dhumandiff distill --method tiny-vae`")
    verbosity = diffusers_logging.get_verbosity()
    diffusers_logging.set_verbosity(diffusers_logging.ERROR)  # its own block_out_channels entry is "unexpected"
    try:
        return AutoencoderTiny.from_pretrained(folder, torch_dtype=torch.float32)
    finally:
        diffusers_logging.set_verbosity(verbosity)


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
                 held_out: torch.Tensor | None = None, weights: torch.Tensor | None = None,
                 face_boxes: torch.Tensor | None = None) -> None:
        self.teacher = teacher
        self.cfg = config
        self.images = images
        self.held_out = held_out
        self.weights = weights  # [N,1,H,W] per-pixel loss weights (face_weight_maps), or None: uniform
        self.face_boxes = face_boxes  # [N,2,4] normalised, for the identity term
        if config.identity_weight > 0 and (face_boxes is None or teacher.identity_encoder is None):
            from ..errors import SettingsError

            raise SettingsError("--identity-loss needs face boxes and a model with an identity encoder")
        torch.manual_seed(config.seed)
        self.student = (load_tiny_autoencoder(config.init_from) if config.init_from
                        else build_tiny_autoencoder(teacher.vae.config))
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
            diff = dec - self.targets[idx]
            err = diff.abs() + diff ** 2
            if self.weights is not None:
                w = self.weights[idx]
                err = err * (w / w.mean())
            loss = err.mean()
            if cfg.identity_weight > 0:
                loss = loss + cfg.identity_weight * self._identity_term(dec, idx)
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

    def _identity_term(self, dec: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """The training stage's identity loss with the full decoder's faces as the references."""
        from ..training.objectives import face_crop_grid, identity_loss

        encoder = self.teacher.identity_encoder
        boxes = self.face_boxes[idx]
        with torch.no_grad():
            full = self.targets[idx]
            crops = face_crop_grid(full.repeat_interleave(2, dim=0), boxes.reshape(-1, 4))
            ref = encoder(crops).float().reshape(full.shape[0], 2, -1)
        return identity_loss(encoder, dec, boxes, ref, torch.ones(full.shape[0], 2))

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
