"""``dhumandiff distill``: from a trained model folder to a student model folder.

Methods: ``lcm`` (few-step consistency student; ``lora_rank > 0`` trains it as a LoRA fused at the end),
``cascade-fold`` (a single-pass UNet that reproduces the cascade mode), ``tiny-vae`` (a TAESD-style decoder
that stands in for the full VAE decoder) and ``prune-base|small|tiny`` (a BK-SDM-style structurally smaller UNet
distilled from the teacher; from a few-step student it stays a few-step student).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

from ..model.dhumandiff_model import DHumanDiff
from ..model.faces import get_face_analyzer
from ..training.tensors import encode_latents, load_training_tensors
from ..utils.atomic import write_text_atomic
from .block_prune import PruneConfig, PruneDistiller
from .cascade_fold import CascadeFoldConfig, CascadeFolder
from .consistency import ConsistencyConfig, ConsistencyDistiller
from .tiny_vae import TinyVaeConfig, TinyVaeDistiller, face_weight_maps


def distill_model(teacher_dir: str | Path, data_dir: str | Path, out_dir: str | Path,
                  config: ConsistencyConfig | CascadeFoldConfig | TinyVaeConfig | PruneConfig,
                  progress: Callable[[int, int, dict], None] | None = None) -> dict:
    """Distil ``teacher_dir`` on ``data_dir`` (the method follows the config's type); writes ``out_dir``."""
    teacher = DHumanDiff.from_pretrained(teacher_dir)
    out_dir = Path(out_dir)
    if isinstance(config, TinyVaeConfig):
        report = _distill_tiny_vae(teacher, data_dir, out_dir, config, progress)
        write_text_atomic(out_dir / "distill_report.json", json.dumps(report, indent=2))
        return report
    analyzer = get_face_analyzer("world", encoder=teacher.identity_encoder) if teacher.identity_encoder is not None \
        else get_face_analyzer("insightface")
    data = load_training_tensors(data_dir, teacher, analyzer, split="train")
    encode_latents(data, teacher)
    if isinstance(config, CascadeFoldConfig):
        folder = CascadeFolder(teacher, data, config)
        folder.compute_masks()
        report = folder.train(progress)
        folder.student_model().save_pretrained(out_dir)
        report["method"] = "cascade-fold"
    elif isinstance(config, PruneConfig):
        pruner = PruneDistiller(teacher, data, config)
        report = pruner.train(progress)
        pruner.student_model().save_pretrained(out_dir)
        report["method"] = f"prune-{config.level}"
    else:
        distiller = ConsistencyDistiller(teacher, data, config)
        report = distiller.train(progress)
        distiller.student_model().save_pretrained(out_dir)
        if config.lora_rank > 0:
            distiller.save_adapter(out_dir / "lora")
        report["method"] = "lcm-lora" if config.lora_rank > 0 else "lcm"
    write_text_atomic(out_dir / "distill_report.json", json.dumps(report, indent=2))
    return report


def _distill_tiny_vae(teacher: DHumanDiff, data_dir: str | Path, out_dir: Path, config: TinyVaeConfig,
                      progress: Callable[[int, int, dict], None] | None) -> dict:
    """Images only (no faces or captions): the training split trains, the held-out split measures."""
    import torch

    from ..data.dataset import PairHumanDataset

    def images(split: str, limit: int | None = None) -> tuple[torch.Tensor, torch.Tensor] | tuple[None, None]:
        ds = PairHumanDataset(data_dir, split=split, image_size=teacher.config.image_size, use_reference_faces=False)
        if not len(ds):
            return None, None
        items = [ds[i] for i in range(min(len(ds), limit or len(ds)))]
        return (torch.stack([it["pixel_values"] for it in items]), torch.stack([it["face_boxes"] for it in items]))

    train, faces = images("train")
    if train is None:
        from ..errors import AnnotationError

        raise AnnotationError(f"{data_dir} has no training images (split 'train'); pass a PairHuman-format folder")
    held, _ = images("heldout", limit=512)  # enough for the report's PSNRs
    weights = face_weight_maps(faces, int(train.shape[-1]), config.face_weight) if config.face_weight > 0 else None
    distiller = TinyVaeDistiller(teacher, train, config, held_out=held, weights=weights, face_boxes=faces)
    report = distiller.train(progress)
    distiller.student_model().save_pretrained(out_dir)
    report["method"] = "tiny-vae"
    return report
