"""``dhumandiff export onnx|openvino|torchscript|coreml MODEL --out BUNDLE`` and ``dhumandiff parity BUNDLE``.

Heavy imports (torch, exporters, runtimes) happen inside the commands so ``dhumandiff --help`` stays fast.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import typer

from .console import console, progress_bar

export_app = typer.Typer(no_args_is_help=True,
                         help="Export a model as a bundle (graphs + tokenizer + bundle.json) for one runtime.")

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


def _source_name(model: str | None) -> str:
    """What bundle.json records as ``source_model``: the embedded name, or the folder's absolute path."""
    from ..model.registry import ASSETS, resolve_model

    path = resolve_model(model)
    return path.name if path.parent == ASSETS else str(path.resolve())


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
    ) -> None:
        _export(runtime, model, out, precision, dynamic, overwrite)

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
    ) -> None:
        from ..export.coreml_export import coreml_settings

        with coreml_settings(attention=attention):
            _export("coreml", model, out, precision, False, overwrite)

    return export_coreml


def _export(runtime: str, model: str, out: Path, precision: str, dynamic: bool, overwrite: bool) -> None:
    from ..export.bundle import export_bundle
    from ..export.specs import components_for
    from ..model.generate import load_model

    source = _source_name(model)
    m = load_model(model)
    with progress_bar(f"export {runtime} {precision}", total=len(components_for(m)) + 1) as update:
        path = export_bundle(m, out, runtime, precision, dynamic=dynamic, overwrite=overwrite, progress=update,
                             source_model=source)
    console.print(f"wrote {path}")


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
) -> None:
    """Compare a bundle with its PyTorch source: per component and end to end, against the bundle's budget."""
    from ..checks.parity import run_parity
    from ..errors import ParityError

    if (face_a is None) != (face_b is None):
        raise typer.BadParameter("give both --face-a and --face-b, or neither")
    faces = (face_a, face_b) if face_a is not None else None
    analyzer = None
    if face_analyzer is not None or face_root is not None:
        from ..model.faces.base import get_face_analyzer

        kw = {"root": str(face_root)} if face_root is not None else {}
        analyzer = get_face_analyzer(face_analyzer or "insightface", **kw)
    report = report or bundle.resolve().with_name(f"{bundle.resolve().name}.parity.json")
    try:
        result = run_parity(bundle, model=model, device=device, seed=seed, steps=steps, report=report,
                            end_to_end=end_to_end, faces=faces, prompt=prompt, analyzer=analyzer)
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
        table.add_row("end to end", "-", f"faces {ident}", f"{e.psnr_db:.1f}",
                      f"psnr>={e.min_psnr_db} faces>={e.identity_min_cosine}",
                      "[green]yes[/]" if e.passed else "[red]no[/]")
    console.print(table)
    if not result.passed:
        console.print_json(json.dumps(result.failures))
