"""``dhumandiff distill``: from a trained model folder to a few-step student folder (and back into the package)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

from ..model.dhumandiff_model import DHumanDiff
from ..model.faces.base import get_face_analyzer
from ..training.tensors import encode_latents, load_training_tensors
from .consistency import ConsistencyConfig, ConsistencyDistiller


def distill_model(teacher_dir: str | Path, data_dir: str | Path, out_dir: str | Path, config: ConsistencyConfig,
                  progress: Callable[[int, int, dict], None] | None = None) -> dict:
    """Consistency-distil ``teacher_dir`` on ``data_dir``; writes the student model folder to ``out_dir``."""
    teacher = DHumanDiff.from_pretrained(teacher_dir)
    analyzer = get_face_analyzer("world", encoder=teacher.identity_encoder) if teacher.identity_encoder is not None \
        else get_face_analyzer("insightface")
    data = load_training_tensors(data_dir, teacher, analyzer, split="train")
    encode_latents(data, teacher)
    distiller = ConsistencyDistiller(teacher, data, config)
    report = distiller.train(progress)
    student = distiller.student_model()
    student.save_pretrained(out_dir)
    (Path(out_dir) / "distill_report.json").write_text(json.dumps(report, indent=2))
    return report
