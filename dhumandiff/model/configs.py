"""Backbone configurations: `xl`, `sd15`, `tiny` and test-sized twins, as data, not subclasses.

Every backbone has the same component graph (text encoder(s), CLIP-style image encoder, Resampler, ProjPlus,
subject MLP, UNet with dual decoupled cross-attention, VAE). Only sizes differ, so one code path serves all of
them. The `*-test` configs keep each backbone's *structure* (two text encoders and added time/text conditioning
for `xl`) at a few million parameters so the tests exercise the real code paths without full-size weights.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field
from typing import Any

from ..contract.recipe import Recipe, project_recipe
from ..errors import DHumanDiffError


@dataclass
class BackboneConfig:
    """Everything needed to build an (untrained) DHumanDiff of one backbone."""

    name: str
    image_size: int
    unet: dict[str, Any]
    vae: dict[str, Any]
    text_encoder: dict[str, Any]
    image_encoder: dict[str, Any]
    resampler: dict[str, Any]
    face_proj: dict[str, Any]
    subject_mlp: dict[str, Any]
    text_encoder_2: dict[str, Any] | None = None
    num_id_tokens: int = 16
    # Which text-encoder hidden state is the prompt embedding: -1 = last (with final LayerNorm, SD1.5),
    # -2 = penultimate (SDXL).
    text_hidden_index: int = -1
    # Face encoder input sizes.
    face_size: int = 112
    clip_size: int = 224
    clip_mean: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
    clip_std: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)
    scheduler: dict[str, Any] = field(default_factory=dict)
    defaults: dict[str, Any] = field(default_factory=dict)
    # The conditioning recipe (contract/recipe.py) as a dict; None: this project's own for the backbone.
    recipe: dict[str, Any] | None = None

    @property
    def is_xl(self) -> bool:
        return self.text_encoder_2 is not None

    @property
    def conditioning(self) -> Recipe:
        """The model's conditioning recipe (``official`` for converted official checkpoints)."""
        if self.recipe is None:
            return project_recipe(self.text_hidden_index)
        return Recipe.from_dict(self.recipe)

    @property
    def latent_size(self) -> int:
        down = 2 ** (len(self.vae["block_out_channels"]) - 1)
        return self.image_size // down

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "BackboneConfig":
        data = dict(data)
        for key in ("clip_mean", "clip_std"):
            if key in data:
                data[key] = tuple(data[key])
        return cls(**data)


_SD_SCHEDULER = {
    "_class_name": "DDIMScheduler",
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "prediction_type": "epsilon",
    "clip_sample": False,
    "set_alpha_to_one": False,
    "steps_offset": 1,
    "timestep_spacing": "leading",
}

_TINY_SCHEDULER = {
    "_class_name": "DDIMScheduler",
    "num_train_timesteps": 1000,
    "beta_schedule": "squaredcos_cap_v2",
    "prediction_type": "v_prediction",
    "clip_sample": False,
    "set_alpha_to_one": True,
    "steps_offset": 0,
    "timestep_spacing": "trailing",
}


def _clip_text(hidden: int, layers: int, heads: int, vocab: int = 49408, proj: int | None = None) -> dict[str, Any]:
    cfg = {
        "vocab_size": vocab,
        "hidden_size": hidden,
        "intermediate_size": hidden * 4,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "max_position_embeddings": 77,
        "hidden_act": "quick_gelu",
        "bos_token_id": 49406,
        "eos_token_id": 49407,
        "pad_token_id": 49407,
    }
    if proj is not None:
        cfg["projection_dim"] = proj
    return cfg


def _clip_vision(hidden: int, layers: int, heads: int, image: int, patch: int) -> dict[str, Any]:
    return {
        "hidden_size": hidden,
        "intermediate_size": hidden * 4,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "image_size": image,
        "patch_size": patch,
        "projection_dim": hidden,
        "hidden_act": "gelu",
    }


def _vae(channels: tuple[int, ...], sample: int, groups: int = 32, scaling: float = 0.18215) -> dict[str, Any]:
    n = len(channels)
    return {
        "in_channels": 3,
        "out_channels": 3,
        "down_block_types": ["DownEncoderBlock2D"] * n,
        "up_block_types": ["UpDecoderBlock2D"] * n,
        "block_out_channels": list(channels),
        "layers_per_block": 1 if sample <= 128 else 2,
        "latent_channels": 4,
        "norm_num_groups": groups,
        "sample_size": sample,
        "scaling_factor": scaling,
    }


def _tiny() -> BackboneConfig:
    ctx = 64
    return BackboneConfig(
        name="tiny",
        image_size=64,
        unet={
            "sample_size": 16,
            "in_channels": 4,
            "out_channels": 4,
            "block_out_channels": [32, 64, 128],
            "layers_per_block": 1,
            "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
            "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
            "cross_attention_dim": ctx,
            "attention_head_dim": 4,
            "norm_num_groups": 16,
        },
        vae=_vae((32, 64, 64), 64, groups=16, scaling=1.0),
        text_encoder=_clip_text(ctx, 2, 2, vocab=1024),
        image_encoder=_clip_vision(64, 3, 4, image=56, patch=8),
        resampler={"embed_dims": 64, "output_dims": ctx, "hidden_dims": 64, "depth": 2, "dim_head": 16,
                   "heads": 4, "num_queries": 16, "ffn_ratio": 2},
        face_proj={"embed_dims": 64, "output_dims": 64, "hidden_dims": 64, "id_embeddings_dim": 512, "depth": 2,
                   "dim_head": 16, "heads": 4, "num_tokens": 1, "num_queries": 1, "ffn_ratio": 2,
                   "ffproj_ratio": 2},
        subject_mlp={"in_dim": ctx + 64, "hidden_dim": 64, "out_dim": ctx},
        face_size=112,
        clip_size=56,
        scheduler=dict(_TINY_SCHEDULER),
        defaults={"steps": 30, "guidance_scale": 3.0, "ip_scale": 1.0, "sampler": "ddim"},
    )


def _sd15(test: bool) -> BackboneConfig:
    if test:
        ctx, chans, heads_vis = 32, [32, 64], 2
        unet_blocks = (["CrossAttnDownBlock2D", "DownBlock2D"], ["UpBlock2D", "CrossAttnUpBlock2D"])
        te = _clip_text(ctx, 2, 2, vocab=1000)
        vis = _clip_vision(32, 2, heads_vis, image=32, patch=8)
        res = {"embed_dims": 32, "output_dims": ctx, "hidden_dims": 32, "depth": 2, "dim_head": 64, "heads": 1,
               "num_queries": 16, "ffn_ratio": 2}
        fp = {"embed_dims": 48, "output_dims": 48, "hidden_dims": 32, "id_embeddings_dim": 512, "depth": 2,
              "dim_head": 64, "heads": 1, "num_tokens": 1, "num_queries": 1, "ffn_ratio": 2, "ffproj_ratio": 2}
        return BackboneConfig(
            name="sd15-test", image_size=32,
            unet={"sample_size": 8, "block_out_channels": chans, "layers_per_block": 1,
                  "down_block_types": unet_blocks[0], "up_block_types": unet_blocks[1],
                  "cross_attention_dim": ctx, "attention_head_dim": 2, "norm_num_groups": 16},
            vae=_vae((16, 32, 32, 32), 32, groups=16), text_encoder=te, image_encoder=vis, resampler=res,
            face_proj=fp, subject_mlp={"in_dim": ctx + 48, "hidden_dim": 48, "out_dim": ctx},
            clip_size=32, scheduler=dict(_SD_SCHEDULER),
            defaults={"steps": 10, "guidance_scale": 5.0, "ip_scale": 0.7, "sampler": "ddim"},
        )
    return BackboneConfig(
        name="sd15", image_size=512,
        unet={"sample_size": 64, "block_out_channels": [320, 640, 1280, 1280], "layers_per_block": 2,
              "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D",
                                   "DownBlock2D"],
              "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
              "cross_attention_dim": 768, "attention_head_dim": 8},
        vae=_vae((128, 256, 512, 512), 512), text_encoder=_clip_text(768, 12, 12),
        image_encoder=_clip_vision(1280, 32, 16, image=224, patch=14),
        resampler={"embed_dims": 1280, "output_dims": 768, "hidden_dims": 1280, "depth": 4, "dim_head": 64,
                   "heads": 20, "num_queries": 16, "ffn_ratio": 4},
        face_proj={"embed_dims": 1024, "output_dims": 1024, "hidden_dims": 1280, "id_embeddings_dim": 512,
                   "depth": 4, "dim_head": 64, "heads": 16, "num_tokens": 1, "num_queries": 1, "ffn_ratio": 4,
                   "ffproj_ratio": 2},
        subject_mlp={"in_dim": 768 + 1024, "hidden_dim": 1024, "out_dim": 768},
        scheduler=dict(_SD_SCHEDULER),
        defaults={"steps": 30, "guidance_scale": 5.0, "ip_scale": 0.7, "sampler": "ddim"},
    )


def _xl(test: bool) -> BackboneConfig:
    if test:
        te1, te2 = _clip_text(32, 2, 2, vocab=1000), _clip_text(32, 2, 2, vocab=1000, proj=32)
        ctx = 64  # te1 (32) + te2 (32), as SDXL's 768 + 1280 = 2048
        return BackboneConfig(
            name="xl-test", image_size=32,
            unet={"sample_size": 8, "block_out_channels": [32, 64], "layers_per_block": 1,
                  "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D"],
                  "up_block_types": ["CrossAttnUpBlock2D", "UpBlock2D"],
                  "cross_attention_dim": ctx, "attention_head_dim": [2, 4], "norm_num_groups": 16,
                  "transformer_layers_per_block": [1, 2], "use_linear_projection": True,
                  "addition_embed_type": "text_time", "addition_time_embed_dim": 8,
                  "projection_class_embeddings_input_dim": 8 * 6 + 32},
            vae=_vae((16, 32, 32, 32), 32, groups=16, scaling=0.13025), text_encoder=te1, text_encoder_2=te2,
            image_encoder=_clip_vision(32, 2, 2, image=32, patch=8),
            resampler={"embed_dims": 32, "output_dims": ctx, "hidden_dims": 32, "depth": 2, "dim_head": 64,
                       "heads": 1, "num_queries": 16, "ffn_ratio": 2},
            face_proj={"embed_dims": 48, "output_dims": 48, "hidden_dims": 32, "id_embeddings_dim": 512,
                       "depth": 2, "dim_head": 64, "heads": 1, "num_tokens": 1, "num_queries": 1, "ffn_ratio": 2,
                       "ffproj_ratio": 2},
            subject_mlp={"in_dim": 32 + 48, "hidden_dim": 48, "out_dim": 32},
            text_hidden_index=-2, clip_size=32, scheduler=dict(_SD_SCHEDULER),
            defaults={"steps": 10, "guidance_scale": 5.0, "ip_scale": 0.7, "sampler": "ddim"},
        )
    return BackboneConfig(
        name="xl", image_size=1024,
        unet={"sample_size": 128, "block_out_channels": [320, 640, 1280], "layers_per_block": 2,
              "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
              "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
              "cross_attention_dim": 2048, "attention_head_dim": [5, 10, 20],
              "transformer_layers_per_block": [1, 2, 10], "use_linear_projection": True,
              "addition_embed_type": "text_time", "addition_time_embed_dim": 256,
              "projection_class_embeddings_input_dim": 2816},
        vae=_vae((128, 256, 512, 512), 1024, scaling=0.13025), text_encoder=_clip_text(768, 12, 12),
        text_encoder_2=_clip_text(1280, 32, 20, proj=1280),
        image_encoder=_clip_vision(1280, 32, 16, image=224, patch=14),
        resampler={"embed_dims": 1280, "output_dims": 2048, "hidden_dims": 1280, "depth": 4, "dim_head": 64,
                   "heads": 20, "num_queries": 16, "ffn_ratio": 4},
        face_proj={"embed_dims": 1024, "output_dims": 1024, "hidden_dims": 1280, "id_embeddings_dim": 512,
                   "depth": 4, "dim_head": 64, "heads": 16, "num_tokens": 1, "num_queries": 1, "ffn_ratio": 4,
                   "ffproj_ratio": 2},
        subject_mlp={"in_dim": 768 + 1024, "hidden_dim": 1024, "out_dim": 768},
        text_hidden_index=-2, scheduler=dict(_SD_SCHEDULER),
        defaults={"steps": 30, "guidance_scale": 5.0, "ip_scale": 0.7, "sampler": "ddim"},
    )


_BUILDERS = {
    "tiny": _tiny,
    "sd15": lambda: _sd15(False),
    "sd15-test": lambda: _sd15(True),
    "xl": lambda: _xl(False),
    "xl-test": lambda: _xl(True),
}

BACKBONES = tuple(_BUILDERS)


def get_backbone_config(name: str) -> BackboneConfig:
    """Return a fresh copy of the named backbone's config.

    ``NAME-prune-LEVEL`` (e.g. ``sd15-prune-small``) is backbone NAME with its UNet cut as BK-SDM's LEVEL
    (``pruning.py``): the architecture of a pruned student, for benchmarks and tests with random weights.
    """
    base, cut, level = name.partition("-prune-")
    if cut and base in _BUILDERS:
        from .pruning import pruned_unet_config

        cfg = copy.deepcopy(_BUILDERS[base]())
        cfg.unet = pruned_unet_config(cfg.unet, level)
        cfg.name = name
        return cfg
    if name not in _BUILDERS:
        raise DHumanDiffError(f"unknown backbone {name!r}; choose one of: {', '.join(BACKBONES)} (or "
                              f"NAME-prune-base|small|tiny for a pruned UNet)")
    return copy.deepcopy(_BUILDERS[name]())
