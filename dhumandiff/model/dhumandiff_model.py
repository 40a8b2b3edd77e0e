"""The DHumanDiff model: every component of one backbone, built, saved and loaded as one folder.

Folder layout (diffusers-style, safetensors everywhere)::

    dhumandiff.json              backbone config + defaults (what `from_pretrained` rebuilds from)
    unet/  vae/  text_encoder/  [text_encoder_2/]  image_encoder/     diffusers / transformers folders
    tokenizer/  [tokenizer_2/]  scheduler/
    resampler/  face_proj/  subject_mlp/                               our ModelMixin folders
    ip_adapter/model.safetensors                                        dual-attention K/V, official index keys
    [identity_encoder/]                                                 the tiny world's ArcFace stand-in
    [vae_tiny/]                                                         distilled TAESD-style decoder (tiny_decoder.py)

Everything a user can get wrong on load (missing folder, missing or extra keys) raises CheckpointError.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKL, AutoencoderTiny, UNet2DConditionModel
from diffusers.models.attention_processor import AttnProcessor2_0
from diffusers.utils import logging as diffusers_logging
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import (CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPVisionConfig,
                          CLIPVisionModel, PreTrainedTokenizerBase)

from ..errors import CheckpointError
from ..utils.atomic import atomic_dir
from .attention import install_dual_processors, processor_list
from .token_merging import TokenMerging, apply_token_merging
from .configs import BackboneConfig, get_backbone_config
from .projections import FaceProjPlus, Resampler, SubjectMLP
from .text import PlainTextEncoder, SubjectTextEncoder
from .tiny_decoder import FOLDER as TINY_VAE_FOLDER
from .tiny_decoder import VAE_DECODERS, run_decoder
from .tokenizer import build_word_tokenizer, load_tokenizer, tokenize
from .unet import IdentityUNet

CONFIG_NAME = "dhumandiff.json"


class DHumanDiff(nn.Module):
    """All trainable and frozen parts of DHumanDiff for one backbone, plus its tokenizer(s)."""

    def __init__(self, config: BackboneConfig, unet: UNet2DConditionModel, vae: AutoencoderKL,
                 text_encoder: nn.Module, image_encoder: nn.Module, resampler: Resampler, face_proj: FaceProjPlus,
                 subject_mlp: SubjectMLP, tokenizer: PreTrainedTokenizerBase,
                 text_encoder_2: nn.Module | None = None, tokenizer_2: PreTrainedTokenizerBase | None = None,
                 identity_encoder: nn.Module | None = None, vae_tiny: AutoencoderTiny | None = None) -> None:
        super().__init__()
        self.config = config
        self.unet = unet
        self.vae = vae
        self.text_encoder = text_encoder
        self.text_encoder_2 = text_encoder_2
        self.image_encoder = image_encoder
        self.resampler = resampler
        self.face_proj = face_proj
        self.subject_mlp = subject_mlp
        self.tokenizer = tokenizer
        self.tokenizer_2 = tokenizer_2
        self.identity_encoder = identity_encoder
        self.vae_tiny = vae_tiny
        self.ip_processors = install_dual_processors(unet, 77, config.num_id_tokens, config.defaults.get("ip_scale", 1.0))
        self.identity_unet = IdentityUNet(unet)
        self.subject_text = SubjectTextEncoder(text_encoder, subject_mlp, config.text_hidden_index)
        self.plain_text_2 = PlainTextEncoder(text_encoder_2) if text_encoder_2 is not None else None

        #: Token merging in the UNet's self-attention (``token_merging.py``), None when off; exports record it.
        self.token_merging: TokenMerging | None = None

    def set_token_merging(self, ratio: float | None, max_downsample: int = 1) -> int:
        """Merge ``ratio`` of the tokens in ``attn1`` of the layers within ``max_downsample`` of the full latent
        (ToMe; ``ratio`` None or 0 turns it off). Returns the number of layers that merge."""
        merging = TokenMerging(ratio, max_downsample) if ratio else None
        n = apply_token_merging(self.unet, merging, (self.config.latent_size,) * 2)
        self.token_merging = merging if n else None
        return n

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_backbone(cls, backbone: str | BackboneConfig, tokenizer: PreTrainedTokenizerBase | None = None,
                      words: list[str] | None = None, seed: int = 0) -> "DHumanDiff":
        """A randomly initialised model of a backbone (the tiny world's tokenizer is built from ``words``)."""
        cfg = get_backbone_config(backbone) if isinstance(backbone, str) else backbone
        torch.manual_seed(seed)
        if tokenizer is None:
            if words is None:
                from ..data.captions import world_vocabulary

                words = world_vocabulary()
            tokenizer = build_word_tokenizer(words)
        te_cfg = dict(cfg.text_encoder)
        if cfg.name == "tiny" or tokenizer.vocab_size < te_cfg["vocab_size"] <= 2048:
            te_cfg.update(vocab_size=max(len(tokenizer), 8), bos_token_id=tokenizer.bos_token_id,
                          eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
            cfg.text_encoder = te_cfg
        text_encoder = CLIPTextModel(CLIPTextConfig(**te_cfg))
        text_encoder_2, tokenizer_2 = None, None
        if cfg.text_encoder_2 is not None:
            te2 = dict(cfg.text_encoder_2)
            te2.update({k: te_cfg[k] for k in ("vocab_size", "bos_token_id", "eos_token_id", "pad_token_id")})
            cfg.text_encoder_2 = te2
            text_encoder_2 = CLIPTextModelWithProjection(CLIPTextConfig(**te2))
            tokenizer_2 = tokenizer
        unet = UNet2DConditionModel(**cfg.unet)
        vae = AutoencoderKL(**cfg.vae)
        image_encoder = CLIPVisionModel(CLIPVisionConfig(**cfg.image_encoder))
        return cls(cfg, unet, vae, text_encoder, image_encoder, Resampler(**cfg.resampler),
                   FaceProjPlus(**cfg.face_proj), SubjectMLP(**cfg.subject_mlp), tokenizer,
                   text_encoder_2, tokenizer_2)

    # ------------------------------------------------------------------ conditioning
    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    def image_features(self, clip_pixels: torch.Tensor) -> torch.Tensor:
        """CLIP penultimate hidden states ``[B, T, H]`` of CLIP-normalised face photos."""
        return self.image_encoder(pixel_values=clip_pixels, output_hidden_states=True).hidden_states[-2]

    def uncond_identity_tokens(self, clip_pixels: torch.Tensor, kind: str | None = None) -> torch.Tensor:
        """The unconditional (CFG) ID tokens ``[B,16,C]``: ``kind`` (None: the model recipe's
        ``uncond_id_tokens``) "zeros", or "zero-image" (official): the Resampler on the image encoder's features
        of an all-zero pixel tensor (zeros after CLIP normalisation)."""
        if (kind or self.config.conditioning.uncond_id_tokens) == "zeros":
            return torch.zeros(clip_pixels.shape[0], self.config.num_id_tokens, self.resampler.config.output_dims,
                               device=clip_pixels.device, dtype=clip_pixels.dtype)
        return self.resampler(self.image_features(torch.zeros_like(clip_pixels)))

    def identity_tokens(self, clip_pixels: torch.Tensor, id_embeds: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per person: ``(ip_tokens [B,16,C], face_token [B,1,F])`` from its photo and ArcFace embedding."""
        feats = self.image_features(clip_pixels)
        return self.resampler(feats), self.face_proj(id_embeds, feats)

    def encode_prompt(self, input_ids: torch.Tensor, face_tokens: torch.Tensor | None,
                      subject_positions: torch.Tensor | None, input_ids_2: torch.Tensor | None = None,
                      hidden_index: int | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Prompt context ``[B,77,D]`` (and SDXL's pooled embedding) with the face tokens fused in; ``hidden_index``
        picks the first encoder's layer (None: the model's own)."""
        ctx = self.subject_text(input_ids, face_tokens, subject_positions, hidden_index)
        if self.plain_text_2 is None:
            return ctx, None
        hidden2, pooled = self.plain_text_2(input_ids if input_ids_2 is None else input_ids_2)
        return torch.cat([ctx, hidden2], dim=-1), pooled

    def tokenize(self, prompts: list[str]) -> torch.Tensor:
        return tokenize(self.tokenizer, prompts).to(self.device)

    def tokenize_2(self, prompts: list[str]) -> torch.Tensor | None:
        """Token ids for SDXL's second (OpenCLIP) tokenizer; None for single-encoder backbones."""
        if self.tokenizer_2 is None:
            return None
        return tokenize(self.tokenizer_2, prompts).to(self.device)

    def time_ids(self, batch: int) -> torch.Tensor | None:
        """SDXL's micro-conditioning (original size, crop, target size) for an uncropped square image."""
        if self.text_encoder_2 is None:
            return None
        s = float(self.config.image_size)
        return torch.tensor([[s, s, 0.0, 0.0, s, s]], device=self.device).repeat(batch, 1)

    # ------------------------------------------------------------------ persistence
    @property
    def vae_decoder_kind(self) -> str:
        """Which decoder sampling and export use: ``defaults["vae_decoder"]``, "full" unless set to "tiny"."""
        kind = str(self.config.defaults.get("vae_decoder", "full"))
        if kind not in VAE_DECODERS:
            raise CheckpointError(f"unknown vae_decoder {kind!r} in the model's defaults; use one of "
                                  f"{', '.join(VAE_DECODERS)}")
        if kind == "tiny" and self.vae_tiny is None:
            raise CheckpointError("this model has no distilled tiny VAE decoder (vae_tiny/); train one with "
                                  "`dhumandiff distill --method tiny-vae` or use the full decoder")
        return kind

    def active_decoder(self) -> tuple[nn.Module, float]:
        """The decoder in use and the factor its input (``latents / scaling_factor``) is multiplied by: the full
        VAE and 1, or the tiny one and the scaling factor (it takes the UNet-space latents, as TAESD does)."""
        if self.vae_decoder_kind == "tiny":
            return self.vae_tiny, float(self.vae.config.scaling_factor)
        return self.vae, 1.0

    def decode_latent_sample(self, latent_sample: torch.Tensor) -> torch.Tensor:
        """``latent_sample`` (= latents / scaling_factor) -> image [B,3,H,W] in about [-1, 1], with the chosen
        decoder."""
        return run_decoder(*self.active_decoder(), latent_sample)

    def ip_state_dict(self) -> dict[str, torch.Tensor]:
        """Dual-attention weights with official keys ``"{index}.to_k_ip1.weight"``."""
        return {k: v.detach().contiguous() for k, v in processor_list(self.unet).state_dict().items()}

    def load_ip_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        strict_load(processor_list(self.unet), state, "ip_adapter")

    def save_pretrained(self, path: str | Path, overwrite: bool = True, dtype: torch.dtype | None = None,
                        base: str | None = None, only: tuple[str, ...] | None = None) -> Path:
        """Write the model folder atomically (a crash leaves the previous folder or nothing).

        ``dtype=torch.float16`` stores the weights in half precision (what the embedded models ship; they load
        back as float32). ``base`` + ``only``: write just the listed components and borrow the rest from the
        ``base`` model folder (a distilled student ships only its UNet beside the full model).
        """
        if dtype is not None and dtype != torch.float32:
            import copy

            return copy.deepcopy(self).to(dtype)._save(Path(path), overwrite, base, only)
        return self._save(Path(path), overwrite, base, only)

    def _save(self, path: Path, overwrite: bool, base: str | None, only: tuple[str, ...] | None) -> Path:
        def wanted(name: str) -> bool:
            return only is None or name in only

        with atomic_dir(path, overwrite=overwrite, markers=(CONFIG_NAME, "model_index.json")) as tmp:
            if wanted("unet"):
                procs = dict(self.unet.attn_processors)
                self.unet.set_attn_processor(AttnProcessor2_0())
                try:
                    self.unet.save_pretrained(tmp / "unet")
                finally:
                    self.unet.set_attn_processor(procs)
            parts = {"vae": self.vae, "text_encoder": self.text_encoder, "tokenizer": self.tokenizer,
                     "text_encoder_2": self.text_encoder_2, "tokenizer_2": self.tokenizer_2,
                     "image_encoder": self.image_encoder, "resampler": self.resampler, "face_proj": self.face_proj,
                     "subject_mlp": self.subject_mlp, "identity_encoder": self.identity_encoder,
                     TINY_VAE_FOLDER: self.vae_tiny}
            for name, part in parts.items():
                if part is not None and wanted(name):
                    part.save_pretrained(tmp / name)
            if wanted("ip_adapter"):
                (tmp / "ip_adapter").mkdir()
                save_file(self.ip_state_dict(), str(tmp / "ip_adapter" / "model.safetensors"))
            config = self.config.to_dict()
            if base is not None:
                config["base"] = base
            (tmp / CONFIG_NAME).write_text(json.dumps(config, indent=2, default=str))
        return path

    @classmethod
    def from_pretrained(cls, path: str | Path) -> "DHumanDiff":
        """Load a folder written by :meth:`save_pretrained` as float32; strict about every weight.

        A folder with a ``base`` entry takes the components it lacks from that model folder (a path relative to
        the folder's parent, or an absolute one).
        """
        path = Path(path)
        cfg_file = path / CONFIG_NAME
        if not cfg_file.is_file():
            raise CheckpointError(f"{path} is not a dhumandiff model folder (no {CONFIG_NAME}); pass a folder made "
                                  f"by `dhumandiff train` or `dhumandiff convert official`")
        try:
            raw = json.loads(cfg_file.read_text())
            base = raw.pop("base", None)
            cfg = BackboneConfig.from_dict(raw)
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            first = (str(exc).splitlines() or [type(exc).__name__])[0]
            raise CheckpointError(f"{cfg_file} is not a valid model config ({first}); re-run the export, training "
                                  f"or conversion that wrote {path}") from None
        base_dir = (path.parent / base) if base else None

        def has(sub: str) -> bool:
            return (path / sub).is_dir() or (base_dir is not None and (base_dir / sub).is_dir())

        def part(sub: str) -> Path:
            if (path / sub).is_dir():
                return path / sub
            if base_dir is not None and (base_dir / sub).is_dir():
                return base_dir / sub
            raise CheckpointError(f"model folder {path} is missing {sub}/: re-run the export or conversion")

        for sub in ["unet", "vae", "text_encoder", "tokenizer", "image_encoder", "resampler", "face_proj",
                    "subject_mlp", "ip_adapter"]:
            part(sub)
        # safetensors only: a folder holding pickled ``.bin`` weights is refused, never unpickled
        f32 = {"torch_dtype": torch.float32, "use_safetensors": True}  # diffusers' spelling
        f32t = {"dtype": torch.float32, "use_safetensors": True}  # transformers' spelling
        kw: dict[str, Any] = {}
        verbosity = diffusers_logging.get_verbosity()
        diffusers_logging.set_verbosity(diffusers_logging.CRITICAL)  # its "error while fetching" log duplicates ours
        try:
            if cfg.text_encoder_2 is not None:
                kw["text_encoder_2"] = CLIPTextModelWithProjection.from_pretrained(part("text_encoder_2"), **f32t)
                kw["tokenizer_2"] = load_tokenizer(part("tokenizer_2"))
            if has("identity_encoder"):
                from .faces.world import WorldIdentityEncoder

                kw["identity_encoder"] = WorldIdentityEncoder.from_pretrained(part("identity_encoder"), **f32)
            if has(TINY_VAE_FOLDER):
                kw["vae_tiny"] = AutoencoderTiny.from_pretrained(part(TINY_VAE_FOLDER), **f32)
            model = cls(cfg, UNet2DConditionModel.from_pretrained(part("unet"), **f32),
                        AutoencoderKL.from_pretrained(part("vae"), **f32),
                        CLIPTextModel.from_pretrained(part("text_encoder"), **f32t),
                        CLIPVisionModel.from_pretrained(part("image_encoder"), **f32t),
                        Resampler.from_pretrained(part("resampler"), **f32),
                        FaceProjPlus.from_pretrained(part("face_proj"), **f32),
                        SubjectMLP.from_pretrained(part("subject_mlp"), **f32), load_tokenizer(part("tokenizer")),
                        **kw)
            model.load_ip_state_dict({k: v.float() for k, v in
                                      load_file(str(part("ip_adapter") / "model.safetensors")).items()})
        except (OSError, SafetensorError) as exc:  # missing / unreadable / pickled weight files
            first = (str(exc).splitlines() or [type(exc).__name__])[0]
            raise CheckpointError(f"model folder {path} cannot be loaded ({first}); it must hold safetensors "
                                  f"weights: re-run the export, training or conversion that wrote it") from None
        finally:
            diffusers_logging.set_verbosity(verbosity)
        return model.float().eval()


def strict_load(module: nn.Module, state: dict[str, torch.Tensor], what: str) -> None:
    """``load_state_dict(strict=True)`` with one clear line naming missing / extra / mis-shaped keys."""
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    extra = sorted(set(state) - set(own))
    shape = sorted(k for k in set(own) & set(state) if tuple(own[k].shape) != tuple(state[k].shape))
    if missing or extra or shape:
        parts = []
        if missing:
            parts.append(f"missing keys {missing[:5]}{' ...' if len(missing) > 5 else ''}")
        if extra:
            parts.append(f"unexpected keys {extra[:5]}{' ...' if len(extra) > 5 else ''}")
        if shape:
            k = shape[0]
            parts.append(f"shape mismatch at {k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}")
        raise CheckpointError(f"{what} checkpoint does not match the model ({'; '.join(parts)}): check that the "
                              f"checkpoint belongs to this backbone")
    module.load_state_dict(state, strict=True)
