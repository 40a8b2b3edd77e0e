"""The distilled tiny VAE (TAESD-style, diffusers' ``AutoencoderTiny``) that can stand in for the full VAE decoder.

Why: at sd15 scale the full VAE decoder costs almost as much as a whole 4-step student (about 2.5 TFLOP at
512x512 vs ~0.14 TFLOP for a TAESD-shaped decoder), so an edge bundle needs a cheaper decoder to reach seconds per
image.
``dhumandiff distill --method tiny-vae`` trains one against a model's own VAE; the model folder keeps it under
``vae_tiny/`` (diffusers' ``AutoencoderTiny`` format, loadable with ``AutoencoderTiny.from_pretrained``) and the
model's ``defaults["vae_decoder"]`` (``"full"`` or ``"tiny"``) says which decoder sampling and export use.

Conventions follow TAESD / diffusers: the tiny encoder outputs and the tiny decoder takes *scaled* latents (the
UNet's latent space, ``z * scaling_factor``); the decoder returns an image in [-1, 1]. The project's exported
``vae_decoder`` graph keeps its own interface (``latent_sample = latents / scaling_factor``), so a bundle with the
tiny decoder runs on every runtime unchanged.
"""

from __future__ import annotations

from typing import Any

from diffusers import AutoencoderTiny

VAE_DECODERS = ("full", "tiny")
FOLDER = "vae_tiny"


def tiny_autoencoder_config(vae_config: dict[str, Any]) -> dict[str, Any]:
    """An ``AutoencoderTiny`` config matching a full VAE: same latent channels and down-sampling factor.

    The sd15-sized VAE (4 levels, x8) gets TAESD's own shape (64 channels, decoder blocks 3/3/3/1); smaller VAEs
    keep the block pattern with one level fewer per missing down-sampling, at most as wide as the VAE's first
    level (the tiny default: 32 channels).
    """
    levels = len(vae_config["block_out_channels"])
    width = min(64, int(vae_config["block_out_channels"][0]))
    return {
        "in_channels": int(vae_config.get("in_channels", 3)),
        "out_channels": int(vae_config.get("out_channels", 3)),
        "latent_channels": int(vae_config.get("latent_channels", 4)),
        "encoder_block_out_channels": [width] * levels,
        "decoder_block_out_channels": [width] * levels,
        "num_encoder_blocks": [1] + [3] * (levels - 1),
        "num_decoder_blocks": [3] * (levels - 1) + [1],
        "upsampling_scaling_factor": 2,
    }


def run_decoder(decoder: Any, input_scale: float, latent_sample: Any) -> Any:
    """``latent_sample`` (= latents / scaling_factor) through ``decoder`` -> image in about [-1, 1].

    ``input_scale`` is what the decoder wants the input multiplied by: 1 for the full VAE, the VAE's scaling
    factor for the tiny one (which takes UNet-space latents). The one place this convention lives: the model,
    its torch sampler and the exported graph all decode through here.
    """
    if input_scale != 1.0:
        latent_sample = latent_sample * input_scale
    return decoder.decode(latent_sample, return_dict=False)[0]


def build_tiny_autoencoder(vae_config: dict[str, Any]) -> AutoencoderTiny:
    """A randomly initialised tiny autoencoder shaped for ``vae_config`` (then distilled, or benchmarked)."""
    return AutoencoderTiny(**tiny_autoencoder_config(dict(vae_config)))
