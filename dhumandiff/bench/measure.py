"""Timing statistics, resident memory and machine facts: the raw readings every benchmark is built from.

Torch-free and runtime-free on purpose: the worker process of a bundle variant imports this and its runtime
only, so the memory it reports is the runtime's.
"""

from __future__ import annotations

import os
import platform
import resource
import statistics
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

from ..utils.cpu import cpu_features


@dataclass
class Timing:
    """Latency of one measured call after warm-up, in milliseconds."""

    median_ms: float
    min_ms: float
    max_ms: float
    n: int
    samples_ms: list[float] = field(default_factory=list)

    @classmethod
    def of(cls, seconds: list[float]) -> "Timing":
        if not seconds:
            raise ValueError("no timing samples (repeats must be >= 1)")
        ms = [s * 1000.0 for s in seconds]
        return cls(statistics.median(ms), min(ms), max(ms), len(ms), [round(v, 4) for v in ms])

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def time_calls(fn: Callable[[], Any], warmup: int, repeats: int) -> tuple[Timing, Any]:
    """Run ``fn`` ``warmup`` times unmeasured, then ``repeats`` times measured; returns the timing and the last
    result (kept so callers can check what was computed)."""
    result = None
    for _ in range(max(warmup, 0)):
        result = fn()
    seconds = []
    for _ in range(max(repeats, 1)):
        t0 = time.perf_counter()
        result = fn()
        seconds.append(time.perf_counter() - t0)
    return Timing.of(seconds), result


# ------------------------------------------------------------------------------------------------- memory


def _status_kb(key: str) -> float | None:
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return float(line.split()[1])
    except OSError:
        return None
    return None


def rss_mb() -> float:
    """Current resident set size of this process in MiB."""
    kb = _status_kb("VmRSS")
    if kb is not None:
        return kb / 1024.0
    try:
        import psutil

        return psutil.Process().memory_info().rss / 2**20
    except ImportError:  # pragma: no cover - non-Linux without psutil
        return peak_rss_mb()


def peak_rss_mb() -> float:
    """Peak resident set size of this process in MiB (since start, or since :func:`reset_peak_rss`)."""
    kb = _status_kb("VmHWM")
    if kb is not None:
        return kb / 1024.0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if platform.system() == "Darwin" else peak / 1024.0  # bytes on macOS, KiB on Linux


def reset_peak_rss() -> bool:
    """Start a new peak-RSS window (Linux ``/proc/self/clear_refs`` = 5); False where the kernel has none.

    Lets a worker report the peak while it *runs* a model separately from the peak while it *loaded* it
    (compilation, weight conversion and, for torch rows, building the model can need more than running).
    """
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
            f.write("5")
        return True
    except OSError:
        return False


# ------------------------------------------------------------------------------------------------ machine


def cpu_info() -> dict[str, Any]:
    """CPU model, core count, the matmul-relevant flags and their one-line summary (``utils.cpu``)."""
    return cpu_features().to_dict()


def memory_total_gb() -> float | None:
    kb = None
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    kb = float(line.split()[1])
                    break
    except OSError:
        return None
    return None if kb is None else round(kb / 2**20, 1)


def load_average() -> list[float] | None:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except (OSError, AttributeError):  # pragma: no cover - Windows
        return None


def package_versions(names: tuple[str, ...] = ("numpy", "torch", "onnxruntime", "openvino", "nncf",
                                                 "coremltools")) -> dict[str, str | None]:
    """Installed versions, read from package metadata (imports nothing)."""
    from importlib import metadata

    out: dict[str, str | None] = {}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def machine_info() -> dict[str, Any]:
    """What the numbers were measured on (goes into every JSON report)."""
    return {"cpu": cpu_info(), "memory_gb": memory_total_gb(), "python": platform.python_version(),
            "platform": platform.platform(), "versions": package_versions()}
