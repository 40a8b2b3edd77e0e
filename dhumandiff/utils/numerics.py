"""The NaN/Inf gate every component output passes through, in the runtimes and in the PyTorch reference.

A NaN in a latent does not crash anything: it silently decodes to a black or noise image. So every component's
outputs are checked as soon as they exist, and the first bad one is reported by name with the fix that fits
how it ran (an fp16 VAE decoder overflows on large latents: ``--vae-precision fp32`` is the documented cure; an
fp32 graph that produces NaN has broken weights or inputs, and no precision switch will help).

Torch-free: NumPy arrays are checked with NumPy, torch tensors through their own ``isfinite`` (no import, no
device copy), so the runtimes and the reference share one message.
"""

from __future__ import annotations

import math
import numbers
from typing import Any, Mapping

import numpy as np

from ..errors import NumericalError, SettingsError

VAE_PRECISIONS = ("fp32", "fp16")


def _non_finite(value: Any) -> str | None:
    """``"NaN"``, ``"Inf"`` or None for a float array / tensor (integer outputs cannot overflow to NaN)."""
    if hasattr(value, "isfinite") and hasattr(value, "is_floating_point"):  # a torch tensor, on any device
        if not value.is_floating_point() or bool(value.isfinite().all()):
            return None
        return "NaN" if bool(value.isnan().any()) else "Inf"
    a = np.asarray(value)
    if a.dtype.kind not in "fc" or np.isfinite(a).all():
        return None
    return "NaN" if np.isnan(a).any() else "Inf"


def nonfinite_hint(component: str, precision: str | None, reference: bool = False) -> str:
    """What to do about a NaN/Inf from ``component`` that ran at ``precision`` (None: not known)."""
    fp16 = precision is not None and precision.lower() in ("fp16", "float16", "f16", "half")
    if component == "vae_decoder":
        if fp16:
            return ("the fp16 VAE decoder overflowed; rerun with --vae-precision fp32" if reference else
                    "this bundle's VAE decoder is fp16 and overflowed; re-export the bundle with --precision fp32 "
                    "or run the PyTorch model with --vae-precision fp32")
        if precision is None:
            return "if the VAE decoder ran in fp16 it overflowed: rerun with --vae-precision fp32 or use an fp32 bundle"
        what = "model" if reference else "bundle"
        return (f"the VAE decoder already ran in fp32 (--vae-precision fp32 cannot help), so the {what} or its "
                f"latents are broken: try another --seed or fewer --steps, and check the {what}"
                + ("" if reference else " with `dhumandiff parity`"))
    if reference:
        return "the model's weights or inputs hold NaN/Inf: check the model folder, or lower --guidance"
    if fp16:
        return "this graph is fp16 and overflowed; use an fp32 bundle (export --precision fp32) or --device cpu"
    return "try an fp32 bundle or --device cpu, and check the bundle with `dhumandiff parity`"


def check_finite(component: str, outputs: Mapping[str, Any], where: str = "", precision: str | None = None,
                 reference: bool = False) -> None:
    """Raise :class:`NumericalError` naming ``component`` (and the output) when a float output holds NaN/Inf.

    ``where`` is appended to the component (e.g. ``" (onnx on cpu)"``, ``" at step 3"``); ``precision`` is the
    precision the component ran in, which decides the hint; ``reference`` says it ran in the PyTorch model.
    """
    for name, value in outputs.items():
        if value is None:
            continue
        bad = _non_finite(value)
        if bad is not None:
            raise NumericalError(f"{component} produced {bad} in output '{name}'{where}; "
                                 f"{nonfinite_hint(component, precision, reference)}")


def check_vae_precision(value: str | None) -> str | None:
    """Normalise ``--vae-precision`` (None = as the model/bundle was made) or refuse an unknown value."""
    if value is None:
        return None
    v = str(value).strip().lower()
    v = {"float32": "fp32", "f32": "fp32", "float16": "fp16", "f16": "fp16", "half": "fp16"}.get(v, v)
    if v not in VAE_PRECISIONS:
        raise SettingsError(f"--vae-precision must be fp32 or fp16 (got {value!r})")
    return v


def finite_setting(value: Any, flag: str) -> float | None:
    """A float generation setting (``--guidance``, ``--ip-scale``) as a float; None (= the default) passes through.

    NaN, Inf, booleans and non-numbers are refused here, as settings (:class:`SettingsError`), before any graph
    runs: a NaN guidance would otherwise only surface as a component's NaN output (exit 12) after the whole
    sampling loop.
    """
    if value is None:
        return None
    number = None
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        try:
            number = float(value)
        except OverflowError:  # an int too large for a float
            pass
    if number is None or not math.isfinite(number):
        try:
            shown = repr(value) if isinstance(value, (numbers.Number, str)) else type(value).__name__
        except ValueError:  # an int past Python's 4300-digit conversion limit
            shown = type(value).__name__
        raise SettingsError(f"{flag} must be a finite number (got {shown[:40]})")
    return number


def json_safe(value: Any) -> Any:
    """``value`` with every non-finite float (NaN, inf) replaced by None, recursively through dicts and lists, so a
    report stays strict JSON whatever a broken graph produced."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [json_safe(v) for v in value]
    return value
