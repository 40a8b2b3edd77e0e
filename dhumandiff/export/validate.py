"""How an exported graph is judged against the torch fp32 reference: max abs error, cosine and PSNR.

One definition serves the exporters' in-line gate (every conversion proves itself before it lands in a bundle)
and ``dhumandiff parity``, so a number in an export log means the same as the number in a parity report.
optimum's exporters compare with ``atol`` only and merely warn; we use three measures because fp16 and
quantised graphs are judged by direction (cosine) and signal-to-noise (PSNR), not by absolute error, and we
fail on a miss.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Mapping

import numpy as np

from ..contract.metrics import cosine, psnr_db  # the one definition (bench and benchmarks import it from here)


@dataclass(frozen=True)
class Tolerance:
    """What one component must reach at one precision. ``atol=None``: absolute error is reported, not gated.

    ``atol`` holds for outputs up to magnitude 1; an output whose reference reaches larger values is allowed
    ``atol`` times its largest magnitude (float rounding grows with the values: the full-size SDXL VAE decoder's
    fp32 ONNX graph, outputs up to 5.7, differs from torch by 1.2e-4 at 119 dB PSNR)."""

    atol: float | None
    min_cosine: float
    min_psnr_db: float

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Comparison:
    """One output of one component against its reference."""

    max_abs: float
    cosine: float
    psnr_db: float
    #: What ``atol`` is scaled by: max(1, the reference's largest magnitude) (:class:`Tolerance`).
    scale: float = 1.0

    def failures(self, tol: Tolerance) -> list[str]:
        """Human-readable reasons this comparison misses ``tol`` (empty when it passes)."""
        out = []
        if not math.isfinite(self.max_abs):
            return ["output holds NaN/Inf"]
        if tol.atol is not None and self.max_abs > tol.atol * self.scale:
            limit = f"{tol.atol:.3g}" if self.scale == 1.0 else f"{tol.atol:.3g} x {self.scale:.3g} (output scale)"
            out.append(f"max abs {self.max_abs:.3g} > {limit}")
        if self.cosine < tol.min_cosine:
            out.append(f"cosine {self.cosine:.6f} < {tol.min_cosine}")
        if self.psnr_db < tol.min_psnr_db:
            out.append(f"PSNR {self.psnr_db:.1f} dB < {tol.min_psnr_db} dB")
        return out

    def to_dict(self) -> dict:
        return asdict(self)


def compare(reference: np.ndarray, test: np.ndarray) -> Comparison:
    """Compare one output; shapes must agree (a shape mismatch is a broken export, not a numeric miss)."""
    ref = np.asarray(reference)
    out = np.asarray(test)
    if ref.shape != out.shape:
        raise ValueError(f"output shape {list(out.shape)} differs from the reference's {list(ref.shape)}")
    out64 = out.astype(np.float64)
    if not np.isfinite(out64).all():
        return Comparison(float("inf"), 0.0, 0.0)
    max_abs = float(np.abs(out64 - ref.astype(np.float64)).max(initial=0.0))
    scale = max(1.0, float(np.abs(ref.astype(np.float64)).max(initial=0.0)))
    return Comparison(max_abs, cosine(ref, out), psnr_db(ref, out), scale)


def compare_outputs(reference: Mapping[str, np.ndarray], test: Mapping[str, np.ndarray]) -> dict[str, Comparison]:
    """Per named output; an output missing from ``test`` raises KeyError naming it."""
    missing = [n for n in reference if n not in test]
    if missing:
        raise KeyError(f"exported graph did not return output(s) {missing}")
    return {name: compare(ref, test[name]) for name, ref in reference.items()}


def worst(comparisons: Mapping[str, Comparison]) -> Comparison:
    """The component-level summary: largest error, smallest cosine and PSNR over its outputs; its ``scale`` makes
    ``max_abs / scale`` the largest of the outputs' scaled errors (so it fails ``atol`` when one of them does)."""
    vals = list(comparisons.values())
    max_abs = max(c.max_abs for c in vals)
    ratio = max(c.max_abs / c.scale for c in vals)
    scale = max_abs / ratio if ratio > 0 and math.isfinite(max_abs) else max(c.scale for c in vals)
    return Comparison(max_abs, min(c.cosine for c in vals), min(c.psnr_db for c in vals), scale)
