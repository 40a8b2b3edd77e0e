"""calibration stage: what quantised exports are fitted on and judged by.

Modules, one job each: ``store`` (the on-disk calibration set: safetensors + JSON, hashes, per-component
samples; torch-free), ``record`` (run the reference sampler on a PairHuman-format folder and record every graph
input, UNet inputs at every step), ``sensitivity`` (quantise one UNet layer at a time, measure the denoised
output's PSNR, rank layers; Apple's mixed-bit recipe on top).

Import rule: this stage may import ``data``, ``model``, ``utils`` and ``errors``; ``export`` reads its output.
Submodules are imported on use, so ``import dhumandiff.calibration`` does not pull in torch.
"""

from __future__ import annotations

from ..utils.lazy import lazy_exports

__getattr__, __all__ = lazy_exports(__name__, {
    "CalibrationSet": "dhumandiff.calibration.store",
    "CalibrationError": "dhumandiff.calibration.store",
    "CalibrationConfig": "dhumandiff.calibration.record",
    "record_calibration": "dhumandiff.calibration.record",
    "analyze_sensitivity": "dhumandiff.calibration.sensitivity",
    "sensitive_layers": "dhumandiff.calibration.sensitivity",
    "mixed_bit_recipe": "dhumandiff.calibration.sensitivity",
})
