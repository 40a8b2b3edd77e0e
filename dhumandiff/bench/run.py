"""``run_bench``: machine facts + matmul peaks + a model's and its bundles' variants -> ``bench_tiny.{json,md,png}``.

:class:`RunSettings` and :func:`measured_report` are the frame of any measured run (refusing to overwrite a
report, the machine it ran on, the load average around it, the matmul ceilings); :func:`run_bench` puts the tiny
scale's variants (``tiny.py``) in that frame.
"""

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

SCALES = ("tiny",)
#: Defaults of the tiny scale: every runtime that executes on Linux, in both exported precisions.
DEFAULT_RUNTIMES = ("onnx", "openvino", "torchscript")
DEFAULT_PRECISIONS = ("fp32", "fp16")
DEFAULT_TORCH_PRECISIONS = ("fp32", "bf16")

Progress = Callable[[str], None]


def default_cache() -> Path:
    """Exports reused between runs: ``$DHUMANDIFF_CACHE/bench`` or ``~/.cache/dhumandiff/bench``."""
    root = os.environ.get("DHUMANDIFF_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "dhumandiff")
    return Path(root) / "bench"


@dataclass
class RunSettings:
    """What every measured run depends on, whatever it measures (also written into the JSON report).

    ``scale`` names the report (``bench_{scale}.*``) and the scratch folder; ``cache`` holds exports reused
    between runs (default :func:`default_cache`).
    """

    scale: str = "tiny"
    out: Path = Path("bench-results")
    cache: Path | None = None
    warmup: int = 1
    repeats: int = 5
    threads: int | None = None
    peaks: bool = True
    timeout: float | None = 3600.0
    overwrite: bool = False
    command: str = ""

    def __post_init__(self) -> None:
        if self.warmup < 0 or self.repeats < 1:
            raise DHumanDiffError("--warmup must be >= 0 and --repeats >= 1")
        self.out = Path(self.out)
        self.cache = Path(self.cache) if self.cache else default_cache()

    @property
    def work(self) -> Path:
        """Per-run scratch: worker jobs, logs, outputs (kept for inspection; small)."""
        return Path(self.cache) / "work" / self.scale  # type: ignore[arg-type]


@dataclass
class BenchSettings(RunSettings):
    """``dhumandiff bench``: a model (``model``, default the embedded ``tiny``) exported for ``runtimes`` x
    ``precisions``, its torch rows, and any given ``bundles``."""

    model: str | None = None
    bundles: list[str] = field(default_factory=list)
    runtimes: tuple[str, ...] = DEFAULT_RUNTIMES
    precisions: tuple[str, ...] = DEFAULT_PRECISIONS
    torch_precisions: tuple[str, ...] = DEFAULT_TORCH_PRECISIONS
    ov_bf16: bool = True
    e2e_repeats: int | None = None
    steps: int | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        if self.scale not in SCALES:
            raise DHumanDiffError(f"unknown scale {self.scale!r}; choose {' or '.join(SCALES)}")
        super().__post_init__()
        if self.e2e_repeats is None:
            self.e2e_repeats = self.repeats
        for b in self.bundles:
            if not (Path(b) / "bundle.json").is_file():
                from ..errors import BundleError

                raise BundleError(f"{b} is not a bundle folder (no bundle.json); pass the folder written by "
                                  f"`dhumandiff export`")


def measured_report(settings: RunSettings, body: Callable[[Any, Progress], dict[str, Any]],
                    progress: Progress = lambda msg: None) -> dict[str, Any]:
    """One run's report: settings, machine facts, load averages, this machine's matmul peaks (unless
    ``settings.peaks`` is false) and what ``body(settings, progress)`` measured (merged in), plus the wall time.

    Raises ``FileExistsError`` first when the scale's report exists in ``settings.out`` and ``overwrite`` is off.
    """
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
    report.update(body(settings, progress))
    report["load_average_end"] = load_average()
    report["wall_s"] = round(time.time() - started, 1)
    return report


def _tiny_body(settings: BenchSettings, progress: Progress) -> dict[str, Any]:
    from .tiny import bench_tiny

    body = bench_tiny(settings, progress)
    steps = next((r["steps"] for r in body["variants"] if r.get("steps")), settings.steps)
    return {"steps": steps, **body}


def run_bench(settings: BenchSettings, progress: Progress = lambda msg: None) -> dict[str, Path]:
    """Measure the model and bundles of ``settings`` and write the report; returns the written paths (``json``,
    ``md``, ``png``)."""
    return write_report(measured_report(settings, _tiny_body, progress), settings.out)
