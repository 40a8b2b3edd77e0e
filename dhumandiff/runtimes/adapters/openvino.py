"""OpenVINO adapter: ``Core().compile_model`` per component on CPU, GPU or NPU, compiled on first use.

The inference precision is always set explicitly from the bundle's precision: left to its default, OpenVINO
runs in bf16 on AVX-512-BF16 CPUs (like this project's build machines) and an fp32 bundle would miss its
1e-4 parity budget by orders of magnitude. IR (``.xml`` + ``.bin``) and ``.onnx`` files are both accepted.

Compiled graphs are cached on disk (OpenVINO's ``CACHE_DIR``, as optimum-intel does by default), so only the very
first start of a bundle on a machine pays for compilation: a kiosk or app restart imports the cached blobs.
``$DHUMANDIFF_OPENVINO_CACHE`` moves the cache (default ``~/.cache/dhumandiff/openvino``); ``off`` disables it.
Each device / precision / thread setting gets its own sub-folder: OpenVINO 2026.4's cache key ignores the
precision hint, so a graph cached at f32 would otherwise be imported for a bf16 run of the same file (and there
produce NaN; measured on the sd15-size UNet). Inside it each graph has its own folder, named by a key of the graph's
files (their sha256 in bundle.json, which the bundle reader checked), those settings and the OpenVINO version, so
a changed graph or another OpenVINO never meets an old blob. OpenVINO imports a blob without checking its bytes (a
damaged one runs and gives another image), so beside each blob this adapter keeps a record of the blob's sha256,
written after the compile that made it; before each compile, a blob without a record or not matching it is deleted
and compiled again. A cache folder that cannot be checked or written is not used (the graph compiles uncached).

While a graph compiles and after, the pages of its mapped weight file and cached blob are handed back
(:mod:`.mapped_weights`): OpenVINO has repacked them and does not read them again, and they were 43 % of the
int8 UNet's peak memory.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from dhumandiff.contract.bundle import ComponentSpec, graph_side_files
from dhumandiff.errors import BundleError, RuntimeUnavailableError
from dhumandiff.runtimes.adapters.base import BaseRunner, check_graph_io, load_failure
from dhumandiff.runtimes.adapters.mapped_weights import ReleasedWhileLoading
from dhumandiff.utils.atomic import sha256_file, write_text_atomic
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


#: Beside each cached ``NAME.blob``: ``NAME.blob.sha256.json``, the blob's sha256 and its folder's graph key.
RECORD_SUFFIX = ".sha256.json"


def graph_files(root: Path, component: ComponentSpec) -> list[str]:
    """Bundle-relative files an OpenVINO compile of ``component`` reads: its graph, its side files, and what the
    graph reads by itself (the IR's ``.bin``, ONNX external data)."""
    own = [rel for rel, _why in graph_side_files(root, component, OpenVINORunner.runtime)]
    return list(dict.fromkeys([component.file, *component.extra_files, *own]))


def graph_cache_key(digests: Mapping[str, str], settings: Mapping[str, Any]) -> str:
    """Short key of one compiled graph: its files' sha256 and the settings it was compiled with."""
    text = json.dumps({"files": dict(sorted(digests.items())), **settings}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def _blob_ok(blob: Path, key: str) -> bool:
    """Whether ``blob`` is a plain file whose record names ``key`` and the blob's own sha256."""
    try:
        if not stat.S_ISREG(os.stat(blob).st_mode):
            return False
        with open(str(blob) + RECORD_SUFFIX, "rb") as fh:
            record = json.loads(fh.read(4096))
        return isinstance(record, dict) and record.get("key") == key and record.get("sha256") == sha256_file(blob)
    except (OSError, ValueError):
        return False


def check_cache_folder(folder: Path, key: str) -> set[str] | None:
    """Delete every blob in a graph's cache folder that is not the one its record describes (damaged, half
    written, left by a crash or copied in from elsewhere), so OpenVINO compiles it again instead of importing it.
    Returns the names of the blobs kept, or None when the folder cannot be used (compile uncached then)."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        if not os.access(folder, os.W_OK):
            return None
        kept = set()
        for blob in folder.glob("*.blob"):
            if _blob_ok(blob, key):
                kept.add(blob.name)
                continue
            blob.unlink()
            Path(str(blob) + RECORD_SUFFIX).unlink(missing_ok=True)
        return kept
    except OSError:
        return None


def record_new_blobs(folder: Path, key: str, kept: set[str]) -> None:
    """After a compile: write the record of each blob it added (the blobs the check before it did not keep)."""
    for blob in folder.glob("*.blob"):
        if blob.name not in kept:
            try:
                record = {"blob": blob.name, "sha256": sha256_file(blob), "key": key}
                write_text_atomic(str(blob) + RECORD_SUFFIX, json.dumps(record) + "\n")
            except OSError:  # no record: the next start deletes the blob and compiles again
                pass


def _port_shapes(ports: Any) -> dict[str, list[int | None]]:
    """name -> declared shape (None where dynamic) of each compiled-model port, under each of its names."""
    out: dict[str, list[int | None]] = {}
    for port in ports:
        pshape = port.get_partial_shape()
        if pshape.rank.is_dynamic:
            continue
        shape = [d.get_length() if d.is_static else None for d in pshape]
        out.update({n: shape for n in port.get_names()})
    return out


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
        self.openvino_version = str(ov.get_version())
        self._keys: dict[str, str] = {}

    @property
    def providers(self) -> list[str]:
        return [f"OpenVINO:{self.device}:{self.hint}"]

    def compile_config(self, component: str | None = None) -> dict[str, Any]:
        """OpenVINO's compile properties; with ``component``, ``CACHE_DIR`` is that graph's own cache folder
        (without, the folder of these settings that holds the graphs' folders)."""
        cfg: dict[str, Any] = {"INFERENCE_PRECISION_HINT": self.hint, "PERFORMANCE_HINT": "LATENCY"}
        if self.num_threads and self.device == "CPU":
            cfg["INFERENCE_NUM_THREADS"] = int(self.num_threads)
        key = self.cache_key(component) if component else None
        if self.cache_dir and (key or not component):
            threads = f"t{self.num_threads}" if self.num_threads else "tall"
            folder = Path(self.cache_dir) / f"{self.device.lower()}-{self.hint}-{threads}"
            cfg["CACHE_DIR"] = str(folder / f"{component}-{key}" if component else folder)
        return cfg

    def cache_key(self, component: str) -> str | None:
        """Key of a graph's compiled blob: its files' sha256 (bundle.json's, which the bundle reader checked; a
        file it does not list is hashed here), the device, precision hint, threads and the OpenVINO version.
        None when a file cannot be read (the graph then compiles uncached, and OpenVINO says what is wrong)."""
        if component not in self._keys:
            spec = self.components[component]
            try:
                digests = {rel: spec.sha256.get(rel) or sha256_file(self.root / rel)
                           for rel in graph_files(self.root, spec)}
            except OSError:
                return None
            settings = {"device": self.device, "hint": self.hint, "threads": self.num_threads,
                        "openvino": self.openvino_version}
            self._keys[component] = graph_cache_key(digests, settings)
        return self._keys[component]

    def _load(self, component: str) -> Any:
        path = self.path_of(component)
        config = self.compile_config(component)
        cache, key = (Path(config["CACHE_DIR"]), self.cache_key(component)) if "CACHE_DIR" in config else (None, "")
        kept = check_cache_folder(cache, key) if cache else None
        if kept is None:
            config.pop("CACHE_DIR", None)
        try:
            with ReleasedWhileLoading(mapped_sources(path, config)):
                model = self._core.read_model(str(path))
                compiled = self._core.compile_model(model, self.device, config)
                del model
        except Exception as e:  # OpenVINO raises RuntimeError with multi-line C++ traces
            raise load_failure(f"OpenVINO ({self.device}) cannot compile", path, component, e) from None
        if cache and kept is not None:
            record_new_blobs(cache, key, kept)
        spec = self.components[component]
        check_graph_io(component, spec, _port_shapes(compiled.inputs), "input")
        check_graph_io(component, spec, _port_shapes(compiled.outputs), "output")
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
