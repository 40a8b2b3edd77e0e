"""``run_bench``: machine facts + matmul peaks + one scale's variants -> ``bench_{scale}.{json,md,png}``."""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from ..errors import DHumanDiffError
from .jobs import run_worker
from .measure import load_average, machine_info
from .report import output_paths, write_report

SCALES = ("tiny", "sd15")
#: Defaults of the tiny scale: every runtime that executes on Linux, in both exported precisions.
DEFAULT_RUNTIMES = ("onnx", "openvino", "torchscript")
DEFAULT_PRECISIONS = ("fp32", "fp16")
DEFAULT_TORCH_PRECISIONS = ("fp32", "bf16")


def default_cache() -> Path:
    """Exports reused between runs (the sd15 cache is ~8 GB): ``$DHUMANDIFF_CACHE`` or ``~/.cache/dhumandiff``."""
    root = os.environ.get("DHUMANDIFF_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "dhumandiff")
    return Path(root) / "bench"


@dataclass
class BenchSettings:
    """Everything a run depends on (also written into the JSON report)."""

    scale: str = "tiny"
    out: Path = Path("bench-results")
    model: str | None = None
    bundles: list[str] = field(default_factory=list)
    runtimes: tuple[str, ...] = DEFAULT_RUNTIMES
    precisions: tuple[str, ...] = DEFAULT_PRECISIONS
    torch_precisions: tuple[str, ...] = DEFAULT_TORCH_PRECISIONS
    ov_bf16: bool = True
    cache: Path | None = None
    warmup: int = 1
    repeats: int = 5
    e2e_repeats: int | None = None
    steps: int | None = None
    seed: int = 0
    threads: int | None = None
    peaks: bool = True
    profile: bool = True
    timeout: float | None = 3600.0
    sd15_variants: tuple[str, ...] | None = None
    calibration_samples: int = 8
    #: The backbone of the sd15 scale; tests run the same code on the few-MB ``sd15-test`` twin.
    sd15_backbone: str = "sd15"
    overwrite: bool = False
    command: str = ""

    def __post_init__(self) -> None:
        if self.scale not in SCALES:
            raise DHumanDiffError(f"unknown scale {self.scale!r}; choose {' or '.join(SCALES)}")
        if self.warmup < 0 or self.repeats < 1:
            raise DHumanDiffError("--warmup must be >= 0 and --repeats >= 1")
        self.out = Path(self.out)
        self.cache = Path(self.cache) if self.cache else default_cache()
        if self.e2e_repeats is None:
            self.e2e_repeats = self.repeats
        for b in self.bundles:
            if not (Path(b) / "bundle.json").is_file():
                from ..errors import BundleError

                raise BundleError(f"{b} is not a bundle folder (no bundle.json); pass the folder written by "
                                  f"`dhumandiff export`")

    @property
    def work(self) -> Path:
        """Per-run scratch: worker jobs, logs, outputs (kept for inspection; small)."""
        return Path(self.cache) / "work" / self.scale  # type: ignore[arg-type]


def run_bench(settings: BenchSettings, progress: Callable[[str], None] = lambda msg: None) -> dict[str, Path]:
    """Measure one scale and write its report; returns the written paths (``json``, ``md``, ``png``)."""
    paths = output_paths(settings.out, settings.scale)
    existing = [p for p in paths.values() if p.exists()]
    if existing and not settings.overwrite:
        raise FileExistsError(f"{existing[0]} exists; pass --overwrite to replace the {settings.scale} report")
    settings.work.mkdir(parents=True, exist_ok=True)
    started = time.time()
    report: dict[str, Any] = {
        "scale": settings.scale, "command": settings.command, "created": time.strftime("%Y-%m-%d %H:%M:%S"),
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(settings).items()},
        "machine": machine_info(), "load_average_start": load_average(),
    }
    if settings.peaks:
        progress("measuring matmul peaks (fp32, bf16, int8)")
        measured = run_worker({"kind": "peaks", "threads": settings.threads}, settings.work, "peaks",
                              timeout=settings.timeout)
        report["peaks_this_run"] = measured
        if "methods" in measured:
            from .peaks import merge_best

            # the table's ceilings: the best reading on this machine so far (a busy run measures less)
            report["peaks"] = merge_best(Path(settings.cache) / "peaks-best.json", measured, report["machine"])
    if settings.scale == "tiny":
        from .tiny import bench_tiny

        body = bench_tiny(settings, progress)
        report["steps"] = next((r["steps"] for r in body["variants"] if r.get("steps")), settings.steps)
    else:
        from .sd15 import bench_sd15

        body = bench_sd15(settings, progress)
    report.update(body)
    report["load_average_end"] = load_average()
    report["wall_s"] = round(time.time() - started, 1)
    return write_report(report, settings.out)
