"""OpenVINO adapter: ``Core().compile_model`` per component on CPU, GPU or NPU, compiled on first use.

The inference precision is always set explicitly from the bundle's precision: left to its default, OpenVINO
runs in bf16 on AVX-512-BF16 CPUs (like this project's build machines) and an fp32 bundle would miss its
1e-4 parity budget by orders of magnitude. IR (``.xml`` + ``.bin``) and ``.onnx`` files are both accepted.

Compiled graphs are cached on disk (OpenVINO's ``CACHE_DIR``, as optimum-intel does by default), so only the very
first start of a bundle on a machine pays for compilation: a kiosk or app restart imports the cached blobs.
``$DHUMANDIFF_OPENVINO_CACHE`` moves the cache (default ``~/.cache/dhumandiff/openvino``); ``off`` disables it.
Each device / precision / thread setting gets its own sub-folder: OpenVINO 2026.4's cache key ignores the
precision hint, so a graph cached at f32 would otherwise be imported for a bf16 run of the same file (and there
produce NaN; measured on the sd15-size UNet).

While a graph compiles and after, the pages of its mapped weight file and cached blob are handed back
(:mod:`.mapped_weights`): OpenVINO has repacked them and does not read them again, and they were 43 % of the
int8 UNet's peak memory.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from dhumandiff.errors import BundleError, RuntimeUnavailableError
from dhumandiff.runtimes.adapters.base import BaseRunner, load_failure
from dhumandiff.runtimes.adapters.mapped_weights import ReleasedWhileLoading
from dhumandiff.utils.cpu import cpu_features

_DEVICES = ("CPU", "GPU", "NPU")


def _ov() -> Any:
    try:
        import openvino
    except ImportError:
        raise RuntimeUnavailableError("OpenVINO is not installed; pip install 'dhumandiff[openvino]'") from None
    return openvino


def compile_cache_dir() -> str | None:
    """Where compiled graphs are cached (None: caching off, ``DHUMANDIFF_OPENVINO_CACHE=off``)."""
    value = os.environ.get("DHUMANDIFF_OPENVINO_CACHE")
    if value is not None and value.strip().lower() in ("", "0", "off", "none", "false"):
        return None
    folder = Path(value) if value else Path.home() / ".cache" / "dhumandiff" / "openvino"
    try:  # a read-only home (a locked-down kiosk) runs uncached rather than failing to compile
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:
        return None
    return str(folder) if os.access(folder, os.W_OK) else None


def precision_hint(bundle_precision: str, device: str) -> str:
    """INFERENCE_PRECISION_HINT for a bundle precision on an OpenVINO device (never OpenVINO's default).

    fp32 -> f32 everywhere; bf16 -> bf16, except on a CPU without native bf16 (AVX2-only, AVX-512 without
    AVX512_BF16/AMX), where OpenVINO would silently run f32 anyway: asking for f32 there says so and keeps the
    compile cache honest; fp16 and quantised bundles (int8, int4, palettised, ...) -> f16 on GPU/NPU (their
    native float) and f32 on CPU, where f16 compute is not generally available and the default would be bf16.
    """
    p = bundle_precision.lower()
    if p in ("fp32", "f32", "float32"):
        return "f32"
    if p in ("bf16", "bfloat16"):
        return "bf16" if not device.upper().startswith("CPU") or cpu_features().bf16 else "f32"
    return "f32" if device.upper().startswith("CPU") else "f16"


def resolve_device(device: str, available: list[str]) -> str:
    """``--device`` (cpu/gpu/npu/auto) -> an OpenVINO device name present on this machine."""
    want = device.upper()
    if want == "AUTO":
        for d in ("GPU", "NPU", "CPU"):
            if any(a.split(".")[0] == d for a in available):
                return d
    if want not in _DEVICES:
        raise RuntimeUnavailableError(f"unknown OpenVINO device {device!r}; choose cpu, gpu, npu or auto")
    if not any(a.split(".")[0] == want for a in available):
        raise RuntimeUnavailableError(
            f"OpenVINO device {want} is not present on this machine (available: {', '.join(available) or 'none'}); "
            "use --device cpu"
        )
    return want


def mapped_sources(graph: Path, config: Mapping[str, Any]) -> list[Path]:
    """What an OpenVINO compile of ``graph`` maps and never reads again once repacked: the graph's folder (its
    ``.bin`` / external data) and the compile cache folder (the cached blob), for :class:`ReleasedWhileLoading`."""
    cache = [Path(config["CACHE_DIR"]).resolve()] if "CACHE_DIR" in config else []
    return [Path(graph).resolve().parent, *cache]


def _type_name(value: Any) -> str:
    """Short name (f32, bf16, f16) of an OpenVINO element type given as ``ov.Type`` or as that name."""
    return value.get_type_name() if hasattr(value, "get_type_name") else str(value).lower()


class OpenVINORunner(BaseRunner):
    runtime = "openvino"

    def __init__(self, components: Mapping[str, Any], root: str | Path, device: str = "cpu", precision: str = "fp32",
                 num_threads: int | None = None) -> None:
        ov = _ov()
        self._core = ov.Core()
        resolved = resolve_device(device, list(self._core.available_devices))
        super().__init__(components, root, resolved)
        self.precision = precision
        self.hint = precision_hint(precision, resolved)
        self.num_threads = num_threads
        self.cache_dir = compile_cache_dir()

    @property
    def providers(self) -> list[str]:
        return [f"OpenVINO:{self.device}:{self.hint}"]

    def compile_config(self) -> dict[str, Any]:
        cfg: dict[str, Any] = {"INFERENCE_PRECISION_HINT": self.hint, "PERFORMANCE_HINT": "LATENCY"}
        if self.num_threads and self.device == "CPU":
            cfg["INFERENCE_NUM_THREADS"] = int(self.num_threads)
        if self.cache_dir:
            threads = f"t{self.num_threads}" if self.num_threads else "tall"
            cfg["CACHE_DIR"] = str(Path(self.cache_dir) / f"{self.device.lower()}-{self.hint}-{threads}")
        return cfg

    def _load(self, component: str) -> Any:
        path = self.path_of(component)
        config = self.compile_config()
        try:
            with ReleasedWhileLoading(mapped_sources(path, config)):
                model = self._core.read_model(str(path))
                compiled = self._core.compile_model(model, self.device, config)
                del model
        except Exception as e:  # OpenVINO raises RuntimeError with multi-line C++ traces
            raise load_failure(f"OpenVINO ({self.device}) cannot compile", path, component, e) from None
        got = _type_name(compiled.get_property("INFERENCE_PRECISION_HINT"))
        if got != _type_name(self.hint):
            raise RuntimeUnavailableError(
                f"OpenVINO {self.device} ignored precision {self.hint} (runs {got}); use another --device"
            )
        return compiled, compiled.create_infer_request()

    def _run(self, component: str, handle: Any, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        compiled, request = handle
        feed: dict[Any, np.ndarray] = {}
        for port in compiled.inputs:
            names = port.get_names()
            match = next((n for n in names if n in inputs), None)
            if match is None:
                raise BundleError(
                    f"{component} graph takes input {sorted(names)} that bundle.json does not declare; "
                    "re-export the bundle"
                )
            feed[port] = inputs[match]
        results = request.infer(feed)
        wanted = set(self.components[component].outputs)
        out: dict[str, np.ndarray] = {}
        for port in compiled.outputs:
            names = port.get_names()
            name = next((n for n in names if n in wanted), port.get_any_name())
            out[name] = np.array(results[port], copy=True)  # the request reuses its buffers
        return out


def describe(probe: bool = True) -> dict[str, Any]:
    try:
        ov = _ov()
    except RuntimeUnavailableError:
        return {"installed": False, "version": None, "providers": [], "devices": []}
    devices = list(ov.Core().available_devices)
    return {
        "installed": True, "version": ov.get_version(), "providers": devices,
        "devices": [d.lower() for d in devices],
    }
