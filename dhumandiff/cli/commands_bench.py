"""``dhumandiff bench``: latency, memory, size, cold start and FLOP rate of every runtime and precision, side by
side (markdown + JSON + PNG). The measuring lives in ``dhumandiff.bench``; this is its command line.
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

import typer

from .console import console, err_console


def register(app: typer.Typer) -> None:
    app.command("bench")(bench)


def _csv(value: str | None) -> tuple[str, ...]:
    if value is None:
        return ()
    items = tuple(v.strip() for v in value.split(",") if v.strip())
    return () if items in (("none",), ("",)) else items


def _command_line(scale: str, out: Path) -> str:
    """The exact command as typed (for the report), when this process was started as ``... bench ...``."""
    args = sys.argv[1:]
    if "bench" in args:
        return "dhumandiff " + " ".join(shlex.quote(a) for a in args[args.index("bench"):])
    return f"dhumandiff bench --scale {scale} --out {shlex.quote(str(out))}"


def bench(
    scale: str = typer.Option("tiny", "--scale", help="tiny: a model and its bundles, per component and end to end."),
    out: Path = typer.Option(Path("bench-results"), "--out", help="Folder for bench_SCALE.json / .md / .png."),
    model: str = typer.Option(None, "--model", help="Embedded model name or folder (default: tiny)."),
    bundle: list[Path] = typer.Option(None, "--bundle", help="Also measure this bundle folder (repeatable; any "
                                                             "runtime or precision, e.g. quantised exports)."),
    runtimes: str = typer.Option(",".join(("onnx", "openvino", "torchscript")), "--runtimes",
                                 help="Runtimes to export and measure ('none' for only --bundle)."),
    precisions: str = typer.Option("fp32,fp16", "--precisions", help="Export precisions."),
    torch_precisions: str = typer.Option("fp32,bf16", "--torch-precisions",
                                         help="Torch rows (fp32 is the PSNR reference; 'none' to skip)."),
    cache: Path = typer.Option(None, "--cache", help="Exports reused between runs (default "
                                                     "~/.cache/dhumandiff/bench)."),
    warmup: int = typer.Option(1, "--warmup", help="Unmeasured calls before timing."),
    repeats: int = typer.Option(5, "--repeats", help="Timed calls (median, min, max are reported)."),
    e2e_repeats: int = typer.Option(None, "--e2e-repeats", help="Timed images (default --repeats)."),
    steps: int = typer.Option(None, "--steps", help="Sampling steps per image (default: the bundle's)."),
    threads: int = typer.Option(None, "--threads", help="Threads per runtime (default: all cores)."),
    no_peaks: bool = typer.Option(False, "--no-peaks", help="Skip the matmul peak measurement."),
    no_ov_bf16: bool = typer.Option(False, "--no-ov-bf16", help="Skip OpenVINO fp32 bundles at bf16."),
    timeout: float = typer.Option(3600.0, "--timeout", help="Seconds one variant may take."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace this scale's report in --out."),
) -> None:
    """Benchmark every runtime and precision side by side: latency, peak memory, size, cold start, GFLOP/s."""
    from ..bench.run import BenchSettings, run_bench

    settings = BenchSettings(
        scale=scale, out=out, model=model, bundles=[str(b) for b in bundle or []], runtimes=_csv(runtimes),
        precisions=_csv(precisions), torch_precisions=_csv(torch_precisions), ov_bf16=not no_ov_bf16, cache=cache,
        warmup=warmup, repeats=repeats, e2e_repeats=e2e_repeats, steps=steps, threads=threads,
        peaks=not no_peaks, timeout=timeout, overwrite=overwrite, command=_command_line(scale, out))
    paths = run_bench(settings, progress=lambda msg: err_console.print(msg, highlight=False, soft_wrap=True))
    for kind, path in paths.items():
        console.print(f"wrote {path}")
