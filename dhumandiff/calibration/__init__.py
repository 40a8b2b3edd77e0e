"""calibration stage: what quantised exports are fitted on and judged by.

Modules, one job each: ``store`` (the on-disk calibration set: safetensors + JSON, hashes, per-component
samples; torch-free), ``record`` (run the reference sampler on a PairHuman-format folder and record every graph
input, UNet inputs at every step), ``sensitivity`` (quantise one UNet layer at a time, measure the denoised
output's PSNR, rank layers; Apple's mixed-bit recipe on top).

Import rule: this stage may import ``data``, ``model``, ``utils`` and ``errors``; ``export`` reads its output.
Submodules are imported on use, so ``import dhumandiff.calibration`` does not pull in torch.
"""

from __future__ import annotations

from typing import Any

_EXPORTS = {
    "CalibrationSet": "dhumandiff.calibration.store",
    "CalibrationError": "dhumandiff.calibration.store",
    "CalibrationConfig": "dhumandiff.calibration.record",
    "record_calibration": "dhumandiff.calibration.record",
    "analyze_sensitivity": "dhumandiff.calibration.sensitivity",
    "sensitive_layers": "dhumandiff.calibration.sensitivity",
    "mixed_bit_recipe": "dhumandiff.calibration.sensitivity",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'dhumandiff.calibration' has no attribute {name!r}")
