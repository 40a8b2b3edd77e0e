"""ONNX graphs: TorchScript-based ``torch.onnx.export`` (opset 17), fp16 by conversion, checked by onnx.

Why these choices (docs/design.md 5): ``dynamo=False`` at opset 17 exports every DHumanDiff component (the dual
attention processors and the one-hot subject fusion included) and runs everywhere onnxruntime 1.1x+ does.
Graphs whose weights pass 2 GB (an sd15/xl UNet, the xl text encoder 2) store them in one external file
``{name}.onnx.data`` beside ``{name}.onnx``, the layout onnxruntime and OpenVINO both read.

fp16 is a graph conversion of the fp32 export (onnxruntime's ``convert_float_to_float16``) with
``keep_io_types``: a bundle's interface stays float32 whatever its compute precision, and normalisation ops stay
fp32 (``op_block_list``). The VAE decoder is never converted (its spec keeps it fp32).
"""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path
from typing import Mapping

import numpy as np
import torch

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

    scratch = job.out_dir / f".{job.name}.onnx-scratch"
    scratch.mkdir(parents=True, exist_ok=False)
    try:
        raw = scratch / "model.onnx"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tracer warnings about python-int shapes are expected here
            torch.onnx.export(job.module, job.args, str(raw), input_names=list(job.input_names),
                              output_names=list(job.output_names), dynamic_axes=dict(job.dynamic_axes) or None,
                              opset_version=OPSET, do_constant_folding=True, export_params=True, dynamo=False)
        if job.precision == "fp16":
            from onnxruntime.transformers.float16 import convert_float_to_float16

            from onnxruntime.transformers.onnx_model import OnnxModel

            # Given a path, the converter runs shape inference with infer_shapes_path, which handles > 2 GB.
            model = convert_float_to_float16(str(raw), keep_io_types=True, op_block_list=_fp16_block_list(job))
            # The converter appends its input casts after their consumers; onnx's checker (rightly) wants
            # topological order, which onnxruntime would not enforce but other consumers may.
            sorted_model = OnnxModel(model)
            sorted_model.topological_sort()
            model = sorted_model.model
        elif job.precision == "fp32":
            model = onnx.load(str(raw))
        else:
            raise ValueError(f"the ONNX exporter writes fp32 or fp16 graphs, not {job.precision!r}")
        files = save(model, job.out_dir, job.name)
        del model
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    onnx.checker.check_model(str(job.out_dir / files[0]), full_check=True)
    return files


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


def session(path: Path):
    """An onnxruntime CPU session using as many threads as torch is allowed (shares the machine politely)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = max(1, torch.get_num_threads())
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])


def run(root: Path, files: list[str], inputs: Mapping[str, np.ndarray],
        output_names: tuple[str, ...]) -> dict[str, np.ndarray]:
    """Run an exported graph on CPU (the export-time validation; bundles are run by ``dhumandiff.runtimes``)."""
    sess = session(root / files[0])
    feed = {i.name: inputs[i.name] for i in sess.get_inputs()}
    return dict(zip(output_names, sess.run(list(output_names), feed)))
