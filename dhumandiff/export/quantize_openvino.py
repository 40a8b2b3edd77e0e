"""OpenVINO IR compressed or quantised with NNCF, the compression library OpenVINO ships for it.

* ``int8-weights``: :func:`nncf.compress_weights` ``INT8_ASYM`` (``--symmetric``: ``INT8_SYM``): int8 weights of
  MatMul/Convolution/embeddings with per-output-channel scales, decompressed to float on the fly; activations
  stay float. No data needed; ~4x smaller weights.
* ``int4-weights``: ``INT4_SYM``/``INT4_ASYM`` with ``group_size`` weights per scale (``ratio`` of the layers in
  int4, the rest in NNCF's int8 backup). A layer narrower than the group (the tiny model's 32-channel layers)
  gets the largest group size that divides it (``GroupSizeFallbackMode.ADJUST``, at least 32), else int8.
* ``int8``: :func:`nncf.quantize` with the calibration set (``ModelType.TRANSFORMER``: NNCF's rules for
  attention blocks — no quantisers on the softmax/attention-score paths, SmoothQuant where it helps): int8
  weights and activations, the full static int8 model.
* ``int8-hybrid``: optimum-intel's recipe for diffusion UNets: MatMul weights compressed to int8 (weight-only),
  then Convolutions (and the activations feeding them) quantised by ``nncf.quantize`` with the MatMuls ignored.

In both ``int8`` and ``int8-hybrid`` only the UNet's activations are quantised; the encoders get ``int8-weights``
(optimum-intel quantises diffusion pipelines the same way; ``quantize_modes.py`` has the measurement).

Layers the sensitivity analysis names stay float through ``nncf.IgnoredScope``. IR converted from the traced
wrapper names each op after the module that made it (``__module.identity_unet.unet.conv_in/aten::_convolution/
Convolution``), so a layer's ops are the weight-bearing ops under ``__module.{wrapper path}/``.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
import torch

from . import openvino_export
from .quantize_modes import QuantJob

WEIGHTED_OPS = ("Convolution", "MatMul", "GroupConvolution")
#: ``quantize`` and ``run`` work from the IR files and layer names alone: a large graph's can run in a child process
#: (``isolate.py``).
NEEDS_MODULE = False
LOW_BIT_TYPES = ("u8", "i8", "u4", "i4", "nf4")


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """NNCF draws progress bars and logs INFO lines per algorithm; keep the CLI's output clean."""
    logger = logging.getLogger("nncf")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def _has_constant_weight(op) -> bool:
    """True when an input of ``op`` comes from a Constant (possibly through a Convert): a weight."""
    for value in op.input_values()[1:2]:
        src = value.get_node()
        if src.get_type_name() == "Convert":
            src = src.input_value(0).get_node()
        if src.get_type_name() == "Constant":
            return True
    return False


def layer_ops(model, layer_paths: Sequence[str]) -> dict[str, list[str]]:
    """Each wrapper path -> the friendly names of its weight-bearing ops in the IR."""
    found: dict[str, list[str]] = {p: [] for p in layer_paths}
    prefixes = {f"__module.{p}/": p for p in layer_paths}
    for op in model.get_ordered_ops():
        if op.get_type_name() not in WEIGHTED_OPS:
            continue
        name = op.get_friendly_name()
        for prefix, path in prefixes.items():
            if name.startswith(prefix):
                found[path].append(name)
    return found


def weighted_matmuls(model) -> list[str]:
    return [op.get_friendly_name() for op in model.get_ordered_ops()
            if op.get_type_name() == "MatMul" and _has_constant_weight(op)]


def _dataset(job: QuantJob, model):
    import nncf

    from ..errors import DHumanDiffError

    if not job.samples:
        raise DHumanDiffError(f"{job.name}: the calibration set holds no inputs for this graph")
    names = [next(iter(p.get_names())) for p in model.inputs]
    items = [{n: np.ascontiguousarray(s[n]) for n in names} for s in job.samples]
    return nncf.Dataset(items), len(items)


def quantize(job: QuantJob) -> list[str]:
    """Replace ``job``'s IR in the bundle folder by its compressed / quantised version; returns the files."""
    import nncf
    import openvino as ov

    from ..errors import DHumanDiffError

    xml = job.root / job.files[0]
    model = ov.Core().read_model(str(xml))
    by_layer = layer_ops(model, job.excluded_paths())
    missing = [p for p, ops in by_layer.items() if not ops]
    if missing:
        raise DHumanDiffError(f"{job.name}: layer(s) {missing[:3]} to keep float were not found in the IR")
    keep = sorted({n for ops in by_layer.values() for n in ops})
    scope = nncf.IgnoredScope(names=keep) if keep else None
    opts = job.options
    name = job.mode.name
    activations = job.mode.quantizes_activations(job.name)
    if job.mode.activations and not activations:
        name = "int8-weights"  # optimum-intel's recipe: the encoders get int8 weights only
    with _quiet():
        if name == "int8-weights":
            mode = nncf.CompressWeightsMode.INT8_SYM if opts.symmetric else nncf.CompressWeightsMode.INT8_ASYM
            model = nncf.compress_weights(model, mode=mode, ignored_scope=scope)
        elif name == "int4-weights":
            mode = nncf.CompressWeightsMode.INT4_SYM if opts.symmetric else nncf.CompressWeightsMode.INT4_ASYM
            from nncf.quantization.advanced_parameters import (AdvancedCompressionParameters,
                                                               GroupSizeFallbackMode)

            model = nncf.compress_weights(model, mode=mode, group_size=opts.group_size, ratio=opts.ratio,
                                          ignored_scope=scope, advanced_parameters=AdvancedCompressionParameters(
                                              group_size_fallback_mode=GroupSizeFallbackMode.ADJUST))
        elif name == "int8":
            data, n = _dataset(job, model)
            model = nncf.quantize(model, data, model_type=nncf.ModelType.TRANSFORMER, subset_size=n,
                                  ignored_scope=scope)
        elif name == "int8-hybrid":
            data, n = _dataset(job, model)
            matmuls = weighted_matmuls(model)
            model = nncf.compress_weights(model, mode=nncf.CompressWeightsMode.INT8_ASYM,
                                          ignored_scope=nncf.IgnoredScope(names=keep, types=["Convolution"],
                                                                          validate=False))
            from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters

            model = nncf.quantize(model, data, model_type=nncf.ModelType.TRANSFORMER, subset_size=n,
                                  ignored_scope=nncf.IgnoredScope(names=sorted(set(matmuls) | set(keep)),
                                                                  validate=False),
                                  advanced_parameters=AdvancedQuantizationParameters(smooth_quant_alpha=-1))
        else:
            raise DHumanDiffError(f"no OpenVINO quantiser for mode {name!r}")
    for rel in job.files:
        (job.root / rel).unlink()
    ov.save_model(model, str(xml), compress_to_fp16=False)
    job.info.update(_census(model), ignored_ops=len(keep), method=name,
                    calibration_samples=len(job.samples or []) if activations else 0)
    return [xml.name, xml.with_suffix(".bin").name]


def _census(model) -> dict[str, Any]:
    """How much of the IR is low-bit: FakeQuantize ops and int constants (compressed weights)."""
    fq = sum(op.get_type_name() in ("FakeQuantize", "FakeConvert") for op in model.get_ordered_ops())
    low = [op for op in model.get_ordered_ops()
           if op.get_type_name() == "Constant" and op.get_element_type().get_type_name() in LOW_BIT_TYPES]
    types = sorted({op.get_element_type().get_type_name() for op in low})
    return {"fake_quantize_ops": fq, "low_bit_constants": len(low), "low_bit_types": types}


def run(job: QuantJob, files: list[str], example: Mapping[str, torch.Tensor],
        output_names: Sequence[str]) -> dict[str, np.ndarray]:
    """Compile the new IR on CPU (f32 inference precision, as the runtime does for quantised bundles) and run it."""
    if "compiled" not in job.cache:
        job.cache["compiled"] = openvino_export.compile_ir(job.root / files[0])
    compiled = job.cache["compiled"]
    feed = {port: example[openvino_export._port_name(port, example)].numpy() for port in compiled.inputs}
    results = openvino_export.infer(compiled, feed)
    return {name: np.array(results[compiled.output(name)]) for name in output_names}


def describe(component, job: QuantJob) -> None:
    """Nothing runtime-specific to add to the manifest entry of an IR."""
