"""One sd15-scale run: its settings, and the run itself in ``dhumandiff.bench``'s report frame (machine facts,
load averages, matmul peaks), judged against the goals and written as ``bench_sd15.{json,md,png}``."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from dhumandiff.bench.report import write_report
from dhumandiff.bench.run import RunSettings, measured_report

from ..goals import evaluate_goals
from .measure import bench_sd15
from .prepare import BACKBONE
from .report import plot_sd15, sd15_markdown


@dataclass
class Sd15Settings(RunSettings):
    """The frame's settings plus the study's own: which ``variants`` (keys or the groups unet, student,
    components; None: all), NNCF's ``calibration_samples``, per-op ``profile`` of the marked variants, and the
    ``backbone`` (tests run the same code on the few-MB ``sd15-test`` twin). Exports are cached in
    ``CACHE/BACKBONE`` (~18 GB for sd15)."""

    scale: str = "sd15"
    variants: tuple[str, ...] | None = None
    calibration_samples: int = 8
    profile: bool = True
    backbone: str = BACKBONE


def run_sd15(settings: Sd15Settings, progress: Callable[[str], None] = lambda msg: None) -> dict[str, Path]:
    """Measure, judge and write the report; returns the written paths (``json``, ``md``, ``png``)."""
    report: dict[str, Any] = measured_report(settings, bench_sd15, progress)
    report["goals"] = evaluate_goals(report)
    return write_report(report, settings.out, markdown=sd15_markdown, plot=plot_sd15)
