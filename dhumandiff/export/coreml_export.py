"""Core ML mlprograms: each component's flat wrapper -> ``torch.jit.trace`` -> ``coremltools.convert`` -> mlpackage.

The conversion (what ``export_bundle(..., runtime="coreml")`` calls through :func:`export_coreml_components`):

- ``convert_to="mlprogram"``, ``minimum_deployment_target=iOS17`` (= macOS 14), static shapes from the specs'
  example inputs (the Neural Engine needs fixed shapes; ``--dynamic`` is refused), inputs and outputs named by
  the bundle contract. Core ML has no int64 tensors: ``input_ids``/``subject_positions`` are int32 in the graph,
  recorded as ``graph_dtype`` beside the contract's ``dtype`` (int64) in ``bundle.json``; the runtime adapter
  casts. Inputs and outputs stay float32 whatever the compute precision (the bundle interface, as in ONNX's
  ``keep_io_types``).
- ``compute_precision`` FLOAT16 for fp16 bundles (Core ML's natural precision, and the only one the Neural
  Engine runs), FLOAT32 for fp32; the VAE decoder is FLOAT32 in every bundle (its spec's ``fp16_keep_fp32``).
- the UNet is traced with the attention chosen by ``attention`` (``coreml_attention.py``: ``"split_einsum"``,
  Apple's Neural Engine layout, or ``"original"``), swapped into the model only for the trace.
- a UNet whose weights pass ``chunk_threshold_bytes`` (1 GB, Apple's limit) ships as two chunks
  (``coreml_chunk.py``): ``file`` = chunk 1, ``extra_files`` = [chunk 2], plus a ``chunks`` list.

Every conversion proves itself before it lands in the bundle (:class:`~dhumandiff.errors.ParityError` on a
miss). ``MLModel.predict`` exists only on macOS, so on Linux the proof is: (1) the traced module, the very object
handed to coremltools, run in torch against the wrapper (fp32 tolerance); (2) the weights read back from the
saved mlpackage equal the torch weights (bit for bit in fp32, exactly the fp16 rounding in fp16), and the
wrapper run with those read-back weights; (3) chunks proved by specification. On macOS the mlpackage itself is
also run and compared with torch under the component's tolerance (Apple's rule).

Also here: :func:`compress_mlpackage`, the palettisation / linear-quantisation hook (``coremltools.optimize``).
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import hashlib
import io
import logging
import os
import re
import shutil
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from ..errors import DHumanDiffError, ParityError, RuntimeUnavailableError
from ..model.dhumandiff_model import DHumanDiff
from ..contract.bundle import component_digests
from .artifacts import ExportedComponent, tensor_entry
from .coreml_attention import ATTENTIONS, attention_implementation, check_attention
from .coreml_chunk import DEFAULT_CHUNK_THRESHOLD, chunk_mlpackage, weight_file_bytes
from .specs import ComponentSpec, unet_batch
from .validate import Comparison, compare_outputs, worst

#: Core ML 7 / iOS 17 / macOS 14: mlprogram with fp16 I/O options, palettisation and int8 weights on device.
DEPLOYMENT_TARGET = "iOS17"
DEFAULT_ATTENTION = "split_einsum"
DEFAULT_PRECISION = "fp16"
#: Components that are chunked when too large (Apple chunks the UNet only).
CHUNKED_COMPONENTS = ("unet",)
#: Components traced with the chosen attention (the others keep the model's own attention).
ATTENTION_COMPONENTS = ("unet",)
#: The traced module must match the wrapper to float32 rounding (same ops; split_einsum only reorders sums).
TRACE_ATOL = 1e-4
#: The weights-only round trip (package weights read back into torch) holds a second copy of the weights; above
#: this many torch bytes it is skipped (the per-tensor comparison still runs).
ROUNDTRIP_MAX_BYTES = 4 << 30
COMPRESSION_MODES = ("palettize", "linear_int8")
PALETTE_BITS = (1, 2, 3, 4, 6, 8)

Progress = Callable[[int, int, str], None]


# -------------------------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class CoreMLSettings:
    """What the Core ML exporter does beyond the generic export options.

    ``export_bundle`` has no Core ML arguments, so these travel through :func:`coreml_settings` (a context
    variable) or as keyword arguments of :func:`export_coreml_components`.
    """

    attention: str = DEFAULT_ATTENTION
    chunk_threshold_bytes: int = DEFAULT_CHUNK_THRESHOLD
    validate: bool = True
    #: ``ct.ComputeUnit`` name used to run the packages for the macOS export-time check.
    compute_units: str = "ALL"

    def __post_init__(self) -> None:
        check_attention(self.attention)
        if self.chunk_threshold_bytes <= 0:
            raise DHumanDiffError(f"chunk threshold must be a positive byte count, not {self.chunk_threshold_bytes}")


_SETTINGS: contextvars.ContextVar[CoreMLSettings] = contextvars.ContextVar("coreml_settings",
                                                                           default=CoreMLSettings())


@contextlib.contextmanager
def coreml_settings(**changes: Any) -> Iterator[CoreMLSettings]:
    """``with coreml_settings(attention="original", chunk_threshold_bytes=2**20): export_bundle(...)``."""
    token = _SETTINGS.set(dataclasses.replace(_SETTINGS.get(), **changes))
    try:
        yield _SETTINGS.get()
    finally:
        _SETTINGS.reset(token)


def current_settings() -> CoreMLSettings:
    return _SETTINGS.get()


# ------------------------------------------------------------------------------------------ coremltools


def _ct():
    try:
        import coremltools as ct
    except ImportError:
        raise RuntimeUnavailableError("coremltools is not installed; pip install 'dhumandiff[coreml]'") from None
    return ct


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """coremltools prints progress bars and version warnings on every conversion; keep a CLI's output clean."""
    logger = logging.getLogger("coremltools")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def can_predict() -> bool:
    """True where Core ML can run a model (macOS with coremltools' native module)."""
    return sys.platform == "darwin"


# ----------------------------------------------------------------------------------------- the records


@dataclass
class CoreMLComponent(ExportedComponent):
    """An :class:`ExportedComponent` plus the Core ML facts ``bundle.json`` records (``chunks``, ``coreml``).

    The bundle reader ignores keys it does not know, so these are information for people and tools; the runtime
    adapter finds chunk 2 through ``extra_files``.
    """

    chunks: list[dict[str, Any]] = field(default_factory=list)
    coreml: dict[str, Any] = field(default_factory=dict)

    def manifest_entry(self) -> dict[str, Any]:
        entry = super().manifest_entry()
        if self.chunks:
            entry["chunks"] = self.chunks
        entry["coreml"] = self.coreml
        return entry


@dataclass
class Traced:
    """A component ready for coremltools: the wrapper, its trace (what is converted), inputs, outputs."""

    spec: ComponentSpec
    module: nn.Module
    traced: torch.jit.ScriptModule
    example: dict[str, torch.Tensor]
    reference: dict[str, np.ndarray]
    traced_outputs: dict[str, np.ndarray]
    attention: str

    @property
    def trace_check(self) -> Comparison:
        return worst(compare_outputs(self.reference, self.traced_outputs))


def _named_outputs(spec: ComponentSpec, value: Any) -> dict[str, np.ndarray]:
    values = value if isinstance(value, (tuple, list)) else (value,)
    if len(values) != len(spec.outputs):
        raise DHumanDiffError(f"{spec.name} returned {len(values)} outputs, its spec names {len(spec.outputs)}")
    return {n: v.detach().float().cpu().numpy() for n, v in zip(spec.outputs, values)}


@torch.no_grad()
def trace_component(spec: ComponentSpec, model: DHumanDiff, attention: str = "original", seed: int = 0) -> Traced:
    """Build the wrapper, run it (the fp32 reference), trace it with ``attention`` and run the trace.

    The returned ``traced`` module is exactly what :func:`convert_traced` hands to coremltools, so
    ``traced_outputs`` vs ``reference`` is a check of the converted program's source, not of a look-alike.
    """
    module = spec.build(model).eval()
    example = spec.example(model, unet_batch(model), seed)
    args = tuple(example.values())
    reference = _named_outputs(spec, module(*args))
    attention = attention if spec.name in ATTENTION_COMPONENTS else "original"
    with attention_implementation(module, attention), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings about python-int shapes are expected here
        traced = torch.jit.trace(module, args, check_trace=False)
    traced_outputs = _named_outputs(spec, traced(*args))
    return Traced(spec, module, traced, example, reference, traced_outputs, attention)


def _input_type(ct, name: str, t: torch.Tensor):
    if t.dtype in (torch.int64, torch.int32):
        dtype = np.int32
    elif t.is_floating_point():
        dtype = np.float32
    else:
        raise DHumanDiffError(f"input {name} has dtype {t.dtype}, which the Core ML export does not map")
    return ct.TensorType(name=name, shape=tuple(int(d) for d in t.shape), dtype=dtype)


def convert_traced(traced: Traced, precision: str):
    """``coremltools.convert`` of the trace: an in-memory mlprogram (not loaded: Linux cannot)."""
    ct = _ct()
    if precision not in ("fp32", "fp16"):
        raise DHumanDiffError(f"the Core ML exporter writes fp32 or fp16 mlprograms, not {precision!r}")
    inputs = [_input_type(ct, n, t) for n, t in traced.example.items()]
    outputs = [ct.TensorType(name=n, dtype=np.float32) for n in traced.spec.outputs]
    with _quiet():
        return ct.convert(traced.traced, source="pytorch", inputs=inputs, outputs=outputs, convert_to="mlprogram",
                          minimum_deployment_target=getattr(ct.target, DEPLOYMENT_TARGET),
                          compute_precision=ct.precision.FLOAT16 if precision == "fp16" else ct.precision.FLOAT32,
                          compute_units=ct.ComputeUnit.ALL, skip_model_load=True)


def save_mlpackage(mlmodel, path: str | Path) -> Path:
    """Save to a hidden sibling, then rename into place (a reader never sees half an mlpackage)."""
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.partial-{os.getpid()}.mlpackage")  # coremltools wants the suffix
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        with _quiet():
            mlmodel.save(str(tmp))
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return path


# ------------------------------------------------------------------------------- weights read back (Linux)


def mlpackage_weights(paths: str | Path | Sequence[str | Path], decompress: bool = True) -> dict[str, np.ndarray]:
    """Every array constant stored in the mlpackage(s), by const op name, as the device will see it.

    Compressed weights (palettised / int8 ``constexpr_*`` ops) are decompressed with
    ``coremltools.optimize.coreml.decompress_weights`` first, so the values are what Core ML computes with.
    """
    ct = _ct()
    from coremltools.converters.mil.frontend.milproto import load as milproto

    paths = [paths] if isinstance(paths, (str, Path)) else list(paths)
    out: dict[str, np.ndarray] = {}
    for p in paths:
        model = ct.models.MLModel(str(p), skip_model_load=True)
        spec = model.get_spec()
        prog = milproto.load(spec, spec.specificationVersion, model.weights_dir)
        ops = list(prog.functions["main"].operations)
        if decompress and any(op.op_type.startswith("constexpr_") for op in ops):
            import coremltools.optimize.coreml as cto

            with _quiet():
                model = cto.decompress_weights(model)
            spec = model.get_spec()
            prog = milproto.load(spec, spec.specificationVersion, model.weights_dir)
            ops = list(prog.functions["main"].operations)
        for op in ops:
            if op.op_type == "const" and isinstance(op.outputs[0].val, np.ndarray):
                out[op.name] = op.outputs[0].val
    return out


_SUFFIX = re.compile(r"(_to_fp16|_to_fp32|_promoted|_palettized|_quantized)+$")


def _key(name: str) -> str:
    return re.sub(r"[^0-9A-Za-z]", "_", name)


def weight_key(const_name: str) -> str:
    """A stored weight's name without the suffixes conversion and compression add (``_to_fp16``,
    ``_palettized``, ``_quantized``): ``a_b_weight_to_fp16_palettized`` -> ``a_b_weight``."""
    return _SUFFIX.sub("", const_name)


@dataclass
class WeightMatch:
    """Which Core ML constant holds which torch tensor (``by`` = "name" or "value")."""

    const: dict[str, str] = field(default_factory=dict)
    by: dict[str, str] = field(default_factory=dict)
    unmatched: list[str] = field(default_factory=list)


def torch_weights(module: nn.Module) -> dict[str, torch.Tensor]:
    """Floating parameters and buffers of ``module`` by their dotted names (tied tensors once)."""
    out = {n: p for n, p in module.named_parameters()}
    out.update({n: b for n, b in module.named_buffers() if b.is_floating_point()})
    return {n: t for n, t in out.items() if t.is_floating_point() and t.numel() > 1}


def _digest(a: np.ndarray) -> str:
    return hashlib.blake2b(np.ascontiguousarray(a).tobytes(), digest_size=16).hexdigest()


def match_weights(module: nn.Module, consts: Mapping[str, np.ndarray]) -> WeightMatch:
    """Map each torch tensor of ``module`` to the constant that stores it.

    First by name (coremltools names a weight after its torch path, ``a.b.weight`` -> ``a_b_weight_to_fp16``),
    then by value: a constant holding exactly the tensor's values rounded to the constant's dtype, in the same
    order (weights the converter renamed or re-laid out, e.g. the ``[out, in, 1, 1]`` views of the split-einsum
    1x1 convolutions). The value search is a hash lookup, so it stays linear on multi-GB UNets.
    """
    by_name: dict[str, str] = {}
    for cname in consts:
        by_name.setdefault(weight_key(cname), cname)
    by_value: dict[tuple[str, int, str], str] = {}
    float_dtypes = set()
    for cname, v in consts.items():
        if v.dtype.kind == "f" and v.size > 1:
            float_dtypes.add(v.dtype)
            by_value.setdefault((v.dtype.str, v.size, _digest(v.ravel())), cname)
    match = WeightMatch()
    for tname, t in torch_weights(module).items():
        w = t.detach().float().cpu().numpy()
        cname = by_name.get(_key(tname))
        if cname is not None and consts[cname].size == w.size:
            match.const[tname], match.by[tname] = cname, "name"
            continue
        found = None
        for dtype in float_dtypes:
            found = by_value.get((dtype.str, w.size, _digest(w.ravel().astype(dtype))))
            if found is not None:
                break
        if found is None:
            match.unmatched.append(tname)
        else:
            match.const[tname], match.by[tname] = found, "value"
    return match


def check_weights(module: nn.Module, paths: str | Path | Sequence[str | Path], precision: str) -> dict[str, Any]:
    """Compare the weights stored in the mlpackage(s) with the torch weights of ``module``.

    Each matched tensor must equal the torch tensor rounded to the stored dtype: bit for bit for fp32 graphs, the
    exact fp16 rounding for fp16 graphs (error <= 2^-11 relative). Returns counts, coverage (matched elements /
    all floating elements; tensors the graph never reads, such as a CLIP tower's unused last layer, are
    legitimately absent) and the largest errors.
    """
    consts = mlpackage_weights(paths)
    match = match_weights(module, consts)
    tensors = torch_weights(module)
    max_abs = 0.0
    max_rel = 0.0
    inexact = []
    dtypes = set()
    for tname, cname in match.const.items():
        w = tensors[tname].detach().float().cpu().numpy().ravel()
        c = consts[cname].ravel()
        dtypes.add(str(c.dtype))
        if not np.array_equal(c, w.astype(c.dtype)):
            inexact.append(tname)
        err = np.abs(c.astype(np.float64) - w.astype(np.float64))
        max_abs = max(max_abs, float(err.max(initial=0.0)))
        denom = np.maximum(np.abs(w.astype(np.float64)), 2.0 ** -14)  # fp16's smallest normal
        max_rel = max(max_rel, float((err / denom).max(initial=0.0)))
    total = sum(t.numel() for t in tensors.values())
    matched = sum(tensors[n].numel() for n in match.const)
    return {"tensors": len(tensors), "matched": len(match.const), "by_value": sum(v == "value" for v in match.by.values()),
            "unmatched": match.unmatched, "coverage": matched / total if total else 1.0,
            "stored_dtypes": sorted(dtypes), "inexact": inexact, "max_abs": max_abs, "max_rel": max_rel,
            "expected_precision": precision}


@contextlib.contextmanager
def mlpackage_weights_loaded(module: nn.Module, paths: str | Path | Sequence[str | Path]) -> Iterator[WeightMatch]:
    """Run ``module`` with the weights read back from the mlpackage(s) (as float32), restoring its own after.

    Decompression of the mlpackage into the torch module: what the weights alone do to the outputs (fp16
    rounding, palettisation), measured in torch on Linux.
    """
    consts = mlpackage_weights(paths)
    match = match_weights(module, consts)
    tensors = torch_weights(module)
    saved = {}
    try:
        with torch.no_grad():
            for tname, cname in match.const.items():
                t = tensors[tname]
                saved[tname] = t.detach().clone()
                t.copy_(torch.from_numpy(consts[cname].astype(np.float32)).reshape(t.shape))
        yield match
    finally:
        with torch.no_grad():
            for tname, value in saved.items():
                tensors[tname].copy_(value)


# --------------------------------------------------------------------------------- macOS: run the package


_ARRAY_DTYPES = {65568: np.float32, 65552: np.float16, 65600: np.float64, 131104: np.int32}


def predict_mlpackages(paths: Sequence[str | Path], inputs: Mapping[str, np.ndarray],
                       compute_units: str = "ALL") -> dict[str, np.ndarray]:
    """Run one mlpackage, or chunks in order (each reads the model inputs and earlier chunks' outputs). macOS only."""
    ct = _ct()
    if not can_predict():
        raise RuntimeUnavailableError("Core ML prediction needs macOS")
    values = {k: np.asarray(v) for k, v in inputs.items()}
    out: dict[str, np.ndarray] = {}
    for p in paths:
        model = ct.models.MLModel(str(p), compute_units=getattr(ct.ComputeUnit, compute_units))
        feed = {}
        for f in model.get_spec().description.input:
            dtype = _ARRAY_DTYPES.get(f.type.multiArrayType.dataType, np.float32)
            feed[f.name] = np.ascontiguousarray(values[f.name], dtype=dtype)
        out = {k: np.asarray(v) for k, v in model.predict(feed).items()}
        values.update(out)
    return {k: v.astype(np.float32) if v.dtype == np.float16 else v for k, v in out.items()}


# ------------------------------------------------------------------------------------------ one component


def _io_entries(traced: Traced) -> tuple[dict[str, dict], dict[str, dict]]:
    inputs = {}
    for n, t in traced.example.items():
        entry = tensor_entry(t)
        if t.dtype == torch.int64:
            entry["graph_dtype"] = "int32"  # Core ML has no int64 inputs: the adapter casts
        inputs[n] = entry
    outputs = {n: tensor_entry(v) for n, v in traced.reference.items()}
    return inputs, outputs


def export_coreml_component(spec: ComponentSpec, model: DHumanDiff, out_dir: Path, precision: str,
                            settings: CoreMLSettings | None = None, seed: int = 0) -> CoreMLComponent:
    """Trace, convert, save, (chunk) and prove one component; see the module docstring."""
    settings = settings or current_settings()
    out_dir = Path(out_dir)
    graph_precision = spec.graph_precision(precision)
    t0 = time.perf_counter()
    traced = trace_component(spec, model, settings.attention, seed)
    trace_check = traced.trace_check
    if settings.validate and not (trace_check.max_abs <= TRACE_ATOL):
        raise ParityError(f"{spec.name}: the traced module ({traced.attention} attention) differs from the model by "
                          f"{trace_check.max_abs:.3g} (> {TRACE_ATOL}); nothing was converted")
    mlmodel = convert_traced(traced, graph_precision)
    path = save_mlpackage(mlmodel, out_dir / f"{spec.name}.mlpackage")
    del mlmodel
    files = [path]
    chunk_info: list[dict[str, Any]] = []
    chunk_report = None
    size = weight_file_bytes(path)
    if spec.name in CHUNKED_COMPONENTS and size > settings.chunk_threshold_bytes:
        with _quiet():
            result = chunk_mlpackage(path, out_dir, spec.name, check=settings.validate)
        chunk_report = result.report
        chunk_info = result.manifest_chunks(out_dir)
        shutil.rmtree(path)
        files = result.paths
    seconds = time.perf_counter() - t0

    validation: dict[str, Any] = {"trace": trace_check.to_dict(), "attention": traced.attention,
                                  "export_seconds": round(seconds, 2)}
    tol = spec.tolerance(graph_precision)
    validation["tolerance"] = tol.to_dict()
    if settings.validate:
        weights = check_weights(traced.module, files, graph_precision)
        if weights["inexact"]:
            raise ParityError(f"{spec.name}: {len(weights['inexact'])} weight(s) in the mlpackage differ from the "
                              f"torch weights beyond {graph_precision} rounding (e.g. {weights['inexact'][:2]})")
        validation["weights"] = {k: v for k, v in weights.items() if k != "inexact"}
        module_bytes = sum(t.numel() * t.element_size() for t in torch_weights(traced.module).values())
        if module_bytes <= ROUNDTRIP_MAX_BYTES:
            with mlpackage_weights_loaded(traced.module, files), torch.no_grad():
                roundtrip = _named_outputs(spec, traced.module(*traced.example.values()))
            weights_only = worst(compare_outputs(traced.reference, roundtrip))
            failures = weights_only.failures(tol)
            if failures:
                raise ParityError(f"{spec.name}: the mlpackage's weights alone miss the {graph_precision} tolerance "
                                  f"({'; '.join(failures)})")
            validation["weights_roundtrip"] = weights_only.to_dict()
        else:  # the read-back keeps a copy of every weight: not for an SDXL UNet on a small machine
            validation["weights_roundtrip"] = None
        if chunk_report is not None:
            validation["chunks"] = chunk_report
        if can_predict():
            got = predict_mlpackages(files, {n: t.numpy() for n, t in traced.example.items()},
                                     settings.compute_units)
            summary = worst(compare_outputs(traced.reference, got))
            failures = summary.failures(tol)
            if failures:
                raise ParityError(f"{spec.name} exported to coreml {graph_precision} misses its tolerance "
                                  f"({'; '.join(failures)}); the export was not written")
            validation.update(summary.to_dict())
            validation["coreml_predict"] = settings.compute_units
        else:
            validation["coreml_predict"] = None  # Linux: MLModel.predict raises; checked on macOS only
    inputs, outputs = _io_entries(traced)
    rel = [p.relative_to(out_dir).as_posix() for p in files]
    coreml = {"attention": traced.attention, "minimum_deployment_target": DEPLOYMENT_TARGET,
              "compute_precision": "float16" if graph_precision == "fp16" else "float32",
              "weight_bytes": sum(weight_file_bytes(p) for p in files)}
    return CoreMLComponent(name=spec.name, file=rel[0], extra_files=rel[1:], inputs=inputs, outputs=outputs,
                           precision=graph_precision, validation=validation, sha256=component_digests(out_dir, rel),
                           chunks=chunk_info, coreml=coreml)


def export_coreml_components(model: DHumanDiff, specs: Sequence[ComponentSpec], out_dir: str | Path, *,
                             precision: str = DEFAULT_PRECISION, dynamic: bool = False,
                             progress: Progress | None = None, attention: str | None = None,
                             chunk_threshold_bytes: int | None = None, validate: bool | None = None,
                             seed: int = 0) -> list[ExportedComponent]:
    """Every component of ``specs`` as an mlpackage in ``out_dir`` (the bundle's temporary folder).

    The contract ``export_bundle`` calls. ``attention``/``chunk_threshold_bytes``/``validate`` default to
    :func:`coreml_settings`' values.
    """
    if dynamic:
        raise DHumanDiffError("Core ML bundles have static shapes (the Neural Engine plans fixed shapes); "
                              "export without --dynamic")
    changes = {k: v for k, v in (("attention", attention), ("chunk_threshold_bytes", chunk_threshold_bytes),
                                 ("validate", validate)) if v is not None}
    settings = dataclasses.replace(current_settings(), **changes)
    _ct()
    model.eval()
    out: list[ExportedComponent] = []
    for i, spec in enumerate(specs):
        if progress:
            progress(i, len(specs) + 1, spec.name)
        out.append(export_coreml_component(spec, model, Path(out_dir), precision, settings, seed))
    return out


# -------------------------------------------------------------------------------------------- compression


def compress_mlpackage(path: str | Path, mode: str = "palettize", nbits: int = 6, out: str | Path | None = None,
                       weight_threshold: int = 2048, op_name_configs: Mapping[str, Any] | None = None) -> Path:
    """Compress an mlpackage's weights with ``coremltools.optimize.coreml``; writes ``out`` (default: in place).

    ``mode="palettize"``: k-means palettisation to ``nbits`` (4, 6 or 8 are the useful ones: 2^nbits fp16
    values per tensor + nbits-wide indices; ``OpPalettizerConfig``). ``mode="linear_int8"``: symmetric per-channel
    int8 weights (``OpLinearQuantizerConfig``). Only weights with more than ``weight_threshold`` elements are
    compressed (biases and norms stay). ``op_name_configs`` overrides the mode per weight constant (by const
    name: another ``OpPalettizerConfig``, or None to keep that weight uncompressed), which is how sensitive layers
    stay fp16 and how a mixed-bit recipe is applied (``quantize_coreml.py``). Activations stay float: this is a
    size and bandwidth hook; its numeric cost is measured by reading the weights back (:func:`mlpackage_weights`
    decompresses them).
    """
    ct = _ct()
    import coremltools.optimize.coreml as cto

    path = Path(path)
    if mode == "palettize":
        if nbits not in PALETTE_BITS:
            raise DHumanDiffError(f"palettisation takes nbits in {PALETTE_BITS}, not {nbits}")
        op_config = cto.OpPalettizerConfig(mode="kmeans", nbits=nbits, weight_threshold=weight_threshold)
        apply = cto.palettize_weights
    elif mode == "linear_int8":
        op_config = cto.OpLinearQuantizerConfig(mode="linear_symmetric", dtype="int8",
                                                weight_threshold=weight_threshold)
        apply = cto.linear_quantize_weights
    else:
        raise DHumanDiffError(f"unknown compression mode {mode!r}; choose one of {', '.join(COMPRESSION_MODES)}")
    model = ct.models.MLModel(str(path), skip_model_load=True)
    with _quiet():
        compressed = apply(model, cto.OptimizationConfig(global_config=op_config,
                                                         op_name_configs=dict(op_name_configs or {}) or None))
    return save_mlpackage(compressed, Path(out) if out is not None else path)


__all__ = ["ATTENTIONS", "CoreMLComponent", "CoreMLSettings", "DEFAULT_CHUNK_THRESHOLD", "Traced", "check_weights",
           "compress_mlpackage", "convert_traced", "coreml_settings", "export_coreml_component",
           "export_coreml_components", "match_weights", "mlpackage_weights", "mlpackage_weights_loaded",
           "predict_mlpackages", "save_mlpackage", "trace_component"]
