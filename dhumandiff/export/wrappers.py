"""Flat-tensor modules around each DHumanDiff component: what every exporter traces.

Exporters (ONNX, OpenVINO, TorchScript, Core ML) need a module whose ``forward`` takes and returns plain tensors
in a fixed order. The model's own callables take optional arguments, return diffusers output objects or stash
state on modules, so each component gets a thin wrapper here. The wrappers call the *same* model methods the
reference sampler calls (``identity_unet``, ``subject_text``, ``plain_text_2``, ``image_features``, the
resampler and ProjPlus), so what is exported is what was tested; they own no maths of their own.

Input/output order is the bundle contract's order (``specs.py`` names them).
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from ..model.dhumandiff_model import DHumanDiff
from ..model.tiny_decoder import run_decoder


class IdentityEncoderWrapper(nn.Module):
    """``face [B,3,112,112]`` (RGB, ``(x - 127.5) / 127.5``) -> L2-normalised ``embedding [B,512]``.

    The normalisation lives in the graph because the analyzers hand the face projection unit-norm embeddings
    (``FaceAnalyzer.analyze_single``); a runtime that normalises again changes nothing.
    """

    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(self, face: torch.Tensor) -> torch.Tensor:
        out = self.encoder(face)
        if isinstance(out, (tuple, list)):
            out = out[0]
        return F.normalize(out.reshape(out.shape[0], -1).float(), dim=-1)


class ImageEncoderWrapper(nn.Module):
    """``pixel_values [B,3,S,S]`` (CLIP-normalised) -> ``image_embeds [B,T,H]``: CLIP's penultimate hidden states."""

    def __init__(self, model: DHumanDiff) -> None:
        super().__init__()
        self.image_encoder = model.image_encoder

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        # The model's own method, called on this wrapper (it only reads ``self.image_encoder``): the hidden-state
        # index stays defined in one place, and no reference to the whole model hides inside the graph module.
        return DHumanDiff.image_features(self, pixel_values)  # type: ignore[arg-type]


class FaceProjectionWrapper(nn.Module):
    """``(image_embeds [B,T,H], id_embedding [B,512])`` -> ``(ip_tokens [B,16,C], face_token [B,1,F])``.

    Both projections of one person in one graph: they read the same CLIP features, and the runtime calls this
    once per person.
    """

    def __init__(self, model: DHumanDiff) -> None:
        super().__init__()
        self.resampler = model.resampler
        self.face_proj = model.face_proj

    def forward(self, image_embeds: torch.Tensor, id_embedding: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.resampler(image_embeds), self.face_proj(id_embedding, image_embeds)


class TextEncoderWrapper(nn.Module):
    """``(input_ids [B,77] int64, face_tokens [B,2,F], subject_positions [B,2] int64)`` -> ``prompt_embeds``.

    The subject-augmented encoder: face tokens fused into the person words, ``-1`` positions disable fusion. A
    recipe whose negative prompt reads another layer (the official one: last layer for the prompt, penultimate for
    the negative prompt) gets a second output, ``negative_prompt_embeds``, from the same encoder pass.
    """

    def __init__(self, model: DHumanDiff) -> None:
        super().__init__()
        self.subject_text = model.subject_text
        recipe = model.config.conditioning
        self.layers = ((recipe.text_layer, recipe.uncond_text_layer) if recipe.two_text_layers
                       else (recipe.text_layer,))

    def forward(self, input_ids: torch.Tensor, face_tokens: torch.Tensor,
                subject_positions: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        out = self.subject_text.layers(input_ids, face_tokens, subject_positions, self.layers)
        return out if len(out) > 1 else out[0]


class TextEncoder2Wrapper(nn.Module):
    """SDXL's second encoder: ``input_ids`` -> ``(prompt_embeds [B,77,D2], pooled_prompt_embeds [B,D2])``."""

    def __init__(self, model: DHumanDiff) -> None:
        super().__init__()
        if model.plain_text_2 is None:
            raise ValueError("this model has no second text encoder (only xl backbones do)")
        self.plain_text_2 = model.plain_text_2

    def forward(self, input_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        hidden, pooled = self.plain_text_2(input_ids)
        return hidden, pooled


class UNetWrapper(nn.Module):
    """The identity UNet with every input positional (SDXL adds ``text_embeds``, ``time_ids``) -> ``noise_pred``."""

    def __init__(self, model: DHumanDiff) -> None:
        super().__init__()
        self.identity_unet = model.identity_unet

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor, encoder_hidden_states: torch.Tensor,
                ip_tokens: torch.Tensor, region_mask: torch.Tensor, ip_scale: torch.Tensor,
                text_embeds: torch.Tensor | None = None, time_ids: torch.Tensor | None = None) -> torch.Tensor:
        return self.identity_unet(sample, timestep, encoder_hidden_states, ip_tokens, region_mask, ip_scale,
                                  text_embeds, time_ids)


class VaeDecoderWrapper(nn.Module):
    """``latent_sample`` (= latents / scaling_factor) -> ``sample [B,3,H,W]`` in about [-1, 1], unclamped.

    Holds only the decoder the model is set to use (``model.active_decoder()``): the full VAE, or the distilled
    tiny one. ``decoder`` + ``input_scale`` instead of a model: a decoder alone (a benchmark's randomly
    initialised sd15-size tiny decoder).
    """

    def __init__(self, model: DHumanDiff | None = None, *, decoder: nn.Module | None = None,
                 input_scale: float = 1.0) -> None:
        super().__init__()
        if model is not None:
            decoder, input_scale = model.active_decoder()
        self.vae, self.scale = decoder, float(input_scale)

    def forward(self, latent_sample: torch.Tensor) -> torch.Tensor:
        return run_decoder(self.vae, self.scale, latent_sample)


class CastWrapper(nn.Module):
    """Runs ``inner`` in ``dtype`` while keeping float32 inputs and outputs (TorchScript fp16 bundles).

    Same idea as ONNX's ``keep_io_types``: the bundle's interface stays float32 whatever the compute precision,
    so a runtime never has to know which graphs were halved.
    """

    def __init__(self, inner: nn.Module, dtype: torch.dtype) -> None:
        super().__init__()
        # A copy: halving in place would also halve the caller's model, which the validation still needs in fp32.
        self.inner = copy.deepcopy(inner).to(dtype)
        self.dtype = dtype

    def forward(self, *args: torch.Tensor):
        cast = [a.to(self.dtype) if a.is_floating_point() else a for a in args]
        out = self.inner(*cast)
        if isinstance(out, tuple):
            return tuple(o.float() for o in out)
        return out.float()
