"""What to export, as data: one :class:`ComponentSpec` per bundle component (optimum's export-config idea).

A spec names the graph's interface (input/output names in the bundle contract's order), builds the flat-tensor
wrapper, fabricates example inputs from the model's own config, declares which axes become dynamic under
``--dynamic``, how close each precision must come to torch fp32, and what stays fp32 in an fp16 export. The
export loop (``bundle.py``), every exporter and the parity checker read these specs, so a new component is a
new spec, not a new code path.

Shapes are static by default (tiny at 64x64, sd15 at 512, xl at 1024: the backbone's ``image_size``): fixed
shapes let every runtime plan memory once and are what Core ML and NPUs need.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Callable, Mapping

import torch
from torch import nn

from ..contract.bundle import component_io
from ..contract.recipe import NEGATIVE_TEXT_OUTPUT
from ..errors import DHumanDiffError
from ..model.dhumandiff_model import DHumanDiff
from ..utils.regions import default_boxes, region_mask
from .validate import Tolerance
from .wrappers import (FaceProjectionWrapper, IdentityEncoderWrapper, ImageEncoderWrapper, TextEncoder2Wrapper,
                       TextEncoderWrapper, UNetWrapper, VaeDecoderWrapper)

PRECISIONS = ("fp32", "fp16")

#: Normalisations whose mean/variance reductions lose too much in fp16; they stay fp32 inside fp16 graphs
#: (opset 17 exports LayerNorm as LayerNormalization and GroupNorm through InstanceNormalization).
NORM_OPS = ("LayerNormalization", "InstanceNormalization", "GroupNormalization")

#: Per-component gates. fp32 exports must match torch to about float32 rounding. fp16 is judged by direction
#: (cosine) and signal-to-noise (PSNR); its ``atol`` only catches gross errors (0.1 on O(1) activations).
DEFAULT_TOLERANCES: dict[str, Tolerance] = {
    "fp32": Tolerance(atol=1e-4, min_cosine=0.99999, min_psnr_db=60.0),
    "fp16": Tolerance(atol=0.1, min_cosine=0.999, min_psnr_db=30.0),
}

#: End-to-end gates written into every bundle (``budget``) and checked by ``dhumandiff parity``: PSNR of the
#: decoded image against the torch fp32 image with the same noise (Apple's ml-stable-diffusion fails a
#: conversion under 35 dB), and cosine of each generated face's embedding against the reference's faces.
END_TO_END_BUDGETS: dict[str, dict[str, float]] = {
    "fp32": {"end_to_end_psnr_db": 40.0, "identity_min_cosine": 0.99},
    "fp16": {"end_to_end_psnr_db": 35.0, "identity_min_cosine": 0.95},
}

Inputs = dict[str, torch.Tensor]


@dataclass(frozen=True)
class ComponentSpec:
    """One exported graph of a bundle.

    ``dummy_inputs(model, batch, generator)`` returns the example inputs in ``inputs`` order; ``batch`` only
    matters for the UNet (2 = CFG rows, 1 = CFG-free student). ``dynamic_axes`` (ONNX style,
    ``{name: {axis: symbol}}``) apply only to ``--dynamic`` exports. ``fp16_keep_fp32`` keeps the whole graph
    fp32 in fp16 bundles (the VAE decoder overflows fp16); ``fp16_op_block_list`` keeps those op types fp32.
    """

    name: str
    build: Callable[[DHumanDiff], nn.Module]
    inputs: Callable[[DHumanDiff], tuple[str, ...]]
    outputs: tuple[str, ...]
    dummy_inputs: Callable[[DHumanDiff, int, torch.Generator], Inputs]
    applies: Callable[[DHumanDiff], bool] = lambda model: True
    dynamic_axes: Mapping[str, Mapping[int, str]] = field(default_factory=dict)
    tolerances: Mapping[str, Tolerance] = field(default_factory=lambda: dict(DEFAULT_TOLERANCES))
    fp16_keep_fp32: bool = False
    fp16_op_block_list: tuple[str, ...] = NORM_OPS
    extra_outputs: Callable[[DHumanDiff], tuple[str, ...]] = lambda model: ()

    def input_names(self, model: DHumanDiff) -> tuple[str, ...]:
        return self.inputs(model)

    def for_model(self, model: DHumanDiff) -> "ComponentSpec":
        """This spec with ``model``'s optional outputs appended (the text encoder's negative-prompt layer for a
        two-layer recipe): every exporter then reads ``outputs`` as that model's graph has them."""
        extra = self.extra_outputs(model)
        return dataclasses.replace(self, outputs=self.outputs + extra) if extra else self

    def tolerance(self, precision: str) -> Tolerance:
        if precision not in self.tolerances:
            raise DHumanDiffError(f"no {precision} tolerance for {self.name}; choose one of "
                                  f"{', '.join(self.tolerances)}")
        return self.tolerances[precision]

    def example(self, model: DHumanDiff, batch: int = 1, seed: int = 0) -> Inputs:
        """Seeded example inputs: the same seed gives the same tensors on every machine (CPU generator)."""
        gen = torch.Generator().manual_seed(seed)
        inputs = self.dummy_inputs(model, batch, gen)
        names = self.input_names(model)
        if tuple(inputs) != names:
            raise AssertionError(f"{self.name}: dummy inputs {tuple(inputs)} do not follow the input order {names}")
        return inputs

    def axes(self, model: DHumanDiff, dynamic: bool) -> dict[str, dict[int, str]]:
        """Dynamic axes of this model's graph (none unless ``dynamic``), restricted to its actual I/O names."""
        if not dynamic:
            return {}
        names = set(self.input_names(model)) | set(self.outputs)
        return {k: dict(v) for k, v in self.dynamic_axes.items() if k in names}

    def graph_precision(self, precision: str) -> str:
        """The precision this component is actually stored in within a ``precision`` bundle."""
        return "fp32" if precision == "fp16" and self.fp16_keep_fp32 else precision


# --------------------------------------------------------------------------------------- sizes from config


def unet_batch(model: DHumanDiff) -> int:
    """2 when the model samples with classifier-free guidance (uncond row, cond row), 1 for CFG-free students."""
    d = model.config.defaults
    cfg = d.get("cfg", float(d.get("guidance_scale", 5.0)) > 1.0)
    return 2 if cfg else 1


def latent_hw(model: DHumanDiff) -> tuple[int, int]:
    s = model.config.latent_size
    return s, s


def clip_tokens(model: DHumanDiff) -> tuple[int, int]:
    """``(T, H)`` of the CLIP image features: patches + class token, hidden size."""
    c = model.image_encoder.config
    return (c.image_size // c.patch_size) ** 2 + 1, c.hidden_size


def face_token_dim(model: DHumanDiff) -> int:
    return int(model.face_proj.config.output_dims)


def context_dim(model: DHumanDiff) -> int:
    return int(model.unet.config.cross_attention_dim)


def id_token_dim(model: DHumanDiff) -> int:
    return int(model.resampler.config.output_dims)


def pooled_dim(model: DHumanDiff) -> int:
    return int(model.text_encoder_2.config.projection_dim)


def _vocab_ids(model: DHumanDiff, gen: torch.Generator, words: int = 8) -> torch.Tensor:
    """``[1, 77]`` ids shaped like a real prompt: BOS, a few word ids, EOS, then padding."""
    tok = model.tokenizer
    bos, eos = int(tok.bos_token_id), int(tok.eos_token_id)
    pad = int(tok.pad_token_id if tok.pad_token_id is not None else eos)
    vocab = int(model.text_encoder.config.vocab_size)
    body = torch.randint(3, max(vocab - 1, 4), (words,), generator=gen)
    ids = torch.full((1, 77), pad, dtype=torch.int64)
    ids[0, 0] = bos
    ids[0, 1:1 + words] = body
    ids[0, 1 + words] = eos
    return ids


def _randn(gen: torch.Generator, *shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=gen)


# ------------------------------------------------------------------------------------------ dummy inputs


def _identity_inputs(model: DHumanDiff, batch: int, gen: torch.Generator) -> Inputs:
    s = model.config.face_size
    return {"face": torch.rand(1, 3, s, s, generator=gen) * 2 - 1}


def _image_inputs(model: DHumanDiff, batch: int, gen: torch.Generator) -> Inputs:
    s = model.config.clip_size
    return {"pixel_values": _randn(gen, 1, 3, s, s)}


def _face_projection_inputs(model: DHumanDiff, batch: int, gen: torch.Generator) -> Inputs:
    t, h = clip_tokens(model)
    emb = _randn(gen, 1, int(model.face_proj.config.id_embeddings_dim))
    return {"image_embeds": _randn(gen, 1, t, h), "id_embedding": emb / emb.norm(dim=-1, keepdim=True)}


def _text_inputs(model: DHumanDiff, batch: int, gen: torch.Generator) -> Inputs:
    return {"input_ids": _vocab_ids(model, gen), "face_tokens": _randn(gen, 1, 2, face_token_dim(model)),
            "subject_positions": torch.tensor([[2, 5]], dtype=torch.int64)}


def _text2_inputs(model: DHumanDiff, batch: int, gen: torch.Generator) -> Inputs:
    return {"input_ids": _vocab_ids(model, gen)}


def _unet_inputs(model: DHumanDiff, batch: int, gen: torch.Generator) -> Inputs:
    h, w = latent_hw(model)
    c = int(model.unet.config.in_channels)
    n = 2 * model.config.num_id_tokens
    mask = torch.from_numpy(region_mask(default_boxes(), h, w))[None].repeat(batch, 1, 1, 1)
    inputs = {
        "sample": _randn(gen, batch, c, h, w),
        "timestep": torch.randint(1, 1000, (1,), generator=gen).float().repeat(batch),
        "encoder_hidden_states": _randn(gen, batch, 77, context_dim(model)),
        "ip_tokens": _randn(gen, batch, n, id_token_dim(model)),
        "region_mask": mask,
        "ip_scale": torch.tensor([float(model.config.defaults.get("ip_scale", 1.0))]),
    }
    if model.text_encoder_2 is not None:
        s = float(model.config.image_size)
        inputs["text_embeds"] = _randn(gen, batch, pooled_dim(model))
        inputs["time_ids"] = torch.tensor([[s, s, 0.0, 0.0, s, s]]).repeat(batch, 1)
    return inputs


def _vae_inputs(model: DHumanDiff, batch: int, gen: torch.Generator) -> Inputs:
    h, w = latent_hw(model)
    return {"latent_sample": _randn(gen, 1, int(model.vae.config.latent_channels), h, w)}


def _inputs(name: str) -> Callable[[DHumanDiff], tuple[str, ...]]:
    """The contract's input names of component ``name`` for this model (the SDXL UNet takes two more)."""
    return lambda model: component_io(name, sdxl=model.text_encoder_2 is not None)[0]


def _outputs(name: str) -> tuple[str, ...]:
    return component_io(name)[1]


_BATCH = {0: "batch"}
_SPATIAL = {0: "batch", 2: "height", 3: "width"}

SPECS: dict[str, ComponentSpec] = {
    spec.name: spec for spec in (
        ComponentSpec(
            name="identity_encoder", build=lambda m: IdentityEncoderWrapper(m.identity_encoder),
            inputs=_inputs("identity_encoder"), outputs=_outputs("identity_encoder"), dummy_inputs=_identity_inputs,
            applies=lambda m: m.identity_encoder is not None),
        ComponentSpec(
            name="image_encoder", build=ImageEncoderWrapper, inputs=_inputs("image_encoder"),
            outputs=_outputs("image_encoder"), dummy_inputs=_image_inputs),
        ComponentSpec(
            name="face_projection", build=FaceProjectionWrapper, inputs=_inputs("face_projection"),
            outputs=_outputs("face_projection"), dummy_inputs=_face_projection_inputs),
        ComponentSpec(
            name="text_encoder", build=TextEncoderWrapper,
            inputs=_inputs("text_encoder"), outputs=_outputs("text_encoder"),
            dummy_inputs=_text_inputs,
            extra_outputs=lambda m: (NEGATIVE_TEXT_OUTPUT,) if m.config.conditioning.two_text_layers else ()),
        ComponentSpec(
            name="text_encoder_2", build=TextEncoder2Wrapper, inputs=_inputs("text_encoder_2"),
            outputs=_outputs("text_encoder_2"), dummy_inputs=_text2_inputs,
            applies=lambda m: m.text_encoder_2 is not None),
        ComponentSpec(
            name="unet", build=UNetWrapper, inputs=_inputs("unet"), outputs=_outputs("unet"),
            dummy_inputs=_unet_inputs,
            dynamic_axes={"sample": _SPATIAL, "timestep": _BATCH, "encoder_hidden_states": _BATCH,
                          "ip_tokens": _BATCH, "region_mask": _SPATIAL, "text_embeds": _BATCH,
                          "time_ids": _BATCH, "noise_pred": _SPATIAL}),
        ComponentSpec(
            name="vae_decoder", build=VaeDecoderWrapper, inputs=_inputs("vae_decoder"), outputs=_outputs("vae_decoder"),
            dummy_inputs=_vae_inputs,
            dynamic_axes={"latent_sample": {2: "height", 3: "width"},
                          "sample": {2: "image_height", 3: "image_width"}},
            fp16_keep_fp32=True),
    )
}


def components_for(model: DHumanDiff) -> list[ComponentSpec]:
    """The specs a model's bundle needs, in run order (identity encoder only if the model ships one; the
    second text encoder only for xl)."""
    return [spec.for_model(model) for spec in SPECS.values() if spec.applies(model)]


def get_spec(name: str, model: DHumanDiff | None = None) -> ComponentSpec:
    """The spec of component ``name`` (with ``model``'s optional outputs when a model is given)."""
    if name not in SPECS:
        raise DHumanDiffError(f"unknown component {name!r}; choose one of {', '.join(SPECS)}")
    return SPECS[name] if model is None else SPECS[name].for_model(model)
