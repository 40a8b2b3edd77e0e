"""One calibration set per test session (4 records x 3 steps, a small sensitivity report), shared by the
calibration and quantisation tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from dhumandiff.calibration.record import CalibrationConfig, record_calibration
from dhumandiff.calibration.sensitivity import analyze_sensitivity
from dhumandiff.calibration.store import CalibrationSet

STEPS = 3
RECORDS = 4
#: A few layers of each kind (ResNet convs, attention and dual-IP projections, time embedding) keep the
#: sensitivity analysis fast while covering every layer type.
LAYERS = ("unet.mid_block.resnets.0.conv1", "unet.mid_block.attentions.0.transformer_blocks.0.attn2.to_v",
          "unet.mid_block.attentions.0.transformer_blocks.0.attn2.processor.to_v_ip1",
          "unet.up_blocks.0.resnets.0.conv2", "unet.time_embedding.linear_2")


def shared_world(factory: pytest.TempPathFactory) -> Path:
    """One tiny synthetic PairHuman folder per test session (4 records, 8 identities)."""
    from dhumandiff.data.synth import synthesize

    path = factory.getbasetemp() / "calibration-world"
    if not path.exists():
        synthesize(path, RECORDS, seed=0, n_identities=8, refs_per_identity=2)
    return path


def shared_calibration(factory: pytest.TempPathFactory, model) -> Path:
    """One calibration set (with a small sensitivity report) per test session."""
    path = factory.getbasetemp() / "calibration-set"
    if not path.exists():
        def sensitivity(calib: CalibrationSet) -> dict:
            return analyze_sensitivity(model, calib, bits=(8, 4), method="linear", samples=4, layers=LAYERS)

        record_calibration(model, shared_world(factory), path, CalibrationConfig(count=RECORDS, steps=STEPS),
                           model_name="tiny", sensitivity=sensitivity)
    return path
