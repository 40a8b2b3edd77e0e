"""``dhumandiff convert official``: SDXL (diffusers folder) + the four official checkpoints -> one model folder.

Sizes are read from the components themselves (SDXL's configs, the checkpoints' tensor shapes), so the same
code converts the real release and the test-sized checkpoints the tests build in the official formats.
"""

from __future__ import annotations

import json
from pathlib import Path

from diffusers import AutoencoderKL, UNet2DConditionModel
from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPVisionModel

from ..contract.recipe import OFFICIAL, OFFICIAL_DEFAULTS
from ..errors import CheckpointError
from .configs import BackboneConfig, get_backbone_config
from .dhumandiff_model import DHumanDiff, strict_load
from .official import load_official_adapters
from .projections import FaceProjPlus, Resampler, SubjectMLP
from .tokenizer import load_tokenizer

REQUIRED_SDXL = ("unet", "vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2")


def _need(folder: Path, sub: str, what: str) -> Path:
    p = folder / sub
    if not p.is_dir():
        raise CheckpointError(f"{folder} is missing {sub}/ ({what}); pass the SDXL base 1.0 folder in diffusers "
                              f"layout")
    return p


def _perceiver_dims(state: dict, prefix: str, dim_head: int = 64) -> tuple[int, int, int]:
    """(depth, heads, dim_head) of a perceiver from its tensors; the official code always uses dim_head 64."""
    depth = len({k[len(prefix):].split(".")[1] for k in state if k.startswith(prefix + "layers.")})
    inner = state[f"{prefix}layers.0.attn.to_q.weight"].shape[0]
    return depth, inner // dim_head, dim_head


def _plain(config) -> dict:
    """A component config as JSON-safe constructor arguments (no private ``_name_or_path`` style keys)."""
    return {k: v for k, v in dict(config).items() if not k.startswith("_")}


def _adapter_configs(adapters: dict) -> tuple[dict, dict, dict]:
    """Sizes of the Resampler, ProjPlus and subject MLP, read from the checkpoints' tensor shapes."""
    rs = adapters["resampler"]
    depth, heads, dim_head = _perceiver_dims(rs, "proj.")
    res_cfg = {"embed_dims": rs["proj.proj_in.weight"].shape[1], "output_dims": rs["proj.proj_out.weight"].shape[0],
               "hidden_dims": rs["proj.latents"].shape[2], "depth": depth, "dim_head": dim_head, "heads": heads,
               "num_queries": rs["proj.latents"].shape[1],
               "ffn_ratio": rs["proj.layers.0.ff.1.net.0.proj.weight"].shape[0] / rs["proj.latents"].shape[2]}
    fp = adapters["face_proj"]
    depth2, heads2, dim_head2 = _perceiver_dims(fp, "proj.")
    embed = fp["proj.norm.weight"].shape[0]
    fp_cfg = {"embed_dims": embed, "output_dims": fp["proj.proj_out.weight"].shape[0],
              "hidden_dims": fp["proj.proj_in.weight"].shape[1],
              "id_embeddings_dim": fp["proj.proj.net.0.proj.weight"].shape[1], "depth": depth2,
              "dim_head": dim_head2, "heads": heads2,
              "num_tokens": fp["proj.proj.net.2.weight"].shape[0] // embed, "num_queries": 1,
              "ffn_ratio": fp["proj.layers.0.ff.1.net.0.proj.weight"].shape[0] / embed,
              "ffproj_ratio": fp["proj.proj.net.0.proj.weight"].shape[0] // fp["proj.proj.net.0.proj.weight"].shape[1]}
    mlp = adapters["subject_mlp"]
    mlp_cfg = {"in_dim": mlp["fc1.weight"].shape[1], "hidden_dim": mlp["fc1.weight"].shape[0],
               "out_dim": mlp["fc2.weight"].shape[0]}
    return res_cfg, fp_cfg, mlp_cfg


def _official_scheduler(sdxl_dir: Path, fallback: dict) -> dict:
    """The SDXL folder's own scheduler config (the official pipeline samples with it), else SD's schedule."""
    path = sdxl_dir / "scheduler" / "scheduler_config.json"
    if not path.is_file():
        return dict(fallback)
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{path} is not a readable scheduler config ({exc}); copy it again from "
                              f"stable-diffusion-xl-base-1.0") from None
    if not isinstance(config, dict):
        raise CheckpointError(f"{path} is not a scheduler config object; copy it again")
    return config


def convert_official(sdxl_dir: str | Path, weights_dir: str | Path, out_dir: str | Path,
                     image_encoder_dir: str | Path | None = None, overwrite: bool = False,
                     backbone: str = "xl") -> Path:
    """Build and save a :class:`DHumanDiff` from the official release; every key is matched strictly.

    The model gets the ``official`` conditioning recipe (``contract/recipe.py``) and the official defaults:
    512 x 512 (a test-sized backbone keeps its smaller native size), the SDXL folder's scheduler sampled as
    Euler, 50 steps, CFG 5."""
    sdxl_dir, weights_dir = Path(sdxl_dir), Path(weights_dir)
    if not sdxl_dir.is_dir():
        raise CheckpointError(f"SDXL folder {sdxl_dir} not found: pass --sdxl pointing at stable-diffusion-xl-base-1.0")
    for sub in REQUIRED_SDXL:
        _need(sdxl_dir, sub, "SDXL component")
    enc_dir = Path(image_encoder_dir) if image_encoder_dir else next(
        (p for p in (weights_dir / "image_encoder", sdxl_dir / "image_encoder") if p.is_dir()), None)
    if enc_dir is None or not enc_dir.is_dir():
        raise CheckpointError("the IP-Adapter CLIP image encoder (ViT-H/14) folder was not found: put it at "
                              f"{weights_dir / 'image_encoder'} or pass --image-encoder")
    adapters = load_official_adapters(weights_dir)
    try:
        res_cfg, fp_cfg, mlp_cfg = _adapter_configs(adapters)
    except KeyError as exc:
        raise CheckpointError(f"official checkpoints do not match DHumanDiff's layout (missing keys [{exc.args[0]!r}]):"
                              f" check that the four files come from the DHumanDiff release") from None
    resampler, face_proj, subject_mlp = Resampler(**res_cfg), FaceProjPlus(**fp_cfg), SubjectMLP(**mlp_cfg)
    strict_load(resampler, adapters["resampler"], "face_projection.pt (Resampler)")
    strict_load(face_proj, adapters["face_proj"], "face_projection2.pt (ProjPlusModel)")
    strict_load(subject_mlp, adapters["subject_mlp"], "mapping.pt (subject MLP)")


    unet = UNet2DConditionModel.from_pretrained(sdxl_dir / "unet")
    vae = AutoencoderKL.from_pretrained(sdxl_dir / "vae")
    te1 = CLIPTextModel.from_pretrained(sdxl_dir / "text_encoder")
    te2 = CLIPTextModelWithProjection.from_pretrained(sdxl_dir / "text_encoder_2")
    vision = CLIPVisionModel.from_pretrained(enc_dir)
    tok1, tok2 = load_tokenizer(sdxl_dir / "tokenizer"), load_tokenizer(sdxl_dir / "tokenizer_2")

    base = get_backbone_config("xl")
    vcfg = vision.config
    native = int(unet.config.sample_size) * 2 ** (len(vae.config.block_out_channels) - 1)
    scheduler, defaults = _official_scheduler(sdxl_dir, base.scheduler), dict(base.defaults)
    defaults.update({k: v for k, v in OFFICIAL_DEFAULTS.items() if k != "image_size"})
    cfg = BackboneConfig(
        name=backbone, image_size=min(native, OFFICIAL_DEFAULTS["image_size"]),
        unet=_plain(unet.config), vae=_plain(vae.config), text_encoder=_plain(te1.config.to_dict()),
        text_encoder_2=_plain(te2.config.to_dict()), image_encoder=_plain(vcfg.to_dict()), resampler=res_cfg, face_proj=fp_cfg,
        subject_mlp=mlp_cfg, num_id_tokens=res_cfg["num_queries"], text_hidden_index=-2,
        clip_size=int(vcfg.image_size), scheduler=scheduler, defaults=defaults, recipe=OFFICIAL.to_dict())
    model = DHumanDiff(cfg, unet, vae, te1, vision, resampler, face_proj, subject_mlp, tok1, te2, tok2)
    model.load_ip_state_dict(adapters["ip_adapter"])
    return model.save_pretrained(out_dir, overwrite=overwrite)
