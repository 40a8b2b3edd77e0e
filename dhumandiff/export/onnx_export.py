"""ONNX graphs: TorchScript-based ``torch.onnx.export`` (opset 17), fp16 by conversion, checked by onnx.

Why these choices (docs/design.md 5): ``dynamo=False`` at opset 17 exports every DHumanDiff component (the dual
attention processors and the one-hot subject fusion included) and runs everywhere onnxruntime 1.1x+ does.
Graphs whose weights pass 2 GB (an sd15/xl UNet, the xl text encoder 2) store them in one external file
``{name}.onnx.data`` beside ``{name}.onnx``, the layout onnxruntime and OpenVINO both read.

fp16 is a graph conversion of the fp32 export (onnxruntime's ``convert_float_to_float16``) with
``keep_io_types``: a bundle's interface stays float32 whatever its compute precision, and normalisation ops stay
fp32 (``op_block_list``). The VAE decoder is never converted (its spec keeps it fp32).

A graph over 2 GB comes out of ``torch.onnx.export`` with its weights in files beside it; it is converted and saved
without ever loading them (:func:`_stream_weights`): the converter works on the weight-free graph, then each weight
is read, cast to fp16 where the converter made its tensor fp16, and appended to ``{name}.onnx.data``, one at a time.
Loading the SDXL UNet's 10 GB of fp32 weights into one protobuf to convert it in memory needed ~16 GB more.
"""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path
from typing import Mapping

import numpy as np
import torch

from ..contract.onnx_sessions import keep_weights_mapped
from .artifacts import GraphJob

OPSET = 17
#: Above this much initializer data a graph is saved with external weights (protobuf's hard limit is 2 GiB;
#: the margin leaves room for the graph itself).
EXTERNAL_DATA_THRESHOLD = 1_800_000_000


def _initializer_bytes(model) -> int:
    """Weight bytes held in the proto (torch.onnx.export stores weights as raw-data initializers)."""
    return sum(len(t.raw_data) for t in model.graph.initializer)


def _fp16_block_list(job: GraphJob) -> list[str]:
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST

    return sorted(set(DEFAULT_OP_BLOCK_LIST) | set(job.fp16_op_block_list))


def export(job: GraphJob) -> list[str]:
    """Write ``{name}.onnx`` (+ ``{name}.onnx.data`` when large) into ``job.out_dir``; returns the files."""
    import onnx
    from onnx.external_data_helper import uses_external_data

    if job.precision not in ("fp32", "fp16"):
        raise ValueError(f"the ONNX exporter writes fp32 or fp16 graphs, not {job.precision!r}")
    scratch = job.out_dir / f".{job.name}.onnx-scratch"
    scratch.mkdir(parents=True, exist_ok=False)
    try:
        raw = scratch / "model.onnx"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tracer warnings about python-int shapes are expected here
            torch.onnx.export(job.module, job.args, str(raw), input_names=list(job.input_names),
                              output_names=list(job.output_names), dynamic_axes=dict(job.dynamic_axes) or None,
                              opset_version=OPSET, do_constant_folding=True, export_params=True, dynamo=False)
        graph = onnx.load(str(raw), load_external_data=False)
        if any(uses_external_data(t) for t in graph.graph.initializer):  # > 2 GB: weights in files beside it
            files = _stream_weights(graph, scratch, job)
        else:
            del graph
            if job.precision == "fp16":
                # Given a path, the converter runs shape inference with infer_shapes_path.
                model = _to_fp16(str(raw), job)
            else:
                model = onnx.load(str(raw))
            files = save(model, job.out_dir, job.name)
            del model
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    onnx.checker.check_model(str(job.out_dir / files[0]), full_check=True)
    return files


def _to_fp16(model, job: GraphJob):
    """fp16 conversion (a path or a ModelProto), io kept float32, normalisations kept fp32, nodes sorted.

    A ModelProto may be weight-free (its tensors external, not loaded): the converter then only retypes them. It
    reads each converted initializer's data just to learn its shape (``make_value_info_from_tensor``), which for
    an unloaded tensor would read the file from the working folder; its dims say the same without reading."""
    from onnx import helper
    from onnxruntime.transformers import float16
    from onnxruntime.transformers.onnx_model import OnnxModel

    def value_info(tensor):
        return helper.make_tensor_value_info(tensor.name, tensor.data_type, list(tensor.dims))

    original = float16.make_value_info_from_tensor
    float16.make_value_info_from_tensor = value_info
    try:
        model = float16.convert_float_to_float16(model, keep_io_types=True, op_block_list=_fp16_block_list(job))
    finally:
        float16.make_value_info_from_tensor = original
    # The converter appends its input casts after their consumers; onnx's checker (rightly) wants
    # topological order, which onnxruntime would not enforce but other consumers may.
    sorted_model = OnnxModel(model)
    sorted_model.topological_sort()
    return sorted_model.model


def _stream_weights(graph, src: Path, job: GraphJob, threshold: int = EXTERNAL_DATA_THRESHOLD,
                    inline_below: int = 1024) -> list[str]:
    """Convert (fp16) and save a graph whose weights sit in external files under ``src``, one weight in memory at
    a time; the same files as :func:`save` gives (one ``.onnx.data`` above ``threshold`` bytes, tensors under
    ``inline_below`` bytes inside the graph; a single ``.onnx`` when everything fits under ``threshold``)."""
    import onnx
    from onnx.external_data_helper import ExternalDataInfo, uses_external_data

    def external(model):
        tensors = [t for t in model.graph.initializer if uses_external_data(t)]
        for node in model.graph.node:  # Constant nodes' tensors (torch keeps them inline, but be thorough)
            tensors += [a.t for a in node.attribute if a.HasField("t") and uses_external_data(a.t)]
        return tensors

    was = {t.name: t.data_type for t in external(graph)}
    if job.precision == "fp16":
        graph = _to_fp16(graph, job)  # the weight-free graph: tensors change type, their data is still fp32
    from onnxruntime.transformers.float16 import convert_np_to_float16

    def nbytes(t) -> int:
        return int(np.prod(t.dims, dtype=np.int64)) * np.dtype(onnx.helper.tensor_dtype_to_np_dtype(t.data_type)).itemsize

    tensors = external(graph)
    one_file = sum(nbytes(t) for t in tensors) <= threshold
    path = job.out_dir / f"{job.name}.onnx"
    location = f"{job.name}.onnx.data"
    sink = None if one_file else open(job.out_dir / location, "wb")
    try:
        for t in tensors:
            info = ExternalDataInfo(t)
            with open(src / info.location, "rb") as fh:
                fh.seek(info.offset or 0)
                data = fh.read(info.length) if info.length is not None else fh.read()
            before = was.get(t.name, t.data_type)
            if before != t.data_type:
                if (before, t.data_type) != (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16):
                    raise RuntimeError(f"{job.name}: tensor {t.name} changed type {before} -> {t.data_type}")
                data = convert_np_to_float16(np.frombuffer(data, dtype=np.float32)).tobytes()
            if len(data) != nbytes(t):
                raise RuntimeError(f"{job.name}: tensor {t.name} holds {len(data)} bytes, its shape needs {nbytes(t)}")
            del t.external_data[:]
            if sink is None or len(data) < inline_below:
                t.data_location = onnx.TensorProto.DEFAULT
                t.raw_data = data
                continue
            offset = sink.tell()
            sink.write(data)
            for key, value in (("location", location), ("offset", offset), ("length", len(data))):
                entry = t.external_data.add()
                entry.key, entry.value = key, str(value)
    finally:
        if sink is not None:
            sink.close()
    onnx.save_model(graph, str(path))
    return [path.name] if one_file else [path.name, location]


def save(model, out_dir: Path, name: str, threshold: int = EXTERNAL_DATA_THRESHOLD) -> list[str]:
    """Save ``name.onnx``; above ``threshold`` weight bytes every weight goes into one ``name.onnx.data``."""
    import onnx

    path = out_dir / f"{name}.onnx"
    if _initializer_bytes(model) > threshold:
        location = f"{name}.onnx.data"
        onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=location, size_threshold=1024)
        return [path.name, location]
    onnx.save_model(model, str(path))
    return [path.name]


def session(path: Path, mapped_weights: bool = False):
    """An onnxruntime CPU session using as many threads as torch is allowed (shares the machine politely);
    ``mapped_weights``: the graph's external weights stay in their mapped file (:mod:`dhumandiff.contract.onnx_sessions`)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = max(1, torch.get_num_threads())
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    if mapped_weights:
        keep_weights_mapped(opts, ort)
    return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])


def run(root: Path, files: list[str], inputs: Mapping[str, np.ndarray],
        output_names: tuple[str, ...]) -> dict[str, np.ndarray]:
    """Run an exported graph on CPU (the export-time validation; bundles are run by ``dhumandiff.runtimes``).
    A graph with external weights (over 1.8 GB) runs with them mapped (:func:`session`)."""
    sess = session(root / files[0], mapped_weights=len(files) > 1)
    feed = {i.name: inputs[i.name] for i in sess.get_inputs()}
    return dict(zip(output_names, sess.run(list(output_names), feed)))
