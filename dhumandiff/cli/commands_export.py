"""``dhumandiff export onnx|openvino|torchscript|coreml MODEL --out BUNDLE`` and ``dhumandiff parity BUNDLE``.

Heavy imports (torch, exporters, runtimes) happen inside the commands so ``dhumandiff --help`` stays fast.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import typer

from .console import console, progress_bar
from .options import (CALIBRATION_HELP, QUANTIZE_HELP, TOKEN_MERGING_DEPTH_HELP, TOKEN_MERGING_HELP, quantize_options,
                      source_name)

export_app = typer.Typer(no_args_is_help=True,
                         help="Export a model as a bundle (graphs + tokenizer + bundle.json) for one runtime.")

BATCH_HELP = ("Folder of model folders: export each to OUT/<name>, with progress and a summary table; a re-run "
              "skips bundles whose source and options are unchanged (sha256 in bundle.json).")

RUNTIME_HELP = {
    "onnx": "Export MODEL as ONNX graphs (opset 17) for onnxruntime (CPU, CUDA, CoreML, OpenVINO providers).",
    "openvino": "Export MODEL as OpenVINO IR (.xml + .bin) for CPU, GPU and NPU.",
    "torchscript": "Export MODEL as TorchScript (.pt) for PyTorch without the model code.",
    "coreml": "Export MODEL as Core ML mlprograms (.mlpackage) for macOS and iOS.",
}


def register(app: typer.Typer) -> None:
    """Add ``export`` (a command group, one command per runtime) and ``parity`` to the main app."""
    for runtime in RUNTIME_HELP:
        export_app.command(runtime, help=RUNTIME_HELP[runtime])(_export_command(runtime))
    app.add_typer(export_app, name="export")
    app.command("parity")(parity)


def _export_command(runtime: str) -> Callable[..., None]:
    if runtime == "coreml":
        return _coreml_command()

    def command(
        model: str = typer.Argument("tiny", help="Embedded model name (e.g. tiny) or a model folder."),
        out: Path = typer.Option(..., "--out", help="Bundle folder to write (atomically)."),
        precision: str = typer.Option("fp32", "--precision", help="fp32 or fp16 (the VAE decoder stays fp32)."),
        dynamic: bool = typer.Option(False, "--dynamic", help="Dynamic batch/height/width axes on the UNet and "
                                                               "VAE decoder (default: static shapes)."),
        overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing bundle folder."),
        batch: Path = typer.Option(None, "--batch", help=BATCH_HELP),
        quantize: str = typer.Option(None, "--quantize", help=QUANTIZE_HELP),
        calibration: Path = typer.Option(None, "--calibration", help=CALIBRATION_HELP),
        keep_float: int = typer.Option(None, "--keep-float", help="Keep the N most sensitive UNet layers float "
                                                                  "(default: those under the analysis threshold)."),
        group_size: int = typer.Option(64, "--group-size", help="int4-weights: weights per scale."),
        symmetric: bool = typer.Option(False, "--symmetric", help="openvino int8/int4 weights: symmetric (SYM)."),
        int8_kernel: str = typer.Option("auto", "--int8-kernel", help="onnx int8: u8s8 (fast and exact with "
                                        "VNNI), u8u8 (exact on every CPU) or auto (chosen by this CPU)."),
        face_models: Path = typer.Option(None, "--face-models", help="insightface pack folder (buffalo_l: "
                                         "det_10g.onnx, w600k_r50.onnx) the bundle ships as its face detector and "
                                         "recogniser: for converted official models, which have none of their own."),
        token_merging: float = typer.Option(None, "--token-merging", help=TOKEN_MERGING_HELP),
        token_merging_depth: int = typer.Option(1, "--token-merging-depth", help=TOKEN_MERGING_DEPTH_HELP),
    ) -> None:
        q = quantize_options(quantize, calibration, batch=batch, keep_float=keep_float, group_size=group_size,
                             symmetric=symmetric, int8_kernel=int8_kernel)
        if batch is not None:
            return _export_batch(runtime, model, batch, out, precision, dynamic, overwrite)
        _export(runtime, model, out, precision, dynamic, overwrite, quantization=q, face_models=face_models,
                token_merging=(token_merging, token_merging_depth) if token_merging else None)

    command.__name__ = f"export_{runtime}"
    return command


def _coreml_command() -> Callable[..., None]:
    def export_coreml(
        model: str = typer.Argument("tiny", help="Embedded model name (e.g. tiny) or a model folder."),
        out: Path = typer.Option(..., "--out", help="Bundle folder to write (atomically)."),
        precision: str = typer.Option("fp16", "--precision", help="fp16 (Core ML's and the Neural Engine's "
                                                                  "precision) or fp32; the VAE decoder stays fp32."),
        overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing bundle folder."),
        attention: str = typer.Option("split_einsum", "--attention",
                                      help="UNet attention: split_einsum (Neural Engine) or original (GPU)."),
        batch: Path = typer.Option(None, "--batch", help=BATCH_HELP),
        quantize: str = typer.Option(None, "--quantize", help=QUANTIZE_HELP),
        calibration: Path = typer.Option(None, "--calibration", help=CALIBRATION_HELP),
        keep_float: int = typer.Option(None, "--keep-float", help="Keep the N most sensitive UNet layers fp16 "
                                                                  "(default: those under the analysis threshold)."),
        avg_bits: float = typer.Option(6.0, "--avg-bits", help="mixed-bit: target average bits of the UNet."),
    ) -> None:
        from ..export.coreml_export import coreml_settings

        q = quantize_options(quantize, calibration, batch=batch, keep_float=keep_float, avg_bits=avg_bits)
        with coreml_settings(attention=attention):
            if batch is not None:
                return _export_batch("coreml", model, batch, out, precision, False, overwrite,
                                     {"attention": attention})
            _export("coreml", model, out, precision, False, overwrite, quantization=q)

    return export_coreml


def _export(runtime: str, model: str, out: Path, precision: str, dynamic: bool, overwrite: bool,
            quantization=None, face_models: Path | None = None,
            token_merging: tuple[float, int] | None = None) -> None:
    label = precision if quantization is None else f"{precision} -> {quantization.mode}"
    with progress_bar(f"export {runtime} {label}") as update:
        path = _export_model(runtime, model, out, precision, dynamic, overwrite, update, quantization, face_models,
                             token_merging)
    console.print(f"wrote {path}")


def _export_model(runtime: str, model: str, out: Path, precision: str, dynamic: bool, overwrite: bool,
                  progress: Callable[..., None], quantization=None, face_models: Path | None = None,
                  token_merging: tuple[float, int] | None = None) -> Path:
    """Load one model and export it (what a single export and each item of a ``--batch`` run do)."""
    from ..export.bundle import export_bundle
    from ..model.generate import load_model

    source = source_name(model)
    m = load_model(model)
    if token_merging is not None:
        m.set_token_merging(*token_merging)
    return export_bundle(m, out, runtime, precision, dynamic=dynamic, overwrite=overwrite, progress=progress,
                         source_model=source, quantization=quantization, face_models=face_models)


def _export_batch(runtime: str, model: str, batch: Path, out: Path, precision: str, dynamic: bool,
                  overwrite: bool, extra_options: dict | None = None) -> None:
    """Every model folder in ``batch`` -> ``out/<name>``, resumable (see ``dhumandiff/export/batch.py``)."""
    from ..export.batch import find_sources, is_model_folder, model_base
    from .batch_view import batch_items, run_cli_batch

    if model != "tiny":
        from ..errors import DHumanDiffError

        raise DHumanDiffError("give either a MODEL or --batch FOLDER, not both")
    items = batch_items(find_sources(batch, is_model_folder, "model folder (dhumandiff.json)"), out, model_base)
    options = {"runtime": runtime, "precision": precision, "dynamic": dynamic, **(extra_options or {})}
    run_cli_batch(items, lambda item, progress: _export_model(runtime, str(item.source), item.out, precision,
                                                              dynamic, True, progress),
                  kind="bundle", options=options, overwrite=overwrite,
                  title=f"export {runtime} {precision}: {batch} -> {out}")


def parity(
    bundle: Path = typer.Argument(..., help="Bundle folder written by `dhumandiff export`."),
    model: str = typer.Option(None, "--model", help="Reference model (default: the bundle's source_model)."),
    report: Path = typer.Option(None, "--report", help="JSON report to write (default: BUNDLE.parity.json)."),
    steps: int = typer.Option(None, "--steps", help="Sampling steps end to end (default: the bundle's)."),
    seed: int = typer.Option(0, "--seed"),
    device: str = typer.Option("cpu", "--device", help="Runtime device (cpu, cuda, gpu, npu...)."),
    face_a: Path = typer.Option(None, "--face-a", help="Photo of person a (default: a tiny-world face)."),
    face_b: Path = typer.Option(None, "--face-b", help="Photo of person b (default: a tiny-world face)."),
    prompt: str = typer.Option(None, "--prompt", help="Prompt naming both people."),
    face_analyzer: str = typer.Option(None, "--face-analyzer", help="world, insightface or dlib (default: the "
                                                                     "model's)."),
    face_root: Path = typer.Option(None, "--face-root", help="insightface models folder (offline)."),
    end_to_end: bool = typer.Option(True, "--end-to-end/--components-only",
                                    help="Also generate one portrait with both and compare the images."),
    weights_only: bool = typer.Option(False, "--weights-only", help="Core ML bundles off macOS: run the graphs as "
                                      "torch with the bundle's exact (decompressed) weights."),
) -> None:
    """Compare a bundle with its PyTorch source: per component and end to end, against the bundle's budget."""
    from ..checks.parity import run_parity
    from ..errors import ParityError

    if (face_a is None) != (face_b is None):
        raise typer.BadParameter("give both --face-a and --face-b, or neither")
    faces = (face_a, face_b) if face_a is not None else None
    analyzer = None
    if face_analyzer is not None or face_root is not None:
        from ..model.faces import get_face_analyzer

        kw = {"root": str(face_root)} if face_root is not None else {}
        analyzer = get_face_analyzer(face_analyzer or "insightface", **kw)
    report = report or bundle.resolve().with_name(f"{bundle.resolve().name}.parity.json")
    try:
        result = run_parity(bundle, model=model, device=device, seed=seed, steps=steps, report=report,
                            end_to_end=end_to_end, faces=faces, prompt=prompt, analyzer=analyzer,
                            weights_only=weights_only)
        failed = None
    except ParityError as exc:
        result, failed = getattr(exc, "report", None), exc
        if result is None:
            raise
    _print(result)
    console.print(f"report: {report}")
    if failed is not None:
        raise failed


def _print(result) -> None:
    from rich.table import Table

    table = Table(title=f"parity: {result.bundle} ({result.runtime} {result.precision}, {result.device})")
    for col in ("component", "max abs", "cosine", "PSNR dB", "gate", "ok"):
        table.add_column(col)
    for c in result.components:
        tol = c.tolerance
        gate = f"abs<={tol['atol']:.0e} " if tol.get("atol") is not None else ""
        gate += f"cos>={tol['min_cosine']} psnr>={tol['min_psnr_db']}"
        table.add_row(c.name, f"{c.max_abs:.2e}", f"{c.cosine:.6f}", f"{c.psnr_db:.1f}", gate,
                      "[green]yes[/]" if c.passed else "[red]no[/]")
    e = result.end_to_end
    if e is not None:
        ident = ", ".join(f"{v:.4f}" for v in e.identity_cosine)
        gate = f"psnr>={e.min_psnr_db} faces>={e.identity_min_cosine}"
        if e.identity_delta is not None:
            ident += f"; id Δ {e.identity_delta:.4f}"
            gate += f" id Δ<={e.identity_max_delta}"
        table.add_row("end to end", "-", f"faces {ident}", f"{e.psnr_db:.1f}", gate,
                      "[green]yes[/]" if e.passed else "[red]no[/]")
    console.print(table)
    if not result.passed:
        console.print_json(json.dumps(result.failures))
