"""ONNX int8 with onnxruntime's own quantisers: static QDQ from the calibration set, or dynamic.

``int8-static``: :func:`onnxruntime.quantization.quantize_static`, QDQ format (QuantizeLinear/DequantizeLinear
pairs around float ops: every onnxruntime build and execution provider reads it, and the file stays an ordinary
ONNX graph), per-channel symmetric int8 weights, uint8 activations whose ranges come from the recorded inputs
(a :class:`~onnxruntime.quantization.CalibrationDataReader` over the calibration set, MinMax).

Which int8 operand types (``int8_kernel``): u8 activations x s8 weights is onnxruntime's fast path on CPUs with
VNNI (or AMX), where its products are exact. Without VNNI (AVX2-only CPUs) onnxruntime multiplies u8 x s8 with
``vpmaddubsw``, whose int16 sums saturate: the tiny default's static int8 UNet then falls below its own PSNR
budget. There the weights are stored u8 too (u8 x u8 is widened to 16 bits before it is multiplied: exact on
every CPU), as onnxruntime's quantisation guide advises. ``auto`` picks by the exporting CPU
(:mod:`dhumandiff.utils.cpu`); the choice and the CPU's features are recorded in ``bundle.json``, and a runtime
warns when a u8 x s8 bundle runs on a CPU without VNNI.

``int8-dynamic``: :func:`onnxruntime.quantization.quantize_dynamic`: int8 weights, activation scales computed
per call, nothing to calibrate. Only MatMul/Gemm: onnxruntime's ConvInteger is slower than float Conv on CPU
(docs/design.md 5), so convolutions stay float.

Which nodes: weight-bearing Conv/MatMul/Gemm only. MatMuls between two activations (attention scores and
their softmax-weighted sum) stay float: they hold no weights to shrink, and softmax probabilities lose most in
8 bits. Layers the sensitivity analysis names stay float too (``nodes_to_exclude``). torch.onnx's node names do
not always follow module paths (the dual-attention processors' layers are scoped under their Attention), so a
layer is found by its weight: the initializer holding exactly the layer's weight (``W``, or ``W^T`` for MatMul).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import shutil
import warnings
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
import torch

from ..utils.cpu import cpu_features
from . import onnx_export
from .quantize_modes import QuantJob

INT8_KERNELS = ("u8s8", "u8u8")
WEIGHTED_OPS = ("Conv", "MatMul", "Gemm")
STATIC_OPS = ("Conv", "MatMul", "Gemm")
DYNAMIC_OPS = ("MatMul", "Gemm")
#: Names of the ops a quantised graph is made of (what ``bundle.json`` counts).
QUANT_OPS = ("QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "MatMulInteger", "ConvInteger",
             "DynamicQuantizeMatMul", "QLinearConv", "QLinearMatMul")


class RecordedInputs:
    """A ``CalibrationDataReader`` over recorded graph inputs (only the names the graph takes)."""

    def __init__(self, samples: Sequence[Mapping[str, np.ndarray]], input_names: Sequence[str]) -> None:
        self.samples = [{n: np.ascontiguousarray(s[n]) for n in input_names} for s in samples]
        self._it: Iterator[dict[str, np.ndarray]] = iter(self.samples)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._it, None)

    def rewind(self) -> None:
        self._it = iter(self.samples)


def _reader(samples, input_names):
    """:class:`RecordedInputs` registered as an onnxruntime ``CalibrationDataReader`` (imported on use)."""
    from onnxruntime.quantization import CalibrationDataReader

    class Reader(RecordedInputs, CalibrationDataReader):
        pass

    return Reader(samples, input_names)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """onnxruntime.quantization logs advice per call ("run pre-processing first"); keep the CLI's output clean."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        root.setLevel(level)


def _digest(a: np.ndarray) -> str:
    a = np.ascontiguousarray(np.asarray(a, np.float32))
    return hashlib.blake2b(a.tobytes() + str(a.shape).encode(), digest_size=16).hexdigest()


def weighted_nodes(model) -> tuple[list[Any], list[str]]:
    """``(weight-bearing Conv/MatMul/Gemm nodes, names of activation x activation MatMuls)``."""
    inits = {i.name for i in model.graph.initializer}
    weighted, act_act = [], []
    for node in model.graph.node:
        if node.op_type not in WEIGHTED_OPS:
            continue
        if any(i in inits for i in node.input[:2]):
            weighted.append(node)
        elif node.op_type == "MatMul":
            act_act.append(node.name)
    return weighted, act_act


def layer_nodes(model, layers: Mapping[str, torch.nn.Module]) -> dict[str, list[str]]:
    """Each layer (path -> module) -> the names of the graph nodes that apply its weight (matched by value)."""
    from onnx import numpy_helper

    wanted: dict[str, str] = {}
    for path, mod in layers.items():
        w = mod.weight.detach().float().cpu().numpy()
        wanted[_digest(w)] = path
        if w.ndim == 2:
            wanted[_digest(w.T)] = path
    arrays = {i.name: i for i in model.graph.initializer}
    found: dict[str, list[str]] = {p: [] for p in layers}
    for node in weighted_nodes(model)[0]:
        for name in node.input[:2]:
            if name in arrays:
                path = wanted.get(_digest(numpy_helper.to_array(arrays[name])))
                if path is not None:
                    found[path].append(node.name)
    return found


def int8_kernel(choice: str = "auto") -> str:
    """``u8s8`` or ``u8u8`` for a requested kernel (``auto``: what is exact and fast on this CPU)."""
    from ..errors import DHumanDiffError

    if choice == "auto":
        return cpu_features().int8_kernel
    if choice not in INT8_KERNELS:
        raise DHumanDiffError(f"--int8-kernel {choice!r} is not one of auto, {', '.join(INT8_KERNELS)}")
    return choice


def quantize(job: QuantJob) -> list[str]:
    """Replace ``job``'s float ONNX graph in the bundle folder by its int8 version; returns the new files."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_dynamic, quantize_static

    from ..errors import DHumanDiffError

    kernel = int8_kernel(job.options.int8_kernel)
    src = job.root / job.files[0]
    model = onnx.load(str(src))
    _, act_act = weighted_nodes(model)
    by_layer = layer_nodes(model, job.layer_modules())
    missing = [p for p, nodes in by_layer.items() if not nodes]
    if missing:
        raise DHumanDiffError(f"{job.name}: layer(s) {missing[:3]} to keep float were not found in the ONNX graph")
    excluded = sorted(set(act_act) | {n for nodes in by_layer.values() for n in nodes})
    inputs = [i.name for i in model.graph.input]
    large = onnx_export._initializer_bytes(model) > onnx_export.EXTERNAL_DATA_THRESHOLD
    del model
    scratch = job.root / f".{job.name}.quantize-scratch"
    scratch.mkdir()
    try:
        out = scratch / "model.onnx"
        with _quiet():
            if job.mode.activations:
                if not job.samples:
                    raise DHumanDiffError(f"{job.name}: the calibration set holds no inputs for this graph")
                quantize_static(str(src), str(out), _reader(job.samples, inputs), quant_format=QuantFormat.QDQ,
                                op_types_to_quantize=list(STATIC_OPS), per_channel=True,
                                activation_type=QuantType.QUInt8,
                                weight_type=QuantType.QInt8 if kernel == "u8s8" else QuantType.QUInt8,
                                nodes_to_exclude=excluded, calibrate_method=CalibrationMethod.MinMax,
                                use_external_data_format=large,
                                extra_options={"ActivationSymmetric": False, "WeightSymmetric": True})
            else:
                quantize_dynamic(str(src), str(out), op_types_to_quantize=list(DYNAMIC_OPS), per_channel=True,
                                 weight_type=QuantType.QInt8 if kernel == "u8s8" else QuantType.QUInt8,
                                 nodes_to_exclude=excluded,
                                 use_external_data_format=large)
        quantized = onnx.load(str(out))
        for rel in job.files:
            (job.root / rel).unlink()
        files = onnx_export.save(quantized, job.root, job.name)
        ops = [n.op_type for n in quantized.graph.node]
        del quantized
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    onnx.checker.check_model(str(job.root / files[0]))
    job.info.update({"int8_kernel": kernel, "quantized_ops": sum(op in QUANT_OPS for op in ops), "float_nodes_kept": len(excluded),
                     "excluded_layer_nodes": {n: by_layer[job.layer_paths[n]] for n in job.excluded_layers},
                     "calibration_samples": len(job.samples or []) if job.mode.activations else 0})
    return files


def run(job: QuantJob, files: list[str], example: Mapping[str, torch.Tensor],
        output_names: Sequence[str]) -> dict[str, np.ndarray]:
    """Run the quantised graph on CPU (onnxruntime), one session per component."""
    if "session" not in job.cache:
        job.cache["session"] = onnx_export.session(job.root / files[0])
    sess = job.cache["session"]
    feed = {i.name: example[i.name].numpy() for i in sess.get_inputs()}
    return dict(zip(output_names, sess.run(list(output_names), feed)))


def describe(component, job: QuantJob) -> None:
    """Nothing runtime-specific to add to the manifest entry of an ONNX graph."""
