"""``dhumandiff calibrate MODEL --data DIR --out CALIB``: the calibration set quantised exports are fitted on.

Heavy imports happen inside the command; the options it shares with ``dhumandiff export`` live in ``options.py``.
"""

from __future__ import annotations

from pathlib import Path

import typer

from .console import console, progress_bar
from .options import SAMPLER_HELP, source_name


def register(app: typer.Typer) -> None:
    app.command("calibrate")(calibrate)


def calibrate(
    model: str = typer.Argument("tiny", help="Embedded model name (e.g. tiny) or a model folder."),
    data: Path = typer.Option(..., "--data", help="PairHuman-format folder (real prompts, boxes and faces)."),
    out: Path = typer.Option(..., "--out", help="Calibration folder to write (atomically)."),
    count: int = typer.Option(4, "--count", help="Records to generate from (each: every sampler step)."),
    seed: int = typer.Option(0, "--seed", help="Picks the records and seeds their noise (same seed, same set)."),
    steps: int = typer.Option(None, "--steps", help="Sampler steps (default: the model's, i.e. the bundle's)."),
    sampler: str = typer.Option(None, "--sampler", help=SAMPLER_HELP),
    split: str = typer.Option(None, "--split", help="Only records of this split (train, heldout)."),
    sensitivity: bool = typer.Option(True, "--sensitivity/--no-sensitivity",
                                     help="Also rank UNet layers by sensitivity (sensitivity.json)."),
    bits: str = typer.Option("8,6,4", "--bits", help="Weight widths the sensitivity analysis tries."),
    method: str = typer.Option("palettize", "--method", help="palettize (k-means LUT, Core ML) or linear."),
    samples: int = typer.Option(8, "--samples", help="Recorded UNet calls per sensitivity measurement."),
    threshold_db: float = typer.Option(None, "--threshold-db", help="PSNR a layer must keep to 'tolerate' a width."),
    layers: list[str] = typer.Option(None, "--layer", help="Only analyse layers matching this pattern (repeatable)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing calibration folder."),
) -> None:
    """Record every graph's real inputs while generating from DIR, and rank UNet layers by sensitivity."""
    from ..calibration.record import CalibrationConfig, record_calibration
    from ..calibration.sensitivity import DEFAULT_THRESHOLD_DB, analyze_sensitivity
    from ..calibration.store import CalibrationSet
    from ..model.generate import load_model

    widths = [int(b) for b in bits.split(",") if b.strip()]
    m = load_model(model)
    with progress_bar("calibrate") as update:
        def analyse(calib: CalibrationSet) -> dict:
            return analyze_sensitivity(m, calib, bits=widths, method=method, samples=samples,
                                       threshold_db=DEFAULT_THRESHOLD_DB if threshold_db is None else threshold_db,
                                       layers=layers or None, progress=lambda i, n, info: update(i, n, info))

        path = record_calibration(m, data, out, CalibrationConfig(count, seed, steps, sampler, None, split),
                                  model_name=source_name(model), overwrite=overwrite,
                                  progress=lambda i, n, info: update(i, n, info),
                                  sensitivity=analyse if sensitivity else None)
    calib = CalibrationSet.load(path)
    meta = calib.meta
    console.print(f"wrote {path}: {meta['records']} records x {meta['steps']} steps ({meta['sampler']}), "
                  + ", ".join(f"{c} {calib.count(c)}" for c in calib.components)
                  + f"; tensors sha256 {meta['tensors_sha256'][:16]}")
    report = calib.sensitivity()
    if report:
        _print_sensitivity(report)


def _print_sensitivity(report: dict, top: int = 8) -> None:
    from rich.table import Table

    bits = [str(b) for b in report["bits"]]
    table = Table(title=f"most sensitive UNet layers ({len(report['layers'])} analysed; PSNR dB of the denoised "
                        f"output, {report['method']})")
    for col in ("layer", *[f"{b}-bit" for b in bits], "int8 w", "int8 w+a"):
        table.add_column(col)
    for layer in sorted(report["layers"], key=lambda x: x["int8_psnr_db"])[:top]:
        table.add_row(layer["name"], *[f"{layer['psnr_db'][b]:.1f}" for b in bits],
                      f"{layer['int8_weights_psnr_db']:.1f}", f"{layer['int8_psnr_db']:.1f}")
    console.print(table)
