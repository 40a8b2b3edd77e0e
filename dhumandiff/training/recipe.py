"""End-to-end training recipes: from a PairHuman-format folder (or freshly synthesised data) to a model folder.

``train_model`` is what ``dhumandiff train`` runs. For the ``tiny`` backbone starting from scratch it also
trains the tiny world's frozen encoders (the ArcFace stand-in and the CLIP stand-in) and the VAE first, because
no pretrained weights can be downloaded; for ``sd15``/``xl`` it starts from ``--init`` (a converted model) and
trains the adapters.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from ..errors import CheckpointError
from ..model.dhumandiff_model import DHumanDiff
from ..model.faces import get_face_analyzer
from .config import TrainConfig
from .tensors import encode_latents, load_training_tensors
from .trainer import DiffusionTrainer
from .vae import train_vae

Progress = Callable[[str, int, int, dict], None]


@dataclass
class RecipeOptions:
    """What to (re)train before the diffusion objective; 0 steps skips a stage."""

    backbone: str = "tiny"
    init: str | None = None          # model folder to start from (fine-tuning / adapters over a frozen base)
    encoder_steps: int = 600         # tiny world's identity + CLIP stand-ins (only when they are untrained)
    vae_steps: int = 1500            # tiny VAE (only when untrained)
    seed: int = 0


def _stage_progress(progress: Progress | None, stage: str):
    if progress is None:
        return None
    return lambda step, total, metrics=None: progress(stage, step, total, metrics or {})


def train_model(data_dir: str | Path, out_dir: str | Path, config: TrainConfig, options: RecipeOptions,
                resume: bool = False, progress: Progress | None = None) -> dict:
    """Train and save a model folder at ``out_dir/model``; checkpoints go to ``out_dir/checkpoints``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(options.seed)
    report: dict = {"backbone": options.backbone, "data": str(data_dir)}
    t0 = time.time()
    prep = out_dir / "prepared"
    if options.init:
        model = DHumanDiff.from_pretrained(options.init)
    elif (prep / "dhumandiff.json").is_file():
        model = DHumanDiff.from_pretrained(prep)  # encoders + VAE of an interrupted run: reuse them
    else:
        model = DHumanDiff.from_backbone(options.backbone, seed=options.seed)
        if options.backbone == "tiny":
            report.update(_pretrain_tiny_world(model, data_dir, prep, options, progress))
    if model.identity_encoder is None and options.backbone == "tiny":
        raise CheckpointError("the tiny model needs its identity encoder; start from scratch or from a tiny model")
    analyzer = get_face_analyzer("world", encoder=model.identity_encoder)
    data = load_training_tensors(data_dir, model, analyzer, split="train")
    encode_latents(data, model)
    report["train_images"] = len(data)
    report["train_identities"] = len(data.identity_names)
    trainer = DiffusionTrainer(model, data, config, out_dir)
    if resume:
        report["resumed_at"] = trainer.resume()
    report.update(trainer.train(_stage_progress(progress, "diffusion")))
    trainer.apply_ema()
    report["total_minutes"] = (time.time() - t0) / 60
    report["processes"] = trainer.accelerator.num_processes
    if trainer.accelerator.is_main_process:  # data-parallel workers hold the same weights: one writes
        model.save_pretrained(out_dir / "model")
        (out_dir / "train_report.json").write_text(json.dumps(report, indent=2, default=str))
    trainer.accelerator.wait_for_everyone()
    return report


def _pretrain_tiny_world(model: DHumanDiff, data_dir: str | Path, prep: Path, options: RecipeOptions,
                         progress: Progress | None) -> dict:
    """Train the tiny world's frozen parts: identity encoder, CLIP stand-in, VAE. Saved to ``prep``."""
    from ..data.dataset import PairHumanDataset
    from ..model.faces.world import WorldIdentityEncoder, train_world_encoders
    from diffusers import AutoencoderKL
    from transformers import CLIPVisionModel

    report: dict = {}
    run_dir = prep.parent
    vae_dir = run_dir / "vae"
    if (vae_dir / "config.json").is_file():  # a VAE trained earlier in this run folder
        model.vae = AutoencoderKL.from_pretrained(vae_dir).eval()
        model.config.vae = {k: v for k, v in model.vae.config.items() if not k.startswith("_")}
    else:
        ds = PairHumanDataset(data_dir, split="train", use_reference_faces=False)
        images = torch.stack([ds[i]["pixel_values"] for i in range(len(ds))])
        report["vae"] = train_vae(model.vae, images, steps=options.vae_steps, seed=options.seed,
                                  progress=(lambda s, loss: progress("vae", s, options.vae_steps, {"loss": loss}))
                                  if progress else None)
        model.config.vae = {k: v for k, v in model.vae.config.items() if not k.startswith("_")}
        model.vae.save_pretrained(vae_dir)
    enc_dir = run_dir / "encoders"
    if not (enc_dir / "identity_encoder").is_dir():
        report["encoders"] = train_world_encoders(enc_dir, steps=options.encoder_steps, seed=options.seed)
    model.identity_encoder = WorldIdentityEncoder.from_pretrained(enc_dir / "identity_encoder").eval()
    model.image_encoder = CLIPVisionModel.from_pretrained(enc_dir / "image_encoder").eval()
    model.config.image_encoder = {k: v for k, v in model.image_encoder.config.to_dict().items()
                                  if not k.startswith("_")}
    model.save_pretrained(prep)
    return report

