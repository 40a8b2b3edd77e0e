"""``dhumandiff distill``: from a trained model folder to a student model folder.

Methods: ``lcm`` (few-step consistency student; ``lora_rank > 0`` trains it as a LoRA fused at the end) and
``cascade-fold`` (a single-pass UNet that reproduces the cascade mode).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

from ..model.dhumandiff_model import DHumanDiff
from ..model.faces.base import get_face_analyzer
from ..training.tensors import encode_latents, load_training_tensors
from ..utils.atomic import write_text_atomic
from .cascade_fold import CascadeFoldConfig, CascadeFolder
from .consistency import ConsistencyConfig, ConsistencyDistiller


def distill_model(teacher_dir: str | Path, data_dir: str | Path, out_dir: str | Path,
                  config: ConsistencyConfig | CascadeFoldConfig,
                  progress: Callable[[int, int, dict], None] | None = None) -> dict:
    """Distil ``teacher_dir`` on ``data_dir`` (the method follows the config's type); writes ``out_dir``."""
    teacher = DHumanDiff.from_pretrained(teacher_dir)
    analyzer = get_face_analyzer("world", encoder=teacher.identity_encoder) if teacher.identity_encoder is not None \
        else get_face_analyzer("insightface")
    data = load_training_tensors(data_dir, teacher, analyzer, split="train")
    encode_latents(data, teacher)
    out_dir = Path(out_dir)
    if isinstance(config, CascadeFoldConfig):
        folder = CascadeFolder(teacher, data, config)
        folder.compute_masks()
        report = folder.train(progress)
        folder.student_model().save_pretrained(out_dir)
        report["method"] = "cascade-fold"
    else:
        distiller = ConsistencyDistiller(teacher, data, config)
        report = distiller.train(progress)
        distiller.student_model().save_pretrained(out_dir)
        if config.lora_rank > 0:
            distiller.save_adapter(out_dir / "lora")
        report["method"] = "lcm-lora" if config.lora_rank > 0 else "lcm"
    write_text_atomic(out_dir / "distill_report.json", json.dumps(report, indent=2))
    return report
