"""PSNR and cosine, as the exporters' gate, ``dhumandiff parity``, calibration and evaluation measure them (NumPy).

One definition, so a number in an export log, a parity report, a calibration report and a benchmark row means
the same thing. Both compute in float64 whatever the inputs' dtype.
"""

from __future__ import annotations

import math

import numpy as np

#: PSNR of identical arrays is infinite; reports cap it so they stay plain JSON.
PSNR_CAP_DB = 200.0


def psnr_db(reference: np.ndarray, test: np.ndarray, peak: float | None = None, cap: float = PSNR_CAP_DB) -> float:
    """``20 log10(peak / rmse)``, at most ``cap`` (``cap`` for identical arrays).

    ``peak`` defaults to the reference's value range (Apple's per-tensor PSNR), or ``max(|reference|, 1)`` for a
    constant reference.
    """
    ref = np.asarray(reference, np.float64)
    diff = np.asarray(test, np.float64) - ref
    rmse = float(np.sqrt(np.mean(diff * diff))) if diff.size else 0.0
    if peak is None:
        peak = float(ref.max() - ref.min()) if ref.size else 0.0
        peak = peak if peak > 0 else max(float(np.abs(ref).max(initial=0.0)), 1.0)
    if rmse == 0.0:
        return float(cap)
    return float(min(20.0 * math.log10(peak / rmse), cap))


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine similarity of two arrays seen as flat vectors (1.0 when both are all zeros, 0.0 when one is)."""
    x = np.asarray(a, np.float64).ravel()
    y = np.asarray(b, np.float64).ravel()
    nx, ny = float(np.linalg.norm(x)), float(np.linalg.norm(y))
    if nx == 0.0 and ny == 0.0:
        return 1.0
    if nx == 0.0 or ny == 0.0:
        return 0.0
    return float(np.dot(x, y) / (nx * ny))
