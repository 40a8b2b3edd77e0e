"""Random-weight models the tests build themselves: a tiny model with an identity encoder, and an official-format
DHumanDiff release (SDXL folder + the four official files) at test size. Shared by several test modules."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from diffusers.models.attention_processor import AttnProcessor2_0
from torch import nn

from dhumandiff.model.dhumandiff_model import DHumanDiff
from dhumandiff.model.official import export_official

WORDS = ["a", "photo", "of", "man", "woman", "and", "on", "the", "beach"]


class SmallFaceNet(nn.Module):
    """A real (randomly initialised) 112x112 -> 512 face encoder, for when the tiny world's is not available."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 4, 4), nn.GELU(), nn.Conv2d(8, 16, 4, 4), nn.GELU())
        self.fc = nn.Linear(16 * 7 * 7, 512)

    def forward(self, face: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(face).flatten(1))


def identity_encoder() -> nn.Module:
    try:
        from dhumandiff.model.faces.world import WorldIdentityEncoder
    except ImportError:
        return SmallFaceNet()
    return WorldIdentityEncoder()


def make_tiny_model(seed: int = 0) -> DHumanDiff:
    """A random-weight tiny model with an identity encoder (what a trained embedded tiny model ships)."""
    torch.manual_seed(seed)
    model = DHumanDiff.from_backbone("tiny", words=WORDS, seed=seed)
    model.identity_encoder = identity_encoder()
    return model.eval()


OFFICIAL_WORDS = ["a", "man", "and", "woman", "on", "the", "beach"]


def official_release(tmp: Path) -> tuple[Path, Path, DHumanDiff]:
    """An SDXL-layout folder and the four official files, at test size, from a random xl-test model."""
    model = DHumanDiff.from_backbone("xl-test", words=OFFICIAL_WORDS, seed=1)
    for p in model.parameters():
        p.data.normal_(0, 0.05)
    sdxl, weights = tmp / "sdxl", tmp / "weights"
    procs = dict(model.unet.attn_processors)
    model.unet.set_attn_processor(AttnProcessor2_0())
    model.unet.save_pretrained(sdxl / "unet")
    model.unet.set_attn_processor(procs)
    model.vae.save_pretrained(sdxl / "vae")
    model.text_encoder.save_pretrained(sdxl / "text_encoder")
    model.text_encoder_2.save_pretrained(sdxl / "text_encoder_2")
    model.tokenizer.save_pretrained(sdxl / "tokenizer")
    model.tokenizer_2.save_pretrained(sdxl / "tokenizer_2")
    model.image_encoder.save_pretrained(weights / "image_encoder")
    (sdxl / "scheduler").mkdir()
    (sdxl / "scheduler" / "scheduler_config.json").write_text(json.dumps(SDXL_SCHEDULER))
    export_official(model, weights)
    return sdxl, weights, model


#: stable-diffusion-xl-base-1.0's scheduler/scheduler_config.json (what the official pipeline samples with).
SDXL_SCHEDULER = {
    "_class_name": "EulerDiscreteScheduler", "_diffusers_version": "0.19.0.dev0", "beta_end": 0.012,
    "beta_schedule": "scaled_linear", "beta_start": 0.00085, "clip_sample": False, "interpolation_type": "linear",
    "num_train_timesteps": 1000, "prediction_type": "epsilon", "sample_max_value": 1.0, "set_alpha_to_one": False,
    "skip_prk_steps": True, "steps_offset": 1, "timestep_spacing": "leading", "trained_betas": None,
    "use_karras_sigmas": False,
}
