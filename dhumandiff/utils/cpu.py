"""What this CPU can really do: the instruction sets that decide which int8 and bf16 kernels are fast.

Machines that run dhumandiff differ (the project's own build machines are AVX-512 with VNNI and bf16 on some days
and AVX2-only AMD EPYC on others), and the differences are not small: without VNNI, onnxruntime's u8 x s8 int8
products go through ``vpmaddubsw``, which saturates its int16 sums (onnxruntime's quantisation guide answers
with u8 x u8 or ``reduce_range``); without native bf16, PyTorch emulates bf16 matmuls at ~1 % of fp32's speed and
OpenVINO silently runs f32. Precisions, quantisation kernels and bench rows are chosen from these facts, never
assumed. Torch-free: the runtimes and ``dhumandiff doctor`` read it.
"""

from __future__ import annotations

import functools
import os
import platform
from dataclasses import dataclass

#: CPU flags that decide which matmul kernels exist (VNNI: int8 dot products; BF16: bf16 FMAs; AMX: tiles).
MATMUL_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_tile", "amx_int8",
                "amx_bf16", "amx_fp16")
#: Any of these gives int8 dot products without int16 saturation (u8 x s8 is then exact and the fast path).
VNNI_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")
#: Any of these gives native bf16 arithmetic (otherwise bf16 is emulated or silently run in f32).
BF16_FLAGS = ("avx512_bf16", "amx_bf16")


@dataclass(frozen=True)
class CpuFeatures:
    """The matmul-relevant facts of one CPU."""

    model: str
    machine: str
    cores: int | None
    flags: tuple[str, ...]

    @property
    def vnni(self) -> bool:
        return any(f in self.flags for f in VNNI_FLAGS)

    @property
    def bf16(self) -> bool:
        return any(f in self.flags for f in BF16_FLAGS)

    @property
    def avx512(self) -> bool:
        return "avx512f" in self.flags

    @property
    def int8_kernel(self) -> str:
        """The int8 operand types that are both exact and fast here: ``u8s8`` with VNNI, else ``u8u8``."""
        return "u8s8" if self.vnni else "u8u8"

    def line(self) -> str:
        """Model, cores, summary and flags in one line: what a report or benchmark prints beside its figures."""
        return f"{self.model} ({self.cores} cores): {self.summary()} [{', '.join(self.flags) or 'no flags read'}]"

    def summary(self) -> str:
        """One line for reports and BENCHMARKS.md, e.g. ``AVX-512 + VNNI + BF16``."""
        if self.machine.lower() not in ("x86_64", "amd64", "i686", "x86"):
            return self.machine
        isa = "AVX-512" if self.avx512 else ("AVX2" if "avx2" in self.flags else "SSE")
        parts = [isa] + (["VNNI"] if self.vnni else []) + (["BF16"] if self.bf16 else [])
        parts += ["AMX"] if "amx_tile" in self.flags else []
        return " + ".join(parts)

    def to_dict(self) -> dict:
        return {"model": self.model, "machine": self.machine, "cores": self.cores, "flags": list(self.flags),
                "vnni": self.vnni, "bf16": self.bf16, "summary": self.summary()}


def _read_cpuinfo() -> tuple[str, set[str]]:
    model, flags = platform.processor() or platform.machine(), set()
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("model name") and ":" in line:
                    model = line.split(":", 1)[1].strip()
                elif line.startswith("flags") and ":" in line:
                    flags = set(line.split(":", 1)[1].split())
                    break
    except OSError:
        pass
    return model, flags


@functools.lru_cache(maxsize=1)
def cpu_features() -> CpuFeatures:
    """This machine's CPU (read once from ``/proc/cpuinfo``; elsewhere the model name and no flags)."""
    model, flags = _read_cpuinfo()
    return CpuFeatures(model=model, machine=platform.machine(), cores=os.cpu_count(),
                       flags=tuple(f for f in MATMUL_FLAGS if f in flags))
