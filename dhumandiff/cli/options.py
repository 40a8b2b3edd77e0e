"""Options and helpers the commands share (no command module imports another).

Cheap to import: no torch, no exporter. Help texts are built from the registries, so a new quantised variant
(``export/quantize_table.py``), sampler (``contract/schedulers.py``) or runtime (``contract/registry.py``) shows
up in ``--help`` by itself.
"""

from __future__ import annotations

from pathlib import Path

import typer

from ..contract.registry import RUNTIMES
from ..contract.schedulers import SAMPLERS
from ..export.quantize_table import MODES


def _quantize_help() -> str:
    by_runtime: dict[str, list[str]] = {}
    for runtime, name in MODES:
        by_runtime.setdefault(runtime, []).append(name)
    variants = "; ".join(f"{runtime} {'|'.join(names)}" for runtime, names in by_runtime.items())
    return (f"Quantised variant: {variants}. The bundle records its fidelity budget; `dhumandiff parity` holds it "
            f"to it.")


QUANTIZE_HELP = _quantize_help()
SAMPLER_HELP = f"{', '.join(SAMPLERS)} (default: the model's)."
RUNTIME_HELP = f"Bundle runtime: {', '.join(RUNTIMES)} (default: the bundle's own)."
CALIBRATION_HELP = "Calibration folder from `dhumandiff calibrate` (activation ranges + layer sensitivity)."


def source_name(model: str | None) -> str:
    """What bundle.json (and calibration.json) records as the source model: the embedded name (an alias as given:
    it carries settings, e.g. ``tiny-fast``'s decoder), or the folder's absolute path."""
    from ..model.registry import ALIASES, ASSETS, resolve_model

    path = resolve_model(model)
    if model in ALIASES:
        return model
    return path.name if path.parent == ASSETS else str(path.resolve())


def quantize_options(mode: str | None, calibration: Path | None, *, batch: Path | None = None,
                     keep_float: int | None = None, exclude: list[str] | None = None, group_size: int = 64,
                     ratio: float = 1.0, symmetric: bool = False, avg_bits: float = 6.0,
                     components: str | None = None, int8_kernel: str = "auto"):
    """The export commands' ``--quantize`` flags as :class:`~dhumandiff.export.quantize_modes.QuantizeOptions`."""
    if mode is not None and batch is not None:
        raise typer.BadParameter("--quantize exports one MODEL; it does not combine with --batch")
    if mode is None:
        if calibration is not None:
            raise typer.BadParameter("--calibration is used with --quantize MODE")
        return None
    from ..export.quantize_modes import QuantizeOptions

    return QuantizeOptions(mode, calibration=calibration, keep_float=keep_float, exclude=tuple(exclude or ()),
                           group_size=group_size, ratio=ratio, symmetric=symmetric, avg_bits=avg_bits,
                           int8_kernel=int8_kernel,
                           components=tuple(c for c in components.split(",") if c) if components else None)


TOKEN_MERGING_HELP = ("Token merging (ToMe): merge this share of the tokens (0-0.75) in the UNet's self-attention at "
                      "the full-size latent; training-free, fewer FLOPs per step, a little less fidelity "
                      "(BENCHMARKS.md \"Token merging\").")
TOKEN_MERGING_DEPTH_HELP = "Token merging also in layers downsampled up to this much (1, 2, 4, 8)."
